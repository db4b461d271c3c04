"""Internal: one AMQP connection owned by one I/O thread, reconnecting with backoff.

The publisher and the worker build on `IOThread`. Everything pika does happens on the
thread that runs the connection's I/O loop: the I/O thread (the publisher lends its loop to
a caller while nothing else is in flight, see `_loop_lending`). Other threads hand it work
with `call_soon`, which is the only thread-safe entry.
"""

from __future__ import annotations

import contextlib
import os
import random
import socket
import threading
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Protocol

import pika
import pika.exceptions
from pika.adapters.select_connection import IOLoop, SelectConnection
from pika.adapters.utils.connection_workflow import AMQPConnectorException

if TYPE_CHECKING:
    from pika.adapters.select_connection import _Timeout

from leveret.services import config
from leveret.services.observability.logs import get_logger
from leveret.services.observability.redaction import redact as redact_url
from leveret.services.rabbitmq._frames import TolerantSelectConnection

log = get_logger("leveret.connection")

DEFAULT_CONNECT_TIMEOUT_S = config.DEFAULT_CONNECT_TIMEOUT_S

OPENING_ERRORS = (pika.exceptions.AMQPError, AMQPConnectorException)
"""What opening a `pika.BlockingConnection` raises when it fails: pika's errors, and (not
one of them) a handshake past its ``stack_timeout``. Each is described by `describe`."""


class ReconnectBackoff:
    """Exponential backoff with full jitter: delays grow from `first_s` up to `max_s`."""

    def __init__(self, first_s: float = 0.5, max_s: float = 30.0) -> None:
        self.first_s = first_s
        self.max_s = max_s
        self.failures = 0

    def next_delay_s(self) -> float:
        """The delay before the next attempt; each call counts one more failure."""
        ceiling = min(self.max_s, self.first_s * 2**self.failures)
        self.failures += 1
        return random.uniform(ceiling / 2, ceiling)

    def reset(self) -> None:
        """Forget past failures (after a successful connection)."""
        self.failures = 0


def connection_parameters_all(
    url: str, *, role: str, connect_timeout_s: float = DEFAULT_CONNECT_TIMEOUT_S
) -> list[pika.URLParameters]:
    """`connection_parameters` of each URL of a broker URL setting (a cluster's nodes),
    in the order given."""
    return [
        connection_parameters(one, role=role, connect_timeout_s=connect_timeout_s)
        for one in config.broker_urls(url)
    ]


def connection_parameters(
    url: str, *, role: str, connect_timeout_s: float = DEFAULT_CONNECT_TIMEOUT_S
) -> pika.URLParameters:
    """Pika parameters from one URL, named after this process for the management UI.

    The URL's own query options (``heartbeat``, ``ssl_options``…) are kept; Leveret only
    sets, where the URL does not say, a heartbeat of 30 s, a single connection attempt (it
    retries by itself) and `connect_timeout_s` for the attempt: for the TCP connection
    (``socket_timeout``) and for the whole handshake (``stack_timeout``; pika's defaults,
    10 s and 15 s, would keep a node that drops packets for that long).
    """
    params = pika.URLParameters(url)
    if "heartbeat=" not in url:
        params.heartbeat = 30
    if "connection_attempts=" not in url:
        params.connection_attempts = 1
    if "socket_timeout=" not in url:
        params.socket_timeout = connect_timeout_s
    if "stack_timeout=" not in url:
        params.stack_timeout = connect_timeout_s
    if "blocked_connection_timeout=" not in url:
        params.blocked_connection_timeout = 300
    params.client_properties = {
        "connection_name": f"leveret {role} {socket.gethostname()}:{os.getpid()}",
        "product": "leveret",
    }
    return params


class IO(Protocol):
    """What a part of an I/O thread's work (heartbeats, republishing) needs of it; called on
    the I/O thread only."""

    @property
    def connection(self) -> SelectConnection | None:
        """The open connection, or None."""
        ...

    def call_later(self, delay_s: float, callback: Callable[[], None]) -> None:
        """Run `callback` on the I/O loop after `delay_s`."""
        ...


