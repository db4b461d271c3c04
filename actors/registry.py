"""Finding the actors a worker runs, in the modules it is given."""

from __future__ import annotations

import importlib
from collections.abc import Iterable
from typing import Any

from leveret.actors.actor import Actor
from leveret.actors.function import FunctionActor, as_actor_class
from leveret.schemas.errors import ConfigurationError, DefinitionError


def actors_in(module_names: Iterable[str]) -> list[type[Actor]]:
    """Import each module and return the actors defined in it, in definition order.

    An actor counts when its class (or `@actor` function) is defined in the module itself;
    actors merely imported into it are found in their own module.

    Args:
        module_names: Dotted module names, as given on the command line.

    Raises:
        ConfigurationError: A module cannot be imported, or two actors share a queue.
    """
    found: list[type[Actor]] = []
    for name in module_names:
        try:
            module = importlib.import_module(name)
        except ImportError as exc:
            raise ConfigurationError(f"cannot import actor module {name!r}: {exc}") from exc
        for value in vars(module).values():
            cls = _actor_defined_in(value, module.__name__)
            if cls is not None and cls not in found:
                found.append(cls)
    return unique_queues(found)


def unique_queues(actors: Iterable[type[Actor] | FunctionActor[Any]]) -> list[type[Actor]]:
    """Normalise actor references to classes and check no two share a queue.

    Raises:
        DefinitionError: Two different actors claim the same queue.
    """
    by_queue: dict[str, type[Actor]] = {}
    for ref in actors:
        cls = as_actor_class(ref)
        other = by_queue.get(cls.queue)
        if other is not None and other is not cls:
            raise DefinitionError(
                f"actors {other.__module__}.{other.__qualname__} and "
                f"{cls.__module__}.{cls.__qualname__} both use queue {cls.queue!r}"
            )
        by_queue[cls.queue] = cls
    return list(by_queue.values())


def _actor_defined_in(value: Any, module_name: str) -> type[Actor] | None:
    if isinstance(value, FunctionActor):
        cls = value.actor_class
    elif isinstance(value, type) and issubclass(value, Actor) and not value.abstract:
        cls = value
    else:
        return None
    return cls if cls.__module__ == module_name else None


def imported_actors() -> list[type[Actor]]:
    """Every actor defined in a module imported so far (abstract bases left out), in
    definition order as far as Python keeps it (subclass order)."""
    found: list[type[Actor]] = []
    pending = list(Actor.__subclasses__())
    while pending:
        cls = pending.pop(0)
        pending.extend(cls.__subclasses__())
        if not cls.abstract and cls not in found:
            found.append(cls)
    return found
