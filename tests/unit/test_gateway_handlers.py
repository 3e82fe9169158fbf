"""The gateway's handlers with fake contexts (and the gateway's own SQLite database)."""

from __future__ import annotations

import time
from dataclasses import replace
from datetime import timedelta
from decimal import Decimal
from pathlib import Path
from typing import Unpack

import pytest
from sqlalchemy import select, update

from chassis import context
from chassis.clock import FakeClock
from chassis.context import Caller
from chassis.errors import (
    Aborted,
    DomainError,
    FailedPrecondition,
    InvalidArgument,
    NotFound,
    PermissionDenied,
    RemoteError,
    Unavailable,
    Unreached,
)
from chassis.jobs import JobRecord
from chassis.rpc import status_of
from gateway.adapters.repository import settle_job_id
from gateway.adapters.tables import JOBS, LAUNCHES
from gateway.bootstrap import open_database
from gateway.domain.api_keys import Account
from gateway.domain.instances import Launch, LaunchRequest, LaunchState
from gateway.domain.model import Architecture, CatalogKind, ChargeType, ImageType, OsType, Quote, ShareState
from gateway.service_layer import images, instances, launches, shares
from gateway.service_layer.dependencies import Dependencies, ReferenceData
from tests.unit.gateway_fakes import (
    ALICES,
    NOW,
    PUBLIC,
    FakeBilling,
    FakeCatalog,
    FakeDependencies,
    FakeSharing,
    LaunchChanges,
    other_replica,
    run_another_replica,
)

ALICE, BOB, CAROL = Caller("100000000001"), Caller("100000000002"), Caller("100000000003")


@pytest.fixture
def deps(tmp_path: Path) -> FakeDependencies:
    _db, new_uow = open_database(f"sqlite:///{tmp_path}/gateway.db")
    with new_uow() as uow:
        uow.accounts.add_missing([Account(c.account_id, "") for c in (ALICE, BOB, CAROL)], NOW)
        uow.commit()
    catalog, billing = FakeCatalog(), FakeBilling()
    return FakeDependencies(catalog, FakeSharing(), billing, ReferenceData(catalog, billing), new_uow, FakeClock(NOW))


def job_of(deps: Dependencies, token: str, launch_id: str = "") -> JobRecord:
    found = other_replica(deps).get(settle_job_id(launch_id or existing_launch(deps, token).launch_id))
    assert found is not None
    return found


def as_caller(caller: Caller) -> None:
    context.current_caller.set(caller)


def launch(**changes: Unpack[LaunchChanges]) -> LaunchRequest:
    usual = LaunchRequest(region="ap-guangzhou", image_id=PUBLIC.image_id, instance_type="S5.MEDIUM4", instance_count=2,
                          charge_type=ChargeType.POSTPAID_BY_HOUR, period_months=0, system_disk_gb=50)
    return replace(usual, **changes)


async def test_listing_asks_for_received_shares_only_when_shared_images_are_wanted(deps: FakeDependencies) -> None:
    as_caller(ALICE)
    await images.list_images(ALICE, "ap-guangzhou", {ImageType.PUBLIC, ImageType.PRIVATE}, set(), "", "", 0, "",
                             deps)
    assert deps.sharing.calls == ["verdicts"]
    assert deps.catalog.listed[-1][0] == {CatalogKind.PUBLIC,
                                                                                 CatalogKind.CUSTOM}
    deps.sharing.calls.clear()
    await images.list_images(ALICE, "ap-guangzhou", set(), set(), "", "", 0, "", deps)
    assert deps.sharing.calls == ["received", "verdicts"]


async def test_shared_images_show_their_share_state_and_rejected_ones_only_when_asked_for(
        deps: FakeDependencies) -> None:
    deps.sharing.shared[(ALICES.image_id, BOB.account_id)] = ShareState.PENDING
    as_caller(BOB)
    found, _ = await images.list_images(BOB, "ap-guangzhou", {ImageType.SHARED}, set(), "", "", 0, "", deps)
    assert [(i.image_id, i.type_for(BOB.account_id), i.share_state) for i in found] == [
        (ALICES.image_id, ImageType.SHARED, ShareState.PENDING)]
    assert deps.catalog.listed[-1][0] == frozenset()
    deps.sharing.shared[(ALICES.image_id, BOB.account_id)] = ShareState.REJECTED
    found, _ = await images.list_images(BOB, "ap-guangzhou", {ImageType.SHARED}, set(), "", "", 0, "", deps)
    assert found == []
    found, _ = await images.list_images(BOB, "ap-guangzhou", {ImageType.SHARED}, {ShareState.REJECTED}, "", "", 0,
                                        "", deps)
    assert [(i.image_id, i.share_state) for i in found] == [(ALICES.image_id, ShareState.REJECTED)]


