"""Leveret: typed actors on RabbitMQ.

The names most programs need, in one place::

    from leveret import Actor, Broker, Context, Message, actor, configure, handler, publish

They come from the packages under it: `leveret.schemas` (what a message is, and every
error), `leveret.actors` (what an actor is), `leveret.services` (everything that runs and
talks to RabbitMQ); the Django app is `leveret.django`.
"""

from importlib.metadata import PackageNotFoundError, version

from leveret import actors, schemas, services
from leveret.actors import *  # noqa: F403
from leveret.schemas import *  # noqa: F403
from leveret.services import *  # noqa: F403

__all__ = actors.__all__ + schemas.__all__ + services.__all__

try:
    __version__ = version("leveret")
except PackageNotFoundError:  # imported from a checkout that is not installed
    __version__ = "0+unknown"
