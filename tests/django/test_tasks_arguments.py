"""``task.enqueue(...)`` refuses, at the call, arguments JSON cannot carry to the worker
unchanged; whatever it accepts reaches the task as it was passed (property test)."""

from __future__ import annotations

import math
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from leveret.django.tasks import MAX_ARGUMENT_DEPTH, MAX_INT_DIGITS, task_actor
from leveret.django.tasks_api import task
from leveret.django.testing import project_memory_broker
from leveret.schemas.errors import InvalidArgument

RECEIVED: list[tuple[list[Any], dict[str, Any]]] = []


@task()
def echo(*args: Any, **kwargs: Any) -> None:
    """A task of the tests: notes what it was called with."""
    RECEIVED.append((list(args), kwargs))


def _enqueue_and_run(*args: Any, **kwargs: Any) -> tuple[list[Any], dict[str, Any]]:
    RECEIVED.clear()
    with project_memory_broker() as broker:
        echo.enqueue(*args, **kwargs)
        broker.join()
    (received,) = RECEIVED
    return received


@pytest.mark.parametrize(
    ("args", "kwargs", "says"),
    [
        ([float("nan")], {}, "NaN"),
        ([], {"ratio": float("inf")}, "infinity"),
        ([[1, {"deep": -float("inf")}]], {}, "infinity"),
        ([10**5000], {}, "digits"),
        ([], {"n": -(10**4300)}, "digits"),
        ([{1: "a"}], {}, "not a string"),
        ([{"a": {None: 1}}], {}, "not a string"),
        (["\ud800"], {}, "surrogate"),
        ([{"x": "a\udfff"}], {}, "surrogate"),
    ],
)
def test_what_json_cannot_carry_is_refused_at_enqueue(
    args: list[Any], kwargs: dict[str, Any], says: str
) -> None:
    """nan/inf, integers beyond the worker's decoder, non-text keys and lone surrogates
    raise InvalidArgument at ``enqueue``, naming the argument and what to pass instead,
    and nothing is sent."""
    with project_memory_broker() as broker:
        with pytest.raises(InvalidArgument, match=says) as raised:
            echo.enqueue(*args, **kwargs)
        assert "test_tasks_arguments.echo: argument" in str(raised.value)
        assert broker.pending() == 0


def test_arguments_nested_past_the_decoders_depth_are_refused() -> None:
    """A list nested 500 deep is refused at enqueue (the worker's decoder stops at 200)."""
    deep: list[Any] = []
    for _ in range(500):
        deep = [deep]
    with project_memory_broker() as broker:
        with pytest.raises(InvalidArgument, match="deep"):
            echo.enqueue(deep)
        assert broker.pending() == 0


def test_the_deepest_nesting_accepted_arrives() -> None:
    """A list nested as deep as ``enqueue`` accepts is read by the worker."""
    deep: list[Any] = []
    for _ in range(MAX_ARGUMENT_DEPTH - 1):
        deep = [deep]
    assert _enqueue_and_run(deep) == ([deep], {})


def test_the_largest_integer_the_worker_reads_arrives() -> None:
    """Integers up to MAX_INT_DIGITS digits arrive unchanged."""
    largest = 10**MAX_INT_DIGITS - 1
    assert _enqueue_and_run(largest, n=-largest) == ([largest], {"n": -largest})


keys = st.one_of(st.text(max_size=5), st.integers(-3, 3), st.none(), st.booleans())
scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(),
    st.integers(min_value=10**4290, max_value=10**4310),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=8),
    st.text(alphabet=st.characters(categories=["Cs"]), max_size=2),  # lone surrogates
)
values = st.recursive(
    scalars,
    lambda inner: st.one_of(
        st.lists(inner, max_size=3),
        st.tuples(inner, inner),
        st.dictionaries(keys, inner, max_size=3),
    ),
    max_leaves=12,
)


def _same(sent: Any, got: Any) -> bool:
    """Equal as JSON carries it: tuples are lists (Django's own normalisation)."""
    if isinstance(sent, tuple | list):
        return (
            isinstance(got, list)
            and len(sent) == len(got)
            and all(_same(a, b) for a, b in zip(sent, got, strict=True))
        )
    if isinstance(sent, dict):
        return (
            isinstance(got, dict)
            and list(sent) == list(got)
            and all(_same(sent[k], got[k]) for k in sent)
        )
    if isinstance(sent, float) and math.isnan(sent):
        return False
    return type(sent) is type(got) and bool(sent == got)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    args=st.lists(values, max_size=3),
    kwargs=st.dictionaries(st.text(min_size=1, max_size=5), values, max_size=3),
)
def test_enqueue_refuses_or_delivers_unchanged(args: list[Any], kwargs: dict[str, Any]) -> None:
    """For any arguments: either ``enqueue`` raises InvalidArgument, or the task receives
    exactly what was passed (tuples as lists)."""
    try:
        got_args, got_kwargs = _enqueue_and_run(*args, **kwargs)
    except InvalidArgument:
        return
    assert _same(list(args), got_args)
    assert _same(kwargs, got_kwargs)


RUNS: list[int] = []


@task()
def returns_something_json_cannot_hold(n: int) -> object:
    """A task of the tests whose return value is not JSON."""
    RUNS.append(n)
    return object()


def test_a_return_value_that_is_not_json_does_not_run_the_task_again() -> None:
    """The task succeeded: a return value JSON cannot hold is dropped (logged), the task is
    not retried (it ran twice, then was dead-lettered, before)."""
    RUNS.clear()
    with project_memory_broker() as broker:
        returns_something_json_cannot_hold.enqueue(1)
        broker.join()
        assert RUNS == [1]
        assert broker.dead_letters(task_actor("default")) == []
