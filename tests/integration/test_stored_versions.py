"""Rows that earlier releases wrote, in their exact JSON shapes (from git history), are read and replayed on
today's code, on SQLite and PostgreSQL: a launch recorded before its request carried image_allowed (commit
432bc98) answers its retry with the recorded result; a launch left PENDING by such a release, which billing
charged under the old repr() fingerprint, is settled by the gateway's job worker into RUNNING instances and
one charge; billing reads charge lines kept as a bare list and answers a retried CreateCharge whose first
charge has the old fingerprint; a job payload of the previous release runs."""

from __future__ import annotations

import asyncio
import hashlib
import json
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path

import grpc
import pytest
from sqlalchemy import create_engine, func, select

import billing_service
from billing_service.adapters.tables import CHARGES
from billing_service.adapters.tables import TABLES as BILLING_TABLES
from catalog_service.domain.seed import seed_image_id
from chassis.db import Database
from chassis.migrations import migrate
from cloudimg.billing.v1 import billing_service_pb2 as billing_pb
from cloudimg.billing.v1 import billing_service_pb2_grpc as billing_grpc
from cloudimg.gateway.v1 import instance_service_pb2 as pb
from cloudimg.gateway.v1 import instance_service_pb2_grpc as pb_grpc
from gateway.adapters.tables import INSTANCES, JOBS, LAUNCHES
from gateway.bootstrap import open_database
from tests.conftest import ALICE, internal_metadata
from tests.integration.cloud import SERVICES, start_services

UBUNTU = seed_image_id("ap-guangzhou", "ubuntu-2204-x86")
LONG_AGO = datetime.now(UTC) - timedelta(hours=1)


@pytest.fixture
def urls(database_url: str, request: pytest.FixtureRequest, tmp_path: Path) -> dict[str, str]:
    """A database per service, all of the kind ``database_url`` is (the gateway's is ``database_url``)."""
    if database_url.startswith("sqlite"):
        found = {name: f"sqlite:///{tmp_path}/{name}.db" for name in SERVICES}
    else:
        new_database = request.getfixturevalue("postgres_database")
        found = {name: new_database() for name in SERVICES}
    found["gateway"] = database_url
    return found


def count(url: str, table, *where) -> int:
    engine = create_engine(url)
    with engine.connect() as connection:
        found = connection.execute(select(func.count()).select_from(table).where(*where)).scalar_one()
    engine.dispose()
    return found


async def until(condition: Callable[[], bool], seconds: float = 15.0) -> None:
    deadline = time.monotonic() + seconds
    while not condition():
        assert time.monotonic() < deadline, "the gateway's job worker never got there"
        await asyncio.sleep(0.05)


def old_request(client_token: str, instance_count: int) -> dict:
    """The launch request column as gateway/adapters/repository.py wrote it at 734d158, the release before
    432bc98: no image_allowed, no version."""
    return {"request": {"region": "ap-guangzhou", "image_id": UBUNTU, "instance_type": "S5.MEDIUM4",
                        "instance_count": instance_count, "charge_type": "POSTPAID_BY_HOUR", "period_months": 0,
                        "system_disk_gb": 50, "instance_name": "old", "client_token": client_token},
            "image_os_type": "LINUX", "image_architecture": "X86_64", "marketplace_product_id": ""}


def old_launch_fingerprint(instance_count: int) -> str:
    """The launch fingerprint from before named-field fingerprints (d1e6c55): repr() of a tuple."""
    parts = ("ap-guangzhou", UBUNTU, "S5.MEDIUM4", instance_count, "POSTPAID_BY_HOUR", 0, 50, "old")
    return hashlib.sha256(repr(parts).encode()).hexdigest()


def old_charge_fingerprint(region: str, image_id: str, os_kind: str, instance_count: int,
                           instance_ids: list[str]) -> str:
    """Billing's charge fingerprint before d1e6c55: sha256(repr((LaunchPricing, sorted ids))), spelled out
    as that release's dataclasses printed it (so a field added to LaunchPricing since cannot change it)."""
    pricing = (f"LaunchPricing(region={region!r}, instance_type='S5.MEDIUM4', instance_count={instance_count}, "
               "charge_type=<ChargeType.POSTPAID_BY_HOUR: 'POSTPAID_BY_HOUR'>, period_months=0, "
               f"image=ImagePricing(image_id={image_id!r}, os_kind=<OsKind.{os_kind}: {os_kind!r}>, "
               "marketplace_product_id=''))")
    return hashlib.sha256(f"({pricing}, {sorted(instance_ids)!r})".encode()).hexdigest()


