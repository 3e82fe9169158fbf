"""The gateway's instance handlers (terminate, reset, quote a reset, list by state, prices, charges) with fake
contexts and the gateway's own SQLite database; time moved by a FakeClock."""

from __future__ import annotations

import asyncio
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import NoReturn, Unpack

import pytest
from sqlalchemy import select

from chassis import context
from chassis.clock import FakeClock
from chassis.context import Caller
from chassis.errors import DomainError, FailedPrecondition, InvalidArgument, NotFound, Unavailable
from chassis.rpc import status_of
from gateway.adapters.tables import JOBS
from gateway.bootstrap import open_database
from gateway.domain.api_keys import Account
from gateway.domain.instances import InstanceState, LaunchRequest, Reset
from gateway.domain.model import (
    CatalogKind,
    ChargeFilter,
    ChargeType,
    ImageState,
    QuoteLineKind,
    ShareState,
    TrustPolicy,
    TrustPolicyMode,
)
from gateway.service_layer import accounts, image_lifecycle, instances, launches, resets
from gateway.service_layer.dependencies import Dependencies, ReferenceData
from tests.unit.gateway_fakes import (
    ARM,
    BIG,
    NOW,
    PUBLIC,
    WINDOWS,
    FakeBilling,
    FakeCatalog,
    FakeDependencies,
    FakeSharing,
    LaunchChanges,
    image,
    refusal,
    run_another_replica,
)

ALICE, BOB = Caller("100000000001"), Caller("100000000002")
DOWN = Unavailable("DEPENDENCY_UNAVAILABLE", "the billing service is unavailable; try again")
BOBS = image("img-bob00001", CatalogKind.CUSTOM, BOB.account_id)


@pytest.fixture
def deps(tmp_path: Path) -> FakeDependencies:
    _db, new_uow = open_database(f"sqlite:///{tmp_path}/gateway.db")
    with new_uow() as uow:
        uow.accounts.add_missing([Account(c.account_id, "") for c in (ALICE, BOB)], NOW)
        uow.commit()
    catalog, billing = FakeCatalog(), FakeBilling()
    catalog.known[BOBS.image_id] = BOBS
    return FakeDependencies(catalog, FakeSharing(), billing, ReferenceData(catalog, billing), new_uow, FakeClock(NOW))


@pytest.fixture(autouse=True)
def as_alice() -> None:
    context.current_caller.set(ALICE)
    context.deadline.set(None)


async def launched(deps: Dependencies, count: int = 1, caller: Caller = ALICE,
                   **changes: Unpack[LaunchChanges]) -> list[str]:
    context.current_caller.set(caller)
    usual = LaunchRequest(region="ap-guangzhou", image_id=PUBLIC.image_id, instance_type="S5.MEDIUM4",
                          instance_count=count, charge_type=ChargeType.POSTPAID_BY_HOUR, period_months=0,
                          system_disk_gb=50)
    instance_ids, _ = await launches.run_instances(caller, replace(usual, **changes), False, deps)
    context.current_caller.set(ALICE)
    return instance_ids


async def state_of(deps: Dependencies, instance_id: str, caller: Caller = ALICE) -> tuple[InstanceState, str]:
    found = await instances.get_instance(caller, instance_id, deps)
    return found.state, found.image_id


def pending_jobs(deps: Dependencies, kind: str) -> list[tuple[str, datetime | None]]:
    """(lease owner, due) of the PENDING jobs of a kind."""
    with deps.new_uow(read_only=True) as uow:
        rows = uow.connection.execute(select(JOBS.c.lease_owner, JOBS.c.lease_until).where(
            JOBS.c.kind == kind, JOBS.c.state == "PENDING")).all()
    return [(r.lease_owner, r.lease_until and r.lease_until.replace(tzinfo=UTC)) for r in rows]


