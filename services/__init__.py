"""Everything that runs: brokers, publisher, worker, in-memory broker, CLI.

The only package that talks to RabbitMQ.
"""

from actors.dispatch import configure, publish
from services.broker import Broker, Worker
from services.logs import configure_logging
from services.memory import MemoryBroker
from services.rabbitmq import RabbitBroker

__all__ = [
    "Broker",
    "MemoryBroker",
    "RabbitBroker",
    "Worker",
    "configure",
    "configure_logging",
    "publish",
]
