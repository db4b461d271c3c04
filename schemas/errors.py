"""Every error Leveret raises, under one root: ``except LeveretError`` catches them all.

```
LeveretError
├── DefinitionError (TypeError)        a message or actor is declared wrongly (class creation)
├── ConfigurationError (ValueError)    no broker configured; a bad URL, setting or option
├── InvalidArgument (ValueError)       a value passed to a call that cannot be used (a delay
│                                      out of range, a naive eta, a correlation id over 255
│                                      bytes, something that is not an actor)
├── NotHandled (TypeError)             sending an actor a message type it has no handler for
├── NotFound (LookupError)             a queue or dead-letter queue that does not exist
├── DecodeError (ValueError)           a delivery cannot become a message; keeps the raw body
│   ├── MalformedBody                  the body is not JSON (or not UTF-8)
│   ├── InvalidMessage                 JSON that does not validate against the message class
│   ├── UnknownTopic                   no handler of this actor knows the topic
│   └── TooLarge                       the body is over the worker's maximum body size
├── BrokerError                        talking to the broker failed
│   ├── BrokerConnectionError (ConnectionError)   cannot connect, or the connection was lost
│   ├── TopologyError                  declaring exchanges/queues failed (e.g. other arguments)
│   ├── OperationError                 an operation on queues was refused, or another holds
│   │                                  the queue (a dead-letter pass already running)
│   └── PublishError                   a message was not stored: nack, no queue, refused
│       ├── PublishTimeout             no confirm in time: the message may or may not be stored
│       └── BrokerUnavailable          checked before publishing: the broker cannot take
│                                      messages now (unreachable, blocked); nothing was sent
├── AskError                           a request (`ask`) got no usable answer
│   ├── AskTimeout (TimeoutError)      no answer by the deadline
│   ├── AskInterrupted                 the connection the answer would come on was lost
│   ├── RemoteError                    the actor failed for good (dead-lettered the request)
│   └── InvalidReply                   an answer that is not the reply type (or not JSON)
├── TimeLimitExceeded                  a handler ran past its time limit and was interrupted
├── InvalidRetry (ValueError)          a retry delay that is not 0 … 2^28 - 1 s (or not a number)
└── HandlerSignal                      raised by handlers to steer what happens to a message
    ├── Retry                          (actors.control) handle it again later
    └── Reject                         (actors.control) dead-letter it at once, no retries
```

pika's exceptions never reach a caller: the modules that speak AMQP
(`leveret.services.rabbitmq`) translate them into these. `DecodeError`s are permanent failures:
the worker dead-letters the delivery with the reason.
"""


class LeveretError(Exception):
    """Root of every error Leveret raises."""


class DefinitionError(LeveretError, TypeError):
    """A message class, actor or handler is declared wrongly.

    Raised when the class is created, never at the first message.
    """


class ConfigurationError(LeveretError, ValueError):
    """Leveret is not configured, or configured with an invalid value."""


class InvalidArgument(LeveretError, ValueError):
    """A value passed to a call cannot be used; the message says which and why."""


class NotHandled(LeveretError, TypeError):
    """An actor was sent a message whose topic none of its handlers takes."""


class NotFound(LeveretError, LookupError):
    """A queue or dead-letter queue that does not exist (its actor was never declared)."""


class DecodeError(LeveretError, ValueError):
    """A delivery's body cannot be turned into a message.

    Args:
        reason: What is wrong, for the dead-letter headers and logs.
        body: The raw bytes as they arrived.
        topic: The topic the delivery claimed, if any.
    """

    def __init__(self, reason: str, *, body: bytes, topic: str | None = None) -> None:
        super().__init__(reason)
        self.reason = reason
        self.body = body
        self.topic = topic


class MalformedBody(DecodeError):
    """The body is not valid UTF-8 JSON."""


class InvalidMessage(DecodeError):
    """The body is JSON but does not validate against the message class."""


class UnknownTopic(DecodeError):
    """The delivery's topic is not one this actor handles."""


class TooLarge(DecodeError):
    """The body is larger than the worker accepts (``--max-body-size``); it is not decoded."""


class BrokerError(LeveretError):
    """Talking to the message broker failed."""


class BrokerConnectionError(BrokerError, ConnectionError):
    """The broker cannot be reached, or the connection was lost."""


