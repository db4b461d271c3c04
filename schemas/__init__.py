"""What a message is: typed pydantic messages, their envelope and wire format, and every
error Leveret raises (`leveret.schemas.errors`).

Knows nothing of RabbitMQ.
"""

from leveret.schemas.codec import decode, encode
from leveret.schemas.envelope import Envelope, new_message_id
from leveret.schemas.errors import (
    AskError,
    AskInterrupted,
    AskTimeout,
    BrokerConnectionError,
    BrokerError,
    BrokerUnavailable,
    ConfigurationError,
    DecodeError,
    DefinitionError,
    InvalidArgument,
    InvalidMessage,
    InvalidReply,
    InvalidRetry,
    LeveretError,
    MalformedBody,
    NotFound,
    NotHandled,
    OperationError,
    PublishError,
    PublishTimeout,
    RemoteError,
    TimeLimitExceeded,
    TooLarge,
    TopologyError,
    UnknownTopic,
)
from leveret.schemas.message import Message, message_class, registered_topics

__all__ = [
    "AskError",
    "AskInterrupted",
    "AskTimeout",
    "BrokerConnectionError",
    "BrokerError",
    "BrokerUnavailable",
    "ConfigurationError",
    "DecodeError",
    "DefinitionError",
    "Envelope",
    "InvalidArgument",
    "InvalidMessage",
    "InvalidReply",
    "InvalidRetry",
    "LeveretError",
    "MalformedBody",
    "Message",
    "NotFound",
    "NotHandled",
    "OperationError",
    "PublishError",
    "PublishTimeout",
    "RemoteError",
    "TimeLimitExceeded",
    "TooLarge",
    "TopologyError",
    "UnknownTopic",
    "decode",
    "encode",
    "message_class",
    "new_message_id",
    "registered_topics",
]