def hidden(error: DomainError, instance_id: str) -> bytes:
    answer: bytes = status_of(error).SerializeToString()  # google.rpc has no py.typed marker: Any to mypy
    return answer.replace(instance_id.encode(), b"ID")


# TerminateInstances

async def test_terminating_ends_usage_once_and_again_changes_nothing(deps: FakeDependencies) -> None:
    first, second = await launched(deps, 2)
    deps.clock.advance(minutes=30)
    ended = await instances.terminate_instances(ALICE, [second, first, second], "r1", deps)
    assert [(i.instance_id, i.state, i.terminate_time) for i in ended] == [
        (second, InstanceState.TERMINATED, deps.clock.now()), (first, InstanceState.TERMINATED, deps.clock.now())]
    assert deps.billing.ended == [((second, first), deps.clock.now())]
    assert pending_jobs(deps, "end-usage") == []  # the call told billing itself
    deps.clock.advance(minutes=5)
    again = await instances.terminate_instances(ALICE, [first, second], "r1", deps)  # the same request: its answer
    assert again == ended
    also = await instances.terminate_instances(ALICE, [first], "r2", deps)  # a terminated instance stays so
    assert [(i.state, i.terminate_time) for i in also] == [(InstanceState.TERMINATED, NOW + timedelta(minutes=30))]
    assert len(deps.billing.ended) == 1


async def test_a_strangers_instance_is_not_found_like_a_missing_one_and_nothing_is_terminated(
        deps: FakeDependencies) -> None:
    mine = (await launched(deps))[0]
    bobs = (await launched(deps, caller=BOB))[0]
    answers = []
    for other in (bobs, "ins-zz000000"):
        with pytest.raises(NotFound) as refused:
            await instances.terminate_instances(ALICE, [mine, other], "", deps)
        assert refused.value.reason == "INSTANCE_NOT_FOUND"
        answers.append(hidden(refused.value, other))
    assert answers[0] == answers[1]
    assert await state_of(deps, mine) == (InstanceState.RUNNING, PUBLIC.image_id)
    assert await state_of(deps, bobs, BOB) == (InstanceState.RUNNING, PUBLIC.image_id)
    assert deps.billing.ended == []


@pytest.mark.parametrize(("instance_ids", "reason"), [
    ([], "INVALID_INSTANCE_COUNT"), ([f"ins-{n:08d}" for n in range(101)], "INVALID_INSTANCE_COUNT"),
    (["i-1"], "INVALID_ID"),
])
async def test_termination_requests_are_bounded(deps: FakeDependencies, instance_ids: list[str], reason: str) -> None:
    with pytest.raises(InvalidArgument) as refused:
        await instances.terminate_instances(ALICE, instance_ids, "", deps)
    assert refused.value.reason == reason


async def test_an_instance_in_the_middle_of_a_change_refuses_the_whole_termination(deps: FakeDependencies) -> None:
    resetting, running = await launched(deps, 2)
    deps.billing.reset_down = DOWN
    reset_instance, _ = await resets.reset_instance(ALICE, resetting, WINDOWS.image_id, "", False, deps)
    assert reset_instance.state is InstanceState.RESETTING
    deps.billing.down = DOWN
    with pytest.raises(Unavailable):  # a launch whose outcome is not known yet: its instance is PENDING
        await launched(deps)
    (launching,) = [i.instance_id for i in (await instances.list_instances(ALICE, "", {InstanceState.PENDING}, 0,
                                                                              "", deps))[0]]
    for busy in (resetting, launching):
        with pytest.raises(FailedPrecondition) as refused:
            await instances.terminate_instances(ALICE, [running, busy], "", deps)
        assert refused.value.reason == "INSTANCE_BUSY"
        assert busy in refused.value.message
    assert (await state_of(deps, running))[0] is InstanceState.RUNNING


