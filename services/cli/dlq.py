"""`leveret dlq list|show|replay|purge`: operate an actor's dead-letter queue."""

from __future__ import annotations

import sys

import click

from leveret.services.broker import Broker
from leveret.services.cli._common import LeveretGroup, namespace_option, url_option
from leveret.services.observability.logs import configure_logging


@click.group(cls=LeveretGroup)
def dlq() -> None:
    """Inspect and operate dead-letter queues (QUEUE: the actor's queue, no namespace)."""


def _dlq_broker(broker_url: str | None, namespace: str | None) -> Broker:
    configure_logging("warning")
    return Broker(broker_url, namespace=namespace)


@dlq.command("list")
@click.argument("queue")
@click.option("--limit", default=100, show_default=True, help="Show at most this many.")
@click.option("--offset", default=0, show_default=True, help="Skip this many first (paging).")
@url_option
@namespace_option
def dlq_list(
    queue: str, limit: int, offset: int, broker_url: str | None, namespace: str | None
) -> None:
    """List the dead letters of QUEUE: id, topic, attempts, error, failed at.

    Reading changes nothing: every letter stays, in the same order.
    """
    from leveret.services.observability.redaction import redact
    from leveret.services.operations.deadletters import DeadLetter, printable

    with _dlq_broker(broker_url, namespace) as broker:
        page = broker.dead_letters(queue, limit=limit, offset=offset)
    letters = [DeadLetter.of(d) for d in page]
    rows: list[tuple[str, ...]] = [("ID", "TOPIC", "ATTEMPTS", "REASON", "ERROR", "FAILED AT")]
    for x in letters:
        # Passwords hidden before the error is cut, so that no part of one is left.
        error = redact(x.error)[:60]
        cells = (x.message_id, x.topic, str(x.attempts), x.reason, error, x.failed_at)
        rows.append(tuple(printable(redact(cell)) for cell in cells))
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    for row in rows:
        click.echo("  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)))
    click.echo(f"{len(letters)} dead letter(s) shown")


@dlq.command("show")
@click.argument("queue")
@click.argument("message_id")
@url_option
@namespace_option
def dlq_show(queue: str, message_id: str, broker_url: str | None, namespace: str | None) -> None:
    """Show one dead letter of QUEUE: its properties, headers and body.

    MESSAGE_ID is the id, or its first characters when no other id starts with them.
    Control characters from the message are shown escaped, passwords in URLs hidden; long
    output goes through a pager on a terminal.
    """
    from leveret.schemas import wire
    from leveret.schemas.codec import json_preview
    from leveret.services.observability.redaction import redact
    from leveret.services.operations.deadletters import ByIdPrefix, printable

    meant = ByIdPrefix(message_id)
    with _dlq_broker(broker_url, namespace) as broker:
        broker.dead_letters(queue, limit=0, where=meant)
    letter = meant.one(queue)
    lines = [
        f"message_id:     {printable(letter.message_id)}",
        f"topic:          {printable(letter.topic or '')}",
        f"correlation_id: {printable(str(letter.correlation_id))}",
        "headers:",
    ]
    for key in sorted(letter.headers):
        value = letter.headers[key]
        text = value if isinstance(value, str) else repr(value)
        if key == wire.ERROR_TRACEBACK:
            traceback_lines = printable(text, keep_newlines=True).splitlines()
            lines.append(f"  {printable(key)}:")
            lines += [f"    {line}" for line in traceback_lines]
        else:
            lines.append(f"  {printable(key)}: {printable(text)}")
    lines.append(f"body: {printable(json_preview(letter.body, limit=10_000))}")
    # A header may hold a URL with its password (a connection error's message).
    output = redact("\n".join(lines))
    if sys.stdout.isatty():
        click.echo_via_pager(output + "\n")
    else:
        click.echo(output)


@dlq.command("replay")
@click.argument("queue")
@click.option("--all", "replay_all", is_flag=True, help="Replay every dead letter.")
@click.option("--id", "ids", multiple=True, help="Replay this message id (repeatable).")
@url_option
@namespace_option
def dlq_replay(
    queue: str,
    replay_all: bool,
    ids: tuple[str, ...],
    broker_url: str | None,
    namespace: str | None,
) -> None:
    """Put dead letters of QUEUE back on the actor's queue, attempt count reset."""
    if replay_all == bool(ids):
        raise click.UsageError("give --all or at least one --id")
    replayed: set[str] = set()

    from leveret.services.operations.deadletters import printable

    def on_replayed(message_id: str) -> None:
        replayed.add(message_id)
        click.echo(f"replayed {printable(message_id)}")

    with _dlq_broker(broker_url, namespace) as broker:
        count = broker.replay_dead_letters(
            queue, message_ids=None if replay_all else set(ids), on_replayed=on_replayed
        )
    click.echo(f"{count} dead letter(s) replayed to {queue}")
    missing = sorted(set(ids) - replayed)
    if missing:
        raise click.ClickException(f"no dead letter {', '.join(missing)} in {queue}")


@dlq.command("purge")
@click.argument("queue")
@click.option("--yes", is_flag=True, help="Do not ask for confirmation.")
@url_option
@namespace_option
def dlq_purge(queue: str, yes: bool, broker_url: str | None, namespace: str | None) -> None:
    """Delete every dead letter of QUEUE (asks first unless --yes)."""
    with _dlq_broker(broker_url, namespace) as broker:
        count = broker.dead_letter_count(queue)  # an unknown queue fails before asking
        if not yes:
            click.confirm(f"Delete every dead letter of {queue} ({count})?", abort=True)
        count = broker.purge_dead_letters(queue)
    click.echo(f"{count} dead letter(s) purged from {queue}")
