"""chassis.stored: each old version of a document upgrades step by step, a version this release does not know
is refused with a clear error (never a KeyError); and the documents the contexts keep, in the exact shapes
earlier releases wrote (from git history), read on today's code."""

from __future__ import annotations

import hashlib
import json
from datetime import UTC, datetime, timedelta
from decimal import Decimal

import pytest
from sqlalchemy import MetaData, select, update

from billing_service.adapters.repository import CHARGE_LINES, SEGMENT_PRICES
from billing_service.domain.model import ChargeType as BillingChargeType
from billing_service.domain.model import ImagePricing, LaunchPricing, OsKind
from billing_service.service_layer.handlers import legacy_charge_fingerprint
from chassis import jobs
from chassis.clock import FakeClock
from chassis.db import Database
from chassis.idempotency import RequestLedger, ResponseFormat, request_table
from chassis.stored import Document, UnknownVersion
from gateway.adapters.repository import (
    LAUNCH_REQUEST, QUOTE, RESET_ANSWER, RESET_JOB, quote_from_json, quote_to_json, reset_from_json, reset_to_json,
)
from gateway.domain.model import ChargeType, OsType, QuoteLineKind

# Three versions of a made-up document: 0 (unversioned) had "name"; 1 split it; 2 added "tags".
PERSON = Document("person", 2, upgrades={
    0: lambda old: {"first": old["name"].split()[0], "last": old["name"].split()[-1]},
    1: lambda v1: {**v1, "tags": []},
})


def test_each_old_version_upgrades_step_by_step_to_the_current_one():
    assert PERSON.load({"name": "Ada Lovelace"}) == {"first": "Ada", "last": "Lovelace", "tags": []}
    assert PERSON.load({"v": 1, "first": "Ada", "last": "L"}) == {"first": "Ada", "last": "L", "tags": []}
    assert PERSON.load({"v": 2, "first": "Ada", "last": "L", "tags": ["x"]}) == {"first": "Ada", "last": "L",
                                                                                 "tags": ["x"]}
    assert PERSON.upgrade(1, {"first": "A", "last": "B"}) == {"first": "A", "last": "B", "tags": []}


def test_what_is_written_carries_the_current_version_and_reads_back():
    written = PERSON.dumps({"first": "Ada", "last": "L", "tags": []})
    assert json.loads(written)["v"] == 2
    assert PERSON.loads(written) == {"first": "Ada", "last": "L", "tags": []}
    with pytest.raises(ValueError, match="must not have a 'v' field"):
        PERSON.dump({"v": 9})


@pytest.mark.parametrize("stored", [{"v": 3, "first": "A"}, {"v": "2"}, {"v": True}, {"v": None}, {"v": -1}])
def test_a_version_this_release_does_not_know_is_refused_clearly(stored):
    with pytest.raises(UnknownVersion, match=r"stored person of version .*: this release reads versions 0 to 2") \
            as refused:
        PERSON.load(stored)
    assert refused.value.kind == "person" and refused.value.current == 2


def test_a_newer_version_is_named_as_a_newer_release_s():
    with pytest.raises(UnknownVersion, match="written by a newer release"):
        PERSON.load({"v": 3})


def test_an_unversioned_document_of_a_kind_that_was_always_versioned_is_refused():
    always = Document("segment", 1)
    with pytest.raises(UnknownVersion, match="version 0: this release reads versions 1 to 1"):
        always.load({"prices": []})
    with pytest.raises(UnknownVersion):
        always.load([1, 2])


def test_a_document_with_a_gap_in_its_upgrades_is_refused_at_once():
    with pytest.raises(ValueError, match="upgrades must run"):
        Document("broken", 3, upgrades={0: dict, 2: dict})


# The exact shapes of earlier releases.

def test_a_launch_request_from_before_image_allowed_reads_as_allowed():
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


def test_an_unversioned_quote_reads_and_a_written_one_is_versioned():
    quote = quote_from_json(UNVERSIONED_QUOTE)
    assert (quote.charge_type, quote.total, quote.image_allowed) == (ChargeType.PREPAID, Decimal("10.00"), False)
    assert quote.lines[0].kind is QuoteLineKind.IMAGE_LICENSE and quote.lines[0].amount == Decimal("10.00")
    assert quote_to_json(quote) == {**UNVERSIONED_QUOTE, "v": 1}
    assert quote_from_json({k: v for k, v in UNVERSIONED_QUOTE.items() if k != "image_allowed"}).image_allowed
    with pytest.raises(UnknownVersion, match="stored quote of version 2"):
        quote_from_json({**UNVERSIONED_QUOTE, "v": 2})
    assert QUOTE.version == 1


def test_a_reset_answer_kept_with_an_unversioned_quote_reads():
    """ResetInstance answers kept by request_id from 8fe2015 on: envelope version 1, the quote inside unversioned."""
    answer = RESET_ANSWER.decode(1, {"reset_id": "rst-00000001", "instance_id": "ins-00000001",
                                     "quote": UNVERSIONED_QUOTE})
    assert answer.reset_id == "rst-00000001" and answer.quote.total == Decimal("10.00")
    with pytest.raises(UnknownVersion, match="ResetInstance answer of version 2"):
        RESET_ANSWER.decode(2, {})


