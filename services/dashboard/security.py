"""The dashboard's guards: the Host names it answers to, credentials, other sites' requests,
CSRF, and headers that keep a page from running anything but its own script.

In the order `Guard` applies them, before a page does any work:

- Host: only the loopback names and the hosts allowed (`origins.Hosts`), else 400: a page
  of another site whose name was re-pointed at this machine (DNS rebinding) gets nothing.
- Credentials: with a token set, every request needs ``Authorization: Bearer <token>`` or
  HTTP basic auth with the token as password (any user name), else 401.
- Origin: a request whose ``Origin`` is not one of the dashboard's own gets 403.
- Fetch Metadata: another site's request gets 403, but for a top-level navigation (a link
  followed), which pages answer without running a dead-letter pass (`origins`).
- CSRF (on each POST, `csrf_ok`): a random value in a ``SameSite=Strict`` cookie, repeated
  in a hidden field of every form; a POST whose field does not match the cookie, or whose
  ``Origin`` (or ``Referer``) is not one of the dashboard's origins, gets 403.
- Content-Security-Policy ``script-src 'self'``: an inline ``<script>`` or an ``onerror``
  attribute smuggled into a page by a message would not run even if it escaped escaping.
"""

from __future__ import annotations

import base64
import binascii
import hmac
import ipaddress
import secrets
from urllib.parse import urlsplit

from starlette.datastructures import MutableHeaders
from starlette.requests import Request
from starlette.responses import PlainTextResponse
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from leveret.schemas.errors import InvalidArgument
from leveret.services import config
from leveret.services.dashboard.origins import CROSS_SITE_NAVIGATION, Fetch, Hosts, fetch_metadata
from leveret.services.operations.deadletters import printable

CSRF_COOKIE = "leveret_csrf"
CSRF_FIELD = "csrf"
TOKEN_ENV = config.DASHBOARD_TOKEN_ENV

SECURITY_HEADERS = {
    "content-security-policy": (
        "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
        "connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'"
    ),
    "x-content-type-options": "nosniff",
    "referrer-policy": "same-origin",
    "x-frame-options": "DENY",
    "cache-control": "no-store",
}


def is_loopback(host: str) -> bool:
    """Whether binding `host` serves this machine only."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def check_token(token: str | None) -> str | None:
    """The token, checked: long enough to resist guessing, or None for none.

    Raises:
        InvalidArgument: A token shorter than 16 characters.
    """
    if token is None or token == "":
        return None
    if len(token) < 16:
        raise InvalidArgument(
            f"{TOKEN_ENV} must be at least 16 characters (e.g. from "
            "`python -c 'import secrets; print(secrets.token_urlsafe())'`)"
        )
    return token


def _authorized(header: str, token: str) -> bool:
    scheme, _, value = header.partition(" ")
    value = value.strip()
    if scheme.lower() == "bearer":
        return hmac.compare_digest(value.encode(), token.encode())
    if scheme.lower() == "basic":
        try:
            decoded = base64.b64decode(value, validate=True).decode()
        except (binascii.Error, UnicodeDecodeError):
            return False
        _user, _, password = decoded.partition(":")
        return hmac.compare_digest(password.encode(), token.encode())
    return False


class Guard:
    """ASGI middleware: the Host, credentials when a token is set, the ``Origin`` and the
    Fetch Metadata of every request, before the app sees it; security headers always.

    Args:
        app: The dashboard.
        token: The credentials every request must carry, or None.
        hosts: The Host names served (and so the dashboard's own origins).
    """

    def __init__(self, app: ASGIApp, *, token: str | None, hosts: Hosts) -> None:
        self.app = app
        self.token = token
        self.hosts = hosts

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        request = Request(scope)
        refusal = self.refusal(request)
        if refusal is not None:
            await refusal(scope, receive, _with_headers(send))
            return
        if fetch_metadata(request.headers, request.method) is Fetch.CROSS_SITE_NAVIGATION:
            scope[CROSS_SITE_NAVIGATION] = True
        await self.app(scope, receive, _with_headers(send))

    def refusal(self, request: Request) -> PlainTextResponse | None:
        """The answer to a request refused before any work, or None to let it through."""
        host = request.headers.get("host", "").lower()
        port, scheme = server_port(request), request.url.scheme
        if not self.hosts.serves(host, port, scheme):
            return PlainTextResponse(
                f"400: this dashboard does not answer to the host {printable(host[:100])!r} "
                f"(it answers to {self.hosts.describe(port, scheme)}). Open it by one of "
                "those names; behind a reverse proxy, name the host the proxy passes with "
                "--allowed-hosts (or $LEVERET_DASHBOARD_ALLOWED_HOSTS).",
                status_code=400,
            )
        if self.token is not None and not _authorized(
            request.headers.get("authorization", ""), self.token
        ):
            return PlainTextResponse(
                "401: credentials needed (the dashboard's token, as a Bearer token or "
                "as the password of HTTP basic auth)",
                status_code=401,
                headers={"www-authenticate": 'Basic realm="leveret", charset="UTF-8"'},
            )
        origin = request.headers.get("origin")
        if origin is not None and not self.hosts.own_origin(origin, host, port, scheme):
            return PlainTextResponse(
                f"403: a request from {printable(origin[:100])!r}, which is not one of this "
                "dashboard's origins, is refused. Open the dashboard directly (behind a "
                "reverse proxy, name its host with --allowed-hosts).",
                status_code=403,
            )
        if fetch_metadata(request.headers, request.method) is Fetch.REFUSED:
            site = request.headers.get("sec-fetch-site", "")
            dest = request.headers.get("sec-fetch-dest", "")
            return PlainTextResponse(
                f"403: a cross-site request ({printable(site[:30])}, for "
                f"{printable(dest[:30]) or 'a fetch'}) is refused: another site's page may "
                "not make the dashboard work. Open the dashboard directly.",
                status_code=403,
            )
        return None


def server_port(request: Request) -> int | None:
    """The port the request came in on, if the server says."""
    server = request.scope.get("server")
    return int(server[1]) if server and server[1] is not None else None


def _with_headers(send: Send) -> Send:
    async def send_with_headers(message: Message) -> None:
        if message["type"] == "http.response.start":
            headers = MutableHeaders(scope=message)
            for name, value in SECURITY_HEADERS.items():
                headers.setdefault(name, value)
        await send(message)

    return send_with_headers


def csrf_value(request: Request) -> tuple[str, bool]:
    """The request's CSRF value, and whether it is new (to be set as a cookie)."""
    value = request.cookies.get(CSRF_COOKIE, "")
    if len(value) >= 32:
        return value, False
    return secrets.token_urlsafe(32), True


def csrf_ok(request: Request, submitted: str, hosts: Hosts) -> bool:
    """Whether a POST carries the cookie's value and comes from one of the dashboard's
    origins (its ``Origin``, else its ``Referer``; a client that sends neither is not a
    browser, and has the cookie and the field)."""
    cookie = request.cookies.get(CSRF_COOKIE, "")
    if len(cookie) < 32 or not hmac.compare_digest(cookie.encode(), submitted.encode()):
        return False
    origin = request.headers.get("origin")
    if origin is None:
        referer = request.headers.get("referer")
        if referer is None:
            return True
        try:
            parts = urlsplit(referer)
        except ValueError:  # not a URL a browser sends
            return False
        origin = f"{parts.scheme}://{parts.netloc}"
    host = request.headers.get("host", "").lower()
    return hosts.own_origin(origin, host, server_port(request), request.url.scheme)
