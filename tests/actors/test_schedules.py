"""Schedule entries: checked where they are written; time right across daylight saving,
leap days and month ends; intervals that never drift; next runs equal to cronsim's."""

from __future__ import annotations

import itertools
from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

import pytest
from cronsim import CronSim, CronSimError
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from leveret import Message, Tick, actor, cron, every, periodic, schedule
from leveret.actors.schedules import schedules_in
from leveret.schemas.errors import DefinitionError
from tests.beats import Beat, Beats


class Other(Message, topic="tests.schedules.other"):
    """A message `Beats` does not handle."""

    n: int


nightly = schedule(
    "tests-nightly",
    cron("30 2 * * *", tz="Europe/Berlin"),
    message=lambda at: Beat(n=int(at.timestamp())),
    to=Beats,
    catch_up="latest",
)


@periodic(every(minutes=5))
@actor(queue="tests.schedules.ticking", time_limit_s=10)
def ticking(tick: Tick) -> None: ...


def _utc(text: str) -> datetime:
    return datetime.fromisoformat(text).replace(tzinfo=UTC)


def test_schedules_are_found_in_their_module() -> None:
    found = {entry.name: entry for entry in schedules_in([__name__])}
    assert set(found) == {"tests-nightly", "tests.schedules.ticking"}
    moment = _utc("2026-01-01T00:05:00")
    tick_message = found["tests.schedules.ticking"].message_for(moment)
    assert tick_message == Tick(schedule="tests.schedules.ticking", scheduled_at=moment)


@pytest.mark.parametrize(
    ("make", "text"),
    [
        (lambda: cron("61 * * * *"), "bad cron expression '61 \\* \\* \\* \\*': Bad minute"),
        (lambda: cron("* * * *"), "five fields"),
        (lambda: cron("0 0 31 2 *"), "bad cron expression"),
        (lambda: cron("0 0 * * *", tz="Mars/Olympus"), "unknown time zone 'Mars/Olympus'"),
        (lambda: every(seconds=0), "at least 1"),
        (lambda: every(seconds=1.5), "whole seconds"),
        (lambda: every(minutes=1, anchor=datetime(2026, 1, 1)), "timezone-aware"),
        (lambda: every(days=3_000_000), "past the year 9999"),
        (
            lambda: every(
                minutes=1, anchor=datetime(9999, 12, 31, 23, tzinfo=ZoneInfo("Etc/GMT+5"))
            ),
            "past the year 9999",
        ),
        (
            lambda: schedule("bad name!", every(seconds=1), message=Other(n=1)),
            "letters, digits",
        ),
        (
            lambda: schedule("wrong-target", every(seconds=1), message=Other(n=1), to=Beats),
            "schedule 'wrong-target'.*no handler",
        ),
        (
            lambda: schedule("no-message", every(seconds=1), message="hello"),  # type: ignore[arg-type]
            "schedule 'no-message': message= must be a Message",
        ),
        (
            lambda: schedule("bad-policy", every(seconds=1), message=Other(n=1), catch_up="some"),  # type: ignore[arg-type]
            "catch_up must be skip, latest or all",
        ),
    ],
)
def test_a_wrong_entry_fails_where_it_is_written(make: object, text: str) -> None:
    with pytest.raises(DefinitionError, match=text):
        make()  # type: ignore[operator]


def test_a_duplicate_name_in_another_module_is_an_error() -> None:
    namespace: dict[str, object] = {"__name__": "tests.elsewhere"}
    code = (
        "from leveret import schedule, every\n"
        "from tests.actors.test_schedules import Other\n"
        "again = schedule('tests-nightly', every(seconds=1), message=Other(n=1))\n"
    )
    with pytest.raises(DefinitionError, match="'tests-nightly' is defined twice"):
        exec(code, namespace)  # a module of its own, written here


def test_periodic_needs_a_handler_taking_tick() -> None:
    with pytest.raises(DefinitionError, match="has no handler taking Tick"):

        @periodic(every(seconds=1))
        @actor(queue="tests.schedules.no_tick")
        def no_tick(msg: Other) -> None: ...


def test_message_ids_are_deterministic_per_entry_and_time() -> None:
    tick = _utc("2026-05-01T00:30:00")
    assert nightly.message_id(tick) == nightly.message_id(tick.astimezone(ZoneInfo("Asia/Tokyo")))
    assert nightly.message_id(tick) != nightly.message_id(tick + timedelta(days=1))
    assert len(nightly.message_id(tick)) == 32


def _next(when_expr: str, tz: str, start: str, count: int) -> list[str]:
    ticks = cron(when_expr, tz=tz).after(_utc(start))
    return [next(ticks).isoformat() for _ in range(count)]


def test_berlin_spring_forward_runs_a_0230_job_once_right_after_the_change() -> None:
    """2026-03-29: 02:00 CET becomes 03:00 CEST; 02:30 does not exist that day."""
    assert _next("30 2 * * *", "Europe/Berlin", "2026-03-28T00:00:00", 3) == [
        "2026-03-28T01:30:00+00:00",  # 02:30 CET
        "2026-03-29T01:00:00+00:00",  # 03:00 CEST, once
        "2026-03-30T00:30:00+00:00",  # 02:30 CEST
    ]


