"""The dashboard inside a Django project, behind Django's authentication (staff only).

    # urls.py
    from django.urls import include, path

    urlpatterns = [
        ...,
        path("leveret/", include("leveret.django.dashboard")),
    ]

Needs the ``dashboard`` extra (``pip install 'leveret[django,dashboard]'``). Every request
goes through Django first: its ``ALLOWED_HOSTS`` (``request.get_host()``), then a user who
is not active staff is sent to the admin's login page, then Django's CSRF middleware (the
dashboard's forms carry Django's token too). The dashboard then applies its own checks
(its CSRF cookie and field, the ``Origin`` against the host Django validated, the Fetch
Metadata of other sites' requests). It reads the project's broker (``settings.LEVERET``)
and shows the project's actors, with warnings about the outbox (rows waiting longer than
``OUTBOX_WARN_AFTER_S``); ``LEVERET["DASHBOARD_READ_ONLY"] = True`` hides and refuses
replay and purge.
"""

from __future__ import annotations

import asyncio
import threading
from typing import Any

from django.contrib.admin.views.decorators import staff_member_required
from django.http import HttpRequest, HttpResponse
from django.middleware.csrf import get_token
from django.urls import path, re_path
from starlette.applications import Starlette
from starlette.types import Message

from leveret.actors.schedules import schedules_in
from leveret.django.backlog import backlog_warnings
from leveret.django.project import project_broker
from leveret.django.registry import project_actors
from leveret.django.settings import load
from leveret.services.dashboard import Dashboard, create_app
from leveret.services.dashboard.app import FORM_FIELDS

_lock = threading.Lock()
_apps: dict[tuple[int, bool, str | None], Starlette] = {}


def _app() -> Starlette:
    """The dashboard for the project's broker in force (built again if it changed)."""
    broker = project_broker()
    found = load()
    key = (id(broker), found.dashboard_read_only, found.management_url)
    with _lock:
        app = _apps.get(key)
        if app is None:
            _apps.clear()
            # The schedules of the modules (the database's entries are not shown: this
            # runs in an async view, where the ORM may not be called).
            schedules = schedules_in([*found.actors, *found.schedules])
            dashboard = Dashboard(
                broker,
                read_only=found.dashboard_read_only,
                management_url=found.management_url,
                actors=project_actors(),
                schedules=schedules,
                extra_warnings=backlog_warnings,  # read in the dashboard's worker thread
            )
            # Django validated the Host (ALLOWED_HOSTS) before the view runs.
            app = create_app(dashboard, host_validated=True)
            _apps[key] = app
    return app


async def _serve(request: HttpRequest, rest: str = "") -> HttpResponse:
    """Hand the request to the dashboard's ASGI app, mounted where this view is."""
    full = request.path
    root = full[: len(full) - len(rest)].rstrip("/") if rest else full.rstrip("/")
    # The host as Django validated it against ALLOWED_HOSTS (X-Forwarded-Host with
    # USE_X_FORWARDED_HOST): the dashboard takes it as its own origin.
    host = request.get_host()
    headers = [
        (name.lower().encode("latin-1"), value.encode("latin-1"))
        for name, value in request.headers.items()
        if name.lower() != "host"
    ]
    headers.append((b"host", host.encode("latin-1")))
    server_port = int(request.get_port() or 80)
    scope: dict[str, Any] = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": request.method or "GET",
        "scheme": request.scheme or "http",
        "root_path": root,
        "path": full,
        "raw_path": full.encode(),
        "query_string": request.META.get("QUERY_STRING", "").encode("latin-1"),
        "headers": headers,
        "client": (request.META.get("REMOTE_ADDR", ""), 0),
        "server": (_host_name(host), server_port),
        # Django's CSRF token, in every form of the dashboard (for CsrfViewMiddleware).
        FORM_FIELDS: [("csrfmiddlewaretoken", get_token(request))],
    }
    body = request.body
    sent = False
    finished = asyncio.Event()

    async def receive() -> Message:
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}
        # The client is "connected" until the whole response is written: a streamed
        # response (a static file) stops at the first http.disconnect.
        await finished.wait()
        return {"type": "http.disconnect"}

    status = 500
    response_headers: list[tuple[bytes, bytes]] = []
    chunks: list[bytes] = []

    async def send(message: Message) -> None:
        nonlocal status, response_headers
        if message["type"] == "http.response.start":
            status = message["status"]
            response_headers = list(message.get("headers", []))
        elif message["type"] == "http.response.body":
            chunks.append(message.get("body", b""))
            if not message.get("more_body", False):
                finished.set()

    try:
        await _app()(scope, receive, send)
    finally:
        finished.set()
    response = HttpResponse(b"".join(chunks), status=status)
    for name, value in response_headers:
        key = name.decode("latin-1")
        if key.lower() == "set-cookie":
            continue  # set below, through Django, so that several cookies survive
        if key.lower() == "content-length":
            continue
        response[key] = value.decode("latin-1")
    for name, value in response_headers:
        if name.lower() == b"set-cookie":
            _set_cookie(response, value.decode("latin-1"))
    return response


def _host_name(host: str) -> str:
    """``name`` of ``name[:port]`` (``[::1]`` of ``[::1]:8000``)."""
    return host.rsplit(":", 1)[0] if ":" in host.rsplit("]", 1)[-1] else host


def _set_cookie(response: HttpResponse, header: str) -> None:
    first, *attributes = [part.strip() for part in header.split(";")]
    name, _, value = first.partition("=")
    options: dict[str, Any] = {}
    for attribute in attributes:
        key, _, setting = attribute.partition("=")
        key = key.lower()
        if key == "path":
            options["path"] = setting
        elif key == "httponly":
            options["httponly"] = True
        elif key == "secure":
            options["secure"] = True
        elif key == "samesite":
            options["samesite"] = setting.capitalize()
    response.set_cookie(name, value, **options)


view = staff_member_required(_serve)

app_name = "leveret_dashboard"
urlpatterns = [
    path("", view, name="index"),
    re_path(r"^(?P<rest>.+)$", view, name="page"),
]
