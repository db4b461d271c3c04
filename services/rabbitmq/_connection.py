"""Internal: one AMQP connection owned by one I/O thread, reconnecting with backoff.

The publisher and the worker build on `IOThread`. Everything pika does happens on the
thread that runs the connection's I/O loop: the I/O thread (the publisher lends its loop to
a caller while nothing else is in flight, see `_publisher`). Other threads hand it work
with `call_soon`, which is the only thread-safe entry.
"""

from __future__ import annotations

import contextlib
import os
import random
import socket
import threading
from collections.abc import Callable

import pika
import pika.exceptions
from pika.adapters.select_connection import IOLoop, SelectConnection

from leveret.services import config
from leveret.services.logs import get_logger
from leveret.services.rabbitmq._frames import TolerantSelectConnection
from leveret.services.redaction import redact as redact_url

log = get_logger("leveret.connection")


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


def connection_parameters_all(url: str, *, role: str) -> list[pika.URLParameters]:
    """`connection_parameters` of each URL of a broker URL setting (a cluster's nodes),
    in the order given."""
    return [connection_parameters(one, role=role) for one in config.broker_urls(url)]


def connection_parameters(url: str, *, role: str) -> pika.URLParameters:
    """Pika parameters from one URL, named after this process for the management UI.

    The URL's own query options (``heartbeat``, ``ssl_options``…) are kept; Leveret only
    sets a heartbeat of 30 s and a single connection attempt (it retries by itself) where the
    URL does not say.
    """
    params = pika.URLParameters(url)
    if "heartbeat=" not in url:
        params.heartbeat = 30
    if "connection_attempts=" not in url:
        params.connection_attempts = 1
    if "blocked_connection_timeout=" not in url:
        params.blocked_connection_timeout = 300
    params.client_properties = {
        "connection_name": f"leveret {role} {socket.gethostname()}:{os.getpid()}",
        "product": "leveret",
    }
    return params


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

    Args:
        url: AMQP URL, with credentials; or several, commas between them.
        role: ``publisher`` or ``worker``; names the connection and the thread.
    """

    def __init__(self, url: str, *, role: str) -> None:
        self.url = url
        self._all_params = connection_parameters_all(url, role=role)
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
        self._backoff = ReconnectBackoff()
        self._ioloop: IOLoop | None = None
        self._thread: threading.Thread | None = None
        self._connection: SelectConnection | None = None
        self._stopping = False
        self._loop_ended = False
        """Set when the I/O loop must end (stopped, or crashed on a thread it was lent to)."""
        self._stopped = threading.Event()

    # Lifecycle, called from any thread -------------------------------------------------

    def start(self) -> None:
        """Start the I/O thread, which connects (and reconnects) on its own."""
        self._ioloop = IOLoop()
        self.last_error = None  # of an earlier run (or of the parent, after a fork)
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

    def on_stopping(self) -> None:
        """`stop` was called; the connection is about to close."""

    def on_crashed(self, error: BaseException) -> None:
        """An exception escaped a callback and ended the I/O thread (called on it, last)."""

    @property
    def connection(self) -> SelectConnection | None:
        """The open connection, or None while disconnected."""
        return self._connection

    def _run(self) -> None:
        assert self._ioloop is not None
        try:
            self._connect()
            self._run_loop()
        except BaseException as exc:  # noqa: BLE001  # nothing ends this thread unseen
            self._crash(exc)
        finally:
            self._ioloop.close()
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
        self._connection = None
        try:
            self.on_crashed(error)
        except Exception:  # already failing: keep the first error
            with contextlib.suppress(Exception):
                log.exception("io_thread_crash_handling_failed", role=self.role)

    def _connect(self) -> None:
        if self._stopping:
            return
        TolerantSelectConnection(
            self._all_params[self._node],
            on_open_callback=self._on_open,
            on_open_error_callback=self._on_open_error,
            on_close_callback=self._on_closed,
            custom_ioloop=self._ioloop,
        )

    def _on_open(self, connection: SelectConnection) -> None:
        self._connection = connection
        self._backoff.reset()
        self._failed_in_turn = 0
        self.last_error = None
        self.connections_opened += 1
        self.connected.set()
        log.info("broker_connected", role=self.role, url=self.safe_url)
        self.on_connected(connection)
        self.notify_state()

    def _on_open_error(self, _connection: SelectConnection, error: BaseException) -> None:
        self.last_error = error
        self.failed_attempts += 1
        self.notify_state()
        self._schedule_reconnect(error)

    def _on_closed(self, _connection: SelectConnection, reason: BaseException) -> None:
        self._connection = None
        self.connected.clear()
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
        self.call_later(delay_s, self._connect)

    def _begin_stop(self) -> None:
        self._stopping = True
        self.on_stopping()
        connection = self._connection
        if connection is not None and connection.is_open:
            connection.close()
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
    """A short, credential-free description of a pika error."""
    text = str(error) or type(error).__name__
    if isinstance(error, pika.exceptions.ConnectionClosedByBroker):
        text = f"closed by broker: {error.reply_code} {error.reply_text}"
    elif isinstance(error, pika.exceptions.ChannelClosedByBroker):
        text = f"channel closed by broker: {error.reply_code} {error.reply_text}"
    return f"{type(error).__name__}: {text}"
