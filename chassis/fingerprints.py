"""Fingerprints of requests, for idempotency: which fields make two calls "the same call".

A fingerprint is built from named fields, never from ``repr()``: adding a field to a dataclass, or
changing how Python prints a value, must not change the fingerprint of a request recorded before.
Values are plain JSON (str, int, bool, None, lists and dicts of them); enums pass their value and
decimals their string, so the caller decides, field by field, what is compared.
"""

from __future__ import annotations

import enum
import hashlib
import json
from decimal import Decimal
from typing import Any

# Bumped only if the canonical form below changes; part of every fingerprint.
_VERSION = 1


def _plain(value: Any) -> Any:
    if isinstance(value, enum.Enum):
        return value.value
    if isinstance(value, Decimal):
        return str(value)
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if value is None or isinstance(value, (str, int, float, bool)):
        return value
    raise TypeError(f"a fingerprint takes plain values, not {type(value).__name__}")


def fingerprint(kind: str, **fields: Any) -> str:
    """SHA-256 (hex) of the canonical JSON of ``kind`` and the named fields."""
    canonical = json.dumps({"v": _VERSION, "kind": kind, "fields": _plain(fields)}, sort_keys=True,
                           separators=(",", ":"), ensure_ascii=True)
    return hashlib.sha256(canonical.encode()).hexdigest()