# The quote column as gateway/adapters/repository.py wrote it at 734d158 (unversioned).
OLD_QUOTE = {"currency": "CNY", "charge_type": "POSTPAID_BY_HOUR", "total": "0.2400", "image_allowed": True,
             "lines": [{"kind": "INSTANCE", "description": "S5.MEDIUM4 instance", "unit_price": "0.1200",
                        "quantity": 2, "unit": "instance-hour", "amount": "0.2400"}]}
# Billing's lines column before it carried a version (8fe2015): a bare list.
OLD_LINES = [{"kind": "INSTANCE", "description": "S5.MEDIUM4 instance", "unit_price": "0.1200", "quantity": 2,
              "unit": "instance-hour"}]


def insert_old_launch(url: str, launch_id: str, client_token: str, instance_ids: list[str], state: str,
                      quote: dict | None = None, charge_id: str = "", instances_state: str | None = None) -> None:
    db, _ = open_database(url)  # today's schema, as the upgrade leaves it; the JSON is the old release's
    with db.engine.begin() as connection:
        connection.execute(LAUNCHES.insert().values(
            launch_id=launch_id, account_id=ALICE, client_token=client_token,
            fingerprint=old_launch_fingerprint(len(instance_ids)), state=state,
            request=json.dumps(old_request(client_token, len(instance_ids))), instance_ids=json.dumps(instance_ids),
            create_time=LONG_AGO, quote=None if quote is None else json.dumps(quote), charge_id=charge_id))
        if instances_state is not None:
            connection.execute(INSTANCES.insert(), [dict(
                instance_id=i, account_id=ALICE, region="ap-guangzhou", instance_name="old", instance_type="S5.MEDIUM4",
                image_id=UBUNTU, state=instances_state, charge_type="POSTPAID_BY_HOUR", system_disk_gb=50,
                architecture="X86_64", launch_id=launch_id, create_time=LONG_AGO) for i in instance_ids])
    db.dispose()


def insert_old_charge(url: str, charge_id: str, key: str, image_id: str, os_kind: str, region: str,
                      instance_ids: list[str]) -> None:
    db = Database(url)
    migrate(db, Path(billing_service.__file__).parent, "billing", BILLING_TABLES)
    with db.engine.begin() as connection:  # a charge of a ledger from before charge keys and meters
        connection.execute(CHARGES.insert().values(
            charge_id=charge_id, account_id=ALICE, idempotency_key=key,
            request_fingerprint=old_charge_fingerprint(region, image_id, os_kind, len(instance_ids), instance_ids),
            region=region, currency="CNY", charge_type="POSTPAID_BY_HOUR", total="0.2400",
            lines=json.dumps(OLD_LINES), instance_ids=json.dumps(instance_ids), create_time=LONG_AGO))
    db.dispose()


def run_request(client_token: str, instance_count: int) -> pb.RunInstancesRequest:
    return pb.RunInstancesRequest(region="ap-guangzhou", image_id=UBUNTU, instance_type="S5.MEDIUM4",
                                  instance_count=instance_count, instance_name="old", client_token=client_token)


async def test_a_launch_recorded_before_image_allowed_answers_its_retry_with_the_recorded_result(urls, serve):
    ids = ["ins-old00001", "ins-old00002"]
    insert_old_launch(urls["gateway"], "lch-old00001", "t-old", ids, "DONE", quote=OLD_QUOTE,
                      charge_id="chg-old00001", instances_state="RUNNING")
    addrs, keys = await start_services(serve, urls)
    instances = pb_grpc.InstanceServiceStub(grpc.aio.insecure_channel(addrs["gateway"]))
    auth = (("authorization", f"Bearer {keys['alice']}"),)

    replayed = await instances.RunInstances(run_request("t-old", 2), metadata=auth)

    assert list(replayed.instance_ids) == ids
    assert replayed.quote.currency_code == "CNY" and replayed.quote.image_allowed
    assert [(l.quantity, l.unit) for l in replayed.quote.lines] == [(2, "instance-hour")]
    assert (replayed.quote.total.units, replayed.quote.total.nanos) == (0, 240_000_000)
    assert count(urls["billing"], CHARGES) == 0  # replayed, not charged again
    listed = await instances.ListInstances(pb.ListInstancesRequest(), metadata=auth)
    assert sorted(i.instance_id for i in listed.instances) == ids


