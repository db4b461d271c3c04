"""The `leveret` command."""

from __future__ import annotations

import os
import shutil
import sys
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import NoReturn

import click

from actors import actors_in, configure
from schemas.errors import LeveretError
from services import config, naming
from services.broker import Broker, select_actors
from services.execution import MessageHooks
from services.health import DEFAULT_HOST as DEFAULT_HEALTH_HOST
from services.health import ChildrenProbe, HealthReporters, Probe, WorkerProbe
from services.logs import configure_logging
from services.supervisor import HEALTH_FILE_ENV, Supervisor, notify_ready, worker_command
from services.timelimits import warn_about_limits
from services.worker import EXIT_FATAL

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


@dataclass(frozen=True, slots=True)
class WorkerSetup:
    """What a program embedding the `worker` command adds to it (`manage.py leveret_worker`).

    Pass it as click's ``obj`` when invoking `worker`; the command line stays the same.

    Attributes:
        hooks: Run around each message (see `services.execution.MessageHooks`).
        child_command: With ``--processes N``, the command line of one child given the
            worker's arguments; defaults to ``python -m services.cli worker ARGS``.
    """

    hooks: Sequence[MessageHooks] = ()
    child_command: Callable[[list[str]], list[str]] | None = None


_SIZE_UNITS = {
    "": 1,
    "b": 1,
    "kb": 1000,
    "mb": 1000**2,
    "gb": 1000**3,
    "kib": 1024,
    "mib": 1024**2,
    "gib": 1024**3,
}


def _byte_size(_ctx: click.Context, param: click.Parameter, value: str) -> int:
    """A size in bytes from a number, or one with a unit (KiB, MiB, GiB, KB, MB, GB)."""
    text = value.strip().lower().replace(" ", "")
    number = text.rstrip("kmgib")
    factor = _SIZE_UNITS.get(text[len(number) :])
    if factor is None or not number.isdigit() or int(number) * factor < 1:
        raise click.BadParameter(
            f"{value!r} is not a size such as 1048576, 512KiB or 16MiB", param=param
        )
    return int(number) * factor


def _worker_setup() -> WorkerSetup:
    found = click.get_current_context().find_object(WorkerSetup)
    return found if found is not None else WorkerSetup()


