"""Wires the gateway: database, the three downstream channels, servicers, API keys, the worker of its durable
operations."""

from __future__ import annotations

import logging
from datetime import timedelta
from functools import partial
from pathlib import Path

from cloudimg.billing.v1 import billing_service_pb2_grpc
from cloudimg.catalog.v1 import catalog_service_pb2_grpc
from cloudimg.gateway.v1 import (
    account_service_pb2,
    account_service_pb2_grpc,
    image_service_pb2,
    image_service_pb2_grpc,
    image_share_service_pb2,
    image_share_service_pb2_grpc,
    instance_service_pb2,
    instance_service_pb2_grpc,
)
from cloudimg.sharing.v1 import sharing_service_pb2_grpc
from google.protobuf.descriptor import FileDescriptor

from chassis import tls
from chassis.clients import Downstream
from chassis.clock import Clock, SystemClock
from chassis.db import Database
from chassis.jobs import JobQueue, measure_queue
from chassis.migrations import migrate
from chassis.server import Service, every, servicers
from gateway.adapters.contexts import Billing, Catalog, Sharing
from gateway.adapters.tables import JOBS, TABLES
from gateway.entrypoints.servicers import AccountServicer, ImageServicer, ImageShareServicer, InstanceServicer
from gateway.service_layer import background, launches
from gateway.service_layer.accounts import ApiKeyAuthenticator
from gateway.service_layer.dependencies import Dependencies, ReferenceData
from gateway.service_layer.operations import REPLICA
from gateway.service_layer.unit_of_work import GatewayUnitOfWork
from gateway.settings import GatewaySettings

log = logging.getLogger("gateway")

# How often launches without a job are looked for and old jobs pruned (besides at start-up).
_TEND_JOBS_SECONDS = 3600.0
# How often the metrics' running instances and pending jobs are counted.
_MEASURE_SECONDS = 15.0


def _name(file: FileDescriptor, service: str) -> str:
    return file.services_by_name[service].full_name


def open_database(url: str) -> tuple[Database, partial[GatewayUnitOfWork]]:
    db = Database(url)
    migrate(db, Path(__file__).parent, "gateway", TABLES)
    return db, partial(GatewayUnitOfWork, db)


async def bootstrap(settings: GatewaySettings, clock: Clock | None = None) -> Service:
    db, new_uow = open_database(settings.database_url)
    token = settings.internal_token.get_secret_value() if settings.internal_token else None
    credentials = None
    if settings.internal_tls:  # mutual TLS: the gateway's client certificate is its credential
        credentials = tls.channel_credentials(settings.internal_ca_file, settings.internal_cert_file,
                                              settings.internal_key_file)
    deadline = settings.default_deadline_seconds
    downstreams = [
        Downstream(name, addr, token, stub, deadline, credentials) for name, addr, stub in (
            ("catalog", settings.catalog_addr, catalog_service_pb2_grpc.CatalogServiceStub),
            ("sharing", settings.sharing_addr, sharing_service_pb2_grpc.SharingServiceStub),
            ("billing", settings.billing_addr, billing_service_pb2_grpc.BillingServiceStub),
        )
    ]
    catalog, sharing, billing = Catalog(downstreams[0]), Sharing(downstreams[1]), Billing(downstreams[2])
    deps = Dependencies(catalog, sharing, billing, ReferenceData(catalog, billing), new_uow, clock or SystemClock())
    queue = JobQueue(db, JOBS, deps.clock, REPLICA, lease=timedelta(seconds=settings.job_lease_seconds))
    launches.adopt_unsettled_launches(deps)  # before serving: nothing left open by an older gateway is lost

    async def close() -> None:
        for downstream in downstreams:
            await downstream.close()
        db.dispose()

    return Service(
        register=servicers(
            (image_service_pb2_grpc.add_ImageServiceServicer_to_server, ImageServicer(deps),
             _name(image_service_pb2.DESCRIPTOR, "ImageService")),
            (image_share_service_pb2_grpc.add_ImageShareServiceServicer_to_server, ImageShareServicer(deps),
             _name(image_share_service_pb2.DESCRIPTOR, "ImageShareService")),
            (instance_service_pb2_grpc.add_InstanceServiceServicer_to_server, InstanceServicer(deps),
             _name(instance_service_pb2.DESCRIPTOR, "InstanceService")),
            (account_service_pb2_grpc.add_AccountServiceServicer_to_server, AccountServicer(deps),
             _name(account_service_pb2.DESCRIPTOR, "AccountService")),
        ),
        authenticate=ApiKeyAuthenticator(new_uow, settings.api_key_cache_seconds),
        close=close,
        background=[
            background.operations_worker(deps, queue, timedelta(seconds=settings.reconcile_interval_seconds)),
            every(_TEND_JOBS_SECONDS, "tend jobs", lambda: background.tend_jobs(deps, queue)),
            every(_MEASURE_SECONDS, "count running instances", lambda: background.measure_instances(deps)),
            measure_queue(queue, background.JOB_KINDS, _MEASURE_SECONDS),
        ],
    )
