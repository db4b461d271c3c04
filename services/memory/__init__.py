"""The in-memory broker's transport (`MemoryTransport`) and its `VirtualClock`.

For unit tests and the demo: the same routing, wire format, retries, delays and dead
letters as on RabbitMQ, in this process's memory, on a virtual clock. The broker tests use
is `leveret.services.testing.MemoryBroker`.
"""

from leveret.services.memory.clock import VirtualClock
from leveret.services.memory.transport import MemoryTransport

__all__ = ["MemoryTransport", "VirtualClock"]