class _WorkerConfigurationError(click.ClickException):
    """A worker that cannot start as configured: exits 2, which a supervisor never restarts."""

    exit_code = EXIT_FATAL


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
@click.option(
    "--processes",
    default=1,
    show_default=True,
    type=click.IntRange(min=1),
    help="Worker processes, each with its own connection; above 1 a supervisor runs them.",
)
@click.option("--prefetch", type=int, default=None, help="Unacked deliveries held [2 x threads].")
@click.option("--queues", default=None, help="Comma-separated queues to consume (default: all).")
@click.option(
    "--shutdown-timeout",
    default=30.0,
    show_default=True,
    help="Seconds to let handlers in flight finish on SIGTERM/SIGINT.",
)
@click.option(
    "--health-port",
    type=click.IntRange(0, 65535),
    envvar="LEVERET_HEALTH_PORT",
    default=None,
    help="Serve HTTP health checks on HOST:PORT: 200 and a JSON report while connected "
    "and consuming, 503 otherwise. Env: LEVERET_HEALTH_PORT.",
)
@click.option(
    "--health-host",
    envvar="LEVERET_HEALTH_HOST",
    default=DEFAULT_HEALTH_HOST,
    show_default=True,
    help="Address the health port listens on; 0.0.0.0 to be probed from outside a "
    "container. Env: LEVERET_HEALTH_HOST.",
)
@click.option(
    "--health-file",
    type=click.Path(dir_okay=False),
    envvar="LEVERET_HEALTH_FILE",
    default=None,
    help="Rewrite this file every 5 s while connected and consuming, remove it otherwise "
    "(check it with `leveret ping --health-file`). Env: LEVERET_HEALTH_FILE.",
)
@click.option(
    "--max-body-size",
    callback=_byte_size,
    default="16MiB",
    show_default=True,
    help="Larger message bodies are dead-lettered unread (reason too_large); e.g. 512KiB, "
    "64MiB or a number of bytes.",
)
@click.option(
    "--consumer-timeout",
    default=1800.0,
    show_default=True,
    help="The broker's consumer_timeout in seconds; handlers without a time limit below it "
    "are warned about at start.",
)
@_url_option
@_namespace_option
@_with_log_options
def worker(
    modules: tuple[str, ...],
    threads: int,
    processes: int,
    prefetch: int | None,
    queues: str | None,
    shutdown_timeout: float,
    health_port: int | None,
    health_host: str,
    health_file: str | None,
    max_body_size: int,
    consumer_timeout: float,
    broker_url: str | None,
    namespace: str | None,
    log_level: str,
    log_format: str,
) -> None:
    """Consume the queues of the actors defined in MODULES."""
    _setup_logging(log_level, log_format)
    _import_path()
    try:
        # Imported first, also by a supervisor: a module that does not import stops the
        # command at once instead of crash-looping children.
        selected = select_actors(
            actors_in(modules), [q.strip() for q in queues.split(",")] if queues else None
        )
        if processes > 1:
            _supervise(processes, shutdown_timeout, health_port, health_host, health_file)
        broker = Broker(broker_url, namespace=namespace)
        configure(broker)
        running = broker.worker(
            selected,
            threads=threads,
            prefetch=prefetch,
            shutdown_timeout_s=shutdown_timeout,
            hooks=_worker_setup().hooks,
            max_body_bytes=max_body_size,
        )
    except LeveretError as exc:
        raise _WorkerConfigurationError(str(exc)) from exc
    warn_about_limits(selected, consumer_timeout_s=consumer_timeout)
    queue_names = [naming.queue_name(broker.namespace, actor.queue) for actor in selected]
    health = _start_health(WorkerProbe(running, queue_names), health_port, health_host, health_file)
    notify_ready(running)
    try:
        code = running.run()
    finally:
        health.close()
    broker.close()
    if running.fatal_error:
        click.echo(f"Error: {running.fatal_error}", err=True)
    sys.exit(code)


def _start_health(probe: Probe, port: int | None, host: str, path: str | None) -> HealthReporters:
    """Serve `probe` on `host:port` and/or keep the health file `path` (both optional)."""
    try:
        health = HealthReporters(probe, port=port, host=host, path=path)
        health.start()
    except OSError as exc:
        raise click.ClickException(f"cannot serve health checks: {exc}") from exc
    return health


# Options the supervisor handles itself instead of passing them on to every child.
_SUPERVISOR_OPTIONS = ("processes", "health_port", "health_host", "health_file", "broker_url")
_HEALTH_ENV = ("LEVERET_HEALTH_PORT", "LEVERET_HEALTH_HOST", HEALTH_FILE_ENV)


