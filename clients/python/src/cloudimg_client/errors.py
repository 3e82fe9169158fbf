"""The errors of a cloudimg call: every refusal carries a google.rpc.Status with exactly one ErrorInfo (domain
``cloudimg.dev``) whose ``reason`` is the stable, machine-readable name of what went wrong."""

from __future__ import annotations

import grpc
from google.rpc import error_details_pb2
from grpc_status import rpc_status

REQUEST_ID_KEY = "x-request-id"


def error_info(error: grpc.RpcError) -> error_details_pb2.ErrorInfo | None:
    """The ErrorInfo of a failed call's rich status, or None (no rich status, or one without an ErrorInfo)."""
    try:
        status = rpc_status.from_call(error)
    except ValueError:  # a rich status that contradicts the call's own code or message
        return None
    info = error_details_pb2.ErrorInfo()
    for detail in status.details if status else ():
        if detail.Unpack(info):  # False for a detail of another type
            return info
    return None


def error_reason(error: grpc.RpcError) -> str:
    """The ErrorInfo's reason (e.g. "IMAGE_NOT_FOUND"), or "" when the failure carries none."""
    info = error_info(error)
    return info.reason if info else ""


def request_id_of(error: grpc.RpcError) -> str:
    """The request id the server answered with (its x-request-id trailer), or ""."""
    trailers = error.trailing_metadata() if isinstance(error, grpc.Call) else None
    return next((str(value) for key, value in trailers or () if key == REQUEST_ID_KEY), "")


class OutcomeUnknown(Exception):
    """A change that failed after its retries and may have happened. Sending it again with the same token
    (``field`` of the request: its client_token or request_id) is safe: it never happens twice."""

    def __init__(self, error: grpc.RpcError, field: str, token: str):
        super().__init__(f"{error.code().name}: {error.details()}; the change may have happened: send it again "
                         f"with {field}={token}")
        self.error = error
        self.field = field
        self.token = token
