"""`leveret scheduler`: send the schedules' ticks, one leader among any number of processes."""

from __future__ import annotations

import signal
import sys
import threading
from collections.abc import Callable, Sequence
from datetime import UTC, datetime

import click

from leveret.actors.schedules import Schedule, schedules_in
from leveret.schemas.errors import LeveretError
from leveret.services.broker import Broker
from leveret.services.cli._common import (
    import_path,
    namespace_option,
    seconds_option,
    setup_logging,
    url_option,
    with_log_options,
)
from leveret.services.observability.logs import get_logger
from leveret.services.runtime.worker import EXIT_INTERNAL_ERROR
from leveret.services.scheduling import (
    DEFAULT_GRACE_S,
    DEFAULT_POLL_S,
    Scheduler,
    ScheduleSource,
    combined,
)

log = get_logger("leveret.scheduler")

grace_option = seconds_option(
    "--grace",
    "grace_s",
    default=DEFAULT_GRACE_S,
    at_least=1,
    help="Seconds: ticks this late are still sent (by a new leader, or after the leader's "
    "clock jumped ahead or it stalled); older ones follow each entry's catch-up policy.",
)
poll_option = seconds_option(
    "--lock-poll",
    "poll_s",
    default=DEFAULT_POLL_S,
    at_least=0.1,
    help="Seconds between a follower's attempts to take the lead.",
)


def run_in_thread(
    scheduler: Scheduler, stop: threading.Event, on_crash: Callable[[str], None]
) -> threading.Thread:
    """Run `scheduler` in a thread until `stop`; a crash (a bug) is logged with its
    traceback and reported to `on_crash`, never silent."""

    def run() -> None:
        try:
            scheduler.run(stop)
        except BaseException as exc:  # reported, then the process stops
            log.exception("scheduler_crashed")
            on_crash(f"the scheduler failed: {type(exc).__name__}: {exc}")

    thread = threading.Thread(target=run, name="leveret-scheduler", daemon=True)
    thread.start()
    return thread


def print_listing(broker: Broker, entries: Sequence[Schedule], runs: int = 3) -> None:
    """Each entry with its next runs and its last tick sent (read from the broker, which
    is not changed: nothing is declared)."""
    try:
        state = broker.schedule_state()
    except LeveretError as exc:
        click.echo(f"(last ticks unknown: {exc})", err=True)
        state = {}
    else:
        if not state:
            click.echo("(no state stored yet: no scheduler has sent a tick in this namespace)")
    now = datetime.now(UTC)
    for entry in sorted(entries, key=lambda e: e.name):
        target = f"send to {entry.to.queue}" if entry.to is not None else "publish by topic"
        last = state.get(entry.name)
        click.echo(f"{entry.name}: {entry.when}, {target}, catch-up {entry.catch_up}")
        click.echo(f"  last sent: {last.isoformat() if last else '-'}")
        for tick in entry.next_runs(now, runs):
            click.echo(f"  next: {tick.isoformat()}")
    click.echo(f"{len(entries)} schedule(s)")


@click.command()
@click.argument("modules", nargs=-1)
@click.option("--list", "listing", is_flag=True, help="Print each entry, next runs, last sent.")
@grace_option
@poll_option
@url_option
@namespace_option
@with_log_options
def scheduler(
    modules: tuple[str, ...],
    listing: bool,
    grace_s: float,
    poll_s: float,
    broker_url: str | None,
    namespace: str | None,
    log_level: str,
    log_format: str,
) -> None:
    """Send the ticks of the schedules defined in MODULES.

    Run as many as you like in a namespace: one leads (an exclusive queue on RabbitMQ is
    its lock), and if it goes another takes over at its next --lock-poll after RabbitMQ
    drops the lock: within about a second when the leader's process dies, within 16 s
    when its network goes (two to three missed heartbeats of 5 s). SIGTERM or SIGINT
    stops.
    """
    setup_logging(log_level, log_format)
    import_path()
    entries = _entries(modules)
    broker = Broker(broker_url, namespace=namespace)
    if listing:
        print_listing(broker, entries() if callable(entries) else entries)
        broker.close()
        return
    stop = threading.Event()
    if threading.current_thread() is threading.main_thread():
        for signum in (signal.SIGTERM, signal.SIGINT):
            signal.signal(signum, lambda _s, _f: stop.set())
    running = broker.scheduler(entries, grace_s=grace_s, poll_s=poll_s)
    try:
        running.run(stop)
    except Exception as exc:
        log.exception("scheduler_crashed")
        click.echo(f"Error: the scheduler failed: {type(exc).__name__}: {exc}", err=True)
        sys.exit(EXIT_INTERNAL_ERROR)
    finally:
        broker.close()


def _entries(modules: Sequence[str]) -> Sequence[Schedule] | Callable[[], Sequence[Schedule]]:
    source = click.get_current_context().find_object(ScheduleSource)
    entries = combined(schedules_in(modules), source)
    if not (entries() if callable(entries) else entries):
        raise click.ClickException("no schedules found: name modules that define them")
    return entries
