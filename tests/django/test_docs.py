"""What docs/django.md says holds: its settings table lists every setting, its ``LOGGING``
example keeps pika's INFO lines out, and check hints point to something a user of the
wheel can open."""

from __future__ import annotations

import json
import re
import textwrap

from django.core.checks import run_checks
from pytest_django.fixtures import Settings

import leveret.django.settings as settings_module
from leveret.django.settings import DEFAULTS
from tests.support import RABBIT_URL, ROOT, run_python

DOC = (ROOT / "docs" / "django.md").read_text()


def test_the_settings_table_lists_every_setting() -> None:
    """Every key of ``LEVERET`` has a row in the Settings table, and a line in the module's
    docstring (what ``python -m pydoc leveret.django.settings`` shows from the wheel)."""
    rows = set(re.findall(r"^\| `([A-Z_]+)` \|", DOC, flags=re.MULTILINE))
    assert set(DEFAULTS) - rows == set()
    documented = set(re.findall(r'^\s+"([A-Z_]+)":', settings_module.__doc__ or "", re.M))
    assert set(DEFAULTS) - documented == set()


def _logging_example() -> str:
    blocks = re.findall(r"```python\n(.*?)```", DOC, flags=re.DOTALL)
    (example,) = [block for block in blocks if block.startswith("LOGGING = {")]
    return example


def test_the_logging_example_keeps_pika_at_warning() -> None:
    """The documented ``LOGGING``, applied in a fresh process that connects to RabbitMQ and
    publishes: pika's INFO lines (connecting, socket connected…) stay out, Leveret's INFO
    and pika's warnings come through."""
    program = textwrap.dedent(
        """
        import logging, logging.config, pika
        from leveret.services import RabbitBroker
        {example}
        logging.config.dictConfig(LOGGING)
        connection = pika.BlockingConnection(pika.URLParameters({url!r}))
        connection.close()
        logging.getLogger("leveret.relay").info("leveret_info_line")
        logging.getLogger("pika.adapters").warning("pika_warning_line")
        """
    ).format(example=_logging_example(), url=RABBIT_URL)
    done = run_python("-c", program)
    assert done.returncode == 0, done.stderr
    lines = [json.loads(line) for line in done.stderr.splitlines() if line.startswith("{")]
    pika_info = [
        line for line in lines if line["logger"].startswith("pika") and line["level"] == "info"
    ]
    assert pika_info == []
    events = [line["event"] for line in lines]
    assert "leveret_info_line" in events
    assert "pika_warning_line" in events


def test_check_hints_name_what_the_wheel_ships(settings: Settings) -> None:
    """A settings error's hint says where to read the keys offline (the settings module's
    documentation, in the wheel), not a file of the repository alone."""
    settings.LEVERET = {"NAMESPACE": "docs", "NOPE": 1}
    (error,) = [m for m in run_checks(tags=["leveret"]) if m.id == "leveret.E001"]
    hint = error.hint or ""
    assert "python -m pydoc leveret.django.settings" in hint
    assert "in the Leveret repository" in hint