async def test_when_billing_is_down_the_instances_are_terminated_and_their_usage_ends_later(
        deps: FakeDependencies) -> None:
    mine = (await launched(deps))[0]
    deps.billing.down = DOWN
    ended = await instances.terminate_instances(ALICE, [mine], "", deps)
    assert ended[0].state is InstanceState.TERMINATED
    assert pending_jobs(deps, "end-usage") == [("", NOW)]  # given up by its call: due at once
    await run_another_replica(deps)  # billing still down: retried later
    assert deps.billing.ended == []
    deps.billing.down = None
    deps.clock.advance(seconds=2)
    await run_another_replica(deps)
    assert deps.billing.ended == [((mine,), NOW)]  # ended when it was terminated, not when billing heard of it
    assert pending_jobs(deps, "end-usage") == []


async def test_racing_terminations_with_one_request_id_end_usage_once(deps: FakeDependencies) -> None:
    ids = await launched(deps, 3)
    answers = await asyncio.gather(*(instances.terminate_instances(ALICE, ids, "race", deps) for _ in range(10)))
    assert all(a == answers[0] for a in answers)
    assert len(deps.billing.ended) == 1


# ResetInstance and QuoteResetInstance

async def test_a_reset_runs_the_new_image_at_its_new_price(deps: FakeDependencies) -> None:
    mine = (await launched(deps))[0]
    deps.clock.advance(hours=2)
    quote = await resets.quote_reset_instance(ALICE, mine, WINDOWS.image_id, deps)
    assert [line.kind for line in quote.lines] == [QuoteLineKind.INSTANCE, QuoteLineKind.IMAGE_LICENSE]
    assert deps.billing.resets == {}  # a quote charges nothing
    reset, priced = await resets.reset_instance(ALICE, mine, WINDOWS.image_id, "r1", False, deps)
    assert (reset.state, reset.image_id, reset.update_time) == (InstanceState.RUNNING, WINDOWS.image_id,
                                                                deps.clock.now())
    assert priced == quote
    (charged,) = deps.billing.resets.values()
    assert (charged.instance_id, charged.image_id, charged.effective_time) == (mine, WINDOWS.image_id,
                                                                             deps.clock.now())
    assert pending_jobs(deps, "reset-instance") == []
    again, priced_again = await resets.reset_instance(ALICE, mine, WINDOWS.image_id, "r1", False, deps)
    assert (again.state, again.image_id, priced_again) == (InstanceState.RUNNING, WINDOWS.image_id, quote)
    assert len(deps.billing.resets) == 1


async def test_a_dry_run_prices_and_changes_nothing(deps: FakeDependencies) -> None:
    mine = (await launched(deps))[0]
    instance, quote = await resets.reset_instance(ALICE, mine, WINDOWS.image_id, "", True, deps)
    assert (instance.state, instance.image_id) == (InstanceState.RUNNING, PUBLIC.image_id)
    assert quote.lines
    assert deps.billing.resets == {}


@pytest.mark.parametrize(("target", "reason", "error"), [
    (ARM.image_id, "ARCHITECTURE_MISMATCH", InvalidArgument),
    (BIG.image_id, "SYSTEM_DISK_TOO_SMALL", InvalidArgument),
    (BOBS.image_id, "IMAGE_NOT_FOUND", NotFound),
    ("img-zz000000", "IMAGE_NOT_FOUND", NotFound),
    ("bad", "INVALID_ID", InvalidArgument),
])
async def test_a_reset_runs_the_launch_checks(deps: FakeDependencies, target: str, reason: str,
                                              error: type[DomainError]) -> None:
    mine = (await launched(deps))[0]
    for dry_run in (True, False):
        with pytest.raises(error) as refused:
            await resets.reset_instance(ALICE, mine, target, "", dry_run, deps)
        assert refused.value.reason == reason
    with pytest.raises(error):
        await resets.quote_reset_instance(ALICE, mine, target, deps)
    assert await state_of(deps, mine) == (InstanceState.RUNNING, PUBLIC.image_id)
    assert deps.billing.resets == {}


