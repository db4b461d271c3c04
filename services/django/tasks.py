"""A backend for Django's Tasks API (``django.tasks`` in Django 6, the ``django-tasks``
package on Django 5.2): ``@task`` and ``.enqueue()``, run by Leveret's workers.

```python
# settings.py  (Django 6: pip install 'leveret[django]'; Django 5.2: 'leveret[tasks]',
#               with "django_tasks" in INSTALLED_APPS)
TASKS = {
    "default": {
        "BACKEND": "leveret.django.tasks.LeveretBackend",
        "QUEUES": ["default", "emails"],
        "OPTIONS": {"TIME_LIMIT_S": 300, "ATTEMPTS": 5},
    }
}
```

Each task queue is a Leveret actor with queue ``tasks.<queue name>`` (``tasks.default``),
declared by ``migrate`` and ``leveret_declare`` and run by ``manage.py leveret_worker``
with the project's actors. ``task.enqueue(...)`` sends one message (its id is the
result's id) through the project's broker, so it follows the transaction like any
publish: inside ``transaction.atomic()`` it goes out at commit, and not at all after a
rollback. ``run_after`` becomes a delay in RabbitMQ. A task that raises is retried with
backoff (``ATTEMPTS`` in all, Leveret's default 5), then dead-lettered, where
``manage.py leveret_dlq`` shows and replays it.

Limits: results are not stored (``supports_get_result`` is False: ``get_result`` and
``refresh`` raise, a return value is dropped), priorities are not supported, and the
arguments must be JSON (as the Tasks API requires anyway).
"""

from __future__ import annotations

import math
import os
import socket
import sys
import threading
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from typing import Annotated, Any

from django.utils.module_loading import import_string
from pydantic import StringConstraints

from leveret.actors.actor import Actor, handler
from leveret.actors.checks import is_count
from leveret.actors.context import Context
from leveret.actors.control import Reject
from leveret.actors.retry import RetryPolicy
from leveret.django.settings import TASKS_BACKEND as BACKEND_PATH
from leveret.django.tasks_api import (
    BaseTaskBackend,
    Task,
    TaskContext,
    TaskError,
    TaskResult,
    TaskResultStatus,
    exception_path,
    exception_traceback,
    normalize_json,
    task_enqueued,
    task_finished,
    task_started,
)
from leveret.schemas.codec import encode
from leveret.schemas.errors import ConfigurationError, InvalidArgument, LeveretError
from leveret.schemas.message import Message

QUEUE_PREFIX = "tasks."
DEFAULT_TIME_LIMIT_S = 600.0
MAX_ATTEMPTS = 1000
"""The most ``ATTEMPTS`` a task queue may have: a task result lists one worker per attempt."""
MAX_NAME_CHARS = 255
"""The longest task path, backend alias and queue name a task message may carry."""
MAX_INT_DIGITS = 4300
"""The most digits of an integer argument: the worker's JSON decoder (pydantic's) reads no
more (Python's own limit for converting text to int is the same)."""
MAX_ARGUMENT_DEPTH = 190
"""The deepest nesting of lists and dicts in an argument (a list is 1): the worker's decoder
stops at 200 levels for the whole message, which wraps the arguments in two of its own."""
_INT_BOUND = 10**MAX_INT_DIGITS


class TaskCall(Message, topic="leveret.tasks.call"):
    """One enqueued task: which function, with what, for which backend and queue.

    It arrives from the wire: its names are bounded (a longer one makes the message
    invalid, dead-lettered), and what it says about the task (``takes_context``) is
    checked against the task itself.
    """

    task: Annotated[str, StringConstraints(max_length=MAX_NAME_CHARS)]
    positional: list[Any]
    keywords: dict[str, Any]
    backend: Annotated[str, StringConstraints(max_length=MAX_NAME_CHARS)]
    queue_name: Annotated[str, StringConstraints(max_length=MAX_NAME_CHARS)]
    takes_context: bool = False


