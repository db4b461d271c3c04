"""System checks: a wrong ``LEVERET`` setting is reported at start-up, not at first publish."""

from __future__ import annotations

import importlib
from typing import Any

from django.core.checks import CheckMessage, Error, register

from leveret.django.settings import load


@register("leveret")
def check_settings(app_configs: Any = None, **_kwargs: Any) -> list[CheckMessage]:
    """Check the ``LEVERET`` dict: known keys, types, URL scheme, namespace, actor modules.

    Returns:
        One error (``leveret.E001``) per problem, ``leveret.E002`` per actor module that
        does not import, ``leveret.E003`` for an unknown database alias.
    """
    from django.db import connections

    found = load()
    errors: list[CheckMessage] = [
        Error(problem, hint="See docs/django.md, section Settings.", id="leveret.E001")
        for problem in found.problems
    ]
    for module in found.actors:
        try:
            importlib.import_module(module)
        except Exception as exc:  # noqa: BLE001  # any import failure is the finding
            errors.append(
                Error(
                    f"LEVERET['ACTORS'] names {module!r}, which cannot be imported: {exc!r}",
                    id="leveret.E002",
                )
            )
    if found.database not in connections.settings:
        errors.append(
            Error(
                f"LEVERET['DATABASE'] is {found.database!r}, which is not in DATABASES",
                id="leveret.E003",
            )
        )
    return errors
