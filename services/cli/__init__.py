"""The `leveret` command: one module per command group.

- `leveret.services.cli.worker`: ``leveret worker`` (one process, or a supervisor of several);
- `leveret.services.cli.dlq`: ``leveret dlq list|show|replay|purge``;
- `leveret.services.cli.scheduler`: ``leveret scheduler`` (the schedules' ticks);
- `leveret.services.cli.status`: ``leveret status`` (workers, queues, warnings);
- `leveret.services.cli.tools`: ``leveret declare``, ``leveret demo``, ``leveret ping``;
- `leveret.services.cli.namespace`: ``leveret delete-namespace``.
"""

from __future__ import annotations

import click

from leveret.services.cli import dashboard, dlq, namespace, scheduler, status, tools, worker
from leveret.services.cli._common import LeveretGroup


@click.group(cls=LeveretGroup)
@click.version_option(package_name="leveret")
def main() -> None:
    """Leveret: typed actors on RabbitMQ."""


main.add_command(worker.worker)
main.add_command(dlq.dlq)
main.add_command(scheduler.scheduler)
main.add_command(status.status)
main.add_command(dashboard.dashboard)
main.add_command(tools.declare)
main.add_command(tools.demo)
main.add_command(tools.ping)
main.add_command(namespace.delete_namespace)

__all__ = ["main"]
