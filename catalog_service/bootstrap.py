"""Wires the catalog: database, image store, seed data, servicer, job worker. The one place that picks
real pieces."""

from __future__ import annotations

import asyncio
from datetime import timedelta
from functools import partial
from pathlib import Path

from cloudimg.catalog.v1 import catalog_service_pb2, catalog_service_pb2_grpc

from catalog_service.adapters.image_store import ImageStore
from catalog_service.adapters.sources import ImportPolicy
from catalog_service.adapters.tables import JOBS, TABLES
from catalog_service.domain import seed
from catalog_service.entrypoints.servicer import CatalogServicer
from catalog_service.service_layer.jobs import ImageJobs
from catalog_service.service_layer.lifecycle import Lifecycle, QuotaLimits
from catalog_service.service_layer.unit_of_work import CatalogUnitOfWork
from catalog_service.settings import CatalogSettings, store_dir
from chassis.clock import Clock, SystemClock
from chassis.db import Database
from chassis.jobs import JobQueue, job_worker, measure_queue, new_owner
from chassis.migrations import migrate
from chassis.server import Service, every, internal_service

SERVICE_NAME = catalog_service_pb2.DESCRIPTOR.services_by_name["CatalogService"].full_name


def _seed_store(store: ImageStore) -> None:
    for region, checksum, data in seed.seed_disks():
        if not store.has(region, checksum):
            store.put_bytes(region, data)


async def bootstrap(settings: CatalogSettings, clock: Clock | None = None) -> Service:
    """Migrates the tables, adds what is missing of the seed (rows and bytes), and builds the servicer
    and the job worker."""
    clock = clock or SystemClock()
    db = Database(settings.database_url)
    migrate(db, Path(__file__).parent, "catalog", TABLES)
    new_uow = partial(CatalogUnitOfWork, db)
    store = ImageStore(store_dir(settings), settings.copy_bytes_per_second or None)
    await asyncio.to_thread(_seed_store, ImageStore(store_dir(settings)))  # seeding is not throttled
    seeded = seed.seed_images() + (seed.demo_custom_images() if settings.seed_demo_images else [])
    with new_uow() as uow:
        uow.images.add_missing_regions(seed.REGIONS)
        uow.images.add_missing_images(seeded)
        uow.images.fill_missing_checksums({i.image_id: i.checksum_sha256 for i in seeded})
        uow.commit()
    with new_uow(read_only=True) as uow:
        regions = {r.region_id: r for r in uow.images.regions()}
    policy = ImportPolicy(import_root=settings.import_root, allowed_sources=tuple(settings.import_allowed_sources),
                          max_bytes=settings.import_max_bytes)
    lifecycle = Lifecycle(new_uow, regions, policy, QuotaLimits(settings.custom_image_quota,
                                                                 settings.daily_operation_quota), clock)
    queue = JobQueue(db, JOBS, clock, new_owner("catalog"), lease=timedelta(seconds=settings.job_lease_seconds))
    jobs = ImageJobs(new_uow, queue, store, policy)
    servicer = CatalogServicer(regions, new_uow, lifecycle)
    service = internal_service(
        settings, db,
        (catalog_service_pb2_grpc.add_CatalogServiceServicer_to_server, servicer, SERVICE_NAME),
    )
    min_age = timedelta(seconds=settings.gc_min_age_seconds)
    service.background = [
        job_worker(queue, jobs.handlers, concurrency=settings.job_concurrency, on_give_up=jobs.give_up),
        every(settings.gc_interval_seconds, "image store garbage collection",
              lambda: asyncio.to_thread(jobs.collect_garbage, min_age)),
        measure_queue(queue, jobs.handlers),
    ]
    return service
