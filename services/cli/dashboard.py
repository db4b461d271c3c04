"""`leveret dashboard`: serve the dashboard (optional extra ``leveret[dashboard]``)."""

from __future__ import annotations

import os

import click

from leveret.services import config
from leveret.services.cli._common import (
    import_path,
    management_url_option,
    namespace_option,
    url_option,
)
from leveret.services.observability.logs import configure_logging

TOKEN_ENV = config.DASHBOARD_TOKEN_ENV
ALLOWED_HOSTS_ENV = "LEVERET_DASHBOARD_ALLOWED_HOSTS"


def _allowed_hosts(
    _ctx: click.Context, _param: click.Parameter, value: str | None
) -> tuple[str, ...]:
    """--allowed-hosts, checked where it is given."""
    from leveret.schemas.errors import InvalidArgument

    try:
        from leveret.services.dashboard.origins import check_allowed_hosts
    except ImportError as exc:
        raise click.ClickException(
            f"the dashboard needs its extra: pip install 'leveret[dashboard]' ({exc})"
        ) from exc
    try:
        return check_allowed_hosts(value)
    except InvalidArgument as exc:
        raise click.BadParameter(str(exc)) from exc


@click.command()
@click.argument("modules", nargs=-1)
@url_option
@namespace_option
@click.option(
    "--host",
    default="127.0.0.1",
    show_default=True,
    envvar="LEVERET_DASHBOARD_HOST",
    help=f"Address to listen on. Anything but loopback needs ${TOKEN_ENV}.",
)
@click.option(
    "--port", default=8700, show_default=True, type=click.IntRange(0, 65535),
    envvar="LEVERET_DASHBOARD_PORT",
)  # fmt: skip
@click.option(
    "--allowed-hosts",
    default=None,
    envvar=ALLOWED_HOSTS_ENV,
    callback=_allowed_hosts,
    metavar="HOST[:PORT],…",
    help="Host names a reverse proxy passes in the Host header (compared exactly, commas "
    "between them), answered besides localhost, 127.0.0.1 and [::1] on --port. Every "
    f"other Host is refused (DNS rebinding). With ${TOKEN_ENV} and no list: any Host.",
)
@click.option("--read-only", is_flag=True, help="Hide and refuse replay and purge.")
@click.option(
    "--refresh",
    default=3.0,
    show_default=True,
    type=click.FloatRange(1, 3600),
    help="Seconds between the overview's refreshes in the browser.",
)
@management_url_option(
    "RabbitMQ management API (rates, unacked; the queue figures while AMQP is down) "
    '[http://BROKER-HOST:15672/ with the broker URL\'s credentials]; "" for AMQP only. '
    "Env: LEVERET_MANAGEMENT_URL."
)
def dashboard(
    modules: tuple[str, ...],
    broker_url: str | None,
    namespace: str | None,
    host: str,
    port: int,
    allowed_hosts: tuple[str, ...],
    read_only: bool,
    refresh: float,
    management_url: str | None,
) -> None:
    """Serve the dashboard: workers, actor queues, warnings and dead letters (replay,
    purge), refreshed live.

    MODULES: actor and schedule modules: the actors' handlers and topics, their queues
    even when no worker runs, and the schedules with their last and next ticks.
    Credentials: set $LEVERET_DASHBOARD_TOKEN (16 characters or more) and send it as a
    Bearer token or as the password of HTTP basic auth. Without it, only localhost,
    127.0.0.1 and [::1] (and --allowed-hosts) are answered.
    """
    try:
        import uvicorn

        from leveret.services.dashboard import Dashboard, create_app
        from leveret.services.dashboard.security import check_token, is_loopback
    except ImportError as exc:
        raise click.ClickException(
            f"the dashboard needs its extra: pip install 'leveret[dashboard]' ({exc})"
        ) from exc
    from leveret.actors import actors_in
    from leveret.actors.schedules import schedules_in
    from leveret.services.broker import Broker

    configure_logging("warning")
    try:
        token = check_token(os.environ.get(TOKEN_ENV))
    except ValueError as exc:  # InvalidArgument
        raise click.UsageError(str(exc)) from exc
    if token is None and not is_loopback(host):
        raise click.UsageError(
            f"--host {host} serves other machines: set ${TOKEN_ENV} (the dashboard then "
            "asks every request for it), or keep the default --host 127.0.0.1"
        )
    import_path()
    actors = actors_in(modules) if modules else []
    schedules = schedules_in(modules) if modules else []
    with Broker(broker_url, namespace=namespace) as broker:
        app = create_app(
            Dashboard(
                broker,
                read_only=read_only,
                actors=actors,
                schedules=schedules,
                refresh_s=refresh,
                management_url=management_url,
            ),
            token=token,
            allowed_hosts=allowed_hosts,
        )
        click.echo(
            f"leveret dashboard for namespace {broker.namespace} on http://{host}:{port}/"
            + (" (read-only)" if read_only else ""),
            err=True,
        )
        uvicorn.run(app, host=host, port=port, log_level="warning", proxy_headers=False)
