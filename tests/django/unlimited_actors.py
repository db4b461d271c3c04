"""Actors without a time limit, and with one too long for the broker (the checks' tests)."""

from __future__ import annotations

from leveret import Actor, handler
from tests.django.plugin_actors import Complaint, Note


class Unlimited(Actor, queue="checks.unlimited"):
    @handler
    def on(self, msg: Note) -> None: ...


class Patient(Actor, queue="checks.patient"):
    time_limit_s = 3600

    @handler
    def on(self, msg: Complaint) -> None: ...
