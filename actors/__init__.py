"""What an actor is: classes with typed handlers, function actors, and control flow.

Knows nothing of RabbitMQ: the same actors run on the in-memory broker and on RabbitMQ.
"""

from actors.actor import Actor, ActorRef, Handler, QueueType, handler
from actors.context import Context
from actors.control import Reject, Retry
from actors.dispatch import Dispatcher, configure, current, publish
from actors.function import FunctionActor, actor, as_actor_class
from actors.registry import actors_in, unique_queues
from actors.retry import NO_RETRY, Backoff, RetryPolicy, exponential, fixed

__all__ = [
    "NO_RETRY",
    "Actor",
    "ActorRef",
    "Backoff",
    "Context",
    "Dispatcher",
    "FunctionActor",
    "Handler",
    "QueueType",
    "Reject",
    "Retry",
    "RetryPolicy",
    "actor",
    "actors_in",
    "as_actor_class",
    "configure",
    "current",
    "exponential",
    "fixed",
    "handler",
    "publish",
    "unique_queues",
]
