"""Channels to downstream services: one long-lived channel each, created at start-up.

Every call carries the internal credential, the caller's account and the request id, and a
deadline: what is left of the inbound call's budget. Retries happen on UNAVAILABLE only, through
the gRPC service config. Failures come back as domain exceptions: a downstream's domain error
travels on as it is (RemoteError), a dependency that is down or too slow becomes UNAVAILABLE.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import grpc
from google.rpc import error_details_pb2, status_pb2

from chassis import context, errors
from chassis.logs import fields
from chassis.rpc import REQUEST_ID_KEY, STATUS_DETAILS_KEY

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
_DEPENDENCY_DOWN = {grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED}
# Leave the gateway a moment to answer its own caller after a downstream call runs out of time.
_DEADLINE_MARGIN_SECONDS = 0.05

Req = TypeVar("Req")
Resp = TypeVar("Resp")


class Downstream:
    """A downstream service: ``await catalog.call(catalog.stub.GetImage, request)``."""

    def __init__(self, name: str, addr: str, internal_token: str, stub_class: Callable[[grpc.aio.Channel], Any],
                 default_deadline_seconds: float = 10.0):
        self.name = name
        self.channel = grpc.aio.insecure_channel(addr, options=[
            ("grpc.service_config", _SERVICE_CONFIG),
            ("grpc.enable_retries", 1),
            ("grpc.keepalive_time_ms", 30_000),
        ])
        self.stub = stub_class(self.channel)
        self._token = internal_token
        self._default_deadline = default_deadline_seconds

    async def call(self, method: Callable[..., Awaitable[Resp]], request: Any) -> Resp:
        remaining = context.remaining_seconds()
        timeout = self._default_deadline if remaining is None else remaining - _DEADLINE_MARGIN_SECONDS
        if timeout <= 0:
            raise errors.Unavailable("DEADLINE_EXHAUSTED", "the call ran out of time before it could finish")
        found = context.current_caller.get()
        metadata = (
            (INTERNAL_TOKEN_KEY, self._token),
            (ACCOUNT_KEY, found.account_id if found else ""),
            (REQUEST_ID_KEY, context.request_id.get()),
        )
        try:
            return await method(request, timeout=timeout, metadata=metadata)
        except grpc.aio.AioRpcError as exc:
            raise self._translate(exc) from None

    def _translate(self, exc: grpc.aio.AioRpcError) -> errors.DomainError:
        code = exc.code()
        if code in _DEPENDENCY_DOWN:
            log.warning("dependency unavailable", extra=fields(service=self.name, code=code.name))
            return errors.Unavailable(
                "DEPENDENCY_UNAVAILABLE", f"the {self.name} service is unavailable; try again",
                metadata={"service": self.name},
            )
        if code in _PASSED_ON:
            raw = dict(exc.trailing_metadata() or ()).get(STATUS_DETAILS_KEY)
            if isinstance(raw, bytes):
                status = status_pb2.Status.FromString(raw)
                return errors.RemoteError(code.name, _reason_of(status), status.message, raw)
        log.error("dependency failed", extra=fields(service=self.name, code=code.name, details=exc.details()))
        return errors.DomainError("DEPENDENCY_FAILED", f"the {self.name} service failed")

    async def close(self) -> None:
        await self.channel.close()


def _reason_of(status: status_pb2.Status) -> str:
    for detail in status.details:
        if detail.Is(error_details_pb2.ErrorInfo.DESCRIPTOR):
            info = error_details_pb2.ErrorInfo()
            detail.Unpack(info)
            return info.reason
    return ""
