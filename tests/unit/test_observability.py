"""Metrics, access logs, job spans and their settings, through real in-process servers (chassis.metrics,
chassis.rpc, chassis.clients, chassis.jobs, chassis.tracing)."""

from __future__ import annotations

import asyncio
import json
import logging
import urllib.request
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import grpc
import pytest
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from prometheus_client import REGISTRY
from pydantic import ValidationError
from sqlalchemy import MetaData

from catalog_service.settings import CatalogSettings
from chassis import context, errors, jobs, logs, metrics, tracing
from chassis.clients import Downstream
from chassis.clock import FakeClock
from chassis.db import Database
from chassis.jobs import JobQueue, job_worker, measure_queue
from chassis.rpc import REQUEST_ID_KEY
from chassis.server import Background, RunningServer, start_server
from gateway.settings import GatewaySettings
from tests.conftest import SetEnv, from_environment

SERVICE = "test.Observed"
ALICE = "100000000001"
TOKEN = "test-internal-token-0123456789"


async def ok(request: bytes, ctx: grpc.aio.ServicerContext) -> bytes:
    in_flight = REGISTRY.get_sample_value("grpc_server_in_flight", _labels("Ok"))
    return str(in_flight).encode()


async def over_quota(request: bytes, ctx: grpc.aio.ServicerContext) -> bytes:
    raise errors.ResourceExhausted("CUSTOM_IMAGE_QUOTA", "10 custom images at most", subject="account:1")


async def broken(request: bytes, ctx: grpc.aio.ServicerContext) -> bytes:
    raise RuntimeError("boom")


async def refusing(request: bytes, ctx: grpc.aio.ServicerContext) -> bytes:
    await ctx.abort(grpc.StatusCode.FAILED_PRECONDITION, "no")
    return b""


def register(server: grpc.aio.Server) -> list[str]:
    handlers = {name: grpc.unary_unary_rpc_method_handler(fn) for name, fn in
                (("Ok", ok), ("OverQuota", over_quota), ("Broken", broken), ("Refusing", refusing))}
    server.add_generic_rpc_handlers([grpc.method_handlers_generic_handler(SERVICE, handlers)])
    return [SERVICE]


def _labels(method: str, code: str | None = None, service: str = SERVICE) -> dict[str, str]:
    labels = {"grpc_type": "unary", "grpc_service": service, "grpc_method": method}
    if code is not None:
        labels["grpc_code"] = code
    return labels


def sample(name: str, labels: dict[str, str]) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


async def started(access_log: bool = True) -> RunningServer:
    return await start_server("127.0.0.1:0", register, lambda md, ctx: context.Caller(ALICE), access_log=access_log)


async def call(port: int, method: str, request_id: str = "obs-1") -> tuple[grpc.StatusCode, bytes]:
    async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
        try:
            answer = await channel.unary_unary(f"/{SERVICE}/{method}")(b"", metadata=((REQUEST_ID_KEY, request_id),))
        except grpc.aio.AioRpcError as exc:
            return exc.code(), b""
        return grpc.StatusCode.OK, answer


