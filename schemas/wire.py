"""The wire format: what any AMQP client reads or writes to talk with Leveret's actors.

- body: the message's JSON, UTF-8;
- properties: ``content_type=application/json``, ``type=<topic>``, ``message_id``,
  ``timestamp`` (seconds since the epoch), ``correlation_id``, ``delivery_mode=2``;
- headers: ``x-leveret-attempt`` (1 on the first delivery) and, on retries and dead letters,
  the ``x-leveret-error-*`` headers named here.
"""

from __future__ import annotations

CONTENT_TYPE = "application/json"

RESERVED_PREFIX = "x-leveret-"
"""Every header Leveret sets starts so; no other code may set one (middleware included)."""

ATTEMPT = "x-leveret-attempt"
ERROR_REASON = "x-leveret-error-reason"
ERROR_TYPE = "x-leveret-error-type"
ERROR_MESSAGE = "x-leveret-error-message"
ERROR_TRACEBACK = "x-leveret-error-traceback"
FAILED_AT = "x-leveret-failed-at"
FIRST_FAILED_AT = "x-leveret-first-failed-at"
FAILED_ACTOR = "x-leveret-failed-actor"
FAILED_HOST = "x-leveret-failed-host"
ORIGINAL_EXCHANGE = "x-leveret-original-exchange"
ORIGINAL_ROUTING_KEY = "x-leveret-original-routing-key"
REPLAYED_AT = "x-leveret-replayed-at"
DEAD_LETTER_ID = "x-leveret-dead-letter-id"
"""A dead letter's identity: given by the worker that dead-letters it (else by the first
pass over its dead-letter queue) and kept while it stays there; a replay drops it."""
DLQ_PUT_BACK_BY = "x-leveret-dlq-pass"
"""The dead-letter pass (``dlq list``, ``show``, ``replay``) that last put the letter back."""
DLQ_END_MARKER = "x-leveret-dlq-pass-end"
"""On the empty marker a dead-letter pass puts behind the letters it visits: the pass."""
DEADLINE = "x-leveret-deadline"
"""On a request (an ask): when its caller stops waiting, in whole milliseconds since the
epoch. A worker that takes the request later acks it unhandled; a handler's time limit is
capped by the time left."""
REPLY_STATUS = "x-leveret-reply"
"""On a reply: ``ok`` (the body is the handler's answer) or ``error`` (the request was
dead-lettered; the ``x-leveret-error-*`` headers say why, the body is empty)."""
REPLYING_ACTOR = "x-leveret-replying-actor"
"""On a reply: the actor (its queue name, without namespace) that answered."""
REPLY_TO_PREFIX = "amq.rabbitmq.reply-to"
"""A worker answers only requests whose ``reply_to`` starts so (RabbitMQ's direct reply-to,
or the in-memory broker's equivalent): a reply is never written to a queue of the caller's
choosing."""
SCHEDULE = "x-leveret-schedule"
"""The schedule entry that sent the message (a tick)."""
SCHEDULED_AT = "x-leveret-scheduled-at"
"""When the tick was due (ISO 8601, UTC); the same for every copy of the tick."""

# Headers RabbitMQ adds when it dead-letters (TTL expiry in the delay levels, delivery
# limits) or counts deliveries (quorum queues; `x-acquired-count` since RabbitMQ 4.3); they
# describe one trip and are not copied onto a retry or a replay.
BROKER_HEADERS = (
    "x-death",
    "x-acquired-count",
    "x-delivery-count",
    "x-first-death-exchange",
    "x-first-death-queue",
    "x-first-death-reason",
    "x-last-death-exchange",
    "x-last-death-queue",
    "x-last-death-reason",
)
