"""OpenTelemetry traces: off unless an OTLP endpoint is configured, and then one trace per public call.

``CLOUDIMG_OTLP_ENDPOINT`` (or OpenTelemetry's own ``OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`` /
``OTEL_EXPORTER_OTLP_ENDPOINT``) turns it on: spans go to that OTLP/gRPC collector in batches, named by the
service (``service.name``). Off, nothing is installed: no interceptor on the server or the gateway's channels,
no span anywhere, so the hot path pays nothing.

On, opentelemetry-instrumentation-grpc's aio interceptors make a server span per call (health and reflection
excepted) and a client span per downstream call, carrying W3C ``traceparent`` in the call's metadata; a job
enqueued during a call keeps the call's ``traceparent`` in its payload envelope, and its runs are spans of that
trace (chassis.jobs).
"""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Iterator, Mapping
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from opentelemetry.sdk.trace import TracerProvider

log = logging.getLogger("chassis.tracing")

_ENDPOINT_VARIABLES = ("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "OTEL_EXPORTER_OTLP_ENDPOINT")
_provider: TracerProvider | None = None


def enabled() -> bool:
    return _provider is not None


def endpoint(configured: str | None) -> str | None:
    """Where spans go: the setting, else OpenTelemetry's standard variables, else nowhere (off)."""
    return configured or next((os.environ[v] for v in _ENDPOINT_VARIABLES if os.environ.get(v)), None)


def configure(service: str, configured_endpoint: str | None) -> bool:
    """At start-up: exports this process's spans to the OTLP endpoint, if one is configured."""
    target = endpoint(configured_endpoint)
    if target is None:
        return False
    from opentelemetry import trace
    from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor

    provider = TracerProvider(resource=Resource.create({"service.name": service}))
    provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter(endpoint=target)))
    trace.set_tracer_provider(provider)
    enable(provider)
    log.info("tracing", extra={"fields": {"otlp_endpoint": target}})  # not logs.fields: logs imports this module
    return True


def enable(provider: TracerProvider) -> None:
    """Traces calls and jobs with this provider from now on (servers and channels made later); tests give
    one with an in-memory exporter."""
    global _provider
    _provider = provider


def disable() -> None:
    global _provider
    _provider = None


def shutdown() -> None:
    """Flushes the spans not yet exported (at exit)."""
    if _provider is not None:
        _provider.shutdown()


def server_interceptors() -> list[Any]:
    """The server span of each call but health checks and reflection (none when tracing is off)."""
    if _provider is None:
        return []
    from opentelemetry.instrumentation.grpc import aio_server_interceptor, filters

    quiet = filters.any_of(filters.health_check(), filters.service_prefix("grpc.reflection."))
    return [aio_server_interceptor(tracer_provider=_provider, filter_=filters.negate(quiet))]  # type: ignore[no-untyped-call]


def client_interceptors() -> list[Any]:
    """A client span per downstream call, its traceparent in the call's metadata (none when off)."""
    if _provider is None:
        return []
    from opentelemetry.instrumentation.grpc import aio_client_interceptors

    return list(aio_client_interceptors(tracer_provider=_provider))  # type: ignore[no-untyped-call]


def current_carrier() -> dict[str, str] | None:
    """The current span's W3C trace context (``{"traceparent": ...}``), to be stored with work done later;
    None when tracing is off or no span is current."""
    if _provider is None:
        return None
    from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

    carrier: dict[str, str] = {}
    TraceContextTextMapPropagator().inject(carrier)
    return carrier or None


def current_trace_id() -> str | None:
    """The current trace's id (32 hex digits), for log lines; None when off or outside a span."""
    if _provider is None:
        return None
    from opentelemetry import trace

    span_context = trace.get_current_span().get_span_context()
    return format(span_context.trace_id, "032x") if span_context.is_valid else None


@contextlib.contextmanager
def span(name: str, carrier: Mapping[str, str] | None, attributes: Mapping[str, str]) -> Iterator[None]:
    """A span for work done apart from a call (a job's run), the child of the call that left ``carrier``
    (a new trace without one); nothing when tracing is off."""
    if _provider is None:
        yield
        return
    from opentelemetry.trace import SpanKind
    from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

    parent = TraceContextTextMapPropagator().extract(dict(carrier)) if carrier else None
    tracer = _provider.get_tracer("chassis.jobs")
    with tracer.start_as_current_span(name, context=parent, kind=SpanKind.CONSUMER, attributes=dict(attributes)):
        yield
