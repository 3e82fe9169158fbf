"""AIP-158 pagination: page sizes clamped to [1, 1000], opaque page tokens for keyset paging.

A token carries the last key of the previous page and a fingerprint of the filters it was made
for, so that a token reused with other filters is refused rather than silently misapplied.
"""

from __future__ import annotations

import base64
import binascii
import json
import re
from collections.abc import Callable
from typing import TypeVar

from chassis import fingerprints
from chassis.errors import CONTROL_CHARACTERS, InvalidArgument

DEFAULT_PAGE_SIZE = 50
MAX_PAGE_SIZE = 1000
MAX_KEY_CHARS = 256
# Room for the longest key JSON-escaped (up to 12 characters each) with the fingerprint, in base64; a bound before
# decoding keeps forged tokens cheap to refuse.
MAX_PAGE_TOKEN_CHARS = (12 * MAX_KEY_CHARS + 64) * 4 // 3


def clamp_page_size(requested: int) -> int:
    if requested < 0:
        raise InvalidArgument("INVALID_PAGE_SIZE", "page_size must not be negative", field="page_size")
    if requested == 0:
        return DEFAULT_PAGE_SIZE
    return min(requested, MAX_PAGE_SIZE)


def fingerprint(*filters: object) -> str:
    """What a page token is bound to: its filters, as plain values (see chassis.fingerprints)."""
    return fingerprints.fingerprint("page", filters=list(filters))[:16]


def encode_page_token(last_key: str, filters_fingerprint: str) -> str:
    raw = json.dumps({"k": last_key, "f": filters_fingerprint}, separators=(",", ":")).encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def decode_page_token(token: str, filters_fingerprint: str) -> str | None:
    """The last key of the previous page, or None for the first page.

    A token is the caller's input like any other (anyone can forge one for the filters they send): whatever
    it holds, the answer is a bounded key free of control characters or INVALID_PAGE_TOKEN, never another
    exception."""
    if not token:
        return None
    if len(token) > MAX_PAGE_TOKEN_CHARS:
        raise _invalid_token()
    try:
        raw = base64.urlsafe_b64decode(token + "=" * (-len(token) % 4))
        body = json.loads(raw)
        key, made_for = body["k"], body["f"]
    except (binascii.Error, ValueError, KeyError, TypeError, RecursionError):
        raise _invalid_token() from None
    if made_for != filters_fingerprint:
        raise InvalidArgument(
            "INVALID_PAGE_TOKEN", "page_token was made for other filters", field="page_token"
        )
    if not isinstance(key, str) or len(key) > MAX_KEY_CHARS or CONTROL_CHARACTERS.search(key):
        raise _invalid_token()
    return key


# Keys that fit a signed 64-bit column; ASCII digits only (str.isdigit() passes "²", which int() refuses).
_INTEGER_KEY = re.compile("[0-9]{1,18}")


def decode_int_page_token(token: str, filters_fingerprint: str) -> int | None:
    """The last key of the previous page for a list keyed by a non-negative integer, or None for the first page."""
    key = decode_page_token(token, filters_fingerprint)
    if key is None:
        return None
    if not _INTEGER_KEY.fullmatch(key):
        raise _invalid_token()
    return int(key)


def _invalid_token() -> InvalidArgument:
    return InvalidArgument("INVALID_PAGE_TOKEN", "page_token is not valid", field="page_token")


T = TypeVar("T")


def page_of(items: list[T], size: int, filters_fingerprint: str, key: Callable[[T], str]) -> tuple[list[T], str]:
    """One page from up to ``size + 1`` items read past the previous page's last key, and the token of
    the next page ("" when this is the last)."""
    if len(items) <= size:
        return items, ""
    return items[:size], encode_page_token(key(items[size - 1]), filters_fingerprint)