async def test_a_page_of_any_size_costs_the_same_calls(deps: FakeDependencies) -> None:
    """The verdicts of a whole page come from one call to sharing: a page of 5 costs what a page of 1 does."""
    as_caller(ALICE)
    calls = []
    for size in (1, 5):
        deps.sharing.calls.clear()
        deps.catalog.calls.clear()
        found, _ = await images.list_images(ALICE, "ap-guangzhou", set(), set(), "", "", size, "", deps)
        assert len(found) == size
        calls.append((deps.sharing.calls[:], deps.catalog.calls[:]))
    assert calls[0] == calls[1] == (["received", "verdicts"], ["images"])


async def test_who_may_change_an_images_shares(deps: FakeDependencies) -> None:
    as_caller(BOB)
    with pytest.raises(NotFound):  # a stranger cannot even see it
        await shares.share_image(BOB, ALICES.image_id, [CAROL.account_id], "", deps)
    deps.sharing.shared[(ALICES.image_id, BOB.account_id)] = ShareState.ACCEPTED
    with pytest.raises(PermissionDenied) as refused:  # a recipient sees it but cannot re-share it
        await shares.share_image(BOB, ALICES.image_id, [CAROL.account_id], "", deps)
    assert refused.value.reason == "SHARED_IMAGE_READ_ONLY"
    with pytest.raises(PermissionDenied) as refused:
        await shares.share_image(BOB, PUBLIC.image_id, [CAROL.account_id], "", deps)
    assert refused.value.reason == "NOT_IMAGE_OWNER"
    as_caller(ALICE)
    with pytest.raises(InvalidArgument) as invalid:
        await shares.share_image(ALICE, ALICES.image_id, ["999999999999"], "", deps)
    assert invalid.value.reason == "UNKNOWN_ACCOUNT"
    made = await shares.share_image(ALICE, ALICES.image_id, [CAROL.account_id], "", deps)
    assert [(s.recipient_account_id, s.state) for s in made] == [(BOB.account_id, ShareState.ACCEPTED),
                                                                 (CAROL.account_id, ShareState.PENDING)]


def billing_refusal(code: str = "INVALID_ARGUMENT", reason: str = "INSTANCE_TYPE_NOT_OFFERED") -> RemoteError:
    """What the billing client raises when billing refuses a launch (as it does before it writes)."""
    refusal = InvalidArgument(reason, "no", field="instance_type")
    return RemoteError(code, refusal.reason, refusal.message, status_of(refusal).SerializeToString())


async def test_a_launch_refused_by_billing_frees_its_client_token(deps: FakeDependencies) -> None:
    as_caller(ALICE)
    deps.billing.refuse = billing_refusal()
    with pytest.raises(RemoteError):
        await launches.run_instances(ALICE, launch(client_token="tok"), False, deps)
    deps.billing.refuse = None
    instance_ids, quote = await launches.run_instances(ALICE, launch(client_token="tok"), False, deps)
    assert len(instance_ids) == 2
    assert quote.total == Decimal("0.116")
    again, _ = await launches.run_instances(ALICE, launch(client_token="tok"), False, deps)
    assert again == instance_ids
    assert len(deps.billing.charged) == 1


UNAVAILABLE = Unavailable("DEPENDENCY_UNAVAILABLE", "the billing service is unavailable; try again")
FAILED = DomainError("DEPENDENCY_FAILED", "the billing service failed")


def stored_launch(deps: Dependencies, token: str) -> Launch | None:
    with deps.new_uow(read_only=True) as uow:
        return uow.launches.by_token(ALICE.account_id, token)


def existing_launch(deps: Dependencies, token: str) -> Launch:
    found = stored_launch(deps, token)
    assert found is not None, f"no launch of client token {token!r}"
    return found


async def states_of(deps: Dependencies) -> list[str]:
    found, _ = await instances.list_instances(ALICE, "", set(), 0, "", deps)
    return sorted(i.state.value for i in found)


