"""`leveret status`: workers, queues and warnings of a namespace, once or refreshed."""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import click

from leveret.actors import Actor, actors_in
from leveret.services.broker import Broker
from leveret.services.cli._common import (
    import_path,
    management_url_option,
    namespace_option,
    no_management_option,
    seconds_option,
    url_option,
)
from leveret.services.operations.status import StatusReader, Warning
from leveret.services.operations.status_table import render

_CLEAR = "\x1b[H\x1b[2J"


@dataclass(frozen=True, slots=True)
class StatusSetup:
    """What a program embedding `status` adds (``manage.py leveret_status``), as click's obj.

    Attributes:
        actors: The actors whose queues to show besides those of the MODULES.
        warnings: Warnings of its own, added to each snapshot's (`StatusReader`).
    """

    actors: Callable[[], Sequence[type[Actor]]]
    warnings: Callable[[], Sequence[Warning]] | None = None


@click.command()
@click.argument("modules", nargs=-1)
@url_option
@namespace_option
@click.option("--json", "as_json", is_flag=True, help="One JSON document (per refresh).")
@click.option("--watch", is_flag=True, help="Refresh in place until Ctrl-C.")
@seconds_option(
    "--interval",
    "interval",
    default=2.0,
    at_least=0.5,
    help="Seconds between two refreshes with --watch; without rates from the management "
    "API, also how far apart two looks at the .dlqs are (to see whether they grow).",
)
@management_url_option(
    "RabbitMQ's management API for unacked counts and rates [http://BROKER-HOST:15672/ "
    "with the broker URL's credentials]. Env: LEVERET_MANAGEMENT_URL."
)
@seconds_option(
    "--wait",
    "first_wait",
    default=6.0,
    at_least=0,
    help="How long the first look at a namespace waits for heartbeats (a little over the "
    "workers' --heartbeat-interval).",
)
@no_management_option("Use AMQP only (ready messages and consumers; no rates).")
def status(
    modules: tuple[str, ...],
    broker_url: str | None,
    namespace: str | None,
    as_json: bool,
    watch: bool,
    interval: float,
    management_url: str | None,
    first_wait: float,
    no_management: bool,
) -> None:
    """Show the workers (from their heartbeats, on every server), the actor queues and
    what needs attention in a namespace.

    MODULES: actor modules whose queues to show even when no worker runs them (the
    management API lists every queue of the namespace by itself). The first look at a
    namespace waits about 6 s for heartbeats; later looks (for 10 minutes) answer at once.
    """
    import_path()
    actors = [actor.queue for actor in actors_in(modules)] if modules else []
    extra = click.get_current_context().find_object(StatusSetup)
    if extra is not None:
        actors += [actor.queue for actor in extra.actors()]
    with Broker(broker_url, namespace=namespace) as broker:
        reader = StatusReader(
            broker,
            actors=actors,
            management_url="" if no_management else management_url,
            sample_s=0 if watch else interval,
            first_wait_s=first_wait,
            extra_warnings=extra.warnings if extra is not None else None,
        )
        try:
            while True:
                snapshot = reader.take()
                if as_json:
                    output = json.dumps(snapshot.to_json(), sort_keys=True) + "\n"
                else:
                    output = render(snapshot)
                if watch and not as_json and sys.stdout.isatty():
                    output = _CLEAR + output
                click.echo(output, nl=False)
                if not watch:
                    return
                time.sleep(interval)
        except KeyboardInterrupt:
            return
