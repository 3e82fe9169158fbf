"""chassis.stored: each old version of a document upgrades step by step, a version this release does not know
is refused with a clear error (never a KeyError); and the documents the contexts keep, in the exact shapes
earlier releases wrote (from git history), read on today's code."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from types import SimpleNamespace

import pytest
from sqlalchemy import MetaData, select, update

from billing_service.adapters.repository import CHARGE_LINES, SEGMENT_PRICES
from billing_service.domain.model import ChargeType as BillingChargeType
from billing_service.domain.model import ImagePricing, LaunchPricing, OsKind
from billing_service.service_layer.handlers import legacy_charge_fingerprint
from catalog_service.adapters.repository import (
    CREATE_JOB,
    CREATE_JOB_DATA,
    IMPORT_JOB,
    IMPORT_JOB_DATA,
    SYNC_JOB,
    SYNC_JOB_DATA,
    CatalogRepository,
    CopyJob,
    ImportJob,
    create_job_data,
    image_job,
    import_job_data,
    sync_job_data,
)
from catalog_service.adapters.tables import JOBS as CATALOG_JOBS
from catalog_service.domain.model import ImageState
from catalog_service.service_layer.unit_of_work import IMAGES_RESPONSE
from chassis import jobs
from chassis.clock import FakeClock
from chassis.db import Database
from chassis.idempotency import RequestLedger, ResponseFormat, request_table
from chassis.stored import Document, UnknownVersion
from gateway.adapters.repository import (
    END_USAGE_JOB,
    LAUNCH_REQUEST,
    QUOTE,
    RESET_ANSWER,
    RESET_JOB,
    EndUsage,
    end_usage_from_json,
    end_usage_to_json,
    quote_from_json,
    quote_to_json,
    reset_from_json,
    reset_to_json,
)
from gateway.domain.model import ChargeType, OsType, QuoteLineKind
from gateway.service_layer.instances import end_usage_job

# Three versions of a made-up document: 0 (unversioned) had "name"; 1 split it; 2 added "tags".
PERSON = Document("person", 2, upgrades={
    0: lambda old: {"first": old["name"].split()[0], "last": old["name"].split()[-1]},
    1: lambda v1: {**v1, "tags": []},
})


def test_each_old_version_upgrades_step_by_step_to_the_current_one() -> None:
    assert PERSON.load({"name": "Ada Lovelace"}) == {"first": "Ada", "last": "Lovelace", "tags": []}
    assert PERSON.load({"v": 1, "first": "Ada", "last": "L"}) == {"first": "Ada", "last": "L", "tags": []}
    assert PERSON.load({"v": 2, "first": "Ada", "last": "L", "tags": ["x"]}) == {"first": "Ada", "last": "L",
                                                                                 "tags": ["x"]}
    assert PERSON.upgrade(1, {"first": "A", "last": "B"}) == {"first": "A", "last": "B", "tags": []}


def test_what_is_written_carries_the_current_version_and_reads_back() -> None:
    written = PERSON.dumps({"first": "Ada", "last": "L", "tags": []})
    assert json.loads(written)["v"] == 2
    assert PERSON.loads(written) == {"first": "Ada", "last": "L", "tags": []}
    with pytest.raises(ValueError, match="must not have a 'v' field"):
        PERSON.dump({"v": 9})


@pytest.mark.parametrize("stored", [{"v": 3, "first": "A"}, {"v": "2"}, {"v": True}, {"v": None}, {"v": -1}])
def test_a_version_this_release_does_not_know_is_refused_clearly(stored: dict[str, object]) -> None:
    with pytest.raises(UnknownVersion, match=r"stored person of version .*: this release reads versions 0 to 2") \
            as refused:
        PERSON.load(stored)
    assert refused.value.kind == "person"
    assert refused.value.current == 2


def test_a_newer_version_is_named_as_a_newer_release_s() -> None:
    with pytest.raises(UnknownVersion, match="written by a newer release"):
        PERSON.load({"v": 3})


def test_an_unversioned_document_of_a_kind_that_was_always_versioned_is_refused() -> None:
    always = Document("segment", 1)
    with pytest.raises(UnknownVersion, match="version 0: this release reads versions 1 to 1"):
        always.load({"prices": []})
    with pytest.raises(UnknownVersion):
        always.load([1, 2])


def test_a_document_with_a_gap_in_its_upgrades_is_refused_at_once() -> None:
    with pytest.raises(ValueError, match="upgrades must run"):
        Document("broken", 3, upgrades={0: dict, 2: dict})


# The exact shapes of earlier releases.

def test_a_launch_request_from_before_image_allowed_reads_as_allowed() -> None:
    """734d158, the release before 432bc98: no image_allowed, no version."""
    old = {"request": {"region": "ap-guangzhou", "image_id": "img-00000001", "instance_type": "S5.MEDIUM4",
                       "instance_count": 1, "charge_type": "POSTPAID_BY_HOUR", "period_months": 0,
                       "system_disk_gb": 50, "instance_name": "", "client_token": "t"},
           "image_os_type": "LINUX", "image_architecture": "X86_64", "marketplace_product_id": ""}
    assert LAUNCH_REQUEST.loads(json.dumps(old)) == {**old, "image_allowed": True}
    # 432bc98 to this change: unversioned, with the verdict, which is kept.
    assert LAUNCH_REQUEST.loads(json.dumps({**old, "image_allowed": False}))["image_allowed"] is False
    with pytest.raises(UnknownVersion):
        LAUNCH_REQUEST.loads(json.dumps({**old, "v": 2}))


UNVERSIONED_QUOTE = {"currency": "CNY", "charge_type": "PREPAID", "total": "10.00", "image_allowed": False,
                     "lines": [{"kind": "IMAGE_LICENSE", "description": "licence", "unit_price": "5.00",
                                "quantity": 2, "unit": "instance-month", "amount": "10.00"}]}


def test_an_unversioned_quote_reads_and_a_written_one_is_versioned() -> None:
    quote = quote_from_json(UNVERSIONED_QUOTE)
    assert (quote.charge_type, quote.total, quote.image_allowed) == (ChargeType.PREPAID, Decimal("10.00"), False)
    assert quote.lines[0].kind is QuoteLineKind.IMAGE_LICENSE
    assert quote.lines[0].amount == Decimal("10.00")
    assert quote_to_json(quote) == {**UNVERSIONED_QUOTE, "v": 1}
    assert quote_from_json({k: v for k, v in UNVERSIONED_QUOTE.items() if k != "image_allowed"}).image_allowed
    with pytest.raises(UnknownVersion, match="stored quote of version 2"):
        quote_from_json({**UNVERSIONED_QUOTE, "v": 2})
    assert QUOTE.version == 1


def test_a_reset_answer_kept_with_an_unversioned_quote_reads() -> None:
    """ResetInstance answers kept by request_id from 8fe2015 on: envelope version 1, the quote inside unversioned."""
    answer = RESET_ANSWER.decode(1, {"reset_id": "rst-00000001", "instance_id": "ins-00000001",
                                     "quote": UNVERSIONED_QUOTE})
    assert answer.reset_id == "rst-00000001"
    assert answer.quote.total == Decimal("10.00")
    with pytest.raises(UnknownVersion, match="ResetInstance answer of version 2"):
        RESET_ANSWER.decode(2, {})


def test_a_reset_job_s_data_from_before_it_carried_a_version_reads() -> None:
    old = {"reset_id": "rst-00000001", "account_id": "100000000001", "instance_id": "ins-00000001",
           "region": "ap-guangzhou", "instance_type": "S5.MEDIUM4", "charge_type": "POSTPAID_BY_HOUR",
           "period_months": 0, "launch_time": "2026-11-28T00:00:00+00:00", "image_id": "img-00000002",
           "image_os_type": "LINUX", "marketplace_product_id": "",
           "effective_time": "2026-11-28T01:00:00+00:00"}
    reset = reset_from_json(old)
    assert reset.image_os_type is OsType.LINUX
    assert reset.effective_time == datetime(2026, 11, 28, 1, tzinfo=UTC)
    assert reset_to_json(reset) == {**old, "v": 1}
    with pytest.raises(UnknownVersion):
        RESET_JOB.load({**old, "v": 2})


# An end-usage job's data as 8fe2015 enqueued it (inside the job envelope, unversioned).
OLD_END_USAGE = {"account_id": "100000000001", "instance_ids": ["ins-00000001", "ins-00000002"],
                 "end_time": "2026-11-28T01:00:00+00:00"}


def test_an_end_usage_job_s_data_from_before_it_carried_a_version_reads() -> None:
    end = end_usage_from_json(OLD_END_USAGE)
    assert end == EndUsage("100000000001", ["ins-00000001", "ins-00000002"], datetime(2026, 11, 28, 1, tzinfo=UTC))
    assert end_usage_to_json(end) == {**OLD_END_USAGE, "v": 1}
    with pytest.raises(UnknownVersion, match="stored end-usage job of version 2"):
        end_usage_from_json({**OLD_END_USAGE, "v": 2})
    assert END_USAGE_JOB.version == 1


class _Billing:
    def __init__(self) -> None:
        self.ended: list[tuple[list[str], datetime]] = []

    async def end_usage(self, instance_ids: list[str], end_time: datetime) -> None:
        self.ended.append((instance_ids, end_time))


async def test_an_end_usage_job_of_a_newer_release_tells_billing_nothing_and_an_old_one_tells_it() -> None:
    billing = _Billing()
    deps = SimpleNamespace(billing=billing)
    newer = jobs.Job("job-1", "end-usage", "100000000001", {**OLD_END_USAGE, "v": 2}, 1, 0)
    with pytest.raises(UnknownVersion, match="stored end-usage job of version 2"):
        await end_usage_job(newer, None, deps)  # type: ignore[arg-type]
    assert billing.ended == []
    old = jobs.Job("job-2", "end-usage", "100000000001", OLD_END_USAGE, 1, 0)
    await end_usage_job(old, None, deps)  # type: ignore[arg-type]
    assert billing.ended == [(["ins-00000001", "ins-00000002"], datetime(2026, 11, 28, 1, tzinfo=UTC))]


# The catalog's job data as b0e6f8c enqueued it (inside the job envelope, unversioned), one shape per kind.
OLD_CREATE_JOB = {"image_id": "img-00000003", "region": "ap-guangzhou", "checksum": "ab" * 32}
OLD_IMPORT_JOB = {"image_id": "img-00000004", "region": "ap-guangzhou", "source_uri": "file:///imports/disk.raw",
                  "format": "RAW"}
OLD_SYNC_JOB = {"image_id": "img-00000005", "source_image_id": "img-00000003", "region": "ap-guangzhou",
                "destination": "ap-shanghai", "checksum": "ab" * 32}


def test_catalog_job_data_from_before_it_carried_a_version_reads_and_is_written_versioned() -> None:
    assert image_job(CREATE_JOB, OLD_CREATE_JOB) == CopyJob("img-00000003", "ap-guangzhou", "ab" * 32)
    assert image_job(IMPORT_JOB, OLD_IMPORT_JOB) == ImportJob("img-00000004", "ap-guangzhou",
                                                              "file:///imports/disk.raw", "RAW")
    assert image_job(SYNC_JOB, OLD_SYNC_JOB) == CopyJob("img-00000005", "ap-guangzhou", "ab" * 32)
    assert create_job_data("img-00000003", "ap-guangzhou", "ab" * 32) == {**OLD_CREATE_JOB, "v": 1}
    assert import_job_data("img-00000004", "ap-guangzhou", "file:///imports/disk.raw", "RAW") == \
        {**OLD_IMPORT_JOB, "v": 1}
    assert sync_job_data("img-00000005", "img-00000003", "ap-guangzhou", "ap-shanghai", "ab" * 32) == \
        {**OLD_SYNC_JOB, "v": 1}
    assert image_job(CREATE_JOB, {**OLD_CREATE_JOB, "v": 1}) == image_job(CREATE_JOB, OLD_CREATE_JOB)


@pytest.mark.parametrize(("kind", "old", "document"), [(CREATE_JOB, OLD_CREATE_JOB, CREATE_JOB_DATA),
                                                 (IMPORT_JOB, OLD_IMPORT_JOB, IMPORT_JOB_DATA),
                                                 (SYNC_JOB, OLD_SYNC_JOB, SYNC_JOB_DATA)])
def test_catalog_job_data_of_a_newer_release_is_refused(kind: str, old: dict[str, str], document: Document) -> None:
    with pytest.raises(UnknownVersion, match=f"stored {kind} job of version 2") as refused:
        image_job(kind, {**old, "v": 2})
    assert refused.value.kind == document.kind
    with pytest.raises(ValueError, match="not a kind this release of the catalog knows"):
        image_job("resize-image", old)


def test_the_catalog_s_garbage_collection_stops_at_job_data_of_a_newer_release(tmp_path: Path) -> None:
    """A pending copy this release cannot read may be about to read any bytes: nothing is counted as unread."""
    db = Database(f"sqlite:///{tmp_path}/catalog.db")
    CATALOG_JOBS.create(db.engine)
    with db.engine.begin() as connection:
        jobs.enqueue(connection, CATALOG_JOBS, CREATE_JOB, "img-00000003", OLD_CREATE_JOB, NOW)
        jobs.enqueue(connection, CATALOG_JOBS, IMPORT_JOB, "img-00000004", OLD_IMPORT_JOB, NOW)
        assert CatalogRepository(connection).blobs_jobs_will_read() == {("ap-guangzhou", "ab" * 32)}
        jobs.enqueue(connection, CATALOG_JOBS, SYNC_JOB, "img-00000005",
                     {**OLD_SYNC_JOB, "checksum": "cd" * 32, "v": 2}, NOW)
        with pytest.raises(UnknownVersion, match="stored sync-image job of version 2"):
            CatalogRepository(connection).blobs_jobs_will_read()
    db.dispose()


# A catalog answer kept by request_id as b0e6f8c wrote it (the envelope's version 1): an image's fields by name.
OLD_IMAGE_ANSWER = [{
    "image_id": "img-00000003", "region": "ap-guangzhou", "image_type": "CUSTOM", "state": "CREATING",
    "name": "web", "description": "", "owner_account_id": "100000000003", "platform": "Ubuntu",
    "os_name": "Ubuntu Server 22.04 LTS 64bit", "os_type": "LINUX", "architecture": "X86_64", "size_gb": 50,
    "source": "INSTANCE", "base_image_id": "img-00000001", "progress_percent": 0,
    "create_time": "2026-11-28T12:00:00+00:00", "marketplace_product_id": "", "marketplace_provider": "",
    "checksum_sha256": "", "state_reason": "",
}]


def test_a_catalog_answer_kept_by_the_previous_release_reads_and_a_newer_one_is_refused() -> None:
    (image,) = IMAGES_RESPONSE.decode(1, OLD_IMAGE_ANSWER)
    assert image.state is ImageState.CREATING
    assert image.create_time == datetime(2026, 11, 28, 12, tzinfo=UTC)
    assert IMAGES_RESPONSE.encode([image]) == OLD_IMAGE_ANSWER
    assert IMAGES_RESPONSE.version == 1
    with pytest.raises(UnknownVersion, match="stored catalog mutation answer of version 2"):
        IMAGES_RESPONSE.decode(2, OLD_IMAGE_ANSWER)
    with pytest.raises(UnknownVersion, match="version 0"):
        IMAGES_RESPONSE.decode(0, OLD_IMAGE_ANSWER)


def test_billing_reads_charge_lines_kept_as_a_bare_list_and_refuses_unversioned_prices() -> None:
    lines = [{"kind": "INSTANCE", "description": "S5", "unit_price": "0.12", "quantity": 2, "unit": "instance-hour"}]
    assert CHARGE_LINES.loads(json.dumps(lines)) == {"lines": lines}
    assert CHARGE_LINES.loads(json.dumps({"v": 1, "lines": lines})) == {"lines": lines}
    with pytest.raises(UnknownVersion, match="stored charge lines of version 2"):
        CHARGE_LINES.loads('{"v": 2, "lines": []}')
    with pytest.raises(UnknownVersion, match="segment prices"):
        SEGMENT_PRICES.loads("[]")


@pytest.mark.parametrize("raw", ['{"v": 2, "data": {"image_id": "img-1"}}', '{"data": {}}', "not json", "[]"])
def test_a_job_payload_this_release_cannot_read_is_refused(raw: str) -> None:
    with pytest.raises(UnknownVersion, match="stored job payload"):
        jobs.payload_data(raw)


def test_job_payloads_of_the_current_shape_read() -> None:
    assert jobs.payload_data('{"v":1,"data":{"image_id":"img-1"}}') == {"image_id": "img-1"}
    assert jobs.payload_data('{"v": 1}') == {}


def test_billing_s_legacy_fingerprint_is_the_old_repr_spelled_out() -> None:
    """What d1e6c55's predecessor stored: sha256(repr((LaunchPricing, sorted ids))), as that release printed it."""
    launch = LaunchPricing("ap-singapore", "S5.MEDIUM4", 2, BillingChargeType.PREPAID, 3,
                           ImagePricing("img-win00001", OsKind.WINDOWS, "mkt-1"))
    printed = ("(LaunchPricing(region='ap-singapore', instance_type='S5.MEDIUM4', instance_count=2, "
               "charge_type=<ChargeType.PREPAID: 'PREPAID'>, period_months=3, image=ImagePricing("
               "image_id='img-win00001', os_kind=<OsKind.WINDOWS: 'WINDOWS'>, marketplace_product_id='mkt-1')), "
               "['ins-a', 'ins-b'])")
    assert legacy_charge_fingerprint(launch, ["ins-b", "ins-a"]) == hashlib.sha256(printed.encode()).hexdigest()


