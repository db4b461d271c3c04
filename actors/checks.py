"""Checks of the values users pass: an actor's options, a retry policy, a schedule entry,
and the worker's and Django's settings, which use the same words for the same checks."""

from __future__ import annotations


def is_count(value: object, *, at_most: int | None = None) -> bool:
    """Whether `value` is a whole number of at least 1 (and at most `at_most`, if given).

    ``True`` is not a count, though Python counts it as 1: it is almost always a mistake.
    """
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        return False
    return at_most is None or value <= at_most
