"""Sharing's handlers on a real SQLite database with a clock that stands still: share acceptance by trust,
the recipient's decisions, trust policies, received shares by state and the verdicts of a page."""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from datetime import UTC, datetime
from functools import partial
from pathlib import Path
from typing import TypedDict

import pytest
from sqlalchemy import Table, event, func, select

import sharing_service
from chassis.clock import FakeClock
from chassis.db import Database
from chassis.errors import FailedPrecondition, InvalidArgument, NotFound, ResourceExhausted
from chassis.migrations import migrate
from sharing_service.adapters.tables import REQUESTS, TABLES, TRUST_ENTRIES, TRUST_POLICIES
from sharing_service.domain.model import ImageKind, ImageRef, Share, ShareDecision, ShareState
from sharing_service.domain.trust import DEFAULT_POLICY, PolicyDraft, TrustPolicy, TrustPolicyMode
from sharing_service.domain.verdict import LaunchBasis, Verdict
from sharing_service.service_layer import handlers, trust_policies, verdicts
from sharing_service.service_layer.unit_of_work import SharingUnitOfWork, UnitOfWorkFactory

ALICE, BOB, CAROL, DAVE = "100000000001", "100000000002", "100000000003", "100000000004"
REGION = "ap-guangzhou"
IMAGE = ImageRef("img-alice001", REGION, ImageKind.CUSTOM, ALICE)
ALL = ["trusted_account_ids", "mode", "allow_platform_images", "allowed_marketplace_providers",
       "allowed_account_ids"]


@pytest.fixture
def db(tmp_path: Path) -> Iterator[Database]:
    database = Database(f"sqlite:///{tmp_path}/sharing.db")
    migrate(database, Path(sharing_service.__file__).parent, "sharing", TABLES)
    yield database
    database.dispose()


@pytest.fixture
def new_uow(db: Database) -> UnitOfWorkFactory:
    return partial(SharingUnitOfWork, db)


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


def share(new_uow: UnitOfWorkFactory, clock: FakeClock, *accounts: str, image: ImageRef = IMAGE,
          request_id: str = "") -> dict[str, ShareState]:
    shares = handlers.share_image(image, list(accounts), image.owner_account_id, request_id, new_uow=new_uow,
                                  clock=clock)
    return {s.recipient_account_id: s.state for s in shares}


def decide(new_uow: UnitOfWorkFactory, caller: str, decision: ShareDecision, image_id: str = IMAGE.image_id,
           request_id: str = "") -> Share:
    return handlers.decide_share(image_id, decision, caller, request_id, new_uow=new_uow)


def update(new_uow: UnitOfWorkFactory, clock: FakeClock, caller: str, paths: list[str], request_id: str = "", *,
           trusted: Iterable[str] = (), mode: TrustPolicyMode | None = None, allow_platform: bool = False,
           providers: Iterable[str] = (), accounts: Iterable[str] = ()) -> TrustPolicy:
    draft = PolicyDraft(list(trusted), mode, allow_platform, list(providers), list(accounts))
    return trust_policies.update_trust_policy(draft, paths, caller, request_id, new_uow=new_uow, clock=clock)


class DraftLists(TypedDict, total=False):
    """The lists of a draft, as ``update``'s keyword arguments."""

    trusted: list[str]
    providers: list[str]
    accounts: list[str]


def trust(new_uow: UnitOfWorkFactory, clock: FakeClock, recipient: str, *owners: str) -> None:
    update(new_uow, clock, recipient, ["trusted_account_ids"], trusted=owners)


def rows(db: Database, table: Table) -> int:
    with db.engine.connect() as conn:
        return conn.execute(select(func.count()).select_from(table)).scalar_one()


class Statements:
    """Counts the SQL statements sent on an engine (BEGIN and COMMIT included)."""

    def __init__(self, db: Database):
        self.count = 0
        self._engine = db.engine
        event.listen(self._engine, "before_cursor_execute", self._seen)

    def _seen(self, *args: object) -> None:
        self.count += 1

    def close(self) -> None:
        event.remove(self._engine, "before_cursor_execute", self._seen)


# Share acceptance.

def test_a_share_is_accepted_at_once_only_by_a_recipient_that_trusts_the_owner(new_uow: UnitOfWorkFactory,
                                                                               clock: FakeClock) -> None:
    trust(new_uow, clock, BOB, CAROL, ALICE)
    trust(new_uow, clock, DAVE, CAROL)  # trusts someone else
    assert share(new_uow, clock, BOB, CAROL, DAVE) == {BOB: ShareState.ACCEPTED, CAROL: ShareState.PENDING,
                                                       DAVE: ShareState.PENDING}