async def test_each_call_is_counted_by_its_code_and_timed() -> None:
    before = {code: sample("grpc_server_handled_total", _labels(method, code)) for method, code in
              (("Ok", "OK"), ("OverQuota", "RESOURCE_EXHAUSTED"), ("Broken", "INTERNAL"),
               ("Refusing", "FAILED_PRECONDITION"))}
    timed = sample("grpc_server_handling_seconds_count", _labels("Ok"))
    refused = sample("cloudimg_quota_refusals_total", {"grpc_service": SERVICE, "reason": "CUSTOM_IMAGE_QUOTA"})
    running = await started()
    try:
        for _ in range(3):
            code, answer = await call(running.port, "Ok")
            assert code == grpc.StatusCode.OK
            assert answer == b"1.0"
        assert (await call(running.port, "OverQuota"))[0] == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert (await call(running.port, "Broken"))[0] == grpc.StatusCode.INTERNAL
        assert (await call(running.port, "Refusing"))[0] == grpc.StatusCode.FAILED_PRECONDITION
    finally:
        await running.stop(None)
    assert sample("grpc_server_handled_total", _labels("Ok", "OK")) - before["OK"] == 3
    assert sample("grpc_server_handled_total", _labels("OverQuota", "RESOURCE_EXHAUSTED")) \
        - before["RESOURCE_EXHAUSTED"] == 1
    assert sample("grpc_server_handled_total", _labels("Broken", "INTERNAL")) - before["INTERNAL"] == 1
    # A handler that aborts by itself is counted by the code it chose.
    assert sample("grpc_server_handled_total", _labels("Refusing", "FAILED_PRECONDITION")) \
        - before["FAILED_PRECONDITION"] == 1
    assert sample("grpc_server_handling_seconds_count", _labels("Ok")) - timed == 3
    assert sample("grpc_server_in_flight", _labels("Ok")) == 0
    assert sample("cloudimg_quota_refusals_total",
                  {"grpc_service": SERVICE, "reason": "CUSTOM_IMAGE_QUOTA"}) - refused == 1


async def test_downstream_calls_are_counted_by_method_and_code() -> None:
    ok_before = sample("grpc_client_handled_total", _labels("Ok", "OK"))
    refused_before = sample("grpc_client_handled_total", _labels("Refusing", "FAILED_PRECONDITION"))
    timed = sample("grpc_client_handling_seconds_count", _labels("Ok"))
    running = await started()
    downstream = Downstream("test", f"127.0.0.1:{running.port}", TOKEN, lambda channel: None)
    try:
        calls = downstream.channel.unary_unary
        await downstream.call(calls(f"/{SERVICE}/Ok"), b"")
        await downstream.call(calls(f"/{SERVICE}/Ok"), b"")
        with pytest.raises(errors.DomainError):
            await downstream.call(calls(f"/{SERVICE}/Refusing"), b"")
    finally:
        await downstream.close()
        await running.stop(None)
    assert sample("grpc_client_handled_total", _labels("Ok", "OK")) - ok_before == 2
    assert sample("grpc_client_handled_total", _labels("Refusing", "FAILED_PRECONDITION")) - refused_before == 1
    assert sample("grpc_client_handling_seconds_count", _labels("Ok")) - timed == 2


async def test_the_metrics_endpoint_serves_prometheus_text() -> None:
    running = await started()
    try:
        await call(running.port, "Ok")
    finally:
        await running.stop(None)
    server = metrics.serve_metrics("127.0.0.1:0")
    try:
        url = f"http://127.0.0.1:{server.server_address[1]}/metrics"
        with await asyncio.to_thread(urllib.request.urlopen, url, timeout=5) as response:
            content_type = response.headers["Content-Type"]
            body = response.read().decode()
    finally:
        server.shutdown()
        server.server_close()
    assert content_type.startswith("text/plain")
    assert "version=0.0.4" in content_type
    assert "# TYPE grpc_server_handled_total counter" in body
    assert "# TYPE grpc_server_handling_seconds histogram" in body
    assert (f'grpc_server_handled_total{{grpc_code="OK",grpc_method="Ok",grpc_service="{SERVICE}",'
            f'grpc_type="unary"}}') in body
    assert f'grpc_server_handling_seconds_bucket{{grpc_method="Ok",grpc_service="{SERVICE}",grpc_type="unary",' \
           f'le="+Inf"}}' in body


async def test_each_call_has_one_info_access_log_line(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="chassis.rpc")
    running = await started()
    try:
        await call(running.port, "Ok", request_id="obs-ok-1")
        await call(running.port, "OverQuota", request_id="obs-quota-1")
    finally:
        await running.stop(None)
    lines = [r for r in caplog.records if r.name == "chassis.rpc" and r.getMessage() == "rpc"]
    assert [r.levelno for r in lines] == [logging.INFO, logging.INFO]
    ok_line, quota_line = (r.fields for r in lines)  # type: ignore[attr-defined]
    assert ok_line["method"] == f"/{SERVICE}/Ok"
    assert ok_line["code"] == "OK"
    assert ok_line["request_id"] == "obs-ok-1"
    assert ok_line["account"] == ALICE
    assert ok_line["peer"].startswith("ipv4:127.0.0.1:")
    assert isinstance(ok_line["ms"], float)
    assert ok_line["ms"] >= 0
    assert quota_line["code"] == "RESOURCE_EXHAUSTED"
    assert quota_line["request_id"] == "obs-quota-1"
    # The JSON line: one object, the request id once.
    entry = json.loads(logs._JsonFormatter("test").format(lines[0]))
    assert entry["level"] == "INFO"
    assert entry["request_id"] == "obs-ok-1"
    assert entry["code"] == "OK"


