"""The chassis on its own: errors to statuses, pagination, ids, money, settings, deadlines."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import Counter
from collections.abc import AsyncIterator, Mapping, Sequence
from decimal import Decimal
from typing import Protocol, TypedDict

import grpc
import pytest
from google.protobuf.message import Message
from google.rpc import code_pb2, error_details_pb2, status_pb2

from chassis import context, errors, ids, pagination
from chassis.clients import ACCOUNT_KEY, INTERNAL_TOKEN_KEY, Downstream
from chassis.convert import decimal_of, money
from chassis.rpc import status_of
from chassis.server import start_server
from chassis.settings import load_settings
from tests.conftest import unpacked_details


@pytest.mark.parametrize(("exc", "code", "detail_type"), [
    (errors.InvalidArgument("BAD", "bad", field="x"), code_pb2.INVALID_ARGUMENT, error_details_pb2.BadRequest),
    (errors.NotFound("GONE", "gone", resource_type="image", resource_name="img-1"), code_pb2.NOT_FOUND,
     error_details_pb2.ResourceInfo),
    (errors.PermissionDenied("NO", "no", resource_type="image", resource_name="img-1"), code_pb2.PERMISSION_DENIED,
     error_details_pb2.ResourceInfo),
    (errors.FailedPrecondition("STATE", "state", subject="image:img-1"), code_pb2.FAILED_PRECONDITION,
     error_details_pb2.PreconditionFailure),
    (errors.ResourceExhausted("LIMIT", "limit", subject="image:img-1"), code_pb2.RESOURCE_EXHAUSTED,
     error_details_pb2.QuotaFailure),
    (errors.Unauthenticated("WHO", "who"), code_pb2.UNAUTHENTICATED, None),
    (errors.Unavailable("DOWN", "down"), code_pb2.UNAVAILABLE, None),
])
def test_every_domain_error_becomes_one_error_info_and_its_detail(exc: errors.DomainError, code: code_pb2.Code,
                                                                  detail_type: type[Message] | None) -> None:
    status = status_of(exc)
    details = unpacked_details(status)
    assert status.code == code
    assert status.message == exc.message
    assert isinstance(details[0], error_details_pb2.ErrorInfo)
    assert details[0].reason == exc.reason
    assert sum(isinstance(d, error_details_pb2.ErrorInfo) for d in details) == 1
    assert [type(d) for d in details[1:]] == ([detail_type] if detail_type else [])


def test_an_internal_error_says_nothing_of_its_cause() -> None:
    status = status_of(errors.DomainError("DEPENDENCY_FAILED", "SELECT * FROM secrets failed"))
    assert status.code == code_pb2.INTERNAL
    assert status.message == "internal error"
    assert "SELECT" not in str(status)


async def test_an_unexpected_exception_reaches_the_caller_as_a_generic_internal() -> None:
    async def broken(request: bytes, ctx: grpc.aio.ServicerContext) -> bytes:
        raise RuntimeError("psycopg.OperationalError: password for user root at 10.0.0.5")

    def register(server: grpc.aio.Server) -> list[str]:
        handler = grpc.unary_unary_rpc_method_handler(broken)
        server.add_generic_rpc_handlers([grpc.method_handlers_generic_handler("test.Broken", {"Call": handler})])
        return ["test.Broken"]

    running = await start_server("127.0.0.1:0", register, lambda md, ctx: context.Caller("100000000001"))
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{running.port}") as channel:
            with pytest.raises(grpc.aio.AioRpcError) as failed:
                await channel.unary_unary("/test.Broken/Call")(b"")
        assert failed.value.code() == grpc.StatusCode.INTERNAL
        assert failed.value.details() == "internal error"
        assert "psycopg" not in str(failed.value.trailing_metadata())
    finally:
        await running.stop(None)


def test_page_sizes_are_clamped() -> None:
    assert pagination.clamp_page_size(0) == 50
    assert pagination.clamp_page_size(7) == 7
    assert pagination.clamp_page_size(10**6) == 1000
    with pytest.raises(errors.InvalidArgument):
        pagination.clamp_page_size(-1)


def test_page_tokens_round_trip_and_are_bound_to_their_filters() -> None:
    made_for = pagination.fingerprint("ap-guangzhou", "PUBLIC")
    token = pagination.encode_page_token("img-abc12345", made_for)
    assert pagination.decode_page_token(token, made_for) == "img-abc12345"
    assert pagination.decode_page_token("", made_for) is None
    for bad, filters in [(token, pagination.fingerprint("ap-beijing")), ("!!!", made_for), ("e30", made_for)]:
        with pytest.raises(errors.InvalidArgument) as refused:
            pagination.decode_page_token(bad, filters)
        assert refused.value.reason == "INVALID_PAGE_TOKEN"


def test_ids_have_the_seed_clouds_shape() -> None:
    new = ids.new_id("img")
    assert ids.is_id("img", new)
    assert not ids.is_id("ins", new)
    for bad in ["img-ABCDEFGH", "img-1234567", "img-123456789", "ami-12345678", "", "img-1234567\n"]:
        assert not ids.is_id("img", bad)
    with pytest.raises(errors.InvalidArgument) as refused:
        ids.require_id("img", "x" * 10_000, "image_id")
    assert len(refused.value.message) < 200  # long input is not echoed whole
    assert ids.require_account_id("100000000001", "account_id") == "100000000001"
    with pytest.raises(errors.InvalidArgument):
        ids.require_account_id("1000000000011", "account_id")


def test_sibling_ids_are_distinct_share_their_head_and_are_each_uniform(monkeypatch: pytest.MonkeyPatch) -> None:
    launch = ids.sibling_ids("ins", 100)
    assert len(set(launch)) == 100
    assert launch == sorted(launch)
    assert all(ids.is_id("ins", i) for i in launch)
    assert len({i[:7] for i in launch}) == 1
    assert ids.sibling_ids("ins", 0) == []
    # Each id is uniform: its head over many launches, its tail within one.
    heads = Counter("".join(ids.sibling_ids("ins", 2)[0][4:7] for _ in range(4_000)))
    tails = Counter("".join(i[7:] for i in ids.sibling_ids("ins", 30_000)))
    for seen in (heads, tails):
        expected = seen.total() / 36
        assert len(seen) == 36
        # Pearson's chi-squared over 35 degrees of freedom: a fair draw exceeds 90 about once in 10 million.
        assert sum((n - expected) ** 2 / expected for n in seen.values()) < 90
    # A byte that reducing modulo 36 would bias is drawn again; a tail a sibling has is drawn again.
    draws = iter([b"\x00\x01\x02", b"\x05" * 10, b"\x07" * 4 + b"\xfc", b"\x07"])
    monkeypatch.setattr("chassis.ids.secrets.token_bytes", lambda n: next(draws))
    assert ids.sibling_ids("ins", 2) == ["ins-abcfffff", "ins-abchhhhh"]


@pytest.mark.parametrize("amount", ["0", "0.058", "12.345678901", "-3.25", "-0.000000001", "123456789.5"])
def test_money_is_exact(amount: str) -> None:
    value = Decimal(amount)
    converted = money("USD", value)
    assert decimal_of(converted) == value
    assert (converted.units >= 0 and converted.nanos >= 0) or (converted.units <= 0 and converted.nanos <= 0)


def test_money_finer_than_a_nano_is_refused_not_rounded() -> None:
    with pytest.raises(ValueError, match=r"finer than google\.type\.Money can carry"):
        money("USD", Decimal("0.0000000001"))


def test_missing_settings_fail_fast_with_a_readable_message(monkeypatch: pytest.MonkeyPatch,
                                                           capsys: pytest.CaptureFixture[str]) -> None:
    from gateway.settings import GatewaySettings

    for name in ("CLOUDIMG_INTERNAL_TOKEN", "CATALOG_ADDR", "SHARING_ADDR", "BILLING_ADDR"):
        monkeypatch.delenv(name, raising=False)
    with pytest.raises(SystemExit) as stopped:
        load_settings(GatewaySettings)
    assert stopped.value.code == 2
    message = capsys.readouterr().err
    assert "CATALOG_ADDR: required" in message
    assert "BILLING_ADDR: required" in message
    assert "Traceback" not in message


class SeenCall(TypedDict, total=False):
    timeout: float
    metadata: dict[str, str]


async def test_downstream_calls_carry_the_remaining_budget_and_the_caller() -> None:
    seen: SeenCall = {}

    async def method(request: object, timeout: float, metadata: Sequence[tuple[str, str]]) -> str:
        seen["timeout"], seen["metadata"] = timeout, dict(metadata)
        return "ok"

    downstream = Downstream("catalog", "127.0.0.1:1", "secret-token-0123456789", lambda channel: None)
    try:
        context.current_caller.set(context.Caller("100000000001"))
        context.deadline.set(time.monotonic() + 2.0)
        assert await downstream.call(method, object()) == "ok"
        assert 1.5 < seen["timeout"] < 2.0
        assert seen["metadata"][ACCOUNT_KEY] == "100000000001"
        assert seen["metadata"][INTERNAL_TOKEN_KEY] == "secret-token-0123456789"
        context.deadline.set(time.monotonic() - 1)
        with pytest.raises(errors.Unavailable):
            await downstream.call(method, object())
    finally:
        context.deadline.set(None)
        await downstream.close()


async def test_downstream_calls_are_retried_on_unavailable_only() -> None:
    attempts: dict[str, int] = {"flaky": 0, "refusing": 0}

    async def flaky(request: bytes, ctx: grpc.aio.ServicerContext) -> bytes:
        attempts["flaky"] += 1
        if attempts["flaky"] < 3:
            await ctx.abort(grpc.StatusCode.UNAVAILABLE, "starting up")
        return b"ok"

    async def refusing(request: bytes, ctx: grpc.aio.ServicerContext) -> bytes:
        attempts["refusing"] += 1
        await ctx.abort(grpc.StatusCode.FAILED_PRECONDITION, "no")
        return b""

    def register(server: grpc.aio.Server) -> list[str]:
        handlers = {name: grpc.unary_unary_rpc_method_handler(fn) for name, fn in
                    (("Flaky", flaky), ("Refusing", refusing))}
        server.add_generic_rpc_handlers([grpc.method_handlers_generic_handler("test.Retry", handlers)])
        return ["test.Retry"]

    running = await start_server("127.0.0.1:0", register, lambda md, ctx: context.Caller("100000000001"))
    downstream = Downstream("test", f"127.0.0.1:{running.port}", "secret-token-0123456789", lambda channel: None)
    try:
        call = downstream.channel.unary_unary
        assert await downstream.call(call("/test.Retry/Flaky"), b"") == b"ok"
        assert attempts["flaky"] == 3  # two UNAVAILABLE answers, retried by the service config
        with pytest.raises(errors.DomainError):
            await downstream.call(call("/test.Retry/Refusing"), b"")
        assert attempts["refusing"] == 1  # a domain refusal is never retried
    finally:
        await downstream.close()
        await running.stop(None)


async def test_sigterm_lets_calls_in_flight_finish_and_refuses_new_ones() -> None:
    import asyncio
    import os
    import signal

    from chassis.server import serve
    from devtools.stack import free_port

    started = asyncio.Event()

    async def slow(request: bytes, ctx: grpc.aio.ServicerContext) -> bytes:
        started.set()
        await asyncio.sleep(0.5)
        return b"finished"

    def register(server: grpc.aio.Server) -> list[str]:
        handler = grpc.unary_unary_rpc_method_handler(slow)
        server.add_generic_rpc_handlers([grpc.method_handlers_generic_handler("test.Slow", {"Call": handler})])
        return ["test.Slow"]

    addr = f"127.0.0.1:{free_port()}"
    serving = asyncio.create_task(serve("test", addr, register, lambda md, ctx: context.Caller("100000000001"),
                                        grace_seconds=5))
    async with grpc.aio.insecure_channel(addr) as channel:
        call = channel.unary_unary("/test.Slow/Call")
        in_flight = asyncio.ensure_future(call(b"", wait_for_ready=True, timeout=10))
        await asyncio.wait_for(started.wait(), 10)
        os.kill(os.getpid(), signal.SIGTERM)
        assert await in_flight == b"finished"
        await asyncio.wait_for(serving, 10)
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await call(b"", timeout=1)
        assert refused.value.code() in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED)


def _echo_register(server: grpc.aio.Server) -> list[str]:
    async def echo(request: bytes, ctx: grpc.aio.ServicerContext) -> bytes:
        return request

    handler = grpc.unary_unary_rpc_method_handler(echo)
    server.add_generic_rpc_handlers([grpc.method_handlers_generic_handler("test.Echo", {"Call": handler})])
    return ["test.Echo"]


async def test_a_dependency_that_is_back_is_served_at_once_and_one_that_is_down_answers_promptly() -> None:
    from devtools.stack import free_port

    addr = f"127.0.0.1:{free_port()}"
    allow = lambda md, ctx: context.Caller("100000000001")  # noqa: E731
    running = await start_server(addr, _echo_register, allow)
    downstream = Downstream("test", addr, "secret-token-0123456789", lambda channel: None)
    echo = downstream.channel.unary_unary("/test.Echo/Call")
    try:
        context.deadline.set(time.monotonic() + 10)
        assert await downstream.call(echo, b"up") == b"up"
        await running.stop(None)
        started = time.monotonic()
        for _ in range(2):  # the channel now waits to reconnect (gRPC's backoff)
            with pytest.raises(errors.Unavailable) as down:
                await downstream.call(echo, b"down")
            assert down.value.reason == "DEPENDENCY_UNAVAILABLE"
        assert isinstance(down.value, errors.Unreached)  # not connected: the call was never sent
        assert time.monotonic() - started < 4  # each within about a second, not the 10 s deadline
        running = await start_server(addr, _echo_register, allow)
        # SERVING again: the very next call is served, whatever step of its backoff the channel is at
        assert await downstream.call(echo, b"back") == b"back"
    finally:
        context.deadline.set(None)
        await downstream.close()
        await running.stop(None)


async def test_a_dependency_answering_cancelled_is_unavailable_not_internal() -> None:
    async def stopping(request: bytes, ctx: grpc.aio.ServicerContext) -> bytes:
        await ctx.abort(grpc.StatusCode.CANCELLED, "server shutting down")
        return b""

    def register(server: grpc.aio.Server) -> list[str]:
        handler = grpc.unary_unary_rpc_method_handler(stopping)
        server.add_generic_rpc_handlers([grpc.method_handlers_generic_handler("test.Stop", {"Call": handler})])
        return ["test.Stop"]

    running = await start_server("127.0.0.1:0", register, lambda md, ctx: context.Caller("100000000001"))
    downstream = Downstream("test", f"127.0.0.1:{running.port}", "secret-token-0123456789", lambda channel: None)
    try:
        with pytest.raises(errors.Unavailable) as failed:
            await downstream.call(downstream.channel.unary_unary("/test.Stop/Call"), b"")
        assert failed.value.reason == "DEPENDENCY_UNAVAILABLE"
        assert status_of(failed.value).code == code_pb2.UNAVAILABLE
    finally:
        await downstream.close()
        await running.stop(None)


async def test_stopping_drains_calls_on_the_wire_then_lets_them_finish() -> None:
    """Calls sent just before the stop have not reached a handler yet; the drain lets every one in."""
    import asyncio

    from grpc_health.v1 import health_pb2, health_pb2_grpc

    async def slow(request: bytes, ctx: grpc.aio.ServicerContext) -> bytes:
        await asyncio.sleep(0.2)
        return b"finished"

    def register(server: grpc.aio.Server) -> list[str]:
        handler = grpc.unary_unary_rpc_method_handler(slow)
        server.add_generic_rpc_handlers([grpc.method_handlers_generic_handler("test.Slow", {"Call": handler})])
        return ["test.Slow"]

    running = await start_server("127.0.0.1:0", register, lambda md, ctx: context.Caller("100000000001"))
    async with grpc.aio.insecure_channel(f"127.0.0.1:{running.port}") as channel:
        await channel.channel_ready()
        call = channel.unary_unary("/test.Slow/Call")
        in_flight = [asyncio.ensure_future(call(b"", timeout=10)) for _ in range(50)]
        stopping = asyncio.ensure_future(running.stop(5, drain=0.5))
        health = await health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=5)
        assert health.status == health_pb2.HealthCheckResponse.NOT_SERVING  # and yet serving
        assert await asyncio.gather(*in_flight) == [b"finished"] * 50
        await stopping


async def test_background_work_starts_and_is_drained_not_just_cancelled() -> None:
    from chassis.server import Background, every

    rounds: list[int] = []
    finished: list[str] = []

    async def failing_then_counting() -> None:
        rounds.append(len(rounds))
        if len(rounds) == 1:
            raise RuntimeError("one bad round")

    async def polite(stopping: asyncio.Event) -> None:
        await stopping.wait()
        await asyncio.sleep(0.05)  # finishes what it was doing
        finished.append("polite")

    async def stubborn(stopping: asyncio.Event) -> None:
        try:
            await asyncio.sleep(60)
        except asyncio.CancelledError:
            finished.append("stubborn cancelled")
            raise

    background = Background([every(0.01, "counting", failing_then_counting), polite, stubborn])
    await asyncio.sleep(0.1)
    await background.drain(0.5)
    assert len(rounds) >= 3  # a failed round does not stop the next ones
    assert finished == ["polite", "stubborn cancelled"]  # drained within the grace; cancelled past it


def _streaming_register(server: grpc.aio.Server) -> list[str]:
    """A service of every streaming kind over google.rpc.Status messages: each answers its request's
    message back, and raises a domain error when the message is "refuse"."""
    def answer(request: status_pb2.Status) -> status_pb2.Status:
        if request.message == "refuse":
            raise errors.FailedPrecondition("REFUSED", "refused", subject="stream")
        return status_pb2.Status(message=request.message)

    async def one_to_many(request: status_pb2.Status,
                          ctx: grpc.aio.ServicerContext) -> AsyncIterator[status_pb2.Status]:
        yield answer(request)
        yield answer(request)

    async def many_to_one(requests: AsyncIterator[status_pb2.Status],
                          ctx: grpc.aio.ServicerContext) -> status_pb2.Status:
        return status_pb2.Status(message=",".join([answer(r).message async for r in requests]))

    async def many_to_many(requests: AsyncIterator[status_pb2.Status],
                           ctx: grpc.aio.ServicerContext) -> AsyncIterator[status_pb2.Status]:
        async for request in requests:
            yield answer(request)

    codec = dict(request_deserializer=status_pb2.Status.FromString,
                 response_serializer=status_pb2.Status.SerializeToString)
    handlers = {
        "OneToMany": grpc.unary_stream_rpc_method_handler(one_to_many, **codec),
        "ManyToOne": grpc.stream_unary_rpc_method_handler(many_to_one, **codec),
        "ManyToMany": grpc.stream_stream_rpc_method_handler(many_to_many, **codec),
    }
    server.add_generic_rpc_handlers([grpc.method_handlers_generic_handler("test.Streams", handlers)])
    return ["test.Streams"]


@pytest.fixture
async def streams() -> AsyncIterator[grpc.aio.Channel]:
    """The streaming service behind the chassis's interceptor, which lets in only "authorization: ok"."""
    def authenticate(metadata: Mapping[str, str], ctx: grpc.aio.ServicerContext) -> context.Caller:
        if metadata.get("authorization") != "ok":
            raise errors.Unauthenticated("API_KEY_MISSING", "who are you")
        return context.Caller("100000000001")

    running = await start_server("127.0.0.1:0", _streaming_register, authenticate)
    async with grpc.aio.insecure_channel(f"127.0.0.1:{running.port}") as channel:
        yield channel
    await running.stop(None)


