"""The ask scenario (request/reply): Leveret's ``ask`` beside raw pika and FastStream.

``python -m bench --only ask`` runs it (see docs/performance.md, "Request/reply"). Each
side's responder is that framework's own worker, in a process of its own, answering a small
typed message on a quorum queue of the run's namespace; the callers run in the bench's
process:

- ``leveret_side``: ``leveret worker`` running `Quoter`; callers use ``broker.ask`` and
  ``broker.ask_async``.
- ``raw``: a plain pika consumer that replies; callers on ``BlockingConnection`` (a
  connection per thread) and on aio-pika for asyncio, both on direct reply-to.
- ``faststream_app``: ``faststream run`` of a subscriber that returns a model; callers use
  ``RabbitBroker.request``.
- ``load``: the load patterns, the same for every side; ``run``: responders, runs, table.
"""
