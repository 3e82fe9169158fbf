"""The server side of every call: authentication, request id, deadline, decoding, logs and rich errors.

One interceptor wraps every handler. It decodes requests itself, so that a body that is not the method's
message is MALFORMED_REQUEST (grpc would answer UNKNOWN with the parser's text), one over the size limit is
MESSAGE_TOO_LARGE, and a string with NUL or another control character is INVALID_CHARACTERS, on every method
of every service. Domain exceptions become a google.rpc.Status with exactly one ErrorInfo plus the matching
detail; anything unexpected becomes INTERNAL with a generic message (the traceback goes to the log, never to
the caller).
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import logging
import re
import time
import uuid
from collections.abc import AsyncIterable, AsyncIterator, Awaitable, Callable, Mapping
from typing import Any, cast

import grpc
from google.protobuf import any_pb2
from google.protobuf.descriptor import Descriptor, FieldDescriptor
from google.protobuf.message import DecodeError, Message
from google.rpc import code_pb2, error_details_pb2, status_pb2
from grpc_status import rpc_status

from chassis import context, errors, metrics
from chassis.logs import fields

log = logging.getLogger("chassis.rpc")

ERROR_DOMAIN = "cloudimg.dev"
REQUEST_ID_KEY = "x-request-id"
# Health and reflection answer anyone (probes, grpcurl); everything else needs a caller.
_OPEN_PREFIXES = ("/grpc.health.v1.", "/grpc.reflection.")
# The largest request body read. The server lets bodies up to a few times larger through its transport, so
# that those between get this rich error rather than grpc's own bare RESOURCE_EXHAUSTED.
MAX_MESSAGE_BYTES = 1 * 1024 * 1024

# Who is calling, from the call's metadata and its transport (a verified peer certificate), or a domain error.
Authenticate = Callable[[Mapping[str, str], grpc.aio.ServicerContext], context.Caller]


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
    elif isinstance(exc, (errors.NotFound, errors.PermissionDenied, errors.AlreadyExists)):
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


async def _abort(ctx: grpc.aio.ServicerContext, status: status_pb2.Status,
                 metadata: tuple[tuple[str, str], ...] = ()) -> None:
    """Ends the call with this rich status (grpcio-status packs it) and these trailers beside it."""
    packed = rpc_status.to_status(status)
    await ctx.abort(packed.code, packed.details, (*packed.trailing_metadata, *metadata))


def check_strings(message: Message) -> None:
    """Refuses NUL and other control characters in any string field of a message, however deep."""
    path = _control_character_path(message, "")
    if path is not None:
        raise errors.invalid_characters(path)


def _control_character_path(message: Message, prefix: str) -> str | None:
    """The path of the first string field holding a control character (``launch.image.image_id``,
    ``account_ids[2]``, ``labels["env"]``), or None. Only the fields set are visited."""
    search = errors.CONTROL_CHARACTERS.search
    for field, value in message.ListFields():
        path = prefix + field.name
        kind = _kind(field)
        if kind == _STRING:
            if search(value):
                return path
        elif kind == _STRINGS:
            for i, item in enumerate(value):
                if search(item):
                    return f"{path}[{i}]"
        elif kind == _MESSAGE:
            found = _control_character_path(value, path + ".")
            if found is not None:
                return found
        elif kind == _MESSAGES:
            for i, item in enumerate(value):
                found = _control_character_path(item, f"{path}[{i}].")
                if found is not None:
                    return found
        elif kind == _MAP:
            found = _map_path(cast(Descriptor, field.message_type), value, path)
            if found is not None:
                return found
    return None


def _map_path(entry: Descriptor, entries: Mapping[Any, Any], path: str) -> str | None:
    search = errors.CONTROL_CHARACTERS.search
    key_is_string = entry.fields_by_name["key"].type == FieldDescriptor.TYPE_STRING
    value_type = entry.fields_by_name["value"].type
    for key, value in entries.items():
        if key_is_string and search(key):
            return path  # the key itself is refused: it is not quoted back
        at = f'{path}["{errors.clipped(key)}"]' if key_is_string else f"{path}[{key}]"
        if value_type == FieldDescriptor.TYPE_STRING and search(value):
            return at
        if value_type == FieldDescriptor.TYPE_MESSAGE:
            found = _control_character_path(value, at + ".")
            if found is not None:
                return found
    return None


# What the walk does with a field, worked out once per field (descriptors live as long as the process): this
# halves the cost of the walk.
_STRING, _STRINGS, _MESSAGE, _MESSAGES, _MAP, _OTHER = range(6)
_kinds: dict[FieldDescriptor, int] = {}


def _kind(field: FieldDescriptor) -> int:
    kind = _kinds.get(field)
    if kind is None:
        if field.type == FieldDescriptor.TYPE_STRING:
            kind = _STRINGS if field.is_repeated else _STRING
        elif field.type == FieldDescriptor.TYPE_MESSAGE:
            if cast(Descriptor, field.message_type).GetOptions().map_entry:
                kind = _MAP
            else:
                kind = _MESSAGES if field.is_repeated else _MESSAGE
        else:
            kind = _OTHER
        _kinds[field] = kind
    return kind


Decode = Callable[[bytes], Any]


def _decoder(deserializer: Callable[[bytes], Any] | None) -> Decode:
    """Turns a request body into the method's message, or refuses it with a domain error."""

    def decode(body: bytes) -> Any:
        if len(body) > MAX_MESSAGE_BYTES:
            raise errors.ResourceExhausted(
                "MESSAGE_TOO_LARGE", f"the request is {len(body)} bytes; at most {MAX_MESSAGE_BYTES} are accepted",
                subject="request", metadata={"size_bytes": str(len(body)), "limit_bytes": str(MAX_MESSAGE_BYTES)},
            )
        if deserializer is None:
            return body
        try:
            request = deserializer(body)
        except DecodeError:
            raise errors.InvalidArgument(
                "MALFORMED_REQUEST", "the request body is not a valid message for this method",
                violations=[errors.FieldViolation("", "the request body could not be decoded")],
            ) from None
        if isinstance(request, Message):
            check_strings(request)
        return request

    return decode


