"""Time limits: interrupt a handler that runs past its `time_limit_s`.

One monitor thread per process watches the deadlines of every handler running under a limit.
When one passes, it raises `TimeLimitExceeded` inside that handler's thread with
``PyThreadState_SetAsyncExc``, as Dramatiq does: the exception surfaces at the handler's next
Python bytecode, unwinds it (``finally`` blocks and ``with`` exits run), and the message
fails like any other exception, so its retry policy applies.

Limitation: CPython checks for such an exception only between bytecodes. A handler blocked
in C code (``time.sleep``, a socket read, a long C-extension call) is interrupted only when
that call returns to Python. Give blocking calls their own timeouts too.

Why limits matter on RabbitMQ: a delivery left unacknowledged longer than the broker's
``consumer_timeout`` (30 minutes by default on RabbitMQ 3.10) makes the broker close the
worker's channel, and every message in flight on it is redelivered. `warn_about_limits`
logs, at worker start, each handler whose limit is missing or not below that timeout.
"""

from __future__ import annotations

import ctypes
import itertools
import os
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import TypeVar

from leveret.actors.actor import Actor
from leveret.schemas.errors import TimeLimitExceeded
from leveret.services.observability.logs import get_logger

log = get_logger("leveret.worker")

T = TypeVar("T")

DEFAULT_CONSUMER_TIMEOUT_S = 1800.0
"""RabbitMQ 3.10's default ``consumer_timeout``: 30 minutes."""

_SETTLE_POLL_S = 0.0001


@dataclass(slots=True, eq=False)
class Watch:
    """One call run under a time limit.

    The handler's thread and the monitor thread hand the watch over without a lock (see
    `TimeLimits.run`): the thread that takes it out of `TimeLimits._watches` (one atomic
    ``dict.pop``) owns it.

    Attributes:
        limit_s: The limit in seconds.
        thread_id: The calling thread's `threading.get_ident()`.
        deadline: `time.monotonic()` after which the call is interrupted.
        what: What runs, for the log line (``actor.handler``).
        returned: Set by the calling thread as soon as the call returned; the monitor
            never interrupts a call that has.
        fired: Set by the monitor once it raised `TimeLimitExceeded` in the thread.
        settled: Set by the monitor once it is done with a watch it took (fired or not).
    """

    limit_s: float
    thread_id: int
    deadline: float
    what: str = ""
    key: int = field(default=0, repr=False)
    returned: bool = False
    fired: bool = False
    settled: bool = False


class TimeLimits:
    """Deadlines of running handlers, and the one thread that enforces them.

    The thread starts with the first watched handler and stays (as a daemon) for the
    process's life; it sleeps until the earliest deadline, so it costs nothing while
    handlers finish in time.

    Why no lock on the handler's side: the interruption is an exception raised between any
    two bytecodes of the handler's thread, also inside `threading` code that has just taken
    a lock and not yet released it (the lock would leak and every later call hang). So the
    handler's thread takes no lock once its call may be interrupted: it gives its watch
    back with one atomic ``dict.pop``, and only the thread that popped the watch acts on it.
    """

    def __init__(self) -> None:
        self._changed = threading.Condition()
        self._watches: dict[int, Watch] = {}
        self._keys = itertools.count(1)
        self._thread: threading.Thread | None = None
        self._pid = 0

    def run(self, limit_s: float | None, what: str, function: Callable[[], T]) -> T:
        """Call `function` under a limit of `limit_s` seconds (None: no limit).

        Past the limit, `TimeLimitExceeded` is raised inside `function`, in this thread.
        Once this returns or raises, no interruption is pending for this thread: it cannot
        surface later in other code.

        Returns:
            What `function` returned.

        Raises:
            TimeLimitExceeded: The limit passed before `function` returned, also when the
                function caught the interruption and went on (or raised something else).
            BaseException: Whatever `function` raised otherwise.
        """
        if limit_s is None:
            return function()
        watch = self._start(limit_s, what)
        try:
            result = function()
            watch.returned = True
        except BaseException as exc:
            if self._stop(watch) and not isinstance(exc, TimeLimitExceeded):
                raise TimeLimitExceeded() from exc
            raise
        if self._stop(watch):
            raise TimeLimitExceeded()  # the function swallowed the interruption
        return result

    def _start(self, limit_s: float, what: str) -> Watch:
        watch = Watch(limit_s, threading.get_ident(), time.monotonic() + limit_s, what=what)
        # No interruption can target this thread yet: taking the lock is safe here.
        with self._changed:
            self._ensure_thread()
            watch.key = next(self._keys)
            self._watches[watch.key] = watch
            self._changed.notify()
        return watch

    def _stop(self, watch: Watch) -> bool:
        """Give `watch` back; returns whether the monitor interrupted the call.

        Runs while an interruption may still arrive, so it takes no lock and absorbs any
        `TimeLimitExceeded` that surfaces here.
        """
        if self._watches.pop(watch.key, None) is not None:
            return False  # the monitor never took it: nothing fired, nothing will
        while True:
            try:
                # The monitor took it: wait until it has raised (or chosen not to), then
                # cancel an interruption still pending (the call returned at the deadline).
                while not watch.settled:
                    time.sleep(_SETTLE_POLL_S)
                if watch.fired:
                    _set_async_exc(watch.thread_id, None)
                return watch.fired
            except TimeLimitExceeded:
                continue  # it surfaced here instead of in the call: absorbed

    def _ensure_thread(self) -> None:
        # After fork() the child has no monitor thread; start its own.
        if self._thread is None or self._pid != os.getpid():
            self._pid = os.getpid()
            self._watches.clear()
            self._thread = threading.Thread(
                target=self._monitor, name="leveret-time-limits", daemon=True
            )
            self._thread.start()

    def _monitor(self) -> None:
        while True:
            try:
                self._watch_deadlines()
            except Exception:  # limits must keep working: log, go on
                log.exception("time_limit_monitor_failed")
                time.sleep(0.1)

    def _watch_deadlines(self) -> None:
        with self._changed:
            while True:
                now = time.monotonic()
                for key, watch in list(self._watches.items()):
                    if watch.deadline > now or self._watches.pop(key, None) is None:
                        continue  # not due, or its call gave it back meanwhile
                    if not watch.returned:
                        _set_async_exc(watch.thread_id, TimeLimitExceeded)
                        watch.fired = True
                        log.warning(
                            "time_limit_exceeded", handler=watch.what, time_limit_s=watch.limit_s
                        )
                    watch.settled = True
                earliest = min((w.deadline for w in self._watches.values()), default=None)
                self._changed.wait(None if earliest is None else max(0.0, earliest - now))


