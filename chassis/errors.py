"""Domain exceptions, free of grpc: contexts raise these, one interceptor maps them to statuses.

Each carries a machine-readable ``reason`` (UPPER_SNAKE_CASE) for the ErrorInfo, a message for
people, and the facts the matching google.rpc detail needs.
"""

from __future__ import annotations

import re
from dataclasses import dataclass


class DomainError(Exception):
    code = "INTERNAL"

    def __init__(self, reason: str, message: str, *, metadata: dict[str, str] | None = None):
        super().__init__(message)
        self.reason = reason
        self.message = message
        self.metadata = metadata or {}


@dataclass(frozen=True)
class FieldViolation:
    field: str
    description: str


class InvalidArgument(DomainError):
    code = "INVALID_ARGUMENT"

    def __init__(self, reason: str, message: str, *, violations: list[FieldViolation] | None = None,
                 field: str | None = None, metadata: dict[str, str] | None = None):
        super().__init__(reason, message, metadata=metadata)
        self.violations = list(violations or [])
        if field is not None:
            self.violations.append(FieldViolation(field, message))


class Unauthenticated(DomainError):
    code = "UNAUTHENTICATED"


class NotFound(DomainError):
    code = "NOT_FOUND"

    def __init__(self, reason: str, message: str, *, resource_type: str, resource_name: str,
                 metadata: dict[str, str] | None = None):
        super().__init__(reason, message, metadata=metadata)
        self.resource_type = resource_type
        self.resource_name = resource_name


class AlreadyExists(DomainError):
    code = "ALREADY_EXISTS"

    def __init__(self, reason: str, message: str, *, resource_type: str, resource_name: str,
                 metadata: dict[str, str] | None = None):
        super().__init__(reason, message, metadata=metadata)
        self.resource_type = resource_type
        self.resource_name = resource_name


class PermissionDenied(DomainError):
    code = "PERMISSION_DENIED"

    def __init__(self, reason: str, message: str, *, resource_type: str, resource_name: str,
                 metadata: dict[str, str] | None = None):
        super().__init__(reason, message, metadata=metadata)
        self.resource_type = resource_type
        self.resource_name = resource_name


@dataclass(frozen=True)
class PreconditionViolation:
    type: str
    subject: str
    description: str


class FailedPrecondition(DomainError):
    code = "FAILED_PRECONDITION"

    def __init__(self, reason: str, message: str, *, subject: str,
                 metadata: dict[str, str] | None = None):
        super().__init__(reason, message, metadata=metadata)
        self.violations = [PreconditionViolation(reason, subject, message)]


@dataclass(frozen=True)
class QuotaViolation:
    subject: str
    description: str


class ResourceExhausted(DomainError):
    code = "RESOURCE_EXHAUSTED"

    def __init__(self, reason: str, message: str, *, subject: str,
                 metadata: dict[str, str] | None = None):
        super().__init__(reason, message, metadata=metadata)
        self.violations = [QuotaViolation(subject, message)]


class Unavailable(DomainError):
    code = "UNAVAILABLE"


class Unreached(Unavailable):
    """A call to a dependency that was never sent (no connection to it): it cannot have done anything."""


class Unimplemented(DomainError):
    code = "UNIMPLEMENTED"


class RemoteError(DomainError):
    """A downstream service refused a call with a domain error; it travels on to the caller as is.

    ``status`` is the serialized google.rpc.Status that the downstream sent.
    """

    def __init__(self, code: str, reason: str, message: str, status: bytes):
        super().__init__(reason, message)
        self.code = code
        self.status = status


class Aborted(DomainError):
    code = "ABORTED"


def not_available_yet(rpc: str) -> Unimplemented:
    """For an RPC that the contract declares and a later issue builds."""
    return Unimplemented("NOT_IMPLEMENTED_YET", f"{rpc} is not available yet")


def clipped(value: str, limit: int = 64) -> str:
    """A caller's value as an error message may quote it: long input is not echoed whole."""
    return value if len(value) <= limit else value[:limit] + "..."


# What no caller's text needs: C0 controls but tab, newline and carriage return; DEL; C1 controls.
# PostgreSQL refuses NUL in text outright, and the others corrupt logs and terminals.
CONTROL_CHARACTERS = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f]")


def invalid_characters(field: str) -> InvalidArgument:
    return InvalidArgument("INVALID_CHARACTERS", f"{field} must not contain NUL or other control characters",
                           field=field)
