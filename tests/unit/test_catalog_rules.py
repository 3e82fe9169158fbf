"""The catalog's lifecycle rules and handlers, on a real SQLite file with an injected clock."""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from functools import partial
from pathlib import Path

import pytest

from catalog_service.adapters.image_store import ImageStore
from catalog_service.adapters.repository import CREATE_JOB, SYNC_JOB
from catalog_service.adapters.sources import ImportPolicy
from catalog_service.adapters.tables import JOBS, TABLES
from catalog_service.domain import seed
from catalog_service.domain.model import Image, ImageState, OsType, Quota, check_name, platform_of
from catalog_service.service_layer import lifecycle
from catalog_service.service_layer.jobs import ImageJobs
from catalog_service.service_layer.unit_of_work import IMAGES_RESPONSE, CatalogUnitOfWork
from chassis.clock import FakeClock
from chassis.db import Database
from chassis.errors import FailedPrecondition, InvalidArgument, ResourceExhausted
from chassis.jobs import JobQueue
from chassis.migrations import migrate

GZ, SH = "ap-guangzhou", "ap-shanghai"
CAROL = "100000000003"
UBUNTU = seed.seed_image_id(GZ, "ubuntu-2204-x86")


World = tuple[lifecycle.Lifecycle, ImageJobs, ImageStore]


@pytest.fixture
def world(tmp_path: Path) -> Iterator[World]:
    db = Database(f"sqlite:///{tmp_path}/catalog.db")
    migrate(db, Path(lifecycle.__file__).parent.parent, "catalog", TABLES)
    new_uow = partial(CatalogUnitOfWork, db)
    with new_uow() as uow:
        uow.images.add_missing_regions(seed.REGIONS)
        uow.images.add_missing_images(seed.seed_images())
        uow.commit()
    store = ImageStore(tmp_path / "images")
    for region, _, data in seed.seed_disks():
        store.put_bytes(region, data)
    clock = FakeClock(datetime(2026, 11, 28, 23, 59, tzinfo=UTC))
    policy = ImportPolicy(import_root=tmp_path, allowed_sources=(), max_bytes=1 << 20)
    deps = lifecycle.Lifecycle(new_uow, {r.region_id: r for r in seed.REGIONS}, policy,
                               lifecycle.QuotaLimits(custom_images=3, daily_operations=2), clock)
    queue = JobQueue(db, JOBS, clock, "unit-test")
    yield deps, ImageJobs(new_uow, queue, store, policy), store
    db.dispose()


def _create(deps: lifecycle.Lifecycle, name: str, dry_run: bool = False) -> Image:
    request = lifecycle.CreateRequest(region=GZ, instance_id="ins-0000000a", name=name, description="",
                                      base_image_id=UBUNTU, size_gb=20, dry_run=dry_run)
    return lifecycle.create_image(CAROL, request, deps)


def test_quota_names_the_quota_its_limit_and_its_use() -> None:
    quota = Quota(10, 10, 5, 1)
    with pytest.raises(ResourceExhausted) as over:
        quota.check(1, 1, GZ)
    assert over.value.reason == "CUSTOM_IMAGE_QUOTA_EXCEEDED"
    assert over.value.metadata == {"quota": "custom_images", "region": GZ, "limit": "10", "used": "10"}
    with pytest.raises(ResourceExhausted) as daily:
        Quota(10, 0, 5, 5).check(1, 1, GZ)
    assert daily.value.violations[0].subject == f"daily-image-operations:{GZ}"
    Quota(10, 9, 5, 4).check(1, 1, GZ)


@pytest.mark.parametrize("name", ["", " padded", "x" * 61, "trailing "])
def test_names_are_1_to_60_characters_without_outer_spaces(name: str) -> None:
    with pytest.raises(InvalidArgument):
        check_name(name)


def test_an_imported_image_is_listed_under_the_first_word_of_its_os() -> None:
    assert platform_of("Ubuntu 24.04 LTS", OsType.LINUX) == "Ubuntu"
    assert platform_of("", OsType.WINDOWS) == "Windows"