class StreamCall(Protocol):
    async def __call__(self, bodies: list[bytes], metadata: Sequence[tuple[str, str]] = ...) -> list[bytes]: ...


def _stream_call(channel: grpc.aio.Channel, method: str) -> StreamCall:
    """Calls a streaming method with raw bodies; returns its answers' bodies, or raises its error."""
    kind = {"OneToMany": channel.unary_stream, "ManyToOne": channel.stream_unary,
            "ManyToMany": channel.stream_stream}[method]
    stub = kind(f"/test.Streams/{method}")

    async def call(bodies: list[bytes],
                   metadata: Sequence[tuple[str, str]] = (("authorization", "ok"),)) -> list[bytes]:
        if method == "OneToMany":
            return [answer async for answer in stub(bodies[0], metadata=metadata)]
        if method == "ManyToOne":
            return [await stub(iter(bodies), metadata=metadata)]
        return [answer async for answer in stub(iter(bodies), metadata=metadata)]

    return call


def _reason(error: grpc.aio.AioRpcError) -> str:
    from grpc_status import rpc_status

    status: status_pb2.Status | None = rpc_status.from_call(error)
    assert status is not None, error
    for detail in unpacked_details(status):
        if isinstance(detail, error_details_pb2.ErrorInfo):
            reason: str = detail.reason  # google.rpc has no py.typed marker: mypy sees its messages as Any
            return reason
    raise AssertionError(f"no ErrorInfo on {error}")


