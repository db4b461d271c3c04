"""The `leveret` command."""

from __future__ import annotations

import os
import sys

import click

from actors import actors_in, configure
from schemas.errors import LeveretError
from services import config
from services.broker import Broker
from services.logs import configure_logging

_url_option = click.option(
    "--broker-url",
    envvar=config.BROKER_URL_ENV,
    default=None,
    help=f"Broker URL (amqp://, amqps:// or memory://). Env: {config.BROKER_URL_ENV}; "
    f"default {config.DEFAULT_BROKER_URL.replace('guest:guest', 'guest:***')}.",
)
_namespace_option = click.option(
    "--namespace",
    envvar=config.NAMESPACE_ENV,
    default=None,
    help=f"Prefix of every exchange and queue. Env: {config.NAMESPACE_ENV}; default leveret.",
)
_log_options = [
    click.option(
        "--log-level",
        default="info",
        show_default=True,
        type=click.Choice(["debug", "info", "warning", "error"]),
    ),
    click.option(
        "--log-format",
        default="auto",
        show_default=True,
        type=click.Choice(["auto", "json", "console"]),
        help="auto: console on a terminal, JSON lines otherwise.",
    ),
]


def _with_log_options(function: click.decorators.FC) -> click.decorators.FC:
    for option in reversed(_log_options):
        function = option(function)
    return function


def _setup_logging(level: str, fmt: str) -> None:
    configure_logging(level, json=None if fmt == "auto" else fmt == "json")


def _import_path() -> None:
    # Like `python -m`, find actor modules in the current directory.
    if os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())


@click.group()
@click.version_option(package_name="leveret")
def main() -> None:
    """Leveret: typed actors on RabbitMQ."""


@main.command()
@click.argument("modules", nargs=-1, required=True)
@click.option("--threads", default=8, show_default=True, help="Handlers running at once.")
@click.option("--prefetch", type=int, default=None, help="Unacked deliveries held [2 x threads].")
@click.option("--queues", default=None, help="Comma-separated queues to consume (default: all).")
@click.option(
    "--shutdown-timeout",
    default=30.0,
    show_default=True,
    help="Seconds to let handlers in flight finish on SIGTERM/SIGINT.",
)
@_url_option
@_namespace_option
@_with_log_options
def worker(
    modules: tuple[str, ...],
    threads: int,
    prefetch: int | None,
    queues: str | None,
    shutdown_timeout: float,
    broker_url: str | None,
    namespace: str | None,
    log_level: str,
    log_format: str,
) -> None:
    """Consume the queues of the actors defined in MODULES."""
    _setup_logging(log_level, log_format)
    _import_path()
    try:
        found = actors_in(modules)
        broker = Broker(broker_url, namespace=namespace)
        configure(broker)
        running = broker.worker(
            found,
            threads=threads,
            prefetch=prefetch,
            queues=[q.strip() for q in queues.split(",")] if queues else None,
            shutdown_timeout_s=shutdown_timeout,
        )
    except LeveretError as exc:
        raise click.ClickException(str(exc)) from exc
    code = running.run()
    broker.close()
    fatal = getattr(running, "fatal_error", None)
    if fatal:
        click.echo(f"Error: {fatal}", err=True)
    sys.exit(code)


@main.command()
@click.argument("modules", nargs=-1, required=True)
@_url_option
@_namespace_option
def declare(modules: tuple[str, ...], broker_url: str | None, namespace: str | None) -> None:
    """Declare exchanges, queues and bindings of the actors in MODULES (idempotent)."""
    configure_logging("warning")
    _import_path()
    try:
        found = actors_in(modules)
        with Broker(broker_url, namespace=namespace) as broker:
            broker.declare(*found)
    except LeveretError as exc:
        raise click.ClickException(str(exc)) from exc
    for cls in found:
        click.echo(f"declared {broker.namespace}.{cls.queue} <- {', '.join(cls.topics())}")


@main.group()
def dlq() -> None:
    """Inspect and operate dead-letter queues (QUEUE: the actor's queue, no namespace)."""


def _dlq_broker(broker_url: str | None, namespace: str | None) -> Broker:
    configure_logging("warning")
    try:
        return Broker(broker_url, namespace=namespace)
    except LeveretError as exc:
        raise click.ClickException(str(exc)) from exc


