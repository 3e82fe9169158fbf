"""Shares you can trust and instances with a life, through the public API: the gateway composing real in-process
catalog, sharing and billing servers, on SQLite and on PostgreSQL. The acceptance and trust rules as a matrix;
NOT_FOUND identity on every new RPC; terminate and reset racing on two gateway replicas; usage metered across a
clock moved by hours; a policy change seen by the very next call on another replica; a page of 50 images costing
the calls of a page of 1."""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import Awaitable, Callable, Iterable
from pathlib import Path
from typing import Any, TypedDict, Unpack

import grpc
import pytest
from cloudimg.gateway.v1 import account_service_pb2 as account_pb
from cloudimg.gateway.v1 import account_service_pb2_grpc as account_grpc
from cloudimg.gateway.v1 import image_service_pb2 as pb
from cloudimg.gateway.v1 import image_service_pb2_grpc as pb_grpc
from cloudimg.gateway.v1 import image_share_service_pb2 as share_pb
from cloudimg.gateway.v1 import image_share_service_pb2_grpc as share_grpc
from cloudimg.gateway.v1 import instance_service_pb2 as ins_pb
from cloudimg.gateway.v1 import instance_service_pb2_grpc as ins_grpc
from google.protobuf import field_mask_pb2
from google.protobuf.message import Message
from sqlalchemy import ColumnElement, Table, create_engine, func, select

from billing_service.adapters.tables import CHARGES
from catalog_service.domain.seed import seed_image_id
from chassis.clients import Downstream
from chassis.clock import FakeClock
from chassis.convert import decimal_of
from tests.conftest import ALICE, BOB, ServerFactory, rich_status
from tests.integration.cloud import SERVICES, RunOptions, start_gateway, start_services

GZ, SG = "ap-guangzhou", "ap-singapore"
UBUNTU = seed_image_id(GZ, "ubuntu-2204-x86")
ALICE_WEB = seed_image_id(GZ, "alice-web")
MODES = {"OFF": share_pb.TRUST_POLICY_MODE_OFF, "AUDIT": share_pb.TRUST_POLICY_MODE_AUDIT,
         "ENFORCE": share_pb.TRUST_POLICY_MODE_ENFORCE}


class PolicyFields(TypedDict, total=False):
    """The fields of a TrustPolicy that an update sends."""

    trusted_account_ids: Iterable[str]
    mode: share_pb.TrustPolicyMode.ValueType
    allow_platform_images: bool
    allowed_marketplace_providers: Iterable[str]
    allowed_account_ids: Iterable[str]


class Cloud:
    def __init__(self, addr: str, keys: dict[str, str], urls: dict[str, str], addrs: dict[str, str]):
        self.channel = grpc.aio.insecure_channel(addr)
        self.images = pb_grpc.ImageServiceStub(self.channel)
        self.shares = share_grpc.ImageShareServiceStub(self.channel)
        self.instances = ins_grpc.InstanceServiceStub(self.channel)
        self.accounts = account_grpc.AccountServiceStub(self.channel)
        self.keys, self.urls, self.addrs = keys, urls, addrs

    def auth(self, who: str = "alice") -> tuple[tuple[str, str]]:
        return (("authorization", f"Bearer {self.keys[who]}"),)

    async def refused(self, call: Callable[..., Awaitable[object]], request: Message,
                      who: str = "alice") -> tuple[grpc.StatusCode, str]:
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await call(request, metadata=self.auth(who))
        return refused.value.code(), rich_status(refused.value)[1].reason

    async def launch(self, who: str = "alice", region: str = GZ, image_id: str = UBUNTU, count: int = 1,
                     **more: Unpack[RunOptions]) -> list[str]:
        launched: ins_pb.RunInstancesResponse = await self.instances.RunInstances(ins_pb.RunInstancesRequest(
            region=region, image_id=image_id, instance_type="S5.MEDIUM4", instance_count=count, **more),
            metadata=self.auth(who))
        return list(launched.instance_ids)

    async def policy(self, who: str, paths: list[str], **fields: Unpack[PolicyFields]) -> share_pb.TrustPolicy:
        response: share_pb.UpdateTrustPolicyResponse = await self.shares.UpdateTrustPolicy(
            share_pb.UpdateTrustPolicyRequest(policy=share_pb.TrustPolicy(**fields),
                                              update_mask=field_mask_pb2.FieldMask(paths=paths)),
            metadata=self.auth(who))
        return response.policy

    async def charges(self, who: str = "alice", instance_id: str = "") -> list[account_pb.Charge]:
        found: list[account_pb.Charge] = []
        token = ""
        while True:
            page: account_pb.ListChargesResponse = await self.accounts.ListCharges(
                account_pb.ListChargesRequest(page_token=token, instance_id=instance_id), metadata=self.auth(who))
            found += page.charges
            token = page.next_page_token
            if not token:
                return found

    def count(self, service: str, table: Table, *where: ColumnElement[bool]) -> int:
        engine = create_engine(self.urls[service])
        with engine.connect() as conn:
            found = conn.execute(select(func.count()).select_from(table).where(*where)).scalar_one()
        engine.dispose()
        return int(found)


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def urls(request: pytest.FixtureRequest, tmp_path: Path) -> dict[str, str]:
    """A database per service: SQLite files, then PostgreSQL databases."""
    if request.param == "postgres":
        new_database = request.getfixturevalue("postgres_database")
        return {name: new_database() for name in SERVICES}
    return {name: f"sqlite:///{tmp_path}/{name}.db" for name in SERVICES}


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
async def cloud(serve: ServerFactory, urls: dict[str, str], clock: FakeClock) -> Cloud:
    # Usage is settled when the instances end, here: the periodic settlement waits longer than any test runs.
    addrs, keys = await start_services(serve, urls, clock=clock,
                                       billing_settings={"usage_settle_interval_seconds": 3600})
    return Cloud(addrs["gateway"], keys, urls, addrs)


