"""Wires the sharing context: database and servicer."""

from __future__ import annotations

from functools import partial
from pathlib import Path

from cloudimg.sharing.v1 import sharing_service_pb2, sharing_service_pb2_grpc

from chassis.db import Database
from chassis.migrations import migrate
from chassis.server import Service, internal_service
from sharing_service.adapters.tables import TABLES
from sharing_service.entrypoints.servicer import SharingServicer
from sharing_service.service_layer.unit_of_work import SharingUnitOfWork
from sharing_service.service_layer.verdicts import Leases
from sharing_service.settings import SharingSettings

SERVICE_NAME = sharing_service_pb2.DESCRIPTOR.services_by_name["SharingService"].full_name


async def bootstrap(settings: SharingSettings) -> Service:
    db = Database(settings.database_url)
    migrate(db, Path(__file__).parent, "sharing", TABLES)
    servicer = SharingServicer(partial(SharingUnitOfWork, db), leases=Leases(settings.verdict_lease_seconds))
    return internal_service(
        settings, db,
        (sharing_service_pb2_grpc.add_SharingServiceServicer_to_server, servicer, SERVICE_NAME),
    )
