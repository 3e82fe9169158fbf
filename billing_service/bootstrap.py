"""Wires the billing context: price book, database, clock, servicer and the usage settlement. The one
place that picks real pieces."""

from __future__ import annotations

import asyncio
from functools import partial
from pathlib import Path

from cloudimg.billing.v1 import billing_service_pb2, billing_service_pb2_grpc

from billing_service.adapters.tables import TABLES
from billing_service.domain.price_book import PriceBookError, load_price_book
from billing_service.entrypoints.servicer import BillingServicer
from billing_service.service_layer import usage
from billing_service.service_layer.unit_of_work import BillingUnitOfWork
from billing_service.settings import BillingSettings
from chassis.clock import Clock, SystemClock
from chassis.db import Database
from chassis.migrations import migrate
from chassis.server import Service, every, internal_service
from chassis.settings import SettingsError

SERVICE_NAME = billing_service_pb2.DESCRIPTOR.services_by_name["BillingService"].full_name


async def bootstrap(settings: BillingSettings, clock: Clock | None = None) -> Service:
    clock = clock or SystemClock()
    try:
        book = load_price_book(settings.price_book_path)
    except PriceBookError as exc:
        raise SettingsError(f"BILLING_PRICE_BOOK_PATH: {exc}") from exc
    db = Database(settings.database_url)
    migrate(db, Path(__file__).parent, "billing", TABLES)
    new_uow = partial(BillingUnitOfWork, db)
    servicer = BillingServicer(book, new_uow, clock)
    service = internal_service(
        settings, db,
        (billing_service_pb2_grpc.add_BillingServiceServicer_to_server, servicer, SERVICE_NAME),
    )
    # Every replica settles; they split the due segments between them (service_layer.usage).
    service.background = [
        every(settings.usage_settle_interval_seconds, "usage settlement",
              lambda: asyncio.to_thread(usage.settle_usage, new_uow=new_uow, clock=clock)),
    ]
    return service
