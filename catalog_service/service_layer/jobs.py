"""The catalog's durable jobs: they put an image's bytes in its region's image store.

A job is written with the image it makes (see lifecycle.py), claimed by one replica under a lease
and taken over by any other when the lease runs out (chassis.jobs). Its work is idempotent: the store
is content-addressed, so a job that a SIGKILL interrupted starts again from the first byte and ends
with the same blob. The bytes move in a worker thread; the event loop keeps answering calls. The job
ends in the same transaction that makes its image NORMAL or failed, and only while it still holds
the lease: a replica that lost it changes nothing.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

from catalog_service.adapters.image_store import BlobMissing, ChecksumMismatch, ImageStore, TooLarge
from catalog_service.adapters.repository import CREATE_JOB, IMPORT_JOB, SYNC_JOB, ImportJob, image_job
from catalog_service.adapters.sources import ImportPolicy, ImportRefused, inspecting, open_source
from catalog_service.domain.model import ImageState
from catalog_service.service_layer.lifecycle import size_gb_of
from catalog_service.service_layer.unit_of_work import CatalogUnitOfWork
from chassis.jobs import Job, JobQueue, JobRun
from chassis.logs import fields

log = logging.getLogger("catalog.jobs")

# How often a running job writes its progress on the image (and heartbeats its lease) at most.
PROGRESS_EVERY_SECONDS = 0.5
# The progress shown while an import of unknown size streams: it approaches, never reaches, 95 %.
_IMPORT_SCALE_BYTES = 16 << 20


@dataclass
class ImageJobs:
    """Runs the catalog's jobs; bootstrap hands ``handlers`` and ``give_up`` to a chassis job worker."""

    new_uow: Callable[..., CatalogUnitOfWork]
    queue: JobQueue
    store: ImageStore
    import_policy: ImportPolicy

    @property
    def handlers(self) -> dict[str, Callable[[Job, JobRun], Any]]:
        return {CREATE_JOB: self.run, IMPORT_JOB: self.run, SYNC_JOB: self.run}

    @property
    def give_up(self) -> dict[str, Callable[[Job, str], None]]:
        return {kind: self._gave_up for kind in (CREATE_JOB, IMPORT_JOB, SYNC_JOB)}

    async def run(self, job: Job, run: JobRun) -> None:
        await asyncio.to_thread(self._run, job, run)

    def _run(self, job: Job, run: JobRun) -> None:
        # Data this release cannot read (a newer release's) raises UnknownVersion before anything is done: the
        # worker tries the job again later, on whichever replica claims it.
        data = image_job(job.kind, job.data)
        image_id = data.image_id
        with self.new_uow(read_only=True) as uow:
            image = uow.images.get(image_id)
        if image is None or not image.state.busy:  # deleted, or finished by a replica before us
            self._end(job, image_id, None)
            return
        progress = _Progress(self, job, run, image_id)
        try:
            if isinstance(data, ImportJob):
                outcome = self._import(job, data, progress)
            else:
                blob = self.store.copy(data.region, data.checksum, image.region,
                                       progress=progress.of_total(self.store.size(data.region, data.checksum)))
                outcome = {"state": ImageState.NORMAL.value, "checksum_sha256": blob.checksum}
        except BlobMissing:
            outcome = _failed(job, "SOURCE_BYTES_MISSING: the bytes to copy are no longer in the image store")
        except ChecksumMismatch as exc:
            outcome = _failed(job, f"CHECKSUM_MISMATCH: {exc}")
        self._end(job, image_id, outcome)

    def _import(self, job: Job, data: ImportJob, progress: _Progress) -> dict[str, object]:
        try:
            stream, verdict = inspecting(open_source(data.source_uri, self.import_policy), data.format.lower())
            blob = self.store.write(data.region, stream, progress=progress.unbounded,
                                    max_bytes=self.import_policy.max_bytes)
            inspection = verdict()
        except ImportRefused as refused:
            return _failed(job, f"{refused.reason}: {refused.message}")
        except TooLarge:
            return _failed(job, f"SOURCE_TOO_LARGE: the image is over {self.import_policy.max_bytes} bytes")
        return {"state": ImageState.NORMAL.value, "checksum_sha256": blob.checksum,
                "size_gb": size_gb_of(inspection.virtual_size)}

    def _end(self, job: Job, image_id: str, outcome: dict[str, object] | None) -> None:
        """Ends the job, and records its outcome on the image, in one transaction, if it still holds
        the lease (a replica that took it over decides instead)."""
        with self.new_uow() as uow:
            if not self.queue.complete(uow.connection, job):
                log.info("job lost its lease before it ended", extra=fields(job_id=job.job_id, image_id=image_id))
                return
            if outcome is not None:
                current = uow.images.get(image_id)
                if current is not None and current.state.busy:
                    uow.images.change(image_id, progress_percent=100 if outcome["state"] == "NORMAL" else
                                      current.progress_percent, **outcome)
            uow.commit()
        if outcome is not None:
            log.info("image job ended", extra=fields(job_id=job.job_id, image_id=image_id, kind=job.kind,
                                                     state=outcome["state"]))

    def _gave_up(self, job: Job, error: str) -> None:
        """A job that failed again and again: its image fails, saying so. The image is the job's subject (in
        every release), so that one whose data this release could not read fails too, not busy for ever."""
        image_id = job.subject
        with self.new_uow() as uow:
            current = uow.images.get(image_id)
            if current is not None and current.state.busy:
                uow.images.change(image_id, **_failed(job, f"INTERNAL: gave up after {job.attempts} attempts"))
                uow.commit()
        log.error("image job gave up", extra=fields(job_id=job.job_id, image_id=image_id, error=error))

    def set_progress(self, image_id: str, percent: int) -> None:
        with self.new_uow() as uow:
            uow.images.change(image_id, progress_percent=percent)
            uow.commit()

    def collect_garbage(self, min_age: timedelta) -> int:
        """Removes the bytes no image refers to and no pending job will read."""
        with self.new_uow(read_only=True) as uow:
            referenced = uow.images.stored_blobs() | uow.images.blobs_jobs_will_read()
        removed = self.store.collect_garbage(referenced, min_age=min_age)
        if removed:
            log.info("image store garbage collected", extra=fields(blobs=len(removed)))
        return len(removed)


def _failed(job: Job, reason: str) -> dict[str, object]:
    state = ImageState.IMPORT_FAILED if job.kind == IMPORT_JOB else ImageState.CREATE_FAILED
    return {"state": state.value, "state_reason": reason[:512]}


class _Progress:
    """Turns bytes copied into the image's progress_percent and the job's heartbeat, at most every
    PROGRESS_EVERY_SECONDS; raises JobLost (from the heartbeat) to abort a copy whose lease is gone."""

    def __init__(self, jobs: ImageJobs, job: Job, run: JobRun, image_id: str):
        self._jobs, self._run, self._image_id = jobs, run, image_id
        self._last = 0.0
        self._percent = -1
        self._lock = threading.Lock()

    def of_total(self, total: int) -> Callable[[int], None]:
        return lambda done: self._report(99 if total <= 0 else min(99, done * 100 // total))

    def unbounded(self, done: int) -> None:
        self._report(min(95, int(95 * done / (done + _IMPORT_SCALE_BYTES))))

    def _report(self, percent: int) -> None:
        now = time.monotonic()
        with self._lock:
            if now - self._last < PROGRESS_EVERY_SECONDS or percent == self._percent:
                return
            self._last, self._percent = now, percent
        self._run.heartbeat(percent)
        self._jobs.set_progress(self._image_id, percent)
