"""Rows that earlier releases wrote, in their exact JSON shapes (from git history), are read and replayed on
today's code, on SQLite and PostgreSQL: a launch recorded before its request carried image_allowed (commit
432bc98) answers its retry with the recorded result; a launch left PENDING by such a release, which billing
charged under the old repr() fingerprint, is settled by the gateway's job worker into RUNNING instances and
one charge; billing reads charge lines kept as a bare list and answers a retried CreateCharge whose first
charge has the old fingerprint; an end-usage job of the previous release ends its instances' usage at billing;
the catalog's create, import and sync jobs of the previous release finish their images, and its kept answers
replay. Each kind's data written by a newer release is refused with UnknownVersion: its job waits, untouched."""

from __future__ import annotations

import asyncio
import dataclasses
import hashlib
import json
import time
from collections.abc import AsyncIterator, Callable, Mapping
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import grpc
import pytest
from cloudimg.billing.v1 import billing_service_pb2 as billing_pb
from cloudimg.billing.v1 import billing_service_pb2_grpc as billing_grpc
from cloudimg.catalog.v1 import catalog_service_pb2 as catalog_pb
from cloudimg.catalog.v1 import catalog_service_pb2_grpc as catalog_grpc
from cloudimg.gateway.v1 import instance_service_pb2 as pb
from cloudimg.gateway.v1 import instance_service_pb2_grpc as pb_grpc
from sqlalchemy import ColumnElement, Row, Table, create_engine, func, select

import billing_service
from billing_service.adapters.tables import CHARGES, SEGMENTS
from billing_service.adapters.tables import TABLES as BILLING_TABLES
from catalog_service.adapters.tables import IMAGES as CATALOG_IMAGES
from catalog_service.adapters.tables import JOBS as CATALOG_JOBS
from catalog_service.domain.seed import seed_checksum, seed_image_id
from chassis.db import Database
from chassis.migrations import migrate
from gateway.adapters.tables import INSTANCES, JOBS, LAUNCHES
from gateway.bootstrap import open_database
from tests.conftest import ALICE, CAROL, ServerFactory, internal_metadata
from tests.integration.cloud import INTERNAL_SECRET, SERVICES, start_services

GZ, SH = "ap-guangzhou", "ap-shanghai"
UBUNTU = seed_image_id(GZ, "ubuntu-2204-x86")
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


def count(url: str, table: Table, *where: ColumnElement[bool]) -> int:
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


def old_request(client_token: str, instance_count: int) -> dict[str, object]:
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
                      quote: dict[str, object] | None = None, charge_id: str = "",
                      instances_state: str | None = None) -> None:
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


async def test_a_launch_recorded_before_image_allowed_answers_its_retry_with_the_recorded_result(
        urls: dict[str, str], serve: ServerFactory) -> None:
    ids = ["ins-old00001", "ins-old00002"]
    insert_old_launch(urls["gateway"], "lch-old00001", "t-old", ids, "DONE", quote=OLD_QUOTE,
                      charge_id="chg-old00001", instances_state="RUNNING")
    addrs, keys = await start_services(serve, urls)
    instances = pb_grpc.InstanceServiceStub(grpc.aio.insecure_channel(addrs["gateway"]))
    auth = (("authorization", f"Bearer {keys['alice']}"),)

    replayed = await instances.RunInstances(run_request("t-old", 2), metadata=auth)

    assert list(replayed.instance_ids) == ids
    assert replayed.quote.currency_code == "CNY"
    assert replayed.quote.image_allowed
    assert [(l.quantity, l.unit) for l in replayed.quote.lines] == [(2, "instance-hour")]
    assert (replayed.quote.total.units, replayed.quote.total.nanos) == (0, 240_000_000)
    assert count(urls["billing"], CHARGES) == 0  # replayed, not charged again
    listed = await instances.ListInstances(pb.ListInstancesRequest(), metadata=auth)
    assert sorted(i.instance_id for i in listed.instances) == ids


async def test_a_launch_left_pending_by_the_previous_release_is_settled_with_its_instances_and_one_charge(
        urls: dict[str, str], serve: ServerFactory) -> None:
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
    assert sorted(replayed.instance_ids) == ids
    assert replayed.quote.image_allowed
    assert count(urls["billing"], CHARGES) == 1


