"""The test matrix: Pythons x dependency sets x Django, each session in a venv of its own.

``nox -l`` lists the sessions; ``nox -s deps-min`` runs one (``scripts/test-matrix`` runs
CI's choice of them side by side). Every session installs Leveret from pyproject.toml with
the extras it covers, the versions resolved by uv (``uv pip compile``, then ``uv pip sync``:
a reused venv ends up exactly as a new one would):

- ``tests-3.11`` / ``tests-3.12`` / ``tests-3.13``: the broker-contract subset (CONTRACT)
  on that Python, with the newest versions pyproject.toml allows.
- ``deps-min``: CONTRACT and the extras' tests (EXTRAS) on the oldest Python, with the
  lowest version pyproject.toml allows of every dependency it names (uv's
  ``--resolution lowest-direct``; what those pull in is the newest). A floor too low shows
  up here.
- ``deps-max``: the same tests on the newest Python with the newest versions allowed. A
  ceiling that breaks (or a missing one) shows up here.
- ``django-<python>-<django>``: tests/django on one Django series (DJANGO below), its newest
  release; ``django-min``: tests/django on the lowest versions allowed.

The whole suite (scripts/test) runs on the development venv, .venv, as before.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path

import nox

ROOT = Path(__file__).resolve().parent
PYTHONS = ["3.11", "3.12", "3.13"]
OLDEST, NEWEST = PYTHONS[0], PYTHONS[-1]

# The broker contract: unit tests of schemas and actors, and the tests/services tests that
# talk to the real RabbitMQ without faults (no broker restart, no cut connection). Chosen
# to run in about 1.5 minutes on one Python (measured: README, "What CI covers").
CONTRACT = [
    "tests/schemas",
    "tests/actors",
    "tests/services/test_contract.py",
    "tests/services/test_rabbitmq.py",
    "tests/services/test_naming_topology.py",
    "tests/services/test_delays.py",
    "tests/services/test_retries.py",
    "tests/services/test_scheduler_contract.py",
    "tests/services/test_broker_urls.py",
    "tests/services/test_testing_helpers.py",
    "tests/services/test_logging.py",
    "tests/services/test_redaction.py",
    "tests/services/test_cli.py",
]
# What the dashboard and tracing extras do, over HTTP and on the real RabbitMQ (the browser
# tests need Chromium and Playwright: the whole suite runs them).
EXTRAS = [
    "tests/observability/test_tracing.py",
    "tests/dashboard/test_pages.py",
    "tests/dashboard/test_security.py",
]
CONTRACT_EXTRAS = ["test"]
EXTRAS_EXTRAS = ["test", "dashboard", "tracing"]

# Django releases and the Pythons each is tested on (Django 6 needs Python 3.12+).
DJANGO = {"5.2": ["3.11"], "6.0": ["3.12"], "6.1": ["3.13"]}
DJANGO_EXTRAS = ["test-django", "django", "reload", "dashboard", "tracing"]
"""On Django 5.2 the `tasks` extra too (the Tasks API's backport); Django 6 has its own."""

# Only the non-Django sessions have no pytest-django: the ini keys it reads
# (DJANGO_SETTINGS_MODULE, django_find_project) would be errors under filterwarnings=error.
NO_DJANGO = ["-W", "ignore:Unknown config option"]
PYTEST = ["-q", "-p", "no:cacheprovider", "-m", "not fault and not cluster"]

nox.options.default_venv_backend = "uv"
# A missing Python is an error, never a download (this machine reaches no Python builds).
nox.options.download_python = "never"
nox.options.error_on_missing_interpreters = True
nox.needs_version = ">=2024.10"


def _pythons_from_pyenv() -> None:
    """Put pyenv's interpreters of PYTHONS on PATH where ``python3.X`` finds none: pyenv's
    shims answer only for the versions selected, and nox and uv look on PATH."""
    root = os.environ.get("PYENV_ROOT", str(Path.home() / ".pyenv"))
    found: list[str] = []
    for version in PYTHONS:
        on_path = shutil.which(f"python{version}")
        if on_path and subprocess.run([on_path, "-V"], capture_output=True).returncode == 0:
            continue
        builds = sorted(
            Path(root, "versions").glob(f"{version}.*"),
            key=lambda p: [int(x) if x.isdigit() else 0 for x in p.name.split(".")],
        )
        if builds:
            found.append(str(builds[-1] / "bin"))
    if found:
        os.environ["PATH"] = os.pathsep.join([*found, os.environ.get("PATH", "")])


def _uv_reads_pips_indexes() -> None:
    """Give uv the package indexes pip is configured with (pip.conf, PIP_* variables), unless
    UV_* variables say otherwise; like pip, uv then takes the best version from any index."""
    try:
        out = subprocess.run(
            [sys.executable, "-m", "pip", "config", "list"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout
    except (OSError, subprocess.CalledProcessError):
        out = ""
    settings: dict[str, str] = {}
    for line in out.splitlines():
        key, _, value = line.partition("=")
        settings[key.split(".", 1)[-1]] = value.strip().strip("'\"")
    for pip_key, uv_env in [
        ("index-url", "UV_INDEX_URL"),
        ("extra-index-url", "UV_EXTRA_INDEX_URL"),
        ("find-links", "UV_FIND_LINKS"),
    ]:
        configured = os.environ.get("PIP_" + pip_key.replace("-", "_").upper())
        configured = configured or settings.get(pip_key)
        if configured and uv_env not in os.environ:
            # uv reads a list separated by spaces (pip's files use newlines too).
            os.environ[uv_env] = " ".join(configured.split())
    os.environ.setdefault("UV_INDEX_STRATEGY", "unsafe-best-match")


_pythons_from_pyenv()
_uv_reads_pips_indexes()
UV = shutil.which("uv", path=str(Path(sys.executable).parent)) or "uv"


def _install(
    session: nox.Session,
    extras: list[str],
    *,
    lowest: bool = False,
    constraints: Sequence[str] = (),
) -> None:
    """Install Leveret (built from this checkout, not editable) and `extras`, the versions
    resolved from pyproject.toml: the newest allowed, or with `lowest` the lowest allowed of
    each dependency pyproject.toml names. `constraints` narrow it (``django~=5.2.0``)."""
    tmp = Path(session.create_tmp())
    requirements = tmp / "requirements.txt"
    python = str(Path(session.bin) / "python")
    compile_args = [f"--extra={extra}" for extra in extras]
    if constraints:
        constraint_file = tmp / "constraints.txt"
        constraint_file.write_text("\n".join(constraints) + "\n")
        compile_args += ["--constraint", str(constraint_file)]
    if lowest:
        compile_args.append("--resolution=lowest-direct")
    session.run_install(
        UV, "pip", "compile", "pyproject.toml", *compile_args,
        "--python", python, "--quiet", "--no-header", "--no-annotate",
        "--output-file", str(requirements),
        external=True,
    )  # fmt: skip
    session.run_install(UV, "pip", "sync", "--python", python, str(requirements), external=True)
    session.run_install(
        UV, "pip", "install", "--python", python, "--no-deps", "--reinstall-package", "leveret",
        ".", external=True,
    )  # fmt: skip
    # What the session tests, one line, in its log.
    pins = [line for line in requirements.read_text().splitlines() if "==" in line]
    session.log("installed: " + ", ".join(pins))


def _pytest(session: nox.Session, paths: list[str], *extra: str) -> None:
    """pytest on `paths` (or the paths given after ``--``) from the checkout's root."""
    session.run("pytest", *PYTEST, *extra, *(session.posargs or paths))


@nox.session(name="tests", python=PYTHONS)
def tests(session: nox.Session) -> None:
    """The broker contract on each Python, the newest dependencies allowed."""
    _install(session, CONTRACT_EXTRAS)
    _pytest(session, CONTRACT, *NO_DJANGO)


@nox.session(name="deps-min", python=OLDEST)
def deps_min(session: nox.Session) -> None:
    """The broker contract and the extras' tests on the lowest versions allowed."""
    _install(session, EXTRAS_EXTRAS, lowest=True)
    _pytest(session, CONTRACT + EXTRAS, *NO_DJANGO)


@nox.session(name="deps-max", python=NEWEST)
def deps_max(session: nox.Session) -> None:
    """The broker contract and the extras' tests on the newest versions allowed."""
    _install(session, EXTRAS_EXTRAS)
    _pytest(session, CONTRACT + EXTRAS, *NO_DJANGO)


# Django sessions: django-<python>-<django>, one per pair in DJANGO. Each has a PostgreSQL
# test database of its own (named after the checkout and the venv: tests/django/settings.py).
def _django_session(python: str, django: str) -> None:
    def session_function(session: nox.Session) -> None:
        backport = ["tasks"] if django.startswith("5.") else []
        _install(session, DJANGO_EXTRAS + backport, constraints=[f"django~={django}.0"])
        _pytest(session, ["tests/django"])

    session_function.__doc__ = f"tests/django on Django {django} (its newest release)."
    nox.session(name=f"django-{python}-{django}", python=python)(session_function)


for _django, _pythons in DJANGO.items():
    for _python in _pythons:
        _django_session(_python, _django)


@nox.session(name="django-min", python=OLDEST)
def django_min(session: nox.Session) -> None:
    """tests/django on the lowest versions allowed (Django, django-tasks, pytest-django…)."""
    _install(session, [*DJANGO_EXTRAS, "tasks"], lowest=True)
    _pytest(session, ["tests/django"])
