"""What the fault tests share: callers of the public API that record how each call ended, retries with
the same client token or request id until a call ends with a definite answer, every page of a listing,
and the killing and restarting of a stack's processes.

Channels come from ``stack.aio_channel`` and internal credentials from ``stack.internal_metadata`` only,
so the tests run unchanged whatever transport the stack uses.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol, TypedDict, TypeVar

import grpc
from cloudimg.gateway.v1 import instance_service_pb2 as pb
from cloudimg.gateway.v1 import instance_service_pb2_grpc as pb_grpc
from google.protobuf.message import Message

from catalog_service.domain.seed import seed_image_id
from devtools.stack import Stack
from tests.conftest import rich_status

GZ = "ap-guangzhou"
UBUNTU = seed_image_id(GZ, "ubuntu-2204-x86")
DEBIAN = seed_image_id(GZ, "debian-12-x86")
INSTANCE_TYPE = "S5.MEDIUM4"


class Launch(TypedDict):
    """The fields a quote and a launch share."""

    region: str
    image_id: str
    instance_type: str
    instance_count: int


LAUNCH = Launch(region=GZ, image_id=UBUNTU, instance_type=INSTANCE_TYPE, instance_count=1)
# Reconnect to a restarted gateway within a tenth of a second, not after gRPC's 1 s, 1.6 s, ... backoff.
PROMPT_RECONNECT = (("grpc.initial_reconnect_backoff_ms", 50), ("grpc.max_reconnect_backoff_ms", 200))
# The codes that leave a call's outcome open: the same client token or request id asks again.
OPEN = {grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.ABORTED, grpc.StatusCode.DEADLINE_EXCEEDED}


def api_key(stack: Stack, who: str = "alice") -> tuple[tuple[str, str], ...]:
    """The metadata of a call to the gateway as one of the demo accounts."""
    return (("authorization", f"Bearer {stack.api_keys[who]}"),)


def reason_of(error: grpc.aio.AioRpcError) -> str:
    """The ErrorInfo reason of a failed call; the code's name for a status made on the client side (a
    deadline, a dropped connection), which carries no details."""
    try:
        reason: str = rich_status(error)[1].reason
    except AssertionError:
        reason = error.code().name
    return reason


class PageRequest(Protocol):
    """The request of a paginated listing (ListInstancesRequest, ListChargesRequest, ...)."""

    page_size: int
    page_token: str


async def every_page(call: Callable[..., Awaitable[Any]], request: PageRequest, items: str,
                     metadata: Sequence[tuple[str, str]]) -> list[Any]:
    """Every item of a paginated listing (the ``items`` field of each page), reading page after page (a page
    holds at most 1000)."""
    found: list[Any] = []
    request.page_size = 1000
    while True:
        page = await call(request, metadata=metadata, timeout=10)
        found += getattr(page, items)
        if not page.next_page_token:
            return found
        request.page_token = page.next_page_token


async def eventually(check: Callable[[], Awaitable[bool]], timeout: float, what: str) -> None:
    """Asks ``check`` every 0.2 s until it holds; fails saying ``what`` did not happen within timeout."""
    deadline = time.monotonic() + timeout
    while not await check():
        assert time.monotonic() < deadline, f"{what}: not within {timeout} s"
        await asyncio.sleep(0.2)


@dataclass(frozen=True)
class Outcome:
    started: float
    ended: float
    code: grpc.StatusCode
    reason: str = ""


class Calls:
    """Calls made again and again by concurrent callers, the outcome of each one recorded in ``outcomes``."""

    def __init__(self) -> None:
        self.outcomes: list[Outcome] = []

    async def record(self, call: Awaitable[object]) -> Outcome:
        """Awaits a call and records how it ended: OK, or its code and reason."""
        started = time.monotonic()
        try:
            await call
            outcome = Outcome(started, time.monotonic(), grpc.StatusCode.OK)
        except grpc.aio.AioRpcError as error:
            outcome = Outcome(started, time.monotonic(), error.code(), reason_of(error))
        self.outcomes.append(outcome)
        return outcome

    async def keep_making(self, call: Callable[[int], Awaitable[object]], until: asyncio.Event) -> None:
        """Makes ``call(turn)`` for turn 0, 1, 2, ..., one after the other, until told to stop."""
        turn = 0
        while not until.is_set():
            await self.record(call(turn))
            turn += 1

    async def until_done(self, count: int, started_after: float, timeout: float) -> list[Outcome]:
        """The first ``count`` calls that started after a moment, once they have ended."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            after = sorted((o for o in self.outcomes if o.started >= started_after), key=lambda o: o.started)
            if len(after) >= count:
                return after[:count]
            await asyncio.sleep(0.01)
        raise TimeoutError(f"fewer than {count} calls ended within {timeout} s")


