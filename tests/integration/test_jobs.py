"""Durable jobs under contention, on SQLite and PostgreSQL: replicas (each with its own engine and pool)
claiming from many threads at once run every job exactly once; workers do the same end to end."""

from __future__ import annotations

import asyncio
import threading
import time
from collections import Counter
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import Column, ColumnElement, MetaData, String, Table, func, select

from chassis.clock import SystemClock
from chassis.db import Database
from chassis.jobs import Job, JobQueue, JobRun, enqueue, job_table, job_worker
from chassis.server import Background

METADATA = MetaData()
TABLE = job_table("test", METADATA)
# What the handlers produce, written in the transaction that completes their job.
COPIES = Table("test_copy", METADATA, Column("job_id", String(32), primary_key=True))
JOBS = 200
REPLICAS = 4
THREADS_PER_REPLICA = 4


@pytest.fixture
def replicas(database_url: str) -> Iterator[list[Database]]:
    """Databases over one database_url, one per replica: separate engines, separate pools."""
    databases = [Database(database_url) for _ in range(REPLICAS)]
    METADATA.create_all(databases[0].engine)
    yield databases
    for database in databases:
        database.dispose()


def enqueue_all(db: Database, count: int, kind: str = "copy") -> list[str]:
    now = datetime.now(UTC)
    with db.engine.begin() as connection:
        return [enqueue(connection, TABLE, kind, f"img-{n:08d}", {"n": n}, now) for n in range(count)]


def count(db: Database, table: Table, *where: ColumnElement[bool]) -> int:
    with db.engine.connect() as connection:
        return connection.execute(select(func.count()).select_from(table).where(*where)).scalar_one()


def test_replicas_claiming_from_many_threads_run_every_job_exactly_once(replicas: list[Database]) -> None:
    ids = enqueue_all(replicas[0], JOBS)
    queues = [JobQueue(db, TABLE, SystemClock(), f"replica-{n}") for n, db in enumerate(replicas)]
    ran: Counter[str] = Counter()
    completed: Counter[str] = Counter()
    lock = threading.Lock()
    start = threading.Barrier(REPLICAS * THREADS_PER_REPLICA)
    errors: list[BaseException] = []

    def claim_until_none(queue: JobQueue) -> None:
        try:
            start.wait()
            while (job := queue.claim({"copy"})) is not None:
                with lock:
                    ran[job.job_id] += 1
                with queue.db.engine.begin() as connection:
                    connection.execute(COPIES.insert().values(job_id=job.job_id))
                    if queue.complete(connection, job):
                        with lock:
                            completed[job.job_id] += 1
        except BaseException as exc:  # surfaced below
            errors.append(exc)

    threads = [threading.Thread(target=claim_until_none, args=(queue,))
               for queue in queues for _ in range(THREADS_PER_REPLICA)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(120)
    assert not errors, errors
    assert sorted(ran) == sorted(ids)
    assert set(ran.values()) == {1}
    assert sorted(completed) == sorted(ids)
    assert set(completed.values()) == {1}
    db = replicas[0]
    assert count(db, COPIES) == JOBS
    assert count(db, TABLE, TABLE.c.state == "DONE", TABLE.c.attempts == 1) == JOBS


async def test_workers_on_two_replicas_run_every_job_once_and_retry_the_failures(replicas: list[Database]) -> None:
    ids = enqueue_all(replicas[0], 40)
    flaky = set(ids[::10])  # these fail their first attempt
    runs: Counter[str] = Counter()

    async def copy(job: Job, run: JobRun) -> None:
        runs[job.job_id] += 1
        if job.job_id in flaky and job.attempts == 1:
            raise OSError("the store hiccuped")

        def copy_bytes() -> None:  # the byte copy runs in a thread and reports its progress from there
            run.heartbeat(50)
            with run.queue.db.engine.begin() as connection:
                connection.execute(COPIES.insert().values(job_id=job.job_id))
                if not run.queue.complete(connection, job):
                    connection.rollback()

        await asyncio.to_thread(copy_bytes)

    workers = [job_worker(JobQueue(db, TABLE, SystemClock(), f"replica-{n}"), {"copy": copy}, concurrency=3,
                          poll_seconds=0.02, max_backoff=timedelta(milliseconds=50))
               for n, db in enumerate(replicas[:2])]
    background = Background(workers)
    db = replicas[0]
    try:
        deadline = time.monotonic() + 30
        while count(db, TABLE, TABLE.c.state == "DONE") < len(ids):
            assert time.monotonic() < deadline, "the workers never finished"
            await asyncio.sleep(0.02)
    finally:
        await background.drain(5)
    assert {job_id: runs[job_id] for job_id in ids} == {job_id: 2 if job_id in flaky else 1 for job_id in ids}
    assert count(db, COPIES) == len(ids)
    assert count(db, TABLE, TABLE.c.state == "DONE", TABLE.c.progress == 100) == len(ids)