async def test_the_acceptance_and_trust_matrix(cloud: Cloud) -> None:
    """{owner trusted, untrusted} × {on the allow-list, not} × {OFF, AUDIT, ENFORCE} × {launch, reset, quote, list},
    as bob, for alice's image shared with him."""
    (bobs_instance,) = await cloud.launch("bob")
    seen: list[tuple[tuple[bool, str, bool], str]] = []
    for trusted in (True, False):
        await cloud.policy("bob", ["trusted_account_ids"], trusted_account_ids=[ALICE] if trusted else [])
        await cloud.shares.UnshareImage(share_pb.UnshareImageRequest(image_id=ALICE_WEB, account_ids=[BOB]),
                                        metadata=cloud.auth())
        shared = await cloud.shares.ShareImage(share_pb.ShareImageRequest(image_id=ALICE_WEB, account_ids=[BOB]),
                                               metadata=cloud.auth())
        state = pb.SHARE_STATE_ACCEPTED if trusted else pb.SHARE_STATE_PENDING
        assert [s.state for s in shared.shares] == [state]
        for (mode_name, mode), listed in itertools.product(MODES.items(), (True, False)):
            await cloud.policy("bob", ["mode", "allowed_account_ids"], mode=mode,
                               allowed_account_ids=[ALICE] if listed else [])
            flagged = mode_name != "OFF" and not listed  # image_allowed=false
            refusal = None if trusted else "SHARE_PENDING"
            if trusted and mode_name == "ENFORCE" and not listed:
                refusal = "IMAGE_NOT_ALLOWED"
            case = (trusted, mode_name, listed)
            listing = await cloud.images.ListImages(pb.ListImagesRequest(region=GZ, image_types=[pb.IMAGE_TYPE_SHARED]),
                                                    metadata=cloud.auth("bob"))
            assert [(i.image_id, i.share_state, i.image_allowed) for i in listing.images] == [
                (ALICE_WEB, state, not flagged)], case
            got = await cloud.images.GetImage(pb.GetImageRequest(image_id=ALICE_WEB), metadata=cloud.auth("bob"))
            assert got.image.image_allowed is not flagged, case
            launch = ins_pb.RunInstancesRequest(region=GZ, image_id=ALICE_WEB, instance_type="S5.MEDIUM4",
                                                instance_count=1)
            quote = ins_pb.QuoteRunInstancesRequest(region=GZ, image_id=ALICE_WEB, instance_type="S5.MEDIUM4",
                                                    instance_count=1)
            reset = ins_pb.ResetInstanceRequest(instance_id=bobs_instance, image_id=ALICE_WEB)
            quote_reset = ins_pb.QuoteResetInstanceRequest(instance_id=bobs_instance, image_id=ALICE_WEB)
            for name, call, request in (("launch", cloud.instances.RunInstances, launch),
                                        ("quote", cloud.instances.QuoteRunInstances, quote),
                                        ("reset", cloud.instances.ResetInstance, reset),
                                        ("quote-reset", cloud.instances.QuoteResetInstance, quote_reset)):
                if refusal is None:
                    answer = await call(request, metadata=cloud.auth("bob"))
                    assert answer.quote.image_allowed is not flagged, (case, name)
                else:
                    assert await cloud.refused(call, request, "bob") == (grpc.StatusCode.FAILED_PRECONDITION,
                                                                          refusal), (case, name)
                seen.append((case, name))
    assert len(seen) == 48
    # the platform's own images: allowed unless the policy says otherwise, in ENFORCE refused
    await cloud.policy("bob", ["mode", "allow_platform_images"], mode=MODES["ENFORCE"], allow_platform_images=False)
    assert await cloud.refused(cloud.instances.RunInstances, ins_pb.RunInstancesRequest(
        region=GZ, image_id=UBUNTU, instance_type="S5.MEDIUM4", instance_count=1), "bob") == (
        grpc.StatusCode.FAILED_PRECONDITION, "IMAGE_NOT_ALLOWED")
    # and the caller's own images are always allowed
    assert await cloud.launch("alice", image_id=ALICE_WEB)
    await cloud.policy("alice", ["mode", "allow_platform_images"], mode=MODES["ENFORCE"], allow_platform_images=False)
    assert await cloud.launch("alice", image_id=ALICE_WEB)


