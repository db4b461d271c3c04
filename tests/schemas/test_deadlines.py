"""The ``x-leveret-deadline`` header, read from whatever any client sent."""

from __future__ import annotations

import time

from hypothesis import given
from hypothesis import strategies as st

from leveret.schemas.envelope import deadline_header, deadline_of

ANY_HEADER_VALUE = st.recursive(
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=True)
    | st.text(max_size=40)
    | st.binary(max_size=40),
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner, max_size=3)
    ),
    max_leaves=8,
)


@given(ANY_HEADER_VALUE)
def test_any_value_reads_as_no_deadline_or_a_sane_one(value: object) -> None:
    deadline = deadline_of(value)
    assert deadline is None or 10**9 <= deadline < 10**11


def test_a_written_deadline_reads_back_to_the_millisecond() -> None:
    now = time.time()
    assert abs(deadline_of(deadline_header(now + 2.5)) - (now + 2.5)) < 0.001  # type: ignore[operator]
    assert deadline_of(str(deadline_header(now))) is not None
    assert deadline_of(str(deadline_header(now)).encode()) is not None


def test_what_is_not_milliseconds_since_the_epoch_is_no_deadline() -> None:
    now_ms = deadline_header(time.time())
    assert deadline_of(True) is None
    assert deadline_of(-now_ms) is None
    assert deadline_of(now_ms / 1000) is None  # a float: seconds, say
    assert deadline_of(int(time.time())) is None  # whole seconds: 1970 in milliseconds
    assert deadline_of(10**30) is None
    assert deadline_of("12ab") is None