class LeveretBackend(BaseTaskBackend):
    """Runs Django tasks on Leveret's workers; see the module for settings and limits."""

    supports_defer = True
    supports_async_task = True  # run in the worker's thread with async_to_sync
    supports_get_result = False
    supports_priority = False

    def __init__(self, alias: str, params: dict[str, Any]) -> None:
        super().__init__(alias, params)
        for queue_name in self.queues:
            task_actor(queue_name, self.options)  # a bad queue name fails here, not later

    def enqueue(self, task: Task, args: Any, kwargs: Any) -> TaskResult:
        """Send the task to its queue's actor (at commit inside a transaction).

        Raises:
            InvalidTaskError: The task does not fit this backend (its queue, priority…).
            InvalidArgument: An argument JSON cannot carry to the worker unchanged (see
                `task_call`); nothing is sent.
            PublishError: Outside a transaction, the broker did not confirm.
        """
        self.validate_task(task)
        call = task_call(task, args, kwargs, backend=self.alias)
        actor = task_actor(task.queue_name, self.options)
        message_id = actor.send(call, eta=task.run_after)  # follows the transaction
        result = _result(task, call, message_id, TaskResultStatus.READY)
        task_enqueued.send(type(self), task_result=result)
        return result


def task_call(task: Task, args: Any, kwargs: Any, *, backend: str) -> TaskCall:
    """The message that runs `task` with `args` and `kwargs`, as the worker will read it.

    Arguments go through Django's JSON normalisation (tuples become lists, bytes text),
    then must reach the worker unchanged: no NaN or infinity (JSON has neither: they
    would arrive as None), integers of at most `MAX_INT_DIGITS` digits (the worker's
    decoder reads no more), text keys only (JSON makes ``1`` into ``"1"``), text that is
    UTF-8 (no lone surrogates), nesting the decoder reads (`MAX_ARGUMENT_DEPTH`). A final
    round trip through the worker's decoder refuses whatever else would change.

    Raises:
        InvalidArgument: Which argument, what is wrong, and what to pass instead.
    """
    name = task.module_path
    _check_depth([*args, *dict(kwargs).values()], f"task {name}: an argument")
    try:
        positional = normalize_json(list(args))
        keywords = normalize_json(dict(kwargs))
    except (TypeError, ValueError) as exc:
        raise InvalidArgument(
            f"task {name}: its arguments must be JSON (text, numbers, true/false, None, "
            f"lists and dicts with text keys): {exc}"
        ) from exc
    for index, value in enumerate(positional):
        _check_json(value, f"task {name}: argument {index}")
    for key, value in keywords.items():
        _check_json(value, f"task {name}: argument {key}=")
    call = TaskCall(
        task=name,
        positional=positional,
        keywords=keywords,
        backend=backend,
        queue_name=task.queue_name,
        takes_context=task.takes_context,
    )
    try:
        arrived = TaskCall.model_validate_json(encode(call))
    except (ValueError, LeveretError) as exc:  # a ValidationError is a ValueError
        raise InvalidArgument(
            f"task {name}: its arguments would not reach the worker: {exc}"
        ) from exc
    if arrived.positional != positional or arrived.keywords != keywords:
        raise InvalidArgument(
            f"task {name}: its arguments would reach the worker changed (JSON carries text, "
            "whole numbers, floats, true/false, None, lists and dicts with text keys); pass "
            "those only"
        )
    return call


def _check_depth(values: list[object], where: str) -> None:
    """Refuse lists and dicts nested deeper than the worker reads, before anything recurses
    into them (a list that contains itself included)."""
    stack: list[tuple[object, int]] = [(value, 1) for value in values]
    while stack:
        value, depth = stack.pop()
        if isinstance(value, str | bytes | bytearray):
            continue
        if isinstance(value, Mapping | Sequence):
            if depth > MAX_ARGUMENT_DEPTH:
                raise InvalidArgument(
                    f"{where} nests lists and dicts more than {MAX_ARGUMENT_DEPTH} deep "
                    "(or contains itself), deeper than the worker's JSON decoder reads: "
                    "flatten it, or store it and pass its key"
                )
            children = value.values() if isinstance(value, Mapping) else value
            stack.extend((child, depth + 1) for child in children)


