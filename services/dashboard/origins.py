"""Who may talk to the dashboard from a browser: the Host names it answers to, its own
origins, and the Fetch Metadata policy that keeps other sites from making it work.

- **Host allowlist** (DNS rebinding): an attacker's page at ``rebind.attacker.example``
  whose name is re-pointed at 127.0.0.1 is, for the browser, the attacker's own origin: it
  may read what it fetches. Only the Host header tells the dashboard apart from that page.
  So the dashboard answers only to the loopback names (``localhost``, ``127.0.0.1`` and
  ``[::1]``, with the port the request came in on) and to the hosts named by
  ``--allowed-hosts`` (those a reverse proxy passes), compared exactly. With a token and no
  list, any Host is served: a rebound page has no credentials to send.
- **Own origins**: an ``Origin`` (or, without one, a ``Referer``) must be the origin of an
  allowed host, never merely the request's own Host (which the rebinding attacker chooses).
- **Fetch Metadata** (``Sec-Fetch-Site``, ``-Mode``, ``-Dest``, sent by every current
  browser): a request from another site is refused before any work starts, except a
  top-level navigation (a link followed from a chat or a ticket), which pages may answer
  without doing the expensive part (`CROSS_SITE_NAVIGATION`). Requests without these headers
  (command-line clients, old browsers) go on to the other checks.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from enum import Enum
from urllib.parse import urlsplit

from leveret.schemas.errors import InvalidArgument

ALLOWED_HOSTS_ENV = "LEVERET_DASHBOARD_ALLOWED_HOSTS"
LOOPBACK_NAMES = ("localhost", "127.0.0.1", "[::1]")
DEFAULT_PORTS = {"http": 80, "https": 443}
CROSS_SITE_NAVIGATION = "leveret.cross_site_navigation"
"""Scope key set (True) on a top-level navigation from another site."""

_LABEL = r"[a-z0-9_]([a-z0-9_-]{0,61}[a-z0-9_])?"
_HOST_NAME = re.compile(rf"{_LABEL}(\.{_LABEL})*")
# Frames and plugins cannot show the dashboard (frame-ancestors 'none'), but the request
# would still do its work: only a top-level document may come from elsewhere.
_NAVIGATION_DESTINATIONS = {"document", ""}


class Fetch(Enum):
    """What the Fetch Metadata headers say of a request."""

    OWN = "own"
    """From the dashboard's own pages, typed or bookmarked, or without the headers."""
    CROSS_SITE_NAVIGATION = "cross-site navigation"
    """A top-level GET navigation from another site (a link followed)."""
    REFUSED = "refused"
    """Anything else from another site: an image, a script, a fetch, a frame, a form POST."""


def check_allowed_hosts(hosts: str | Iterable[str] | None) -> tuple[str, ...]:
    """Hosts a reverse proxy passes in the Host header, checked and lowercased.

    Args:
        hosts: Each ``name`` or ``name:port`` (a host name, an IPv4 address or a bracketed
            IPv6 address), compared exactly with the Host header; a string holds them with
            commas between them.

    Raises:
        InvalidArgument: An entry that is not such a host (a wildcard, a URL, a path).
    """
    if hosts is None:
        return ()
    entries = hosts.split(",") if isinstance(hosts, str) else list(hosts)
    checked = []
    for entry in entries:
        if not isinstance(entry, str):
            raise InvalidArgument(f"allowed hosts are strings, not {entry!r}")
        host = entry.strip().lower()
        if not host:
            continue
        if split_host(host) is None:
            raise InvalidArgument(
                f"--allowed-hosts: {entry.strip()!r} is not a host name: give each host as "
                "the reverse proxy passes it in the Host header, name or name:port "
                "(e.g. dash.example.com or 10.0.0.5:8700; no scheme, path or wildcard), "
                "commas between them"
            )
        checked.append(host)
    return tuple(dict.fromkeys(checked))