@pytest.mark.parametrize("method", ["OneToMany", "ManyToOne", "ManyToMany"])
async def test_streaming_handlers_get_the_same_authentication_decoding_and_errors_as_unary(
        streams: grpc.aio.Channel, method: str) -> None:
    call = _stream_call(streams, method)
    hello = status_pb2.Status(message="hello").SerializeToString()
    assert await call([hello])
    refusals: dict[str, tuple[list[bytes], Sequence[tuple[str, str]] | None, grpc.StatusCode, str]] = {
        "no caller": ([hello], (), grpc.StatusCode.UNAUTHENTICATED, "API_KEY_MISSING"),
        "a body that is no message": ([b"\xff\xff\xff"], None, grpc.StatusCode.INVALID_ARGUMENT, "MALFORMED_REQUEST"),
        "a control character": ([status_pb2.Status(message="a\x00b").SerializeToString()], None,
                                grpc.StatusCode.INVALID_ARGUMENT, "INVALID_CHARACTERS"),
        "a domain error": ([status_pb2.Status(message="refuse").SerializeToString()], None,
                           grpc.StatusCode.FAILED_PRECONDITION, "REFUSED"),
    }
    for case, (bodies, metadata, code, reason) in refusals.items():
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await (call(bodies) if metadata is None else call(bodies, metadata))
        assert (refused.value.code(), _reason(refused.value)) == (code, reason), case