@pytest.mark.parametrize(("share", "reason"), [(ShareState.PENDING, "SHARE_PENDING"),
                                           (ShareState.REJECTED, "SHARE_REJECTED")])
async def test_a_share_that_is_not_accepted_cannot_be_reset_to(deps: FakeDependencies, share: ShareState,
                                                               reason: str) -> None:
    mine = (await launched(deps))[0]
    deps.sharing.shared[(BOBS.image_id, ALICE.account_id)] = share
    with pytest.raises(FailedPrecondition) as refused:
        await resets.reset_instance(ALICE, mine, BOBS.image_id, "", False, deps)
    assert refused.value.reason == reason
    deps.sharing.shared[(BOBS.image_id, ALICE.account_id)] = ShareState.ACCEPTED
    reset, _ = await resets.reset_instance(ALICE, mine, BOBS.image_id, "", False, deps)
    assert reset.image_id == BOBS.image_id


async def test_the_trust_policy_refuses_or_flags_a_reset(deps: FakeDependencies) -> None:
    mine = (await launched(deps))[0]
    deps.sharing.shared[(BOBS.image_id, ALICE.account_id)] = ShareState.ACCEPTED
    deps.sharing.policies[ALICE.account_id] = TrustPolicy(mode=TrustPolicyMode.ENFORCE)
    with pytest.raises(FailedPrecondition) as refused:
        await resets.reset_instance(ALICE, mine, BOBS.image_id, "", False, deps)
    assert refused.value.reason == "IMAGE_NOT_ALLOWED"
    assert "allowed_account_ids" in refused.value.message
    assert refused.value.metadata["mode"] == "ENFORCE"
    deps.sharing.policies[ALICE.account_id] = TrustPolicy(mode=TrustPolicyMode.AUDIT)
    reset, quote = await resets.reset_instance(ALICE, mine, BOBS.image_id, "", False, deps)
    assert reset.image_id == BOBS.image_id
    assert quote.image_allowed is False


async def test_a_terminated_or_strangers_instance_cannot_be_reset(deps: FakeDependencies) -> None:
    mine = (await launched(deps))[0]
    bobs = (await launched(deps, caller=BOB))[0]
    with pytest.raises(NotFound) as refused:
        await resets.reset_instance(ALICE, bobs, PUBLIC.image_id, "", False, deps)
    assert refused.value.reason == "INSTANCE_NOT_FOUND"
    await instances.terminate_instances(ALICE, [mine], "", deps)
    for attempt in (resets.reset_instance(ALICE, mine, PUBLIC.image_id, "", False, deps),
                    resets.quote_reset_instance(ALICE, mine, PUBLIC.image_id, deps)):
        with pytest.raises(FailedPrecondition) as terminated:
            await attempt
        assert terminated.value.reason == "INSTANCE_TERMINATED"
    with pytest.raises(FailedPrecondition) as terminated:
        await image_lifecycle.create_image(ALICE, mine, "backup", "", "", False, deps)
    assert terminated.value.reason == "INSTANCE_TERMINATED"


async def test_when_billing_is_down_a_reset_stays_resetting_until_its_job_finishes_it(deps: FakeDependencies) -> None:
    mine = (await launched(deps))[0]
    deps.billing.reset_down = DOWN
    reset, _quote = await resets.reset_instance(ALICE, mine, WINDOWS.image_id, "r1", False, deps)
    assert (reset.state, reset.image_id) == (InstanceState.RESETTING, PUBLIC.image_id)
    assert pending_jobs(deps, "reset-instance") == [("", NOW)]  # given up by its call: due at once
    with pytest.raises(FailedPrecondition) as busy:  # another reset meanwhile
        await resets.reset_instance(ALICE, mine, PUBLIC.image_id, "r2", False, deps)
    assert busy.value.reason == "INSTANCE_BUSY"
    again, _ = await resets.reset_instance(ALICE, mine, WINDOWS.image_id, "r1", False, deps)  # the same request
    assert again.state is InstanceState.RESETTING  # answered, not refused: it is its own reset
    deps.billing.reset_down = None
    deps.clock.advance(seconds=30)
    await run_another_replica(deps)
    assert await state_of(deps, mine) == (InstanceState.RUNNING, WINDOWS.image_id)
    (charged,) = deps.billing.resets.values()
    assert charged.effective_time == NOW  # priced from when it was asked for
    finished, _ = await resets.reset_instance(ALICE, mine, WINDOWS.image_id, "r1", False, deps)
    assert finished.state is InstanceState.RUNNING
    assert len(deps.billing.resets) == 1