def _supervise(
    processes: int,
    shutdown_timeout: float,
    health_port: int | None,
    health_host: str,
    health_file: str | None,
) -> NoReturn:
    """Run `processes` single-process workers with this command's options; exit with its code.

    Health checks answer for the whole worker: each child keeps its own health file in a
    private directory, and the supervisor serves `health_port` / keeps `health_file`,
    healthy while every child is.
    """
    context = click.get_current_context()
    args: list[str] = []
    env = {key: value for key, value in os.environ.items() if key not in _HEALTH_ENV}
    broker_url = context.params.get("broker_url")
    if broker_url is not None:
        env[config.BROKER_URL_ENV] = broker_url  # not on the command line, where ps shows it
    for param in context.command.params:
        value = context.params.get(param.name or "")
        if value is None or param.name in _SUPERVISOR_OPTIONS:
            continue
        if isinstance(param, click.Argument):
            args.extend(value)
        elif isinstance(param, click.Option) and param.is_flag:
            args.extend([param.opts[0]] if value else [])
        else:
            args.extend([param.opts[0], str(value)])
    wants_health = health_port is not None or health_file is not None
    directory = tempfile.mkdtemp(prefix="leveret-health-") if wants_health else None
    child_command = _worker_setup().child_command or worker_command
    supervisor = Supervisor(
        child_command(args),
        processes,
        shutdown_timeout_s=shutdown_timeout,
        env=env,
        health_dir=directory,
    )
    health = _start_health(
        ChildrenProbe(supervisor.health_files, stopping=supervisor.stopping),
        health_port,
        health_host,
        health_file,
    )
    try:
        code = supervisor.run()
    finally:
        health.close()
        if directory is not None:
            shutil.rmtree(directory, ignore_errors=True)
    if supervisor.fatal_error:
        click.echo(f"Error: {supervisor.fatal_error}", err=True)
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
@click.option("--offset", default=0, show_default=True, help="Skip this many first (paging).")
@_url_option
@_namespace_option
def dlq_list(
    queue: str, limit: int, offset: int, broker_url: str | None, namespace: str | None
) -> None:
    """List the dead letters of QUEUE: id, topic, attempts, error, failed at.

    Reading changes nothing: every letter stays, in the same order.
    """
    from services.deadletters import DeadLetter, printable

    with _dlq_broker(broker_url, namespace) as broker:
        try:
            page = broker.dead_letters(queue, limit=limit, offset=offset)
        except LeveretError as exc:
            raise click.ClickException(str(exc)) from exc
    letters = [DeadLetter.of(d) for d in page]
    rows: list[tuple[str, ...]] = [("ID", "TOPIC", "ATTEMPTS", "REASON", "ERROR", "FAILED AT")]
    for x in letters:
        cells = (x.message_id, x.topic, str(x.attempts), x.reason, x.error[:60], x.failed_at)
        rows.append(tuple(printable(cell) for cell in cells))
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
    """Show one dead letter of QUEUE: its properties, headers and body.

    Control characters from the message are shown escaped; long output goes through a
    pager on a terminal.
    """
    from schemas import envelope as wire
    from schemas.codec import json_preview
    from services.deadletters import printable

    with _dlq_broker(broker_url, namespace) as broker:
        try:
            letter = broker.find_dead_letter(queue, message_id)
        except LeveretError as exc:
            raise click.ClickException(str(exc)) from exc
    if letter is None:
        raise click.ClickException(f"no dead letter {message_id} in {queue}")
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
    output = "\n".join(lines)
    if sys.stdout.isatty():
        click.echo_via_pager(output + "\n")
    else:
        click.echo(output)


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
    replayed: set[str] = set()

    from services.deadletters import printable

    def on_replayed(message_id: str) -> None:
        replayed.add(message_id)
        click.echo(f"replayed {printable(message_id)}")

    with _dlq_broker(broker_url, namespace) as broker:
        try:
            count = broker.replay_dead_letters(
                queue, message_ids=None if replay_all else set(ids), on_replayed=on_replayed
            )
        except LeveretError as exc:
            raise click.ClickException(str(exc)) from exc
    click.echo(f"{count} dead letter(s) replayed to {queue}")
    missing = sorted(set(ids) - replayed)
    if missing:
        raise click.ClickException(f"no dead letter {', '.join(missing)} in {queue}")


@dlq.command("purge")
@click.argument("queue")
@click.option("--yes", is_flag=True, help="Do not ask for confirmation.")
@_url_option
@_namespace_option
def dlq_purge(queue: str, yes: bool, broker_url: str | None, namespace: str | None) -> None:
    """Delete every dead letter of QUEUE (asks first unless --yes)."""
    with _dlq_broker(broker_url, namespace) as broker:
        try:
            count = broker.dead_letter_count(queue)  # an unknown queue fails before asking
            if not yes:
                click.confirm(f"Delete every dead letter of {queue} ({count})?", abort=True)
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


@main.command()
@_url_option
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
    from services.health import probe_file, probe_url
    from services.ping import ping_broker
    from services.redaction import redact as redact_url

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
    if url.startswith("memory://"):
        click.echo("ok: memory:// is in this process, nothing to ping")
        return
    try:
        elapsed_s = ping_broker(url, timeout)
    except LeveretError as exc:
        raise click.ClickException(str(exc)) from exc
    click.echo(f"ok: {redact_url(url)} answered in {elapsed_s * 1000:.0f} ms")


if __name__ == "__main__":
    main()
