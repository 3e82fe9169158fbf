"""Durable, leased jobs in a context's own database: work that must happen once a state change has
committed, even if the process that made the change dies (copy an image's bytes, settle a launch).

A context declares its table once (``JOBS = job_table("catalog")``, migrated with its other tables)
and enqueues a job inside the unit of work of the state change that needs it, so that both commit or
neither does:

    uow.images.add(image)
    jobs.enqueue(uow.connection, JOBS, "import-image", image.image_id, {"source_uri": uri}, now)
    uow.commit()

A worker (``job_worker``, started through ``Service.background``) claims due jobs: a claim leases
the job to one owner (a process) until ``now + lease``, and the worker renews the lease while the
job's handler runs. A job whose owner dies is due again when its lease runs out, and any replica
takes it. Every change a holder makes is conditional on its lease, fenced by the owner *and* the
attempt it claimed: a holder that lost its lease (it stalled, another took the job) changes nothing.
So a handler finishes its job with ``queue.complete`` in the transaction of the state change that
ends it: the change commits only while the lease is held.

Exactly one claimer wins: on PostgreSQL the claim locks its row (FOR UPDATE SKIP LOCKED, so claimers
pass each other by); on SQLite writers run one at a time (BEGIN IMMEDIATE, chassis.db); on both the
claiming UPDATE is conditional on the job being due.

The payload is a JSON object stored with a format version (``{"v": 1, "data": {...}}``), read
through ``payload_data``; a payload this release cannot read is left, untried, for a replica that can.
Times come from the injected clock, so tests expire leases without sleeping.

With tracing on (chassis.tracing), a job enqueued during a call keeps the call's W3C trace context beside its
data (``{"v": 1, "data": {...}, "trace": {"traceparent": ...}}``; readers that do not know it ignore it), and
each run of the job is a span of that trace. Each run is timed (``cloudimg_job_duration_seconds`` by context,
kind and outcome), and ``measure_queue`` counts the pending jobs now and then (``cloudimg_jobs_pending``).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import inspect
import json
import logging
import os
import secrets
import socket
import time
import uuid
from collections.abc import Awaitable, Callable, Collection, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import (
    Column,
    Connection,
    DateTime,
    Index,
    Integer,
    MetaData,
    String,
    Table,
    Text,
    bindparam,
    delete,
    func,
    or_,
    select,
    update,
)
from sqlmodel import SQLModel

from chassis import metrics, tracing
from chassis.clock import Clock
from chassis.db import Database, ignoring_insert
from chassis.logs import fields
from chassis.server import BackgroundWork, every
from chassis.stored import Document, UnknownVersion

log = logging.getLogger("chassis.jobs")

PENDING, DONE, FAILED = "PENDING", "DONE", "FAILED"
# The job table's envelope of a job's data. Version 1, the only one ever written (jobs came with it, 150e0ba):
# {"v": 1, "data": {...}}. The data of each kind is its context's own document (chassis.stored), which carries
# its own version when the context declares one.
PAYLOAD = Document("job payload", 1)
_MAX_ERROR_CHARS = 2000
_MAX_OWNER_CHARS = 64


def job_table(context: str, metadata: MetaData | None = None) -> Table:
    """The table ``<context>_job`` of one context's jobs."""
    name = f"{context}_job"
    return Table(
        name, SQLModel.metadata if metadata is None else metadata,
        Column("job_id", String(32), primary_key=True),
        Column("kind", String(32), nullable=False),
        Column("subject", String(64), nullable=False),  # what the job is about, e.g. an image id
        Column("payload", Text, nullable=False),  # {"v": the payload format's version, "data": {...}}
        Column("state", String(16), nullable=False),  # PENDING, DONE or FAILED
        Column("lease_owner", String(_MAX_OWNER_CHARS), nullable=False),  # '' when nobody holds it
        # A PENDING job is due once this has passed (NULL: due at once); while it is ahead, its owner
        # holds it, or (with no owner) it waits for a retry.
        Column("lease_until", DateTime(timezone=True), nullable=True),
        Column("attempts", Integer, nullable=False),  # claims so far; with the owner, fences a lease
        Column("progress", Integer, nullable=False),  # 0-100
        Column("error", Text, nullable=False),  # the last failure, '' if none
        Column("create_time", DateTime(timezone=True), nullable=False),
        Column("update_time", DateTime(timezone=True), nullable=False),
        Index(f"ix_{name}_subject", "subject"),
        Index(f"ix_{name}_due", "state", "lease_until"),
    )


