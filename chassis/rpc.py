"""The server side of every call: authentication, request id, deadline, logs and rich errors.

One interceptor wraps each unary handler. Domain exceptions become a google.rpc.Status with exactly
one ErrorInfo plus the matching detail; anything unexpected becomes INTERNAL with a generic message
(the traceback goes to the log, never to the caller).
"""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

import grpc
from google.protobuf import any_pb2
from google.rpc import code_pb2, error_details_pb2, status_pb2

from chassis import context, errors
from chassis.logs import fields

log = logging.getLogger("chassis.rpc")

ERROR_DOMAIN = "cloudimg.dev"
REQUEST_ID_KEY = "x-request-id"
STATUS_DETAILS_KEY = "grpc-status-details-bin"
# Health and reflection answer anyone (probes, grpcurl); everything else needs a caller.
_OPEN_PREFIXES = ("/grpc.health.v1.", "/grpc.reflection.")

Authenticate = Callable[[Mapping[str, str]], context.Caller]


def _pack(message: Any) -> any_pb2.Any:
    packed = any_pb2.Any()
    packed.Pack(message)
    return packed


def status_of(exc: errors.DomainError) -> status_pb2.Status:
    """The google.rpc.Status for a domain exception: one ErrorInfo plus the matching detail."""
    if isinstance(exc, errors.RemoteError):
        return status_pb2.Status.FromString(exc.status)
    if exc.code == "INTERNAL":
        return _INTERNAL
    info = error_details_pb2.ErrorInfo(reason=exc.reason, domain=ERROR_DOMAIN, metadata=exc.metadata)
    details = [_pack(info)]
    if isinstance(exc, errors.InvalidArgument):
        details.append(_pack(error_details_pb2.BadRequest(field_violations=[
            error_details_pb2.BadRequest.FieldViolation(field=v.field, description=v.description)
            for v in exc.violations
        ])))
    elif isinstance(exc, (errors.NotFound, errors.PermissionDenied)):
        details.append(_pack(error_details_pb2.ResourceInfo(
            resource_type=exc.resource_type, resource_name=exc.resource_name, description=exc.message
        )))
    elif isinstance(exc, errors.FailedPrecondition):
        details.append(_pack(error_details_pb2.PreconditionFailure(violations=[
            error_details_pb2.PreconditionFailure.Violation(type=v.type, subject=v.subject, description=v.description)
            for v in exc.violations
        ])))
    elif isinstance(exc, errors.ResourceExhausted):
        details.append(_pack(error_details_pb2.QuotaFailure(violations=[
            error_details_pb2.QuotaFailure.Violation(subject=v.subject, description=v.description)
            for v in exc.violations
        ])))
    return status_pb2.Status(code=code_pb2.Code.Value(exc.code), message=exc.message, details=details)


_INTERNAL = status_pb2.Status(
    code=code_pb2.INTERNAL,
    message="internal error",
    details=[_pack(error_details_pb2.ErrorInfo(reason="INTERNAL", domain=ERROR_DOMAIN))],
)


async def _abort(ctx: grpc.aio.ServicerContext, status: status_pb2.Status) -> None:
    await ctx.abort(
        grpc.StatusCode[code_pb2.Code.Name(status.code)],
        status.message,
        trailing_metadata=((STATUS_DETAILS_KEY, status.SerializeToString()),),
    )


class ServiceInterceptor(grpc.aio.ServerInterceptor):
    def __init__(self, authenticate: Authenticate, default_deadline_seconds: float):
        self._authenticate = authenticate
        self._default_deadline = default_deadline_seconds

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler]],
        details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler:
        handler = await continuation(details)
        method = details.method
        if handler is None or handler.unary_unary is None or method.startswith(_OPEN_PREFIXES):
            return handler
        return grpc.unary_unary_rpc_method_handler(
            self._wrap(method, handler.unary_unary),
            request_deserializer=handler.request_deserializer,
            response_serializer=handler.response_serializer,
        )

    def _wrap(self, method: str, behaviour: Callable[[Any, grpc.aio.ServicerContext], Awaitable[Any]]
              ) -> Callable[[Any, grpc.aio.ServicerContext], Awaitable[Any]]:
        authenticate = self._authenticate
        default_deadline = self._default_deadline

        async def handle(request: Any, ctx: grpc.aio.ServicerContext) -> Any:
            started = time.monotonic()
            metadata = {key: value for key, value in ctx.invocation_metadata() or () if isinstance(value, str)}
            context.request_id.set(metadata.get(REQUEST_ID_KEY) or uuid.uuid4().hex[:16])
            remaining = ctx.time_remaining()
            context.deadline.set(started + (remaining if remaining is not None else default_deadline))
            outcome = "OK"
            try:
                context.current_caller.set(authenticate(metadata))
                return await behaviour(request, ctx)
            except grpc.aio.AbortError:
                raise
            except errors.DomainError as exc:
                status = status_of(exc)
                outcome = code_pb2.Code.Name(status.code)
                if status is _INTERNAL:
                    log.error("failure", extra=fields(method=method, reason=exc.reason, error=exc.message))
                await _abort(ctx, status)
            except Exception:
                outcome = "INTERNAL"
                log.exception("unhandled error", extra=fields(method=method))
                await _abort(ctx, _INTERNAL)
            finally:
                if log.isEnabledFor(logging.DEBUG):
                    elapsed_ms = round((time.monotonic() - started) * 1000, 2)
                    log.debug("rpc", extra=fields(method=method, code=outcome, ms=elapsed_ms))

        return handle
