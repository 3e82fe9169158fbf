"""Kill billing for real, again and again, under a load of launches: no caller pays for a failure.

Each call either succeeds, fails with a definite answer (then it was not charged, and a retry with
its client token launches it once), or is told LAUNCH_OUTCOME_UNKNOWN with a client token (then a
retry with that token returns its instances if it was charged). Afterwards the ledger holds exactly
one charge per launch that some answer returned, and nothing else.
"""

from __future__ import annotations

import asyncio
import random
import time

import grpc
import pytest
from cloudimg.gateway.v1 import account_service_pb2, account_service_pb2_grpc
from cloudimg.gateway.v1 import instance_service_pb2 as pb
from cloudimg.gateway.v1 import instance_service_pb2_grpc as pb_grpc

from devtools.stack import Stack
from tests.conftest import rich_status
from tests.fault.callers import GZ, UBUNTU, api_key, every_page, kill_and_restart
from tests.fault.conftest import Figures

CALLERS = 6
MAX_CALLS_PER_CALLER = 400
KILLS = 4


# Open launches are settled every second at most (not every 5 s), so that they settle within the test.
STACK_ENV = {"GATEWAY_RECONCILE_INTERVAL_SECONDS": "1"}


@pytest.fixture
def stack(own_stack: Stack) -> Stack:
    return own_stack


def _reason(error: grpc.aio.AioRpcError) -> tuple[str, dict[str, str]]:
    try:
        _, info, _ = rich_status(error)
    except AssertionError:  # a client-side status (deadline, cancel) carries no details
        return error.code().name, {}
    return info.reason, dict(info.metadata)


async def test_calls_that_fail_while_billing_is_killed_are_never_charged(stack: Stack, figures: Figures) -> None:
    channel = stack.aio_channel("gateway")
    instances = pb_grpc.InstanceServiceStub(channel)
    auth = api_key(stack)
    rng = random.Random(10)
    launched: list[frozenset[str]] = []  # the instance ids of every launch an answer returned
    to_retry: list[tuple[pb.RunInstancesRequest, str]] = []  # (request, reason) of failures with a token
    definite_failures = 0
    calls = 0

    chaos_over = asyncio.Event()

    async def caller(n: int) -> None:
        nonlocal definite_failures, calls
        # Callers keep launching until the last kill is over, so every kill finds calls in flight
        # however fast this machine is.
        for i in range(MAX_CALLS_PER_CALLER):
            if chaos_over.is_set():
                break
            token = f"c{n}-{i}" if i % 2 == 0 else ""  # half the calls carry a client token
            request = pb.RunInstancesRequest(region=GZ, image_id=UBUNTU, instance_type="S5.MEDIUM4",
                                             instance_count=1 + i % 3, client_token=token)
            calls += 1
            try:
                # A deadline the gateway always answers within: a call without a client token that
                # ran out of time on the client could not be retried (see README, "The launch").
                answer = await instances.RunInstances(request, metadata=auth, timeout=30)
                launched.append(frozenset(answer.instance_ids))
            except grpc.aio.AioRpcError as error:
                reason, metadata = _reason(error)
                if error.code() not in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.ABORTED):
                    raise AssertionError(error) from error
                if reason == "LAUNCH_OUTCOME_UNKNOWN":
                    if metadata["client_token"] not in error.details():
                        raise AssertionError(error) from error
                    request.client_token = metadata["client_token"]
                if request.client_token:
                    to_retry.append((request, reason))
                else:
                    definite_failures += 1
            await asyncio.sleep(rng.uniform(0, 0.02))

    async def chaos() -> None:
        # Short outages end while callers still wait for the channel; long ones outlast that
        # wait (about a second), so calls also fail before they reach billing.
        await kill_and_restart(stack, "billing", KILLS, rng, gaps=(0.3, 0.8), outages=((0.2, 0.8), (1.3, 1.8)))
        await asyncio.sleep(0.3)
        chaos_over.set()

    started = time.monotonic()
    await asyncio.gather(chaos(), *(caller(n) for n in range(CALLERS)))
    assert time.monotonic() - started < 120
    assert to_retry or definite_failures, "the kills hit no call: the test proved nothing"

    # Billing is back: every failure that has a client token is retried with it, once or a few times.
    for request, _ in to_retry:
        for _attempt in range(20):
            calls += 1
            try:
                answer = await instances.RunInstances(request, metadata=auth, timeout=10)
                launched.append(frozenset(answer.instance_ids))
                break
            except grpc.aio.AioRpcError as error:
                if error.code() not in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.ABORTED):
                    raise AssertionError(error) from error
                await asyncio.sleep(0.25)
        else:
            pytest.fail(f"a retry with client token {request.client_token} never succeeded")

    # Launches left open by failures without a token are resolved by the reconciler (every second).
    accounts = account_service_pb2_grpc.AccountServiceStub(channel)
    for _ in range(100):
        found = await every_page(instances.ListInstances, pb.ListInstancesRequest(), "instances", auth)
        if all(i.state == pb.INSTANCE_STATE_RUNNING for i in found):
            break
        await asyncio.sleep(0.1)
    charges = await every_page(accounts.ListCharges, account_service_pb2.ListChargesRequest(), "charges", auth)
    charges = [c for c in charges if c.kind == account_service_pb2.CHARGE_KIND_LAUNCH]  # no hour has passed yet
    charged = [frozenset(c.instance_ids) for c in charges]
    running = {i.instance_id for i in found if i.state == pb.INSTANCE_STATE_RUNNING}
    figures.add(calls=calls, kills=KILLS, launches=len(launched), failed_calls=len(to_retry) + definite_failures,
                lost=len(set(launched) - set(charged)), duplicate_charges=len(charged) - len(set(charged)),
                stray_charges=len(set(charged) - set(launched)))
    assert len(charged) == len(set(charged))
    assert set(charged) == set(launched), "a charge without an answer that returned its instances"
    print(f"\n{len(launched)} launches, {len(found)} instances")
    assert running == {i for ids in launched for i in ids}
    assert len(found) == len(running)
    await channel.close()
