"""Django settings of the Django tests: the example shop on PostgreSQL and SQLite.

``default`` is PostgreSQL (127.0.0.1:5432, database ``test``); pytest-django creates and
drops a test database named after the checkout and the virtualenv
(``test_leveret_<hash of both paths>``), so two checkouts' test runs, or one checkout's
sessions on two Pythons or Django versions (nox), never share one. ``sqlite`` is a SQLite
file. The database-dependent tests run on both.
"""

import hashlib
import json
import os
import sys
import tempfile
from pathlib import Path

import django

ROOT = Path(__file__).resolve().parents[2]
_CHECKOUT = hashlib.sha256(f"{ROOT}\0{sys.prefix}".encode()).hexdigest()[:10]
sys.path.insert(0, str(ROOT / "examples" / "shop"))

SECRET_KEY = "tests-only"
USE_TZ = True
DEBUG = False
ALLOWED_HOSTS = ["*"]
ROOT_URLCONF = "tests.django.urls"
INSTALLED_APPS = [
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    *(["django_tasks"] if django.VERSION < (6, 0) else []),  # the Tasks API's backport
    "leveret.django",
    "shop",
]
TASKS = {
    "default": {
        "BACKEND": "leveret.django.tasks.LeveretBackend",
        "QUEUES": ["default", "emails"],
        "OPTIONS": {"TIME_LIMIT_S": 60, "ATTEMPTS": 2},
    }
}
MIDDLEWARE = [
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
]
TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "APP_DIRS": True,
        "OPTIONS": {
            "context_processors": [
                "django.template.context_processors.request",
                "django.contrib.auth.context_processors.auth",
                "django.contrib.messages.context_processors.messages",
            ]
        },
    }
]
DATABASES = {
    "default": {
        "ENGINE": "django.db.backends.postgresql",
        "NAME": os.environ.get("LEVERET_TEST_PG_NAME", "test"),
        "HOST": os.environ.get("LEVERET_TEST_PG_HOST", "127.0.0.1"),
        "PORT": os.environ.get("LEVERET_TEST_PG_PORT", "5432"),
        "USER": os.environ.get("LEVERET_TEST_PG_USER", "postgres"),
        "TEST": {"NAME": os.environ.get("LEVERET_TEST_PG_TEST_NAME", f"test_leveret_{_CHECKOUT}")},
    },
    "sqlite": {
        "ENGINE": "django.db.backends.sqlite3",
        "NAME": ":memory:",
        "TEST": {
            "NAME": os.path.join(tempfile.gettempdir(), f"leveret-test-{os.getpid()}.sqlite3")
        },
        "OPTIONS": {"timeout": 30},
    },
}
# Commands run in a subprocess (`python -m django … --settings tests.django.settings`) take
# their LEVERET from $LEVERET_TEST_SETTINGS (JSON); LEVERET_TEST_LOG_FILE adds a LOGGING
# that writes every record to that file, as a project's own logging would.
LEVERET = json.loads(
    os.environ.get(
        "LEVERET_TEST_SETTINGS",
        '{"BROKER_URL": "memory://", "NAMESPACE": "leveret-django-tests", "ACTORS": []}',
    )
)
if os.environ.get("LEVERET_TEST_LOG_FILE"):
    LOGGING = {
        "version": 1,
        "disable_existing_loggers": False,
        "formatters": {
            "structured": {"()": "leveret.services.observability.logs.StructuredFormatter"}
        },
        "handlers": {
            "project": {
                "class": "logging.FileHandler",
                "filename": os.environ["LEVERET_TEST_LOG_FILE"],
                "formatter": "structured",
            }
        },
        "root": {"handlers": ["project"], "level": "INFO"},
    }
