"""Internal: confirmed publishing from any thread, through one I/O loop per process.

Callers hand a batch of messages to the I/O thread and wait for the batch to settle. The
I/O thread publishes with `mandatory` on a channel in confirm mode (`_publishing_channel`),
so confirms of many callers (and of `publish_many`) pipeline on one connection and
heartbeats never starve.

A synchronous caller that finds nothing else in flight runs the I/O loop itself instead,
as raw pika's `BlockingConnection` does: it writes its messages and reads their confirms
on its own thread, which saves two thread hand-overs a call (`publish` one at a time). The
I/O thread is parked meanwhile (see `_loop_lending`).

After a lost connection, messages not yet confirmed are published again on the next
connection (at-least-once: a message may then arrive twice, with the same `message_id`).
After `os.fork()` the child starts its own connection lazily on first use.

One message never holds up the others: one that pika cannot encode fails its own caller at
once, and a declaration the broker refuses fails the callers with the broker's reason
while the channel is reopened with backoff. Should the I/O thread itself fail, every caller
waiting gets `PublishError`, and the next publish starts a new connection.

A broker that cannot be reached fails callers fast, apart from the confirm timeout: once no
connection has been open for `connect_timeout_s` and every node failed since the last one
(a cluster fails over first), what waits for a connection fails, with `BrokerUnavailable`
when it was never written (nothing was sent) or `PublishTimeout` when it was written on a
connection since lost (it may be stored). While the broker is known to be unreachable, a
publish makes a connection attempt at once and waits at most `WAIT_WHILE_DOWN_S` for it (see
`_outage`). A connection that goes silent (confirms outstanding, nothing received for
`PROBE_AFTER_S`) is probed by opening a channel; with no answer for `connect_timeout_s` more
it is ended as lost, since it went silent (see `_silence_watch`).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import threading
import time
import weakref
from collections import deque
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING

from pika.adapters.select_connection import SelectConnection

if TYPE_CHECKING:
    from pika.adapters.select_connection import _Timeout

from leveret.schemas.errors import (
    BrokerConnectionError,
    InvalidArgument,
    PublishError,
    TopologyError,
)
from leveret.services.middleware import MiddlewareChain
from leveret.services.rabbitmq._connection import (
    DEFAULT_CONNECT_TIMEOUT_S,
    IOThread,
    describe,
)
from leveret.services.rabbitmq._declaration_queue import DeclarationQueue
from leveret.services.rabbitmq._loop_lending import LoopLending, run_until
from leveret.services.rabbitmq._outage import (
    RECONNECT_NOW_EVERY_S,
    WAIT_WHILE_DOWN_S,
    Outage,
)
from leveret.services.rabbitmq._outgoing import (
    Batch,
    Outgoing,
    check_encodable,
    conclude,
)
from leveret.services.rabbitmq._publishing_channel import PublishingChannel
from leveret.services.topology.declarations import Step

_live: weakref.WeakSet[Publisher] = weakref.WeakSet()


class Publisher(IOThread):
    """Thread-safe, fork-safe confirmed publisher over one connection.

    Args:
        url: AMQP URL.
        declare_on_connect: Declarations made on every (re)connection before publishing,
            e.g. the namespace's exchanges.
        confirm_timeout_s: How long a caller waits for confirms before `PublishError`.
        connect_timeout_s: How long one connection attempt may take, and how long a caller
            waits for a broker that cannot be reached (see the module).
    """

    def __init__(
        self,
        url: str,
        *,
        declare_on_connect: Sequence[Step] = (),
        confirm_timeout_s: float = 30.0,
        connect_timeout_s: float = DEFAULT_CONNECT_TIMEOUT_S,
    ) -> None:
        super().__init__(url, role="publisher", connect_timeout_s=connect_timeout_s)
        self.confirm_timeout_s = confirm_timeout_s
        self._declare_on_connect = list(declare_on_connect)
        self._reset_state()
        _live.add(self)

    @property
    def middleware(self) -> MiddlewareChain | None:
        """Its ``publish_confirmed`` sees each confirm (metrics), on the I/O thread; None
        when no middleware looks."""
        return self._publishing.middleware

    @middleware.setter
    def middleware(self, middleware: MiddlewareChain | None) -> None:
        self._publishing.middleware = middleware

    def _forget_parent_after_fork(self) -> None:
        """In a forked child: drop the parent's connection and thread, which are not ours.

        Never touch the socket (a close frame would end the parent's connection); keep the
        objects alive so that nothing closes them.
        """
        self.drop_inherited()
        self._reset_state(middleware=self.middleware)

    def _reset_state(self, middleware: MiddlewareChain | None = None) -> None:
        self._pid = os.getpid()
        self._start_lock = threading.Lock()
        # Callers append on the right; only the I/O thread takes from the left (and puts
        # back on the left after a lost channel). Single appends and pops of a deque are
        # atomic, and nobody iterates it: it can change under anyone at any time.
        self._inbox: deque[Outgoing] = deque()
        self._lending = LoopLending()  # who runs the I/O loop
        self._crash_unhandled: BaseException | None = None  # see `_run_loop_for`
        self._declarations = DeclarationQueue()
        self._expiry_timer: _Timeout | None = None  # the next `_check_unreachable`
        self._outage = Outage(self, self._inbox, self._declarations.since)
        self._publishing = PublishingChannel(
            self,
            self._inbox,
            self._declare_on_connect,
            after_ready=self._run_declares,
            no_connection=self._check_unreachable,
            middleware=middleware,
        )

    # Callers, any thread -----------------------------------------------------------------

    def publish(
        self,
        items: Sequence[Outgoing],
        *,
        raise_errors: bool = True,
        timeout_s: float | None = None,
    ) -> Batch:
        """Publish `items` and wait until the broker confirmed (or refused) every one.

        Args:
            items: The messages.
            raise_errors: Raise on the first message not confirmed. When False, every
                message's fate is in the returned batch instead (`Batch.errors`,
                `Batch.timed_out`), so one refused message does not hide that the others
                were stored.
            timeout_s: How long to wait for the confirms; `confirm_timeout_s` if None.

        Returns:
            The settled batch; `Batch.unroutable` lists fan-out publishes no queue took.

        Raises:
            PublishTimeout: No confirm within the timeout (with `raise_errors`).
                The publisher then drops the messages it has not sent yet (or must send
                again after a lost connection): only the caller retries, so no copy turns up
                later under another id.
            BrokerUnavailable: The broker could not be reached in time: nothing was sent (see
                the module; with `raise_errors`).
            PublishError: A message was nacked, a `send` found no queue, the broker refused
                the namespace's declarations, or a message cannot be encoded (with
                `raise_errors`).
            InvalidArgument: A name or property is longer than AMQP allows (255 bytes; with
                `raise_errors`, else that message's error).
        """
        me = threading.get_ident()
        if self._lending.owner == me:
            # A signal handler (or a finalizer) publishing while its thread, interrupted,
            # runs the loop for its own publish: nothing else can run it meanwhile.
            raise PublishError(
                "publish() was called again on a thread interrupted in publish() (a signal "
                "handler?): set a flag in the handler and publish after it returned",
                message_id=items[0].message_id if items else None,
            )
        batch = self._submit(items, raise_errors=raise_errors, wake=False)
        wait_s = self.confirm_timeout_s if timeout_s is None else timeout_s
        settled = batch.done.is_set() or self._run_loop_for(batch, wait_s, me)
        if settled is None:
            self._publishing.wake()
            settled = batch.done.wait(wait_s)
        return self._conclude(batch, items, settled, wait_s, raise_errors)

    async def publish_async(
        self, items: Sequence[Outgoing], *, timeout_s: float | None = None
    ) -> Batch:
        """`publish` (raising errors) for asyncio code: awaits the confirms.

        The caller's event loop goes on meanwhile: the I/O thread wakes the waiting task
        when the batch is settled. A task cancelled while it waits (a time limit) gives up
        the batch as a timeout does: what was not sent yet is not sent any more.
        """
        loop = asyncio.get_running_loop()
        settled: asyncio.Future[None] = loop.create_future()

        def wake() -> None:  # I/O thread
            # RuntimeError: the caller's loop closed meanwhile, nobody waits any more.
            with contextlib.suppress(RuntimeError):
                loop.call_soon_threadsafe(_resolve, settled)

        batch = self._submit(items, raise_errors=True, on_done=wake)
        wait_s = self.confirm_timeout_s if timeout_s is None else timeout_s
        try:
            await asyncio.wait_for(settled, wait_s)
        except TimeoutError:
            pass
        except asyncio.CancelledError:
            self._abandon(batch)
            raise
        return self._conclude(batch, items, batch.done.is_set(), wait_s, raise_errors=True)

    def _submit(
        self,
        items: Sequence[Outgoing],
        *,
        raise_errors: bool,
        on_done: Callable[[], None] | None = None,
        wake: bool = True,
    ) -> Batch:
        """Check `items` and hand them to the I/O thread, as one batch (`wake`: tell it
        now; else the caller runs the loop or wakes it)."""
        batch = Batch(
            remaining=len(items),
            settled=[False] * len(items),
            on_done=on_done,
            submitted_at=time.monotonic(),
        )
        if not items:
            batch.done.set()
            return batch
        sendable = []
        for index, item in enumerate(items):
            item.batch = batch
            item.index = index
            try:
                check_encodable(item)
            except InvalidArgument as exc:
                if raise_errors:
                    raise
                batch.settle(index, str(exc), unroutable=False)
                continue
            sendable.append(item)
        if sendable:
            self._ensure_started()
            self._inbox.extend(sendable)
            if wake:
                self._publishing.wake()
        return batch

    def _abandon(self, batch: Batch) -> None:
        """The caller stopped waiting: drop what of `batch` is not sent yet."""
        batch.abandoned = True
        if self.running:
            self.call_soon(self._publishing.drop_abandoned)

    def _conclude(
        self,
        batch: Batch,
        items: Sequence[Outgoing],
        settled: bool,
        wait_s: float,
        raise_errors: bool,
    ) -> Batch:
        """What a caller gets once it stopped waiting for `batch` (`settled`: in time)."""
        late = None
        if items and not settled:
            self._abandon(batch)  # first: see `PublishingChannel.flush`
            late = f"no confirm within {wait_s}s: {self._waiting_reason()}"
        return conclude(batch, items, late, raise_errors)

    def declare(self, todo: list[Step], timeout_s: float = 30.0) -> None:
        """Declare topology on a channel of this connection, waiting until it is done.

        Raises:
            TopologyError: The broker refused a declaration, or it did not finish in time.
            BrokerConnectionError: The broker could not be reached in time (as a publish
                waits for it, see the module).
        """
        self._ensure_started()
        future = self._declarations.add(todo)
        self.call_soon(self._run_declares)
        try:
            future.result(timeout_s)
        except TimeoutError as exc:
            why = f"declaring topology did not finish within {timeout_s}s: "
            if not self.connected.is_set():  # no connection: the broker's, not topology's
                raise BrokerConnectionError(why + self._waiting_reason()) from exc
            raise TopologyError(why + self._waiting_reason()) from exc

    def close(self, timeout_s: float = 10.0) -> None:
        """Close the connection; callers still waiting for a confirm get `PublishError`."""
        if os.getpid() == self._pid:
            self.stop(timeout_s)

    def _ensure_started(self) -> None:
        if os.getpid() != self._pid:
            self._forget_parent_after_fork()
        if self.running and not self._loop_ended:
            return
        with self._start_lock:
            if self.running and self._loop_ended and self._thread is not None:
                # Its loop ended (a crash on a caller's thread): the thread is on its way
                # out; wait for it rather than hand it messages nobody would send.
                self._thread.join(5.0)
            if not self.running:
                crash = self._crash_unhandled
                if crash is not None:
                    # A crash on a caller's thread whose handling was itself interrupted (a
                    # second signal): finish it, so nothing of the old channel carries over.
                    self._crash(crash)
                    self._crash_unhandled = None
                self.start()

    def call_soon(self, callback: Callable[[], None]) -> None:
        """`IOThread.call_soon`, which also wakes the I/O thread when it is parked."""
        super().call_soon(callback)
        self._lending.wanted()

    # The I/O loop, lent to a caller ----------------------------------------------------

    def _run_loop(self) -> None:
        """The I/O thread's loop, which it lends to callers (see `_loop_lending`)."""
        ioloop = self._ioloop
        assert ioloop is not None
        self._lending.run_io_thread(ioloop, ended=lambda: self._loop_ended, crashed=self._end)

    def _end(self) -> None:
        """The I/O thread crashes (`_run`): its loop is over."""
        self._loop_ended = True

    def _quiet(self) -> bool:
        """Whether nothing is in flight, so that a caller may run the loop for itself."""
        return (
            self._publishing.idle()
            and not self._declarations.busy()
            and not self._stopping
            and not self._loop_ended
        )

    def _run_loop_for(self, batch: Batch, wait_s: float, me: int) -> bool | None:
        """Publish the inbox and run the I/O loop on this thread until `batch` is settled
        or `wait_s` has passed, if the loop can be taken (`LoopLending.take`); then give it
        back.

        Returns:
            Whether `batch` was settled; None when the loop could not be taken (then the
            I/O thread must be woken to publish it).

        An exception escaping pika or a callback here (a KeyboardInterrupt too) ends the
        connection as it would on the I/O thread: every caller waiting gets `PublishError`,
        the next publish starts a new connection, and a BaseException is raised again.
        """
        lending = self._lending
        try:
            ioloop = self._ioloop
            if ioloop is None or not lending.take(me, self._quiet, ioloop):
                return None
            try:
                self._publishing.flush()
                run_until(ioloop, batch.done, wait_s, lambda: self._loop_ended)
            except BaseException as exc:
                self._loop_ended = True  # first: the I/O thread ends; see `_ensure_started`
                self._crash_unhandled = exc
                self._crash(exc)
                self._crash_unhandled = None
                if not isinstance(exc, Exception):
                    raise
            return batch.done.is_set()
        finally:
            # Checked here, not by a flag: an interruption may come between taking the
            # loop (or asking for it) and any statement that would record it.
            if lending.holds(me):
                lending.give_back(me, busy=self._busy)

    def _busy(self) -> bool:
        """Whether the I/O thread has work now that a caller gave the loop back."""
        return self._loop_ended or bool(self._inbox) or not self._quiet()

    def unavailable_reason(self, timeout_s: float) -> str | None:
        """Why the broker cannot take a message now, or None when it can.

        Connects first if need be, waiting at most `timeout_s` for the connection, and no
        longer than until the broker is known to be unreachable (every node failed since
        the last connection: a cluster fails over first). When it is known to be
        unreachable already, an attempt is made now (unless one was made within
        `RECONNECT_NOW_EVERY_S`: then that one's answer is fresh) and a round over the nodes
        waited for, at most `WAIT_WHILE_DOWN_S`, so that a broker that came back is seen at
        once.
        """
        self._ensure_started()
        publishing = self._publishing
        known_down = self._outage.known_down()
        if known_down:
            if time.monotonic() - self.attempt_started_at < RECONNECT_NOW_EVERY_S:
                return self._waiting_reason()  # an attempt just failed: that is fresh
            timeout_s = min(timeout_s, WAIT_WHILE_DOWN_S)
            self.call_soon(self._outage.reconnect_if_down)
        # Known down: until each node failed once more; else until every node failed.
        failed_enough = self.failed_attempts + self.nodes if known_down else None
        deadline = time.monotonic() + timeout_s
        with self.state_changed:
            while not publishing.ready and publishing.refused is None:
                if failed_enough is None:
                    if self._outage.known_down():
                        break
                elif self.failed_attempts >= failed_enough:
                    break
                left = deadline - time.monotonic()
                if left <= 0:
                    break
                self.state_changed.wait(left)
        if publishing.ready and publishing.blocked is None and publishing.refused is None:
            return None
        return self._waiting_reason()

    def _waiting_reason(self) -> str:
        """Why messages wait instead of being confirmed (for error messages)."""
        if not self.connected.is_set():
            cause = describe(self.last_error) if self.last_error else "still connecting"
            return f"broker at {self.safe_url} unreachable ({cause})"
        publishing = self._publishing
        if publishing.blocked is not None:
            return (
                f"the broker at {self.safe_url} blocks publishing ({publishing.blocked}; a "
                "memory or disk alarm)"
            )
        if publishing.refused is not None:
            return publishing.refused
        if not publishing.ready:
            return f"the channel to {self.safe_url} is not open yet"
        return f"the broker at {self.safe_url} did not answer"

    # I/O thread --------------------------------------------------------------------------

    def on_connected(self, connection: SelectConnection) -> None:
        self._publishing.open(connection)

    def on_disconnected(self, reason: BaseException) -> None:
        self._publishing.lost(reason)
        self._declarations.requeue_unopened()
        self._check_unreachable()

    def on_connect_failed(self, error: BaseException) -> None:
        self._check_unreachable()

    # A broker that cannot be reached (I/O thread) -------------------------------------

    def _check_unreachable(self) -> None:
        """Fail what waits for a connection past its deadline (`Outage.expire`); look again
        at the next deadline."""
        timer, self._expiry_timer = self._expiry_timer, None
        if timer is not None and self._ioloop is not None:
            self._ioloop.remove_timeout(timer)
        if self.connection is not None or self._loop_ended:
            return
        wait_s = self._outage.expire()
        if wait_s is not None and self._ioloop is not None:
            self._expiry_timer = self._ioloop.call_later(wait_s, self._check_unreachable)

    def on_stopping(self) -> None:
        self._fail_everything("publisher closed before the broker confirmed")

    def on_crashed(self, error: BaseException) -> None:
        # The next publish starts a new I/O thread and connection; nobody waits in vain.
        self._fail_everything(f"the publisher's I/O thread failed: {type(error).__name__}: {error}")
        # What belonged to the dead loop: its timers are gone with it.
        self._publishing.forget()
        self._expiry_timer = None

    def _fail_everything(self, reason: str) -> None:
        self._publishing.fail_all(reason)
        self._declarations.fail_all(reason)

    def _run_declares(self) -> None:
        connection = self.connection
        if not self._publishing.ready or connection is None:
            if connection is None:
                self._check_unreachable()
            return
        self._declarations.run(connection)


def _resolve(settled: asyncio.Future[None]) -> None:
    if not settled.done():
        settled.set_result(None)


def _reset_all_after_fork() -> None:
    for publisher in list(_live):
        publisher._forget_parent_after_fork()


os.register_at_fork(after_in_child=_reset_all_after_fork)
