"""Launches and resets while billing and the gateway are SIGKILLed at random moments and restarted.

Concurrent clients make 100 launches as alice (1 to 5 instances each, each with its own client token) and
reset 40 of bob's instances (each with its own request id), paced over the time the kills take, each
retrying with the same token or request id until its call ends with a definite answer. Meanwhile billing
and the gateway are each killed five times, at moments of their own when calls are in flight (sometimes
both are down), and started again; billing every other time with charges waiting in it (its ledger held
against writes), so that it dies with charges half-made.

What must hold once the gateway's job worker has settled everything (SPEC, "Reliability and security
promises": a launch ends with its instances and exactly one charge, or with neither):
- every launch has exactly its instances, RUNNING, as the public API lists them, and exactly one launch
  charge;
- every reset is done once: its instance RUNNING the new image, with exactly one reset charge;
- the ledger holds no charge that is not one of those launches' or resets' (or their instances' usage);
- nothing is left PENDING or RESETTING; a replay of every token and request id answers the first result.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections import Counter
from dataclasses import dataclass
from functools import partial

import grpc
import pytest
from cloudimg.gateway.v1 import account_service_pb2 as account_pb
from cloudimg.gateway.v1 import account_service_pb2_grpc as account_grpc
from cloudimg.gateway.v1 import instance_service_pb2 as pb
from cloudimg.gateway.v1 import instance_service_pb2_grpc as pb_grpc

from devtools.stack import Stack
from tests.conftest import billing_writes_held
from tests.fault.callers import (
    DEBIAN,
    GZ,
    INSTANCE_TYPE,
    PROMPT_RECONNECT,
    UBUNTU,
    Tally,
    api_key,
    eventually,
    every_page,
    kill_and_restart,
    until_definite,
)
from tests.fault.conftest import Figures

SEED = 20240611
LAUNCHES, LAUNCH_CLIENTS = 100, 10
RESETS, RESET_CLIENTS = 40, 8
KILLS_EACH = 5  # of billing, and of the gateway
KILL_GAPS = (0.5, 3.0)  # seconds from a restart (SERVING) to the next kill
OUTAGES = ((0.1, 0.5), (0.8, 1.6))  # seconds a killed service stays down: short, then long, ...
# Each client pauses up to this long before each of its calls, so that the calls spread over the kills.
PACE_SECONDS = 2.6
# A launch or a reset whose gateway was killed stays open while its call's hold lasts (10 s); one whose
# job the killed gateway's worker had claimed, while that claim's lease lasts (30 s).
SETTLE_SECONDS = 60
GIVE_UP_SECONDS = 90  # on one launch or reset that never gets a definite answer
OPEN_STATES = [pb.INSTANCE_STATE_PENDING, pb.INSTANCE_STATE_RESETTING]


# Open operations are retried every second at most (not every 5 s), so that they settle within the test.
STACK_ENV = {"GATEWAY_RECONCILE_INTERVAL_SECONDS": "1"}


@pytest.fixture
def stack(own_stack: Stack) -> Stack:
    return own_stack


@dataclass(frozen=True)
class Answer:
    """The definite answer a launch or a reset ended with: its instance ids, or the refusal."""

    instance_ids: tuple[str, ...] = ()
    refusal: str = ""


def _answer(result: pb.RunInstancesResponse | pb.ResetInstanceResponse | grpc.aio.AioRpcError) -> Answer:
    if isinstance(result, grpc.aio.AioRpcError):
        return Answer(refusal=f"{result.code().name} {result.details()}")
    if isinstance(result, pb.RunInstancesResponse):
        return Answer(tuple(result.instance_ids))
    return Answer((result.instance.instance_id,))


def _launch(n: int) -> pb.RunInstancesRequest:
    token = f"launch-{n:03d}"  # its instances carry it as their name, so that they can be told apart
    return pb.RunInstancesRequest(region=GZ, image_id=UBUNTU, instance_type=INSTANCE_TYPE, instance_count=1 + n % 5,
                                  instance_name=token, client_token=token)


def _reset(instance_id: str) -> pb.ResetInstanceRequest:
    return pb.ResetInstanceRequest(instance_id=instance_id, image_id=DEBIAN, request_id=f"reset-{instance_id}")


async def _instances_to_reset(instances: pb_grpc.InstanceServiceStub, metadata: tuple[tuple[str, str], ...]
                              ) -> list[tuple[str, ...]]:
    """bob's instances to reset, launched (five at a time) before the kills start."""
    launched = []
    for n in range(0, RESETS, 5):
        answer = await instances.RunInstances(pb.RunInstancesRequest(
            region=GZ, image_id=UBUNTU, instance_type=INSTANCE_TYPE, instance_count=min(5, RESETS - n),
            client_token=f"to-reset-{n}"), metadata=metadata, timeout=15)
        launched.append(tuple(answer.instance_ids))
    return launched