async def test_billing_answers_a_retried_charge_whose_first_charge_has_the_old_fingerprint(
        urls: dict[str, str], serve: ServerFactory) -> None:
    """The launch's CreateCharge retried after a deploy: the first charge (bare-list lines, repr() fingerprint)
    is the answer, not IDEMPOTENCY_PARAMETER_MISMATCH, which the gateway would take as a refusal."""
    from billing_service.bootstrap import bootstrap
    from billing_service.settings import BillingSettings

    ids = ["ins-win00001", "ins-win00002"]
    insert_old_charge(urls["billing"], "chg-win00001", "lch-win00001", "img-win00001", "WINDOWS", "ap-singapore",
                      ids)
    addr = await serve(bootstrap, BillingSettings(database_url=urls["billing"], internal_token=INTERNAL_SECRET))
    billing = billing_grpc.BillingServiceStub(grpc.aio.insecure_channel(addr))
    retried = billing_pb.CreateChargeRequest(
        launch=billing_pb.LaunchPricing(region="ap-singapore", instance_type="S5.MEDIUM4", instance_count=2,
                                        charge_type=billing_pb.CHARGE_TYPE_POSTPAID_BY_HOUR,
                                        image=billing_pb.ImagePricing(image_id="img-win00001",
                                                                      os_kind=billing_pb.OS_KIND_WINDOWS)),
        idempotency_key="lch-win00001", instance_ids=list(reversed(ids)))

    answered = (await billing.CreateCharge(retried, metadata=internal_metadata())).charge

    assert answered.charge_id == "chg-win00001"
    assert sorted(answered.instance_ids) == ids
    assert [(l.quantity, l.unit) for l in answered.quote.lines] == [(2, "instance-hour")]
    assert count(urls["billing"], CHARGES) == 1


def insert_job(url: str, job_id: str, kind: str, subject: str, data: Mapping[str, object],
               tables: Table | None = None) -> None:
    """A due, unclaimed job in the job table's envelope as every release wrote it (150e0ba on: version 1,
    compact, sorted keys), around ``data`` in the shape given."""
    table = JOBS if tables is None else tables
    engine = create_engine(url)
    with engine.begin() as connection:
        connection.execute(table.insert().values(
            job_id=job_id, kind=kind, subject=subject,
            payload=json.dumps({"v": 1, "data": data}, separators=(",", ":"), sort_keys=True), state="PENDING",
            lease_owner="", lease_until=None, attempts=0, progress=0, error="", create_time=LONG_AGO,
            update_time=LONG_AGO))
    engine.dispose()


def job_row(url: str, table: Table, job_id: str) -> Row[Any]:
    engine = create_engine(url)
    with engine.connect() as connection:
        found = connection.execute(select(table).where(table.c.job_id == job_id)).one()
    engine.dispose()
    return found


def segment_end(url: str, instance_id: str) -> datetime | None:
    engine = create_engine(url)
    with engine.connect() as connection:
        end = connection.execute(select(SEGMENTS.c.end_time).where(SEGMENTS.c.instance_id == instance_id)).scalar_one()
    engine.dispose()
    return None if end is None else (end if end.tzinfo else end.replace(tzinfo=UTC))


async def test_an_end_usage_job_of_the_previous_release_ends_the_usage_and_a_newer_one_waits(
        urls: dict[str, str], serve: ServerFactory) -> None:
    """Two instances terminated by the previous release, whose call could not tell billing. The end-usage job it
    enqueued (8fe2015 on: the job table's envelope, its data unversioned) ends its instance's usage at billing
    and is DONE; one a newer release wrote (data of version 2) is refused with UnknownVersion, tells billing
    nothing and waits, PENDING, for a replica that reads it."""
    addrs, keys = await start_services(serve, urls)
    instances = pb_grpc.InstanceServiceStub(grpc.aio.insecure_channel(addrs["gateway"]))
    auth = (("authorization", f"Bearer {keys['alice']}"),)
    launched = await instances.RunInstances(run_request("t-end-usage", 2), metadata=auth)
    old_one, newer_one = launched.instance_ids
    assert segment_end(urls["billing"], old_one) is None
    assert segment_end(urls["billing"], newer_one) is None
    engine = create_engine(urls["gateway"])
    with engine.begin() as connection:  # what the termination's transaction wrote beside its job
        connection.execute(INSTANCES.update().where(INSTANCES.c.instance_id.in_([old_one, newer_one]))
                           .values(state="TERMINATED"))
    engine.dispose()
    end_time = datetime.now(UTC)
    insert_job(urls["gateway"], "job-old-end-usage", "end-usage", ALICE,
               {"account_id": ALICE, "instance_ids": [old_one], "end_time": end_time.isoformat()})
    insert_job(urls["gateway"], "job-new-end-usage", "end-usage", ALICE,
               {"v": 2, "account_id": ALICE, "instance_ids": [newer_one], "end_time": end_time.isoformat()})

    await until(lambda: job_row(urls["gateway"], JOBS, "job-old-end-usage").state == "DONE")
    await until(lambda: job_row(urls["gateway"], JOBS, "job-new-end-usage").error != "")

    ended = segment_end(urls["billing"], old_one)
    assert ended is not None
    assert abs(ended - end_time) < timedelta(milliseconds=1)
    newer = job_row(urls["gateway"], JOBS, "job-new-end-usage")
    assert newer.state == "PENDING"
    assert "stored end-usage job of version 2" in newer.error
    assert newer.attempts == 0  # left untried for a newer replica: never counted towards giving up
    assert segment_end(urls["billing"], newer_one) is None


