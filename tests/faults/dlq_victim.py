"""`leveret ARGS` in a process that SIGKILLs itself during its Nth AMQP transaction commit.

Fault injection for the dead-letter pass tests: ``$LEVERET_TEST_KILL_AT_COMMIT`` names the
commit (1 for the first); a timer kills the process 0 to 3 ms after that commit's frame
is written, while the broker applies it. Everything else is the real command on the real
broker.

    python -m tests.faults.dlq_victim dlq list jobs --namespace …
"""

from __future__ import annotations

import os
import random
import signal
import sys
import threading
from typing import Any

from pika.adapters.blocking_connection import BlockingChannel

from leveret.services.cli import main as leveret


def main() -> None:
    kill_at = int(os.environ["LEVERET_TEST_KILL_AT_COMMIT"])
    commit = BlockingChannel.tx_commit
    calls = 0

    def tx_commit(self: BlockingChannel) -> Any:
        nonlocal calls
        calls += 1
        if calls == kill_at:
            delay_s = random.uniform(0.0, 0.003)
            threading.Timer(delay_s, os.kill, (os.getpid(), signal.SIGKILL)).start()
        return commit(self)

    BlockingChannel.tx_commit = tx_commit  # type: ignore[method-assign]
    leveret(sys.argv[1:])


if __name__ == "__main__":
    main()