def test_the_day_boundary_is_utc_midnight_of_the_clock(world: World) -> None:
    deps, _, _ = world
    _create(deps, "a")
    _create(deps, "b")
    with pytest.raises(ResourceExhausted) as spent:
        _create(deps, "c")
    assert spent.value.reason == "DAILY_OPERATION_QUOTA_EXCEEDED"
    deps.clock.advance(minutes=1)  # type: ignore[attr-defined]
    _create(deps, "c")
    assert lifecycle.image_quota(CAROL, GZ, deps) == Quota(3, 3, 2, 1)
    with pytest.raises(ResourceExhausted) as full:
        _create(deps, "d")
    assert full.value.reason == "CUSTOM_IMAGE_QUOTA_EXCEEDED"


def test_a_dry_run_checks_everything_and_writes_nothing(world: World) -> None:
    deps, _, _ = world
    image = _create(deps, "dry", dry_run=True)
    assert image.state is ImageState.CREATING
    assert image.base_image_id == UBUNTU
    assert lifecycle.image_quota(CAROL, GZ, deps).daily_operation_used == 0
    with deps.new_uow(read_only=True) as uow:
        assert uow.images.get(image.image_id) is None
        assert uow.connection.execute(JOBS.select()).first() is None


def test_an_image_and_its_job_are_written_together(world: World) -> None:
    deps, _jobs, _ = world
    image = _create(deps, "web")
    with deps.new_uow(read_only=True) as uow:
        (job,) = uow.connection.execute(JOBS.select()).all()
    assert job.subject == image.image_id
    assert job.kind == CREATE_JOB
    data = json.loads(job.payload)["data"]
    assert data["checksum"] == seed.seed_checksum("ubuntu-2204-x86")
    assert data["region"] == GZ


def test_the_stored_response_format_reads_records_that_lack_newer_fields(world: World) -> None:
    deps, _, _ = world
    image = _create(deps, "old record")
    encoded = IMAGES_RESPONSE.encode([image])
    del encoded[0]["state_reason"], encoded[0]["checksum_sha256"]  # written before these fields existed
    (decoded,) = IMAGES_RESPONSE.decode(1, json.loads(json.dumps(encoded)))
    assert decoded == dataclasses.replace(image, state_reason="", checksum_sha256="")


def test_garbage_collection_keeps_the_bytes_a_pending_job_will_copy(world: World) -> None:
    deps, jobs, store = world
    source = seed.seed_checksum("debian-12-x86")
    orphan = store.put_bytes(GZ, b"no image refers to these bytes")
    # A sync job will copy bytes that no image row refers to any more (its source was deleted meanwhile).
    with deps.new_uow() as uow:
        uow.images.change(seed.seed_image_id(GZ, "debian-12-x86"), checksum_sha256="")
        uow.commit()
    _create(deps, "keeps ubuntu")
    with deps.new_uow() as uow:
        from chassis import jobs as chassis_jobs

        chassis_jobs.enqueue(uow.connection, JOBS, SYNC_JOB, "img-00000001",
                             {"image_id": "img-00000001", "region": GZ, "checksum": source}, deps.clock.now())
        uow.commit()
    removed = jobs.collect_garbage(timedelta(0))
    assert removed == 1
    assert store.has(GZ, source)
    assert not store.has(GZ, orphan.checksum)


def test_sync_refuses_an_image_that_is_not_ready(world: World) -> None:
    deps, _, _ = world
    image = _create(deps, "not yet")
    with pytest.raises(FailedPrecondition) as not_ready:
        lifecycle.sync_image(CAROL, image.image_id, [SH], "", False, deps)
    assert not_ready.value.reason == "IMAGE_NOT_READY"


async def test_a_create_job_copies_the_base_bytes_and_finishes_the_image(world: World) -> None:
    deps, jobs, _ = world
    image = _create(deps, "web")
    job = jobs.queue.claim([CREATE_JOB])
    assert job is not None
    from chassis.jobs import JobRun

    await jobs.run(job, JobRun(jobs.queue, job))
    with deps.new_uow(read_only=True) as uow:
        done = uow.images.get(image.image_id)
    assert done is not None
    assert done.state is ImageState.NORMAL
    assert done.progress_percent == 100
    assert done.checksum_sha256 == seed.seed_checksum("ubuntu-2204-x86")
    record = jobs.queue.get(job.job_id)
    assert record is not None
    assert record.state == "DONE"
