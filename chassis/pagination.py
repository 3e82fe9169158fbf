"""AIP-158 pagination: page sizes clamped to [1, 1000], opaque page tokens for keyset paging.

A token carries the last key of the previous page and a fingerprint of the filters it was made
for, so that a token reused with other filters is refused rather than silently misapplied.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
from collections.abc import Callable
from typing import TypeVar

from chassis.errors import InvalidArgument

DEFAULT_PAGE_SIZE = 50
MAX_PAGE_SIZE = 1000


def clamp_page_size(requested: int) -> int:
    if requested < 0:
        raise InvalidArgument("INVALID_PAGE_SIZE", "page_size must not be negative", field="page_size")
    if requested == 0:
        return DEFAULT_PAGE_SIZE
    return min(requested, MAX_PAGE_SIZE)


def fingerprint(*filters: object) -> str:
    return hashlib.sha256(repr(filters).encode()).hexdigest()[:16]


def encode_page_token(last_key: str, filters_fingerprint: str) -> str:
    raw = json.dumps({"k": last_key, "f": filters_fingerprint}, separators=(",", ":")).encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def decode_page_token(token: str, filters_fingerprint: str) -> str | None:
    """The last key of the previous page, or None for the first page."""
    if not token:
        return None
    try:
        raw = base64.urlsafe_b64decode(token + "=" * (-len(token) % 4))
        body = json.loads(raw)
        key, made_for = body["k"], body["f"]
    except (binascii.Error, ValueError, KeyError, TypeError):
        raise InvalidArgument("INVALID_PAGE_TOKEN", "page_token is not valid", field="page_token") from None
    if made_for != filters_fingerprint or not isinstance(key, str):
        raise InvalidArgument(
            "INVALID_PAGE_TOKEN", "page_token was made for other filters", field="page_token"
        )
    return key


T = TypeVar("T")


def page_of(items: list[T], size: int, filters_fingerprint: str, key: Callable[[T], str]) -> tuple[list[T], str]:
    """One page from up to ``size + 1`` items read past the previous page's last key, and the token of
    the next page ("" when this is the last)."""
    if len(items) <= size:
        return items, ""
    return items[:size], encode_page_token(key(items[size - 1]), filters_fingerprint)
