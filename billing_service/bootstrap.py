"""Wires the billing context: price book, database and servicer."""

from __future__ import annotations

from pathlib import Path
from functools import partial

from billing_service.adapters.tables import TABLES
from billing_service.domain.price_book import PriceBookError, load_price_book
from billing_service.entrypoints.servicer import BillingServicer
from billing_service.service_layer.unit_of_work import BillingUnitOfWork
from billing_service.settings import BillingSettings
from chassis.db import Database
from chassis.migrations import migrate
from chassis.server import Service, internal_service
from chassis.settings import SettingsError
from cloudimg.billing.v1 import billing_service_pb2, billing_service_pb2_grpc

SERVICE_NAME = billing_service_pb2.DESCRIPTOR.services_by_name["BillingService"].full_name


async def bootstrap(settings: BillingSettings) -> Service:
    try:
        book = load_price_book(settings.price_book_path)
    except PriceBookError as exc:
        raise SettingsError(f"BILLING_PRICE_BOOK_PATH: {exc}") from exc
    db = Database(settings.database_url)
    migrate(db, Path(__file__).parent, "billing", TABLES)
    servicer = BillingServicer(book, partial(BillingUnitOfWork, db))
    return internal_service(
        settings.internal_token.get_secret_value(), db,
        (billing_service_pb2_grpc.add_BillingServiceServicer_to_server, servicer, SERVICE_NAME),
    )
