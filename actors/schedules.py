"""Schedules: typed messages sent on a cron expression or an interval, declared in Python.

```python
from leveret import cron, every, periodic, schedule

nightly = schedule(
    "nightly-report",
    cron("30 2 * * *", tz="Europe/Berlin"),
    message=lambda at: ReportDue(day=at.date()),   # or a Message instance
    to=Reports,                                     # or None: publish by topic
    catch_up="latest",
)


@periodic(every(minutes=5))                          # sends Tick(schedule, scheduled_at)
@actor(queue="cleanup", time_limit_s=60)
def cleanup(tick: Tick) -> None: ...
```

Schedules are found in the modules given to ``leveret scheduler`` (or ``leveret worker
--scheduler``), like actors. Everything is checked where it is written: a bad cron
expression, an unknown time zone, a duplicate name or a message the target actor does not
handle raises `DefinitionError` naming the entry.

Cron expressions are the five fields of cron, evaluated by cronsim in the entry's time
zone, with Debian cron's behaviour at daylight-saving changes: a job at a fixed time that
falls in the hour skipped in spring runs once, right after the change; in the hour repeated
in autumn it runs once; jobs with ``*`` in the minute or hour field run at every matching
minute of real time. Intervals are counted from a fixed anchor (2000-01-01 UTC unless
given), so they never drift.
"""

from __future__ import annotations

import hashlib
import importlib
import sys
import threading
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any, Literal, TypeAlias
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from cronsim import CronSim, CronSimError

from leveret.actors.actor import Actor, ActorRef
from leveret.actors.checks import is_count
from leveret.actors.function import FunctionActor, as_actor_class
from leveret.schemas.errors import ConfigurationError, DefinitionError, NotHandled
from leveret.schemas.message import Message

CatchUp = Literal["skip", "latest", "all"]
"""What happens to the ticks that fell due while no scheduler ran (see `schedule`)."""

MessageSource: TypeAlias = "Message | Callable[[datetime], Message]"
"""A message, or a callable that builds one from the tick's scheduled time."""

ANCHOR = datetime(2000, 1, 1, tzinfo=UTC)
"""Where intervals are counted from unless an entry says otherwise."""

MAX_NAME_BYTES = 200
"""The longest name of a schedule entry, in bytes (UTF-8)."""


class Tick(Message, topic="leveret.tick"):
    """What a `periodic` actor receives: which schedule fired, and when it was due.

    Attributes:
        schedule: The schedule's name.
        scheduled_at: The tick's time (UTC); the same for every copy of this tick.
    """

    schedule: str
    scheduled_at: datetime


@dataclass(frozen=True, slots=True)
class Cron:
    """A cron expression (five fields) in a time zone; build it with `cron`."""

    expression: str
    tz: ZoneInfo

    def after(self, moment: datetime) -> Iterator[datetime]:
        """The ticks strictly after `moment`, in UTC, ascending (endless)."""
        for local in CronSim(self.expression, moment.astimezone(self.tz)):
            yield local.astimezone(UTC)

    def latest(self, after: datetime, until: datetime, count: int) -> list[datetime]:
        """Up to the last `count` ticks in (`after`, `until`], ascending.

        Walked forward only (cron's rules at daylight-saving changes are those of forward
        time), over a window that doubles from one day back until it holds `count` ticks
        or reaches `after`.
        """
        window = timedelta(days=1)
        while True:
            start = max(after, until - window)
            found: deque[datetime] = deque(maxlen=count)
            for tick in self.after(start):
                if tick > until:
                    break
                found.append(tick)
            if len(found) >= count or start == after:
                return list(found)
            window *= 2

    def __str__(self) -> str:
        return f"cron {self.expression!r} ({self.tz.key})"


