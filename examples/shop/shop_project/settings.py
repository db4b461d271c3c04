"""Settings of the example shop. The environment picks the database and the broker:

- ``SHOP_DATABASE=postgres`` (with ``SHOP_PG_NAME``, ``SHOP_PG_HOST``, ``SHOP_PG_USER``) or
  SQLite in ``db.sqlite3`` (default);
- ``LEVERET_BROKER_URL``: ``memory://`` (default here) or ``amqp://…``.
"""

import os
from pathlib import Path

import django

BASE_DIR = Path(__file__).resolve().parent.parent
SECRET_KEY = "example-only-not-secret"
DEBUG = True
ALLOWED_HOSTS = ["*"]
USE_TZ = True
ROOT_URLCONF = "shop_project.urls"
# Django 6 has the Tasks API built in; Django 5.2 has it from the django-tasks backport.
TASKS_APP = ["django_tasks"] if django.VERSION < (6, 0) else []
INSTALLED_APPS = [*TASKS_APP, "leveret.django", "shop"]
MIDDLEWARE: list[str] = []

if os.environ.get("SHOP_DATABASE") == "postgres":
    DATABASES = {
        "default": {
            "ENGINE": "django.db.backends.postgresql",
            "NAME": os.environ.get("SHOP_PG_NAME", "shop"),
            "HOST": os.environ.get("SHOP_PG_HOST", "127.0.0.1"),
            "USER": os.environ.get("SHOP_PG_USER", "postgres"),
        }
    }
else:
    DATABASES = {
        "default": {
            "ENGINE": "django.db.backends.sqlite3",
            "NAME": os.environ.get("SHOP_SQLITE_PATH", str(BASE_DIR / "db.sqlite3")),
        }
    }

LEVERET = {
    "BROKER_URL": os.environ.get("LEVERET_BROKER_URL", "memory://"),
    "NAMESPACE": os.environ.get("LEVERET_NAMESPACE", "shop"),
    "ACTORS": ["shop.actors"],
    "OUTBOX": os.environ.get("SHOP_OUTBOX") == "1",
}

# Django's Tasks API (shop/tasks.py) on Leveret's workers: pip install 'leveret[tasks]'.
TASKS = {
    "default": {
        "BACKEND": "leveret.django.tasks.LeveretBackend",
        "QUEUES": ["default"],
        "OPTIONS": {"TIME_LIMIT_S": 60, "ATTEMPTS": 3},
    }
}
