"""The actor of the cluster tests' worker subprocesses: ``leveret worker tests.cluster_actors``."""

from __future__ import annotations

from leveret.actors import Actor, Context, Reject, Retry, RetryPolicy, handler
from leveret.schemas import Message
from tests.records import record_event


class ClusterJob(Message, topic="tests.cluster.job"):
    """One unit of work; `retry_in_s` > 0 makes its first attempt ask for a retry, `reject`
    sends it to the dead-letter queue."""

    n: int
    retry_in_s: int = 0
    reject: bool = False


class ClusterJobs(Actor, queue="cluster_jobs"):
    """Records ``done n`` once a job is handled (``retried n`` on a first attempt that asks
    for a retry, ``rejected n`` when it goes to the dead-letter queue)."""

    retry = RetryPolicy(attempts=5)

    @handler
    def run(self, msg: ClusterJob, ctx: Context) -> None:
        if msg.reject:
            record_event("rejected", msg.n, ctx)
            raise Reject("the cluster test's dead letter")
        if msg.retry_in_s and ctx.attempt == 1:
            record_event("retried", msg.n, ctx)
            raise Retry("the cluster test's first attempt", delay=msg.retry_in_s)
        record_event("done", msg.n, ctx)
