"""The gateway's handlers with fake contexts (and the gateway's own SQLite database)."""

from __future__ import annotations

from datetime import UTC, datetime
from decimal import Decimal
from functools import partial
from pathlib import Path

import pytest

from chassis import context
from chassis.context import Caller
from chassis.db import Database
from chassis.errors import (
    DomainError, FailedPrecondition, InvalidArgument, NotFound, PermissionDenied, RemoteError, Unavailable,
)
from chassis.rpc import status_of
from gateway.adapters.tables import TABLES
from gateway.domain.api_keys import Account
from gateway.domain.model import (
    Architecture, CatalogKind, ChargeType, Image, ImageShare, ImageType, InstanceType, Launch, LaunchRequest, OsType,
    Quote, QuoteLine, Region, ShareState, Verdict, image_not_found,
)
from gateway.service_layer import images, instances
from gateway.service_layer.dependencies import Dependencies, ReferenceData
from gateway.service_layer.unit_of_work import GatewayUnitOfWork

ALICE, BOB, CAROL = Caller("100000000001"), Caller("100000000002"), Caller("100000000003")
NOW = datetime(2026, 1, 1, tzinfo=UTC)


def image(image_id: str, kind: CatalogKind, owner: str = "platform", **more) -> Image:
    return Image(image_id, "ap-guangzhou", kind, "NORMAL", image_id, "", owner, "Ubuntu", "Ubuntu", OsType.LINUX,
                 Architecture.X86_64, 20, "OFFICIAL", "", 100, NOW, **more)


PUBLIC = image("img-public01", CatalogKind.PUBLIC)
ALICES = image("img-alice001", CatalogKind.CUSTOM, ALICE.account_id)


class FakeCatalog:
    def __init__(self):
        self.known = {i.image_id: i for i in (PUBLIC, ALICES)}
        self.listed: list[tuple] = []

    async def regions(self):
        return [Region("ap-guangzhou", "Guangzhou", True, True)]

    async def image(self, image_id):
        if image_id not in self.known:
            raise image_not_found(image_id)
        return self.known[image_id]

    async def images(self, region, kinds, shared_image_ids, platform, name_filter, page_size, page_token):
        self.listed.append((frozenset(kinds), tuple(shared_image_ids)))
        return [i for i in self.known.values() if i.image_id in shared_image_ids], ""


class FakeSharing:
    def __init__(self):
        self.shared: dict[tuple[str, str], ShareState] = {}
        self.calls: list[str] = []

    async def verdict(self, img):
        self.calls.append("verdict")
        caller = context.caller().account_id
        if img.kind is not CatalogKind.CUSTOM or img.owner_account_id == caller:
            return Verdict(True, True, "OWNER")
        state = self.shared.get((img.image_id, caller))
        return Verdict(state is not None, state is ShareState.ACCEPTED, "SHARED", state)

    async def received(self, region):
        self.calls.append("received")
        caller = context.caller().account_id
        return {image_id: state for (image_id, who), state in self.shared.items() if who == caller}

    async def share(self, img, account_ids, request_id):
        self.calls.append("share")
        for account in account_ids:
            self.shared[(img.image_id, account)] = ShareState.ACCEPTED
        return [ImageShare(img.image_id, img.region, img.owner_account_id, a, ShareState.ACCEPTED, NOW)
                for a in account_ids]


class FakeBilling:
    def __init__(self):
        self.charges: dict[str, Launch] = {}
        self.refuse: Exception | None = None

    async def instance_types(self):
        return [InstanceType("S5.MEDIUM4", "S5", Architecture.X86_64, 2, 4, frozenset({"ap-guangzhou"}))]

    def _quote(self, count: int) -> Quote:
        line = QuoteLine("INSTANCE", "S5.MEDIUM4", Decimal("0.058"), count, "instance-hour", Decimal("0.058") * count)
        return Quote("USD", ChargeType.POSTPAID_BY_HOUR, (line,), line.amount)

    async def quote(self, request, img):
        if self.refuse:
            raise self.refuse
        return self._quote(request.instance_count)

    async def charge(self, launch):
        if self.refuse:
            raise self.refuse
        self.charges.setdefault(launch.launch_id, launch)
        return f"chg-{launch.launch_id[4:]}", self._quote(launch.request.instance_count)


@pytest.fixture
def deps(tmp_path: Path) -> Dependencies:
    db = Database(f"sqlite:///{tmp_path}/gateway.db")
    db.create_tables(TABLES)
    new_uow = partial(GatewayUnitOfWork, db)
    with new_uow() as uow:
        uow.accounts.add_missing([Account(c.account_id, "") for c in (ALICE, BOB, CAROL)], NOW)
        uow.commit()
    catalog, billing = FakeCatalog(), FakeBilling()
    return Dependencies(catalog, FakeSharing(), billing, ReferenceData(catalog, billing), new_uow)


def as_caller(caller: Caller) -> None:
    context.current_caller.set(caller)


def launch(**overrides) -> LaunchRequest:
    fields = dict(region="ap-guangzhou", image_id=PUBLIC.image_id, instance_type="S5.MEDIUM4", instance_count=2,
                  charge_type=ChargeType.POSTPAID_BY_HOUR, period_months=0, system_disk_gb=50)
    fields.update(overrides)
    return LaunchRequest(**fields)


async def test_listing_asks_sharing_only_when_shared_images_are_wanted(deps):
    as_caller(ALICE)
    await images.list_images(ALICE, "ap-guangzhou", {ImageType.PUBLIC, ImageType.PRIVATE}, "", "", 0, "", deps)
    assert deps.sharing.calls == [] and deps.catalog.listed[-1][0] == {CatalogKind.PUBLIC, CatalogKind.CUSTOM}
    await images.list_images(ALICE, "ap-guangzhou", set(), "", "", 0, "", deps)
    assert deps.sharing.calls == ["received"]