@dataclass(frozen=True)
class Job:
    """A claimed job, as its handler sees it; ``attempts`` counts this claim."""

    job_id: str
    kind: str
    subject: str
    data: dict[str, Any]
    attempts: int
    progress: int
    # The W3C trace context of the call that enqueued it (tracing on), else None.
    trace: Mapping[str, str] | None = None


@dataclass(frozen=True)
class JobRecord:
    """A job's row, read-only, for tests and diagnostics."""

    job_id: str
    kind: str
    subject: str
    data: dict[str, Any]
    state: str
    lease_owner: str
    lease_until: datetime | None
    attempts: int
    progress: int
    error: str
    create_time: datetime
    update_time: datetime


class JobLost(Exception):
    """The running job's lease was lost (it ran out and another owner took the job, or the job was
    finished elsewhere): whatever the handler does next must not count."""


def new_owner(service: str) -> str:
    """An owner id for this process, unique among replicas and restarts: ``gateway-<host>-<pid>-<random>``."""
    return f"{service}-{socket.gethostname()[:32]}-{os.getpid()}-{secrets.token_hex(4)}"[-_MAX_OWNER_CHARS:]


def _utc(moment: datetime) -> datetime:
    """Aware and in UTC: SQLite hands datetimes back naive (they are stored in UTC) and stores them
    without their zone, so every value written is converted to UTC first."""
    return moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment.astimezone(UTC)


def _payload(data: dict[str, Any]) -> str:
    trace = tracing.current_carrier()
    return PAYLOAD.dumps({"data": data} if trace is None else {"data": data, "trace": trace})


def _envelope(raw: str) -> dict[str, Any]:
    try:
        stored = json.loads(raw)
    except ValueError:
        raise UnknownVersion(PAYLOAD.kind, None, PAYLOAD.version, PAYLOAD.oldest) from None
    envelope = PAYLOAD.load(stored)  # no version 0: a payload without one is refused
    return envelope if isinstance(envelope, dict) else {}


def payload_data(raw: str) -> dict[str, Any]:
    """The one decoder of stored payloads: the job's data (``{}`` when a version 1 payload has none). A payload
    this release cannot read (a newer release's, or not JSON) raises chassis.stored.UnknownVersion."""
    data = _envelope(raw).get("data")
    return dict(data) if isinstance(data, dict) else {}


def _trace_of(raw: str) -> dict[str, str] | None:
    trace = _envelope(raw).get("trace")
    if not isinstance(trace, dict):
        return None
    return {key: value for key, value in trace.items() if isinstance(key, str) and isinstance(value, str)} or None


def _clipped(error: str) -> str:
    return error if len(error) <= _MAX_ERROR_CHARS else error[:_MAX_ERROR_CHARS - 1] + "…"


def enqueue(connection: Connection, table: Table, kind: str, subject: str, data: dict[str, Any], now: datetime, *,
            job_id: str | None = None, lease_owner: str = "", lease_until: datetime | None = None) -> str:
    """Adds a PENDING job in the caller's transaction and returns its id (a new one unless given).

    A job enqueued with ``lease_owner`` and ``lease_until`` is held by that owner until then, as if
    claimed: the call that does the work itself holds its job, and if that call dies the job is due
    when the hold ends. Enqueuing a ``job_id`` that exists already changes nothing, so a job keyed by
    its subject is enqueued at most once.
    """
    job_id = job_id or uuid.uuid4().hex
    now = _utc(now)
    connection.execute(ignoring_insert(connection, table), {
        "job_id": job_id, "kind": kind, "subject": subject, "payload": _payload(data), "state": PENDING,
        "lease_owner": lease_owner, "lease_until": None if lease_until is None else _utc(lease_until),
        "attempts": 0, "progress": 0, "error": "", "create_time": now, "update_time": now,
    })
    return job_id


