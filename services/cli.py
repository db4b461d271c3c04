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