@dataclass(frozen=True, slots=True)
class Every:
    """An interval counted from an anchor; build it with `every`."""

    interval: timedelta
    anchor: datetime = ANCHOR

    def after(self, moment: datetime) -> Iterator[datetime]:
        """The ticks strictly after `moment`, ascending (endless)."""
        steps = (moment - self.anchor) // self.interval + 1
        while True:
            yield self.anchor + steps * self.interval
            steps += 1

    def latest(self, after: datetime, until: datetime, count: int) -> list[datetime]:
        """Up to the last `count` ticks in (`after`, `until`], ascending."""
        last = (until - self.anchor) // self.interval
        first = max((after - self.anchor) // self.interval + 1, last - count + 1)
        return [self.anchor + step * self.interval for step in range(first, last + 1)]

    def __str__(self) -> str:
        return f"every {self.interval}"


When: TypeAlias = Cron | Every


def cron(expression: str, *, tz: str = "UTC") -> Cron:
    """A cron expression of five fields (minute hour day-of-month month day-of-week) in a
    time zone (an IANA name such as ``Europe/Berlin``; UTC by default).

    Raises:
        DefinitionError: Not five valid fields, or an unknown time zone.
    """
    if not isinstance(expression, str) or len(expression.split()) != 5:
        raise DefinitionError(
            f"cron expression {expression!r} must have five fields: minute hour "
            "day-of-month month day-of-week (use every(seconds=...) below a minute)"
        )
    try:
        zone = ZoneInfo(tz)
    except (ZoneInfoNotFoundError, ValueError, TypeError) as exc:
        raise DefinitionError(
            f"unknown time zone {tz!r} (an IANA name, e.g. Europe/Berlin)"
        ) from exc
    try:
        next(CronSim(expression, datetime.now(zone)))
    except CronSimError as exc:
        raise DefinitionError(f"bad cron expression {expression!r}: {exc}") from exc
    except StopIteration as exc:
        raise DefinitionError(f"cron expression {expression!r} never matches") from exc
    return Cron(" ".join(expression.split()), zone)


def every(
    *,
    days: float = 0,
    hours: float = 0,
    minutes: float = 0,
    seconds: float = 0,
    anchor: datetime | None = None,
) -> Every:
    """An interval: ticks at ``anchor + k * interval`` (2000-01-01 UTC by default), so an
    interval never drifts, whenever a scheduler starts.

    Raises:
        DefinitionError: Not at least one second, a naive anchor, or a next tick past the
            year 9999 (what `datetime` holds).
    """
    interval = timedelta(days=days, hours=hours, minutes=minutes, seconds=seconds)
    if interval < timedelta(seconds=1) or interval.microseconds:
        raise DefinitionError(f"an interval must be whole seconds, at least 1, not {interval}")
    if anchor is not None and anchor.tzinfo is None:
        raise DefinitionError("every(anchor=...) must be timezone-aware")
    try:
        when = Every(interval, (anchor or ANCHOR).astimezone(UTC))
        next(when.after(datetime.now(UTC)))
    except OverflowError as exc:
        raise DefinitionError(
            f"every {interval} from {anchor or ANCHOR}: its next tick is past the year 9999; "
            "use a shorter interval or an earlier anchor"
        ) from exc
    return when


@dataclass(frozen=True, eq=False)
class Schedule:
    """One entry: what to send, where, and when; build it with `schedule` or `periodic`.

    Attributes:
        name: Unique (in a namespace); also what makes each tick's message id.
        when: A `Cron` or an `Every`.
        message: A message, or a callable building one from the tick's scheduled time
            (an aware datetime in the entry's time zone).
        to: Send to this actor's queue; None: publish by topic.
        catch_up: Ticks that fell due while no scheduler ran (older than the scheduler's
            grace period): ``skip`` none, ``latest`` only the last one, ``all`` of them (at
            most `max_catch_up`, the latest ones).
        max_catch_up: The most ticks ``all`` sends after a downtime.
        module: The module that defined it (where `schedules_in` finds it).
    """

    name: str
    when: When
    message: MessageSource
    to: type[Actor] | None = None
    catch_up: CatchUp = "skip"
    max_catch_up: int = 100
    module: str = field(default="", compare=False)

    def message_for(self, tick: datetime) -> Message:
        """The message of `tick`.

        Raises:
            Exception: Whatever the builder raises.
            NotHandled: The built message is not one the target actor handles.
        """
        if isinstance(self.message, Message):
            return self.message
        zone = self.when.tz if isinstance(self.when, Cron) else UTC
        built = self.message(tick.astimezone(zone))
        if not isinstance(built, Message):
            raise TypeError(f"schedule {self.name!r} built {type(built).__name__}, not a Message")
        if self.to is not None:
            self.to.handler_for(built)
        return built

    def message_id(self, tick: datetime) -> str:
        """The tick's message id: the same from every scheduler, so a tick sent twice (a
        failover's overlap) arrives twice with one id."""
        text = f"leveret-schedule\n{self.name}\n{tick.astimezone(UTC).isoformat()}"
        return hashlib.sha256(text.encode()).hexdigest()[:32]

    def next_runs(self, after: datetime, count: int) -> list[datetime]:
        """The next `count` ticks after `after` (UTC)."""
        ticks = self.when.after(after)
        return [next(ticks) for _ in range(count)]


_registry_lock = threading.Lock()
_registry: dict[str, Schedule] = {}


def schedule(
    name: str,
    when: When,
    *,
    message: MessageSource,
    to: ActorRef | None = None,
    catch_up: CatchUp = "skip",
    max_catch_up: int = 100,
) -> Schedule:
    """Declare a schedule entry (keep it in a module-level name, where it is found).

    Args:
        name: Unique in the namespace: letters, digits and ``._-``; it makes the ticks'
            message ids, so renaming an entry starts it afresh.
        when: `cron(...)` or `every(...)`.
        message: The message to send, or a callable building it from the tick's time.
        to: An actor to send it to; by default it is published by topic.
        catch_up: ``skip`` (default), ``latest`` or ``all``; see `Schedule`.
        max_catch_up: The most ticks ``all`` sends after a downtime.

    Raises:
        DefinitionError: Anything wrong, naming the entry.
    """
    module = sys._getframe(1).f_globals.get("__name__", "")
    return _define(name, when, message, to, catch_up, max_catch_up, module)


def check_schedule(entry: Schedule) -> Schedule:
    """`entry` checked like `schedule`'s, but not registered: for entries kept elsewhere
    than in modules (a database), whose names may change at any time.

    Raises:
        DefinitionError: Anything wrong, naming the entry.
    """
    return _define(
        entry.name,
        entry.when,
        entry.message,
        entry.to,
        entry.catch_up,
        entry.max_catch_up,
        entry.module,
        register=False,
    )


def periodic(
    when: When,
    *,
    name: str | None = None,
    catch_up: CatchUp = "skip",
    max_catch_up: int = 100,
) -> Callable[[Any], Any]:
    """Decorate an actor (an `@actor` function or an `Actor` class) to receive a `Tick` on
    a schedule; its handler takes `Tick`. The entry is named after the actor's queue unless
    `name` is given, and is found with the actor.

    ```python
    @periodic(cron("0 3 * * *", tz="Europe/Berlin"))
    @actor(queue="cleanup", time_limit_s=600)
    def cleanup(tick: Tick) -> None: ...
    ```
    """

    def decorate(target: Any) -> Any:
        try:
            cls = as_actor_class(target)
        except Exception as exc:  # whatever it is, it is not an actor
            raise DefinitionError(f"@periodic decorates an actor, not {target!r}") from exc
        entry_name = name or cls.queue
        entry = _define(
            entry_name,
            when,
            lambda at: Tick(schedule=entry_name, scheduled_at=at.astimezone(UTC)),
            target,
            catch_up,
            max_catch_up,
            cls.__module__,
        )
        try:
            cls.handler_for(Tick(schedule=entry_name, scheduled_at=ANCHOR))
        except NotHandled as exc:
            _forget(entry)
            raise DefinitionError(
                f"schedule {entry_name!r}: {cls.__qualname__} has no handler taking Tick"
            ) from exc
        schedules = [*getattr(target, "__leveret_schedules__", ()), entry]
        target.__leveret_schedules__ = schedules
        return target

    return decorate


def _define(
    name: str,
    when: When,
    message: MessageSource,
    to: ActorRef | None,
    catch_up: str,
    max_catch_up: int,
    module: str,
    *,
    register: bool = True,
) -> Schedule:
    if not isinstance(name, str) or not name or len(name.encode(errors="replace")) > MAX_NAME_BYTES:
        raise DefinitionError(f"a schedule needs a name of 1 to {MAX_NAME_BYTES} bytes")
    if not valid_schedule_name(name):
        raise DefinitionError(f"schedule {name!r}: use letters, digits and ._- in its name")
    where = f"schedule {name!r}"
    if not isinstance(when, Cron | Every):
        raise DefinitionError(f"{where}: when= must be cron(...) or every(...), not {when!r}")
    if catch_up not in ("skip", "latest", "all"):
        raise DefinitionError(f"{where}: catch_up must be skip, latest or all, not {catch_up!r}")
    if not is_count(max_catch_up):
        raise DefinitionError(f"{where}: max_catch_up must be a whole number of at least 1")
    cls = None
    if to is not None:
        try:
            cls = as_actor_class(to)
        except Exception as exc:
            raise DefinitionError(f"{where}: to= must be an actor, not {to!r}") from exc
    if isinstance(message, Message):
        if cls is not None:
            try:
                cls.handler_for(message)
            except NotHandled as exc:
                raise DefinitionError(f"{where}: {exc}") from exc
    elif not callable(message):
        raise DefinitionError(
            f"{where}: message= must be a Message or a callable building one from the tick's "
            f"time, not {message!r}"
        )
    entry = Schedule(name, when, message, cls, catch_up, max_catch_up, module)  # type: ignore[arg-type]
    if not register:
        return entry
    with _registry_lock:
        other = _registry.get(name)
        if other is not None and other.module != module:
            raise DefinitionError(
                f"{where} is defined twice: in {other.module} and in {module}; names are "
                "unique (they make the ticks' message ids)"
            )
        _registry[name] = entry
    return entry


def valid_schedule_name(name: object) -> bool:
    """Whether `name` can name a schedule entry: text of 1 to `MAX_NAME_BYTES` bytes, of
    letters, digits and ``._-`` (what the stored state may hold, too)."""
    return (
        isinstance(name, str)
        and 0 < len(name.encode(errors="replace")) <= MAX_NAME_BYTES
        and all(char.isalnum() or char in "._-" for char in name)
    )


def _forget(entry: Schedule) -> None:
    with _registry_lock:
        if _registry.get(entry.name) is entry:
            del _registry[entry.name]


def schedules_in(module_names: Iterable[str]) -> list[Schedule]:
    """Import each module and return the schedules defined in it: module-level `Schedule`
    objects and those of `periodic` actors defined there.

    Raises:
        ConfigurationError: A module cannot be imported, or two modules use one name.
    """
    found: dict[str, Schedule] = {}
    for module_name in module_names:
        try:
            module = importlib.import_module(module_name)
        except ImportError as exc:
            raise ConfigurationError(
                f"cannot import schedule module {module_name!r}: {exc}"
            ) from exc
        for value in vars(module).values():
            entries: list[Schedule] = []
            if isinstance(value, Schedule) and value.module == module.__name__:
                entries = [value]
            elif (
                isinstance(value, FunctionActor | type)
                and getattr(value, "__module__", None) == module.__name__
            ):
                entries = list(getattr(value, "__leveret_schedules__", ()))
            for entry in entries:
                other = found.get(entry.name)
                if other is not None and other is not entry:
                    raise ConfigurationError(f"two schedules are named {entry.name!r}")
                found[entry.name] = entry
    return list(found.values())
