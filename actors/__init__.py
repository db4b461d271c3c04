"""What an actor is: classes with typed handlers, function actors, and control flow.

Knows nothing of RabbitMQ: the same actors run on the in-memory broker and on RabbitMQ.
What the runtime uses besides (`dispatch.current`, `registry.unique_queues`,
`function.as_actor_class`, `actor.Handler`) stays in its module.
"""

from leveret.actors.actor import Actor, ActorRef, QueueType, handler
from leveret.actors.context import AsyncContext, Context
from leveret.actors.control import Reject, Retry
from leveret.actors.dispatch import (
    AskArgs,
    PublishArgs,
    configure,
    publish,
    publish_async,
    send_async,
)
from leveret.actors.function import FunctionActor, actor
from leveret.actors.registry import actors_in
from leveret.actors.retry import NO_RETRY, Backoff, RetryPolicy, exponential, fixed
from leveret.actors.schedules import (
    CatchUp,
    Cron,
    Every,
    Schedule,
    Tick,
    cron,
    every,
    periodic,
    schedule,
    schedules_in,
)

__all__ = [
    "NO_RETRY",
    "Actor",
    "ActorRef",
    "AskArgs",
    "AsyncContext",
    "Backoff",
    "CatchUp",
    "Context",
    "Cron",
    "Every",
    "FunctionActor",
    "PublishArgs",
    "QueueType",
    "Reject",
    "Retry",
    "RetryPolicy",
    "Schedule",
    "Tick",
    "actor",
    "actors_in",
    "configure",
    "cron",
    "every",
    "exponential",
    "fixed",
    "handler",
    "periodic",
    "publish",
    "publish_async",
    "schedule",
    "schedules_in",
    "send_async",
]
