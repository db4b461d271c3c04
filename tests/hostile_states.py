"""What a hostile client can append to the scheduler's state stream (issue 24.1): named
bodies for parametrised tests, and hypothesis strategies for property tests."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta, timezone

from hypothesis import strategies as st

from leveret.services.scheduling import MAX_STATE_ENTRIES

POISON_TICK = "9999-12-31T23:59:59+00:00"
"""The tick of the issue: it made every leader's arithmetic overflow."""


def state(ticks: object, version: object = 1) -> bytes:
    """A state body as the scheduler writes one, with any content."""
    return json.dumps({"v": version, "ticks": ticks}).encode()


def hostile_bodies(entry: str, now: datetime) -> dict[str, bytes]:
    """Named hostile states aimed at `entry` (a schedule a leader runs), `now` being the
    leader's time."""
    return {
        "poison": state({entry: POISON_TICK}),
        "past-9999-in-utc": state({entry: "9999-12-31T23:59:59-12:00"}),
        "before-year-1-in-utc": state({entry: "0001-01-01T00:00:00+14:00"}),
        "a-year-ahead": state({entry: (now + timedelta(days=365)).isoformat()}),
        "year-1": state({entry: "0001-01-01T00:00:00+00:00"}),
        "naive": state({entry: now.replace(tzinfo=None).isoformat()}),
        "not-a-string": state({entry: [1e308, {"a": None}]}),
        "ticks-a-list": state([entry, now.isoformat()]),
        "version-2": state({entry: now.isoformat()}, version=2),
        "deep-nesting": b"[" * 200_000,
        "not-json": b"\xff\xfe\x00{",
        "huge-number": b'{"v": 1, "ticks": {"' + entry.encode() + b'": 1' + b"0" * 5000 + b"}}",
        "too-many-entries": state(
            {f"n{index}": now.isoformat() for index in range(MAX_STATE_ENTRIES * 3)}
        ),
        "bad-names": state(
            {"\x1b]0;owned\x07": now.isoformat(), "": now.isoformat(), "x" * 5000: "x"}
        ),
        "five-megabytes": state(
            {entry: (now + timedelta(days=365)).isoformat(), "p": "x" * 5_000_000}
        ),
    }


offsets = st.builds(
    lambda minutes: timezone(timedelta(minutes=minutes)),
    st.integers(min_value=-(24 * 60 - 1), max_value=24 * 60 - 1),
)
any_aware = st.datetimes(timezones=offsets | st.just(UTC))
"""Any aware time datetime holds: the year 1 to 9999, any offset."""

tick_texts = st.one_of(
    any_aware.map(lambda moment: moment.isoformat()),
    st.datetimes().map(lambda moment: moment.isoformat()),  # naive
    st.just(POISON_TICK),
    st.just("9999-12-31T23:59:59-12:00"),  # past the year 9999 in UTC
    st.just("0001-01-01T00:00:00+14:00"),  # before the year 1 in UTC
    st.text(max_size=40),
    st.text(alphabet="0123456789-:T+.Z W", max_size=40),
)
"""Anything a tick of a state may be as text."""

json_values = st.recursive(
    st.one_of(
        st.none(), st.booleans(), st.integers(), st.floats(allow_nan=False), st.text(max_size=20)
    ),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=10), inner),
    max_leaves=8,
)


def names(entry: str) -> st.SearchStrategy[str]:
    """Entry names: the legitimate `entry`, arbitrary text, and other valid names."""
    return st.one_of(
        st.just(entry), st.text(max_size=30), st.text(alphabet="abc.-_", min_size=1, max_size=10)
    )


def state_bodies(entry: str) -> st.SearchStrategy[bytes]:
    """Any body a client may append to the stream, many of them aimed at `entry`."""
    ticks = st.dictionaries(names(entry), tick_texts | json_values, max_size=6)
    return st.one_of(
        st.builds(state, ticks, st.one_of(st.just(1), json_values)),
        st.builds(state, ticks),
        json_values.map(lambda value: json.dumps(value).encode()),
        st.binary(max_size=100),
        st.integers(min_value=1000, max_value=200_000).map(lambda depth: b"[" * depth),
        st.just(b'{"v": 1, "ticks": {"x": 1' + b"0" * 5000 + b"}}"),
    )