def test_the_trust_of_every_new_recipient_is_read_in_one_query(db: Database, new_uow: UnitOfWorkFactory,
                                                               clock: FakeClock) -> None:
    def statements(*recipients: str) -> int:
        counted = Statements(db)
        try:
            share(new_uow, clock, *recipients)
        finally:
            counted.close()
        return counted.count

    one = statements(BOB)
    many = statements(*[f"{300000000000 + i}" for i in range(40)])
    assert one == many


def test_sharing_again_keeps_the_state_of_every_share(new_uow: UnitOfWorkFactory, clock: FakeClock) -> None:
    share(new_uow, clock, BOB, CAROL, DAVE)
    decide(new_uow, CAROL, ShareDecision.ACCEPT)
    decide(new_uow, DAVE, ShareDecision.REJECT)
    trust(new_uow, clock, BOB, ALICE)  # trusting the owner later does not accept a share that exists
    trust(new_uow, clock, DAVE, ALICE)
    expected = {BOB: ShareState.PENDING, CAROL: ShareState.ACCEPTED, DAVE: ShareState.REJECTED}
    assert share(new_uow, clock, BOB, CAROL, DAVE) == expected
    assert share(new_uow, clock, DAVE, "100000000005") == {**expected, "100000000005": ShareState.PENDING}


def test_the_limit_counts_pending_accepted_and_rejected_shares(new_uow: UnitOfWorkFactory, clock: FakeClock) -> None:
    recipients = [f"{300000000000 + i}" for i in range(50)]
    trust(new_uow, clock, recipients[0], ALICE)
    share(new_uow, clock, *recipients)
    decide(new_uow, recipients[1], ShareDecision.REJECT)
    with pytest.raises(ResourceExhausted) as refused:
        share(new_uow, clock, BOB)
    assert refused.value.reason == "SHARE_LIMIT_EXCEEDED"
    handlers.unshare_image(IMAGE, [recipients[1]], ALICE, "", new_uow=new_uow)  # unsharing frees a place at once
    assert share(new_uow, clock, BOB)[BOB] is ShareState.PENDING


# The recipient's decisions.

def test_accept_and_reject_move_a_share_between_its_states(new_uow: UnitOfWorkFactory, clock: FakeClock) -> None:
    share(new_uow, clock, BOB)
    steps = [(ShareDecision.ACCEPT, ShareState.ACCEPTED), (ShareDecision.ACCEPT, ShareState.ACCEPTED),
             (ShareDecision.REJECT, ShareState.REJECTED), (ShareDecision.REJECT, ShareState.REJECTED),
             (ShareDecision.ACCEPT, ShareState.ACCEPTED), (ShareDecision.REJECT, ShareState.REJECTED)]
    for decision, state in steps:
        decided = decide(new_uow, BOB, decision)
        assert decided == Share(IMAGE.image_id, REGION, ALICE, BOB, state, clock.now())
        with new_uow(read_only=True) as uow:
            stored = uow.shares.get(IMAGE.image_id, BOB)
            assert stored is not None
            assert stored.state is state
    share(new_uow, clock, CAROL)
    assert decide(new_uow, CAROL, ShareDecision.REJECT).state is ShareState.REJECTED  # PENDING -> REJECTED


def test_a_missing_image_and_one_not_shared_with_the_caller_are_the_same_not_found(
        db: Database, new_uow: UnitOfWorkFactory, clock: FakeClock) -> None:
    share(new_uow, clock, BOB)
    answers: list[tuple[str, str, str, bool]] = []
    for caller, image_id in ((CAROL, IMAGE.image_id), (ALICE, IMAGE.image_id), (BOB, "img-missing1")):
        for decision in ShareDecision:
            with pytest.raises(NotFound) as refused:
                decide(new_uow, caller, decision, image_id, request_id="r1")
            e = refused.value
            answers.append((e.reason, e.message.replace(image_id, "<id>"), e.resource_type,
                            e.resource_name == image_id))
    assert set(answers) == {("SHARE_NOT_FOUND", "image <id> is not shared with you", "image", True)}
    assert rows(db, REQUESTS) == 0  # a refusal leaves no trace: its request_id is free
    assert decide(new_uow, BOB, ShareDecision.ACCEPT, request_id="r1").state is ShareState.ACCEPTED


def test_the_cost_of_not_found_does_not_tell_a_missing_image_from_a_strangers(db: Database, new_uow: UnitOfWorkFactory,
                                                                              clock: FakeClock) -> None:
    share(new_uow, clock, BOB)

    def statements(image_id: str) -> int:
        counted = Statements(db)
        try:
            with pytest.raises(NotFound):
                decide(new_uow, CAROL, ShareDecision.ACCEPT, image_id)
        finally:
            counted.close()
        return counted.count

    assert statements(IMAGE.image_id) == statements("img-missing1")