class TopologyError(BrokerError):
    """Declaring exchanges, queues or bindings failed."""


class OperationError(BrokerError):
    """An operation on queues (reading, replaying, purging, deleting) could not be done.

    The broker refused it, or another operation holds the queue (one dead-letter pass at a
    time per queue).
    """


class PublishError(BrokerError):
    """A publish was not confirmed by the broker.

    Raised when the broker nacks the message, when `send` finds no queue to deliver to,
    or when no confirm arrives in time (then the message may or may not have been stored).

    Args:
        reason: What went wrong.
        message_id: The id of the message that was not confirmed.
    """

    def __init__(self, reason: str, *, message_id: str | None = None) -> None:
        super().__init__(reason)
        self.reason = reason
        self.message_id = message_id


class PublishTimeout(PublishError):
    """No confirm arrived in time (the broker is unreachable, or blocks publishing).

    Unlike other `PublishError`s the message may have been stored: publishing it again may
    deliver it twice (with the same message id).
    """


class BrokerUnavailable(PublishError):
    """The broker cannot take messages now: nothing was sent.

    Raised by a fail-fast publish (``FAIL_FAST`` in Django, `Broker.check_available`) when
    the broker is unreachable, blocks publishing (a memory or disk alarm) or refuses the
    namespace's declarations, so that the caller can still roll back, answer an error or
    write the message to the outbox instead.
    """


class AskError(LeveretError):
    """A request (`Actor.ask`, `Broker.ask`) got no usable answer.

    Attributes:
        actor: The actor asked (its queue name, without namespace).
        message_id: The request's message id.
    """

    def __init__(self, reason: str, *, actor: str = "", message_id: str | None = None) -> None:
        super().__init__(reason)
        self.reason = reason
        self.actor = actor
        self.message_id = message_id


class AskTimeout(AskError, TimeoutError):
    """No answer came by the request's deadline.

    The request may still be handled later, or may have been handled with its answer lost:
    an ask is at most once as far as its answer goes.
    """


class AskInterrupted(AskError):
    """The connection the answer would come back on was lost while waiting.

    The request may or may not be handled; asking again is safe where the handler is
    idempotent.
    """


class RemoteError(AskError):
    """The actor asked failed for good: the request went to its dead-letter queue.

    Raised at once, not at the deadline. The traceback stays in the dead letter (``leveret
    dlq show``); the caller gets the error's type and message.

    Attributes:
        error_type: The exception's class, ``module.QualName`` (empty when the request was
            refused before its handler ran, e.g. it did not validate).
        error_message: Its message (redacted, cut to 2,000 characters).
        error_reason: Why it was dead-lettered: ``handler_error``, ``retries_exhausted``,
            ``rejected``, ``invalid_message``, ``no_reply``, ``invalid_reply``, …
    """

    def __init__(
        self,
        reason: str,
        *,
        actor: str = "",
        message_id: str | None = None,
        error_type: str = "",
        error_message: str = "",
        error_reason: str = "",
    ) -> None:
        super().__init__(reason, actor=actor, message_id=message_id)
        self.error_type = error_type
        self.error_message = error_message
        self.error_reason = error_reason


class InvalidReply(AskError):
    """An answer arrived that is not the reply type the handler declares (nor JSON, or is
    too large): a fault of the answering side, or of a client that is not Leveret's."""


class TimeLimitExceeded(LeveretError):
    """A handler ran past its time limit (`time_limit_s`) and was interrupted.

    The worker raises it inside the handler's thread; the message then fails like any other
    exception, so the retry policy decides between a retry and the dead-letter queue, whose
    headers record ``leveret.schemas.errors.TimeLimitExceeded``. A handler blocked in C code (a
    socket read, `time.sleep`) is interrupted only when it returns to Python.
    """


class InvalidRetry(LeveretError, ValueError):
    """A retry was asked for with a delay Leveret cannot honour.

    `Retry(delay=...)` or a retry policy's backoff gave something other than a number of
    seconds from 0 up to 2^28 - 1 (8.5 years, the longest delay RabbitMQ's delay levels
    hold): a negative, infinite or NaN delay, one too long, or not a number at all. The
    worker dead-letters the message with reason ``invalid_retry``; the handler's own
    exception is this error's cause.
    """


class HandlerSignal(LeveretError):
    """Base of the exceptions a handler raises on purpose to steer its message."""