QuoteOrLaunch = pb.RunInstancesResponse | pb.QuoteRunInstancesResponse


def quote_or_launch(channel: grpc.aio.Channel, metadata: Sequence[tuple[str, str]], timeout: float = 10.0
                    ) -> Callable[[int], Awaitable[QuoteOrLaunch]]:
    """A call through the public API for ``Calls.keep_making``: a quote on even turns, a launch of one
    instance on odd ones. Both need all four services, though the gateway keeps what it may of them (the
    official image, a leased verdict, a quote): a launch always asks billing for its charge."""
    instances = pb_grpc.InstanceServiceStub(channel)

    def call(turn: int) -> Awaitable[QuoteOrLaunch]:
        answer: Awaitable[QuoteOrLaunch]
        if turn % 2:
            answer = instances.RunInstances(pb.RunInstancesRequest(**LAUNCH), metadata=metadata, timeout=timeout)
        else:
            answer = instances.QuoteRunInstances(pb.QuoteRunInstancesRequest(**LAUNCH), metadata=metadata,
                                                 timeout=timeout)
        return answer

    return call


@dataclass
class Tally:
    """How many calls a group of retrying callers made, and how many of them were retries."""

    calls: int = 0
    retries: int = 0
    in_flight: int = 0  # calls made and not ended yet
    answers: list[str] = field(default_factory=list)  # the reason of every open answer, in order


AnswerT = TypeVar("AnswerT")


async def until_definite(call: Callable[..., Awaitable[AnswerT]], request: Message,
                         metadata: Sequence[tuple[str, str]], tally: Tally, give_up_after: float,
                         timeout: float = 15.0) -> AnswerT | grpc.aio.AioRpcError:
    """Makes a call, and again with the same request (its client token or request id) while it ends open
    (UNAVAILABLE, ABORTED, a deadline): the answer once it is OK, or the error of a definite refusal.
    Fails if no definite answer comes within ``give_up_after`` seconds."""
    deadline = time.monotonic() + give_up_after
    while True:
        tally.calls += 1
        tally.in_flight += 1
        try:
            return await call(request, metadata=metadata, timeout=timeout)
        except grpc.aio.AioRpcError as error:
            if error.code() not in OPEN:
                return error
            tally.answers.append(reason_of(error))
        finally:
            tally.in_flight -= 1
        assert time.monotonic() < deadline, f"no definite answer within {give_up_after} s: {request}"
        tally.retries += 1
        await asyncio.sleep(0.2)  # a gateway that is down refuses at once: give it a moment


async def kill_and_restart(stack: Stack, service: str, kills: int, rng: random.Random,
                           gaps: tuple[float, float], outages: Sequence[tuple[float, float]],
                           busy: Callable[[], bool] = lambda: True,
                           holding: Callable[[], contextlib.AbstractContextManager[None]] | None = None) -> int:
    """SIGKILLs a service ``kills`` times, each after a random gap and once ``busy()`` holds (calls are in
    flight; at most a second later), and starts it again after a random outage (cycling through
    ``outages``), waiting until it is SERVING. With ``holding``, every other kill comes instead a moment
    after entering it (e.g. ``billing_writes_held``: the service dies with work waiting in it), and the
    hold ends with the kill. Returns how many kills it made."""
    for kill in range(kills):
        await asyncio.sleep(rng.uniform(*gaps))
        held = holding is not None and kill % 2 == 1
        with holding() if holding is not None and held else contextlib.nullcontext():
            if held:
                await asyncio.sleep(rng.uniform(0.4, 1.0))  # calls arrive and wait in the service
            else:
                deadline = time.monotonic() + 1.0
                while not busy():
                    if time.monotonic() >= deadline:
                        break
                    await asyncio.sleep(0.002)
            await asyncio.to_thread(stack.kill, service)
        await asyncio.sleep(rng.uniform(*outages[kill % len(outages)]))
        stack.start_service(service)
        await asyncio.to_thread(stack.wait, service)
    return kills
