"""`leveret declare`, `leveret demo` and `leveret ping`."""

from __future__ import annotations

import click

from leveret.actors import actors_in
from leveret.services import config
from leveret.services.broker import Broker
from leveret.services.cli._common import (
    import_path,
    namespace_option,
    setup_logging,
    url_option,
    with_log_options,
)
from leveret.services.observability.logs import configure_logging


@click.command()
@click.argument("modules", nargs=-1, required=True)
@url_option
@namespace_option
def declare(modules: tuple[str, ...], broker_url: str | None, namespace: str | None) -> None:
    """Declare exchanges, queues and bindings of the actors in MODULES (idempotent)."""
    configure_logging("warning")
    import_path()
    found = actors_in(modules)
    with Broker(broker_url, namespace=namespace) as broker:
        broker.declare(*found)
    for cls in found:
        click.echo(f"declared {broker.namespace}.{cls.queue} <- {', '.join(cls.topics())}")


@click.command()
@click.option(
    "--broker-url",
    envvar=config.BROKER_URL_ENV,
    default="memory://",
    show_default=True,
    help=f"Broker URL; set it (or {config.BROKER_URL_ENV}) to run the demo on RabbitMQ.",
)
@click.option("--namespace", default="leveret-demo", show_default=True)
@click.option("--keep", is_flag=True, help="Keep the demo's queues afterwards.")
@with_log_options
def demo(broker_url: str, namespace: str, keep: bool, log_level: str, log_format: str) -> None:
    """Publish a few typed messages to example actors and show them handled."""
    from leveret.services.cli.demo import DEMO_ACTORS, EXPECTED_HANDLED, run_demo

    setup_logging(log_level, log_format)
    with Broker(broker_url, namespace=namespace) as broker:
        handled = run_demo(broker)
        if not keep:
            broker.delete(*DEMO_ACTORS)
            broker.delete_namespace_exchanges()
    if handled < EXPECTED_HANDLED:
        raise click.ClickException(f"only {handled} of {EXPECTED_HANDLED} messages were handled")


@click.command()
@url_option
@click.option(
    "--health-url",
    default=None,
    help="Check a worker's health endpoint (`worker --health-port`) instead of the broker.",
)
@click.option(
    "--health-file",
    type=click.Path(dir_okay=False),
    default=None,
    help="Check a worker's health file (`worker --health-file`) instead of the broker.",
)
@click.option(
    "--max-age",
    default=30.0,
    show_default=True,
    help="With --health-file: seconds since its last update after which it counts as stale.",
)
@click.option("--timeout", default=5.0, show_default=True, help="Seconds to wait for an answer.")
def ping(
    broker_url: str | None,
    health_url: str | None,
    health_file: str | None,
    max_age: float,
    timeout: float,
) -> None:
    """Exit 0 if the broker (or a worker's health check) answers, 1 with the reason if not.

    Without --health-url/--health-file: an AMQP handshake (login included) with the broker,
    then close. For scripts and container health checks.
    """
    from leveret.services.observability.redaction import redact
    from leveret.services.operations.health import probe_file, probe_url
    from leveret.services.rabbitmq.ping import ping_broker

    if health_url is not None and health_file is not None:
        raise click.UsageError("give --health-url or --health-file, not both")
    if health_url is not None or health_file is not None:
        health = (
            probe_url(health_url, timeout)
            if health_url is not None
            else probe_file(health_file or "", max_age)
        )
        if not health.healthy:
            raise click.ClickException(f"unhealthy: {health.details.get('error', 'no answer')}")
        click.echo(f"ok: {health_url or health_file} is healthy")
        return
    url = config.broker_url(broker_url)
    if config.scheme(url) == "memory":
        click.echo("ok: memory:// is in this process, nothing to ping")
        return
    elapsed_s = ping_broker(url, timeout)
    click.echo(f"ok: {redact(url)} answered in {elapsed_s * 1000:.0f} ms")