async def test_access_logs_can_be_turned_off_and_health_checks_are_not_in_them(
        caplog: pytest.LogCaptureFixture) -> None:
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    caplog.set_level(logging.INFO, logger="chassis.rpc")
    quiet, loud = await started(access_log=False), await started()
    try:
        await call(quiet.port, "Ok")
        async with grpc.aio.insecure_channel(f"127.0.0.1:{loud.port}") as channel:
            await health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest())
    finally:
        await quiet.stop(None)
        await loud.stop(None)
    assert [r for r in caplog.records if r.name == "chassis.rpc" and r.levelno >= logging.INFO] == []


TABLE = jobs.job_table("observed", MetaData())
NOW = datetime(2026, 1, 1, tzinfo=UTC)


@pytest.fixture
def db(tmp_path: Path) -> Iterator[Database]:
    database = Database(f"sqlite:///{tmp_path}/jobs.db")
    TABLE.metadata.create_all(database.engine)
    yield database
    database.dispose()


@pytest.fixture
def spans() -> Iterator[InMemorySpanExporter]:
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    tracing.enable(provider)
    yield exporter
    tracing.disable()


async def test_jobs_are_timed_and_counted_and_their_runs_join_the_trace_that_enqueued_them(
        db: Database, spans: InMemorySpanExporter) -> None:
    queue = JobQueue(db, TABLE, FakeClock(NOW), "replica-a")
    assert tracing.enabled()
    tracer = tracing._provider.get_tracer("test")  # type: ignore[union-attr]
    with tracer.start_as_current_span("the call") as call_span, db.engine.begin() as connection:
        job_id = jobs.enqueue(connection, TABLE, "settle", "lch-1", {"n": 1}, NOW)
    with db.engine.begin() as connection:
        jobs.enqueue(connection, TABLE, "settle", "lch-2", {}, NOW)  # outside any span: no trace kept
    queued = Background([measure_queue(queue, ["settle", "other"], seconds=60)])
    await asyncio.sleep(0.2)
    await queued.drain(5)
    assert sample("cloudimg_jobs_pending", {"context": "observed", "kind": "settle"}) == 2
    assert sample("cloudimg_jobs_pending", {"context": "observed", "kind": "other"}) == 0

    done_before = sample("cloudimg_job_duration_seconds_count", {"context": "observed", "kind": "settle",
                                                                "outcome": "done"})
    ran: list[str] = []

    async def settle(job: jobs.Job, run: jobs.JobRun) -> None:
        ran.append(job.job_id)

    worker = Background([job_worker(queue, {"settle": settle}, poll_seconds=0.01)])
    for _ in range(500):
        if len(ran) == 2:
            break
        await asyncio.sleep(0.01)
    await worker.drain(5)
    await asyncio.sleep(0.05)
    assert sample("cloudimg_job_duration_seconds_count", {"context": "observed", "kind": "settle",
                                                          "outcome": "done"}) - done_before == 2
    runs = {s.attributes["job.id"]: s for s in spans.get_finished_spans() if s.name == "job settle" and s.attributes}
    assert set(runs) == set(ran)
    traced = runs[job_id]
    assert traced.context.trace_id == call_span.get_span_context().trace_id
    assert traced.parent is not None
    assert traced.parent.span_id == call_span.get_span_context().span_id
    untraced = next(s for i, s in runs.items() if i != job_id)
    assert untraced.context.trace_id != call_span.get_span_context().trace_id
    assert untraced.parent is None