def test_the_image_id_must_be_well_formed(new_uow: UnitOfWorkFactory) -> None:
    for bad in ("", "img-ABCDEFGH", "ins-abcdefgh"):
        with pytest.raises(InvalidArgument) as refused:
            decide(new_uow, BOB, ShareDecision.ACCEPT, bad)
        assert (refused.value.reason, refused.value.violations[0].field) == ("INVALID_ID", "image_id")


def test_a_decision_is_idempotent_by_request_id(new_uow: UnitOfWorkFactory, clock: FakeClock) -> None:
    share(new_uow, clock, BOB)
    share(new_uow, clock, BOB, image=ImageRef("img-alice002", REGION, ImageKind.CUSTOM, ALICE))
    first = decide(new_uow, BOB, ShareDecision.ACCEPT, request_id="r1")
    decide(new_uow, BOB, ShareDecision.REJECT, request_id="r2")
    assert decide(new_uow, BOB, ShareDecision.ACCEPT, request_id="r1") == first  # the first answer, not a new one
    with new_uow(read_only=True) as uow:
        stored = uow.shares.get(IMAGE.image_id, BOB)
        assert stored is not None
        assert stored.state is ShareState.REJECTED
    for decision, image_id in ((ShareDecision.REJECT, IMAGE.image_id), (ShareDecision.ACCEPT, "img-alice002")):
        with pytest.raises(FailedPrecondition) as refused:
            decide(new_uow, BOB, decision, image_id, request_id="r1")
        assert refused.value.reason == "IDEMPOTENCY_PARAMETER_MISMATCH"
    with pytest.raises(FailedPrecondition) as refused:  # nor is it another mutation's, of the same caller
        update(new_uow, clock, BOB, ["mode"], "r1", mode=TrustPolicyMode.AUDIT)
    assert refused.value.reason == "IDEMPOTENCY_PARAMETER_MISMATCH"


def test_a_share_unshared_is_gone_for_its_recipient(new_uow: UnitOfWorkFactory, clock: FakeClock) -> None:
    share(new_uow, clock, BOB)
    handlers.unshare_image(IMAGE, [BOB], ALICE, "", new_uow=new_uow)
    with pytest.raises(NotFound):
        decide(new_uow, BOB, ShareDecision.ACCEPT)


# Trust policies.

def test_an_account_without_a_policy_has_the_default_one(new_uow: UnitOfWorkFactory) -> None:
    assert trust_policies.get_trust_policy(BOB, new_uow=new_uow) == DEFAULT_POLICY == TrustPolicy(
        (), TrustPolicyMode.OFF, True, (), (), None)


def test_an_update_changes_the_named_fields_and_keeps_the_others(db: Database, new_uow: UnitOfWorkFactory,
                                                                 clock: FakeClock) -> None:
    first = update(new_uow, clock, BOB, ["mode", "allowed_marketplace_providers"], mode=TrustPolicyMode.AUDIT,
                   providers=["Bitnami", "Acme", "Bitnami"], trusted=[CAROL])
    assert first == TrustPolicy((), TrustPolicyMode.AUDIT, True, ("Bitnami", "Acme"), (), clock.now())
    clock.advance(seconds=5)
    second = update(new_uow, clock, BOB, ["trusted_account_ids", "allowed_account_ids"], trusted=[DAVE, CAROL],
                    accounts=[ALICE], mode=TrustPolicyMode.OFF)
    assert second == TrustPolicy((DAVE, CAROL), TrustPolicyMode.AUDIT, True, ("Bitnami", "Acme"), (ALICE,),
                                 clock.now())
    assert trust_policies.get_trust_policy(BOB, new_uow=new_uow) == second
    clock.advance(seconds=5)
    # no path: every field, the lists emptied and the flag as sent
    everything = update(new_uow, clock, BOB, [], mode=TrustPolicyMode.ENFORCE)
    assert everything == TrustPolicy((), TrustPolicyMode.ENFORCE, False, (), (), clock.now())
    assert trust_policies.get_trust_policy(BOB, new_uow=new_uow) == everything
    assert (rows(db, TRUST_POLICIES), rows(db, TRUST_ENTRIES)) == (1, 0)
    assert trust_policies.get_trust_policy(CAROL, new_uow=new_uow) == DEFAULT_POLICY


