"""Everything that speaks AMQP: the only package that imports pika.

Public: `RabbitTransport` (what a `Broker` on RabbitMQ holds) and `ping_broker`. The
modules whose names start with an underscore are internal. `RabbitBroker` is in
`leveret.services.broker`.
"""

from leveret.services.rabbitmq.ping import ping_broker
from leveret.services.rabbitmq.transport import RabbitTransport

__all__ = ["RabbitTransport", "ping_broker"]