class Died(BaseException):
    """The process running the call died: nothing after this point of the call runs."""


@pytest.mark.parametrize("ending", [Died, asyncio.CancelledError], ids=["died", "caller-left"])
async def test_a_reset_whose_call_did_not_finish_it_is_finished_by_its_job(deps: FakeDependencies,
                                                                           ending: type[BaseException]) -> None:
    """A call that died leaves the job due when its hold ends; one whose caller left gives it up at once."""
    mine = (await launched(deps))[0]
    original = resets.finish_reset

    async def interrupted(reset: Reset, deps: Dependencies) -> NoReturn:
        raise ending()

    resets.finish_reset = interrupted
    try:
        with pytest.raises(ending):
            await resets.reset_instance(ALICE, mine, WINDOWS.image_id, "", False, deps)
    finally:
        resets.finish_reset = original
    assert (await state_of(deps, mine))[0] is InstanceState.RESETTING
    await run_another_replica(deps)
    if ending is Died:  # still held by the call that died
        assert (await state_of(deps, mine))[0] is InstanceState.RESETTING
        deps.clock.advance(seconds=11)
        await run_another_replica(deps)
    assert await state_of(deps, mine) == (InstanceState.RUNNING, WINDOWS.image_id)
    assert len(deps.billing.resets) == 1


