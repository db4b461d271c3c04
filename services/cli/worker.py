"""`leveret worker`: run actors, one process or a supervisor of several."""

from __future__ import annotations

import os
import shutil
import sys
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import NoReturn

import click

from leveret.actors import actors_in, configure
from leveret.schemas.errors import LeveretError
from leveret.services import config, naming
from leveret.services.broker import Broker, select_actors
from leveret.services.cli._common import (
    import_path,
    namespace_option,
    setup_logging,
    url_option,
    with_log_options,
)
from leveret.services.operations.health import DEFAULT_HOST as DEFAULT_HEALTH_HOST
from leveret.services.operations.health import ChildrenProbe, HealthReporters, Probe, WorkerProbe
from leveret.services.operations.supervisor import (
    HEALTH_FILE_ENV,
    Supervisor,
    notify_ready,
    worker_command,
)
from leveret.services.runtime.execution import MessageHooks
from leveret.services.runtime.timelimits import warn_about_limits
from leveret.services.runtime.worker import EXIT_FATAL


@dataclass(frozen=True, slots=True)
class WorkerSetup:
    """What a program embedding the `worker` command adds to it (`manage.py leveret_worker`).

    Pass it as click's ``obj`` when invoking `worker`; the command line stays the same.

    Attributes:
        hooks: Run around each message (see `leveret.services.runtime.execution.MessageHooks`).
        child_command: With ``--processes N``, the command line of one child given the
            worker's arguments; defaults to ``python -m leveret worker ARGS``.
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


@click.command()
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
@url_option
@namespace_option
@with_log_options
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
    setup_logging(log_level, log_format)
    import_path()
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
