"""The dashboard's web application: an ASGI app (Starlette, Jinja2 templates).

Pages: the overview (workers, actor queues, warnings; refreshed in place every few seconds
from ``/api/overview``), a page per actor, and its dead letters: browsed a page at a time
with filters, shown one by one, replayed (one, a selection, all) and purged. Every action
is a POST with a CSRF field and asks for confirmation in the page first.

What the pages read, and how long they wait for the broker, is `state.Dashboard`: no page
waits for the broker for more than a few seconds, and with the broker unreachable every
page says so in a banner (the URL tried, the error) and shows what is known.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import parse_qs, quote, urlencode

from jinja2 import Environment, FileSystemLoader, select_autoescape
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, RedirectResponse, Response
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles

from leveret.schemas import wire
from leveret.schemas.errors import BrokerError, ConfigurationError, NotFound, TopologyError
from leveret.services.dashboard import security
from leveret.services.dashboard.origins import CROSS_SITE_NAVIGATION, Hosts, check_allowed_hosts
from leveret.services.dashboard.state import Busy, Dashboard, Known
from leveret.services.delivery import Delivery
from leveret.services.observability.redaction import redact, redact_value
from leveret.services.operations.deadletters import DeadLetter, printable
from leveret.services.operations.status import Snapshot

T = TypeVar("T")

__all__ = ["Dashboard", "create_app"]

HERE = Path(__file__).parent
PAGE_SIZE = 50
"""Dead letters per page."""
MAX_BODY_SHOWN = 64 * 1024
"""A dead letter's body is shown up to this many bytes."""
MAX_FORM_BYTES = 256 * 1024
"""The largest POST body accepted (a selection of a page of ids fits many times over)."""
FORM_FIELDS = "leveret.form_fields"
"""Scope key: hidden fields every form carries besides the dashboard's CSRF field (a list of
name and value pairs; Django's CSRF token when mounted in Django)."""


# Reading the data ---------------------------------------------------------------------------


def _overview(dashboard: Dashboard, known: Known) -> dict[str, Any]:
    """The overview's data (the JSON API's answer): what is known, and the outage if any."""
    snapshot = known.snapshot
    # Errors and notes may quote a URL with its password: never shown.
    if snapshot is not None:
        data: dict[str, Any] = redact_value(snapshot.to_json())
        data["workers"].sort(key=lambda w: (w["host"], w["pid"]))  # grouped by host
        _worker_rates(data["workers"], snapshot, known.prior)
        now_s = snapshot.taken_at
    else:  # nothing known yet: the broker could not be read since the dashboard started
        data = {
            "namespace": dashboard.broker.namespace,
            "taken_at": None,
            "workers": [],
            "queues": [],
            "warnings": [],
            "source": "none",
            "source_note": "",
            "ignored_heartbeats": 0,
        }
        now_s = datetime.now(UTC).timestamp()
    data["broker"] = redact(dashboard.broker.url)
    data["refresh_s"] = dashboard.refresh_s
    data["schedules"], data["schedules_note"] = _schedules(dashboard, now_s)
    data["unreachable"] = known.outage_json()
    return data


def _worker_rates(
    workers: list[dict[str, Any]], snapshot: Snapshot, prior: Snapshot | None
) -> None:
    """Add each worker's messages handled per second since the prior snapshot (None for a
    worker that snapshot did not have, or restarted since)."""
    before = {w.id: w.handled for w in prior.workers} if prior is not None else {}
    elapsed = snapshot.taken_at - prior.taken_at if prior is not None else 0.0
    for worker in workers:
        handled_before = before.get(worker["id"])
        rate = None
        if elapsed > 0 and handled_before is not None and worker["handled"] >= handled_before:
            rate = round((worker["handled"] - handled_before) / elapsed, 1)
        worker["handled_per_s"] = rate