@pytest.mark.parametrize("failure", [UNAVAILABLE, FAILED])
async def test_a_lost_answer_for_a_launch_that_was_charged_is_resolved_into_its_instances(
        deps: FakeDependencies, failure: DomainError) -> None:
    as_caller(ALICE)
    deps.billing.lose = failure
    instance_ids, quote = await launches.run_instances(ALICE, launch(client_token="t"), False, deps)
    assert len(instance_ids) == 2
    assert quote.total == Decimal("0.116")
    assert deps.billing.calls == ["charge", "resolve"]
    assert len(deps.billing.charged) == 1
    assert await states_of(deps) == ["RUNNING", "RUNNING"]
    assert existing_launch(deps, "t").state is LaunchState.DONE


@pytest.mark.parametrize("failure", [UNAVAILABLE, FAILED])
async def test_a_lost_answer_for_a_launch_that_was_not_charged_is_a_plain_failure_and_is_void(
        deps: FakeDependencies, failure: DomainError) -> None:
    as_caller(ALICE)
    deps.billing.refuse = failure
    with pytest.raises(DomainError) as failed:
        await launches.run_instances(ALICE, launch(client_token="t"), False, deps)
    assert failed.value is failure  # the caller hears the truth: nothing was launched
    assert stored_launch(deps, "t") is None
    assert await states_of(deps) == []
    assert deps.billing.charged == {}
    assert len(deps.billing.voided) == 1
    deps.billing.refuse = None
    instance_ids, _ = await launches.run_instances(ALICE, launch(client_token="t"), False, deps)  # "try again"
    assert len(instance_ids) == 2
    assert len(deps.billing.charged) == 1


async def test_a_charge_that_never_left_the_gateway_is_a_plain_failure(deps: FakeDependencies) -> None:
    as_caller(ALICE)
    deps.billing.refuse = Unreached("DEPENDENCY_UNAVAILABLE", "the billing service is unavailable; try again")
    with pytest.raises(Unreached):
        await launches.run_instances(ALICE, launch(client_token="t"), False, deps)
    assert deps.billing.calls == ["charge"]
    assert deps.billing.voided == set()
    assert stored_launch(deps, "t") is None
    assert await states_of(deps) == []


@pytest.mark.parametrize("charged", [True, False], ids=["charged", "not-charged"])
async def test_when_billing_cannot_be_asked_the_caller_hears_the_outcome_is_unknown(
        deps: FakeDependencies, charged: bool, monkeypatch: pytest.MonkeyPatch) -> None:
    as_caller(ALICE)
    if charged:
        deps.billing.lose = UNAVAILABLE
    deps.billing.down = None if charged else UNAVAILABLE

    async def resolve_down(launch: Launch) -> tuple[str, Quote] | None:
        raise UNAVAILABLE

    real_resolve = deps.billing.resolve
    monkeypatch.setattr(deps.billing, "resolve", resolve_down)
    with pytest.raises(Unavailable) as unknown:
        await launches.run_instances(ALICE, launch(client_token="t"), False, deps)
    assert unknown.value.reason == "LAUNCH_OUTCOME_UNKNOWN"
    launch_id = existing_launch(deps, "t").launch_id
    assert unknown.value.metadata == {"launch_id": launch_id, "client_token": "t"}
    assert existing_launch(deps, "t").state is LaunchState.IN_DOUBT
    assert await states_of(deps) == ["PENDING", "PENDING"]
    with pytest.raises(Unavailable) as still:  # a retry while billing is down: still unknown, still one launch
        await launches.run_instances(ALICE, launch(client_token="t"), False, deps)
    assert still.value.reason == "LAUNCH_OUTCOME_UNKNOWN"
    await run_another_replica(deps)  # its job was due at once, and failed: billing cannot be asked
    assert existing_launch(deps, "t").state is LaunchState.IN_DOUBT
    job = job_of(deps, "t", launch_id)
    assert (job.state, job.attempts, job.lease_owner) == ("PENDING", 1, "")
    assert job.error == "Unavailable: the billing service is unavailable; try again"
    monkeypatch.setattr(deps.billing, "resolve", real_resolve)
    deps.billing.down, deps.billing.lose = None, None
    _instance_ids, _ = await launches.run_instances(ALICE, launch(client_token="t"), False, deps)
    assert len(deps.billing.charged) == 1
    assert await states_of(deps) == ["RUNNING", "RUNNING"]
    assert (existing_launch(deps, "t").launch_id == launch_id) is charged  # not charged: voided, launched afresh
    assert (launch_id in deps.billing.voided) is not charged
    assert job_of(deps, "t", launch_id).state == "DONE"  # the retry settled it, and its job with it