def _set_async_exc(thread_id: int, exc: type[BaseException] | None) -> None:
    """Raise `exc` in thread `thread_id` at its next bytecode (None: cancel a pending one)."""
    ctypes.pythonapi.PyThreadState_SetAsyncExc(
        ctypes.c_ulong(thread_id), ctypes.py_object(exc) if exc is not None else None
    )


LIMITS = TimeLimits()
"""The process's time limits, shared by every `Executor` (one monitor thread per worker)."""


def warn_about_limits(
    actors: Iterable[type[Actor]], *, consumer_timeout_s: float = DEFAULT_CONSUMER_TIMEOUT_S
) -> int:
    """Log one warning for the handlers without a time limit, one for those whose limit is
    too long for RabbitMQ (each naming every such handler).

    ``time_limit_missing``: these handlers may run forever, and past the broker's
    ``consumer_timeout`` RabbitMQ closes the channel and redelivers everything in flight.
    ``time_limit_too_long``: their limit is not below `consumer_timeout_s`, so the broker
    gives up on the delivery before the limit interrupts the handler.

    Args:
        actors: The actor classes a worker runs.
        consumer_timeout_s: The broker's ``consumer_timeout`` in seconds.

    Returns:
        The number of handlers warned about.
    """
    missing, too_long = handlers_over_limits(actors, consumer_timeout_s=consumer_timeout_s)
    if missing:
        log.warning(
            "time_limit_missing",
            handlers=missing,
            consumer_timeout_s=consumer_timeout_s,
            hint="set time_limit_s on the actor or @handler(time_limit_s=...) below the "
            "broker's consumer_timeout",
        )
    if too_long:
        log.warning(
            "time_limit_too_long",
            handlers=too_long,
            consumer_timeout_s=consumer_timeout_s,
            hint="RabbitMQ closes the channel and redelivers before the limit fires",
        )
    return len(missing) + len(too_long)


def handlers_over_limits(
    actors: Iterable[type[Actor]], *, consumer_timeout_s: float = DEFAULT_CONSUMER_TIMEOUT_S
) -> tuple[list[str], list[str]]:
    """The handlers (``queue.handler``) without a time limit, and those whose limit is not
    below `consumer_timeout_s`."""
    missing: list[str] = []
    too_long: list[str] = []
    for actor in actors:
        for spec in actor.handlers.values():
            limit = actor.time_limit_for(spec)
            name = f"{actor.queue}.{spec.name}"
            if limit is None:
                missing.append(name)
            elif limit >= consumer_timeout_s:
                too_long.append(name)
    return missing, too_long
