"""Wires the catalog: database, seed data, servicer. The one place that picks real pieces."""

from __future__ import annotations

from pathlib import Path
from functools import partial

from catalog_service.adapters.tables import TABLES
from catalog_service.domain import seed
from catalog_service.entrypoints.servicer import CatalogServicer
from catalog_service.service_layer.unit_of_work import CatalogUnitOfWork
from catalog_service.settings import CatalogSettings
from chassis.db import Database
from chassis.migrations import migrate
from chassis.server import Service, internal_service
from cloudimg.catalog.v1 import catalog_service_pb2, catalog_service_pb2_grpc

SERVICE_NAME = catalog_service_pb2.DESCRIPTOR.services_by_name["CatalogService"].full_name


async def bootstrap(settings: CatalogSettings) -> Service:
    """Migrates the tables, adds what is missing of the seed, and builds the servicer."""
    db = Database(settings.database_url)
    migrate(db, Path(__file__).parent, "catalog", TABLES)
    new_uow = partial(CatalogUnitOfWork, db)
    with new_uow() as uow:
        uow.images.add_missing_regions(seed.REGIONS)
        uow.images.add_missing_images(seed.seed_images())
        if settings.seed_demo_images:
            uow.images.add_missing_images(seed.demo_custom_images())
        uow.commit()
    with new_uow(read_only=True) as uow:
        regions = {r.region_id: r for r in uow.images.regions()}
    servicer = CatalogServicer(regions, new_uow)
    return internal_service(
        settings.internal_token.get_secret_value(), db,
        (catalog_service_pb2_grpc.add_CatalogServiceServicer_to_server, servicer, SERVICE_NAME),
    )