def _check_json(value: object, where: str) -> None:
    """Raise InvalidArgument if `value` (normalised) would not reach the worker as it is."""
    if isinstance(value, float) and not math.isfinite(value):
        raise InvalidArgument(
            f"{where} is {value!r}: JSON cannot carry NaN or infinity (it would arrive as "
            "None); pass None, or a string such as 'nan' or 'inf' and convert it in the task"
        )
    if isinstance(value, int) and not isinstance(value, bool) and abs(value) >= _INT_BOUND:
        raise InvalidArgument(
            f"{where} is an integer of more than {MAX_INT_DIGITS} digits, more than the "
            "worker's JSON decoder reads: pass it as a string (str(n), int(s) in the task)"
        )
    if isinstance(value, str):
        _check_text(value, where)
    elif isinstance(value, dict):
        for key, item in value.items():
            if not isinstance(key, str):
                raise InvalidArgument(
                    f"{where} has a key {key!r:.40} that is not a string: JSON would turn it "
                    "into text and the task would get another dict; use string keys"
                )
            _check_text(key, f"{where} key {key[:40]!r}")
            _check_json(item, f"{where}[{key[:40]!r}]")
    elif isinstance(value, list):
        for index, item in enumerate(value):
            _check_json(item, f"{where}[{index}]")


def _check_text(text: str, where: str) -> None:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise InvalidArgument(
            f"{where} holds a lone surrogate ({exc.object[exc.start : exc.end]!r}), which "
            "is not UTF-8 and JSON cannot carry: decode the text it came from correctly "
            "(e.g. errors='replace')"
        ) from None


_actors: dict[str, type[Actor]] = {}
_actors_lock = threading.Lock()


def task_actor(queue_name: str, options: dict[str, Any] | None = None) -> type[Actor]:
    """The actor that runs the tasks of `queue_name` (one per queue name in the process).

    Args:
        queue_name: The task queue's name.
        options: The backend's ``OPTIONS``; if None, those of the `LeveretBackend` of
            ``settings.TASKS`` that lists the queue (the first built wins: whoever asks
            first, the actor has the settings' retry policy and time limit).

    Raises:
        ConfigurationError: A queue name Leveret cannot use, or bad ``OPTIONS``.
    """
    with _actors_lock:
        actor = _actors.get(queue_name)
        if actor is None:
            if options is None:
                options = _configured_options(queue_name)
            actor = _actors[queue_name] = _new_task_actor(queue_name, options)
        return actor


def _configured_options(queue_name: str) -> dict[str, Any]:
    from django.conf import settings

    for params in (getattr(settings, "TASKS", None) or {}).values():
        if params.get("BACKEND") == BACKEND_PATH and queue_name in params.get(
            "QUEUES", ["default"]
        ):
            return dict(params.get("OPTIONS", {}))
    return {}


def _new_task_actor(queue_name: str, options: dict[str, Any]) -> type[Actor]:
    unknown = sorted(set(options) - {"TIME_LIMIT_S", "ATTEMPTS"})
    if unknown:
        raise ConfigurationError(
            f"unknown OPTIONS {unknown} of {BACKEND_PATH}; known: ATTEMPTS, TIME_LIMIT_S"
        )
    attempts = options.get("ATTEMPTS", 5)
    if not is_count(attempts, at_most=MAX_ATTEMPTS):
        raise ConfigurationError(
            f"OPTIONS['ATTEMPTS'] of {BACKEND_PATH} must be a whole number from 1 to "
            f"{MAX_ATTEMPTS} (attempts in all, the first included), not {attempts!r}"
        )
    try:
        return type(
            f"Tasks_{queue_name}",
            (TaskRunner,),
            {
                "__module__": __name__,
                "time_limit_s": float(options.get("TIME_LIMIT_S", DEFAULT_TIME_LIMIT_S)),
                "retry": RetryPolicy(attempts=attempts),
            },
            queue=f"{QUEUE_PREFIX}{queue_name}",
        )
    except (TypeError, ValueError) as exc:
        raise ConfigurationError(f"task queue {queue_name!r}: {exc}") from exc