def test_berlin_fall_back_runs_a_0230_job_once() -> None:
    """2026-10-25: 03:00 CEST becomes 02:00 CET; 02:30 happens twice, the job runs once."""
    assert _next("30 2 * * *", "Europe/Berlin", "2026-10-24T00:00:00", 3) == [
        "2026-10-24T00:30:00+00:00",
        "2026-10-25T00:30:00+00:00",  # the first 02:30 (CEST) only
        "2026-10-26T01:30:00+00:00",
    ]


def test_new_york_transitions_for_fixed_and_wildcard_jobs() -> None:
    """2026-03-08 02:00 EST → 03:00 EDT; 2026-11-01 02:00 EDT → 01:00 EST."""
    assert _next("30 2 * * *", "America/New_York", "2026-03-07T12:00:00", 2) == [
        "2026-03-08T07:00:00+00:00",  # 03:00 EDT, right after the jump
        "2026-03-09T06:30:00+00:00",
    ]
    assert _next("30 1 * * *", "America/New_York", "2026-10-31T12:00:00", 2) == [
        "2026-11-01T05:30:00+00:00",  # 01:30 EDT only, not again at 01:30 EST
        "2026-11-02T06:30:00+00:00",
    ]
    # A job every 30 minutes runs through the repeated hour in real time: four runs in it.
    assert _next("*/30 * * * *", "America/New_York", "2026-11-01T04:59:00", 5) == [
        "2026-11-01T05:00:00+00:00",  # 01:00 EDT
        "2026-11-01T05:30:00+00:00",  # 01:30 EDT
        "2026-11-01T06:00:00+00:00",  # 01:00 EST
        "2026-11-01T06:30:00+00:00",  # 01:30 EST
        "2026-11-01T07:00:00+00:00",  # 02:00 EST
    ]


def test_leap_days_and_month_ends() -> None:
    assert _next("0 12 29 2 *", "UTC", "2026-01-01T00:00:00", 2) == [
        "2028-02-29T12:00:00+00:00",
        "2032-02-29T12:00:00+00:00",
    ]
    assert _next("0 0 31 * *", "Europe/Berlin", "2026-01-31T00:00:00", 3) == [
        "2026-03-30T22:00:00+00:00",  # 31 March, 00:00 CEST
        "2026-05-30T22:00:00+00:00",
        "2026-07-30T22:00:00+00:00",
    ]
    assert _next("0 6 L * *", "UTC", "2026-02-01T00:00:00", 2) == [
        "2026-02-28T06:00:00+00:00",
        "2026-03-31T06:00:00+00:00",
    ]


def test_an_interval_never_drifts_over_a_day() -> None:
    interval = every(seconds=7)
    ticks = interval.after(_utc("2026-06-01T00:00:00.5"))
    seen = [next(ticks) for _ in range(86_400 // 7)]
    assert all((b - a) == timedelta(seconds=7) for a, b in itertools.pairwise(seen))
    # Counted from the anchor: wherever a scheduler starts, the ticks are the same.
    later = next(interval.after(seen[5000] - timedelta(milliseconds=1)))
    assert later == seen[5000]
    assert interval.latest(seen[0], seen[100], 3) == seen[98:101]
    assert interval.latest(seen[0], seen[2], 10) == seen[1:3]
    assert all((tick - interval.anchor).total_seconds() % 7 == 0 for tick in seen)


ZONES = ["UTC", "Europe/Berlin", "America/New_York", "Australia/Lord_Howe", "Asia/Kolkata"]
FIELDS = st.tuples(
    st.sampled_from(["*", "0", "30", "*/15", "5,35", "59"]),
    st.sampled_from(["*", "0", "1", "2", "3", "*/6", "1-3", "23"]),
    st.sampled_from(["*", "1", "15", "29", "31", "L"]),
    st.sampled_from(["*", "2", "3", "10", "11", "*/3"]),
    st.sampled_from(["*", "0", "1-5", "SUN", "6"]),
)
MOMENTS = st.datetimes(
    min_value=datetime(2024, 1, 1), max_value=datetime(2030, 12, 31), timezones=st.just(UTC)
)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(fields=FIELDS, zone=st.sampled_from(ZONES), start=MOMENTS)
def test_next_runs_are_cronsims_and_resuming_from_any_tick_gives_the_same_runs(
    fields: tuple[str, ...], zone: str, start: datetime
) -> None:
    """Against cronsim itself: the same instants; strictly increasing; and a scheduler that
    resumes from any tick it stored (a new leader) continues with exactly the same ticks;
    and the last ticks of a span (a catch-up after a downtime) are the same ones."""
    expression = " ".join(fields)
    try:
        reference = CronSim(expression, start.astimezone(ZoneInfo(zone)))
    except CronSimError:
        with pytest.raises(DefinitionError, match="bad cron expression"):
            cron(expression, tz=zone)  # what cronsim refuses, we refuse where it is written
        return
    when = cron(expression, tz=zone)
    ours = when.after(start)
    try:
        ticks = [next(ours) for _ in range(8)]
    except StopIteration:
        return  # cronsim finds nothing within 50 years
    assert ticks == [next(reference).astimezone(UTC) for _ in range(8)]
    assert all(a < b for a, b in itertools.pairwise(ticks))
    for index in range(len(ticks) - 1):
        assert next(when.after(ticks[index])) == ticks[index + 1], (expression, zone, index)
    assert when.latest(start, ticks[-1], len(ticks)) == ticks
    assert when.latest(ticks[1], ticks[-1], 3) == ticks[-3:]
