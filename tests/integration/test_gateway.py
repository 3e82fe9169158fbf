"""The gateway composing real in-process catalog, sharing and billing servers on real SQLite."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, NoReturn, TypeVar

import grpc
import pytest
from cloudimg.gateway.v1 import instance_service_pb2 as pb
from cloudimg.gateway.v1 import instance_service_pb2_grpc as pb_grpc
from sqlalchemy import ColumnElement, Table, create_engine, func, select

from billing_service.adapters.tables import CHARGES
from catalog_service.domain.seed import seed_image_id
from chassis.clients import Downstream
from chassis.errors import Unavailable
from devtools.stack import free_port
from gateway.adapters.tables import INSTANCES, JOBS, LAUNCHES
from gateway.bootstrap import open_database
from gateway.domain.instances import Launch
from tests.conftest import ServerFactory, rich_status
from tests.integration.cloud import SERVICES, RunFields, run_request, start_services

UBUNTU = seed_image_id("ap-guangzhou", "ubuntu-2204-x86")
Resp = TypeVar("Resp")


@dataclass
class Cloud:
    channel: grpc.aio.Channel
    instances: pb_grpc.InstanceServiceStub
    keys: dict[str, str]
    urls: dict[str, str]
    addrs: dict[str, str]

    def auth(self, who: str = "alice") -> tuple[tuple[str, str]]:
        return (("authorization", f"Bearer {self.keys[who]}"),)

    def count(self, service: str, table: Table, *where: ColumnElement[bool]) -> int:
        engine = create_engine(self.urls[service])
        with engine.connect() as conn:
            found = conn.execute(select(func.count()).select_from(table).where(*where)).scalar_one()
        engine.dispose()
        return found


async def until(condition: Callable[[], bool], seconds: float = 15.0) -> None:
    """Waits for the gateway's background work to get somewhere."""
    deadline = time.monotonic() + seconds
    while not condition():
        assert time.monotonic() < deadline, "the gateway's launch worker never got there"
        await asyncio.sleep(0.05)


async def start_cloud(serve: ServerFactory, tmp_path: Path, gateway_url: str = "", **addr_overrides: str) -> Cloud:
    urls = {name: f"sqlite:///{tmp_path}/{name}.db" for name in SERVICES}
    urls["gateway"] = gateway_url or urls["gateway"]
    addrs, keys = await start_services(serve, urls, addr_overrides=addr_overrides)
    channel = grpc.aio.insecure_channel(addrs["gateway"])
    return Cloud(channel, pb_grpc.InstanceServiceStub(channel), keys, urls, addrs)


@pytest.fixture
async def cloud(serve: ServerFactory, tmp_path: Path) -> Cloud:
    return await start_cloud(serve, tmp_path)


