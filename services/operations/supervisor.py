"""The worker supervisor: `leveret worker --processes N` runs N child worker processes.

Each child is a fresh ``python -m leveret worker … --processes 1`` (its own connection,
its own interpreter, so SIGHUP loads new code). The supervisor:

- restarts a child that dies, after a backoff (1 s doubling to 30 s, reset once a child
  ran for a minute), and logs why (exit code or signal);
- stops everything and exits 2 when a child exits with `EXIT_FATAL` (a configuration or
  topology error that a restart cannot fix), instead of restarting it in a loop;
- on SIGTERM or SIGINT forwards SIGTERM to every child and waits for them: each finishes
  its handlers in flight, acks them and requeues what it prefetched. A second signal
  SIGKILLs the children (the broker redelivers what they held);
- on SIGHUP replaces the children one at a time: the new child starts and reports that it
  consumes, then the old one is sent SIGTERM and waited for. There is always a consumer,
  and no message is lost or handled twice by the roll itself;
- SIGKILLs a child sent SIGTERM (to roll or stop it) that has not exited within its
  shutdown timeout and a grace of `KILL_GRACE_S`: a hung child never stalls a roll or a
  stop (the broker redelivers what it held).

A child reports readiness by writing to the pipe named by ``$LEVERET_READY_FD`` once it
consumes (`notify_ready`). Children run in their own process group, so that a Ctrl-C on the
terminal reaches the supervisor only (it forwards one SIGTERM); on Linux they get SIGTERM
if the supervisor itself dies. The supervisor signals only the processes it started, by pid.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from types import FrameType
from typing import Any

from leveret.schemas.errors import ConfigurationError
from leveret.services.observability.logs import get_logger
from leveret.services.observability.metrics import MULTIPROC_DIR_ENV, SLOT_ENV, child_exited
from leveret.services.runtime.worker import (
    EXIT_FATAL,
    EXIT_OK,
    EXIT_SHUTDOWN_TIMEOUT,
    Worker,
)

log = get_logger("leveret.supervisor")

READY_FD_ENV = "LEVERET_READY_FD"
"""Environment variable naming the pipe a child writes to once it consumes."""

HEALTH_FILE_ENV = "LEVERET_HEALTH_FILE"
"""The worker command's ``--health-file``, given to each child through its environment."""

FIRST_BACKOFF_S = 1.0
MAX_BACKOFF_S = 30.0
STABLE_AFTER_S = 60.0
READY_TIMEOUT_S = 120.0
KILL_GRACE_S = 15.0
"""Seconds past a child's shutdown timeout after which a child sent SIGTERM is SIGKILLed."""
_TICK_S = 0.1
_PR_SET_PDEATHSIG = 1


@dataclass(eq=False)
class _Child:
    slot: int
    process: subprocess.Popen[bytes]
    ready_fd: int | None
    started_at: float
    ready: bool = False
    retiring: bool = False  # sent SIGTERM on purpose (roll or stop)
    kill_at: float | None = None  # SIGKILL it then if it has not exited (set with SIGTERM)
    health_file: str | None = None

    @property
    def pid(self) -> int:
        return self.process.pid


@dataclass
class _Roll:
    """A SIGHUP restart in progress: slots still to replace, and the current step."""

    slots: list[int]
    new: _Child | None = None
    old: _Child | None = None
    new_deadline: float = 0.0


@dataclass
class _Slot:
    current: _Child | None = None
    restart_at: float | None = None
    backoff_s: float = FIRST_BACKOFF_S


