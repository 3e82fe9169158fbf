"""Resource ids in the seed cloud's shape: a prefix, a dash, 8 lowercase letters and digits."""

from __future__ import annotations

import re
import secrets
import string

from chassis.errors import InvalidArgument, clipped

_ALPHABET = string.ascii_lowercase + string.digits
_SHAPES: dict[str, re.Pattern[str]] = {}


# A random byte below this is reduced modulo 36 without bias; one at or above it is drawn again.
_UNBIASED_BYTE = 256 // len(_ALPHABET) * len(_ALPHABET)


def _characters(count: int) -> str:
    """``count`` characters of ids, each uniform and independent, from as few reads of the OS's randomness as
    it takes (usually one: a read per id, or eight, cost a twentieth of a launch of 100 instances)."""
    chosen: list[str] = []
    while len(chosen) < count:
        chosen += [_ALPHABET[b % len(_ALPHABET)] for b in secrets.token_bytes(count - len(chosen))
                   if b < _UNBIASED_BYTE]
    return "".join(chosen)


def new_id(prefix: str) -> str:
    """A new id: ``prefix-`` and 8 lowercase letters and digits, drawn uniformly."""
    return f"{prefix}-{_characters(8)}"


# Siblings share this many leading characters; the other 8 - _HEAD (36**5, 60 million tails) tell them apart.
_HEAD = 3
_TAIL = 8 - _HEAD


def sibling_ids(prefix: str, count: int) -> list[str]:
    """``count`` distinct new ids made together (a launch's instances), in order, sharing their first three
    characters. Each is still uniform over all ids (its head and its tail are), so it is as unlikely to meet
    an existing id as one made alone; but siblings sit side by side in every index on them, so writing 100
    of them touches a few pages of each index rather than 100 (the commit of a launch of 100 instances cost 7
    times as much with unrelated ids, and more as the table grew)."""
    head = _characters(_HEAD)
    tails: set[str] = set()
    while len(tails) < count:
        drawn = _characters(_TAIL * (count - len(tails)))
        tails.update(drawn[i:i + _TAIL] for i in range(0, len(drawn), _TAIL))
    return [f"{prefix}-{head}{tail}" for tail in sorted(tails)]


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
