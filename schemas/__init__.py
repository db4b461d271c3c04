"""What a message is: typed pydantic messages, their envelope and wire format.

Knows nothing of RabbitMQ.
"""

from schemas.codec import decode, encode
from schemas.envelope import Envelope, new_message_id
from schemas.errors import (
    BrokerConnectionError,
    BrokerError,
    ConfigurationError,
    DecodeError,
    DefinitionError,
    InvalidMessage,
    LeveretError,
    MalformedBody,
    NotHandled,
    PublishError,
    TimeLimitExceeded,
    TopologyError,
    UnknownTopic,
)
from schemas.message import Message, message_class, registered_topics

__all__ = [
    "BrokerConnectionError",
    "BrokerError",
    "ConfigurationError",
    "DecodeError",
    "DefinitionError",
    "Envelope",
    "InvalidMessage",
    "LeveretError",
    "MalformedBody",
    "Message",
    "NotHandled",
    "PublishError",
    "TimeLimitExceeded",
    "TopologyError",
    "UnknownTopic",
    "decode",
    "encode",
    "message_class",
    "new_message_id",
    "registered_topics",
]
