"""The gateway's background work: one job worker for its durable operations (settling launches, ending the
usage of terminated instances, finishing resets), the tending of its job table, and the count of running
instances for the metrics."""

from __future__ import annotations

import asyncio
from datetime import timedelta
from functools import partial

from prometheus_client import Gauge
from sqlalchemy import func, select

from chassis.jobs import JobQueue, job_worker
from chassis.server import BackgroundWork
from gateway.adapters.repository import END_USAGE, RESET_INSTANCE, SETTLE_LAUNCH
from gateway.adapters.tables import INSTANCES
from gateway.domain.instances import InstanceState
from gateway.service_layer import instances, launches, resets
from gateway.service_layer.dependencies import Dependencies

# How long the jobs of finished operations are kept (for diagnostics) before they are pruned.
KEEP_FINISHED_JOBS_FOR = timedelta(days=1)
JOB_KINDS = (SETTLE_LAUNCH, END_USAGE, RESET_INSTANCE)
INSTANCES_RUNNING = Gauge("cloudimg_instances_running", "Instances RUNNING, in every account and region (counted "
                          "every few seconds by each gateway replica).")


def operations_worker(deps: Dependencies, queue: JobQueue, retry_at_most: timedelta,
                      poll_seconds: float = 0.5) -> BackgroundWork:
    """Runs the jobs of the operations that their calls could not finish. None is ever given up on: while a
    dependency cannot be reached, a job is retried, backing off from a second up to ``retry_at_most``; one
    that cannot be finished never stops the others."""
    return job_worker(queue, {
        SETTLE_LAUNCH: partial(launches.settle_launch_job, deps=deps),
        END_USAGE: partial(instances.end_usage_job, deps=deps),
        RESET_INSTANCE: partial(resets.reset_job, deps=deps),
    }, poll_seconds=poll_seconds, max_attempts=None, max_backoff=retry_at_most)


async def tend_jobs(deps: Dependencies, queue: JobQueue) -> None:
    """Now and then: adopts launches without a job, and prunes the jobs of long-finished operations."""
    await asyncio.to_thread(launches.adopt_unsettled_launches, deps)
    await asyncio.to_thread(queue.prune, KEEP_FINISHED_JOBS_FOR)


def count_running_instances(deps: Dependencies) -> int:
    """Instances RUNNING, in every account and region: one COUNT."""
    with deps.new_uow(read_only=True) as uow:
        counted = uow.connection.execute(select(func.count()).select_from(INSTANCES).where(
            INSTANCES.c.state == InstanceState.RUNNING.value))
        return int(counted.scalar_one())


async def measure_instances(deps: Dependencies) -> None:
    """Now and then (never per scrape): the running instances gauge, counted in a thread."""
    INSTANCES_RUNNING.set(await asyncio.to_thread(count_running_instances, deps))
