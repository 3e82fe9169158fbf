"""A catalog SIGKILLed in the middle of an import and of a sync loses no job: after a restart every
job finishes, with the right bytes under the right checksum, and nothing half-written under a real name."""

from __future__ import annotations

import asyncio
import hashlib
import os
from datetime import UTC, datetime
from pathlib import Path

import grpc
import pytest
from cloudimg.catalog.v1 import catalog_service_pb2 as pb
from cloudimg.catalog.v1 import catalog_service_pb2_grpc as pb_grpc

from catalog_service.adapters.tables import JOBS
from chassis.clock import SystemClock
from chassis.db import Database
from chassis.jobs import JobQueue
from devtools.stack import Stack
from tests.conftest import ALICE
from tests.fault.conftest import Figures

GZ, SH = "ap-guangzhou", "ap-shanghai"
DISK_BYTES = 6 << 20
RATE = 2 << 20  # bytes per second: a copy takes about three seconds


STACK_ENV = {"CATALOG_COPY_BYTES_PER_SECOND": str(RATE), "CATALOG_JOB_LEASE_SECONDS": "2"}


@pytest.fixture
def stack(own_stack: Stack) -> Stack:
    return own_stack


def _blobs(store: Path, region: str) -> set[str]:
    return {p.name for p in (store / region / "sha256").glob("*/*") if not p.name.startswith(".")}


async def _wait(stub: pb_grpc.CatalogServiceStub, meta: tuple[tuple[str, str], ...], image_id: str,
                timeout: float = 60) -> pb.Image:
    deadline = asyncio.get_running_loop().time() + timeout
    while True:
        try:
            image: pb.Image = (await stub.GetImage(pb.GetImageRequest(image_id=image_id), metadata=meta,
                                                   timeout=5)).image
            if image.state not in (pb.IMAGE_STATE_IMPORTING, pb.IMAGE_STATE_SYNCING, pb.IMAGE_STATE_CREATING):
                return image
        except grpc.aio.AioRpcError as error:  # the catalog is restarting
            if error.code() != grpc.StatusCode.UNAVAILABLE:
                raise AssertionError(error) from error
        assert asyncio.get_running_loop().time() < deadline, f"{image_id} never finished"
        await asyncio.sleep(0.1)


async def _kill_mid_job(stack: Stack, stub: pb_grpc.CatalogServiceStub, meta: tuple[tuple[str, str], ...],
                        image_id: str) -> None:
    """Waits until the job has moved some bytes, then SIGKILLs the catalog and starts it again."""
    deadline = asyncio.get_running_loop().time() + 20
    while (await stub.GetImage(pb.GetImageRequest(image_id=image_id), metadata=meta)).image.progress_percent < 5:
        assert asyncio.get_running_loop().time() < deadline, "the job never moved"
        await asyncio.sleep(0.05)
    stack.kill("catalog")
    stack.start_service("catalog")
    await asyncio.to_thread(stack.wait, "catalog")


async def test_a_catalog_killed_mid_import_and_mid_sync_finishes_both_jobs(stack: Stack, figures: Figures) -> None:
    """An import and then a sync of a 6 MiB disk, moved at 2 MiB/s; the catalog is SIGKILLed once each
    has moved some bytes, and started again. Both jobs must finish NORMAL with the source's checksum, no
    blob may appear under that checksum before its job is done, and a replay starts nothing new."""
    disk = stack.imports_dir / "big.raw"
    disk.write_bytes(os.urandom(DISK_BYTES))
    checksum = hashlib.sha256(disk.read_bytes()).hexdigest()
    store = stack.data_dir / "images"
    channel = stack.aio_channel("catalog")
    stub = pb_grpc.CatalogServiceStub(channel)
    meta = stack.internal_metadata(ALICE)

    imported = (await stub.ImportImage(pb.ImportImageRequest(
        region=GZ, name="big", format=pb.IMAGE_FORMAT_RAW, os_name="Debian 12", os_type=pb.OS_TYPE_LINUX,
        architecture=pb.ARCHITECTURE_X86_64, source_uri=disk.as_uri(), request_id="import-big"), metadata=meta)).image
    await _kill_mid_job(stack, stub, meta, imported.image_id)
    figures.add(kills=1, jobs=1)
    assert checksum not in _blobs(store, GZ), "a half-imported image appeared under its address"
    done = await _wait(stub, meta, imported.image_id)
    assert done.state == pb.IMAGE_STATE_NORMAL, done.state_reason
    assert done.checksum_sha256 == checksum
    assert done.size_gb == 1

    copy = (await stub.SyncImage(pb.SyncImageRequest(image_id=imported.image_id, destination_regions=[SH],
                                                     request_id="sync-big"), metadata=meta)).images[0]
    await _kill_mid_job(stack, stub, meta, copy.image_id)
    figures.add(kills=1, jobs=1)
    assert checksum not in _blobs(store, SH), "a half-copied image appeared under its address"
    synced = await _wait(stub, meta, copy.image_id)
    assert synced.state == pb.IMAGE_STATE_NORMAL
    assert synced.checksum_sha256 == checksum
    blob = store / SH / "sha256" / checksum[:2] / checksum
    assert hashlib.sha256(blob.read_bytes()).hexdigest() == checksum

    # Each job ran twice: the killed attempt and the one that finished it.
    url = stack.database_urls.get("catalog", f"sqlite:///{stack.data_dir / 'catalog'}.db")
    db = Database(url)
    queue = JobQueue(db, JOBS, SystemClock(), "test-reader")
    with db.engine.connect() as connection:
        rows = connection.execute(JOBS.select().where(JOBS.c.subject.in_([imported.image_id, copy.image_id]))).all()
    records = [queue.get(r.job_id) for r in rows]
    db.dispose()
    figures.add(lost=2 - sum(1 for r in records if r is not None and r.state == "DONE"))
    assert len(records) == 2, records
    assert all(r is not None and r.state == "DONE" and r.attempts >= 2 for r in records), records
    # Replays of both requests answer the first result and start nothing new.
    again = (await stub.SyncImage(pb.SyncImageRequest(image_id=imported.image_id, destination_regions=[SH],
                                                      request_id="sync-big"), metadata=meta)).images
    assert [i.image_id for i in again] == [copy.image_id]
    assert datetime.now(UTC)  # the clock is the system's here
    await channel.close()
