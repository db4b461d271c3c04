"""`leveret worker`: run actors, one process or a supervisor of several."""

from __future__ import annotations

import os
import shlex
import shutil
import sys
import tempfile
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, NoReturn

import click

from leveret.actors import Actor, actors_in, configure
from leveret.actors.schedules import schedules_in
from leveret.schemas.errors import LeveretError
from leveret.services import config
from leveret.services.broker import Broker
from leveret.services.cli._common import (
    import_path,
    namespace_option,
    setup_logging,
    url_option,
    with_log_options,
)
from leveret.services.cli.scheduler import run_in_thread
from leveret.services.middleware import Middleware
from leveret.services.observability.logs import flush_logs, get_logger
from leveret.services.observability.metrics import (
    MULTIPROC_DIR_ENV,
    SLOT_ENV,
    Metrics,
    multiprocess_exposition,
)
from leveret.services.operations.health import DEFAULT_HOST as DEFAULT_HEALTH_HOST
from leveret.services.operations.health import (
    ChildrenProbe,
    Exposition,
    HealthReporters,
    Probe,
    WorkerProbe,
)
from leveret.services.operations.heartbeats import DEFAULT_INTERVAL_S as DEFAULT_HEARTBEAT_S
from leveret.services.operations.heartbeats import Heartbeats
from leveret.services.operations.supervisor import (
    HEALTH_FILE_ENV,
    READY_FD_ENV,
    Supervisor,
    notify_ready,
    worker_command,
)
from leveret.services.runtime.eventloop import DEFAULT_CONCURRENCY
from leveret.services.runtime.options import select_actors
from leveret.services.runtime.timelimits import warn_about_limits
from leveret.services.runtime.worker import EXIT_FATAL
from leveret.services.scheduling import ScheduleSource, combined
from leveret.services.topology import naming

log = get_logger("leveret.worker")