class Supervisor:
    """Runs `processes` copies of a worker command and keeps them running.

    Args:
        command: The child's command line (a single-process ``leveret worker``).
        processes: How many children to run.
        shutdown_timeout_s: The children's ``--shutdown-timeout``; the supervisor SIGKILLs
            a child sent SIGTERM that has not exited `kill_grace_s` after that.
        env: The children's environment (defaults to this process's).
        health_dir: A private directory for the children's health files: each child keeps
            its own (``--health-file``), and `health_files` tells which to look at.
        metrics_dir: A private directory where the children write their metrics
            (prometheus-client's multiprocess mode); each child gets its slot number in
            ``$LEVERET_WORKER_SLOT`` (its ``slot`` label), and a dead child's live gauges
            are removed.
    """

    def __init__(
        self,
        command: Sequence[str],
        processes: int,
        *,
        shutdown_timeout_s: float = 30.0,
        env: dict[str, str] | None = None,
        health_dir: str | None = None,
        kill_grace_s: float = KILL_GRACE_S,
        metrics_dir: str | None = None,
    ) -> None:
        if processes < 1:
            raise ConfigurationError("processes must be at least 1")
        self.kill_grace_s = kill_grace_s
        self.command = list(command)
        self.processes = processes
        self.shutdown_timeout_s = shutdown_timeout_s
        self.env = dict(os.environ if env is None else env)
        self.health_dir = health_dir
        self.metrics_dir = metrics_dir
        self.stopping = threading.Event()
        self._spawned = 0
        self.exit_code = EXIT_OK
        self.fatal_error: str | None = None
        self._slots = [_Slot() for _ in range(processes)]
        self._children: list[_Child] = []
        self._roll: _Roll | None = None
        self._roll_again = False
        self._signals: list[int] = []
        self._stopping = False

    # Running ----------------------------------------------------------------------------

    def run(self) -> int:
        """Start the children and supervise them until stopped; return the exit code.

        Installs handlers for SIGTERM, SIGINT and SIGHUP (main thread only).

        Returns:
            0 when every child exited cleanly after SIGTERM/SIGINT, 1 when one was cut
            off or killed, 2 when a child hit a fatal (configuration or topology) error.
        """
        previous: dict[int, Any] = {}
        if threading.current_thread() is threading.main_thread():
            for signum in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
                previous[signum] = signal.signal(signum, self._on_signal)
        log.info("worker_supervisor_started", processes=self.processes, pid=os.getpid())
        try:
            for slot in range(self.processes):
                self._slots[slot].current = self._spawn(slot)
            while not (self._stopping and not self._children):
                self._tick()
                time.sleep(_TICK_S)
        finally:
            for child in self._children:  # only on an unexpected error: leave nothing behind
                _kill(child, signal.SIGKILL)
            for number, handler in previous.items():
                signal.signal(number, handler)
        log.info("worker_supervisor_stopped", exit_code=self.exit_code)
        return self.exit_code

    def _on_signal(self, signum: int, _frame: FrameType | None) -> None:
        # Only record it: the loop acts on it (a handler may interrupt anything).
        self._signals.append(signum)

    def _tick(self) -> None:
        while self._signals:
            self._handle_signal(self._signals.pop(0))
        now = time.monotonic()
        for child in list(self._children):
            self._check_ready(child)
            if child.process.poll() is not None:
                self._on_exit(child)
            elif child.kill_at is not None and now > child.kill_at:
                log.warning(
                    "worker_child_killed",
                    slot=child.slot,
                    pid=child.pid,
                    reason="did not exit after SIGTERM within its shutdown timeout",
                )
                child.kill_at = None
                _kill(child, signal.SIGKILL)
        if self._stopping:
            return
        self._advance_roll(now)
        for number, slot in enumerate(self._slots):
            rolling = self._roll is not None and self._roll.new is not None
            if rolling and self._roll.new.slot == number:  # type: ignore[union-attr]
                continue  # its replacement is starting already
            if slot.current is None and slot.restart_at is not None and now >= slot.restart_at:
                slot.restart_at = None
                slot.current = self._spawn(number)

    # Children ---------------------------------------------------------------------------

    def _spawn(self, slot: int) -> _Child:
        self._spawned += 1
        health_file = (
            os.path.join(self.health_dir, f"child-{self._spawned}") if self.health_dir else None
        )
        health_env = {HEALTH_FILE_ENV: health_file} if health_file else {}
        health_env[SLOT_ENV] = str(slot)  # its log lines say which child wrote them
        if self.metrics_dir is not None:
            health_env[MULTIPROC_DIR_ENV] = self.metrics_dir
        read_fd, write_fd = os.pipe()
        try:
            process = subprocess.Popen(
                self.command,
                env={**self.env, **health_env, READY_FD_ENV: str(write_fd)},
                pass_fds=(write_fd,),
                process_group=0,
                preexec_fn=_die_with_parent,  # calls one resolved C function, takes no lock
            )
        finally:
            os.close(write_fd)
        os.set_blocking(read_fd, False)
        child = _Child(slot, process, read_fd, time.monotonic(), health_file=health_file)
        self._children.append(child)
        log.info("worker_child_started", slot=slot, pid=process.pid)
        return child

    def _check_ready(self, child: _Child) -> None:
        if child.ready_fd is None:
            return
        try:
            data = os.read(child.ready_fd, 64)
        except BlockingIOError:
            return
        os.close(child.ready_fd)
        child.ready_fd = None
        if data:
            child.ready = True
            log.info("worker_child_ready", slot=child.slot, pid=child.pid)

    def health_files(self) -> list[str]:
        """One health file per slot, for a `ChildrenProbe` (callable from any thread).

        A slot counts as healthy while any of its live children keeps its file fresh, so
        that a SIGHUP roll (old and new child side by side) stays healthy, while a dead
        child (its file removed) makes its slot unhealthy until its replacement consumes.
        """
        children = list(self._children)
        files = []
        for slot in range(self.processes):
            mine = [c.health_file for c in children if c.slot == slot and c.health_file]
            existing = [path for path in mine if os.path.exists(path)]
            files.append(existing[0] if existing else f"{self.health_dir}/slot-{slot}-starting")
        return files

    def _on_exit(self, child: _Child) -> None:
        self._children.remove(child)
        if self.metrics_dir is not None:
            child_exited(self.metrics_dir, child.pid)
        if child.health_file is not None:
            with contextlib.suppress(FileNotFoundError):
                os.remove(child.health_file)
        if child.ready_fd is not None:
            os.close(child.ready_fd)
            child.ready_fd = None
        code = child.process.returncode
        how = _describe_exit(code)
        slot = self._slots[child.slot]
        if slot.current is child:
            slot.current = None
        if self._stopping or child.retiring:
            clean = code == EXIT_OK or (code == -signal.SIGTERM and not child.ready)
            if self._stopping and not clean:
                self.exit_code = max(self.exit_code, EXIT_SHUTDOWN_TIMEOUT)
            log.info("worker_child_exited", slot=child.slot, pid=child.pid, **how)
            return
        roll = self._roll
        if roll is not None and roll.new is child:
            # The new code did not come up: keep the old child, which still consumes.
            log.error(
                "worker_reload_failed",
                slot=child.slot,
                pid=child.pid,
                **how,
                hint="the children running the previous code keep running",
            )
            self._roll = None
            return
        if code == EXIT_FATAL:
            self.fatal_error = (
                f"worker process {child.pid} exited with code {EXIT_FATAL}: a configuration "
                "or topology error that a restart cannot fix (see its log above)"
            )
            log.error("worker_child_failed", slot=child.slot, pid=child.pid, **how)
            self.exit_code = EXIT_FATAL
            self._stop(signal.SIGTERM)
            return
        now = time.monotonic()
        if now - child.started_at >= STABLE_AFTER_S:
            slot.backoff_s = FIRST_BACKOFF_S
        delay = slot.backoff_s
        slot.backoff_s = min(slot.backoff_s * 2, MAX_BACKOFF_S)
        slot.restart_at = now + delay
        log.warning(
            "worker_child_died",
            slot=child.slot,
            pid=child.pid,
            **how,
            ran_s=round(now - child.started_at, 1),
            restart_in_s=delay,
        )

    # Signals: stop and roll -------------------------------------------------------------

    def _handle_signal(self, signum: int) -> None:
        name = signal.Signals(signum).name
        if signum == signal.SIGHUP:
            if self._stopping:
                return
            log.info("worker_reload_requested", signal=name)
            if self._roll is None:
                self._roll = _Roll(slots=list(range(self.processes)))
            else:
                self._roll_again = True
            return
        if self._stopping:
            log.warning("worker_supervisor_killing", signal=name)
            self.exit_code = max(self.exit_code, EXIT_SHUTDOWN_TIMEOUT)
            self._kill_all()
            return
        log.info("worker_supervisor_stopping", signal=name, children=len(self._children))
        self._stop(signum)

    def _stop(self, _signum: int) -> None:
        self._stopping = True
        self.stopping.set()
        self._roll = None
        for child in self._children:
            self._retire(child)

    def _retire(self, child: _Child) -> None:
        """SIGTERM `child` on purpose; SIGKILL it later if it has not exited by then."""
        child.retiring = True
        child.kill_at = time.monotonic() + self.shutdown_timeout_s + self.kill_grace_s
        _kill(child, signal.SIGTERM)

    def _kill_all(self) -> None:
        for child in self._children:
            _kill(child, signal.SIGKILL)

    def _advance_roll(self, now: float) -> None:
        roll = self._roll
        if roll is None:
            if self._roll_again:
                self._roll_again = False
                self._roll = _Roll(slots=list(range(self.processes)))
            return
        if roll.old is not None:
            if roll.old in self._children:
                return  # still finishing its handlers in flight
            roll.old = None
        if roll.new is not None:
            new = roll.new
            if not new.ready:
                if now > roll.new_deadline:
                    log.error(
                        "worker_reload_failed", slot=new.slot, pid=new.pid, reason="not ready"
                    )
                    self._retire(new)
                    self._roll = None
                return
            slot = self._slots[new.slot]
            old, slot.current = slot.current, new
            slot.restart_at = None  # the old one may have died meanwhile: new replaces it
            roll.new = None
            if old is not None:
                roll.old = old
                self._retire(old)
            return
        if not roll.slots:
            log.info("worker_reload_done", processes=self.processes)
            self._roll = None
            return
        number = roll.slots.pop(0)
        if self._slots[number].current is None:
            return  # crashed meanwhile: its restart runs the new code anyway
        roll.new = self._spawn(number)
        roll.new_deadline = now + READY_TIMEOUT_S


