"""Durable, leased jobs (chassis.jobs) on a SQLite file, with a clock that tests move."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from sqlalchemy import MetaData, select, update

from chassis import jobs
from chassis.clock import FakeClock
from chassis.db import Database
from chassis.jobs import Job, JobLost, JobQueue, JobRun, enqueue, job_worker
from chassis.server import Background

NOW = datetime(2026, 1, 1, tzinfo=UTC)
LEASE = timedelta(seconds=30)
TABLE = jobs.job_table("test", MetaData())


@pytest.fixture
def db(tmp_path: Path) -> Iterator[Database]:
    database = Database(f"sqlite:///{tmp_path}/jobs.db")
    TABLE.metadata.create_all(database.engine)
    yield database
    database.dispose()


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock(NOW)


def queue(db: Database, clock: FakeClock, owner: str = "replica-a", lease: timedelta = LEASE) -> JobQueue:
    return JobQueue(db, TABLE, clock, owner, lease)


def add(db: Database, kind: str = "copy", subject: str = "img-00000001", *, job_id: str | None = None,
        lease_owner: str = "", lease_until: datetime | None = None) -> str:
    with db.engine.begin() as connection:
        return enqueue(connection, TABLE, kind, subject, {"image_id": subject}, NOW, job_id=job_id,
                       lease_owner=lease_owner, lease_until=lease_until)


def states(db: Database) -> dict[str, str]:
    with db.engine.connect() as connection:
        return {r.job_id: r.state for r in connection.execute(select(TABLE.c.job_id, TABLE.c.state))}


async def until(condition: Callable[[], bool], seconds: float = 5.0) -> None:
    """Waits (really) until the worker under test has done something."""
    deadline = time.monotonic() + seconds
    while not condition():
        assert time.monotonic() < deadline, "the worker never got there"
        await asyncio.sleep(0.005)


def test_a_job_enqueued_in_a_transaction_that_rolls_back_does_not_exist(db: Database, clock: FakeClock) -> None:
    with db.engine.connect() as connection, connection.begin() as transaction:
        enqueue(connection, TABLE, "copy", "img-00000001", {}, NOW)
        transaction.rollback()
    assert states(db) == {}
    assert queue(db, clock).claim({"copy"}) is None


def test_a_claimed_job_is_held_renewed_and_completed_by_its_owner(db: Database, clock: FakeClock) -> None:
    job_id = add(db)
    other = add(db, kind="sync")
    a = queue(db, clock)
    job = a.claim({"copy"})
    assert job == Job(job_id, "copy", "img-00000001", {"image_id": "img-00000001"}, 1, 0)
    assert a.claim({"copy"}) is None  # held, and "sync" is not asked for
    clock.advance(seconds=20)
    assert a.heartbeat(job, progress=40)
    clock.advance(seconds=20)  # 40 s after the claim, 20 s after the heartbeat: still held
    assert queue(db, clock, "replica-b").claim({"copy"}) is None
    with db.engine.begin() as connection:
        assert a.complete(connection, job)
    record = a.get(job_id)
    assert record is not None
    assert (record.state, record.progress, record.attempts) == ("DONE", 100, 1)
    assert not a.heartbeat(job)  # done: nobody holds it any more
    assert states(db) == {job_id: "DONE", other: "PENDING"}


def test_an_expired_lease_is_taken_by_another_owner_and_the_first_can_no_longer_finish_it(
        db: Database, clock: FakeClock) -> None:
    job_id = add(db)
    a, b = queue(db, clock), queue(db, clock, "replica-b")
    first = a.claim({"copy"})
    assert first is not None
    clock.advance(seconds=LEASE.total_seconds())
    second = b.claim({"copy"})
    assert second is not None
    assert second.job_id == job_id
    assert second.attempts == 2
    assert not a.heartbeat(first)
    with db.engine.begin() as connection:
        assert not a.complete(connection, first)  # the caller rolls back
    assert not a.fail(first, "too late")
    a.release(first)
    a.retry_later(first, "too late", timedelta(seconds=1))
    record = b.get(job_id)
    assert record is not None
    assert (record.state, record.lease_owner, record.error) == ("PENDING", "replica-b", "")
    with db.engine.begin() as connection:
        assert b.complete(connection, second)


def test_a_lease_is_fenced_by_its_claim_even_for_the_same_owner(db: Database, clock: FakeClock) -> None:
    add(db)
    a = queue(db, clock)
    stale = a.claim({"copy"})
    clock.advance(seconds=LEASE.total_seconds() + 1)
    fresh = a.claim({"copy"})  # the same process, another worker, after the lease ran out
    assert stale is not None
    assert fresh is not None
    assert fresh.attempts == 2
    assert not a.heartbeat(stale)
    assert a.heartbeat(fresh)


def test_a_job_enqueued_held_waits_for_its_holder_until_the_hold_ends(db: Database, clock: FakeClock) -> None:
    held = add(db, job_id="settle-lch-00000001", lease_owner="replica-a", lease_until=NOW + timedelta(seconds=10))
    assert add(db, job_id="settle-lch-00000001") == held  # enqueued at most once
    worker = queue(db, clock, "replica-b")
    assert worker.claim({"copy"}) is None
    clock.advance(seconds=10)  # its holder died: due when the hold ends
    job = worker.claim({"copy"})
    assert job is not None
    assert job.job_id == held
    assert job.attempts == 1


def test_a_holder_can_make_its_job_due_at_once_or_finish_it_in_its_own_transaction(
        db: Database, clock: FakeClock) -> None:
    due = add(db, job_id="j-due", lease_owner="replica-a", lease_until=NOW + timedelta(seconds=10))
    done = add(db, job_id="j-done", lease_owner="replica-a", lease_until=NOW + timedelta(seconds=10))
    with db.engine.begin() as connection:
        assert not jobs.release_hold(connection, TABLE, due, "replica-b", NOW)  # not its hold
        assert jobs.release_hold(connection, TABLE, due, "replica-a", NOW)
        assert jobs.finish(connection, TABLE, done, NOW)
    job = queue(db, clock, "replica-b").claim({"copy"})
    assert job is not None
    assert job.job_id == due
    with db.engine.begin() as connection:  # a claimed job is its worker's, no longer its holder's
        assert not jobs.release_hold(connection, TABLE, due, "replica-a", NOW)
    assert states(db) == {due: "PENDING", done: "DONE"}


def test_jobs_are_claimed_oldest_first_and_only_of_the_kinds_asked_for(db: Database, clock: FakeClock) -> None:
    with db.engine.begin() as connection:
        late = enqueue(connection, TABLE, "copy", "b", {}, NOW + timedelta(seconds=1))
        early = enqueue(connection, TABLE, "copy", "a", {}, NOW)
        enqueue(connection, TABLE, "sync", "c", {}, NOW - timedelta(seconds=1))
    a = queue(db, clock)
    claimed = [a.claim({"copy"}), a.claim({"copy"}), a.claim({"copy"})]
    assert [j.job_id if j else None for j in claimed] == [early, late, None]
    assert a.claim(set()) is None


def test_the_payload_is_versioned_and_read_tolerantly(db: Database, clock: FakeClock) -> None:
    job_id = add(db)
    with db.engine.connect() as connection:
        raw = connection.execute(select(TABLE.c.payload).where(TABLE.c.job_id == job_id)).scalar_one()
    assert json.loads(raw) == {"v": 1, "data": {"image_id": "img-00000001"}}
    with db.engine.begin() as connection:
        connection.execute(update(TABLE).where(TABLE.c.job_id == job_id).values(payload='{"v": 1}'))
    job = queue(db, clock).claim({"copy"})
    assert job is not None
    assert job.data == {}


def test_finished_jobs_are_pruned_once_old_enough(db: Database, clock: FakeClock) -> None:
    ids = {add(db, subject="a"), add(db, subject="b"), add(db, subject="c")}
    a = queue(db, clock)
    first, second = a.claim({"copy"}), a.claim({"copy"})
    assert first is not None
    assert second is not None
    (pending,) = ids - {first.job_id, second.job_id}
    with db.engine.begin() as connection:
        a.complete(connection, first)
    a.fail(second, "broken")
    assert a.prune(timedelta(days=1)) == 0
    clock.advance(days=1, seconds=1)
    assert a.prune(timedelta(days=1)) == 2
    assert states(db) == {pending: "PENDING"}


def test_backoff_doubles_from_a_second_up_to_its_cap() -> None:
    cap = timedelta(seconds=60)
    assert [jobs.backoff(n, cap).total_seconds() for n in range(1, 9)] == [1, 2, 4, 8, 16, 32, 60, 60]


async def test_a_heartbeat_from_a_thread_raises_job_lost_once_another_owner_took_the_job(
        db: Database, clock: FakeClock) -> None:
    add(db)
    a = queue(db, clock)
    job = a.claim({"copy"})
    assert job is not None
    run = JobRun(a, job)
    await asyncio.to_thread(run.heartbeat, 10)
    clock.advance(seconds=LEASE.total_seconds() + 1)
    assert queue(db, clock, "replica-b").claim({"copy"}) is not None
    with pytest.raises(JobLost):
        await asyncio.to_thread(run.heartbeat, 20)
    assert run.lost
    with pytest.raises(JobLost):  # and it stays lost
        await asyncio.to_thread(run.heartbeat)


async def test_the_worker_runs_jobs_and_marks_done_those_whose_handler_did_not(db: Database, clock: FakeClock) -> None:
    ids = [add(db, subject=f"img-{n}") for n in range(5)]
    seen: list[str] = []

    async def copy(job: Job, run: JobRun) -> None:
        seen.append(job.subject)
        await asyncio.to_thread(run.heartbeat, 50)
        if job.subject.endswith(("0", "2", "4")):  # these finish themselves, as a domain handler does
            with db.engine.begin() as connection:
                assert run.queue.complete(connection, job)

    background = Background([job_worker(queue(db, clock), {"copy": copy}, poll_seconds=0.01)])
    await until(lambda: set(states(db).values()) == {"DONE"})
    await background.drain(1)
    assert sorted(seen) == [f"img-{n}" for n in range(5)]
    assert set(states(db)) == set(ids)


async def test_a_failing_job_is_retried_with_backoff_then_failed_for_good(db: Database, clock: FakeClock) -> None:
    job_id = add(db)
    attempts: list[int] = []
    gave_up: list[tuple[str, str]] = []

    async def copy(job: Job, run: JobRun) -> None:
        attempts.append(job.attempts)
        raise OSError("the store is down")

    async def mark_failed(job: Job, error: str) -> None:
        gave_up.append((job.subject, error))

    a = queue(db, clock)
    background = Background([job_worker(a, {"copy": copy}, poll_seconds=0.01, max_attempts=3,
                                        on_give_up={"copy": mark_failed})])
    try:
        for attempt, delay in [(1, 1), (2, 2)]:
            def tried(n: int = attempt) -> bool:
                return (r := a.get(job_id)) is not None and r.attempts == n and r.lease_owner == ""

            await until(tried)
            record = a.get(job_id)
            assert record is not None
            assert record.state == "PENDING"
            assert "the store is down" in record.error
            assert record.lease_until == clock.now() + timedelta(seconds=delay)
            await asyncio.sleep(0.05)  # not due yet: not tried again
            assert attempts == list(range(1, attempt + 1))
            clock.advance(seconds=delay)
        await until(lambda: bool(gave_up))
    finally:
        await background.drain(1)
    record = a.get(job_id)
    assert record is not None
    assert (record.state, record.attempts) == ("FAILED", 3)
    assert attempts == [1, 2, 3]
    assert gave_up == [("img-00000001", "OSError: the store is down")]


async def test_the_worker_cancels_a_handler_whose_lease_was_lost(db: Database, clock: FakeClock) -> None:
    job_id = add(db)
    started, cancelled = asyncio.Event(), asyncio.Event()

    async def copy(job: Job, run: JobRun) -> None:
        started.set()
        try:
            await asyncio.Event().wait()  # a long copy that never heartbeats itself
        except asyncio.CancelledError:
            cancelled.set()
            raise

    short = timedelta(seconds=0.15)  # the worker renews it every 50 ms
    background = Background([job_worker(queue(db, clock, lease=short), {"copy": copy}, poll_seconds=0.01)])
    try:
        await asyncio.wait_for(started.wait(), 5)
        await asyncio.sleep(0.1)  # the worker's own heartbeats hold it
        assert queue(db, clock, "replica-b").claim({"copy"}) is None
        clock.advance(seconds=1)  # the worker stalled past its lease, and another replica took the job
        assert queue(db, clock, "replica-b").claim({"copy"}) is not None
        await asyncio.wait_for(cancelled.wait(), 5)
    finally:
        await background.drain(1)
    record = queue(db, clock).get(job_id)
    assert record is not None
    assert (record.state, record.lease_owner) == ("PENDING", "replica-b")


async def test_a_job_cancelled_by_the_drain_is_given_back_at_once(db: Database, clock: FakeClock) -> None:
    slow, quick = add(db, subject="slow"), add(db, subject="quick")
    started: list[str] = []
    finish_quick = asyncio.Event()

    async def copy(job: Job, run: JobRun) -> None:
        started.append(job.subject)
        if job.subject == "quick":
            await finish_quick.wait()
            return
        await asyncio.Event().wait()

    background = Background([job_worker(queue(db, clock), {"copy": copy}, poll_seconds=0.01)])
    await until(lambda: len(started) == 2)
    late = add(db, subject="late")
    drained = asyncio.create_task(background.drain(0.2))
    await asyncio.sleep(0.05)
    finish_quick.set()  # a running job finishes within the grace
    await drained
    assert sorted(started) == ["quick", "slow"]  # nothing new was claimed once stopping
    record = queue(db, clock).get(slow)
    assert record is not None
    assert (record.state, record.lease_owner, record.lease_until) == ("PENDING", "", NOW)
    assert states(db) == {slow: "PENDING", quick: "DONE", late: "PENDING"}
    # At once, with no lease to wait out (late and slow were added at the same instant: either comes first).
    other = queue(db, clock, "replica-b")
    taken = {job.job_id: job for job in (other.claim({"copy"}), other.claim({"copy"})) if job is not None}
    assert set(taken) == {slow, late}
    assert taken[slow].attempts == 2
