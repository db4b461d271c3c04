"""Django settings of the Django tests: the example shop on PostgreSQL and SQLite.

``default`` is PostgreSQL (127.0.0.1:5432, database ``test``; pytest-django creates and
drops ``test_test``); ``sqlite`` is a SQLite file. The database-dependent tests run on both.
"""

import os
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "examples" / "shop"))

SECRET_KEY = "tests-only"
USE_TZ = True
DEBUG = False
ALLOWED_HOSTS = ["*"]
ROOT_URLCONF = "shop_project.urls"
INSTALLED_APPS = ["leveret.django", "shop"]
MIDDLEWARE: list[str] = []
DATABASES = {
    "default": {
        "ENGINE": "django.db.backends.postgresql",
        "NAME": os.environ.get("LEVERET_TEST_PG_NAME", "test"),
        "HOST": os.environ.get("LEVERET_TEST_PG_HOST", "127.0.0.1"),
        "PORT": os.environ.get("LEVERET_TEST_PG_PORT", "5432"),
        "USER": os.environ.get("LEVERET_TEST_PG_USER", "postgres"),
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
LEVERET = {"BROKER_URL": "memory://", "NAMESPACE": "leveret-django-tests", "ACTORS": []}
