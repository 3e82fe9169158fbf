"""A small typed client of cloudimg's public API: one channel (TLS when a CA is given or asked for), the four
services' generated stubs, the API key and an ``x-request-id`` on every call, a deadline, and retries that
are safe because every change carries an idempotency token (a launch's ``client_token``, every other
change's ``request_id``), filled in when the caller left it empty.

    from cloudimg.gateway.v1 import image_service_pb2 as image_pb
    from cloudimg_client import Client

    with Client("gateway.example.com:443", api_key, ca_cert="ca.pem") as cloud:
        for image in cloud.pages(cloud.images.ListImages, image_pb.ListImagesRequest(region="ap-guangzhou"),
                                 "images"):
            print(image.image_id)
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any, TypeVar, cast

import grpc
from cloudimg.gateway.v1 import account_service_pb2 as account_pb
from cloudimg.gateway.v1 import account_service_pb2_grpc as account_grpc
from cloudimg.gateway.v1 import image_service_pb2 as image_pb
from cloudimg.gateway.v1 import image_service_pb2_grpc as image_grpc
from cloudimg.gateway.v1 import image_share_service_pb2 as share_pb
from cloudimg.gateway.v1 import image_share_service_pb2_grpc as share_grpc
from cloudimg.gateway.v1 import instance_service_pb2 as instance_pb
from cloudimg.gateway.v1 import instance_service_pb2_grpc as instance_grpc
from google.protobuf.message import Message

from cloudimg_client.errors import REQUEST_ID_KEY, OutcomeUnknown, error_reason

ResponseT = TypeVar("ResponseT")
# The fields that make a change idempotent: sent again with the same value, it happens at most once.
IDEMPOTENCY_FIELDS = ("client_token", "request_id")
# A launch whose answer was lost (the gateway could not learn billing's verdict): the same token settles it.
OUTCOME_UNKNOWN_REASON = "LAUNCH_OUTCOME_UNKNOWN"


@dataclass(frozen=True)
class Retry:
    """How a call is sent again: on ``codes`` (and a launch whose outcome is unknown), up to ``attempts`` in all,
    waiting ``backoff_s`` before the second and twice as long before each next one, never past ``within_s``
    (or the call's timeout when it is longer) since the first."""

    attempts: int = 3
    backoff_s: float = 0.5
    within_s: float = 30.0
    codes: tuple[grpc.StatusCode, ...] = (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.ABORTED)


@dataclass(frozen=True)
class CallRecord:
    """One attempt of a call, as ``on_call`` sees it."""

    method: str  # "/cloudimg.gateway.v1.ImageService/GetImage"
    request_id: str
    code: str  # "OK" or the gRPC status code's name
    milliseconds: float


def channel_credentials(ca_cert: str | Path | bytes | None) -> grpc.ChannelCredentials:
    """TLS trusting ca_cert (a PEM file or its bytes), or the system's roots when None."""
    roots = ca_cert if isinstance(ca_cert, bytes) or ca_cert is None else Path(ca_cert).expanduser().read_bytes()
    return grpc.ssl_channel_credentials(roots)


def open_channel(endpoint: str, *, ca_cert: str | Path | bytes | None = None, tls: bool = False) -> grpc.Channel:
    """TLS when a CA is given or tls asks for it (system roots); plaintext otherwise (a gateway on loopback)."""
    if ca_cert is None and not tls:
        return grpc.insecure_channel(endpoint)
    return grpc.secure_channel(endpoint, channel_credentials(ca_cert))


def idempotency_field(request: Message) -> str | None:
    """The request's idempotency token field, or None for a read."""
    fields = request.DESCRIPTOR.fields_by_name
    return next((name for name in IDEMPOTENCY_FIELDS if name in fields), None)


# Each public request type's full name -> its method's path, for on_call.
METHODS = {method.input_type.full_name: f"/{service.full_name}/{method.name}"
           for module in (image_pb, share_pb, instance_pb, account_pb)
           for service in module.DESCRIPTOR.services_by_name.values() for method in service.methods}


class Client:
    """cloudimg's public API on one channel. ``call`` sends a request with the key, a fresh x-request-id, the
    deadline and the retries; the stubs (``images``, ``shares``, ``instances``, ``accounts``) name the methods.

    A change sent without its idempotency token gets a new one before its first attempt (read it back from the
    request); when it fails in a way that leaves its outcome unknown, ``OutcomeUnknown`` names the token to send
    it again with. Any other failure is the ``grpc.RpcError`` itself (see ``cloudimg_client.error_reason``)."""

    def __init__(self, endpoint: str, api_key: str, *, ca_cert: str | Path | bytes | None = None, tls: bool = False,
                 timeout: float = 10.0, retry: Retry | None = None,
                 on_call: Callable[[CallRecord], None] | None = None, channel: grpc.Channel | None = None):
        if not api_key:
            raise ValueError("an API key is needed")
        self.channel = channel if channel is not None else open_channel(endpoint, ca_cert=ca_cert, tls=tls)
        self.images = image_grpc.ImageServiceStub(self.channel)
        self.shares = share_grpc.ImageShareServiceStub(self.channel)
        self.instances = instance_grpc.InstanceServiceStub(self.channel)
        self.accounts = account_grpc.AccountServiceStub(self.channel)
        self.timeout = timeout
        self.retry = retry or Retry()
        self.last_request_id = ""  # the x-request-id of the last attempt sent, to quote to an operator
        self._metadata = (("authorization", f"Bearer {api_key}"),)
        self._on_call = on_call

    def __enter__(self) -> Client:
        return self

    def __exit__(self, kind: type[BaseException] | None, error: BaseException | None,
                 traceback: TracebackType | None) -> None:
        self.close()

    def close(self) -> None:
        self.channel.close()

    def call(self, method: Callable[..., ResponseT], request: Message, *, timeout: float | None = None) -> ResponseT:
        """The method's response to the request, retried as ``retry`` says (see the class)."""
        timeout = self.timeout if timeout is None else timeout
        field = idempotency_field(request)
        if field is not None and not getattr(request, field):
            setattr(request, field, uuid.uuid4().hex)
        give_up = time.monotonic() + max(self.retry.within_s, timeout)
        attempts, delay = 1, self.retry.backoff_s
        while True:
            try:
                return self._once(method, request, min(timeout, max(give_up - time.monotonic(), 0.001)))
            except grpc.RpcError as error:
                again = error.code() in self.retry.codes or error_reason(error) == OUTCOME_UNKNOWN_REASON
                if again and attempts < self.retry.attempts and time.monotonic() + delay < give_up:
                    time.sleep(delay)
                    attempts, delay = attempts + 1, delay * 2
                    continue
                if field is not None and (again or error.code() is grpc.StatusCode.DEADLINE_EXCEEDED):
                    raise OutcomeUnknown(error, field, getattr(request, field)) from error
                raise

    def pages(self, method: Callable[..., Any], request: Any, items: str) -> Iterator[Any]:
        """Every item of a paginated listing (the repeated field ``items`` of each page), page after page."""
        while True:
            page = self.call(method, request)
            yield from getattr(page, items)
            if not page.next_page_token:
                return
            request.page_token = page.next_page_token

    def all_pages(self, method: Callable[..., ResponseT], request: Any, items: str) -> ResponseT:
        """The first page's response holding every page's items, with no next_page_token."""
        result: Any = self.call(method, request)
        page = result
        while page.next_page_token:
            request.page_token = page.next_page_token
            page = self.call(method, request)
            getattr(result, items).extend(getattr(page, items))
        result.next_page_token = ""
        return cast(ResponseT, result)

    def _once(self, method: Callable[..., ResponseT], request: Message, timeout: float) -> ResponseT:
        self.last_request_id = request_id = uuid.uuid4().hex
        started, code = time.monotonic(), "OK"
        try:
            return method(request, metadata=(*self._metadata, (REQUEST_ID_KEY, request_id)), timeout=timeout)
        except grpc.RpcError as error:
            code = error.code().name
            raise
        finally:
            if self._on_call is not None:
                name = request.DESCRIPTOR.full_name
                self._on_call(CallRecord(METHODS.get(name, name), request_id, code,
                                         (time.monotonic() - started) * 1000))