async def test_a_rejected_share_is_listed_only_when_asked_for_and_can_be_accepted_later(cloud: Cloud) -> None:
    await cloud.shares.ShareImage(share_pb.ShareImageRequest(image_id=ALICE_WEB, account_ids=[BOB]),
                                  metadata=cloud.auth())
    rejected = await cloud.shares.RejectImageShare(share_pb.RejectImageShareRequest(image_id=ALICE_WEB),
                                                   metadata=cloud.auth("bob"))
    assert rejected.share.state == pb.SHARE_STATE_REJECTED
    default = await cloud.images.ListImages(pb.ListImagesRequest(region=GZ, image_types=[pb.IMAGE_TYPE_SHARED]),
                                            metadata=cloud.auth("bob"))
    assert list(default.images) == []
    asked = await cloud.images.ListImages(pb.ListImagesRequest(
        region=GZ, image_types=[pb.IMAGE_TYPE_SHARED], share_states=[pb.SHARE_STATE_REJECTED]),
        metadata=cloud.auth("bob"))
    assert [(i.image_id, i.share_state) for i in asked.images] == [(ALICE_WEB, pb.SHARE_STATE_REJECTED)]
    assert await cloud.refused(cloud.instances.RunInstances, ins_pb.RunInstancesRequest(
        region=GZ, image_id=ALICE_WEB, instance_type="S5.MEDIUM4", instance_count=1), "bob") == (
        grpc.StatusCode.FAILED_PRECONDITION, "SHARE_REJECTED")
    for _ in range(2):  # idempotent
        accepted = await cloud.shares.AcceptImageShare(share_pb.AcceptImageShareRequest(image_id=ALICE_WEB),
                                                       metadata=cloud.auth("bob"))
        assert accepted.share.state == pb.SHARE_STATE_ACCEPTED
    assert await cloud.launch("bob", image_id=ALICE_WEB)
    owner_view = await cloud.shares.ListImageShares(share_pb.ListImageSharesRequest(image_id=ALICE_WEB),
                                                    metadata=cloud.auth())
    assert [(s.recipient_account_id, s.state) for s in owner_view.shares] == [(BOB, pb.SHARE_STATE_ACCEPTED)]
    # re-sharing keeps the state; unsharing removes access at once, and bob's instances stay
    (bobs,) = await cloud.launch("bob", image_id=ALICE_WEB)
    again = await cloud.shares.ShareImage(share_pb.ShareImageRequest(image_id=ALICE_WEB, account_ids=[BOB]),
                                          metadata=cloud.auth())
    assert [s.state for s in again.shares] == [pb.SHARE_STATE_ACCEPTED]
    await cloud.shares.UnshareImage(share_pb.UnshareImageRequest(image_id=ALICE_WEB, account_ids=[BOB]),
                                    metadata=cloud.auth())
    assert await cloud.refused(cloud.instances.RunInstances, ins_pb.RunInstancesRequest(
        region=GZ, image_id=ALICE_WEB, instance_type="S5.MEDIUM4", instance_count=1), "bob") == (
        grpc.StatusCode.NOT_FOUND, "IMAGE_NOT_FOUND")
    still = await cloud.instances.GetInstance(ins_pb.GetInstanceRequest(instance_id=bobs), metadata=cloud.auth("bob"))
    assert still.instance.state == ins_pb.INSTANCE_STATE_RUNNING


