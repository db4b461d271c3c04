"""`leveret delete-namespace`: list, then delete, a namespace's queues and exchanges."""

from __future__ import annotations

import click

from leveret.actors import actors_in
from leveret.services import config
from leveret.services.cli._common import (
    import_path,
    management_url_option,
    no_management_option,
    url_option,
)
from leveret.services.observability.logs import configure_logging
from leveret.services.observability.redaction import redact
from leveret.services.topology import naming


@click.command("delete-namespace")
@click.argument("modules", nargs=-1)
@url_option
@click.option(
    "--namespace",
    required=True,
    help="The namespace to delete (given here: never taken from LEVERET_NAMESPACE).",
)
@management_url_option(
    "RabbitMQ's management API, which lists every actor queue of the namespace "
    "[http://BROKER-HOST:15672/ with the broker URL's credentials]. Env: "
    "LEVERET_MANAGEMENT_URL."
)
@no_management_option(
    "Use AMQP only: the namespace's own objects and the queues of the actors in MODULES."
)
@click.option("--yes", is_flag=True, help="Delete what is listed (without it, only list).")
@click.option(
    "--with-messages",
    is_flag=True,
    help="Also delete queues that hold messages (dead letters, delayed messages…).",
)
def delete_namespace(
    modules: tuple[str, ...],
    broker_url: str | None,
    namespace: str,
    management_url: str | None,
    no_management: bool,
    yes: bool,
    with_messages: bool,
) -> None:
    """List a namespace's queues (with their messages) and exchanges; delete them with --yes.

    Finds the actor queues through RabbitMQ's management API when it answers, else those of
    the actors in MODULES, and the namespace's own exchanges and queues by name. Never
    touches another namespace's (`shop.eu`, `shop2` are not `shop`'s), queues that hold
    messages (unless --with-messages), or anything a running worker, scheduler or `dlq`
    command uses: stop them first.
    """
    from leveret.services.operations.deadletters import printable
    from leveret.services.rabbitmq.management import ManagementAPI, default_management_url
    from leveret.services.rabbitmq.namespace import delete_contents, namespace_contents

    configure_logging("warning")
    import_path()
    actors = actors_in(modules) if modules else []
    checked = naming.check_namespace(namespace)
    url = config.broker_url(broker_url)
    if not url.lower().startswith(("amqp://", "amqps://")):
        raise click.UsageError("delete-namespace works on RabbitMQ: give an amqp:// URL")
    api = None
    if not no_management:
        api = ManagementAPI(management_url or default_management_url(url), url)
    found = namespace_contents(url, checked, actors, management=api)

    if found.found_by == "management" and api is not None:
        how = f"listed by the management API at {api.safe_url}"
    else:
        why = f"; the management API: {found.management_error}" if found.management_error else ""
        how = (
            "found by name: the namespace's own, and the queues of the actors in MODULES "
            f"({len(actors)} given){why}"
        )
    click.echo(f"namespace {checked} on {redact(url)} ({how})")
    if not found.queues and not found.exchanges:
        click.echo(f"nothing to delete in namespace {checked}")
        return
    click.echo(f"queues ({len(found.queues)}):")
    for queue in found.queues:
        state = f"{queue.messages} messages"
        if queue.consumers:
            state += f", {queue.consumers} consumers"
        if queue.held:
            state = "held by a running process"
        click.echo(f"  {printable(queue.name)}  {state}")
    click.echo(f"exchanges ({len(found.exchanges)}):")
    for exchange in found.exchanges:
        click.echo(f"  {printable(exchange)}")
    if found.others:
        click.echo(
            f"({found.others} other queue(s) named {checked}.… are not this namespace's "
            "Leveret queues and are kept)"
        )

    busy = [queue for queue in found.queues if queue.consumers or queue.held]
    if not yes:
        click.echo(
            f"nothing deleted: run again with --yes to delete these {len(found.queues)} "
            f"queue(s) and {len(found.exchanges)} exchange(s)"
        )
        return
    if busy:
        names = ", ".join(printable(queue.name) for queue in busy)
        raise click.ClickException(
            f"nothing deleted: {names} in use (consumers, or held by a running process): "
            "stop the namespace's workers, scheduler and other leveret commands first"
        )
    full = [queue for queue in found.queues if queue.keeps_messages]
    if full and not with_messages:
        names = ", ".join(f"{printable(q.name)} ({q.messages} messages)" for q in full)
        raise click.ClickException(
            f"nothing deleted: {names} hold messages; pass --with-messages to delete them too"
        )

    def deleted(kind: str, name: str) -> None:
        click.echo(f"deleted {kind} {printable(name)}")

    delete_contents(url, found, with_messages=with_messages, on_deleted=deleted)
    click.echo(
        f"namespace {checked}: {len(found.queues)} queue(s) and {len(found.exchanges)} "
        "exchange(s) deleted"
    )
