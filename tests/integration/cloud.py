"""The four services as real in-process servers, each on a database of its own, for integration tests."""

from __future__ import annotations

import tempfile
from collections.abc import Iterable, Mapping
from datetime import UTC, datetime
from functools import partial
from pathlib import Path
from typing import Any, TypedDict, Unpack

from cloudimg.gateway.v1 import instance_service_pb2 as instance_pb
from pydantic import SecretStr

from billing_service.bootstrap import bootstrap as billing_bootstrap
from billing_service.settings import BillingSettings
from catalog_service.bootstrap import bootstrap as catalog_bootstrap
from catalog_service.domain.seed import seed_image_id
from catalog_service.settings import CatalogSettings
from chassis.clock import Clock
from gateway.bootstrap import bootstrap as gateway_bootstrap
from gateway.bootstrap import open_database
from gateway.domain.api_keys import Account
from gateway.service_layer.accounts import issue_demo_keys
from gateway.settings import GatewaySettings
from sharing_service.bootstrap import bootstrap as sharing_bootstrap
from sharing_service.settings import SharingSettings
from tests.conftest import INTERNAL_TOKEN, ServerFactory

SERVICES = ("catalog", "sharing", "billing", "gateway")
# The internal token as the settings hold it.
INTERNAL_SECRET = SecretStr(INTERNAL_TOKEN)


class RunOptions(TypedDict, total=False):
    """The fields of a RunInstancesRequest but its region, image, instance type and count."""

    charge_type: instance_pb.ChargeType.ValueType
    period_months: int
    system_disk_gb: int
    instance_name: str
    client_token: str
    dry_run: bool


class RunFields(RunOptions, total=False):
    """The fields of a RunInstancesRequest."""

    region: str
    image_id: str
    instance_type: str
    instance_count: int


def run_request(**overrides: Unpack[RunFields]) -> instance_pb.RunInstancesRequest:
    """A launch of one S5.MEDIUM4 of the public Ubuntu image in ap-guangzhou, but for the overrides."""
    fields: RunFields = {"region": "ap-guangzhou", "image_id": seed_image_id("ap-guangzhou", "ubuntu-2204-x86"),
                         "instance_type": "S5.MEDIUM4", "instance_count": 1}
    fields.update(overrides)
    return instance_pb.RunInstancesRequest(**fields)


async def start_services(serve: ServerFactory, urls: dict[str, str], accounts: Iterable[Account] = (),
                         clock: Clock | None = None,
                         catalog_settings: dict[str, Any] | None = None,
                         billing_settings: dict[str, Any] | None = None,
                         addr_overrides: Mapping[str, str] | None = None) -> tuple[dict[str, str], dict[str, str]]:
    """Starts catalog, sharing, billing and a gateway composing them (downstream addresses may be
    overridden, e.g. with one where nothing listens: ``addr_overrides={"billing": ...}``); returns every
    address and the demo API keys.
    ``accounts`` are added beside the demo accounts; ``clock`` is the time of the catalog, billing and the
    gateway (a FakeClock moves it in tests)."""
    addrs = {
        "catalog": await serve(partial(catalog_bootstrap, clock=clock), CatalogSettings(
            database_url=urls["catalog"], internal_token=INTERNAL_SECRET,
            image_store_dir=Path(tempfile.mkdtemp(prefix="cloudimg-store-")), **(catalog_settings or {}))),
        "sharing": await serve(sharing_bootstrap, SharingSettings(database_url=urls["sharing"],
                                                                  internal_token=INTERNAL_SECRET)),
        "billing": await serve(partial(billing_bootstrap, clock=clock),
                               BillingSettings(database_url=urls["billing"], internal_token=INTERNAL_SECRET,
                                               **(billing_settings or {}))),
    }
    addrs.update(addr_overrides or {})
    db, new_uow = open_database(urls["gateway"])
    keys = {name: entry["api_key"] for name, entry in issue_demo_keys(new_uow).items()}
    with new_uow() as uow:
        uow.accounts.add_missing(list(accounts), datetime.now(UTC))
        uow.commit()
    db.dispose()
    addrs["gateway"] = await start_gateway(serve, urls["gateway"], addrs, clock)
    return addrs, keys


async def start_gateway(serve: ServerFactory, database_url: str, addrs: dict[str, str],
                        clock: Clock | None = None) -> str:
    """A gateway (another replica, when one runs already on the database) composing the given services."""
    return await serve(partial(gateway_bootstrap, clock=clock), GatewaySettings(
        database_url=database_url, internal_token=INTERNAL_SECRET, catalog_addr=addrs["catalog"],
        sharing_addr=addrs["sharing"], billing_addr=addrs["billing"], default_deadline_seconds=5))