_INHERITED: list[object] = []
"""What forked children dropped of their parents' I/O threads (`IOThread.drop_inherited`),
kept so that no finalizer closes a socket the parent still uses."""


class IOThread:
    """Runs one `SelectConnection` on a dedicated daemon thread and keeps it connected.

    Subclasses implement `on_connected` (open channels, start work) and `on_disconnected`
    (forget channel state); both run on the I/O thread.

    No exception ends the I/O thread silently: one that escapes a callback is logged with
    its traceback, the socket is closed (the broker takes back whatever was unacked), and
    `on_crashed` tells the subclass, which decides whether the process can go on.

    Several URLs (a cluster's nodes, commas between them) are tried in turn: the first
    connection goes to a node picked at random (so that many processes spread over the
    cluster), a lost one fails over to the next node at once, and only when every node
    failed in a row does the backoff wait grow.

    It also keeps what a caller needs to tell a broker that is down from one that is slow:
    since when no connection is open (`outage_since`), which nodes failed since the last
    one opened (`failed_nodes`), and whether an attempt is under way; `reconnect_now` skips
    the backoff's wait.

    Args:
        url: AMQP URL, with credentials; or several, commas between them.
        role: ``publisher`` or ``worker``; names the connection and the thread.
        connect_timeout_s: How long one connection attempt to one node may take.
    """

    def __init__(
        self, url: str, *, role: str, connect_timeout_s: float = DEFAULT_CONNECT_TIMEOUT_S
    ) -> None:
        self.url = url
        self.connect_timeout_s = connect_timeout_s
        self._all_params = connection_parameters_all(
            url, role=role, connect_timeout_s=connect_timeout_s
        )
        self._safe_urls = [redact_url(one) for one in config.broker_urls(url)]
        self._node = random.randrange(len(self._all_params))
        self._failed_in_turn = 0  # nodes that failed one after the other since the last open
        self.safe_url = self._safe_urls[self._node]
        """The (redacted) URL of the node connected to, or tried next."""
        self.role = role
        self.last_error: BaseException | None = None
        self.crashed: BaseException | None = None
        """The exception that ended the I/O thread, if one did."""
        self.connected = threading.Event()
        self.state_changed = threading.Condition()
        """Notified when the connection opens, fails or closes (and by subclasses)."""
        self.failed_attempts = 0
        """Connections that failed to open or were lost: a waiter sees one more at once."""
        self.connections_opened = 0
        """Connections opened so far (the first one and every reconnect)."""
        self.outage_since: float | None = None
        """Monotonic time since which no connection is open (None while one is, and before
        the first attempt); for a connection that died silently, since it went silent."""
        self.failed_nodes: set[int] = set()
        """Nodes (indices of the URLs) whose connection failed or was lost since one last
        opened: when it holds every node, the broker is known to be unreachable."""
        self.attempting = False
        """Whether a connection attempt is under way."""
        self.attempt_started_at = 0.0
        """Monotonic time the last attempt started."""
        self._reconnect_timer: _Timeout | None = None
        self._backoff = ReconnectBackoff()
        self._ioloop: IOLoop | None = None
        self._thread: threading.Thread | None = None
        self._connection: SelectConnection | None = None
        self._opening_connection: SelectConnection | None = None
        """The connection of the attempt under way: its socket is pika's until the attempt
        ends, so a stop meanwhile aborts it through pika (see `_begin_stop`)."""
        self._stopping = False
        self._loop_ended = False
        """Set when the I/O loop must end (stopped, or crashed on a thread it was lent to)."""
        self._stopped = threading.Event()

    # Lifecycle, called from any thread -------------------------------------------------

    def drop_inherited(self) -> None:
        """In a forked child: drop the parent's connection, I/O loop and thread, which are
        not ours. Never touch the socket (a close frame would end the parent's connection);
        the objects are kept alive so that nothing closes them."""
        _INHERITED.append((self._connection, self._opening_connection, self._ioloop))
        self._connection = self._opening_connection = None
        self._ioloop = None
        self._thread = None
        self.connected = threading.Event()
        self.state_changed = threading.Condition()

    def start(self) -> None:
        """Start the I/O thread, which connects (and reconnects) on its own."""
        self._ioloop = IOLoop()
        self.last_error = None  # of an earlier run (or of the parent, after a fork)
        self.outage_since = None
        self.failed_nodes = set()
        self.attempting = False
        self._reconnect_timer = None
        self._opening_connection = None
        self._stopping = False
        self._loop_ended = False
        self._stopped.clear()
        self._thread = threading.Thread(
            target=self._run, name=f"leveret-{self.role}-io", daemon=True
        )
        self._thread.start()

    @property
    def running(self) -> bool:
        """Whether the I/O thread is alive."""
        return self._thread is not None and self._thread.is_alive()

    @property
    def stopping(self) -> bool:
        """Whether `stop` was called: the connection closes for good."""
        return self._stopping

    def call_soon(self, callback: Callable[[], None]) -> None:
        """Run `callback` on the I/O thread as soon as possible (thread-safe).

        Once the I/O thread has ended the callback is dropped with a log line: the
        connection it would act on is closed, so the broker already took back whatever the
        callback was about (e.g. an ack of a delivery whose connection is gone).
        """
        ioloop = self._ioloop
        if ioloop is None:
            raise RuntimeError("the I/O thread is not started")
        if self._stopped.is_set():
            log.info("io_callback_dropped", role=self.role, reason="I/O thread has ended")
            return
        try:
            ioloop.add_callback_threadsafe(callback)
        except Exception as exc:  # noqa: BLE001  # the loop closed under us: same as above
            log.info("io_callback_dropped", role=self.role, reason=repr(exc))

    def call_later(self, delay_s: float, callback: Callable[[], None]) -> None:
        """Run `callback` on the I/O loop after `delay_s` (from the loop's thread only)."""
        assert self._ioloop is not None
        self._ioloop.call_later(delay_s, callback)

    def stop(self, timeout_s: float = 10.0) -> None:
        """Close the connection cleanly and end the I/O thread.

        Args:
            timeout_s: How long to wait for the thread to end.
        """
        if not self.running:
            return
        self.call_soon(self._begin_stop)
        self._stopped.wait(timeout_s)
        if self._thread is not None:
            self._thread.join(timeout_s)

    # On the I/O thread ------------------------------------------------------------------

    def on_connected(self, connection: SelectConnection) -> None:
        """The connection is open (first time or after a reconnect)."""

    def on_disconnected(self, reason: BaseException) -> None:
        """The connection is gone; every channel on it is gone too."""

    def on_connect_failed(self, error: BaseException) -> None:
        """A connection attempt failed (the next one is scheduled already)."""

    def on_stopping(self) -> None:
        """`stop` was called; the connection is about to close."""

    def on_crashed(self, error: BaseException) -> None:
        """An exception escaped a callback and ended the I/O thread (called on it, last)."""

    @property
    def connection(self) -> SelectConnection | None:
        """The open connection, or None while disconnected."""
        return self._connection

    def _run(self) -> None:
        ioloop = self._ioloop  # this thread's: a later `start` puts a new one in its place
        assert ioloop is not None
        try:
            self._connect()
            self._run_loop()
        except BaseException as exc:  # noqa: BLE001  # nothing ends this thread unseen
            self._crash(exc)
        finally:
            ioloop.close()
            self._stopped.set()

    def _run_loop(self) -> None:
        """Run the I/O loop until `_end_loop` (the publisher runs its own, lending it)."""
        assert self._ioloop is not None
        self._ioloop.start()

    def _end_loop(self) -> None:
        """End the I/O loop: the I/O thread then closes it and ends."""
        self._loop_ended = True
        assert self._ioloop is not None
        self._ioloop.stop()

    def _crash(self, error: BaseException) -> None:
        self.crashed = error
        self.connected.clear()
        with contextlib.suppress(Exception):  # logging itself may be what failed
            log.error(
                "io_thread_crashed",
                role=self.role,
                error=f"{type(error).__name__}: {error}",
                exc_info=error,
            )
        _abort_socket(self._connection)
        # An attempt past its TCP connect: the socket is its transport's.
        _abort_socket(self._opening_connection)
        self._connection = self._opening_connection = None
        try:
            self.on_crashed(error)
        except Exception:  # already failing: keep the first error
            with contextlib.suppress(Exception):
                log.exception("io_thread_crash_handling_failed", role=self.role)

    @property
    def nodes(self) -> int:
        """How many nodes (URLs) this connection may use."""
        return len(self._all_params)

    def reconnect_now(self) -> None:
        """Make the next connection attempt now instead of after the backoff's wait (I/O
        thread only; nothing happens while connected or while an attempt is under way)."""
        timer, self._reconnect_timer = self._reconnect_timer, None
        if timer is None or self.attempting or self._connection is not None or self._stopping:
            self._reconnect_timer = timer
            return
        assert self._ioloop is not None
        self._ioloop.remove_timeout(timer)
        self._connect()

    def _connect(self) -> None:
        self._reconnect_timer = None
        if self._stopping:
            return
        now = time.monotonic()
        if self.outage_since is None:
            self.outage_since = now
        self.attempting = True
        self.attempt_started_at = now
        self._opening_connection = TolerantSelectConnection(
            self._all_params[self._node],
            on_open_callback=self._on_open,
            on_open_error_callback=self._on_open_error,
            on_close_callback=self._on_closed,
            custom_ioloop=self._ioloop,
        )

    def _on_open(self, connection: SelectConnection) -> None:
        self._opening_connection = None
        self._connection = connection
        self._backoff.reset()
        self._failed_in_turn = 0
        self.attempting = False
        self.outage_since = None
        self.failed_nodes.clear()
        self.last_error = None
        self.connections_opened += 1
        self.connected.set()
        log.info("broker_connected", role=self.role, url=self.safe_url)
        self.on_connected(connection)
        self.notify_state()

    def _on_open_error(self, _connection: SelectConnection, error: BaseException) -> None:
        self._opening_connection = None
        self.attempting = False
        self.failed_nodes.add(self._node)
        self.last_error = error
        self.failed_attempts += 1
        self.notify_state()
        self._schedule_reconnect(error)
        self.on_connect_failed(error)

    def _on_closed(self, _connection: SelectConnection, reason: BaseException) -> None:
        self._connection = None
        self.connected.clear()
        if self.outage_since is None:  # a silent death (`lost_since`) may have set it
            self.outage_since = time.monotonic()
        self.failed_nodes.add(self._node)
        self.on_disconnected(reason)
        if self._stopping:
            self._end_loop()
            return
        self.last_error = reason
        self.failed_attempts += 1
        self.notify_state()
        self._schedule_reconnect(reason)

    def notify_state(self) -> None:
        """Wake every thread waiting on `state_changed`."""
        with self.state_changed:
            self.state_changed.notify_all()

    def _schedule_reconnect(self, reason: BaseException) -> None:
        if self._stopping:
            self._end_loop()
            return
        failed_url = self.safe_url
        nodes = len(self._all_params)
        self._failed_in_turn += 1
        self._node = (self._node + 1) % nodes
        self.safe_url = self._safe_urls[self._node]
        if self._failed_in_turn < nodes:
            delay_s = random.uniform(0.05, 0.2)  # the next node, almost at once
        else:  # every node failed in a row: wait longer each round
            self._failed_in_turn = 0
            delay_s = self._backoff.next_delay_s()
        log.warning(
            "broker_unreachable",
            role=self.role,
            url=failed_url,
            error=describe(reason),
            retry_in_s=round(delay_s, 2),
            **({"next_url": self.safe_url} if nodes > 1 else {}),
        )
        assert self._ioloop is not None
        self._reconnect_timer = self._ioloop.call_later(delay_s, self._connect)

    def end_silent_connection(self, since: float, why: str) -> None:
        """End the open connection, which has not answered since `since` (monotonic): its
        socket is dropped at once (a close would wait for the broker's answer), and the
        connection is handled as lost, `outage_since` being `since` (I/O thread only)."""
        connection = self._connection
        if connection is None or not connection.is_open:
            return
        self.outage_since = since
        # What pika's own heartbeat checker does with a connection that went silent.
        connection._terminate_stream(  # type: ignore[attr-defined]
            pika.exceptions.StreamLostError(why)
        )

    def _begin_stop(self) -> None:
        self._stopping = True
        self.on_stopping()
        connection = self._connection
        opening = self._opening_connection
        if connection is not None and connection.is_open:
            connection.close()
        elif opening is not None:
            # An attempt under way: ending the loop now would leave its socket open (for
            # the garbage collector to close, with a ResourceWarning). Closing an opening
            # connection aborts pika's connection workflow, which closes the socket and
            # then calls `_on_open_error`, which ends the loop. One closing already (its
            # handshake timed out) calls it too.
            if not opening.is_closing and not opening.is_closed:
                try:
                    opening.close()
                except pika.exceptions.ConnectionWrongStateError:
                    self._end_loop()  # nothing to abort after all
        elif connection is None or connection.is_closed:
            self._end_loop()