def test_the_update_time_is_kept_as_an_aware_utc_time(new_uow: UnitOfWorkFactory, clock: FakeClock) -> None:
    update(new_uow, clock, BOB, ["mode"], mode=TrustPolicyMode.AUDIT)
    assert trust_policies.get_trust_policy(BOB, new_uow=new_uow).update_time == datetime(2026, 1, 1, tzinfo=UTC)


def test_refused_updates_change_nothing(db: Database, new_uow: UnitOfWorkFactory, clock: FakeClock) -> None:
    update(new_uow, clock, BOB, ["allowed_marketplace_providers"], providers=[f"p{i}" for i in range(150)])
    cases: list[tuple[list[str], DraftLists, str]] = [
        (["mode"], {}, "MODE_REQUIRED"),
        (["owner"], {}, "INVALID_UPDATE_MASK"),
        (["allowed_account_ids"], {"accounts": [f"{300000000000 + i}" for i in range(51)]},
         "TOO_MANY_ALLOWED_ENTRIES"),
        (["trusted_account_ids"], {"trusted": [f"{300000000000 + i}" for i in range(201)]},
         "TOO_MANY_TRUSTED_ACCOUNTS"),
        (["trusted_account_ids"], {"trusted": [CAROL, "carol"]}, "INVALID_ACCOUNT_ID"),
    ]
    before = trust_policies.get_trust_policy(BOB, new_uow=new_uow)
    for paths, values, reason in cases:
        with pytest.raises(InvalidArgument) as refused:
            update(new_uow, clock, BOB, paths, "r-refused", **values)
        assert refused.value.reason == reason
    assert trust_policies.get_trust_policy(BOB, new_uow=new_uow) == before
    assert rows(db, REQUESTS) == 0
    # 150 providers and 50 accounts fit exactly
    fits = update(new_uow, clock, BOB, ["allowed_account_ids"], accounts=[f"{300000000000 + i}" for i in range(50)])
    assert len(fits.allowed_marketplace_providers) + len(fits.allowed_account_ids) == 200


def test_an_update_is_idempotent_by_request_id(db: Database, new_uow: UnitOfWorkFactory, clock: FakeClock) -> None:
    first = update(new_uow, clock, BOB, ["mode"], "r1", mode=TrustPolicyMode.AUDIT)
    clock.advance(seconds=5)
    update(new_uow, clock, BOB, ["mode"], "r2", mode=TrustPolicyMode.ENFORCE)
    assert update(new_uow, clock, BOB, ["mode"], "r1", mode=TrustPolicyMode.AUDIT) == first
    assert trust_policies.get_trust_policy(BOB, new_uow=new_uow).mode is TrustPolicyMode.ENFORCE
    # the same update spelled otherwise is the same request; another update is not
    assert update(new_uow, clock, BOB, ["mode", "mode"], "r1", mode=TrustPolicyMode.AUDIT,
                  trusted=[CAROL]) == first
    for paths, mode in ((["mode"], TrustPolicyMode.OFF), (["mode", "allow_platform_images"], TrustPolicyMode.AUDIT)):
        with pytest.raises(FailedPrecondition) as refused:
            update(new_uow, clock, BOB, paths, "r1", mode=mode)
        assert refused.value.reason == "IDEMPOTENCY_PARAMETER_MISMATCH"
    assert rows(db, REQUESTS) == 2


# Received shares.

def test_received_shares_are_listed_in_the_states_asked_for(new_uow: UnitOfWorkFactory, clock: FakeClock) -> None:
    images = [ImageRef(f"img-recv000{n}", REGION, ImageKind.CUSTOM, ALICE) for n in range(3)]
    for image in images:
        share(new_uow, clock, BOB, image=image)
    decide(new_uow, BOB, ShareDecision.ACCEPT, images[1].image_id)
    decide(new_uow, BOB, ShareDecision.REJECT, images[2].image_id)

    def received(states: list[ShareState], page_size: int = 0, token: str = "") -> tuple[list[str], str]:
        shares, next_token = handlers.list_received_shares(BOB, REGION, states, page_size, token, new_uow=new_uow)
        return [s.image_id for s in shares], next_token

    ids = [i.image_id for i in images]
    assert received([]) == (ids[:2], "")
    assert received([ShareState.REJECTED]) == (ids[2:], "")
    assert received([ShareState.REJECTED, ShareState.PENDING]) == ([ids[0], ids[2]], "")
    assert received(list(ShareState)) == (ids, "")
    page, token = received(list(ShareState), page_size=2)
    assert page == ids[:2]
    assert received(list(ShareState), 2, token) == (ids[2:], "")
    with pytest.raises(InvalidArgument) as refused:  # the token is bound to the states
        received([], 2, token)
    assert refused.value.reason == "INVALID_PAGE_TOKEN"