@dlq.command("list")
@click.argument("queue")
@click.option("--limit", default=100, show_default=True, help="Show at most this many.")
@_url_option
@_namespace_option
def dlq_list(queue: str, limit: int, broker_url: str | None, namespace: str | None) -> None:
    """List the dead letters of QUEUE: id, topic, attempts, error, failed at."""
    from services.deadletters import DeadLetter

    with _dlq_broker(broker_url, namespace) as broker:
        try:
            letters = [DeadLetter.of(d) for d in broker.dead_letters(queue, limit=limit)]
        except LeveretError as exc:
            raise click.ClickException(str(exc)) from exc
    rows = [("ID", "TOPIC", "ATTEMPTS", "REASON", "ERROR", "FAILED AT")]
    rows += [
        (x.message_id, x.topic, str(x.attempts), x.reason, x.error[:60], x.failed_at)
        for x in letters
    ]
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    for row in rows:
        click.echo("  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)))
    click.echo(f"{len(letters)} dead letter(s) shown")


@dlq.command("show")
@click.argument("queue")
@click.argument("message_id")
@_url_option
@_namespace_option
def dlq_show(queue: str, message_id: str, broker_url: str | None, namespace: str | None) -> None:
    """Show one dead letter of QUEUE: its properties, headers and body."""
    from schemas.codec import json_preview

    with _dlq_broker(broker_url, namespace) as broker:
        letters = broker.dead_letters(queue, limit=100_000)
    found = [d for d in letters if d.message_id == message_id]
    if not found:
        raise click.ClickException(f"no dead letter {message_id} in {queue}")
    letter = found[0]
    click.echo(f"message_id:     {letter.message_id}")
    click.echo(f"topic:          {letter.topic}")
    click.echo(f"correlation_id: {letter.correlation_id}")
    click.echo("headers:")
    for key in sorted(letter.headers):
        value = letter.headers[key]
        text = value if isinstance(value, str) else repr(value)
        click.echo(f"  {key}: {text}")
    click.echo(f"body: {json_preview(letter.body, limit=10_000)}")


@dlq.command("replay")
@click.argument("queue")
@click.option("--all", "replay_all", is_flag=True, help="Replay every dead letter.")
@click.option("--id", "ids", multiple=True, help="Replay this message id (repeatable).")
@_url_option
@_namespace_option
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
    with _dlq_broker(broker_url, namespace) as broker:
        try:
            count = broker.replay_dead_letters(
                queue,
                message_ids=None if replay_all else set(ids),
                on_replayed=lambda message_id: click.echo(f"replayed {message_id}"),
            )
        except LeveretError as exc:
            raise click.ClickException(str(exc)) from exc
    click.echo(f"{count} dead letter(s) replayed to {queue}")


@dlq.command("purge")
@click.argument("queue")
@click.option("--yes", is_flag=True, help="Do not ask for confirmation.")
@_url_option
@_namespace_option
def dlq_purge(queue: str, yes: bool, broker_url: str | None, namespace: str | None) -> None:
    """Delete every dead letter of QUEUE (asks first unless --yes)."""
    if not yes:
        click.confirm(f"Delete every dead letter of {queue}?", abort=True)
    with _dlq_broker(broker_url, namespace) as broker:
        try:
            count = broker.purge_dead_letters(queue)
        except LeveretError as exc:
            raise click.ClickException(str(exc)) from exc
    click.echo(f"{count} dead letter(s) purged from {queue}")


@main.command()
@click.option(
    "--broker-url",
    envvar=config.BROKER_URL_ENV,
    default="memory://",
    show_default=True,
    help=f"Broker URL; set it (or {config.BROKER_URL_ENV}) to run the demo on RabbitMQ.",
)
@click.option("--namespace", default="leveret-demo", show_default=True)
@click.option("--keep", is_flag=True, help="Keep the demo's queues afterwards.")
@_with_log_options
def demo(broker_url: str, namespace: str, keep: bool, log_level: str, log_format: str) -> None:
    """Publish a few typed messages to example actors and show them handled."""
    from services.demo import DEMO_ACTORS, EXPECTED_HANDLED, run_demo
    from services.rabbitmq import RabbitBroker

    _setup_logging(log_level, log_format)
    try:
        with Broker(broker_url, namespace=namespace) as broker:
            handled = run_demo(broker)
            if not keep:
                broker.delete(*DEMO_ACTORS)
                if isinstance(broker, RabbitBroker):
                    broker.delete_namespace_exchanges()
    except LeveretError as exc:
        raise click.ClickException(str(exc)) from exc
    if handled < EXPECTED_HANDLED:
        raise click.ClickException(f"only {handled} of {EXPECTED_HANDLED} messages were handled")


if __name__ == "__main__":
    main()
