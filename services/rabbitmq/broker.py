"""`RabbitBroker`: a `Broker` on RabbitMQ, with its typed options and admin helpers."""

from __future__ import annotations

from schemas.errors import ConfigurationError
from services.broker import Broker
from services.rabbitmq._admin import AdminChannel
from services.rabbitmq._publisher import Publisher
from services.rabbitmq.transport import RabbitTransport
from services.transport import RabbitOptions


class RabbitBroker(Broker):
    """A `Broker` on RabbitMQ; see `Broker` for the arguments.

    Extra Args:
        confirm_timeout_s: How long a publish waits for the broker's confirm.
    """

    transport: RabbitTransport

    def __init__(
        self,
        url: str | None = None,
        *,
        namespace: str | None = None,
        auto_declare: bool = True,
        confirm_timeout_s: float = 30.0,
    ) -> None:
        super().__init__(
            url,
            namespace=namespace,
            auto_declare=auto_declare,
            options=RabbitOptions(confirm_timeout_s=confirm_timeout_s),
        )
        if not isinstance(self.transport, RabbitTransport):
            raise ConfigurationError("RabbitBroker needs an amqp:// or amqps:// URL")

    @property
    def publisher(self) -> Publisher:
        """The process's publishing connection of this broker."""
        return self.transport.publisher

    def admin(self) -> AdminChannel:
        """A short-lived blocking channel for administrative work (deleting, counting)."""
        return self.transport.admin()

    def message_count(self, queue: str) -> int:
        """Messages ready in a queue (full name), as the broker counts them.

        Raises:
            NotFound: No such queue.
        """
        return self.transport.message_count(queue)
