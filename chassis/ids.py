"""Resource ids in the seed cloud's shape: a prefix, a dash, 8 lowercase letters and digits."""

from __future__ import annotations

import re
import secrets
import string

from chassis.errors import InvalidArgument, clipped

_ALPHABET = string.ascii_lowercase + string.digits
_SHAPES: dict[str, re.Pattern[str]] = {}


_ID_SPACE = len(_ALPHABET) ** 8
# A 64-bit draw below this many is reduced modulo _ID_SPACE without bias; one at or above it (about 1 in 6.6
# million) is drawn again.
_UNBIASED = (1 << 64) // _ID_SPACE * _ID_SPACE


def _numbers(count: int) -> list[int]:
    """``count`` numbers below _ID_SPACE, uniform, from one read of the OS's randomness (a read each cost a
    twentieth of a launch of 100 instances)."""
    numbers: list[int] = []
    while len(numbers) < count:
        pool = secrets.token_bytes(8 * (count - len(numbers)))
        numbers += (n % _ID_SPACE for n in (int.from_bytes(pool[i:i + 8]) for i in range(0, len(pool), 8))
                    if n < _UNBIASED)
    return numbers


def new_id(prefix: str) -> str:
    """A new id: ``prefix-`` and 8 lowercase letters and digits, drawn uniformly."""
    return f"{prefix}-{_spelled(_numbers(1)[0])}"


# Siblings share this many leading characters; the other 8 - _HEAD (36**5, 60 million tails) tell them apart.
_HEAD = 3


def sibling_ids(prefix: str, count: int) -> list[str]:
    """``count`` distinct new ids made together (a launch's instances), in order, sharing their first three
    characters. Each is still uniform over all ids (its head and its tail are), so it is as unlikely to meet
    an existing id as one made alone; but siblings sit side by side in every index on them, so writing 100
    of them touches a few pages of each index rather than 100 (the commit of a launch of 100 instances cost 7
    times as much with unrelated ids, and more as the table grew)."""
    head = _spelled(_numbers(1)[0])[:_HEAD]
    tails: set[str] = set()
    while len(tails) < count:
        tails.update(_spelled(n)[_HEAD:] for n in _numbers(count - len(tails)))
    return [f"{prefix}-{head}{tail}" for tail in sorted(tails)]


def _spelled(number: int) -> str:
    chars = []
    for _ in range(8):  # least significant first: any slice of the characters is uniform too
        number, digit = divmod(number, len(_ALPHABET))
        chars.append(_ALPHABET[digit])
    return "".join(chars)


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
