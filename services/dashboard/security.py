"""The dashboard's guards: credentials, CSRF, and headers that keep a page from running
anything but its own script.

- Credentials: with a token set, every request needs ``Authorization: Bearer <token>`` or
  HTTP basic auth with the token as password (any user name), else 401.
- CSRF: a random value in a ``SameSite=Strict`` cookie, repeated in a hidden field of every
  form; a POST whose field does not match the cookie, or whose ``Origin`` is another
  site's, gets 403.
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

from leveret.services import config

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
    """The token, checked: long enough to resist guessing, or None for none."""
    if token is None or token == "":
        return None
    if len(token) < 16:
        raise ValueError(
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
    """ASGI middleware: credentials when a token is set, security headers always."""

    def __init__(self, app: ASGIApp, *, token: str | None) -> None:
        self.app = app
        self.token = token

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        if self.token is not None:
            request = Request(scope)
            if not _authorized(request.headers.get("authorization", ""), self.token):
                response = PlainTextResponse(
                    "401: credentials needed (the dashboard's token, as a Bearer token or "
                    "as the password of HTTP basic auth)",
                    status_code=401,
                    headers={"www-authenticate": 'Basic realm="leveret", charset="UTF-8"'},
                )
                await response(scope, receive, _with_headers(send))
                return
        await self.app(scope, receive, _with_headers(send))


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


def csrf_ok(request: Request, submitted: str) -> bool:
    """Whether a POST carries the cookie's value and comes from this site."""
    cookie = request.cookies.get(CSRF_COOKIE, "")
    if len(cookie) < 32 or not hmac.compare_digest(cookie.encode(), submitted.encode()):
        return False
    origin = request.headers.get("origin")
    if origin is None or origin == "null":
        return origin is None
    return urlsplit(origin).netloc == request.headers.get("host", "")
