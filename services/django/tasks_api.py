"""Django's Tasks API, from where this Django has it: built in as ``django.tasks`` on
Django 6, from the ``django-tasks`` backport on Django 5.2 (``pip install 'leveret[tasks]'``).

Leveret's backend and its tests import the API from here, so one code runs on both. On
Django 6 the built-in API is used even when the backport is installed too: tasks must be
declared with ``django.tasks.task`` there (the backport's ``Task`` is another class).
"""

from __future__ import annotations

from traceback import format_exception

import django

BUILT_IN = django.VERSION >= (6, 0)
"""Whether this Django has the Tasks API built in (``django.tasks``)."""

if BUILT_IN:
    from django.tasks import TaskContext, TaskResult, TaskResultStatus, task
    from django.tasks.backends.base import BaseTaskBackend
    from django.tasks.base import Task, TaskError
    from django.tasks.exceptions import InvalidTask as InvalidTaskError
    from django.tasks.signals import task_enqueued, task_finished, task_started
    from django.utils.json import normalize_json
else:
    try:
        from django_tasks import TaskContext, TaskResult, TaskResultStatus, task
        from django_tasks.backends.base import BaseTaskBackend
        from django_tasks.base import Task, TaskError
        from django_tasks.exceptions import InvalidTaskError
        from django_tasks.signals import task_enqueued, task_finished, task_started
        from django_tasks.utils import normalize_json
    except ImportError as exc:  # pragma: no cover - depends on what is installed
        from django.core.exceptions import ImproperlyConfigured

        raise ImproperlyConfigured(
            f"Django {django.get_version()} has no Tasks API of its own: install the "
            "django-tasks backport (pip install 'leveret[tasks]') and add 'django_tasks' "
            "to INSTALLED_APPS, or use Django 6"
        ) from exc

__all__ = [
    "BUILT_IN",
    "BaseTaskBackend",
    "InvalidTaskError",
    "Task",
    "TaskContext",
    "TaskError",
    "TaskResult",
    "TaskResultStatus",
    "exception_path",
    "exception_traceback",
    "normalize_json",
    "task",
    "task_enqueued",
    "task_finished",
    "task_started",
]


def exception_path(exc: BaseException) -> str:
    """The dotted path of `exc`'s class, as a task result's error records it."""
    kind = type(exc)
    return f"{kind.__module__}.{kind.__qualname__}"


def exception_traceback(exc: BaseException) -> str:
    """`exc` with its traceback, as a task result's error records it."""
    return "".join(format_exception(exc))
