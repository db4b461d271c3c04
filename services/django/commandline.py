"""Leveret's commands under ``manage.py``: the same command lines, with the project's settings.

``manage.py leveret_worker`` and ``manage.py leveret_dlq`` run the click commands of
``leveret worker`` and ``leveret dlq`` with the broker URL and namespace of
``settings.LEVERET`` (the command line still wins), and their ``--help`` shows the values
in force, and Django's own options.
"""

from __future__ import annotations

import copy
import os
import sys
from typing import Any

import click

from leveret.django.settings import MANAGEMENT_URL_ENV, LeveretSettings, broker_url, load
from leveret.schemas.errors import LeveretError
from leveret.services import config
from leveret.services.observability.redaction import redact

DJANGO_OPTIONS = ("--settings", "--pythonpath")
CONSUMER_TIMEOUT_ENV = "LEVERET_CONSUMER_TIMEOUT"

DJANGO_EPILOG = (
    "Django's options --settings=MODULE and --pythonpath=DIR are taken too (before this "
    "command runs). The broker URL and namespace come from settings.LEVERET unless given "
    "here."
)


def strip_django_options(args: list[str]) -> list[str]:
    """`args` without ``--settings``/``--pythonpath`` (Django's own, handled already)."""
    kept: list[str] = []
    skip = False
    for arg in args:
        if skip:
            skip = False
            continue
        if arg in DJANGO_OPTIONS:
            skip = True
            continue
        if arg.startswith(tuple(f"{option}=" for option in DJANGO_OPTIONS)):
            continue
        kept.append(arg)
    return kept


def django_options(args: list[str]) -> list[str]:
    """The ``--settings``/``--pythonpath`` options in `args` (for a child process)."""
    kept: list[str] = []
    take_next = False
    for arg in args:
        if take_next:
            kept.append(arg)
            take_next = False
        elif arg in DJANGO_OPTIONS:
            kept.append(arg)
            take_next = True
        elif arg.startswith(tuple(f"{option}=" for option in DJANGO_OPTIONS)):
            kept.append(arg)
    return kept


def settings_environment(found: LeveretSettings | None = None) -> None:
    """Put the settings' broker URL, namespace and management API in the environment, where
    the click commands (and the children of ``--processes N``) read their defaults."""
    found = found or load()
    os.environ[config.BROKER_URL_ENV] = broker_url(found)
    os.environ[config.NAMESPACE_ENV] = found.namespace
    os.environ[CONSUMER_TIMEOUT_ENV] = f"{found.consumer_timeout_s:g}"
    if found.management_url is not None:
        os.environ[MANAGEMENT_URL_ENV] = found.management_url


def values_in_force(found: LeveretSettings | None = None) -> dict[str, str]:
    """What ``--help`` shows for the options the settings decide (passwords hidden)."""
    found = found or load()
    return {
        "broker_url": f"{redact(broker_url(found))} (settings.LEVERET)",
        "namespace": f"{found.namespace} (settings.LEVERET)",
        "consumer_timeout": f"{found.consumer_timeout_s:g} (settings.LEVERET)",
    }


def with_values_in_force(command: click.Command, values: dict[str, str]) -> click.Command:
    """A copy of `command` (and of a group's subcommands) whose options named in `values`
    say in their help which value is in force, with Django's options in the epilog."""
    command = copy.copy(command)
    command.epilog = DJANGO_EPILOG
    params = []
    for param in command.params:
        if isinstance(param, click.Option) and param.name in values:
            param = copy.copy(param)
            param.help = f"{param.help or ''} In force: {values[param.name]}.".strip()
        params.append(param)
    command.params = params
    if isinstance(command, click.Group):
        command.commands = {
            name: with_values_in_force(sub, values) for name, sub in command.commands.items()
        }
    return command


def run_click(command: click.Command, args: list[str], *, prog_name: str, obj: Any = None) -> None:
    """Run `command` on `args` with the project's settings in force; exits the process.

    A `LeveretError` that ends the command (the broker is unreachable…) is reported as
    ``leveret`` reports it: one line, ``Error: …``, exit status 1.
    """
    found = load()
    settings_environment(found)
    try:
        with_values_in_force(command, values_in_force(found)).main(
            strip_django_options(args), prog_name=prog_name, obj=obj
        )
    except LeveretError as exc:
        error = click.ClickException(str(exc))
        error.show()
        sys.exit(error.exit_code)