async def test_shared_images_show_their_share_state(deps):
    deps.sharing.shared[(ALICES.image_id, BOB.account_id)] = ShareState.PENDING
    as_caller(BOB)
    found, _ = await images.list_images(BOB, "ap-guangzhou", {ImageType.SHARED}, "", "", 0, "", deps)
    assert [(i.image_id, i.type_for(BOB.account_id), i.share_state) for i in found] == [
        (ALICES.image_id, ImageType.SHARED, ShareState.PENDING)]
    assert deps.catalog.listed[-1][0] == frozenset()


async def test_who_may_change_an_images_shares(deps):
    as_caller(BOB)
    with pytest.raises(NotFound):  # a stranger cannot even see it
        await images.share_image(BOB, ALICES.image_id, [CAROL.account_id], "", deps)
    deps.sharing.shared[(ALICES.image_id, BOB.account_id)] = ShareState.ACCEPTED
    with pytest.raises(PermissionDenied) as refused:  # a recipient sees it but cannot re-share it
        await images.share_image(BOB, ALICES.image_id, [CAROL.account_id], "", deps)
    assert refused.value.reason == "SHARED_IMAGE_READ_ONLY"
    with pytest.raises(PermissionDenied) as refused:
        await images.share_image(BOB, PUBLIC.image_id, [CAROL.account_id], "", deps)
    assert refused.value.reason == "NOT_IMAGE_OWNER"
    as_caller(ALICE)
    with pytest.raises(InvalidArgument) as refused:
        await images.share_image(ALICE, ALICES.image_id, ["999999999999"], "", deps)
    assert refused.value.reason == "UNKNOWN_ACCOUNT"
    shares = await images.share_image(ALICE, ALICES.image_id, [CAROL.account_id], "", deps)
    assert [s.recipient_account_id for s in shares] == [CAROL.account_id]


def billing_refusal() -> RemoteError:
    """What the billing client raises when billing refuses a launch (as it does before it writes)."""
    refusal = InvalidArgument("INSTANCE_TYPE_NOT_OFFERED", "no", field="instance_type")
    return RemoteError("INVALID_ARGUMENT", refusal.reason, refusal.message, status_of(refusal).SerializeToString())


async def test_a_launch_refused_by_billing_frees_its_client_token(deps):
    as_caller(ALICE)
    deps.billing.refuse = billing_refusal()
    with pytest.raises(RemoteError):
        await instances.run_instances(ALICE, launch(client_token="tok"), False, deps)
    deps.billing.refuse = None
    instance_ids, quote = await instances.run_instances(ALICE, launch(client_token="tok"), False, deps)
    assert len(instance_ids) == 2 and quote.total == Decimal("0.116")
    again, _ = await instances.run_instances(ALICE, launch(client_token="tok"), False, deps)
    assert again == instance_ids and len(deps.billing.charges) == 1


@pytest.mark.parametrize("failure", [Unavailable("DEPENDENCY_UNAVAILABLE", "down"),
                                     DomainError("DEPENDENCY_FAILED", "billing failed")])
async def test_a_launch_whose_charge_is_unknown_stays_pending_until_reconciled(deps, monkeypatch, failure):
    as_caller(ALICE)
    deps.billing.refuse = failure
    with pytest.raises(DomainError):
        await instances.run_instances(ALICE, launch(client_token="later"), False, deps)
    assert await instances.reconcile_pending_launches(deps) == 0  # not stale yet
    monkeypatch.setattr(instances, "STALE_LAUNCH_AFTER", instances.timedelta(0))
    assert await instances.reconcile_pending_launches(deps) == 0  # billing still down: stays pending
    deps.billing.refuse = None
    assert await instances.reconcile_pending_launches(deps) == 1
    with deps.new_uow(read_only=True) as uow:
        done = uow.launches.by_token(ALICE.account_id, "later")
        assert done.state.value == "DONE" and uow.instances.get(ALICE.account_id, done.instance_ids[0])


async def test_a_quote_reports_the_permission_problem_before_the_price_problem(deps):
    as_caller(BOB)
    deps.sharing.shared[(ALICES.image_id, BOB.account_id)] = ShareState.PENDING
    deps.billing.refuse = billing_refusal()
    with pytest.raises(FailedPrecondition) as refused:
        await instances.quote_run_instances(launch(image_id=ALICES.image_id), deps)
    assert refused.value.reason == "SHARE_PENDING"


async def test_dry_run_creates_nothing(deps):
    as_caller(ALICE)
    instance_ids, quote = await instances.run_instances(ALICE, launch(), True, deps)
    assert instance_ids == [] and quote.lines[0].quantity == 2 and deps.billing.charges == {}
    found, _ = await instances.list_instances(ALICE, "", 0, "", deps)
    assert found == []


async def test_share_requests_are_bounded(deps):
    as_caller(ALICE)
    for account_ids, request_id, reason in [
        ([f"{300000000000 + i}" for i in range(51)], "", "TOO_MANY_ACCOUNTS"),
        ([BOB.account_id], "r" * 65, "INVALID_REQUEST_ID"),
        (["not-an-account"], "", "INVALID_ACCOUNT_ID"),
    ]:
        with pytest.raises(InvalidArgument) as refused:
            await images.share_image(ALICE, ALICES.image_id, account_ids, request_id, deps)
        assert refused.value.reason == reason
    assert deps.sharing.calls == []
