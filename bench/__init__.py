"""Leveret's benchmark: publish, drain and latency, against a raw-pika baseline.

Run with ``python -m bench`` (see ``python -m bench --help`` and docs/performance.md).
"""
