"""Everything that speaks AMQP: the only package that imports pika.

Public: `RabbitBroker` (a `Broker` on RabbitMQ), `RabbitTransport`, `ping_broker`. The
modules whose names start with an underscore are internal.
"""

from services.rabbitmq.broker import RabbitBroker
from services.rabbitmq.ping import ping_broker
from services.rabbitmq.transport import RabbitTransport

__all__ = ["RabbitBroker", "RabbitTransport", "ping_broker"]
