"""One trace per public call: a launch through the four real in-process services, spans in memory."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
from cloudimg.gateway.v1 import instance_service_pb2 as pb
from cloudimg.gateway.v1 import instance_service_pb2_grpc as pb_grpc
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind
from prometheus_client import REGISTRY
from sqlalchemy import create_engine, select

from catalog_service.domain.seed import seed_image_id
from chassis import tracing
from gateway.adapters.tables import JOBS
from gateway.bootstrap import open_database
from gateway.service_layer import background
from gateway.service_layer.dependencies import Dependencies, ReferenceData
from tests.conftest import ServerFactory, rich_status
from tests.integration.cloud import SERVICES, run_request, start_services
from tests.unit.gateway_fakes import FakeBilling, FakeCatalog, FakeSharing

UBUNTU = seed_image_id("ap-guangzhou", "ubuntu-2204-x86")
INTERNAL = {"catalog": "cloudimg.catalog.v1.CatalogService", "sharing": "cloudimg.sharing.v1.SharingService",
            "billing": "cloudimg.billing.v1.BillingService"}


@pytest.fixture
def spans() -> Iterator[InMemorySpanExporter]:
    """Tracing on, before the services start (their servers and the gateway's channels take it then)."""
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    tracing.enable(provider)
    yield exporter
    tracing.disable()
    provider.shutdown()


def _service(span: ReadableSpan) -> str:
    return str((span.attributes or {}).get("rpc.service", ""))


async def test_a_launch_is_one_trace_across_the_four_services(serve: ServerFactory, tmp_path: Path,
                                                              spans: InMemorySpanExporter) -> None:
    urls = {name: f"sqlite:///{tmp_path}/{name}.db" for name in SERVICES}
    addrs, keys = await start_services(serve, urls)
    auth = (("authorization", f"Bearer {keys['alice']}"),)
    launched_before = REGISTRY.get_sample_value("cloudimg_launches_total", {"outcome": "launched"}) or 0
    async with grpc.aio.insecure_channel(addrs["gateway"]) as channel:
        spans.clear()  # start-up's own calls (none expected) are not this launch's
        launched = await pb_grpc.InstanceServiceStub(channel).RunInstances(pb.RunInstancesRequest(
            region="ap-guangzhou", image_id=UBUNTU, instance_type="S5.MEDIUM4", instance_count=2,
            client_token="trace-1"), metadata=auth)
    assert len(launched.instance_ids) == 2
    assert (REGISTRY.get_sample_value("cloudimg_launches_total", {"outcome": "launched"}) or 0) - launched_before == 1

    finished = spans.get_finished_spans()
    [public] = [s for s in finished if s.kind is SpanKind.SERVER and s.name.endswith("InstanceService/RunInstances")]
    trace_id = public.context.trace_id
    in_trace = [s for s in finished if s.context.trace_id == trace_id]
    assert len(in_trace) == len(finished)  # nothing of this call started a trace of its own
    for name, service in INTERNAL.items():
        clients = [s for s in in_trace if s.kind is SpanKind.CLIENT and _service(s) == service]
        servers = [s for s in in_trace if s.kind is SpanKind.SERVER and _service(s) == service]
        assert clients, f"no {name} client spans in the launch's trace"
        assert servers, f"no {name} server spans in the launch's trace"
        # Each downstream server span is the child of a gateway client span, which is under the public call.
        client_ids = {c.context.span_id for c in clients}
        assert all(s.parent is not None and s.parent.span_id in client_ids for s in servers)
        assert all(c.parent is not None for c in clients)

    # The launch's settle job keeps the call's trace context, so that a run of it joins this trace.
    engine = create_engine(urls["gateway"])
    try:
        with engine.connect() as connection:
            payloads = [json.loads(row.payload) for row in connection.execute(select(JOBS.c.payload))]
    finally:
        engine.dispose()
    traceparents = [p["trace"]["traceparent"] for p in payloads if "trace" in p]
    assert traceparents
    assert all(tp.split("-")[1] == format(trace_id, "032x") for tp in traceparents)

    # Traced channels still hand a downstream's refusal on as it is, rich status and all.
    async with grpc.aio.insecure_channel(addrs["gateway"]) as channel:
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await pb_grpc.InstanceServiceStub(channel).RunInstances(pb.RunInstancesRequest(
                region="ap-guangzhou", image_id="img-zzzzzzzz", instance_type="S5.MEDIUM4", instance_count=1),
                metadata=auth)
    assert refused.value.code() == grpc.StatusCode.NOT_FOUND
    assert rich_status(refused.value)[1].reason


async def test_launches_are_counted_by_outcome_and_running_instances_counted_now_and_then(
        serve: ServerFactory, tmp_path: Path) -> None:
    urls = {name: f"sqlite:///{tmp_path}/{name}.db" for name in SERVICES}
    addrs, keys = await start_services(serve, urls)
    auth = (("authorization", f"Bearer {keys['alice']}"),)

    def launches(outcome: str) -> float:
        return REGISTRY.get_sample_value("cloudimg_launches_total", {"outcome": outcome}) or 0

    before = {outcome: launches(outcome) for outcome in ("launched", "refused", "dry_run")}
    async with grpc.aio.insecure_channel(addrs["gateway"]) as channel:
        stub = pb_grpc.InstanceServiceStub(channel)
        await stub.RunInstances(run_request(instance_count=3), metadata=auth)
        await stub.RunInstances(run_request(instance_count=3, dry_run=True), metadata=auth)
        with pytest.raises(grpc.aio.AioRpcError):
            await stub.RunInstances(run_request(instance_count=3, image_id="img-zzzzzzzz"), metadata=auth)
    assert {outcome: launches(outcome) - before[outcome] for outcome in before} == \
        {"launched": 1, "refused": 1, "dry_run": 1}

    db, new_uow = open_database(urls["gateway"])
    try:
        # Only the unit of work is read: the contexts are the unit tests' fakes.
        catalog, billing = FakeCatalog(), FakeBilling()
        deps = Dependencies(catalog, FakeSharing(), billing, ReferenceData(catalog, billing), new_uow)
        await background.measure_instances(deps)
    finally:
        db.dispose()
    assert REGISTRY.get_sample_value("cloudimg_instances_running") == 3