# Verdicts.

def test_the_verdicts_of_a_page_come_in_its_order(new_uow: UnitOfWorkFactory, clock: FakeClock) -> None:
    market = ImageRef("img-market01", REGION, ImageKind.MARKET, "", "Bitnami")
    public = ImageRef("img-public01", REGION, ImageKind.PUBLIC, "")
    bobs = ImageRef("img-bob00001", REGION, ImageKind.CUSTOM, BOB)
    carols = ImageRef("img-carol001", REGION, ImageKind.CUSTOM, CAROL)
    missing = ImageRef("img-missing1", REGION, ImageKind.CUSTOM, "")
    share(new_uow, clock, BOB)
    share(new_uow, clock, BOB, image=carols)
    decide(new_uow, BOB, ShareDecision.ACCEPT, carols.image_id)
    update(new_uow, clock, BOB, ["mode", "allowed_account_ids"], mode=TrustPolicyMode.ENFORCE, accounts=[CAROL])
    page = [carols, market, IMAGE, public, bobs, missing, carols]
    found = verdicts.check_launch_permissions(page, BOB, new_uow=new_uow)
    assert [(v.basis, v.allowed, v.image_allowed) for v in found] == [
        (LaunchBasis.SHARED, True, True), (LaunchBasis.MARKETPLACE, False, False),
        (LaunchBasis.SHARE_PENDING, False, False), (LaunchBasis.PUBLIC, True, True),
        (LaunchBasis.OWNER, True, True), (LaunchBasis.NONE, False, True), (LaunchBasis.SHARED, True, True)]
    assert {v.policy_mode for v in found} == {TrustPolicyMode.ENFORCE}
    assert verdicts.check_launch_permission(IMAGE, BOB, new_uow=new_uow) == found[2]
    assert verdicts.check_launch_permissions([], BOB, new_uow=new_uow) == []
    with pytest.raises(InvalidArgument) as refused:
        verdicts.check_launch_permissions([public] * 1001, BOB, new_uow=new_uow)
    assert refused.value.reason == "TOO_MANY_IMAGES"


def test_a_policy_change_counts_from_the_next_verdict(new_uow: UnitOfWorkFactory, clock: FakeClock) -> None:
    market = ImageRef("img-market01", REGION, ImageKind.MARKET, "", "Bitnami")

    def verdict() -> Verdict:
        return verdicts.check_launch_permission(market, BOB, new_uow=new_uow)

    assert (verdict().allowed, verdict().policy_mode) == (True, TrustPolicyMode.OFF)
    update(new_uow, clock, BOB, ["mode"], mode=TrustPolicyMode.ENFORCE)
    assert (verdict().allowed, verdict().policy_rule) == (
        False, "marketplace provider 'Bitnami' is not on allowed_marketplace_providers")
    update(new_uow, clock, BOB, ["allowed_marketplace_providers"], providers=["Bitnami"])
    assert verdict().allowed
    assert verdict().image_allowed
    update(new_uow, clock, BOB, ["mode"], mode=TrustPolicyMode.AUDIT)
    update(new_uow, clock, BOB, ["allowed_marketplace_providers"], providers=[])
    assert verdict().allowed
    assert not verdict().image_allowed


def test_a_page_costs_the_same_statements_whatever_its_size(db: Database, new_uow: UnitOfWorkFactory,
                                                            clock: FakeClock) -> None:
    update(new_uow, clock, BOB, ["mode", "allowed_account_ids"], mode=TrustPolicyMode.AUDIT, accounts=[CAROL])
    images: list[ImageRef] = []
    for n in range(500):
        kind = (ImageKind.CUSTOM, ImageKind.MARKET, ImageKind.PUBLIC)[n % 3]
        images.append(ImageRef(f"img-p{n:07d}", REGION, kind, (CAROL, DAVE, BOB, "")[n % 4] if kind is
                               ImageKind.CUSTOM else "", f"provider{n % 7}" if kind is ImageKind.MARKET else ""))
    share(new_uow, clock, BOB, image=ImageRef(images[0].image_id, REGION, ImageKind.CUSTOM, CAROL))

    def statements(page: list[ImageRef]) -> int:
        counted = Statements(db)
        try:
            verdicts.check_launch_permissions(page, BOB, new_uow=new_uow)
        finally:
            counted.close()
        return counted.count

    missing = ImageRef("img-missing1", REGION, ImageKind.CUSTOM, "")
    stranger = ImageRef("img-strange1", REGION, ImageKind.CUSTOM, DAVE)
    assert statements([missing]) == statements([stranger]) == statements(images)