async def test_each_launch_has_a_job_held_by_its_call_and_finished_with_it(deps: FakeDependencies) -> None:
    as_caller(ALICE)
    await launches.run_instances(ALICE, launch(client_token="ok"), False, deps)
    assert job_of(deps, "ok").state == "DONE"
    assert job_of(deps, "ok").attempts == 0
    deps.billing.refuse = billing_refusal()
    with pytest.raises(RemoteError):
        await launches.run_instances(ALICE, launch(client_token="refused"), False, deps)
    with deps.new_uow(read_only=True) as uow:  # forgotten, and its job done in the same transaction
        jobs = uow.connection.execute(select(JOBS.c.state)).scalars().all()
    assert sorted(jobs) == ["DONE", "DONE"]
    deps.billing.refuse, deps.billing.down = None, UNAVAILABLE
    with pytest.raises(Unavailable):
        await launches.run_instances(ALICE, launch(client_token="doubt"), False, deps)
    job = job_of(deps, "doubt")  # in doubt: its call gave its hold back, so a worker takes it at once
    assert (job.state, job.lease_owner, job.lease_until, job.attempts) == ("PENDING", "", NOW, 0)


async def test_another_replica_settles_launches_in_doubt_at_once_and_stranded_ones_once_their_hold_ends(
        deps: FakeDependencies) -> None:
    as_caller(ALICE)
    deps.billing.down = UNAVAILABLE
    for token in ("a", "b"):
        with pytest.raises(Unavailable):
            await launches.run_instances(ALICE, launch(client_token=token), False, deps)
    deps.billing.down = None
    deps.billing.charged[existing_launch(deps, "a").launch_id] = existing_launch(deps, "a")  # "a" was charged
    # a gateway that died after its claim leaves a PENDING launch, its job held by the dead call
    stale = Launch(**{**vars(existing_launch(deps, "a")), "launch_id": "lch-died0000",
                                "client_token": "c", "state": LaunchState.PENDING,
                                "instance_ids": ["ins-died0000"]})
    with deps.new_uow() as uow:
        uow.launches.claim(stale, "gateway-died", NOW + launches.STALE_LAUNCH_AFTER)
        uow.commit()
    await run_another_replica(deps)  # the two in doubt; "c" is still held by its call
    assert existing_launch(deps, "a").state is LaunchState.DONE
    assert stored_launch(deps, "b") is None
    assert existing_launch(deps, "c").state is LaunchState.PENDING
    assert "lch-died0000" not in deps.billing.voided
    deps.clock.advance(seconds=launches.STALE_LAUNCH_AFTER.total_seconds())
    await run_another_replica(deps)
    assert stored_launch(deps, "c") is None
    assert "lch-died0000" in deps.billing.voided
    assert await states_of(deps) == ["RUNNING", "RUNNING"]
    assert job_of(deps, "", "lch-died0000").state == "DONE"
    with pytest.raises(RemoteError) as late:  # a late charge of a void launch never lands
        await deps.billing.charge(stale)
    assert late.value.reason == "LAUNCH_VOIDED"