async def test_a_launch_left_pending_by_the_previous_release_is_settled_with_its_instances_and_one_charge(
        urls, serve):
    """Claimed by a gateway from before 432bc98 (no image_allowed in its request, no job, no instances yet),
    charged by billing under the repr() fingerprint, and its caller gone: the gateway's job worker settles it."""
    ids = ["ins-pend0001", "ins-pend0002"]
    insert_old_launch(urls["gateway"], "lch-pend0001", "t-pending", ids, "PENDING")
    insert_old_charge(urls["billing"], "chg-pend0001", "lch-pend0001", UBUNTU, "LINUX", "ap-guangzhou", ids)
    addrs, keys = await start_services(serve, urls)

    await until(lambda: count(urls["gateway"], LAUNCHES, LAUNCHES.c.state == "DONE") == 1)
    assert count(urls["gateway"], INSTANCES, INSTANCES.c.state == "RUNNING") == 2
    assert count(urls["gateway"], JOBS, JOBS.c.state == "DONE") == 1
    assert count(urls["billing"], CHARGES) == 1
    instances = pb_grpc.InstanceServiceStub(grpc.aio.insecure_channel(addrs["gateway"]))
    auth = (("authorization", f"Bearer {keys['alice']}"),)
    replayed = await instances.RunInstances(run_request("t-pending", 2), metadata=auth)  # the quote reads
    assert sorted(replayed.instance_ids) == ids and replayed.quote.image_allowed
    assert count(urls["billing"], CHARGES) == 1


async def test_billing_answers_a_retried_charge_whose_first_charge_has_the_old_fingerprint(urls, serve):
    """The launch's CreateCharge retried after a deploy: the first charge (bare-list lines, repr() fingerprint)
    is the answer, not IDEMPOTENCY_PARAMETER_MISMATCH, which the gateway would take as a refusal."""
    from billing_service.bootstrap import bootstrap
    from billing_service.settings import BillingSettings
    from tests.conftest import INTERNAL_TOKEN

    ids = ["ins-win00001", "ins-win00002"]
    insert_old_charge(urls["billing"], "chg-win00001", "lch-win00001", "img-win00001", "WINDOWS", "ap-singapore",
                      ids)
    addr = await serve(bootstrap, BillingSettings(database_url=urls["billing"], internal_token=INTERNAL_TOKEN))
    billing = billing_grpc.BillingServiceStub(grpc.aio.insecure_channel(addr))
    retried = billing_pb.CreateChargeRequest(
        launch=billing_pb.LaunchPricing(region="ap-singapore", instance_type="S5.MEDIUM4", instance_count=2,
                                        charge_type=billing_pb.CHARGE_TYPE_POSTPAID_BY_HOUR,
                                        image=billing_pb.ImagePricing(image_id="img-win00001",
                                                                      os_kind=billing_pb.OS_KIND_WINDOWS)),
        idempotency_key="lch-win00001", instance_ids=list(reversed(ids)))

    answered = (await billing.CreateCharge(retried, metadata=internal_metadata())).charge

    assert answered.charge_id == "chg-win00001" and sorted(answered.instance_ids) == ids
    assert [(l.quantity, l.unit) for l in answered.quote.lines] == [(2, "instance-hour")]
    assert count(urls["billing"], CHARGES) == 1


async def test_a_job_payload_of_the_previous_release_runs(urls, serve):
    """An end-usage job as 8fe2015 enqueued it (the job table's envelope, version 1), due and unclaimed."""
    db, _ = open_database(urls["gateway"])
    payload = {"v": 1, "data": {"account_id": ALICE, "instance_ids": ["ins-term0001"],
                                "end_time": LONG_AGO.isoformat()}}
    with db.engine.begin() as connection:
        connection.execute(JOBS.insert().values(
            job_id="job-old-end-usage", kind="end-usage", subject=ALICE,
            payload=json.dumps(payload, separators=(",", ":"), sort_keys=True), state="PENDING", lease_owner="",
            lease_until=None, attempts=0, progress=0, error="", create_time=LONG_AGO, update_time=LONG_AGO))
    db.dispose()
    await start_services(serve, urls)

    await until(lambda: count(urls["gateway"], JOBS, JOBS.c.job_id == "job-old-end-usage",
                              JOBS.c.state == "DONE") == 1)
