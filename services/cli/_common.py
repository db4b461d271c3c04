"""Internal: what the `leveret` commands share: options, logging, error reporting."""

from __future__ import annotations

import os
import sys
from collections.abc import Callable
from typing import Any

import click
from click.decorators import FC

from leveret.schemas.errors import LeveretError
from leveret.services import config
from leveret.services.observability.logs import configure_logging

url_option = click.option(
    "--broker-url",
    envvar=config.BROKER_URL_ENV,
    default=None,
    help=f"Broker URL (amqp://, amqps:// or memory://); a cluster's nodes with commas "
    f"between them. Env: {config.BROKER_URL_ENV}; "
    f"default {config.DEFAULT_BROKER_URL.replace('guest:guest', 'guest:***')}.",
)
namespace_option = click.option(
    "--namespace",
    envvar=config.NAMESPACE_ENV,
    default=None,
    help=f"Prefix of every exchange and queue. Env: {config.NAMESPACE_ENV}; default leveret.",
)


def seconds_option(
    flag: str, name: str, *, default: float, at_least: float, help: str
) -> Callable[[FC], FC]:
    """An option in seconds (a float of at least `at_least`), its default shown."""
    return click.option(
        flag,
        name,
        type=click.FloatRange(min=at_least),
        default=default,
        show_default=True,
        help=help,
    )


def management_url_option(help: str) -> Callable[[FC], FC]:
    """--management-url: RabbitMQ's management API, `help` saying what the command asks it."""
    return click.option(
        "--management-url", envvar="LEVERET_MANAGEMENT_URL", default=None, help=help
    )


def no_management_option(help: str) -> Callable[[FC], FC]:
    """--no-management: AMQP only, `help` saying what the command does without the API."""
    return click.option("--no-management", is_flag=True, help=help)


log_options = [
    click.option(
        "--log-level",
        default="info",
        show_default=True,
        type=click.Choice(["debug", "info", "warning", "error"]),
    ),
    click.option(
        "--log-format",
        default="auto",
        show_default=True,
        type=click.Choice(["auto", "json", "console"]),
        help="auto: console on a terminal, JSON lines otherwise.",
    ),
]


def with_log_options(function: click.decorators.FC) -> click.decorators.FC:
    for option in reversed(log_options):
        function = option(function)
    return function


def setup_logging(level: str, fmt: str, *, buffered: bool = False) -> None:
    configure_logging(level, json=None if fmt == "auto" else fmt == "json", buffered=buffered)


def import_path() -> None:
    # Like `python -m`, find actor modules in the current directory.
    if os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())


class LeveretGroup(click.Group):
    """A command group that reports any `LeveretError` as a one-line error (exit 1).

    The one place where Leveret's errors become command-line errors; a command that needs
    another exit code raises its own `click.ClickException` first.
    """

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except LeveretError as exc:
            raise click.ClickException(str(exc)) from exc