def finish(connection: Connection, table: Table, job_id: str, now: datetime) -> bool:
    """Marks a PENDING job DONE in the caller's transaction, whoever holds it: for a job made moot by
    a state change that the domain guards itself (the call that started the work finished it).
    False when there is no such pending job."""
    finished = connection.execute(_finishing(table), {"job": job_id, "now": _utc(now)})
    return finished.rowcount == 1


@functools.cache
def _finishing(table: Table) -> Any:
    """finish's UPDATE, built once per table: it runs in every launch."""
    return update(table).where(table.c.job_id == bindparam("job"), table.c.state == PENDING).values(
        state=DONE, lease_until=None, update_time=bindparam("now"))


def release_hold(connection: Connection, table: Table, job_id: str, holder: str, now: datetime) -> bool:
    """Makes a job that ``enqueue`` gave ``holder`` due at once, in the caller's transaction, unless a
    worker has claimed it since (then it is that worker's). False when nothing changed."""
    c = table.c
    released = connection.execute(update(table).where(
        c.job_id == job_id, c.state == PENDING, c.lease_owner == holder, c.attempts == 0,
    ).values(lease_owner="", lease_until=_utc(now), update_time=_utc(now)))
    return released.rowcount == 1


def read(connection: Connection, table: Table, job_id: str) -> JobRecord | None:
    """A job's row, in the caller's transaction (None when there is no such job)."""
    row = connection.execute(select(table).where(table.c.job_id == job_id)).first()
    if row is None:
        return None
    return JobRecord(row.job_id, row.kind, row.subject, payload_data(row.payload), row.state, row.lease_owner,
                     None if row.lease_until is None else _utc(row.lease_until), row.attempts, row.progress,
                     row.error, _utc(row.create_time), _utc(row.update_time))


