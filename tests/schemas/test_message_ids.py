"""Message ids: 32 hex characters, never repeated across threads or a fork."""

from __future__ import annotations

import os
import re
import threading

from leveret.schemas.envelope import new_message_id


def test_ids_are_hex_and_unique_across_threads_and_draws() -> None:
    found: list[list[str]] = []

    def draw() -> None:
        found.append([new_message_id() for _ in range(1000)])  # several draws of 256

    threads = [threading.Thread(target=draw) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    ids = [one for batch in found for one in batch]
    assert all(re.fullmatch(r"[0-9a-f]{32}", one) for one in ids)
    assert len(set(ids)) == len(ids) == 4000


def test_a_forked_child_does_not_reuse_its_parents_random_bytes() -> None:
    new_message_id()  # the parent's thread now holds unused bytes
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: report its next ids, exit at once
        try:
            os.write(write, " ".join(new_message_id() for _ in range(5)).encode())
        finally:
            os._exit(0)
    os.close(write)
    with os.fdopen(read) as pipe:
        child = pipe.read().split()
    os.waitpid(pid, 0)
    parent = [new_message_id() for _ in range(5)]
    assert len(child) == 5
    assert not set(child) & set(parent)
