"""The Python blocks of README.md and docs/*.md run, so that an example cannot rot.

Sybil finds each ```` ```python ```` block of a page and runs them in order in one namespace
per page (a module registered in `sys.modules` while the page runs, so a later block may
import an earlier one's names); hidden setup is an ``<!-- invisible-code-block: python``
comment, and a block that cannot run here follows ``<!-- skip: next "why" -->``, which must
say why. docs/contributing-docs.md says how to write them. Examples publish to the in-memory
broker; each page starts with no message topics defined, and the process's broker (`configure`) and
its topics are put back after it.
"""

from __future__ import annotations

import re
import sys
import types
import unittest
from collections.abc import Iterator
from contextlib import AbstractContextManager, contextmanager
from pathlib import Path
from typing import Any

import pytest
from sybil import Sybil
from sybil.parsers.markdown import PythonCodeBlockParser, SkipParser

import leveret
from leveret.actors import actors_in, dispatch
from leveret.actors import schedules as schedules_module
from leveret.schemas import message as message_module
from leveret.services import RabbitBroker
from tests.support import RABBIT_URL, ROOT

DOCUMENTS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
SYBIL = Sybil(parsers=[PythonCodeBlockParser(), SkipParser()])

MODULE_NAMES = {"README.md": "shop_actors", "quickstart.md": "shop_actors"}
"""The module a page's blocks stand for, when a later block imports it by name."""

RABBITMQ_PAGES = {"quickstart.md"}
"""Pages whose blocks publish to the real RabbitMQ (`Broker()`): they get the test's own
namespace through LEVERET_BROKER_URL and LEVERET_NAMESPACE, deleted afterwards."""

SKIP_WITHOUT_REASON = re.compile(r"<!--\s*skip:\s*(next|start)\s*-->")


@contextmanager
def _emptied(lock: AbstractContextManager[object], registry: dict[str, Any]) -> Iterator[None]:
    """A process-wide registry (topics, schedule names) empty while a page runs, as in a new
    process, and as it was afterwards."""
    with lock:
        saved = dict(registry)
        registry.clear()
    try:
        yield
    finally:
        with lock:
            registry.clear()
            registry.update(saved)


@contextmanager
def _page_module(name: str) -> Iterator[types.ModuleType]:
    """A module for a page's blocks, importable by name while they run, with no message
    topic or schedule defined yet; the process's broker is put back afterwards."""
    module = types.ModuleType(name)
    saved_module = sys.modules.get(name)
    saved_broker = dispatch._current
    sys.modules[name] = module
    try:
        with (
            _emptied(message_module._registry_lock, message_module._topics),
            _emptied(schedules_module._registry_lock, schedules_module._registry),
        ):
            yield module
    finally:
        if saved_module is None:
            sys.modules.pop(name, None)
        else:
            sys.modules[name] = saved_module
        dispatch._current = saved_broker


@pytest.mark.parametrize("path", DOCUMENTS, ids=lambda path: path.relative_to(ROOT).as_posix())
def test_python_blocks_run(
    path: Path, request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch
) -> None:
    document = SYBIL.parse(path)
    namespace = None
    if path.name in RABBITMQ_PAGES:
        namespace = request.getfixturevalue("namespace")
        monkeypatch.setenv("LEVERET_BROKER_URL", request.getfixturevalue("rabbit_url"))
        monkeypatch.setenv("LEVERET_NAMESPACE", namespace)
    with _page_module(MODULE_NAMES.get(path.name, "docs_example")) as module:
        document.namespace = module.__dict__
        try:
            for example in document.examples():
                try:
                    example.evaluate()
                except unittest.SkipTest:
                    continue  # a `skip: next "why"` block
        finally:
            if namespace is not None:
                _delete_actors_of(module, namespace)


def _delete_actors_of(module: types.ModuleType, namespace: str) -> None:
    """Delete the queues of the actors a page defined, and its namespace's exchanges."""
    broker = RabbitBroker(RABBIT_URL, namespace=namespace)
    try:
        actors = actors_in([module.__name__])
        if actors:
            broker.delete(*actors)
        broker.delete_namespace_exchanges()
    finally:
        broker.close()


@pytest.mark.parametrize("path", DOCUMENTS, ids=lambda path: path.relative_to(ROOT).as_posix())
def test_skipped_blocks_say_why(path: Path) -> None:
    bare = SKIP_WITHOUT_REASON.findall(path.read_text())
    assert not bare, f'{path.name}: write <!-- skip: next "why it cannot run" -->'


def test_the_api_reference_lists_every_public_name() -> None:
    reference = (ROOT / "docs" / "reference.md").read_text()
    listed = set(re.findall(r"^::: leveret\.(\w+)$", reference, re.MULTILINE))
    assert listed == set(leveret.__all__)
