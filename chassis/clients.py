"""Channels to downstream services: one long-lived channel each, created at start-up.

Every call carries the caller's account and the request id, and a deadline: what is left of the
inbound call's budget. Retries happen on UNAVAILABLE only, through the gRPC service config. Failures
come back as domain exceptions: a downstream's domain error travels on as it is (RemoteError, its
rich status read with grpcio-status), a dependency that is down or too slow becomes UNAVAILABLE.

A dependency that is down is retried for a connection every 100-500 ms; a call that finds its
channel not connected waits up to a second for it (within its deadline), so a dependency that comes
back is served at once, and one that stays down answers UNAVAILABLE after that second.

The channel is mutual TLS when credentials are given (the gateway's client certificate is its
credential); on plaintext, loopback only, every call carries the internal token instead.

Every call is counted by method and code and timed (``grpc_client_handled_total``,
``grpc_client_handling_seconds``); with tracing on, the channel's interceptors make a client span per call and
send its ``traceparent``.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import grpc
from google.rpc import error_details_pb2, status_pb2
from grpc_status import rpc_status

from chassis import context, errors, metrics, tracing
from chassis.logs import fields
from chassis.rpc import REQUEST_ID_KEY

log = logging.getLogger("chassis.clients")

INTERNAL_TOKEN_KEY = "x-cloudimg-internal-token"
ACCOUNT_KEY = "x-cloudimg-account-id"

# Spread calls over every address a name resolves to (the replicas behind a headless Kubernetes service).
_SERVICE_CONFIG = json.dumps({
    "loadBalancingConfig": [{"round_robin": {}}],
    "methodConfig": [{
        "name": [{}],
        "retryPolicy": {
            "maxAttempts": 3,
            "initialBackoff": "0.05s",
            "maxBackoff": "0.5s",
            "backoffMultiplier": 2,
            "retryableStatusCodes": ["UNAVAILABLE"],
        },
    }]
})

_CHANNEL_OPTIONS = [
    ("grpc.service_config", _SERVICE_CONFIG),
    ("grpc.enable_retries", 1),
    ("grpc.keepalive_time_ms", 30_000),
    # gRPC's default reconnect backoff (1 s, x1.6, up to 120 s) leaves a dependency that is back
    # unused for seconds; retry every 100 ms growing to 500 ms instead (a refused connect costs little).
    ("grpc.initial_reconnect_backoff_ms", 100),
    ("grpc.max_reconnect_backoff_ms", 500),
    # The connect timeout (default 20 s): give up an attempt that hangs (a dropped SYN) after 1 s.
    ("grpc.min_reconnect_backoff_ms", 1_000),
    # A replica that comes back under a new address (a Kubernetes pod) is found by asking DNS again,
    # which gRPC does on a failed connection but at most every 30 s by default.
    ("grpc.dns_min_time_between_resolutions_ms", 1_000),
]
# How long a call waits for a channel that is not connected (reconnecting after a failure, or a
# first connection under way): longer than one reconnect backoff step, so a dependency that is
# SERVING again is never refused; short enough that one that stays down answers promptly.
_READY_WAIT_SECONDS = 1.0
_WAIT_FOR_READY = {grpc.ChannelConnectivity.CONNECTING, grpc.ChannelConnectivity.TRANSIENT_FAILURE}

# Codes that carry a domain verdict the caller should see as it is.
_PASSED_ON = {
    grpc.StatusCode.INVALID_ARGUMENT,
    grpc.StatusCode.NOT_FOUND,
    grpc.StatusCode.FAILED_PRECONDITION,
    grpc.StatusCode.RESOURCE_EXHAUSTED,
    grpc.StatusCode.PERMISSION_DENIED,
    grpc.StatusCode.ALREADY_EXISTS,
    grpc.StatusCode.ABORTED,
}
# CANCELLED: the dependency stopped (or was stopped) with our call in it; the caller did not leave,
# or this gateway call would have been cancelled itself.
_DEPENDENCY_DOWN = {grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED, grpc.StatusCode.CANCELLED}
# Leave the gateway a moment to answer its own caller after a downstream call runs out of time.
_DEADLINE_MARGIN_SECONDS = 0.05

Req = TypeVar("Req")
Resp = TypeVar("Resp")


class Downstream:
    """A downstream service: ``await catalog.call(catalog.stub.GetImage, request)``."""

    def __init__(self, name: str, addr: str, internal_token: str | None, stub_class: Callable[[grpc.aio.Channel], Any],
                 default_deadline_seconds: float = 10.0, credentials: grpc.ChannelCredentials | None = None):
        self.name = name
        interceptors = tracing.client_interceptors() or None
        if credentials is None:
            self.channel = grpc.aio.insecure_channel(addr, options=_CHANNEL_OPTIONS, interceptors=interceptors)
        else:
            self.channel = grpc.aio.secure_channel(addr, credentials, options=_CHANNEL_OPTIONS,
                                                   interceptors=interceptors)
        self.stub = stub_class(self.channel)
        self._token = ((INTERNAL_TOKEN_KEY, internal_token),) if internal_token and credentials is None else ()
        self._default_deadline = default_deadline_seconds
        self._connected: asyncio.Future[None] | None = None
        self._measured: dict[object, metrics.MethodMetrics] = {}

    def _metrics_of(self, method: object) -> metrics.MethodMetrics:
        """The metrics of a stub's method, by its path (grpc.aio keeps it on the multicallable, and nowhere
        public), made on its first call."""
        path = getattr(method, "_method", b"/unknown/unknown")
        found = self._measured.get(path)
        if found is None:
            found = self._measured[path] = metrics.client_method(
                "unary", path.decode() if isinstance(path, bytes) else str(path))
        return found

    async def call(self, method: Callable[..., Awaitable[Resp]], request: Any) -> Resp:
        remaining = context.remaining_seconds()
        timeout = self._default_deadline if remaining is None else remaining - _DEADLINE_MARGIN_SECONDS
        if timeout <= 0:
            raise errors.Unavailable("DEADLINE_EXHAUSTED", "the call ran out of time before it could finish")
        measured = self._metrics_of(method)
        started = time.monotonic()
        if self.channel.get_state() in _WAIT_FOR_READY:
            # A call made now would fail at once (gRPC fails calls fast while it waits to reconnect).
            if not await self._until_connected(min(_READY_WAIT_SECONDS, timeout)):
                self._measure(measured, started, "UNAVAILABLE")
                raise self._unavailable("NOT_CONNECTED", errors.Unreached)  # never sent: it did nothing
            timeout -= time.monotonic() - started
        found = context.current_caller.get()
        metadata = (
            *self._token,
            (ACCOUNT_KEY, found.account_id if found else ""),
            (REQUEST_ID_KEY, context.request_id.get()),
        )
        outcome = "OK"
        try:
            # Not wait_for_ready: a dependency that dies under this call answers UNAVAILABLE now,
            # instead of holding the caller for its whole deadline.
            return await method(request, timeout=timeout, metadata=metadata)
        except grpc.aio.AioRpcError as exc:
            outcome = exc.code().name
            raise self._translate(exc) from None
        except asyncio.CancelledError:
            outcome = "CANCELLED"
            raise
        except Exception:
            outcome = "UNKNOWN"
            raise
        finally:
            self._measure(measured, started, outcome)

    @staticmethod
    def _measure(measured: metrics.MethodMetrics, started: float, outcome: str) -> None:
        measured.seconds.observe(time.monotonic() - started)
        measured.handled(outcome).inc()

    async def _until_connected(self, timeout: float) -> bool:
        """Whether the channel is READY within timeout. One watch per channel, however many calls wait."""
        if self._connected is None or self._connected.done():
            self._connected = asyncio.ensure_future(self.channel.channel_ready())
        try:
            await asyncio.wait_for(asyncio.shield(self._connected), timeout)
        except TimeoutError:
            return False
        return True

    def _unavailable(self, code: str, kind: type[errors.Unavailable] = errors.Unavailable) -> errors.Unavailable:
        log.warning("dependency unavailable", extra=fields(service=self.name, code=code))
        return kind(
            "DEPENDENCY_UNAVAILABLE", f"the {self.name} service is unavailable; try again",
            metadata={"service": self.name},
        )

    def _translate(self, exc: grpc.aio.AioRpcError) -> errors.DomainError:
        code = exc.code()
        if code in _DEPENDENCY_DOWN:
            return self._unavailable(code.name)
        if code in _PASSED_ON:
            try:
                status = rpc_status.from_call(exc)
            except ValueError:  # a rich status that contradicts the call's code or message: not passed on
                status = None
            if status is not None:
                return errors.RemoteError(code.name, _reason_of(status), status.message, status.SerializeToString())
        log.error("dependency failed", extra=fields(service=self.name, code=code.name, details=exc.details()))
        return errors.DomainError("DEPENDENCY_FAILED", f"the {self.name} service failed")

    async def close(self) -> None:
        if self._connected is not None:
            self._connected.cancel()
        await self.channel.close()


def _reason_of(status: status_pb2.Status) -> str:
    info = error_details_pb2.ErrorInfo()
    for detail in status.details:
        if detail.Unpack(info):  # False for a detail of another type
            return info.reason
    return ""
