"""devtools.loadgen.run_load against a real in-process grpc.aio server (health service + a slow method)."""

import asyncio
import time

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_health.v1._async import HealthServicer

from devtools.loadgen import run_load

SLOW_METHOD = "/loadgen.test.Slow/Sleep"


async def _sleep(request: bytes, context: grpc.aio.ServicerContext) -> bytes:
    await asyncio.sleep(float(request.decode()))
    return b""


@pytest.fixture(scope="module")
async def channel():
    server = grpc.aio.server(options=[("grpc.so_reuseport", 0)])
    health_pb2_grpc.add_HealthServicer_to_server(HealthServicer(), server)
    server.add_generic_rpc_handlers([grpc.method_handlers_generic_handler(
        "loadgen.test.Slow", {"Sleep": grpc.unary_unary_rpc_method_handler(_sleep)})])
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as ch:
        yield ch
    await server.stop(0)


def check(channel: grpc.aio.Channel, service: str = ""):
    stub = health_pb2_grpc.HealthStub(channel)
    return lambda: stub.Check(health_pb2.HealthCheckRequest(service=service), timeout=5)


async def test_counts_add_up_and_percentiles_are_ordered(channel):
    report = await run_load(check(channel), concurrency=8, total=200, name="Check")
    assert report.count == 200 == sum(report.status_code_distribution.values())
    assert report.status_code_distribution == {"OK": 200} and report.error_distribution == {}
    assert report.end_reason == "normal"
    assert 0 < report.fastest <= report.p50 <= report.p90 <= report.p95 <= report.p99 <= report.slowest
    assert report.fastest <= report.average <= report.slowest
    assert report.rps == pytest.approx(report.count / report.total_seconds)


async def test_failures_are_counted_by_code(channel):
    known, unknown = check(channel), check(channel, "no.such.Service")
    calls = 0

    def mixed():
        nonlocal calls
        calls += 1
        return unknown() if calls % 4 == 0 else known()

    report = await run_load(mixed, concurrency=4, total=100)
    assert report.status_code_distribution == {"OK": 75, "NOT_FOUND": 25}
    assert sum(report.error_distribution.values()) == 25
    assert all(key.startswith("NOT_FOUND: ") for key in report.error_distribution)
    assert report.failure_rate == pytest.approx(0.25)


async def test_warmup_calls_are_made_but_not_counted(channel):
    stub, calls = check(channel), 0

    def counted():
        nonlocal calls
        calls += 1
        return stub()

    report = await run_load(counted, concurrency=3, total=20, warmup=10)
    assert calls == 30 and report.count == 20


async def test_duration_mode_stops_on_time(channel):
    started = time.perf_counter()
    report = await run_load(check(channel), concurrency=4, duration=0.3)
    assert time.perf_counter() - started < 1.0
    assert report.end_reason == "timeout" and report.count > 0
    assert report.count == sum(report.status_code_distribution.values())


async def test_calls_in_flight_past_the_grace_period_are_cancelled(channel):
    slow = channel.unary_unary(SLOW_METHOD)
    started = time.perf_counter()
    report = await run_load(lambda: slow(b"10", timeout=30), concurrency=3, duration=0.1, grace=0.2)
    assert time.perf_counter() - started < 1.5
    assert report.status_code_distribution == {"CANCELLED": 3} and report.count == 3


async def test_ghz_json_and_summary(channel):
    report = await run_load(check(channel), concurrency=2, total=20, name="Check c=2")
    ghz = report.to_ghz_json()
    assert {"count", "total", "average", "fastest", "slowest", "rps", "latencyDistribution",
            "statusCodeDistribution", "errorDistribution"} <= ghz.keys()
    assert ghz["count"] == 20 and ghz["statusCodeDistribution"] == {"OK": 20}
    assert isinstance(ghz["total"], int) and ghz["total"] == pytest.approx(report.total_seconds * 1e9, abs=1)
    assert ghz["slowest"] == round(report.slowest * 1e6)
    assert [d["percentage"] for d in ghz["latencyDistribution"]] == [50, 90, 95, 99]
    text = report.summary()
    for label in ("Summary:", "Count:\t20", "Requests/sec:", "Latency distribution:", "99 % in",
                  "Status code distribution:", "[OK]\t20 responses"):
        assert label in text


async def test_a_run_must_be_bounded():
    with pytest.raises(ValueError):
        await run_load(lambda: asyncio.sleep(0), concurrency=1)
