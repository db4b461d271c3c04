"""Internal: lending the publisher's I/O loop to the thread of a caller that waits.

A synchronous caller that finds nothing else in flight runs the I/O loop itself instead of
handing its messages to the I/O thread, as raw pika's `BlockingConnection` does: it writes
its messages and reads their confirms on its own thread, which saves two thread hand-overs
a call (`publish` one at a time). The I/O thread is parked meanwhile and for `LEND_S`
after, so that a caller publishing in a loop keeps the loop; any other thread's work
(`wanted`) and any work left in flight when the caller is done hand the loop back to the
I/O thread at once.

`LoopLending` only decides who runs the loop, one turn at a time; the publisher says what
"nothing in flight" means and what a crash on a caller's thread does (`_publisher`).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

from pika.adapters.select_connection import IOLoop

LEND_S = 0.2
"""How long the I/O thread stays parked after a caller ran the I/O loop and left nothing in
flight (the next `publish` of a loop then runs it again at once); it is also how late, at
most, a timer or an unsolicited frame (a heartbeat, a close) is seen while parked, which a
fifth of a second keeps well inside any heartbeat or timeout Leveret uses."""


class LoopLending:
    """Who runs the I/O loop: the I/O thread, a caller it is lent to, or nobody.

    Owner and borrower are thread ids, guarded by one condition, which also wakes the
    parked I/O thread.
    """

    def __init__(self) -> None:
        self._turn = threading.Condition(threading.Lock())
        # Who runs the loop (a thread id), or nobody (None: the I/O thread is parked or
        # between two turns).
        self.owner: int | None = None
        self._lend_to: int | None = None  # a caller waiting for the I/O thread's turn to end
        self._io_ident: int | None = None  # the I/O thread's id
        self._io_wanted = False  # work for the I/O thread came while it may be parked
        self._parked_until = 0.0  # monotonic: the I/O thread does not take the loop before

    def run_io_thread(
        self, ioloop: IOLoop, ended: Callable[[], bool], crashed: Callable[[], None]
    ) -> None:
        """The I/O thread's loop: pika's I/O loop one turn at a time until `ended()`;
        between two turns it may be lent to a caller (`take`), the I/O thread parked
        meanwhile. `crashed` marks the loop ended when a turn raises (then raised again)."""
        turn = self._turn
        self._io_ident = me = threading.get_ident()
        self._parked_until = 0.0  # of an earlier I/O thread
        ioloop.activate_poller()
        try:
            while True:
                with turn:
                    while not ended():
                        if self.owner is None:
                            park_s = self._parked_until - time.monotonic()
                            if self._io_wanted or park_s <= 0:
                                break
                        else:
                            park_s = LEND_S  # lent: look again now and then, in case
                        turn.wait(park_s)
                    if ended():
                        return
                    self._io_wanted = False
                    self.owner = me
                try:
                    ioloop.poll()
                    ioloop.process_timeouts()
                except BaseException:
                    with turn:  # the thread crashes: lend the loop to nobody
                        crashed()
                        self.owner = self._lend_to = None
                        turn.notify_all()
                    raise
                with turn:
                    self.owner = self._lend_to
                    self._lend_to = None
                    if self.owner is not None:
                        turn.notify_all()
        finally:
            ioloop.deactivate_poller()

    def wanted(self) -> None:
        """Work for the I/O thread came (any thread): wake it if parked."""
        with self._turn:
            self._io_wanted = True  # read when a caller gives the loop back
            if self.owner is None:
                self._turn.notify_all()

    def take(self, me: int, quiet: Callable[[], bool], ioloop: IOLoop) -> bool:
        """Run the I/O loop on this thread from now, if `quiet()` (nothing else in flight).

        Lent at once while the I/O thread is parked; else the I/O thread is asked to lend
        it after its current turn. When another caller has it, or is being lent it, or
        something is in flight, the caller hands its messages to the I/O thread instead.
        """
        if not quiet():
            return False  # the common case under load: no lock taken
        turn = self._turn
        with turn:
            if not quiet():
                return False
            if self.owner is None:
                self.owner = me
                self._io_wanted = False  # what other threads asked so far, this caller runs
                return True
            if self.owner != self._io_ident or self._lend_to is not None:
                return False
            self._lend_to = me
        ioloop.add_callback_threadsafe(nothing)  # ends the I/O thread's wait for I/O
        with turn:
            if not turn.wait_for(lambda: self.owner != self._io_ident, LEND_S):
                if self._lend_to == me:
                    self._lend_to = None  # the I/O thread's turn goes on: not lent
                return False
            if self.owner != me:
                return False
            self._io_wanted = False
            return True

    def holds(self, me: int) -> bool:
        """Whether thread `me` runs the loop or is being lent it."""
        return self.owner == me or self._lend_to == me

    def give_back(self, me: int, busy: Callable[[], bool]) -> None:
        """Thread `me` is done with the loop: the I/O thread takes it at once if work was
        asked for or `busy()` (something in flight), else after `LEND_S`."""
        if self.owner == me:
            self.owner = None  # first: should what follows be interrupted, it is free
        with self._turn:
            if self._lend_to == me:
                self._lend_to = None
            if self.owner == me:  # lent meanwhile (an interrupted `take`)
                self.owner = None
            if self._io_wanted or busy():
                self._io_wanted = True  # work in flight or asked for: the I/O thread, now
                self._turn.notify_all()
            else:
                self._parked_until = time.monotonic() + LEND_S


def run_until(
    ioloop: IOLoop, done: threading.Event, wait_s: float, ended: Callable[[], bool]
) -> None:
    """Run `ioloop` on this thread until `done` is set, `ended()` or `wait_s` passed."""
    deadline = time.monotonic() + wait_s
    # A timer at the deadline bounds each wait for I/O (else up to 5 s, pika's cap).
    timer = ioloop.call_later(wait_s, nothing)
    while not done.is_set() and not ended():
        if time.monotonic() >= deadline:
            break
        ioloop.poll()
        ioloop.process_timeouts()
    ioloop.remove_timeout(timer)


def nothing() -> None:
    """A timer's callback whose only work is to end the wait for I/O."""