class JobQueue:
    """One owner's view of a context's job table: claim due jobs, hold them, finish them."""

    def __init__(self, db: Database, table: Table, clock: Clock, owner: str,
                 lease: timedelta = timedelta(seconds=30)) -> None:
        if not owner or len(owner) > _MAX_OWNER_CHARS:
            raise ValueError(f"a job owner is 1 to {_MAX_OWNER_CHARS} characters")
        self.db = db
        self.table = table
        self.clock = clock
        self.owner = owner
        self.lease = lease

    def _now(self) -> datetime:
        return _utc(self.clock.now())

    def _held(self, job: Job) -> Any:
        """The condition that ``job`` is still leased to this owner, by the claim that handed it out."""
        c = self.table.c
        return (c.job_id == job.job_id) & (c.state == PENDING) & (c.lease_owner == self.owner) \
            & (c.attempts == job.attempts)

    def claim(self, kinds: Collection[str]) -> Job | None:
        """Leases the oldest due job of these kinds to this owner (None when none is due)."""
        if not kinds:
            return None
        c, now = self.table.c, self._now()
        due = (c.state == PENDING) & or_(c.lease_until.is_(None), c.lease_until <= now)
        for _ in range(3):  # another claimer won the candidate, or it was unreadable: try the next
            with self.db.engine.begin() as connection:
                # FOR UPDATE SKIP LOCKED on PostgreSQL; SQLite drops it and relies on BEGIN IMMEDIATE.
                candidate = connection.execute(
                    select(c.job_id).where(due, c.kind.in_(list(kinds)))
                    .order_by(c.create_time, c.job_id).limit(1).with_for_update(skip_locked=True)
                ).first()
                if candidate is None:
                    return None
                row = connection.execute(
                    update(self.table).where(c.job_id == candidate.job_id, due)
                    .values(lease_owner=self.owner, lease_until=now + self.lease, attempts=c.attempts + 1,
                            update_time=now)
                    .returning(c.job_id, c.kind, c.subject, c.payload, c.attempts, c.progress)
                ).first()
                if row is None:
                    continue
                try:
                    return Job(row.job_id, row.kind, row.subject, payload_data(row.payload), row.attempts,
                               row.progress, _trace_of(row.payload))
                except UnknownVersion as exc:
                    # Written by a newer release (a rolling deploy): leave it, untried, to a replica that reads
                    # it; this one looks at it again after a lease.
                    log.warning("job payload unreadable here; left for another replica",
                                extra=fields(job_id=row.job_id, kind=row.kind, error=str(exc)))
                    connection.execute(update(self.table).where(c.job_id == row.job_id).values(
                        lease_owner="", attempts=c.attempts - 1, error=_clipped(str(exc))))
        return None

    def heartbeat(self, job: Job, progress: int | None = None) -> bool:
        """Extends the lease (and records progress) while this owner holds it; False if it was lost."""
        now = self._now()
        values: dict[str, Any] = {"lease_until": now + self.lease, "update_time": now}
        if progress is not None:
            values["progress"] = max(0, min(100, progress))
        with self.db.engine.begin() as connection:
            return connection.execute(update(self.table).where(self._held(job)).values(**values)).rowcount == 1

    def complete(self, connection: Connection, job: Job) -> bool:
        """Marks the job DONE in the caller's transaction, if this owner still holds it; on False the
        caller must roll back (another owner has the job)."""
        done = connection.execute(update(self.table).where(self._held(job)).values(
            state=DONE, progress=100, lease_until=None, update_time=self._now()))
        return done.rowcount == 1

    def fail(self, job: Job, error: str, connection: Connection | None = None) -> bool:
        """Marks the job FAILED for good, if this owner still holds it (in the caller's transaction
        when one is given)."""
        statement = update(self.table).where(self._held(job)).values(
            state=FAILED, error=_clipped(error), lease_until=None, update_time=self._now())
        if connection is not None:
            return connection.execute(statement).rowcount == 1
        with self.db.engine.begin() as own:
            return own.execute(statement).rowcount == 1

    def retry_later(self, job: Job, error: str, delay: timedelta) -> None:
        """Gives the lease back; the job is due again after ``delay``; the error is kept."""
        now = self._now()
        with self.db.engine.begin() as connection:
            connection.execute(update(self.table).where(self._held(job)).values(
                lease_owner="", lease_until=now + delay, error=_clipped(error), update_time=now))

    def leave_untried(self, job: Job, error: str) -> None:
        """Gives the lease back as if this claim never happened (its attempt is not counted), due again after
        a lease: for a job whose data this release cannot read, which a newer replica can."""
        now = self._now()
        with self.db.engine.begin() as connection:
            connection.execute(update(self.table).where(self._held(job)).values(
                lease_owner="", lease_until=now + self.lease, attempts=self.table.c.attempts - 1,
                error=_clipped(error), update_time=now))

    def release(self, job: Job) -> None:
        """Gives the lease back at once: another worker (or replica) takes the job now."""
        now = self._now()
        with self.db.engine.begin() as connection:
            connection.execute(update(self.table).where(self._held(job)).values(
                lease_owner="", lease_until=now, update_time=now))

    def get(self, job_id: str) -> JobRecord | None:
        with self.db.read_engine.begin() as connection:
            return read(connection, self.table, job_id)

    def pending_by_kind(self) -> dict[str, int]:
        """How many jobs of each kind are PENDING (running or waiting): one indexed COUNT."""
        c = self.table.c
        with self.db.read_engine.begin() as connection:
            rows = connection.execute(select(c.kind, func.count()).where(c.state == PENDING).group_by(c.kind))
            return {kind: count for kind, count in rows}

    def prune(self, older_than: timedelta) -> int:
        """Deletes the DONE and FAILED jobs last changed more than ``older_than`` ago; how many."""
        c = self.table.c
        with self.db.engine.begin() as connection:
            pruned = connection.execute(delete(self.table).where(
                c.state.in_([DONE, FAILED]), c.update_time < self._now() - older_than))
        return pruned.rowcount


