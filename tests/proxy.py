"""A TCP proxy on loopback whose connections a test can cut, to fake a network failure.

```python
proxy = TcpProxy()                       # 127.0.0.1:<free port> -> the test broker
url = proxy.url(RABBIT_URL)              # the same URL, through the proxy
proxy.cut()                              # drop every connection, refuse new ones
proxy.blackhole()                        # or: forward nothing, answer nothing
proxy.restore()                          # accept (and forward) again
proxy.close()
```

Each accepted connection is forwarded by two threads (one per direction). `cut` closes both
sockets of every connection at once, which is what a client sees when a broker or a load
balancer goes away; while cut, new connections are accepted and closed at once.
`blackhole` is a network that drops every packet: connections stay open and nothing goes
through either way (what was sent waits, as TCP retransmits it, and goes through after
`restore`); new connections are accepted and never answered.
"""

from __future__ import annotations

import contextlib
import socket
import threading
from urllib.parse import urlsplit, urlunsplit

from tests.support import RABBIT_ADDRESS

_CHUNK = 65536


class TcpProxy:
    """Forwards `listen_host`:`port` to `target` until cut or closed.

    Args:
        target: Host and port to forward to.
        listen_host: Address to listen on (a free port is picked); another interface's
            address lets other network namespaces reach a broker bound to loopback.
    """

    def __init__(
        self, target: tuple[str, int] = RABBIT_ADDRESS, *, listen_host: str = "127.0.0.1"
    ) -> None:
        self.target = target
        self.listen_host = listen_host
        self._listener = socket.create_server((listen_host, 0))
        self._listener.settimeout(0.1)
        self.port: int = self._listener.getsockname()[1]
        self._lock = threading.Lock()
        self._pairs: set[tuple[socket.socket, socket.socket]] = set()
        self._cut = False
        self._flowing = threading.Event()  # cleared while blackholed
        self._flowing.set()
        self._held: list[socket.socket] = []  # accepted while blackholed, never answered
        self._closed = threading.Event()
        self.accepted = 0
        self.dropped = 0
        self._acceptor = threading.Thread(
            target=self._accept_loop, name=f"proxy-{self.port}", daemon=True
        )
        self._acceptor.start()

    def url(self, url: str) -> str:
        """`url` with its host and port replaced by the proxy's."""
        parts = urlsplit(url)
        credentials = parts.netloc.rsplit("@", 1)[0] + "@" if "@" in parts.netloc else ""
        return urlunsplit(parts._replace(netloc=f"{credentials}{self.listen_host}:{self.port}"))

    @property
    def connections(self) -> int:
        """Connections being forwarded now."""
        with self._lock:
            return len(self._pairs)

    def cut(self) -> None:
        """Close every current connection; drop new ones until `restore`."""
        with self._lock:
            self._cut = True
            pairs = list(self._pairs)
            self._pairs.clear()
        for pair in pairs:
            _close_pair(pair)

    def blackhole(self) -> None:
        """Forward nothing either way and answer no new connection, until `restore`."""
        with self._lock:
            self._flowing.clear()

    def restore(self) -> None:
        """Forward again (new connections, and what a blackhole held)."""
        with self._lock:
            self._cut = False
            held, self._held = self._held, []
            self._flowing.set()
        for sock in held:  # their clients gave up long ago, or will see them close
            _close(sock)

    def close(self) -> None:
        """Stop listening and close every connection."""
        self._closed.set()
        self._flowing.set()
        self.cut()
        with self._lock:
            held, self._held = self._held, []
        for sock in held:
            _close(sock)
        self._acceptor.join(5)
        self._listener.close()

    def __enter__(self) -> TcpProxy:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()

    def _accept_loop(self) -> None:
        while not self._closed.is_set():
            try:
                client, _address = self._listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            with self._lock:
                refuse = self._cut or self._closed.is_set()
            if refuse:
                self.dropped += 1
                _close(client)
                continue
            with self._lock:
                hold = not self._flowing.is_set()
                if hold:
                    self._held.append(client)
            if hold:
                continue
            try:
                upstream = socket.create_connection(self.target, timeout=5)
            except OSError:
                _close(client)
                continue
            upstream.settimeout(None)
            client.settimeout(None)
            pair = (client, upstream)
            with self._lock:
                if self._cut:
                    _close_pair(pair)
                    continue
                self._pairs.add(pair)
                self.accepted += 1
            for source, sink in ((client, upstream), (upstream, client)):
                threading.Thread(
                    target=self._pump, args=(pair, source, sink), name="proxy-pump", daemon=True
                ).start()

    def _pump(
        self,
        pair: tuple[socket.socket, socket.socket],
        source: socket.socket,
        sink: socket.socket,
    ) -> None:
        try:
            while True:
                data = source.recv(_CHUNK)
                if not data:
                    break
                while not self._flowing.wait(0.1):  # blackholed: hold it, as TCP would
                    if self._closed.is_set() or pair not in self._pairs:
                        return
                sink.sendall(data)
        except OSError:
            pass
        with self._lock:
            self._pairs.discard(pair)
        _close_pair(pair)


def _close_pair(pair: tuple[socket.socket, socket.socket]) -> None:
    for sock in pair:
        _close(sock)


def _close(sock: socket.socket) -> None:
    # shutdown() first: it wakes a thread blocked in recv() on this socket, close() may not.
    with contextlib.suppress(OSError):
        sock.shutdown(socket.SHUT_RDWR)
    with contextlib.suppress(OSError):
        sock.close()