async def test_every_new_rpc_answers_a_stranger_as_it_answers_a_missing_id(cloud: Cloud) -> None:
    (alices,) = await cloud.launch("alice")
    missing_instance, missing_image = "ins-zz000000", "img-zz000000"
    # Each RPC, its request for an id, a stranger's id and a missing one.
    calls: list[tuple[Callable[..., Awaitable[object]], Callable[[str], Message], str, str]] = [
        (cloud.instances.TerminateInstances, lambda i: ins_pb.TerminateInstancesRequest(instance_ids=[i]), alices,
         missing_instance),
        (cloud.instances.ResetInstance, lambda i: ins_pb.ResetInstanceRequest(instance_id=i, image_id=UBUNTU),
         alices, missing_instance),
        (cloud.instances.QuoteResetInstance, lambda i: ins_pb.QuoteResetInstanceRequest(instance_id=i,
                                                                                         image_id=UBUNTU),
         alices, missing_instance),
        (cloud.instances.GetInstance, lambda i: ins_pb.GetInstanceRequest(instance_id=i), alices, missing_instance),
        (cloud.shares.AcceptImageShare, lambda i: share_pb.AcceptImageShareRequest(image_id=i), ALICE_WEB,
         missing_image),
        (cloud.shares.RejectImageShare, lambda i: share_pb.RejectImageShareRequest(image_id=i), ALICE_WEB,
         missing_image),
        (cloud.shares.ListImageShares, lambda i: share_pb.ListImageSharesRequest(image_id=i), ALICE_WEB,
         missing_image),
    ]
    for call, request, strangers, missing in calls:
        answers: list[tuple[grpc.StatusCode, str, bytes]] = []
        for target in (strangers, missing):
            with pytest.raises(grpc.aio.AioRpcError) as refused:
                await call(request(target), metadata=cloud.auth("bob"))
            status = rich_status(refused.value)[0]
            answers.append((refused.value.code(), refused.value.details().replace(target, "ID"),
                            status.SerializeToString().replace(target.encode(), b"ID")))
        assert answers[0] == answers[1], call
        assert answers[0][0] == grpc.StatusCode.NOT_FOUND
    # a stranger's instance id in a list of one's own terminates nothing
    (bobs,) = await cloud.launch("bob")
    assert await cloud.refused(cloud.instances.TerminateInstances, ins_pb.TerminateInstancesRequest(
        instance_ids=[bobs, alices]), "bob") == (grpc.StatusCode.NOT_FOUND, "INSTANCE_NOT_FOUND")
    still = await cloud.instances.GetInstance(ins_pb.GetInstanceRequest(instance_id=bobs), metadata=cloud.auth("bob"))
    assert still.instance.state == ins_pb.INSTANCE_STATE_RUNNING


async def test_terminate_and_reset_racing_on_two_replicas_happen_once(serve: ServerFactory, cloud: Cloud) -> None:
    other = Cloud(await start_gateway(serve, cloud.urls["gateway"], cloud.addrs), cloud.keys, cloud.urls, cloud.addrs)
    windows = seed_image_id(GZ, "windows-2022-x86")
    first, second = await cloud.launch(count=2)
    resets = [gateway.instances.ResetInstance(ins_pb.ResetInstanceRequest(
        instance_id=first, image_id=windows, request_id="reset-1"), metadata=cloud.auth())
        for gateway in (cloud, other) for _ in range(10)]
    answers = await asyncio.gather(*resets)
    assert {(a.instance.state, a.instance.image_id) for a in answers} == {(ins_pb.INSTANCE_STATE_RUNNING, windows)}
    assert cloud.count("billing", CHARGES, CHARGES.c.kind == "RESET") == 1
    terminations = [gateway.instances.TerminateInstances(ins_pb.TerminateInstancesRequest(
        instance_ids=[first, second], request_id="end-1"), metadata=cloud.auth())
        for gateway in (cloud, other) for _ in range(10)]
    ended = await asyncio.gather(*terminations)
    assert all(list(e.instances) == list(ended[0].instances) for e in ended)
    assert {i.state for i in ended[0].instances} == {ins_pb.INSTANCE_STATE_TERMINATED}
    # without a request_id, terminating again is not an error and changes nothing
    again = await other.instances.TerminateInstances(ins_pb.TerminateInstancesRequest(instance_ids=[second]),
                                                     metadata=cloud.auth())
    assert again.instances[0].terminate_time == ended[0].instances[1].terminate_time
    assert await cloud.refused(cloud.instances.ResetInstance, ins_pb.ResetInstanceRequest(
        instance_id=first, image_id=UBUNTU)) == (grpc.StatusCode.FAILED_PRECONDITION, "INSTANCE_TERMINATED")


