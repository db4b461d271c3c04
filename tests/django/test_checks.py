"""``manage.py check`` warns about what loses messages: no LEVERET at all, actor modules
outside ACTORS, handlers without a time limit below the consumer timeout; and the docs'
own example project passes without a warning."""

from __future__ import annotations

import os
import subprocess
import sys

from pytest_django.fixtures import Settings

import tests.django.unlimited_actors  # noqa: F401  # imported by "the project"
from leveret.django.checks import check_message_traps
from tests.support import ROOT


def _by_id(settings: Settings) -> dict[str, list[str]]:
    found: dict[str, list[str]] = {}
    for message in check_message_traps():
        found.setdefault(message.id or "", []).append(message.msg)
    return found


def test_no_leveret_setting_at_all_is_a_warning(settings: Settings) -> None:
    del settings.LEVERET
    warnings = _by_id(settings)
    (text,) = warnings["leveret.W001"]
    assert "settings.LEVERET is not set" in text
    assert "namespace 'leveret'" in text


def test_an_actor_module_outside_actors_is_a_warning(settings: Settings) -> None:
    settings.LEVERET = {"ACTORS": ["tests.django.plugin_actors"]}
    warnings = _by_id(settings)
    assert "leveret.W001" not in warnings
    stray = " ".join(warnings["leveret.W002"])
    assert "module 'tests.django.unlimited_actors' defines actor(s) Unlimited" in stray
    assert "tests.django.plugin_actors" not in stray  # listed: its actors have a worker


def test_handlers_without_a_limit_below_the_consumer_timeout_warn_once_each_kind(
    settings: Settings,
) -> None:
    settings.LEVERET = {
        "ACTORS": ["tests.django.plugin_actors", "tests.django.unlimited_actors"],
        "CONSUMER_TIMEOUT_S": 1800,
    }
    warnings = _by_id(settings)
    (missing,) = warnings["leveret.W003"]
    assert "1 handler(s) have no time limit: checks.unlimited.on" in missing
    (too_long,) = warnings["leveret.W004"]
    assert "checks.patient.on" in too_long
    assert "plugin.tally" not in missing + too_long


def test_the_example_project_checks_without_a_single_warning() -> None:
    """The project the docs walk through (examples/shop) triggers none of these."""
    result = subprocess.run(
        [sys.executable, "manage.py", "check"],
        cwd=ROOT / "examples" / "shop",
        env={
            **{k: v for k, v in os.environ.items() if k != "DJANGO_SETTINGS_MODULE"},
            "PYTHONPATH": str(ROOT / "examples" / "shop"),
            "SHOP_SQLITE_PATH": ":memory:",
        },
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    assert "System check identified no issues" in result.stdout, result.stdout + result.stderr