@dataclass
class Audit:
    """What the ledger and the instances show against the answers: each count must be 0."""

    lost: int = 0  # a launch without its instances or its charge, a reset not done or not charged
    duplicate_charges: int = 0
    stray_charges: int = 0  # a charge that is no launch's, no reset's, no launched instance's
    stray_instances: int = 0  # an instance that no answer returned

    def expect_once(self, charges: int, lost: bool = False) -> None:
        self.lost += lost or charges == 0
        self.duplicate_charges += max(0, charges - 1)


def _audit(launches: dict[str, Answer], setup: list[tuple[str, ...]], resets: dict[str, Answer],
           instances: list[pb.Instance], charges: list[account_pb.Charge]) -> Audit:
    audit = Audit()
    by_name: dict[str, set[str]] = {}
    for instance in instances:
        by_name.setdefault(instance.instance_name, set()).add(instance.instance_id)
    state = {i.instance_id: (i.state, i.image_id) for i in instances}
    launch_charges = Counter(frozenset(c.instance_ids) for c in charges if c.kind == account_pb.CHARGE_KIND_LAUNCH)
    reset_charges = Counter(tuple(c.instance_ids) for c in charges if c.kind == account_pb.CHARGE_KIND_RESET)
    for n in range(LAUNCHES):
        request = _launch(n)
        ids = launches[request.client_token].instance_ids
        misses = (by_name.get(request.instance_name) != set(ids) or len(ids) != request.instance_count
                  or any(state[i] != (pb.INSTANCE_STATE_RUNNING, UBUNTU) for i in ids))
        audit.expect_once(launch_charges[frozenset(ids)], lost=misses)
    for ids in setup:
        audit.expect_once(launch_charges[frozenset(ids)])
    for instance_id in resets:
        audit.expect_once(reset_charges[(instance_id,)],
                          lost=state.get(instance_id) != (pb.INSTANCE_STATE_RUNNING, DEBIAN))
    known_launches = {frozenset(a.instance_ids) for a in launches.values()} | {frozenset(ids) for ids in setup}
    launched = set().union(*known_launches)
    audit.stray_instances = len(set(state) - launched)
    audit.stray_charges = sum(
        1 for c in charges
        if (c.kind == account_pb.CHARGE_KIND_LAUNCH and frozenset(c.instance_ids) not in known_launches)
        or (c.kind == account_pb.CHARGE_KIND_RESET and tuple(c.instance_ids) not in {(i,) for i in resets})
        or not set(c.instance_ids) <= launched)
    return audit