@pytest.mark.parametrize(("sent", "echoed"), [
    (None, None), ("req-7f3a.b:1", "req-7f3a.b:1"), ("x" * 65, None), ("a b", None), ("../../etc/passwd", None),
])
async def test_every_answer_carries_the_request_id_success_and_error_alike(sent: str | None,
                                                                           echoed: str | None) -> None:
    """The caller's x-request-id (a plain token of at most 64 characters) or a new one comes back in the
    response's trailers, on success and on error."""
    async def answer(request: bytes, ctx: grpc.aio.ServicerContext) -> bytes:
        if request == b"refuse":
            raise errors.FailedPrecondition("REFUSED", "refused", subject="test")
        return b"ok"

    def register(server: grpc.aio.Server) -> list[str]:
        handler = grpc.unary_unary_rpc_method_handler(answer)
        server.add_generic_rpc_handlers([grpc.method_handlers_generic_handler("test.Ids", {"Call": handler})])
        return ["test.Ids"]

    running = await start_server("127.0.0.1:0", register, lambda md, ctx: context.Caller("100000000001"))
    metadata = () if sent is None else (("x-request-id", sent),)
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{running.port}") as channel:
            ids = []
            for body in (b"", b"refuse"):
                call = channel.unary_unary("/test.Ids/Call")(body, metadata=metadata)
                with contextlib.suppress(grpc.aio.AioRpcError):
                    await call
                ids.append(dict(await call.trailing_metadata()).get("x-request-id"))
        for got in ids:
            assert got == echoed if echoed else (got and got != sent and len(got) == 16), ids
    finally:
        await running.stop(None)