async def test_one_launch_that_cannot_be_resolved_does_not_stop_the_others_and_is_retried(
        deps: FakeDependencies, monkeypatch: pytest.MonkeyPatch) -> None:
    as_caller(ALICE)
    deps.billing.down = UNAVAILABLE
    for token in ("poison", "corrupt", "fine"):
        with pytest.raises(Unavailable):
            await launches.run_instances(ALICE, launch(client_token=token), False, deps)
    deps.billing.down = None
    poison = existing_launch(deps, "poison").launch_id
    fine = existing_launch(deps, "fine").launch_id
    real_resolve = deps.billing.resolve

    async def resolve(launch: Launch) -> tuple[str, Quote] | None:
        if launch.launch_id == poison:
            raise RuntimeError("not a domain error")
        return await real_resolve(launch)

    monkeypatch.setattr(deps.billing, "resolve", resolve)
    with deps.new_uow() as uow:  # a row that cannot even be decoded
        uow.connection.execute(update(LAUNCHES).where(LAUNCHES.c.client_token == "corrupt").values(request="{}"))
        corrupt = uow.connection.execute(select(LAUNCHES.c.launch_id).where(
            LAUNCHES.c.client_token == "corrupt")).scalar_one()
        uow.commit()
    await run_another_replica(deps)
    assert stored_launch(deps, "fine") is None  # resolved: it was never charged
    assert job_of(deps, "", fine).state == "DONE"
    assert existing_launch(deps, "poison").state is LaunchState.IN_DOUBT
    for launch_id, error in ((poison, "RuntimeError: not a domain error"), (corrupt, "KeyError")):
        job = job_of(deps, "", launch_id)  # failed, to be tried again a second later
        assert (job.state, job.attempts, job.lease_until) == ("PENDING", 1, NOW + timedelta(seconds=1))
        assert job.error.startswith(error)
    # whatever poisoned it is fixed: the next attempt settles it
    monkeypatch.setattr(deps.billing, "resolve", real_resolve)
    deps.clock.advance(seconds=1)
    await run_another_replica(deps)
    assert stored_launch(deps, "poison") is None
    assert job_of(deps, "", poison).state == "DONE"
    assert job_of(deps, "", corrupt).attempts == 2  # still failing, still retried: never given up on


async def test_launches_claimed_before_the_jobs_existed_are_adopted_once(deps: FakeDependencies) -> None:
    as_caller(ALICE)
    deps.billing.down = UNAVAILABLE
    for token in ("doubt", "pending"):
        with pytest.raises(Unavailable):
            await launches.run_instances(ALICE, launch(client_token=token), False, deps)
    with deps.new_uow() as uow:  # as an older gateway left them: no job, one still PENDING
        uow.connection.execute(JOBS.delete())
        uow.connection.execute(update(LAUNCHES).where(LAUNCHES.c.client_token == "pending").values(
            state=LaunchState.PENDING.value))
        uow.commit()
    deps.clock.advance(seconds=3)
    assert launches.adopt_unsettled_launches(deps) == 2
    assert launches.adopt_unsettled_launches(deps) == 0
    assert job_of(deps, "doubt").lease_until is None  # due at once
    assert job_of(deps, "pending").lease_until == NOW + launches.STALE_LAUNCH_AFTER  # once its call is over
    deps.billing.down = None
    await run_another_replica(deps)
    assert stored_launch(deps, "doubt") is None
    assert stored_launch(deps, "pending") is not None
    deps.clock.advance(seconds=launches.STALE_LAUNCH_AFTER.total_seconds())
    await run_another_replica(deps)
    assert stored_launch(deps, "pending") is None
    assert len(deps.billing.voided) == 2


async def test_a_launch_without_a_client_token_can_be_retried_with_its_launch_id(deps: FakeDependencies) -> None:
    as_caller(ALICE)
    deps.billing.down = UNAVAILABLE
    with pytest.raises(Unavailable) as unknown:
        await launches.run_instances(ALICE, launch(), False, deps)
    token = unknown.value.metadata["client_token"]
    assert token == unknown.value.metadata["launch_id"]
    assert token in unknown.value.message
    deps.billing.down = None
    instance_ids, _ = await launches.run_instances(ALICE, launch(client_token=token), False, deps)
    again, _ = await launches.run_instances(ALICE, launch(client_token=token), False, deps)
    assert again == instance_ids
    assert len(deps.billing.charged) == 1


@pytest.mark.parametrize("name", ["web\x00evil", "line\nbreak", "bell\x07", "del\x7f"])
async def test_an_instance_name_with_control_characters_is_refused_before_anything_is_charged(
        deps: FakeDependencies, name: str) -> None:
    as_caller(ALICE)
    with pytest.raises(InvalidArgument) as refused:
        await launches.run_instances(ALICE, launch(instance_name=name), False, deps)
    assert refused.value.reason == "INVALID_INSTANCE_NAME"
    assert deps.billing.calls == []
    assert await states_of(deps) == []