async def test_usage_is_metered_per_started_hour_and_a_reset_changes_the_price(cloud: Cloud, clock: FakeClock) -> None:
    windows = seed_image_id(SG, "windows-2022-x86")
    linux = seed_image_id(SG, "ubuntu-2204-x86")
    prices = {(p.kind, p.instance_type): decimal_of(p.unit_price) for p in (await cloud.instances.ListPrices(
        ins_pb.ListPricesRequest(region=SG, charge_type=ins_pb.CHARGE_TYPE_POSTPAID_BY_HOUR, page_size=1000),
        metadata=cloud.auth())).prices}
    hourly = prices[(ins_pb.QUOTE_LINE_KIND_INSTANCE, "S5.MEDIUM4")]
    license_hourly = prices[(ins_pb.QUOTE_LINE_KIND_IMAGE_LICENSE, "")]
    reset_one, keep = await cloud.launch(region=SG, image_id=linux, count=2)

    clock.advance(hours=2, minutes=30)
    accrued = [c for c in await cloud.charges(instance_id=keep) if c.kind == account_pb.CHARGE_KIND_ACCRUED_USAGE]
    assert [(c.charge_id, decimal_of(c.quote.total)) for c in accrued] == [("", 2 * hourly)]  # hours 2 and 3 started

    reset = await cloud.instances.ResetInstance(ins_pb.ResetInstanceRequest(instance_id=reset_one, image_id=windows),
                                                metadata=cloud.auth())
    assert decimal_of(reset.quote.total) == hourly + license_hourly
    clock.advance(hours=2, minutes=15)
    await cloud.instances.TerminateInstances(ins_pb.TerminateInstancesRequest(instance_ids=[reset_one, keep]),
                                             metadata=cloud.auth())
    mine = await cloud.charges(instance_id=reset_one)
    assert [(c.kind, decimal_of(c.quote.total)) for c in mine] == [
        (account_pb.CHARGE_KIND_LAUNCH, 2 * hourly),  # both instances' first hour
        (account_pb.CHARGE_KIND_USAGE, 2 * hourly),  # hours 2 and 3 of Linux, until the reset at 2 h 30 min
        (account_pb.CHARGE_KIND_RESET, hourly + license_hourly),  # the first hour of Windows
        (account_pb.CHARGE_KIND_USAGE, 2 * (hourly + license_hourly)),  # its hours 2 and 3, until 4 h 45 min
    ]
    kept = await cloud.charges(instance_id=keep)
    assert [(c.kind, decimal_of(c.quote.total)) for c in kept] == [
        (account_pb.CHARGE_KIND_LAUNCH, 2 * hourly), (account_pb.CHARGE_KIND_USAGE, 4 * hourly)]  # 5 hours started
    everything = await cloud.charges()
    assert sum(decimal_of(c.quote.total) for c in everything) == (
        2 * hourly + 2 * hourly + (hourly + license_hourly) + 2 * (hourly + license_hourly) + 4 * hourly)
    clock.advance(hours=5)  # nothing runs any more: nothing accrues, terminating again charges nothing
    await cloud.instances.TerminateInstances(ins_pb.TerminateInstancesRequest(instance_ids=[keep]),
                                             metadata=cloud.auth())
    assert [c.charge_id for c in await cloud.charges()] == [c.charge_id for c in everything]


async def test_prepaid_instances_pay_their_period_at_launch_and_no_usage(cloud: Cloud, clock: FakeClock) -> None:
    (prepaid,) = await cloud.launch(charge_type=ins_pb.CHARGE_TYPE_PREPAID, period_months=3)
    clock.advance(hours=100)
    await cloud.instances.TerminateInstances(ins_pb.TerminateInstancesRequest(instance_ids=[prepaid]),
                                             metadata=cloud.auth())
    assert [c.kind for c in await cloud.charges(instance_id=prepaid)] == [account_pb.CHARGE_KIND_LAUNCH]


