"""The scheduler: sends each schedule's ticks, from one leader among any number of processes.

Every scheduler process runs `Scheduler.run`. One of them leads at a time, through a lock
the broker provides (`SchedulerBackend.acquire`; on RabbitMQ an exclusive queue, see
`leveret.services.rabbitmq._schedule`); the others try again every `poll_s` seconds. The
leader:

1. loads the last tick sent of each entry (stored in the broker, `load_state`), trusting
   no stored tick more than `FUTURE_TOLERANCE_S` ahead of its own clock (a clock that ran
   ahead stored it, or another client did): that entry resumes from now;
2. plans what the downtime missed, by each entry's catch-up policy: ticks older than
   `grace_s` are "missed" (``skip``: none, ``latest``: the last one, ``all``: up to
   ``max_catch_up`` of them); ticks within `grace_s` (a failover, a broker restart) are
   sent late, never dropped;
3. then sends every tick as it falls due, oldest first, each with the deterministic id of
   its entry and time (`Schedule.message_id`), with publisher confirms, and stores the
   last tick sent of each entry after every batch (`save_state`).

Its clock may jump while it leads. Ticks found older than `grace_s` at a step (the clock
stepped forward, or the leader stalled) are missed ticks, as after a downtime: the entry's
catch-up policy applies, never a burst of every tick in between. An entry whose last tick
is more than `FUTURE_TOLERANCE_S` ahead of the clock (the clock stepped back) resumes from
now instead of waiting for the clock to catch up.

Each entry's work is its own: an entry whose times cannot be computed (an overflow near
the limits of `datetime`) or whose message cannot be built is logged and skipped, and the
other entries go on.

A tick published but not yet stored when a leader dies is sent again by the next one, with
the same message id: the overlap of a failover can only duplicate a tick under one id.

The modules: `scheduler` (`Scheduler`, the leader's loop, and `SchedulerBackend`), `state`
(the stored state, untrusted: `FUTURE_TOLERANCE_S`, `MAX_STATE_ENTRIES`), `catch_up` (each
entry's catch-up policy), `sources` (entries from modules and from a `ScheduleSource`).
"""

from leveret.services.scheduling.scheduler import (
    DEFAULT_GRACE_S,
    DEFAULT_POLL_S,
    MAX_BATCH,
    Scheduler,
    SchedulerBackend,
    SentTick,
)
from leveret.services.scheduling.sources import ScheduleSource, combined
from leveret.services.scheduling.state import FUTURE_TOLERANCE_S, MAX_STATE_ENTRIES

__all__ = [
    "DEFAULT_GRACE_S",
    "DEFAULT_POLL_S",
    "FUTURE_TOLERANCE_S",
    "MAX_BATCH",
    "MAX_STATE_ENTRIES",
    "ScheduleSource",
    "Scheduler",
    "SchedulerBackend",
    "SentTick",
    "combined",
]