def _abort_socket(connection: SelectConnection | None) -> None:
    """Close the connection's socket at once: its I/O loop no longer runs to close it.

    The broker then sees the connection go and takes back every unacked delivery, instead
    of waiting for missed heartbeats while the socket lingers.
    """
    transport = getattr(connection, "_transport", None)
    sock = getattr(transport, "_sock", None)
    if isinstance(sock, socket.socket):
        try:
            sock.close()
        except OSError as exc:
            log.info("io_socket_close_failed", error=repr(exc))


def describe(error: BaseException) -> str:
    """A short, credential-free description of a pika error.

    pika wraps what went wrong (a refused connection, a timeout) in errors whose own text
    is empty: the innermost cause is named too, e.g. ``AMQPConnectionError:
    ConnectionRefusedError: [Errno 111] Connection refused``.
    """
    if isinstance(error, pika.exceptions.ConnectionClosedByBroker):
        text = f"closed by broker: {error.reply_code} {error.reply_text}"
    elif isinstance(error, pika.exceptions.ChannelClosedByBroker):
        text = f"channel closed by broker: {error.reply_code} {error.reply_text}"
    else:
        cause = innermost(error)
        if cause is error:
            text = str(error) or "no details"
        else:
            text = f"{type(cause).__name__}: {str(cause) or 'no details'}"
    return f"{type(error).__name__}: {text}"


