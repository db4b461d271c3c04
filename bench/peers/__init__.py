"""Peers of the benchmark: the same no-op drain on Dramatiq, Celery and FastStream.

Each peer runs as its own worker process, started the way its documentation says, with a
no-op handler that records, in the file named by ``$BENCH_PEER_RECORD``, the time it took
the first message and the time it finished the last (``$BENCH_PEER_COUNT``): the drain
rate is the messages between the two over the time between them, so each peer's start-up
(imports, connecting) is not counted. Install them with ``pip install -e '.[bench]'``.
"""