@dataclass(frozen=True, slots=True)
class WorkerSetup:
    """What a program embedding the `worker` command adds to it (`manage.py leveret_worker`).

    Pass it as click's ``obj`` when invoking `worker`; the command line stays the same.

    Attributes:
        middleware: Returns the `Middleware` the worker's broker runs (after Leveret's own),
            asked once the command line is parsed; a `LeveretError` it raises stops the
            command as a configuration error.
        child_command: With ``--processes N`` (or ``--reload``), the command line of one
            child given the worker's arguments; defaults to ``python -m leveret worker ARGS``.
        before_start: Called once the command line is parsed and the actors imported,
            just before consuming (or supervising) starts; never for ``--help`` or a bad
            option.
        extra_actors: Run besides those of the MODULES (the Django tasks' queues), found
            once the command line is parsed.
        schedules: Entries besides those of the MODULES, for ``--scheduler``.
    """

    middleware: Callable[[], Sequence[Middleware]] | None = None
    child_command: Callable[[list[str]], list[str]] | None = None
    before_start: Callable[[], None] | None = None
    extra_actors: Callable[[], Sequence[type[Actor]]] | None = None
    schedules: ScheduleSource | None = None


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
@click.argument("modules", nargs=-1)
@click.option(
    "--threads",
    default=8,
    show_default=True,
    type=click.IntRange(min=1),
    help="Sync handlers running at once (a thread each).",
)
@click.option(
    "--concurrency",
    default=DEFAULT_CONCURRENCY,
    show_default=True,
    type=click.IntRange(min=1),
    help="async def handlers running at once, on the worker's event loop.",
)
@click.option(
    "--processes",
    default=1,
    show_default=True,
    type=click.IntRange(min=1),
    help="Worker processes, each with its own connection; above 1 a supervisor runs them.",
)
@click.option(
    "--prefetch",
    type=click.IntRange(min=1),
    default=None,
    help="Unacked deliveries held, fixed. Default: adaptive, 2 x threads (with async "
    "handlers: + concurrency + 8) while handlers are slow, up to 200 while they are fast.",
)
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
    envvar="LEVERET_CONSUMER_TIMEOUT",
    default=1800.0,
    show_default=True,
    help="The broker's consumer_timeout in seconds; handlers without a time limit below it "
    "are warned about at start. Env: LEVERET_CONSUMER_TIMEOUT.",
)
@click.option(
    "--metrics/--no-metrics",
    "metrics",
    envvar="LEVERET_METRICS",
    default=None,
    help="Serve Prometheus metrics at /metrics on the health port [on when --health-port "
    "is set]. Env: LEVERET_METRICS.",
)
@click.option(
    "--heartbeat-interval",
    type=click.FloatRange(min=0),
    envvar="LEVERET_HEARTBEAT_INTERVAL",
    default=DEFAULT_HEARTBEAT_S,
    show_default=True,
    help="Seconds between two heartbeats for leveret status (nothing is stored unless "
    "someone listens); 0 sends none. Env: LEVERET_HEARTBEAT_INTERVAL.",
)
@click.option(
    "--scheduler",
    "with_scheduler",
    is_flag=True,
    default=False,
    help="Also send the ticks of the schedules defined in MODULES (one leader among every "
    "scheduler of the namespace, see leveret scheduler).",
)
@click.option(
    "--reload",
    is_flag=True,
    default=False,
    help="Development: run the worker in a child process and restart it (gracefully) "
    "whenever a Python file changes under the current directory or --reload-dir. Needs "
    "the reload extra: pip install 'leveret[reload]'.",
)
@click.option(
    "--reload-dir",
    "reload_dirs",
    multiple=True,
    type=click.Path(exists=True, file_okay=False),
    help="A directory --reload watches (repeatable); default: the current directory.",
)
@url_option
@namespace_option
@with_log_options
def worker(
    modules: tuple[str, ...],
    threads: int,
    concurrency: int,
    processes: int,
    prefetch: int | None,
    queues: str | None,
    shutdown_timeout: float,
    health_port: int | None,
    health_host: str,
    health_file: str | None,
    max_body_size: int,
    consumer_timeout: float,
    metrics: bool | None,
    heartbeat_interval: float,
    with_scheduler: bool,
    reload: bool,
    reload_dirs: tuple[str, ...],
    broker_url: str | None,
    namespace: str | None,
    log_level: str,
    log_format: str,
) -> None:
    """Consume the queues of the actors defined in MODULES.

    SIGTERM or SIGINT: stop consuming, let the handlers in flight finish (up to
    --shutdown-timeout), exit. SIGHUP: the same, then start again with the code now on
    disk (one process re-executes itself; with --processes N the children are replaced
    one at a time).
    """
    setup_logging(log_level, log_format, buffered=True)
    if reload:
        _reload(reload_dirs or (os.getcwd(),), shutdown_timeout)
    import_path()
    try:
        # Imported first, also by a supervisor: a module that does not import stops the
        # command at once instead of crash-looping children.
        setup = _worker_setup()
        extra = list(setup.extra_actors()) if setup.extra_actors is not None else []
        selected = select_actors(
            [*actors_in(modules), *extra],
            [q.strip() for q in queues.split(",")] if queues else None,
        )
        if setup.before_start is not None:
            setup.before_start()
        wants_metrics = metrics if metrics is not None else health_port is not None
        if processes > 1:
            _supervise(
                processes, shutdown_timeout, health_port, health_host, health_file, wants_metrics
            )
        # Leveret's own middleware first (after tracing), then the program's.
        middleware: list[Middleware] = []
        prometheus = None
        if wants_metrics or (MULTIPROC_DIR_ENV in os.environ and SLOT_ENV in os.environ):
            prometheus = Metrics({actor.queue: actor.topics() for actor in selected})
            middleware.append(prometheus)
        if heartbeat_interval > 0:
            middleware.append(Heartbeats(heartbeat_interval))
        if setup.middleware is not None:
            middleware.extend(setup.middleware())
        broker = Broker(broker_url, namespace=namespace, middleware=middleware)
        configure(broker)
        running = broker.worker(
            selected,
            threads=threads,
            concurrency=concurrency,
            prefetch=prefetch,
            shutdown_timeout_s=shutdown_timeout,
            max_body_bytes=max_body_size,
        )
    except LeveretError as exc:
        raise _WorkerConfigurationError(str(exc)) from exc
    warn_about_limits(selected, consumer_timeout_s=consumer_timeout)
    queue_names = [naming.queue_name(broker.namespace, actor.queue) for actor in selected]
    health = _start_health(
        WorkerProbe(running, queue_names),
        health_port,
        health_host,
        health_file,
        prometheus.exposition if prometheus is not None else None,
    )
    stop_scheduling = threading.Event()
    scheduling = None
    if with_scheduler:
        entries = combined(schedules_in(modules), setup.schedules)
        scheduling = run_in_thread(broker.scheduler(entries), stop_scheduling, running.fail)
    notify_ready(running)
    try:
        # A child of a supervisor leaves SIGHUP to it: the supervisor replaces its children.
        code = running.run(restart_on_sighup=READY_FD_ENV not in os.environ)
    finally:
        health.close()
        stop_scheduling.set()
        if scheduling is not None:
            scheduling.join(10)
    broker.close()
    if running.fatal_error:
        click.echo(f"Error: {running.fatal_error}", err=True)
    if running.restart_requested and code == 0:
        _restart()
    sys.exit(code)


def _restart() -> NoReturn:
    """Execute this very command line again (same pid), which imports the code anew."""
    log.info("worker_restarted", argv=sys.orig_argv)
    flush_logs()
    for stream in (sys.stdout, sys.stderr):
        stream.flush()
    os.execv(sys.executable, sys.orig_argv)  # noqa: S606  # our own command line, again


# Options of the watching parent of --reload, not passed on to the worker it runs.
_RELOAD_OPTIONS = ("reload", "reload_dirs")