async def test_a_policy_change_applies_to_the_next_call_on_another_replica(serve: ServerFactory, cloud: Cloud) -> None:
    other = Cloud(await start_gateway(serve, cloud.urls["gateway"], cloud.addrs), cloud.keys, cloud.urls, cloud.addrs)
    await cloud.policy("bob", ["trusted_account_ids"], trusted_account_ids=[ALICE])
    await cloud.shares.ShareImage(share_pb.ShareImageRequest(image_id=ALICE_WEB, account_ids=[BOB]),
                                  metadata=cloud.auth())
    assert await other.launch("bob", image_id=ALICE_WEB)  # warms whatever the other replica keeps
    await cloud.policy("bob", ["mode"], mode=MODES["ENFORCE"])
    assert await other.refused(other.instances.RunInstances, ins_pb.RunInstancesRequest(
        region=GZ, image_id=ALICE_WEB, instance_type="S5.MEDIUM4", instance_count=1), "bob") == (
        grpc.StatusCode.FAILED_PRECONDITION, "IMAGE_NOT_ALLOWED")
    await cloud.policy("bob", ["allowed_account_ids"], allowed_account_ids=[ALICE])
    assert await other.launch("bob", image_id=ALICE_WEB)


async def test_a_trust_policy_is_read_back_and_refused_when_malformed(cloud: Cloud) -> None:
    default = (await cloud.shares.GetTrustPolicy(share_pb.GetTrustPolicyRequest(), metadata=cloud.auth())).policy
    assert (default.mode, default.allow_platform_images, default.HasField("update_time")) == (
        share_pb.TRUST_POLICY_MODE_OFF, True, False)
    changed = await cloud.policy("alice", [], trusted_account_ids=[BOB], mode=MODES["AUDIT"],
                                 allow_platform_images=True, allowed_marketplace_providers=["Bitnami"])
    assert (list(changed.trusted_account_ids), changed.mode, list(changed.allowed_marketplace_providers)) == (
        [BOB], share_pb.TRUST_POLICY_MODE_AUDIT, ["Bitnami"])
    assert changed.HasField("update_time")
    malformed: list[tuple[list[str], PolicyFields, str]] = [
        (["owner"], {}, "INVALID_UPDATE_MASK"),
        (["mode"], {}, "MODE_REQUIRED"),
        (["trusted_account_ids"], {"trusted_account_ids": ["nope"]}, "INVALID_ACCOUNT_ID"),
        (["trusted_account_ids"], {"trusted_account_ids": [f"{300000000000 + n}" for n in range(201)]},
         "TOO_MANY_TRUSTED_ACCOUNTS"),
    ]
    for paths, fields, reason in malformed:
        assert await cloud.refused(cloud.shares.UpdateTrustPolicy, share_pb.UpdateTrustPolicyRequest(
            policy=share_pb.TrustPolicy(**fields), update_mask=field_mask_pb2.FieldMask(paths=paths))) == (
            grpc.StatusCode.INVALID_ARGUMENT, reason)
    read_back = await cloud.shares.GetTrustPolicy(share_pb.GetTrustPolicyRequest(), metadata=cloud.auth())
    assert read_back.policy == changed


async def test_a_page_of_50_images_costs_the_downstream_calls_of_a_page_of_1(
        serve: ServerFactory, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    urls = {name: f"sqlite:///{tmp_path}/{name}.db" for name in SERVICES}
    addrs, keys = await start_services(serve, urls, catalog_settings={"custom_image_quota": 100,
                                                                      "daily_operation_quota": 100})
    cloud = Cloud(addrs["gateway"], keys, urls, addrs)
    (instance_id,) = await cloud.launch()
    for n in range(45):
        await cloud.images.CreateImage(pb.CreateImageRequest(instance_id=instance_id, name=f"image-{n}"),
                                       metadata=cloud.auth())
    calls: list[str] = []
    original = Downstream.call

    async def counted(self: Downstream, method: Any, request: Message) -> Any:
        calls.append(f"{self.name}.{method._method.decode().rsplit('/', 1)[-1]}")
        return await original(self, method, request)

    monkeypatch.setattr(Downstream, "call", counted)
    seen: dict[int, list[str]] = {}
    for size in (1, 50):
        calls.clear()
        page = await cloud.images.ListImages(pb.ListImagesRequest(region=GZ, page_size=size), metadata=cloud.auth())
        assert len(page.images) == size
        seen[size] = list(calls)
    assert seen[1] == seen[50] == ["sharing.ListReceivedShares", "catalog.ListImages",
                                   "sharing.CheckLaunchPermissions"]