class JobRun:
    """A running job, handed to its handler: renew its lease and report progress from the handler
    (``heartbeat`` is safe to call from a worker thread, e.g. inside ``asyncio.to_thread``)."""

    def __init__(self, queue: JobQueue, job: Job) -> None:
        self.queue = queue
        self.job = job
        self.lost = False

    def heartbeat(self, progress: int | None = None) -> None:
        """Renews the lease (and records progress); raises JobLost once the lease is lost, so that a
        copy loop stops. It blocks on the database: from the event loop, run it in a thread."""
        if self.lost or not self.queue.heartbeat(self.job, progress):
            self.lost = True
            raise JobLost(f"job {self.job.job_id} is no longer held by {self.queue.owner}")


JobHandler = Callable[[Job, JobRun], Awaitable[None]]
GiveUp = Callable[[Job, str], Awaitable[None] | None]


def backoff(attempts: int, cap: timedelta) -> timedelta:
    """How long a job that failed its ``attempts``-th attempt waits: 1 s, 2 s, 4 s… up to ``cap``."""
    return min(cap, timedelta(seconds=2 ** min(max(attempts - 1, 0), 32)))


def job_worker(queue: JobQueue, handlers: Mapping[str, JobHandler], *, concurrency: int = 2,
               poll_seconds: float = 0.5, max_attempts: int | None = 5,
               on_give_up: Mapping[str, GiveUp] | None = None,
               max_backoff: timedelta = timedelta(seconds=60)) -> BackgroundWork:
    """Background work (``Service.background``) that runs the due jobs of the handlers' kinds, up to
    ``concurrency`` at once.

    Claims run in a thread, so the event loop never waits on the database. While a handler runs its
    lease is renewed every third of the lease; a handler whose lease is lost is cancelled. A handler
    that returns has finished its job (``queue.complete`` in the transaction of its state change); if
    it did not, the job is marked DONE. A handler that raises is retried after ``backoff`` (up to
    ``max_backoff``); after ``max_attempts`` (None: never) the job is FAILED and ``on_give_up[kind]``
    runs. Once the service stops, nothing new is claimed and running jobs may finish; a job cancelled
    by the drain gives its lease back, so that a restart or another replica takes it at once.
    """
    kinds = frozenset(handlers)
    give_up = dict(on_give_up or {})
    beat_seconds = max(queue.lease.total_seconds() / 3, 0.01)
    job_context = _context_of(queue)

    async def keep_leased(run: JobRun, handler: asyncio.Task[None]) -> None:
        while True:
            await asyncio.sleep(beat_seconds)
            try:
                await asyncio.to_thread(run.heartbeat)
            except JobLost:
                log.warning("job lease lost", extra=fields(job_id=run.job.job_id, kind=run.job.kind))
                handler.cancel()
                return
            except Exception:  # the database is unreachable: try again; the lease may still hold
                log.exception("job heartbeat failed", extra=fields(job_id=run.job.job_id))

    async def failed(job: Job, exc: BaseException) -> None:
        error = _clipped(f"{type(exc).__name__}: {exc}")
        if max_attempts is not None and job.attempts >= max_attempts:
            log.error("job failed for good", exc_info=exc,
                      extra=fields(job_id=job.job_id, kind=job.kind, subject=job.subject, attempts=job.attempts))
            if await asyncio.to_thread(queue.fail, job, error) and job.kind in give_up:
                try:
                    outcome = give_up[job.kind](job, error)
                    if inspect.isawaitable(outcome):
                        await outcome
                except Exception:
                    log.exception("giving up on a job failed", extra=fields(job_id=job.job_id, kind=job.kind))
            return
        delay = backoff(job.attempts, max_backoff)
        log.warning("job failed; retrying later", exc_info=exc,
                    extra=fields(job_id=job.job_id, kind=job.kind, subject=job.subject, attempts=job.attempts,
                                 retry_seconds=delay.total_seconds()))
        await asyncio.to_thread(queue.retry_later, job, error, delay)

    def complete_alone(job: Job) -> bool:
        with queue.db.engine.begin() as connection:
            return queue.complete(connection, job)

    async def run_job(job: Job) -> str:
        """Runs the job; how its run ended (done, failed, lost, unreadable), or raises CancelledError (drained)."""
        run = JobRun(queue, job)

        async def handle() -> None:
            await handlers[job.kind](job, run)

        handler = asyncio.create_task(handle())
        keeper = asyncio.create_task(keep_leased(run, handler))
        try:
            try:
                await handler  # cancelling this task (the drain) cancels the handler too
            finally:
                keeper.cancel()
        except asyncio.CancelledError:
            current = asyncio.current_task()
            if current is not None and current.cancelling():  # drained: someone else takes the job now
                if not run.lost:
                    await asyncio.to_thread(queue.release, job)
                raise
            return "lost"  # the lease was lost: the job is someone else's
        except JobLost:
            return "lost"
        except UnknownVersion as exc:  # its data is a newer release's: not a failure, left to a replica that reads it
            log.warning("job data unreadable here; left for another replica",
                        extra=fields(job_id=job.job_id, kind=job.kind, error=str(exc)))
            if not run.lost:
                await asyncio.to_thread(queue.leave_untried, job, str(exc))
            return "unreadable"
        except Exception as exc:
            if not run.lost:
                await failed(job, exc)
            return "failed"
        if not run.lost and await asyncio.to_thread(complete_alone, job):
            log.debug("job done without completing itself", extra=fields(job_id=job.job_id, kind=job.kind))
        return "lost" if run.lost else "done"

    async def guarded(job: Job) -> None:
        started = time.monotonic()
        outcome = "unrecorded"
        try:
            with tracing.span(f"job {job.kind}", job.trace, {"job.context": job_context, "job.kind": job.kind,
                                                             "job.id": job.job_id}):
                outcome = await run_job(job)
        except asyncio.CancelledError:
            outcome = "drained"
            raise
        except Exception:  # the database failed while recording the outcome: the lease runs out
            log.exception("job outcome not recorded", extra=fields(job_id=job.job_id, kind=job.kind))
        finally:
            metrics.JOB_SECONDS.labels(job_context, job.kind, outcome).observe(time.monotonic() - started)

    async def work(stopping: asyncio.Event) -> None:
        running: set[asyncio.Task[None]] = set()
        stopped = asyncio.create_task(stopping.wait())
        failures = 0
        try:
            while not stopping.is_set():
                job = None
                if len(running) < concurrency:
                    try:
                        job = await asyncio.to_thread(queue.claim, kinds)
                        failures = 0
                    except Exception:
                        failures += 1
                        log.exception("claiming a job failed")
                if job is not None:
                    task = asyncio.create_task(guarded(job))
                    running.add(task)
                    task.add_done_callback(running.discard)
                    continue
                # Nothing to claim (or no room): wait for the next poll, a job's end, or the stop.
                await asyncio.wait({stopped, *running}, timeout=poll_seconds * 2 ** min(failures, 4),
                                   return_when=asyncio.FIRST_COMPLETED)
            if running:  # stopping: running jobs finish, within the grace the drain gives
                await asyncio.wait(set(running))
        finally:
            stopped.cancel()
            left = set(running)
            if left:  # cancelled by the drain: the jobs give their leases back
                for task in left:
                    task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await asyncio.wait(left)

    return work


def _context_of(queue: JobQueue) -> str:
    return queue.table.name.removesuffix("_job")


def measure_queue(queue: JobQueue, kinds: Collection[str], seconds: float = 15.0) -> BackgroundWork:
    """Background work that counts the pending jobs of each kind every ``seconds`` (``cloudimg_jobs_pending``):
    one indexed COUNT, in a thread, never one per scrape."""
    job_context = _context_of(queue)
    gauges = {kind: metrics.JOBS_PENDING.labels(job_context, kind) for kind in kinds}

    async def count() -> None:
        pending = await asyncio.to_thread(queue.pending_by_kind)
        for kind in pending.keys() - gauges.keys():
            gauges[kind] = metrics.JOBS_PENDING.labels(job_context, kind)
        for kind, gauge in gauges.items():
            gauge.set(pending.get(kind, 0))

    return every(seconds, "job queue depth", count)