def _reload(directories: Sequence[str], shutdown_timeout: float) -> NoReturn:
    """Run this command without --reload in a child, again after each change of a Python
    file under `directories`; the child gets SIGINT and drains first. Exits on SIGTERM or
    SIGINT, after the child."""
    try:
        import watchfiles
    except ImportError as exc:
        raise _WorkerConfigurationError(
            "--reload needs watchfiles: pip install 'leveret[reload]'"
        ) from exc
    context = click.get_current_context()
    broker_url = context.params.get("broker_url")
    if broker_url is not None:
        os.environ[config.BROKER_URL_ENV] = broker_url  # not on a command line ps shows
    child_command = _worker_setup().child_command or worker_command
    command = child_command(_command_line(context, skip=_RELOAD_OPTIONS))
    if command[-2:] == ["--processes", "1"] and context.params["processes"] != 1:
        command = command[:-2]  # the child supervises --processes N itself
    log.info("worker_reloading", directories=list(directories), command=command)

    def on_change(changes: set[tuple[Any, str]]) -> None:
        log.info("worker_code_changed", files=sorted({path for _change, path in changes})[:10])

    watchfiles.run_process(
        *directories,
        target=shlex.join(command),
        target_type="command",
        callback=on_change,
        watch_filter=watchfiles.PythonFilter(),
        sigint_timeout=int(shutdown_timeout) + 10,
    )
    sys.exit(0)


def _start_health(
    probe: Probe,
    port: int | None,
    host: str,
    path: str | None,
    metrics: Exposition | None = None,
) -> HealthReporters:
    """Serve `probe` (and `metrics` at /metrics) on `host:port` and/or keep the health file
    `path` (both optional)."""
    try:
        health = HealthReporters(probe, port=port, host=host, path=path, metrics=metrics)
        health.start()
    except OSError as exc:
        raise click.ClickException(f"cannot serve health checks: {exc}") from exc
    return health


# Options the supervisor handles itself instead of passing them on to every child.
_SUPERVISOR_OPTIONS = (
    "processes",
    "health_port",
    "health_host",
    "health_file",
    "broker_url",
    "metrics",
)
_HEALTH_ENV = (
    "LEVERET_HEALTH_PORT",
    "LEVERET_HEALTH_HOST",
    HEALTH_FILE_ENV,
    "LEVERET_METRICS",
    MULTIPROC_DIR_ENV,
    SLOT_ENV,
)


def _command_line(context: click.Context, *, skip: Sequence[str]) -> list[str]:
    """This command's arguments and options as given, without those named in `skip` (and
    without the broker URL, which children read from the environment)."""
    args: list[str] = []
    for param in context.command.params:
        value = context.params.get(param.name or "")
        if value is None or param.name in skip or param.name == "broker_url":
            continue
        if isinstance(param, click.Argument):
            args.extend(value)
        elif isinstance(param, click.Option) and param.multiple:
            for item in value:
                args.extend([param.opts[0], str(item)])
        elif isinstance(param, click.Option) and param.is_flag:
            args.extend([param.opts[0]] if value else [])
        else:
            args.extend([param.opts[0], str(value)])
    return args


def _supervise(
    processes: int,
    shutdown_timeout: float,
    health_port: int | None,
    health_host: str,
    health_file: str | None,
    metrics: bool,
) -> NoReturn:
    """Run `processes` single-process workers with this command's options; exit with its code.

    Health checks answer for the whole worker: each child keeps its own health file in a
    private directory, and the supervisor serves `health_port` / keeps `health_file`,
    healthy while every child is. With `metrics`, each child writes its metrics to files in
    another private directory (prometheus-client's multiprocess mode) and the supervisor
    serves them merged at /metrics, each series labelled with its child's slot.
    """
    context = click.get_current_context()
    env = {key: value for key, value in os.environ.items() if key not in _HEALTH_ENV}
    broker_url = context.params.get("broker_url")
    if broker_url is not None:
        env[config.BROKER_URL_ENV] = broker_url  # not on the command line, where ps shows it
    args = _command_line(context, skip=_SUPERVISOR_OPTIONS)
    wants_health = health_port is not None or health_file is not None
    directory = tempfile.mkdtemp(prefix="leveret-health-") if wants_health else None
    metrics_dir = tempfile.mkdtemp(prefix="leveret-metrics-") if metrics else None
    child_command = _worker_setup().child_command or worker_command
    supervisor = Supervisor(
        child_command(args),
        processes,
        shutdown_timeout_s=shutdown_timeout,
        env=env,
        health_dir=directory,
        metrics_dir=metrics_dir,
    )
    health = _start_health(
        ChildrenProbe(supervisor.health_files, stopping=supervisor.stopping),
        health_port,
        health_host,
        health_file,
        multiprocess_exposition(metrics_dir) if metrics_dir is not None else None,
    )
    try:
        code = supervisor.run()
    finally:
        health.close()
        for made in (directory, metrics_dir):
            if made is not None:
                shutil.rmtree(made, ignore_errors=True)
    if supervisor.fatal_error:
        click.echo(f"Error: {supervisor.fatal_error}", err=True)
    sys.exit(code)