async def test_launches_and_resets_survive_billing_and_the_gateway_killed_at_random(stack: Stack,
                                                                                    figures: Figures) -> None:
    rng = random.Random(SEED)
    alice, bob = api_key(stack, "alice"), api_key(stack, "bob")
    async with stack.aio_channel("gateway", options=PROMPT_RECONNECT) as channel:
        instances = pb_grpc.InstanceServiceStub(channel)
        accounts = account_grpc.AccountServiceStub(channel)
        setup = await _instances_to_reset(instances, bob)
        to_reset = [i for ids in setup for i in ids]
        launch_tally, reset_tally = Tally(), Tally()
        launched: dict[str, Answer] = {}
        reset: dict[str, Answer] = {}
        left_to_the_worker = 0  # resets answered RESETTING: billing could not be reached, their job finishes them
        chaos_over = asyncio.Event()

        async def pause(longest: float) -> None:
            await asyncio.sleep(0 if chaos_over.is_set() else rng.uniform(0, longest))

        async def launching(client: int) -> None:
            for n in range(client, LAUNCHES, LAUNCH_CLIENTS):
                await pause(PACE_SECONDS)
                request = _launch(n)
                launched[request.client_token] = _answer(
                    await until_definite(instances.RunInstances, request, alice, launch_tally, GIVE_UP_SECONDS))

        async def resetting(client: int) -> None:
            nonlocal left_to_the_worker
            for instance_id in to_reset[client::RESET_CLIENTS]:
                await pause(2 * PACE_SECONDS)
                result = await until_definite(instances.ResetInstance, _reset(instance_id), bob, reset_tally,
                                              GIVE_UP_SECONDS)
                reset[instance_id] = _answer(result)
                left_to_the_worker += isinstance(result, pb.ResetInstanceResponse) and \
                    result.instance.state == pb.INSTANCE_STATE_RESETTING

        def busy() -> bool:
            return bool(launch_tally.in_flight or reset_tally.in_flight)

        async def chaos() -> int:
            # Each service is killed at moments of its own (its own random gaps), when calls are in flight;
            # billing every other time with charges waiting in it (its ledger held against writes).
            kills = await asyncio.gather(
                kill_and_restart(stack, "billing", KILLS_EACH, random.Random(f"{SEED}-billing"), KILL_GAPS, OUTAGES,
                                 busy, holding=partial(billing_writes_held, stack)),
                kill_and_restart(stack, "gateway", KILLS_EACH, random.Random(f"{SEED}-gateway"), KILL_GAPS, OUTAGES,
                                 busy))
            chaos_over.set()
            return sum(kills)

        started = time.monotonic()
        answering = asyncio.gather(*(launching(c) for c in range(LAUNCH_CLIENTS)),
                                   *(resetting(c) for c in range(RESET_CLIENTS)))
        kills, _ = await asyncio.gather(chaos(), answering)
        answered = time.monotonic()

        async def nothing_open() -> bool:
            open_request = pb.ListInstancesRequest(states=OPEN_STATES)
            return not any([await every_page(instances.ListInstances, open_request, "instances", who)
                            for who in (alice, bob)])

        await eventually(nothing_open, SETTLE_SECONDS, "instances still PENDING or RESETTING after the kills")
        settled = time.monotonic()

        replays = Tally()  # every token and request id once more: the first answer, nothing new
        for n in range(LAUNCHES):
            request = _launch(n)
            assert _answer(await until_definite(instances.RunInstances, request, alice, replays, 30)) \
                == launched[request.client_token], f"a replay of {request.client_token} answered anew"
        for instance_id in to_reset:
            assert _answer(await until_definite(instances.ResetInstance, _reset(instance_id), bob, replays, 30)) \
                == reset[instance_id], f"a replay of the reset of {instance_id} answered anew"

        found = [i for who in (alice, bob)
                 for i in await every_page(instances.ListInstances, pb.ListInstancesRequest(), "instances", who)]
        charges = [c for who in (alice, bob)  # the ledger (ACCRUED_USAGE is not in it: no charge_id)
                   for c in await every_page(accounts.ListCharges, account_pb.ListChargesRequest(), "charges", who)
                   if c.charge_id]

    audit = _audit(launched, setup, reset, found, charges)  # a refused launch or reset counts as lost
    calls = launch_tally.calls + reset_tally.calls
    figures.add(launches=LAUNCHES, resets=RESETS, kills=kills, calls=calls + replays.calls,
                retries=launch_tally.retries + reset_tally.retries, lost=audit.lost,
                duplicate_charges=audit.duplicate_charges, stray_charges=audit.stray_charges,
                stray_instances=audit.stray_instances)
    print(f"\n{LAUNCHES} launches and {RESETS} resets in {calls} calls, {launch_tally.retries} + "
          f"{reset_tally.retries} of them retries ({Counter(launch_tally.answers + reset_tally.answers)}); "
          f"{kills} kills; all answered after {answered - started:.1f} s ({left_to_the_worker} resets left to the "
          f"job worker), all settled {settled - answered:.1f} s later")
    assert launch_tally.retries, "the kills met no launch: nothing was proved"
    assert reset_tally.retries, "the kills met no reset: nothing was proved"
    refused = {key: a.refusal for key, a in {**launched, **reset}.items() if a.refusal}
    assert not refused, f"valid launches or resets refused: {refused}"
    assert audit == Audit(), audit