def split_host(host: str) -> tuple[str, int | None] | None:
    """A Host header's name and port; None when it is not ``name[:port]``."""
    name, port_text = host, ""
    if host.startswith("["):
        name, bracket, rest = host.partition("]")
        name += bracket
        if not bracket or (rest and not rest.startswith(":")):
            return None
        port_text = rest[1:] if rest else ""
        try:
            ipaddress.IPv6Address(name[1:-1])
        except ValueError:
            return None
    else:
        if host.count(":") > 1:
            return None
        name, _, port_text = host.partition(":")
        if not _HOST_NAME.fullmatch(name) or len(name) > 253:
            return None
        if name.replace(".", "").isdigit():
            try:
                ipaddress.IPv4Address(name)
            except ValueError:
                return None
    if ":" in host[len(name) :] and not port_text:
        return None  # "name:" with no port
    if port_text and not (port_text.isascii() and port_text.isdigit()):
        return None
    port = int(port_text) if port_text else None
    if port is not None and not 0 < port < 65536:
        return None
    return name, port


@dataclass(frozen=True)
class Hosts:
    """The Host names the dashboard answers to, and so its own origins.

    Args:
        allowed: Hosts besides the loopback names (`check_allowed_hosts`).
        any_host: Serve any Host (a token set and no list; or a server in front that
            validated the Host, such as Django with its ``ALLOWED_HOSTS``): the request's own
            Host is then its only own origin.
    """

    allowed: tuple[str, ...] = ()
    any_host: bool = False

    def serves(self, host: str, server_port: int | None, scheme: str) -> bool:
        """Whether a request with this Host header (lowercased) is answered.

        Args:
            host: The Host header.
            server_port: The port the request came in on (None when the server does not
                say: the loopback names are then served on any port).
            scheme: ``http`` or ``https``.
        """
        if self.any_host or host in self.allowed:
            return True
        found = split_host(host)
        if found is None or found[0] not in LOOPBACK_NAMES:
            return False
        _name, port = found
        if server_port is None:
            return True
        if port is None:
            return server_port == DEFAULT_PORTS.get(scheme)
        return port == server_port

    def own_origin(self, origin: str, host: str, server_port: int | None, scheme: str) -> bool:
        """Whether `origin` (an ``Origin`` header, or a ``Referer``'s origin) is one of the
        dashboard's: that of an allowed host (any scheme: TLS may end at a proxy)."""
        try:
            parts = urlsplit(origin)
        except ValueError:  # "http://]": not an origin a browser sends
            return False
        netloc = parts.netloc.lower()
        if parts.scheme not in DEFAULT_PORTS or not netloc or "@" in netloc:
            return False
        if self.any_host:
            return netloc == host
        return self.serves(netloc, server_port, scheme)

    def describe(self, server_port: int | None, scheme: str) -> str:
        """The hosts served, for an error message."""
        if server_port is None or server_port == DEFAULT_PORTS.get(scheme):
            names = list(LOOPBACK_NAMES)
        else:
            names = [f"{name}:{server_port}" for name in LOOPBACK_NAMES]
        return ", ".join([*names, *self.allowed])


def fetch_metadata(headers: Mapping[str, str], method: str) -> Fetch:
    """The resource-isolation policy: what the ``Sec-Fetch-*`` headers make of a request.

    Args:
        headers: The request's headers (lowercase names).
        method: Its HTTP method.
    """
    site = headers.get("sec-fetch-site")
    if site is None or site in ("same-origin", "none"):
        return Fetch.OWN
    # "same-site" (another port of the same host, a sibling subdomain) is another origin:
    # treated as cross-site.
    mode = headers.get("sec-fetch-mode", "")
    destination = headers.get("sec-fetch-dest", "")
    if mode == "navigate" and method in ("GET", "HEAD") and destination in _NAVIGATION_DESTINATIONS:
        return Fetch.CROSS_SITE_NAVIGATION
    return Fetch.REFUSED