def configured_task_actors() -> list[type[Actor]]:
    """The task actors of every `LeveretBackend` in ``settings.TASKS`` (for the worker,
    ``migrate`` and ``leveret_declare``)."""
    from django.conf import settings

    found: list[type[Actor]] = []
    for params in (getattr(settings, "TASKS", None) or {}).values():
        if params.get("BACKEND") != BACKEND_PATH:
            continue
        options = params.get("OPTIONS", {})
        for queue_name in params.get("QUEUES", ["default"]):
            actor = task_actor(queue_name, options)
            if actor not in found:
                found.append(actor)
    return found


class TaskRunner(Actor, abstract=True):
    """Runs one enqueued task: imports it, calls it, reports it with Django's signals."""

    @handler
    def run(self, call: TaskCall, ctx: Context) -> None:
        """Call the task; an exception fails the message (retried, then dead-lettered).

        The message comes from the wire: only a `Task` of the project's own code runs (a
        module already imported, or one of an installed app), never any other callable,
        and it is called as the task says (with a context or not), whatever the message
        says. The attempt number comes from a header any client can set: the result counts
        at most the queue's ``ATTEMPTS`` (a genuine message never goes beyond).
        """
        task = _task_named(call.task)
        result = _result(task, call, ctx.message_id, TaskResultStatus.RUNNING)
        attempts = min(ctx.attempt, type(self).retry.attempts)
        result.worker_ids.extend([_WORKER_ID] * attempts)  # TaskContext.attempt
        task_started.send(LeveretBackend, task_result=result)
        try:
            if task.takes_context:
                value = task.call(
                    TaskContext(task_result=result), *call.positional, **call.keywords
                )
            else:
                value = task.call(*call.positional, **call.keywords)
        except Exception as exc:
            object.__setattr__(result, "status", TaskResultStatus.FAILED)
            object.__setattr__(result, "finished_at", datetime.now(UTC))
            result.errors.append(
                TaskError(
                    exception_class_path=exception_path(exc),
                    traceback=exception_traceback(exc),
                )
            )
            task_finished.send(LeveretBackend, task_result=result)
            raise
        object.__setattr__(result, "status", TaskResultStatus.SUCCESSFUL)
        object.__setattr__(result, "finished_at", datetime.now(UTC))
        try:
            returned = normalize_json(value)
        except (TypeError, ValueError) as exc:
            # The task has run: failing now would run it again. Results are not stored;
            # the signal's receivers get None.
            ctx.log.warning("task_return_value_dropped", task=call.task, error=str(exc))
            returned = None
        object.__setattr__(result, "_return_value", returned)
        task_finished.send(LeveretBackend, task_result=result)
        ctx.log.info("task_done", task=call.task)


_WORKER_ID = f"{socket.gethostname()}:{os.getpid()}"


def _task_named(path: str) -> Task:
    """The task at `path` ("module.function"), if it is one of the project's.

    Raises:
        Reject: Not a project module, not importable, or not a task.
    """
    from django.apps import apps

    module, _, _name = path.rpartition(".")
    own = any(
        module == config.name or module.startswith(f"{config.name}.")
        for config in apps.get_app_configs()
    )
    if not module or not (module in sys.modules or own):
        raise Reject(f"{path!r} is not in an installed app's module: not run")
    try:
        task = import_string(path)
    except ImportError as exc:
        raise Reject(f"task {path!r} cannot be imported: {exc}") from exc
    if not isinstance(task, Task):
        raise Reject(f"{path!r} is not a task (decorate it with @task)")
    return task


def _result(task: Task, call: TaskCall, result_id: str, status: Any) -> TaskResult:
    now = datetime.now(UTC)
    running = status == TaskResultStatus.RUNNING
    return TaskResult(
        task=task,
        id=result_id,
        status=status,
        enqueued_at=now if not running else None,
        started_at=now if running else None,
        finished_at=None,
        last_attempted_at=now if running else None,
        args=call.positional,
        kwargs=call.keywords,
        backend=call.backend,
        errors=[],
        worker_ids=[],
    )