def test_with_tracing_off_a_job_keeps_no_trace_and_nothing_is_installed(db: Database) -> None:
    assert not tracing.enabled()
    assert tracing.server_interceptors() == []
    assert tracing.client_interceptors() == []
    with db.engine.begin() as connection:
        job_id = jobs.enqueue(connection, TABLE, "settle", "lch-1", {"n": 1}, NOW)
        payload = json.loads(connection.execute(TABLE.select().where(TABLE.c.job_id == job_id)).one().payload)
    assert payload == {"v": 1, "data": {"n": 1}}


@pytest.fixture
def env(monkeypatch: pytest.MonkeyPatch) -> SetEnv:
    def set_env(**values: str) -> None:
        for name, value in {"CLOUDIMG_INTERNAL_TOKEN": TOKEN, "CATALOG_ADDR": "127.0.0.1:50051",
                            "SHARING_ADDR": "127.0.0.1:50052", "BILLING_ADDR": "127.0.0.1:50053", **values}.items():
            monkeypatch.setenv(name, value)
    return set_env


def test_observability_settings_default_to_off_and_access_logs_on(env: SetEnv, monkeypatch: pytest.MonkeyPatch) -> None:
    env()
    for variable in ("CATALOG_METRICS_ADDR", "GATEWAY_METRICS_ADDR", "CLOUDIMG_OTLP_ENDPOINT", "CLOUDIMG_ACCESS_LOG"):
        monkeypatch.delenv(variable, raising=False)
    for settings in (from_environment(CatalogSettings), from_environment(GatewaySettings)):
        assert settings.metrics_addr is None
        assert settings.otlp_endpoint is None
        assert settings.access_log is True


def test_observability_settings_are_read_from_their_variables(env: SetEnv) -> None:
    env(CATALOG_METRICS_ADDR="127.0.0.1:9451", GATEWAY_METRICS_ADDR="0.0.0.0:9450",
        CLOUDIMG_OTLP_ENDPOINT="http://otel-collector:4317", CLOUDIMG_ACCESS_LOG="false")
    catalog, gateway = from_environment(CatalogSettings), from_environment(GatewaySettings)
    assert catalog.metrics_addr == "127.0.0.1:9451"
    assert gateway.metrics_addr == "0.0.0.0:9450"
    assert catalog.otlp_endpoint == gateway.otlp_endpoint == "http://otel-collector:4317"
    assert catalog.access_log is False
    assert gateway.access_log is False


@pytest.mark.parametrize(("variable", "value", "problem"), [
    ("CATALOG_METRICS_ADDR", "9451", "must be host:port"),
    ("CATALOG_METRICS_ADDR", "127.0.0.1:0", "port must be 1-65535"),
    ("CATALOG_METRICS_ADDR", "127.0.0.1:50051", "takes the port of CATALOG_LISTEN_ADDR"),
    ("CLOUDIMG_OTLP_ENDPOINT", "otel-collector:4317", "must be http://host:port or https://host:port"),
    ("CLOUDIMG_OTLP_ENDPOINT", "grpc://otel-collector:4317", "must be http://host:port or https://host:port"),
    ("CLOUDIMG_OTLP_ENDPOINT", "http://otel-collector", "must be host:port"),
    ("CLOUDIMG_ACCESS_LOG", "sometimes", "valid boolean"),
])
def test_bad_observability_settings_are_refused(env: SetEnv, variable: str, value: str, problem: str) -> None:
    env(**{variable: value, "CATALOG_LISTEN_ADDR": "127.0.0.1:50051"})
    with pytest.raises(ValidationError, match=problem):
        CatalogSettings()


def test_the_otlp_endpoint_falls_back_to_opentelemetrys_own_variable(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", raising=False)
    monkeypatch.delenv("OTEL_EXPORTER_OTLP_ENDPOINT", raising=False)
    assert tracing.endpoint(None) is None
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", "http://collector:4317")
    assert tracing.endpoint(None) == "http://collector:4317"
    assert tracing.endpoint("http://mine:4317") == "http://mine:4317"