async def _decoded(bodies: AsyncIterable[bytes], decode: Decode) -> AsyncIterator[Any]:
    async for body in bodies:
        yield decode(body)


async def _respond(responses: Any, ctx: grpc.aio.ServicerContext) -> None:
    """Sends a streaming handler's answers, whether it yields them or writes them itself."""
    if inspect.isasyncgen(responses):
        async for response in responses:
            await ctx.write(response)
    else:
        await responses


_REQUEST_ID = re.compile(r"[A-Za-z0-9._:-]{1,64}")


def _request_id(sent: str | None) -> str:
    """The caller's x-request-id when it is a plain token (letters, digits, ``._:-``, at most 64), else a new
    one: what goes to the logs and back to the caller is never a caller's arbitrary text."""
    return sent if sent is not None and _REQUEST_ID.fullmatch(sent) else uuid.uuid4().hex[:16]


_UNARY, _SERVER_STREAM, _CLIENT_STREAM, _BIDI_STREAM = "unary", "server_stream", "client_stream", "bidi_stream"
_RESOURCE_EXHAUSTED = code_pb2.RESOURCE_EXHAUSTED


def _aborted_code(ctx: grpc.aio.ServicerContext) -> str:
    """The code a handler aborted with itself (ours abort through ``_abort``, which knows it)."""
    code = ctx.code()
    if isinstance(code, grpc.StatusCode):
        name: str = code.name
        return name
    return code_pb2.Code.Name(code) if isinstance(code, int) and code in code_pb2.Code.values() else "UNKNOWN"


