"""Everything that runs: brokers, the worker runtime, RabbitMQ, the in-memory broker,
operations (supervisor, health), the CLI and the Django app.

- `services.runtime`: the worker runtime, one for every broker (handler threads, what
  happens to one delivery, time limits);
- `services.rabbitmq`: everything that speaks AMQP (the only package that imports pika);
- `services.memory`: the in-memory broker, for tests and the demo;
- `services.operations`: the supervisor of ``--processes N`` and health checks;
- `services.cli`: the `leveret` command, one module per command group;
- `services.django`: the Django app.

Modules whose names start with an underscore are internal.
"""

from actors.dispatch import configure, publish
from services.broker import Broker
from services.logs import configure_logging
from services.memory import MemoryBroker
from services.rabbitmq import RabbitBroker
from services.runtime import MessageHooks, Worker
from services.transport import MemoryOptions, RabbitOptions

__all__ = [
    "Broker",
    "MemoryBroker",
    "MemoryOptions",
    "MessageHooks",
    "RabbitBroker",
    "RabbitOptions",
    "Worker",
    "configure",
    "configure_logging",
    "publish",
]