def innermost(error: BaseException) -> BaseException:
    """The exception pika wrapped in `error` (as its argument, or cause), innermost first;
    `error` itself when it wraps none."""
    seen = {id(error)}
    while True:
        # The last of a connection workflow's attempts, a phase's error, an argument, or
        # the cause (pika's wrappers keep them in these places).
        attempts = getattr(error, "exceptions", None)
        inner = attempts[-1] if isinstance(attempts, tuple | list) and attempts else None
        if not isinstance(inner, BaseException):
            inner = getattr(error, "exception", None)
        if not isinstance(inner, BaseException):
            inner = next((arg for arg in error.args if isinstance(arg, BaseException)), None)
        if inner is None:
            inner = error.__cause__
        if inner is None or id(inner) in seen:
            return error
        seen.add(id(inner))
        error = inner


def node_down(reason: BaseException) -> bool:
    """Whether the broker closed the channel because a durable queue's node is not up: a
    node of a cluster that died, or this broker starting (it accepts connections before it
    has recovered its queues). The queue is back when its node is."""
    return (
        isinstance(reason, pika.exceptions.ChannelClosedByBroker)
        and reason.reply_code == _NOT_FOUND
        and "down or inaccessible" in str(reason.reply_text)
    )


_NOT_FOUND = 404
