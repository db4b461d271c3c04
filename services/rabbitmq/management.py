"""RabbitMQ's management HTTP API, for the queue figures of `leveret status`.

Optional: status works with AMQP alone (ready messages and consumers by passive declares).
Where the management plugin answers, it adds what AMQP cannot tell: unacknowledged
messages and rates. Nothing here imports pika.
"""

from __future__ import annotations

import base64
import json
import re
import ssl
import urllib.error
import urllib.request
from typing import Any
from urllib.parse import quote, unquote, urlencode, urlsplit

from leveret.services import config
from leveret.services.observability.redaction import redact
from leveret.services.transport import QueueFigures

TIMEOUT_S = 3.0
PAGE_SIZE = 500
MAX_PAGES = 20


class ManagementUnavailable(Exception):
    """The management API did not answer, or answered something unusable."""


def default_management_url(amqp_url: str) -> str:
    """Where the management plugin listens by default for the broker at `amqp_url`:
    ``http://HOST:15672/`` (``https://HOST:15671/`` for ``amqps://``); of a cluster's
    several URLs, the first node's."""
    parts = urlsplit(config.broker_urls(amqp_url)[0])
    host = parts.hostname or "localhost"
    if ":" in host:
        host = f"[{host}]"
    if parts.scheme == "amqps":
        return f"https://{host}:15671/"
    return f"http://{host}:15672/"


class ManagementAPI:
    """A client of the management API at `url`, for the vhost and user of `amqp_url`.

    Args:
        url: ``http(s)://[user:password@]host:port/``; without credentials in it, those of
            `amqp_url` (guest/guest when it has none) are used.
        amqp_url: The broker's AMQP URL (its vhost, its credentials); of several, the
            first.
    """

    def __init__(self, url: str, amqp_url: str) -> None:
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"not an http(s) URL for the management API: {redact(url)}")
        amqp = urlsplit(config.broker_urls(amqp_url)[0])  # every node has the same vhost
        user = unquote(parts.username or amqp.username or "guest")
        password = unquote(parts.password or amqp.password or "guest")
        host = parts.hostname if ":" not in parts.hostname else f"[{parts.hostname}]"
        port = f":{parts.port}" if parts.port else ""
        self.base = f"{parts.scheme}://{host}{port}{parts.path.rstrip('/')}"
        self.vhost = unquote(amqp.path[1:]) if len(amqp.path) > 1 else "/"
        token = base64.b64encode(f"{user}:{password}".encode()).decode()
        self._authorization = f"Basic {token}"

    @property
    def safe_url(self) -> str:
        """The API's address (no credentials)."""
        return self.base + "/"

    def queues(self, prefix: str) -> dict[str, QueueFigures]:
        """Figures of the vhost's queues whose name starts with `prefix`."""
        return self.queue_listing(prefix)[0]

    def queue_listing(self, prefix: str) -> tuple[dict[str, QueueFigures], bool]:
        """Figures of the vhost's queues whose name starts with `prefix` (in pages of
        `PAGE_SIZE`, at most `MAX_PAGES`), and whether that is all of them. See
        `queue_counts` for queues listed before their counts."""
        figures, _uncounted, complete = self.queue_counts(prefix)
        return figures, complete

    def queue_counts(self, prefix: str) -> tuple[dict[str, QueueFigures], set[str], bool]:
        """As `queue_listing`, with the names of the queues listed without message counts.

        A queue declared since the API's last collection (4 to 7 s seen, on RabbitMQ 3.10
        and 4.x) is listed without ``messages_ready``: its arguments are known, its counts
        are not, and its figures' 0s mean nothing (an empty-looking ``.dlq`` may hold dead
        letters). The caller asks such a queue over AMQP, or shows it as not known.
        """
        records, complete = self._records("queues", prefix)
        figures = {record["name"]: _figures(record) for record in records}
        uncounted = {record["name"] for record in records if not _has_counts(record)}
        return figures, uncounted, complete

    def queue_records(self, prefix: str) -> list[dict[str, Any]]:
        """The API's records (``name``, ``messages``, ``consumers``, ``arguments``,
        ``exclusive``…) of the vhost's queues whose name starts with `prefix`."""
        return self._records("queues", prefix)[0]

    def exchange_names(self, prefix: str) -> list[str]:
        """The names of the vhost's exchanges that start with `prefix`."""
        return [record["name"] for record in self._records("exchanges", prefix)[0]]

    def bindings_from(self, exchange: str) -> list[dict[str, Any]]:
        """The bindings whose source is `exchange` (``destination``, ``destination_type``,
        ``routing_key``…); none when it does not exist."""
        vhost, name = quote(self.vhost, safe=""), quote(exchange, safe="")
        try:
            answer = self._get(f"/api/exchanges/{vhost}/{name}/bindings/source")
        except ManagementUnavailable as exc:
            if "HTTP 404" in str(exc):
                return []
            raise
        if not isinstance(answer, list):
            raise ManagementUnavailable("unexpected answer to /api/exchanges/…/bindings")
        return [item for item in answer if isinstance(item, dict)]

    def _records(self, kind: str, prefix: str) -> tuple[list[dict[str, Any]], bool]:
        """Every record of `kind` (``queues``, ``exchanges``) of the vhost whose name starts
        with `prefix`, page after page (at most `MAX_PAGES`), and whether that is all."""
        records: list[dict[str, Any]] = []
        for page in range(1, MAX_PAGES + 1):
            query = urlencode(
                {
                    "page": page,
                    "page_size": PAGE_SIZE,
                    "name": "^" + re.escape(prefix),
                    "use_regex": "true",
                    "pagination": "true",
                }
            )
            answer = self._get(f"/api/{kind}/{quote(self.vhost, safe='')}?{query}")
            if not isinstance(answer, dict) or not isinstance(answer.get("items"), list):
                raise ManagementUnavailable(f"unexpected answer to /api/{kind}")
            records += [
                item
                for item in answer["items"]
                if isinstance(item, dict)
                and isinstance(item.get("name"), str)
                and item["name"].startswith(prefix)  # the API's regex, checked again
            ]
            if page >= _int(answer.get("page_count")):
                return records, True
        return records, False

    def _get(self, path: str) -> Any:
        request = urllib.request.Request(  # noqa: S310  # http(s) only, checked above
            self.base + path,
            headers={"Authorization": self._authorization, "Accept": "application/json"},
        )
        try:
            with urllib.request.urlopen(  # noqa: S310  # http(s) only, checked above
                request, timeout=TIMEOUT_S, context=ssl.create_default_context()
            ) as answer:
                return json.loads(answer.read())
        except urllib.error.HTTPError as exc:
            raise ManagementUnavailable(f"HTTP {exc.code} from {self.safe_url}") from exc
        except (urllib.error.URLError, OSError, ValueError) as exc:
            reason = getattr(exc, "reason", exc)
            raise ManagementUnavailable(f"cannot reach {self.safe_url}: {reason}") from exc


