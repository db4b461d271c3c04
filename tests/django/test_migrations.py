"""The migrations generated once (on Django 5.2) describe the models on every Django this
runs on: ``makemigrations --check`` finds nothing to add, for Leveret's app and the shop's."""

from __future__ import annotations

import io

import django
import pytest
from django.core.management import call_command


@pytest.mark.django_db  # it checks the history of the migrations applied, too
def test_makemigrations_finds_nothing_to_add() -> None:
    out = io.StringIO()
    try:
        call_command("makemigrations", "--check", "--dry-run", stdout=out, stderr=out)
    except SystemExit as exit_:  # --check exits 1 when a migration is missing
        raise AssertionError(
            f"Django {django.get_version()} wants new migrations:\n{out.getvalue()}"
        ) from exit_
    assert "No changes detected" in out.getvalue()