def notify_ready(worker: Worker) -> None:
    """Tell the supervisor (if any) once `worker` consumes: write to ``$LEVERET_READY_FD``.

    Called by ``leveret worker`` in a child; does nothing when not started by a supervisor.
    """
    raw = os.environ.pop(READY_FD_ENV, None)
    if raw is None:
        return
    fd = int(raw)

    def wait_and_write() -> None:
        worker.consuming.wait()
        with contextlib.suppress(OSError):  # the supervisor is gone: nobody to tell
            os.write(fd, b"ready\n")
        with contextlib.suppress(OSError):
            os.close(fd)

    threading.Thread(target=wait_and_write, name="leveret-ready", daemon=True).start()


def worker_command(args: Sequence[str]) -> list[str]:
    """The command line of one child: ``python -m leveret worker ARGS --processes 1``."""
    return [sys.executable, "-m", "leveret", "worker", *args, "--processes", "1"]


def _describe_exit(code: int) -> dict[str, Any]:
    if code < 0:
        return {"signal": signal.Signals(-code).name}
    return {"exit_code": code}


def _kill(child: _Child, signum: int) -> None:
    if child.process.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            os.kill(child.pid, signum)


def _load_prctl() -> Any:
    if not sys.platform.startswith("linux"):
        return None
    try:
        return ctypes.CDLL(None, use_errno=True).prctl
    except (OSError, AttributeError):
        return None


# Resolved once in the supervisor: between fork and exec the child only calls it, and never
# loads a library (which could wait on a lock another thread of the parent held).
_PRCTL = _load_prctl()


def _die_with_parent() -> None:
    # In the child, before exec: SIGTERM when the supervisor dies (Linux), so that a
    # SIGKILLed supervisor leaves no orphan consuming (they shut down gracefully).
    if _PRCTL is not None:
        _PRCTL(_PR_SET_PDEATHSIG, signal.SIGTERM)
