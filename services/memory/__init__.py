"""The in-memory broker: `MemoryBroker`, its `MemoryTransport` and `VirtualClock`.

For unit tests and the demo: the same routing, wire format, retries, delays and dead
letters as on RabbitMQ, in this process's memory, on a virtual clock.
"""

from services.memory.broker import MemoryBroker
from services.memory.clock import VirtualClock
from services.memory.transport import MemoryTransport

__all__ = ["MemoryBroker", "MemoryTransport", "VirtualClock"]