def _schedules(dashboard: Dashboard, now_s: float) -> tuple[list[dict[str, Any]], str]:
    """Each schedule with its last tick sent and its next one (only with schedule modules)."""
    if not dashboard.schedules:
        return [], ""
    last, note = dashboard.ticks_known()
    now = datetime.fromtimestamp(now_s, UTC)
    rows = []
    for entry in sorted(dashboard.schedules, key=lambda e: e.name):
        sent = (last or {}).get(entry.name)
        rows.append(
            {
                "name": entry.name,
                "when": str(entry.when),
                "to": entry.to.queue if entry.to is not None else "(by topic)",
                "last": sent.isoformat(timespec="seconds") if sent is not None else "",
                "next": entry.next_runs(now, 1)[0].isoformat(timespec="seconds"),
            }
        )
    if last is None and not note:
        note = "last ticks not read yet"
    return rows, note


@dataclass(frozen=True)
class Filters:
    """What the dead-letter list is narrowed to (each empty: no filter)."""

    topic: str = ""
    error_type: str = ""
    text: str = ""

    @classmethod
    def of(cls, request: Request) -> Filters:
        query = request.query_params
        return cls(
            topic=query.get("topic", "")[:255].strip(),
            error_type=query.get("error_type", "")[:255].strip(),
            text=query.get("text", "")[:255].strip(),
        )

    def __bool__(self) -> bool:
        return bool(self.topic or self.error_type or self.text)

    def picks(self, letter: Delivery) -> bool:
        if self.topic and (letter.topic or "") != self.topic:
            return False
        if self.error_type:
            error_type = str(letter.headers.get(wire.ERROR_TYPE, ""))
            if self.error_type.lower() not in error_type.lower():
                return False
        if self.text:
            needle = self.text.lower()
            haystack = [
                str(letter.headers.get(wire.ERROR_MESSAGE, "")),
                letter.message_id,
                letter.body[:MAX_BODY_SHOWN].decode("utf-8", "replace"),
            ]
            if not any(needle in part.lower() for part in haystack):
                return False
        return True

    def query(self, **extra: object) -> str:
        pairs = {k: v for k, v in vars(self).items() if v} | {k: v for k, v in extra.items() if v}
        return urlencode(pairs)


def _letter_row(letter: DeadLetter) -> dict[str, Any]:
    return {
        "id": letter.message_id,  # as it is: for links and selections (escaped by Jinja2)
        "message_id": printable(letter.message_id),
        "topic": printable(letter.topic),
        "attempts": letter.attempts,
        "reason": printable(letter.reason),
        "error": printable(letter.error[:200]),
        "failed_at": printable(letter.failed_at),
    }


def _body_text(body: bytes) -> tuple[str, str]:
    """The body for reading (pretty JSON when it is JSON), and what it is."""
    shown = body[:MAX_BODY_SHOWN]
    cut = f" (first {MAX_BODY_SHOWN} of {len(body)} bytes)" if len(body) > len(shown) else ""
    try:
        parsed = json.loads(shown)
    except (ValueError, UnicodeDecodeError):
        text = shown.decode("utf-8", "replace")
        return printable(text, keep_newlines=True), f"text{cut}"
    return printable(json.dumps(parsed, indent=2, ensure_ascii=False), keep_newlines=True), (
        f"JSON{cut}"
    )


def _header_value(value: object) -> str:
    if isinstance(value, bytes):
        value = value.decode("utf-8", "replace")
    if not isinstance(value, str):
        value = json.dumps(value, default=str, ensure_ascii=False)
    return printable(redact(value), keep_newlines=True)


# Pages ----------------------------------------------------------------------------------------