async def test_a_missing_image_and_a_strangers_private_one_cost_the_same_calls(deps: FakeDependencies) -> None:
    """Existence must not leak through timing: both paths ask the catalog and sharing (and billing,
    for a quote) exactly alike, and both answer the same NOT_FOUND."""
    as_caller(BOB)
    calls = {}
    for image_id in (ALICES.image_id, "img-zz000000"):
        deps.catalog.calls.clear()
        deps.sharing.calls.clear()
        deps.billing.calls.clear()
        answers = []
        for attempt in (
            lambda i=image_id: images.get_image(BOB, i, deps),
            lambda i=image_id: launches.quote_run_instances(launch(image_id=i), deps),
            lambda i=image_id: launches.run_instances(BOB, launch(image_id=i), False, deps),
            lambda i=image_id: shares.share_image(BOB, i, [CAROL.account_id], "", deps),
        ):
            with pytest.raises(NotFound) as hidden:
                await attempt()
            answers.append(status_of(hidden.value).SerializeToString().replace(image_id.encode(), b"ID"))
        calls[image_id] = (deps.catalog.calls[:], deps.sharing.calls[:], deps.billing.calls[:], answers)
    assert calls[ALICES.image_id] == calls["img-zz000000"]
    assert calls[ALICES.image_id][:3] == (["image"] * 4, ["verdict"] * 4, ["quote"])


async def test_a_quote_reports_the_permission_problem_before_the_price_problem(deps: FakeDependencies) -> None:
    as_caller(BOB)
    deps.sharing.shared[(ALICES.image_id, BOB.account_id)] = ShareState.PENDING
    deps.billing.refuse = billing_refusal()
    with pytest.raises(FailedPrecondition) as refused:
        await launches.quote_run_instances(launch(image_id=ALICES.image_id), deps)
    assert refused.value.reason == "SHARE_PENDING"


async def test_dry_run_creates_nothing(deps: FakeDependencies) -> None:
    as_caller(ALICE)
    instance_ids, quote = await launches.run_instances(ALICE, launch(), True, deps)
    assert instance_ids == []
    assert quote.lines[0].quantity == 2
    assert deps.billing.charged == {}
    found, _ = await instances.list_instances(ALICE, "", set(), 0, "", deps)
    assert found == []


async def test_share_requests_are_bounded(deps: FakeDependencies) -> None:
    as_caller(ALICE)
    for account_ids, request_id, reason in [
        ([f"{300000000000 + i}" for i in range(51)], "", "TOO_MANY_ACCOUNTS"),
        ([BOB.account_id], "r" * 65, "INVALID_REQUEST_ID"),
        (["not-an-account"], "", "INVALID_ACCOUNT_ID"),
    ]:
        with pytest.raises(InvalidArgument) as refused:
            await shares.share_image(ALICE, ALICES.image_id, account_ids, request_id, deps)
        assert refused.value.reason == reason
    assert deps.sharing.calls == []


async def test_a_retry_finds_the_launch_of_a_gateway_that_died_and_resolves_it_once_it_is_stale(
        deps: FakeDependencies) -> None:
    as_caller(ALICE)
    died = Launch("lch-died0001", ALICE.account_id, "t", launch(client_token="t").fingerprint(), LaunchState.PENDING,
                  launch(client_token="t"), OsType.LINUX, Architecture.X86_64, "", True, ["ins-died0001"], NOW)
    with deps.new_uow() as uow:
        uow.launches.claim(died, "gateway-died", NOW + launches.STALE_LAUNCH_AFTER)
        uow.commit()
    context.deadline.set(time.monotonic() + 0.2)
    try:  # its call may still be running (on another replica): the retry waits, then says so
        with pytest.raises(Aborted) as busy:
            await launches.run_instances(ALICE, launch(client_token="t"), False, deps)
        assert busy.value.reason == "LAUNCH_IN_PROGRESS"
        deps.clock.advance(seconds=launches.STALE_LAUNCH_AFTER.total_seconds() + 1)
        instance_ids, _ = await launches.run_instances(ALICE, launch(client_token="t"), False, deps)
    finally:
        context.deadline.set(None)
    assert "lch-died0001" in deps.billing.voided  # never charged: voided, then launched afresh, once
    assert instance_ids != ["ins-died0001"]
    assert len(deps.billing.charged) == 1
    assert existing_launch(deps, "t").state is LaunchState.DONE
    assert job_of(deps, "", "lch-died0001").state == "DONE"  # the retry settled it: no worker needed