async def test_a_launch_of_100_makes_as_many_downstream_calls_as_a_launch_of_1(
        serve: ServerFactory, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SHARING_VERDICT_LEASE_SECONDS", "5")  # the test's calls all fall within one lease
    cloud = await start_cloud(serve, tmp_path)
    calls: list[str] = []
    original = Downstream.call

    async def counted(self: Downstream, method: Callable[..., Awaitable[Resp]], request: Any) -> Resp:
        calls.append(self.name)
        return await original(self, method, request)

    monkeypatch.setattr(Downstream, "call", counted)
    await cloud.instances.RunInstances(run_request(instance_count=1), metadata=cloud.auth())  # warms the caches
    calls.clear()
    one = await cloud.instances.RunInstances(run_request(instance_count=1), metadata=cloud.auth())
    calls_for_one = list(calls)
    calls.clear()
    hundred = await cloud.instances.RunInstances(run_request(instance_count=100), metadata=cloud.auth())
    assert len(one.instance_ids) == 1
    assert len(hundred.instance_ids) == 100
    # The warming launch read the public image from the catalog (it never changes, so not again) and got its
    # verdict with a lease from sharing: a launch then asks billing only, for its charge.
    assert calls == calls_for_one == ["billing"]
    assert cloud.count("gateway", INSTANCES) == 102
    assert cloud.count("billing", CHARGES) == 3


async def test_dry_run_and_quote_create_nothing(cloud: Cloud) -> None:
    dry = await cloud.instances.RunInstances(run_request(instance_count=5, dry_run=True), metadata=cloud.auth())
    quote = await cloud.instances.QuoteRunInstances(
        pb.QuoteRunInstancesRequest(region="ap-guangzhou", image_id=UBUNTU, instance_type="S5.MEDIUM4",
                                    instance_count=5), metadata=cloud.auth())
    assert list(dry.instance_ids) == []
    assert dry.quote == quote.quote
    assert quote.quote.lines[0].quantity == 5
    assert cloud.count("gateway", INSTANCES) == 0
    assert cloud.count("billing", CHARGES) == 0


async def test_racing_calls_with_one_client_token_launch_once(cloud: Cloud) -> None:
    request = run_request(instance_count=3, client_token="deploy-2026-11-27")
    results = await asyncio.gather(*(cloud.instances.RunInstances(request, metadata=cloud.auth()) for _ in range(20)))
    assert len({tuple(r.instance_ids) for r in results}) == 1
    assert cloud.count("gateway", INSTANCES) == 3
    assert cloud.count("gateway", LAUNCHES) == 1
    assert cloud.count("billing", CHARGES) == 1
    again = await cloud.instances.RunInstances(request, metadata=cloud.auth())
    assert again.instance_ids == results[0].instance_ids
    assert again.quote == results[0].quote

    with pytest.raises(grpc.aio.AioRpcError) as mismatch:
        await cloud.instances.RunInstances(run_request(instance_count=4, client_token="deploy-2026-11-27"),
                                           metadata=cloud.auth())
    assert mismatch.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert rich_status(mismatch.value)[1].reason == "IDEMPOTENCY_PARAMETER_MISMATCH"
    # the token is the caller's own: another account may use the same one
    other = await cloud.instances.RunInstances(request, metadata=cloud.auth("bob"))
    assert set(other.instance_ids).isdisjoint(results[0].instance_ids)


@pytest.mark.parametrize(("overrides", "code", "reason"), [
    ({"instance_count": 0}, grpc.StatusCode.INVALID_ARGUMENT, "INVALID_INSTANCE_COUNT"),
    ({"instance_count": 101}, grpc.StatusCode.INVALID_ARGUMENT, "INVALID_INSTANCE_COUNT"),
    ({"image_id": "img-1"}, grpc.StatusCode.INVALID_ARGUMENT, "INVALID_ID"),
    ({"region": "moon-1"}, grpc.StatusCode.INVALID_ARGUMENT, "UNKNOWN_REGION"),
    ({"instance_type": "SR1.MEDIUM4"}, grpc.StatusCode.INVALID_ARGUMENT, "ARCHITECTURE_MISMATCH"),
    ({"instance_type": "SR1.MEDIUM4", "region": "eu-frankfurt"}, grpc.StatusCode.INVALID_ARGUMENT,
     "INSTANCE_TYPE_NOT_OFFERED"),
    ({"system_disk_gb": 10}, grpc.StatusCode.INVALID_ARGUMENT, "INVALID_SYSTEM_DISK_SIZE"),
    ({"image_id": seed_image_id("ap-guangzhou", "windows-2022-x86"), "system_disk_gb": 40},
     grpc.StatusCode.INVALID_ARGUMENT, "SYSTEM_DISK_TOO_SMALL"),
    ({"client_token": "x" * 65}, grpc.StatusCode.INVALID_ARGUMENT, "INVALID_CLIENT_TOKEN"),
    ({"client_token": "caf\u00e9"}, grpc.StatusCode.INVALID_ARGUMENT, "INVALID_CLIENT_TOKEN"),
    ({"charge_type": pb.CHARGE_TYPE_PREPAID}, grpc.StatusCode.INVALID_ARGUMENT, "INVALID_PERIOD"),
    ({"image_id": seed_image_id("ap-beijing", "ubuntu-2204-x86")}, grpc.StatusCode.NOT_FOUND, "IMAGE_NOT_FOUND"),
    ({"image_id": seed_image_id("ap-guangzhou", "bob-arm"), "instance_type": "SR1.MEDIUM4"},
     grpc.StatusCode.NOT_FOUND, "IMAGE_NOT_FOUND"),
])
async def test_refused_launches_leave_nothing_behind(cloud: Cloud, overrides: RunFields, code: grpc.StatusCode,
                                                     reason: str) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await cloud.instances.RunInstances(run_request(**overrides), metadata=cloud.auth())
    assert (refused.value.code(), rich_status(refused.value)[1].reason) == (code, reason)
    assert cloud.count("gateway", INSTANCES) == 0
    assert cloud.count("gateway", LAUNCHES) == 0
    assert cloud.count("billing", CHARGES) == 0


async def test_a_dependency_that_is_down_is_unavailable_not_internal(serve: ServerFactory, tmp_path: Path) -> None:
    dead = f"127.0.0.1:{free_port()}"
    cloud = await start_cloud(serve, tmp_path, billing=dead)
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await cloud.instances.RunInstances(run_request(), metadata=cloud.auth())
    assert refused.value.code() == grpc.StatusCode.UNAVAILABLE
    _status, info, _ = rich_status(refused.value)
    assert info.reason == "DEPENDENCY_UNAVAILABLE"
    assert info.metadata["service"] == "billing"


async def test_bad_api_keys_are_refused(cloud: Cloud) -> None:
    for metadata in [(), (("authorization", "Bearer nope"),), (("authorization", "Basic abc"),),
                     (("authorization", "Bearer cik_aaaaaaaa_" + "A" * 43),),
                     (("authorization", f"Bearer {cloud.keys['alice'][:-1]}x"),)]:
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await cloud.instances.ListInstances(pb.ListInstancesRequest(), metadata=metadata)
        assert refused.value.code() == grpc.StatusCode.UNAUTHENTICATED
        assert rich_status(refused.value)[1].reason in {"API_KEY_MISSING", "API_KEY_INVALID"}


async def test_instances_are_the_callers_own_and_paged(cloud: Cloud) -> None:
    launched = await cloud.instances.RunInstances(run_request(instance_count=5, instance_name="web"),
                                                  metadata=cloud.auth())
    seen: list[str] = []
    token = ""
    while True:
        page = await cloud.instances.ListInstances(pb.ListInstancesRequest(page_size=2, page_token=token),
                                                   metadata=cloud.auth())
        seen.extend(i.instance_id for i in page.instances)
        token = page.next_page_token
        if not token:
            break
    assert sorted(seen) == sorted(launched.instance_ids)
    one = await cloud.instances.GetInstance(pb.GetInstanceRequest(instance_id=seen[0]), metadata=cloud.auth())
    assert one.instance.state == pb.INSTANCE_STATE_RUNNING
    assert one.instance.instance_name == "web"
    assert one.instance.architecture == pb.CPU_ARCHITECTURE_X86_64
    with pytest.raises(grpc.aio.AioRpcError) as hidden:
        await cloud.instances.GetInstance(pb.GetInstanceRequest(instance_id=seen[0]), metadata=cloud.auth("bob"))
    assert hidden.value.code() == grpc.StatusCode.NOT_FOUND
    assert (await cloud.instances.ListInstances(pb.ListInstancesRequest(), metadata=cloud.auth("bob"))).instances == []


async def test_a_launch_whose_charge_outcome_is_unknown_is_resolved_never_guessed(
        serve: ServerFactory, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Billing records the charge but its answer is lost, and billing cannot be asked either: the
    caller hears LAUNCH_OUTCOME_UNKNOWN (with the launch id), the instances wait PENDING, and the
    launch's job (retried while billing cannot be asked) or a retry with the client token resolves it
    into exactly one charge and its instances."""
    from gateway.adapters import contexts

    cloud = await start_cloud(serve, tmp_path)
    charge, resolve = contexts.Billing.charge, contexts.Billing.resolve

    async def charged_then_lost(self: contexts.Billing, launch: Launch) -> NoReturn:
        await charge(self, launch)
        raise Unavailable("DEPENDENCY_UNAVAILABLE", "the billing service is unavailable; try again")

    async def unreachable(self: contexts.Billing, launch: Launch) -> NoReturn:
        raise Unavailable("DEPENDENCY_UNAVAILABLE", "the billing service is unavailable; try again")

    monkeypatch.setattr(contexts.Billing, "charge", charged_then_lost)
    monkeypatch.setattr(contexts.Billing, "resolve", unreachable)
    with pytest.raises(grpc.aio.AioRpcError) as lost:
        await cloud.instances.RunInstances(run_request(instance_count=2, client_token="t-1"), metadata=cloud.auth())
    assert lost.value.code() == grpc.StatusCode.UNAVAILABLE
    _, info, _ = rich_status(lost.value)
    assert info.reason == "LAUNCH_OUTCOME_UNKNOWN"
    assert info.metadata["client_token"] == "t-1"
    assert info.metadata["launch_id"].startswith("lch-")
    assert "t-1" in lost.value.details()
    assert cloud.count("gateway", INSTANCES) == 2
    assert cloud.count("billing", CHARGES) == 1
    listed = await cloud.instances.ListInstances(pb.ListInstancesRequest(), metadata=cloud.auth())
    assert {i.state for i in listed.instances} == {pb.INSTANCE_STATE_PENDING}
    await until(lambda: cloud.count("gateway", JOBS, JOBS.c.attempts >= 1) == 1)  # tried, failed
    monkeypatch.setattr(contexts.Billing, "charge", charge)
    monkeypatch.setattr(contexts.Billing, "resolve", resolve)

    # Billing can be asked again: the gateway's own worker settles the launch (no call needed).
    await until(lambda: cloud.count("gateway", JOBS, JOBS.c.state == "DONE") == 1)
    listed = await cloud.instances.ListInstances(pb.ListInstancesRequest(), metadata=cloud.auth())
    assert {i.state for i in listed.instances} == {pb.INSTANCE_STATE_RUNNING}
    assert len(listed.instances) == 2
    assert cloud.count("billing", CHARGES) == 1
    retried = await cloud.instances.RunInstances(run_request(instance_count=2, client_token="t-1"),
                                                 metadata=cloud.auth())
    assert sorted(retried.instance_ids) == sorted(i.instance_id for i in listed.instances)


async def test_launches_left_open_by_gateways_that_died_are_settled_by_the_one_that_runs(
        serve: ServerFactory, tmp_path: Path, database_url: str) -> None:
    """A launch left PENDING by a call that died (its job held by that call until the hold ran out) and
    an IN_DOUBT one claimed by a gateway from before the launch jobs (no job at all): the gateway that
    starts settles both, never charged, so both are voided and forgotten."""
    from gateway.domain.instances import Launch, LaunchRequest, LaunchState
    from gateway.domain.model import Architecture, ChargeType, OsType

    db, new_uow = open_database(database_url)
    request = LaunchRequest(region="ap-guangzhou", image_id=UBUNTU, instance_type="S5.MEDIUM4", instance_count=1,
                            charge_type=ChargeType.POSTPAID_BY_HOUR, period_months=0, system_disk_gb=50,
                            client_token="t-dead")
    long_ago = datetime.now(UTC) - timedelta(minutes=5)
    died, old = (Launch(launch_id, "100000000001", launch_id, request.fingerprint(), LaunchState.PENDING, request,
                        OsType.LINUX, Architecture.X86_64, "", True, [instance_id], long_ago)
                 for launch_id, instance_id in (("lch-died0001", "ins-died0001"), ("lch-old00001", "ins-old00001")))
    with new_uow() as uow:
        uow.launches.claim(died, "gateway-died", long_ago + timedelta(seconds=10))
        uow.launches.claim(old, "gateway-old", long_ago + timedelta(seconds=10))
        uow.launches.mark_in_doubt(old.launch_id, "gateway-old", long_ago)
        uow.connection.execute(JOBS.delete().where(JOBS.c.subject == old.launch_id))
        uow.commit()
    db.dispose()
    cloud = await start_cloud(serve, tmp_path, gateway_url=database_url)
    await until(lambda: cloud.count("gateway", LAUNCHES) == 0)
    assert cloud.count("gateway", INSTANCES) == 0
    assert cloud.count("billing", CHARGES) == 0
    assert cloud.count("gateway", JOBS, JOBS.c.state == "DONE") == 2


async def test_a_launch_that_billing_never_charged_is_voided_and_a_retry_launches_it_once(
        serve: ServerFactory, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from gateway.adapters import contexts

    cloud = await start_cloud(serve, tmp_path)
    charge = contexts.Billing.charge

    # The charge request never reached billing, or timed out there.
    async def lost_on_the_way(self: contexts.Billing, launch: Launch) -> NoReturn:
        raise Unavailable("DEPENDENCY_UNAVAILABLE", "the billing service is unavailable; try again")

    monkeypatch.setattr(contexts.Billing, "charge", lost_on_the_way)
    with pytest.raises(grpc.aio.AioRpcError) as failed:
        await cloud.instances.RunInstances(run_request(client_token="t-2"), metadata=cloud.auth())
    assert rich_status(failed.value)[1].reason == "DEPENDENCY_UNAVAILABLE"  # resolved at once: nothing launched
    assert cloud.count("gateway", INSTANCES) == 0
    assert cloud.count("gateway", LAUNCHES) == 0
    monkeypatch.setattr(contexts.Billing, "charge", charge)
    launched = await cloud.instances.RunInstances(run_request(client_token="t-2"), metadata=cloud.auth())
    assert len(launched.instance_ids) == 1
    assert cloud.count("billing", CHARGES) == 1
    assert cloud.count("gateway", INSTANCES) == 1


@pytest.mark.parametrize("name", ["web\x00evil", "tab\tname", "esc\x1b[0m"])
async def test_a_launch_named_with_control_characters_is_refused_and_charges_nothing(
        serve: ServerFactory, tmp_path: Path, database_url: str, name: str) -> None:
    """On PostgreSQL a NUL byte once failed the instance INSERT after billing had charged."""
    cloud = await start_cloud(serve, tmp_path, gateway_url=database_url)
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await cloud.instances.RunInstances(run_request(instance_name=name), metadata=cloud.auth())
    assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert cloud.count("billing", CHARGES) == 0
    assert cloud.count("gateway", LAUNCHES) == 0


async def test_no_public_rpc_answers_unimplemented(cloud: Cloud) -> None:
    """Every RPC of the public API is built: called with an empty request, each answers OK or a mapped refusal
    (never UNIMPLEMENTED, never UNKNOWN); without a key each is UNAUTHENTICATED first."""
    from cloudimg.gateway.v1 import account_service_pb2, image_service_pb2, image_share_service_pb2
    from google.protobuf import descriptor_pool, message_factory

    called = 0
    for module in (image_service_pb2, image_share_service_pb2, pb, account_service_pb2):
        for service in module.DESCRIPTOR.services_by_name.values():
            for method in service.methods:
                request_class = message_factory.GetMessageClass(
                    descriptor_pool.Default().FindMessageTypeByName(method.input_type.full_name))
                response_class = message_factory.GetMessageClass(method.output_type)
                call = cloud.channel.unary_unary(f"/{service.full_name}/{method.name}",
                                                 request_serializer=request_class.SerializeToString,
                                                 response_deserializer=response_class.FromString)
                for metadata, refused in ((cloud.auth(), None), ((), grpc.StatusCode.UNAUTHENTICATED)):
                    try:
                        await call(request_class(), metadata=metadata, timeout=10)
                        code = grpc.StatusCode.OK
                    except grpc.aio.AioRpcError as error:
                        code = error.code()
                        rich_status(error)  # every refusal carries its one ErrorInfo
                    assert code not in (grpc.StatusCode.UNIMPLEMENTED, grpc.StatusCode.UNKNOWN,
                                        grpc.StatusCode.INTERNAL), f"{method.full_name}: {code}"
                    if refused is not None:
                        assert code == refused, method.full_name
                called += 1
    assert called == 27