class Pages:
    def __init__(self, dashboard: Dashboard, hosts: Hosts) -> None:
        self.dashboard = dashboard
        self.hosts = hosts
        self.templates = Environment(
            loader=FileSystemLoader(HERE / "templates"),
            autoescape=select_autoescape(default=True, default_for_string=True),
            auto_reload=False,
        )

    def render(
        self,
        request: Request,
        template: str,
        status_code: int = 200,
        known: Known | None = None,
        **context: Any,
    ) -> HTMLResponse:
        csrf, new = security.csrf_value(request)
        banner = (known if known is not None else self.dashboard.known()).banner()
        html = self.templates.get_template(template).render(
            request=request,
            url=lambda name, **params: request.url_for(name, **params).path,
            # Any id from the wire: quoted whole ("/", "?" and "#" too), decoded by routing.
            letter_url=lambda queue, message_id: (
                request.url_for(
                    "dead_letter", queue=queue, message_id=quote(message_id, safe="")
                ).path
            ),
            csrf=csrf,
            csrf_field=security.CSRF_FIELD,
            form_fields=request.scope.get(FORM_FIELDS, ()),
            read_only=self.dashboard.read_only,
            namespace=self.dashboard.broker.namespace,
            banner=banner,
            **context,
        )
        response = HTMLResponse(html, status_code=status_code)
        if new:
            response.set_cookie(
                security.CSRF_COOKIE,
                csrf,
                httponly=True,
                samesite="strict",
                secure=request.url.scheme == "https",
                path=request.scope.get("root_path") or "/",
            )
        return response

    async def overview(self, request: Request) -> Response:
        known = await self.dashboard.current()
        return self.render(
            request, "overview.html", known=known, data=_overview(self.dashboard, known)
        )

    async def overview_json(self, request: Request) -> Response:
        known = await self.dashboard.current()
        return JSONResponse(_overview(self.dashboard, known))

    async def actor(self, request: Request) -> Response:
        dashboard = self.dashboard
        queue = request.path_params["queue"]
        known = await dashboard.current()
        data = _overview(dashboard, known)
        row = next((q for q in data["queues"] if q["actor"] == queue), None)
        if row is None and known.outage is not None:
            return self._unavailable(
                request, known, f"Nothing is known of the actor {queue!r} yet."
            )
        if row is None:
            raise HTTPException(404, f"no actor queue {queue!r} in this namespace")
        workers = [w for w in data["workers"] if queue in w["queues"]]
        cls = dashboard.actor_class(queue)
        handlers = (
            [
                {"name": h.name, "message": h.message_type.__name__, "topic": h.topic}
                for h in cls.handlers.values()
            ]
            if cls is not None
            else None
        )
        return self.render(
            request,
            "actor.html",
            known=known,
            data=data,
            row=row,
            workers=workers,
            handlers=handlers,
        )

    def _unavailable(
        self, request: Request, known: Known | None, what: str, error: str = ""
    ) -> Response:
        """503: the broker cannot be reached (or is busy): what could not be done, and the
        banner."""
        return self.render(
            request,
            "unavailable.html",
            status_code=503,
            known=known,
            what=what,
            error=redact(error),
        )

    def _broker_failed(self, request: Request, exc: Exception, what: str) -> Response:
        """The answer to a dead-letter operation the broker did not let finish."""
        if isinstance(exc, Busy):
            return self._unavailable(request, None, what, f"{exc}: try again in a moment.")
        return self._unavailable(request, None, what, f"{type(exc).__name__}: {exc}")

    async def _read_dead_letters(
        self, request: Request, queue: str, read: Callable[[], T]
    ) -> T | Response:
        """What `read` returns, or the page to answer with when the queue cannot be read.

        Raises:
            HTTPException: 404, no such queue.
        """
        try:
            return await self.dashboard.call(read)
        except (ConfigurationError, NotFound) as exc:
            raise HTTPException(404, str(exc)) from exc
        except TopologyError as exc:
            return self.render(request, "busy.html", status_code=409, queue=queue, error=str(exc))
        except (BrokerError, Busy) as exc:
            return self._broker_failed(
                request, exc, f"The dead letters of {queue!r} cannot be read now."
            )

    def _from_another_site(self, request: Request, queue: str) -> Response | None:
        """A dead-letter page opened by a link on another site: a page with the same link,
        to follow on the dashboard, instead of the pass (see `origins`): another site's page
        may open it, but cannot make it read the queue, let alone over and over."""
        if not request.scope.get(CROSS_SITE_NAVIGATION):
            return None
        target = request.url.path + (f"?{request.url.query}" if request.url.query else "")
        return self.render(request, "cross_site.html", queue=queue, target=target)

    async def dead_letters(self, request: Request) -> Response:
        dashboard = self.dashboard
        queue = request.path_params["queue"]
        asked = self._from_another_site(request, queue)
        if asked is not None:
            return asked
        filters = Filters.of(request)
        try:
            offset = max(0, int(request.query_params.get("offset", "0")))
        except ValueError:
            offset = 0

        def read() -> tuple[list[Delivery], int]:
            page = dashboard.broker.dead_letters(
                queue, limit=PAGE_SIZE + 1, offset=offset, where=filters.picks if filters else None
            )
            return page, dashboard.broker.dead_letter_count(queue)

        read_out = await self._read_dead_letters(request, queue, read)
        if isinstance(read_out, Response):
            return read_out
        page, total = read_out
        letters = [_letter_row(DeadLetter.of(d)) for d in page[:PAGE_SIZE]]
        return self.render(
            request,
            "dead_letters.html",
            queue=queue,
            letters=letters,
            total=total,
            offset=offset,
            page_size=PAGE_SIZE,
            more=len(page) > PAGE_SIZE,
            filters=filters,
            previous_query=filters.query(offset=max(0, offset - PAGE_SIZE)),
            next_query=filters.query(offset=offset + PAGE_SIZE),
            done=request.query_params.get("done", "")[:200],
        )

    async def dead_letter(self, request: Request) -> Response:
        dashboard = self.dashboard
        queue = request.path_params["queue"]
        message_id = request.path_params["message_id"]
        asked = self._from_another_site(request, queue)
        if asked is not None:
            return asked
        found = await self._read_dead_letters(
            request, queue, lambda: dashboard.broker.find_dead_letter(queue, message_id)
        )
        if isinstance(found, Response):
            return found
        if found is None:
            raise HTTPException(404, f"no dead letter {message_id!r} in {queue!r}")
        letter = DeadLetter.of(found)
        body, body_kind = _body_text(found.body)
        headers = sorted(
            (printable(str(k)), _header_value(v))
            for k, v in found.headers.items()
            if k != wire.ERROR_TRACEBACK
        )
        traceback = found.headers.get(wire.ERROR_TRACEBACK)
        properties = {
            "message_id": printable(found.message_id),
            "topic": printable(found.topic or ""),
            "correlation_id": printable(found.correlation_id or ""),
            "timestamp": found.timestamp,
            "exchange": printable(found.exchange),
            "routing_key": printable(found.routing_key),
        }
        return self.render(
            request,
            "dead_letter.html",
            queue=queue,
            letter=_letter_row(letter),
            properties=properties,
            headers=headers,
            traceback=_header_value(traceback) if traceback is not None else "",
            body=body,
            body_kind=body_kind,
        )

    async def _form(self, request: Request) -> dict[str, list[str]]:
        if self.dashboard.read_only:
            raise HTTPException(403, "this dashboard is read-only (--read-only)")
        content_type = request.headers.get("content-type", "").split(";")[0].strip()
        if content_type != "application/x-www-form-urlencoded":
            raise HTTPException(
                415, "send the dashboard's form (application/x-www-form-urlencoded)"
            )
        body = b""
        async for chunk in request.stream():
            body += chunk
            if len(body) > MAX_FORM_BYTES:
                raise HTTPException(413, "form too large")
        form = parse_qs(body.decode("utf-8", "replace"), keep_blank_values=True)
        submitted = (form.get(security.CSRF_FIELD) or [""])[0]
        if not security.csrf_ok(request, submitted, self.hosts):
            raise HTTPException(
                403,
                "CSRF check failed: reload the page and try again (a POST must come "
                "from the dashboard's own form)",
            )
        return form

    async def replay(self, request: Request) -> Response:
        dashboard = self.dashboard
        queue = request.path_params["queue"]
        form = await self._form(request)
        everything = form.get("all") == ["1"]
        ids = {one for one in form.get("id", []) if one}
        if not everything and not ids:
            return self._back(request, queue, "nothing selected: nothing replayed")
        done = await self._act(
            request,
            queue,
            lambda: dashboard.broker.replay_dead_letters(
                queue, message_ids=None if everything else ids
            ),
            f"The replay of dead letters of {queue!r} did not run, or did not finish. Each "
            "letter is replayed and taken off the dead-letter queue in a transaction of its "
            "own: only the one in flight when the broker went may have been sent and still be "
            "there. Run it again once the broker answers.",
        )
        if isinstance(done, Response):
            return done
        return self._back(request, queue, f"replayed {done} dead letter(s)")

    async def purge(self, request: Request) -> Response:
        dashboard = self.dashboard
        queue = request.path_params["queue"]
        await self._form(request)
        done = await self._act(
            request,
            queue,
            lambda: dashboard.broker.purge_dead_letters(queue),
            f"The purge of the dead letters of {queue!r} did not run (or its answer was "
            "lost): open the dead letters once the broker answers to see what is left.",
        )
        if isinstance(done, Response):
            return done
        return self._back(request, queue, f"purged {done} dead letter(s)")

    async def _act(
        self, request: Request, queue: str, action: Callable[[], int], failed: str
    ) -> int | Response:
        """Run an action on `queue`'s dead letters (one broker operation at a time): how
        many letters it took, or the page that says why it did not run (`failed` when the
        broker failed, busy while another operation holds the queue)."""
        try:
            return await self.dashboard.call(action)
        except (ConfigurationError, NotFound) as exc:
            raise HTTPException(404, str(exc)) from exc
        except TopologyError as exc:  # another dead-letter operation holds the queue
            return self.render(request, "busy.html", status_code=409, queue=queue, error=str(exc))
        except (BrokerError, Busy) as exc:
            return self._broker_failed(request, exc, failed)

    def _back(self, request: Request, queue: str, done: str) -> Response:
        target = request.url_for("dead_letters", queue=queue).path
        return RedirectResponse(f"{target}?{urlencode({'done': done})}", status_code=303)

    async def error_page(self, request: Request, exc: Exception) -> Response:
        """Any error as a page (JSON for the API and for actions), never a traceback."""
        status = exc.status_code if isinstance(exc, HTTPException) else 500
        detail = exc.detail if isinstance(exc, HTTPException) else "internal error"
        if request.method == "POST" or request.url.path.startswith(
            request.url_for("overview_json").path
        ):
            return JSONResponse({"error": detail}, status_code=status)
        return self.render(request, "error.html", status_code=status, status=status, error=detail)


