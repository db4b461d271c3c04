"""Everything that runs: brokers, the worker runtime, RabbitMQ, the in-memory broker,
operations (supervisor, health), observability, the CLI and the Django app.

- `leveret.services.runtime`: the worker runtime, one for every broker (handler threads, what
  happens to one delivery, time limits);
- `leveret.services.rabbitmq`: everything that speaks AMQP (the only package that imports pika);
- `leveret.services.memory`: the in-memory broker, for tests and the demo;
- `leveret.services.operations`: the supervisor of ``--processes N``, health checks,
  heartbeats, `leveret status` and dead-letter operations;
- `leveret.services.observability`: logs, tracing, metrics and redaction;
- `leveret.services.topology`: names, declarations, delays: where every message goes;
- `leveret.services.cli`: the `leveret` command, one module per command group;
- `leveret.django`: the Django app.

Modules whose names start with an underscore are internal.
"""

from leveret.services.broker import Broker, RabbitBroker
from leveret.services.middleware import Middleware, Publishing
from leveret.services.observability.logs import configure_logging
from leveret.services.runtime import Delivery, Outcome, Worker
from leveret.services.runtime.options import WorkerArgs
from leveret.services.testing import MemoryBroker
from leveret.services.transport import MemoryOptions, RabbitOptions

__all__ = [
    "Broker",
    "Delivery",
    "MemoryBroker",
    "MemoryOptions",
    "Middleware",
    "Outcome",
    "Publishing",
    "RabbitBroker",
    "RabbitOptions",
    "Worker",
    "WorkerArgs",
    "configure_logging",
]