async def test_a_termination_whose_caller_left_gives_its_job_up_at_once(deps: FakeDependencies,
                                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    mine = (await launched(deps))[0]
    original = deps.billing.end_usage

    async def left(instance_ids: list[str], end_time: datetime) -> NoReturn:
        raise asyncio.CancelledError

    monkeypatch.setattr(deps.billing, "end_usage", left)
    with pytest.raises(asyncio.CancelledError):
        await instances.terminate_instances(ALICE, [mine], "", deps)
    assert pending_jobs(deps, "end-usage") == [("", NOW)]
    monkeypatch.setattr(deps.billing, "end_usage", original)
    await run_another_replica(deps)
    assert deps.billing.ended == [((mine,), NOW)]


async def test_a_reset_that_billing_refuses_is_undone(deps: FakeDependencies) -> None:
    mine = (await launched(deps))[0]
    deps.billing.lose = refusal("FAILED_PRECONDITION", "INSTANCE_USAGE_ENDED")
    with pytest.raises(DomainError):
        await resets.reset_instance(ALICE, mine, WINDOWS.image_id, "", False, deps)
    assert await state_of(deps, mine) == (InstanceState.RUNNING, PUBLIC.image_id)
    assert pending_jobs(deps, "reset-instance") == []


async def test_racing_resets_with_one_request_id_reset_once(deps: FakeDependencies) -> None:
    mine = (await launched(deps))[0]
    answers = await asyncio.gather(*(resets.reset_instance(ALICE, mine, WINDOWS.image_id, "race", False, deps)
                                     for _ in range(10)), return_exceptions=True)
    assert [a for a in answers if isinstance(a, BaseException)] == []
    done = [a for a in answers if not isinstance(a, BaseException)]
    assert {(i.state, i.image_id) for i, _ in done} == {(InstanceState.RUNNING, WINDOWS.image_id)}
    assert len(deps.billing.resets) == 1


async def test_the_backup_story(deps: FakeDependencies) -> None:
    """Launch two instances, make an image of one, reset both to it: both run it."""
    first, second = await launched(deps, 2)
    backup = await image_lifecycle.create_image(ALICE, first, "backup", "", "", False, deps)
    assert backup.base_image_id == PUBLIC.image_id
    deps.catalog.known[backup.image_id] = replace(backup, state=ImageState.NORMAL)
    for instance_id in (first, second):
        reset, _ = await resets.reset_instance(ALICE, instance_id, backup.image_id, "", False, deps)
        assert (reset.state, reset.image_id) == (InstanceState.RUNNING, backup.image_id)
    again = await image_lifecycle.create_image(ALICE, second, "again", "", "", True, deps)
    assert again.base_image_id == backup.image_id  # an image of a reset instance is of the image it runs


# ListInstances by state, ListPrices, ListCharges

async def test_instances_are_listed_by_state(deps: FakeDependencies) -> None:
    first, second, third = sorted(await launched(deps, 3))
    await instances.terminate_instances(ALICE, [second], "", deps)
    found, _ = await instances.list_instances(ALICE, "", {InstanceState.TERMINATED}, 0, "", deps)
    assert [i.instance_id for i in found] == [second]
    found, _ = await instances.list_instances(ALICE, "", {InstanceState.RUNNING}, 0, "", deps)
    assert [i.instance_id for i in found] == [first, third]
    _page, token = await instances.list_instances(ALICE, "", {InstanceState.RUNNING}, 1, "", deps)
    with pytest.raises(InvalidArgument) as refused:  # a token is bound to its filters
        await instances.list_instances(ALICE, "", {InstanceState.TERMINATED}, 1, token, deps)
    assert refused.value.reason == "INVALID_PAGE_TOKEN"


async def test_prices_are_listed_from_billing_and_the_region_is_checked_first(deps: FakeDependencies) -> None:
    prices, _ = await instances.list_prices("ap-guangzhou", ChargeType.SPOTPAID, "", 0, "", deps)
    assert [(p.region, p.charge_type) for p in prices] == [("ap-guangzhou", ChargeType.SPOTPAID)]
    with pytest.raises(InvalidArgument) as refused:
        await instances.list_prices("mars-1", None, "", 0, "", deps)
    assert refused.value.reason == "UNKNOWN_REGION"
    assert deps.billing.calls.count("prices") == 1


async def test_charges_are_filtered_by_instance(deps: FakeDependencies) -> None:
    first = (await launched(deps))[0]
    await launched(deps)
    charges, _ = await accounts.list_charges(ChargeFilter(instance_id=first), 0, "", deps.billing)
    assert [c.instance_ids for c in charges] == [(first,)]


@pytest.mark.parametrize("name", ["", "web"])
def test_a_launch_writes_the_rows_its_instances_would_make(name: str) -> None:
    from gateway.adapters.repository import _instance_values, _launch_rows
    from gateway.domain.instances import Launch, LaunchState
    from gateway.domain.model import Architecture, ChargeType, OsType

    request = LaunchRequest(region="ap-guangzhou", image_id="img-ubuntu01", instance_type="S5.MEDIUM4",
                            instance_count=3, charge_type=ChargeType.PREPAID, period_months=12, system_disk_gb=80,
                            instance_name=name, client_token="t-1")
    launch = Launch("lch-00000001", "100000000001", "t-1", request.fingerprint(), LaunchState.PENDING, request,
                    OsType.LINUX, Architecture.ARM64, "", True, ["ins-aaa00001", "ins-aaa00002", "ins-aaa00003"],
                    datetime(2026, 12, 2, 1, 2, 3, 456789, tzinfo=UTC))
    assert _launch_rows(launch) == [_instance_values(i) for i in launch.instances()]