# The catalog's job data as b0e6f8c enqueued it (unversioned, in the envelope), per kind.
def old_catalog_job(kind: str, image_id: str, source_uri: str) -> dict[str, str]:
    ubuntu = seed_checksum("ubuntu-2204-x86")
    return {
        "create-image": {"image_id": image_id, "region": GZ, "checksum": ubuntu},
        "import-image": {"image_id": image_id, "region": GZ, "source_uri": source_uri, "format": "RAW"},
        "sync-image": {"image_id": image_id, "source_image_id": UBUNTU, "region": GZ, "destination": SH,
                       "checksum": ubuntu},
    }[kind]


@pytest.fixture
async def catalog(serve: ServerFactory, urls: dict[str, str],
                  tmp_path: Path) -> AsyncIterator[tuple[catalog_grpc.CatalogServiceStub, Path]]:
    """A catalog on its own database, and where it imports from."""
    from catalog_service.bootstrap import bootstrap
    from catalog_service.settings import CatalogSettings

    imports = tmp_path / "imports"
    imports.mkdir()
    addr = await serve(bootstrap, CatalogSettings(database_url=urls["catalog"], internal_token=INTERNAL_SECRET,
                                                  image_store_dir=tmp_path / "images", import_root=imports))
    channel = grpc.aio.insecure_channel(addr)
    yield catalog_grpc.CatalogServiceStub(channel), imports
    await channel.close()


def add_busy_image(url: str, image_id: str, kind: str) -> None:
    """The image an old job is to finish, as the catalog's repository writes it (the row is not a document)."""
    from catalog_service.adapters.repository import CatalogRepository
    from catalog_service.domain.model import ImageSource, ImageState, ImageType

    state, source, region = {"create-image": (ImageState.CREATING, ImageSource.INSTANCE, GZ),
                             "import-image": (ImageState.IMPORTING, ImageSource.IMPORT, GZ),
                             "sync-image": (ImageState.SYNCING, ImageSource.SYNC, SH)}[kind]
    db = Database(url)
    with db.engine.begin() as connection:
        images = CatalogRepository(connection)
        base = images.get(UBUNTU)
        assert base is not None
        images.add(dataclasses.replace(
            base, image_id=image_id, region=region, image_type=ImageType.CUSTOM, state=state, name=f"old {kind}",
            owner_account_id=CAROL, source=source, base_image_id=UBUNTU, progress_percent=0, checksum_sha256="",
            create_time=LONG_AGO))
    db.dispose()


async def image_of(stub: catalog_grpc.CatalogServiceStub, image_id: str, done: bool = True,
                   seconds: float = 15.0) -> catalog_pb.Image:
    busy = {catalog_pb.IMAGE_STATE_CREATING, catalog_pb.IMAGE_STATE_IMPORTING, catalog_pb.IMAGE_STATE_SYNCING}
    deadline = time.monotonic() + seconds
    while True:
        image: catalog_pb.Image = (await stub.GetImage(catalog_pb.GetImageRequest(image_id=image_id),
                                                       metadata=internal_metadata(CAROL))).image
        if not done or image.state not in busy:
            return image
        assert time.monotonic() < deadline, f"{image_id} still busy"
        await asyncio.sleep(0.05)