# The readers of the chassis, on a SQLite file.

JOB_TABLE = jobs.job_table("stored", MetaData())
REQUEST_TABLE = request_table("stored", MetaData())
NOW = datetime(2026, 12, 1, tzinfo=UTC)


@pytest.fixture
def db(tmp_path: Path) -> Iterator[Database]:
    database = Database(f"sqlite:///{tmp_path}/stored.db")
    JOB_TABLE.metadata.create_all(database.engine)
    REQUEST_TABLE.metadata.create_all(database.engine)
    yield database
    database.dispose()


def test_a_job_a_newer_release_wrote_is_left_untried_for_a_replica_that_reads_it(db: Database) -> None:
    with db.engine.begin() as connection:
        newer = jobs.enqueue(connection, JOB_TABLE, "copy", "img-00000001", {}, NOW)
        connection.execute(update(JOB_TABLE).where(JOB_TABLE.c.job_id == newer).values(
            payload='{"v": 2, "data": {"image_id": "img-00000001"}}'))
        readable = jobs.enqueue(connection, JOB_TABLE, "copy", "img-00000002", {"image_id": "img-00000002"},
                                NOW + timedelta(seconds=1))
    clock = FakeClock(NOW + timedelta(seconds=2))
    queue = jobs.JobQueue(db, JOB_TABLE, clock, "replica-old")

    claimed = queue.claim({"copy"})

    assert claimed is not None
    assert claimed.job_id == readable
    assert claimed.data == {"image_id": "img-00000002"}
    with db.engine.connect() as connection:
        left = connection.execute(select(JOB_TABLE).where(JOB_TABLE.c.job_id == newer)).one()
    assert (left.state, left.attempts, left.lease_owner) == ("PENDING", 0, "")
    assert "stored job payload of version 2" in left.error
    assert queue.claim({"copy"}) is None  # not before its lease has passed
    clock.advance(minutes=1)
    with pytest.raises(UnknownVersion):
        queue.get(newer)
    again = queue.claim({"copy"})  # the lease of the readable one ran out; the newer one is passed by again
    assert again is not None
    assert again.job_id == readable
    assert queue.claim({"copy"}) is None


def test_a_stored_response_of_a_newer_version_is_refused_clearly(db: Database) -> None:
    fmt = ResponseFormat.of(Document("names answer", 1), encode=list, decode=list)
    with db.engine.begin() as connection:
        ledger = RequestLedger(connection, REQUEST_TABLE, fmt, clock=lambda: NOW)
        ledger.claim("100000000001", "req-1", "Names", names=["a"]).answer(["a"])
        connection.execute(update(REQUEST_TABLE).values(response='{"v": 2, "response": ["a"]}'))
        with pytest.raises(UnknownVersion, match="stored Names response of version 2"):
            ledger.claim("100000000001", "req-1", "Names", names=["a"])
        connection.execute(update(REQUEST_TABLE).values(response='{"v": 1, "response": ["a"]}'))
        assert ledger.claim("100000000001", "req-1", "Names", names=["a"]).response == ["a"]