def test_a_reset_job_s_data_from_before_it_carried_a_version_reads():
    old = {"reset_id": "rst-00000001", "account_id": "100000000001", "instance_id": "ins-00000001",
           "region": "ap-guangzhou", "instance_type": "S5.MEDIUM4", "charge_type": "POSTPAID_BY_HOUR",
           "period_months": 0, "launch_time": "2026-11-28T00:00:00+00:00", "image_id": "img-00000002",
           "image_os_type": "LINUX", "marketplace_product_id": "",
           "effective_time": "2026-11-28T01:00:00+00:00"}
    reset = reset_from_json(old)
    assert reset.image_os_type is OsType.LINUX and reset.effective_time == datetime(2026, 11, 28, 1, tzinfo=UTC)
    assert reset_to_json(reset) == {**old, "v": 1}
    with pytest.raises(UnknownVersion):
        RESET_JOB.load({**old, "v": 2})


def test_billing_reads_charge_lines_kept_as_a_bare_list_and_refuses_unversioned_prices():
    lines = [{"kind": "INSTANCE", "description": "S5", "unit_price": "0.12", "quantity": 2, "unit": "instance-hour"}]
    assert CHARGE_LINES.loads(json.dumps(lines)) == {"lines": lines}
    assert CHARGE_LINES.loads(json.dumps({"v": 1, "lines": lines})) == {"lines": lines}
    with pytest.raises(UnknownVersion, match="stored charge lines of version 2"):
        CHARGE_LINES.loads('{"v": 2, "lines": []}')
    with pytest.raises(UnknownVersion, match="segment prices"):
        SEGMENT_PRICES.loads("[]")


@pytest.mark.parametrize("raw", ['{"v": 2, "data": {"image_id": "img-1"}}', '{"data": {}}', "not json", "[]"])
def test_a_job_payload_this_release_cannot_read_is_refused(raw):
    with pytest.raises(UnknownVersion, match="stored job payload"):
        jobs.payload_data(raw)


def test_job_payloads_of_the_current_shape_read():
    assert jobs.payload_data('{"v":1,"data":{"image_id":"img-1"}}') == {"image_id": "img-1"}
    assert jobs.payload_data('{"v": 1}') == {}


def test_billing_s_legacy_fingerprint_is_the_old_repr_spelled_out():
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
def db(tmp_path):
    database = Database(f"sqlite:///{tmp_path}/stored.db")
    JOB_TABLE.metadata.create_all(database.engine)
    REQUEST_TABLE.metadata.create_all(database.engine)
    yield database
    database.dispose()


def test_a_job_a_newer_release_wrote_is_left_untried_for_a_replica_that_reads_it(db):
    with db.engine.begin() as connection:
        newer = jobs.enqueue(connection, JOB_TABLE, "copy", "img-00000001", {}, NOW)
        connection.execute(update(JOB_TABLE).where(JOB_TABLE.c.job_id == newer).values(
            payload='{"v": 2, "data": {"image_id": "img-00000001"}}'))
        readable = jobs.enqueue(connection, JOB_TABLE, "copy", "img-00000002", {"image_id": "img-00000002"},
                                NOW + timedelta(seconds=1))
    clock = FakeClock(NOW + timedelta(seconds=2))
    queue = jobs.JobQueue(db, JOB_TABLE, clock, "replica-old")

    claimed = queue.claim({"copy"})

    assert claimed is not None and claimed.job_id == readable and claimed.data == {"image_id": "img-00000002"}
    with db.engine.connect() as connection:
        left = connection.execute(select(JOB_TABLE).where(JOB_TABLE.c.job_id == newer)).one()
    assert (left.state, left.attempts, left.lease_owner) == ("PENDING", 0, "")
    assert "stored job payload of version 2" in left.error
    assert queue.claim({"copy"}) is None  # not before its lease has passed
    clock.advance(minutes=1)
    with pytest.raises(UnknownVersion):
        queue.get(newer)
    again = queue.claim({"copy"})  # the lease of the readable one ran out; the newer one is passed by again
    assert again is not None and again.job_id == readable and queue.claim({"copy"}) is None


def test_a_stored_response_of_a_newer_version_is_refused_clearly(db):
    fmt = ResponseFormat.of(Document("names answer", 1), encode=list, decode=list)
    with db.engine.begin() as connection:
        ledger = RequestLedger(connection, REQUEST_TABLE, fmt, clock=lambda: NOW)
        ledger.claim("100000000001", "req-1", "Names", names=["a"]).answer(["a"])
        connection.execute(update(REQUEST_TABLE).values(response='{"v": 2, "response": ["a"]}'))
        with pytest.raises(UnknownVersion, match="stored Names response of version 2"):
            ledger.claim("100000000001", "req-1", "Names", names=["a"])
        connection.execute(update(REQUEST_TABLE).values(response='{"v": 1, "response": ["a"]}'))
        assert ledger.claim("100000000001", "req-1", "Names", names=["a"]).response == ["a"]