@pytest.mark.parametrize("kind", ["create-image", "import-image", "sync-image"])
async def test_a_catalog_job_of_the_previous_release_is_claimed_and_finishes_its_image(
        catalog: tuple[catalog_grpc.CatalogServiceStub, Path], urls: dict[str, str], kind: str) -> None:
    stub, imports = catalog
    disk = imports / "disk.raw"
    disk.write_bytes(b"\0" * (1 << 20))
    add_busy_image(urls["catalog"], "img-old00001", kind)
    insert_job(urls["catalog"], "job-old-catalog", kind, "img-old00001",
               old_catalog_job(kind, "img-old00001", disk.as_uri()), tables=CATALOG_JOBS)

    done = await image_of(stub, "img-old00001")

    assert done.state == catalog_pb.IMAGE_STATE_NORMAL, done.state_reason
    expected = hashlib.sha256(disk.read_bytes()).hexdigest() if kind == "import-image" else \
        seed_checksum("ubuntu-2204-x86")
    assert done.checksum_sha256 == expected
    assert job_row(urls["catalog"], CATALOG_JOBS, "job-old-catalog").state == "DONE"


async def test_a_catalog_job_a_newer_release_wrote_is_refused_not_run(
        catalog: tuple[catalog_grpc.CatalogServiceStub, Path], urls: dict[str, str]) -> None:
    stub, _ = catalog
    add_busy_image(urls["catalog"], "img-new00001", "create-image")
    insert_job(urls["catalog"], "job-new-catalog", "create-image", "img-new00001",
               {**old_catalog_job("create-image", "img-new00001", ""), "v": 2}, tables=CATALOG_JOBS)

    await until(lambda: job_row(urls["catalog"], CATALOG_JOBS, "job-new-catalog").error != "")

    newer = job_row(urls["catalog"], CATALOG_JOBS, "job-new-catalog")
    assert newer.state == "PENDING"
    assert "stored create-image job of version 2" in newer.error
    assert newer.attempts == 0  # left untried for a newer replica: never counted towards giving up
    image = await image_of(stub, "img-new00001", done=False)
    assert image.state == catalog_pb.IMAGE_STATE_CREATING
    assert not image.checksum_sha256


def keep_catalog_answer(url: str, request_id: str, response: str) -> None:
    """A CreateImage answer kept by request_id, its fingerprint as the ledger computes it."""
    from catalog_service.adapters.tables import REQUESTS
    from chassis.fingerprints import fingerprint

    engine = create_engine(url)
    with engine.begin() as connection:
        connection.execute(REQUESTS.insert().values(
            account_id=CAROL, request_id=request_id, method="CreateImage",
            fingerprint=fingerprint("CreateImage", region=GZ, instance_id="ins-0000000a", name="web",
                                    description="", base_image_id=UBUNTU, size_gb=50),
            response=response, create_time=datetime.now(UTC)))
    engine.dispose()


async def test_a_catalog_answer_kept_by_the_previous_release_replays_and_a_newer_one_is_refused(
        catalog: tuple[catalog_grpc.CatalogServiceStub, Path], urls: dict[str, str]) -> None:
    """CreateImage answers kept by request_id as b0e6f8c wrote them (envelope version 1, the image's fields by
    name): a retry is answered with the image; one a newer release kept (version 2) is refused, nothing made."""
    stub, _ = catalog
    image = {"image_id": "img-kept0001", "region": GZ, "image_type": "CUSTOM", "state": "CREATING", "name": "web",
             "description": "", "owner_account_id": CAROL, "platform": "Ubuntu", "os_name": "Ubuntu",
             "os_type": "LINUX", "architecture": "X86_64", "size_gb": 50, "source": "INSTANCE",
             "base_image_id": UBUNTU, "progress_percent": 0, "create_time": LONG_AGO.isoformat(),
             "marketplace_product_id": "", "marketplace_provider": "", "checksum_sha256": "", "state_reason": ""}
    keep_catalog_answer(urls["catalog"], "req-kept-old", json.dumps({"v": 1, "response": [image]}))
    keep_catalog_answer(urls["catalog"], "req-kept-new", json.dumps({"v": 2, "response": [image]}))
    request = catalog_pb.CreateImageRequest(region=GZ, instance_id="ins-0000000a", name="web", base_image_id=UBUNTU,
                                            size_gb=50, request_id="req-kept-old")
    images_before = count(urls["catalog"], CATALOG_IMAGES)

    replayed = (await stub.CreateImage(request, metadata=internal_metadata(CAROL))).image

    assert (replayed.image_id, replayed.state, replayed.size_gb) == ("img-kept0001", catalog_pb.IMAGE_STATE_CREATING,
                                                                      50)
    request.request_id = "req-kept-new"
    with pytest.raises(grpc.aio.AioRpcError):
        await stub.CreateImage(request, metadata=internal_metadata(CAROL))
    assert count(urls["catalog"], CATALOG_IMAGES) == images_before  # neither call made an image