class ServiceInterceptor(grpc.aio.ServerInterceptor):  # type: ignore[misc]
    """Besides the guard, it measures each call (chassis.metrics) and logs it: one INFO access-log line per call
    (method, code, duration, account, peer; the request id is on every line), health checks and reflection at
    DEBUG only, so that probes do not fill the log."""

    def __init__(self, authenticate: Authenticate, default_deadline_seconds: float, access_log: bool = True):
        self._authenticate = authenticate
        self._default_deadline = default_deadline_seconds
        self._access_log = access_log
        self._unary = metrics.cached(metrics.server_method, _UNARY)
        self._server_stream = metrics.cached(metrics.server_method, _SERVER_STREAM)
        self._client_stream = metrics.cached(metrics.server_method, _CLIENT_STREAM)
        self._bidi_stream = metrics.cached(metrics.server_method, _BIDI_STREAM)

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler]],
        details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler:
        handler = await continuation(details)
        if handler is None:
            return handler
        method = details.method
        authenticate = None if method.startswith(_OPEN_PREFIXES) else self._authenticate
        # grpc gets no deserializer: the behaviour receives the raw bytes and decodes them under the guard.
        decode = _decoder(handler.request_deserializer)
        serialize = handler.response_serializer

        if handler.unary_unary is not None:
            unary_unary = handler.unary_unary
            measured = self._unary(method)

            async def one_to_one(body: bytes, ctx: grpc.aio.ServicerContext) -> Any:
                async with self._guarded(method, measured, authenticate, ctx):
                    return await unary_unary(decode(body), ctx)

            return grpc.unary_unary_rpc_method_handler(one_to_one, response_serializer=serialize)
        if handler.unary_stream is not None:
            unary_stream = handler.unary_stream
            measured = self._server_stream(method)

            async def one_to_many(body: bytes, ctx: grpc.aio.ServicerContext) -> None:
                async with self._guarded(method, measured, authenticate, ctx):
                    await _respond(unary_stream(decode(body), ctx), ctx)

            return grpc.unary_stream_rpc_method_handler(one_to_many, response_serializer=serialize)
        if handler.stream_unary is not None:
            stream_unary = handler.stream_unary
            measured = self._client_stream(method)

            async def many_to_one(bodies: AsyncIterable[bytes], ctx: grpc.aio.ServicerContext) -> Any:
                async with self._guarded(method, measured, authenticate, ctx):
                    return await stream_unary(_decoded(bodies, decode), ctx)

            return grpc.stream_unary_rpc_method_handler(many_to_one, response_serializer=serialize)
        stream_stream = handler.stream_stream
        measured = self._bidi_stream(method)

        async def many_to_many(bodies: AsyncIterable[bytes], ctx: grpc.aio.ServicerContext) -> None:
            async with self._guarded(method, measured, authenticate, ctx):
                await _respond(stream_stream(_decoded(bodies, decode), ctx), ctx)

        return grpc.stream_stream_rpc_method_handler(many_to_many, response_serializer=serialize)

    @contextlib.asynccontextmanager
    async def _guarded(self, method: str, measured: metrics.ServerMethodMetrics, authenticate: Authenticate | None,
                       ctx: grpc.aio.ServicerContext) -> AsyncIterator[None]:
        """What every call runs under: request id, deadline, the caller (unless the method is open to anyone),
        and the mapping of whatever it raises, decoding included, to a rich status; then its metrics and its
        access-log line."""
        started = time.monotonic()
        in_flight = measured.in_flight
        in_flight.inc()
        metadata = {key: value for key, value in ctx.invocation_metadata() or () if isinstance(value, str)}
        request_id = _request_id(metadata.get(REQUEST_ID_KEY))
        context.request_id.set(request_id)
        # The caller gets the id back, on success and error alike, in the trailers: something to quote to an
        # operator, who finds the call's log lines by it. (Not in initial metadata: sent early, it would commit
        # the call, and a client could no longer retry an UNAVAILABLE answer transparently.)
        echo = ((REQUEST_ID_KEY, request_id),)
        remaining = ctx.time_remaining()
        context.deadline.set(started + (remaining if remaining is not None else self._default_deadline))
        outcome = "OK"
        try:
            if authenticate is not None:
                context.current_caller.set(authenticate(metadata, ctx))
            yield
            ctx.set_trailing_metadata(echo)
        except grpc.aio.AbortError:
            outcome = _aborted_code(ctx)
            raise
        except asyncio.CancelledError:  # the caller left, or its deadline passed
            outcome = "CANCELLED"
            raise
        except errors.DomainError as exc:
            status = status_of(exc)
            outcome = code_pb2.Code.Name(status.code)
            if status.code == _RESOURCE_EXHAUSTED:
                metrics.QUOTA_REFUSALS.labels(measured.service, exc.reason).inc()
            if status is _INTERNAL:
                log.error("failure", extra=fields(method=method, reason=exc.reason, error=exc.message))
            await _abort(ctx, status, echo)
        except Exception:
            outcome = "INTERNAL"
            log.exception("unhandled error", extra=fields(method=method))
            await _abort(ctx, _INTERNAL, echo)
        finally:
            elapsed = time.monotonic() - started
            in_flight.dec()
            measured.seconds.observe(elapsed)
            measured.handled(outcome).inc()
            level = logging.DEBUG if authenticate is None or not self._access_log else logging.INFO
            if log.isEnabledFor(level):
                caller = context.current_caller.get()
                log.log(level, "rpc", extra=fields(
                    method=method, code=outcome, ms=round(elapsed * 1000, 2), request_id=request_id,
                    account=caller.account_id if caller is not None else "", peer=ctx.peer()))
