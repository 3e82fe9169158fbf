"""Prometheus metrics of a service's process, served over HTTP on ``{PREFIX}METRICS_ADDR`` (off by default).

The gRPC metrics carry go-grpc-prometheus's names and labels (``grpc_server_handled_total{grpc_type,
grpc_service,grpc_method,grpc_code}``, ``grpc_server_handling_seconds``, and the ``grpc_client_*`` twins for
the gateway's downstream calls), so existing dashboards and alerts work unchanged; ``grpc_service`` is the
full service name, which tells the four services apart. The domain's own metrics start with ``cloudimg_``: those
of every context here (jobs, quota refusals), a context's own in its service layer (the gateway's launches and
running instances).

The hot path never resolves labels: the interceptor and the downstream clients keep one ``MethodMetrics``
per method, whose children (and one counter child per code, made on first use) are looked up once.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import TypeVar
from wsgiref.simple_server import WSGIServer

from prometheus_client import (
    REGISTRY,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    disable_created_metrics,
    start_http_server,
)

from chassis.logs import fields

log = logging.getLogger("chassis.metrics")

# No ``*_created`` series beside each counter and histogram: they double what is scraped and nothing reads them.
disable_created_metrics()  # type: ignore[no-untyped-call]

_GRPC_LABELS = ("grpc_type", "grpc_service", "grpc_method")

SERVER_HANDLED = Counter("grpc_server_handled_total", "RPCs completed on the server, by gRPC code.",
                         (*_GRPC_LABELS, "grpc_code"))
SERVER_SECONDS = Histogram("grpc_server_handling_seconds", "Time the server took to answer an RPC.", _GRPC_LABELS)
SERVER_IN_FLIGHT = Gauge("grpc_server_in_flight", "RPCs the server is answering now.", _GRPC_LABELS)
CLIENT_HANDLED = Counter("grpc_client_handled_total", "RPCs a client completed, by gRPC code.",
                         (*_GRPC_LABELS, "grpc_code"))
CLIENT_SECONDS = Histogram("grpc_client_handling_seconds", "Time from a client's call to its answer.", _GRPC_LABELS)

QUOTA_REFUSALS = Counter("cloudimg_quota_refusals_total", "Calls refused with RESOURCE_EXHAUSTED, by reason.",
                         ("grpc_service", "reason"))
JOBS_PENDING = Gauge("cloudimg_jobs_pending", "Jobs PENDING in a context's job table (counted every few seconds).",
                     ("context", "kind"))
JOB_SECONDS = Histogram("cloudimg_job_duration_seconds", "How long one attempt of a job ran, by outcome.",
                        ("context", "kind", "outcome"), buckets=(0.01, 0.05, 0.1, 0.5, 1, 5, 10, 30, 60, 300, 1800))


class MethodMetrics:
    """One method's children: handled (by code, each made on first use) and seconds."""

    __slots__ = ("_family", "_handled", "_labels", "seconds")

    def __init__(self, handled: Counter, seconds: Histogram, grpc_type: str, full_method: str):
        service, _, method = full_method.lstrip("/").rpartition("/")
        self._labels = (grpc_type, service, method)
        self._handled: dict[str, Counter] = {}
        self._family = handled
        self.seconds = seconds.labels(*self._labels)

    @property
    def service(self) -> str:
        return self._labels[1]

    def handled(self, code: str) -> Counter:
        child = self._handled.get(code)
        if child is None:
            child = self._handled[code] = self._family.labels(*self._labels, code)
        return child


class ServerMethodMetrics(MethodMetrics):
    """A served method's: also the calls in flight."""

    __slots__ = ("in_flight",)

    def __init__(self, grpc_type: str, full_method: str):
        super().__init__(SERVER_HANDLED, SERVER_SECONDS, grpc_type, full_method)
        self.in_flight = SERVER_IN_FLIGHT.labels(*self._labels)


def server_method(grpc_type: str, full_method: str) -> ServerMethodMetrics:
    return ServerMethodMetrics(grpc_type, full_method)


def client_method(grpc_type: str, full_method: str) -> MethodMetrics:
    return MethodMetrics(CLIENT_HANDLED, CLIENT_SECONDS, grpc_type, full_method)


M = TypeVar("M", bound=MethodMetrics)


def cached(make: Callable[[str, str], M], grpc_type: str) -> Callable[[str], M]:
    """``metrics_of(full_method)``: each method's metrics, made once."""
    made: dict[str, M] = {}

    def of(full_method: str) -> M:
        found = made.get(full_method)
        if found is None:
            found = made[full_method] = make(grpc_type, full_method)
        return found

    return of


def serve_metrics(addr: str, registry: CollectorRegistry = REGISTRY) -> WSGIServer:
    """Serves the registry in Prometheus's text format on http://addr/metrics from a daemon thread of this
    process (addr may name port 0: ``server_address`` has the port). Raises OSError when it cannot listen."""
    host, _, port = addr.rpartition(":")
    server, _ = start_http_server(int(port), host.strip("[]"), registry=registry)
    log.info("metrics", extra=fields(addr=f"{host}:{server.server_address[1]}", path="/metrics"))
    return server
