"""Leveret's benchmark: publish, drain, latency and ask, against a raw-pika baseline.

Run with ``python -m bench`` (see ``python -m bench --help`` and docs/performance.md).
"""