def create_app(
    dashboard: Dashboard,
    *,
    token: str | None = None,
    allowed_hosts: str | Sequence[str] = (),
    host_validated: bool = False,
) -> Starlette:
    """The dashboard as an ASGI application (for uvicorn, or mounted in another app).

    Args:
        dashboard: The broker and settings.
        token: Credentials every request must carry (see `security`); None for none (serve
            it on loopback only, or behind another authentication such as Django's).
        allowed_hosts: Host header values answered besides the loopback names (``localhost``,
            ``127.0.0.1``, ``[::1]``, with the port the request came in on): those a reverse
            proxy passes, each ``name`` or ``name:port``, compared exactly (a string: commas
            between them). With a token and none given, any Host is answered.
        host_validated: The server in front validated the Host header already (Django with
            its ``ALLOWED_HOSTS``): any Host is answered, and is the dashboard's own origin.

    Raises:
        InvalidArgument: An allowed host that is not a host name, or a token shorter than
            16 characters.
    """
    checked_token = security.check_token(token)
    extra = check_allowed_hosts(allowed_hosts)
    hosts = Hosts(extra, any_host=host_validated or (checked_token is not None and not extra))
    pages = Pages(dashboard, hosts)
    routes = [
        Route("/", pages.overview, name="overview"),
        Route("/api/overview", pages.overview_json, name="overview_json"),
        Route("/actors/{queue}", pages.actor, name="actor"),
        Route("/actors/{queue}/dead-letters", pages.dead_letters, name="dead_letters"),
        Route(
            "/actors/{queue}/dead-letters/replay",
            pages.replay,
            methods=["POST"],
            name="replay",
        ),
        Route("/actors/{queue}/dead-letters/purge", pages.purge, methods=["POST"], name="purge"),
        Route(
            "/actors/{queue}/dead-letters/{message_id:path}",
            pages.dead_letter,
            name="dead_letter",
        ),
        # follow_symlink: an editable install links the files from the checkout (the
        # requested path is still confined to the folder).
        Mount(
            "/static",
            app=StaticFiles(directory=HERE / "static", follow_symlink=True),
            name="static",
        ),
    ]
    app = Starlette(
        routes=routes,
        exception_handlers={HTTPException: pages.error_page, Exception: pages.error_page},
    )
    app.add_middleware(security.Guard, token=checked_token, hosts=hosts)
    return app
