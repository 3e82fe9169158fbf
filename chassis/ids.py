"""Resource ids in the seed cloud's shape: a prefix, a dash, 8 lowercase letters and digits."""

from __future__ import annotations

import re
import secrets
import string

from chassis.errors import InvalidArgument, clipped

_ALPHABET = string.ascii_lowercase + string.digits
_SHAPES: dict[str, re.Pattern[str]] = {}


_ID_SPACE = len(_ALPHABET) ** 8


def new_id(prefix: str) -> str:
    """A new id: 8 characters drawn uniformly from the OS's randomness, in one draw (a launch of 100
    instances makes 100 of them; eight secrets.choice calls each cost a tenth of such a launch)."""
    number = secrets.randbelow(_ID_SPACE)
    chars = []
    for _ in range(8):
        number, digit = divmod(number, len(_ALPHABET))
        chars.append(_ALPHABET[digit])
    return prefix + "-" + "".join(chars)


def is_id(prefix: str, value: str) -> bool:
    shape = _SHAPES.get(prefix)
    if shape is None:
        shape = _SHAPES[prefix] = re.compile(rf"{re.escape(prefix)}-[a-z0-9]{{8}}")
    return shape.fullmatch(value) is not None


def require_id(prefix: str, value: str, field: str) -> str:
    """The id itself, or INVALID_ARGUMENT naming the field when it is not of the right shape."""
    if not is_id(prefix, value):
        raise InvalidArgument(
            "INVALID_ID",
            f"{field} {clipped(value)!r} is not a valid id: expected {prefix}- and 8 lowercase letters or digits",
            field=field,
        )
    return value


_ACCOUNT_ID = re.compile(r"[0-9]{12}")


def require_account_id(value: str, field: str) -> str:
    """Account ids are 12 digits; anything else is INVALID_ARGUMENT naming the field."""
    if _ACCOUNT_ID.fullmatch(value) is None:
        raise InvalidArgument("INVALID_ACCOUNT_ID",
                              f"{field} {clipped(value)!r} is not an account id: expected 12 digits", field=field)
    return value


MAX_REQUEST_ID_LENGTH = 64


def check_request_id(value: str) -> str:
    """A request_id (idempotency key of a mutation) is at most 64 printable ASCII characters."""
    if len(value) > MAX_REQUEST_ID_LENGTH or not (value.isascii() and value.isprintable()):
        raise InvalidArgument("INVALID_REQUEST_ID",
                              f"request_id must be at most {MAX_REQUEST_ID_LENGTH} printable ASCII characters",
                              field="request_id")
    return value
