"""Network namespaces with veth pairs on a private bridge: "hosts" on this machine.

`network` makes hosts a, b and c on ``10.213.<n>.0/24`` (a free one); the root namespace is
the bridge's gateway, where a `TcpProxy` forwards to RabbitMQ on loopback. Every namespace,
veth and the bridge are deleted afterwards; traffic only flows between those namespaces and
this machine.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from tests.support import LoggedProcess


def _ip(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["ip", *args], capture_output=True, text=True, timeout=10, check=check)


@dataclass
class Network:
    """A bridge in the root namespace and one namespace ("host") per name, each on a veth."""

    tag: str
    subnet: str  # "10.213.<n>"
    hosts: dict[str, str] = field(default_factory=dict)  # namespace -> address
    made_links: list[str] = field(default_factory=list)
    made_namespaces: list[str] = field(default_factory=list)

    @property
    def bridge(self) -> str:
        return f"lvbr{self.tag}"

    @property
    def gateway(self) -> str:
        """The root namespace's address on the bridge."""
        return f"{self.subnet}.1"

    def create(self, names: list[str]) -> None:
        _ip("link", "add", self.bridge, "type", "bridge")
        self.made_links.append(self.bridge)
        _ip("addr", "add", f"{self.gateway}/24", "dev", self.bridge)
        _ip("link", "set", self.bridge, "up")
        for index, name in enumerate(names):
            netns = f"lv{self.tag}{name}"
            outer, inner = f"lv{self.tag}{name}o", f"lv{self.tag}{name}i"
            _ip("netns", "add", netns)
            self.made_namespaces.append(netns)
            _ip("link", "add", outer, "type", "veth", "peer", "name", inner)
            self.made_links.append(outer)  # deleting one end deletes its peer
            _ip("link", "set", inner, "netns", netns)
            _ip("link", "set", outer, "master", self.bridge)
            _ip("link", "set", outer, "up")
            address = f"{self.subnet}.{index + 2}"
            _ip("-n", netns, "addr", "add", f"{address}/24", "dev", inner)
            _ip("-n", netns, "link", "set", inner, "up")
            _ip("-n", netns, "link", "set", "lo", "up")
            self.hosts[name] = netns

    def delete(self) -> None:
        for link in reversed(self.made_links):
            _ip("link", "del", link, check=False)
        for netns in reversed(self.made_namespaces):
            _ip("netns", "del", netns, check=False)

    def pids(self, name: str) -> list[int]:
        """Processes running in host `name` now."""
        out = _ip("netns", "pids", self.hosts[name], check=False).stdout
        return [int(pid) for pid in out.split()]


def _free_subnet() -> str:
    used = _ip("-4", "addr").stdout
    for third in range(os.getpid() % 200 + 20, 255):
        subnet = f"10.213.{third}"
        if f"inet {subnet}." not in used:
            return subnet
    pytest.skip("no free 10.213.x.0/24 subnet")


@pytest.fixture
def network() -> Iterator[Network]:
    """Hosts a, b (workers) and c (publisher); skipped only when namespaces cannot be made."""
    if shutil.which("ip") is None:
        pytest.skip("iproute2 (`ip`) is not installed")
    if os.geteuid() != 0:
        pytest.skip("creating network namespaces needs root")
    net = Network(tag=str(os.getpid() % 100_000), subnet=_free_subnet())
    probe = _ip("netns", "add", f"lv{net.tag}probe", check=False)
    if probe.returncode != 0:
        pytest.skip(f"cannot create network namespaces: {probe.stderr.strip()}")
    _ip("netns", "del", f"lv{net.tag}probe", check=False)
    try:
        net.create(["a", "b", "c"])
        yield net
    finally:
        net.delete()
    leftover = [n for n in _ip("netns", "list").stdout.split() if n.startswith(f"lv{net.tag}")]
    assert not leftover, f"namespaces left behind: {leftover}"


def host_process(netns: str, args: list[str], log_path: Path, env: dict[str, str]) -> LoggedProcess:
    """A Python process started in a host's namespace (`ip netns exec` execs it, so the pid
    is Python's own); killed by pid at teardown."""
    return LoggedProcess(["ip", "netns", "exec", netns, sys.executable, *args], log_path, env)