def _has_counts(item: dict[str, Any]) -> bool:
    """The record gives the queue's message counts (not yet, before their first
    collection)."""
    ready = item.get("messages_ready")
    return isinstance(ready, int) and not isinstance(ready, bool)


def _figures(item: dict[str, Any]) -> QueueFigures:
    stats = item.get("message_stats")
    stats = stats if isinstance(stats, dict) else {}
    return QueueFigures(
        ready=_int(item.get("messages_ready")),
        consumers=_int(item.get("consumers")),
        unacked=_int(item.get("messages_unacknowledged")),
        incoming_per_s=_rate(stats.get("publish_details")),
        delivered_per_s=_rate(stats.get("deliver_get_details")),
        dead_letters_at_most_once=_dead_letters_at_most_once(item),
    )


def _dead_letters_at_most_once(item: dict[str, Any]) -> bool | None:
    """Whether a quorum queue passes its dead letters on at most once: its arguments, else
    its effective policy, do not ask for at-least-once with ``reject-publish`` (which
    at-least-once needs); None for other queues and for queues without dead-lettering."""
    if item.get("type") != "quorum":
        return None
    arguments = item.get("arguments")
    policy = item.get("effective_policy_definition")
    arguments = arguments if isinstance(arguments, dict) else {}
    policy = policy if isinstance(policy, dict) else {}  # [] when none (older APIs)

    def setting(key: str) -> object:
        value = arguments.get("x-" + key)
        return value if value is not None else policy.get(key)

    if setting("dead-letter-exchange") is None:
        return None
    return not (
        setting("dead-letter-strategy") == "at-least-once"
        and setting("overflow") == "reject-publish"
    )


def _int(value: object) -> int:
    return value if isinstance(value, int) and not isinstance(value, bool) else 0


def _rate(details: object) -> float:
    if isinstance(details, dict):
        rate = details.get("rate")
        if isinstance(rate, int | float) and not isinstance(rate, bool):
            return float(rate)
    return 0.0
