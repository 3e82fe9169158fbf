"""API keys: ``cik_<key id>_<secret>``. Only a hash of the secret is stored; comparisons are
constant-time. Secrets are 256 random bits, so a fast hash suffices (nothing to brute-force)."""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
from dataclasses import dataclass

from chassis.ids import new_id

_KEY = re.compile(r"cik_([a-z0-9]{8})_([A-Za-z0-9_-]{43})")
# Compared against when a key id is unknown, so that the time taken tells nothing.
_NO_HASH = hashlib.sha256(b"no such key").hexdigest()


@dataclass(frozen=True)
class ApiKey:
    key_id: str
    account_id: str
    secret_hash: str


@dataclass(frozen=True)
class Account:
    account_id: str
    display_name: str


def new_api_key(account_id: str) -> tuple[ApiKey, str]:
    """A new key for the account, and its plain text (shown once, never stored)."""
    key_id = new_id("k")[2:]
    secret = secrets.token_urlsafe(32)
    return ApiKey(key_id, account_id, hash_secret(secret)), f"cik_{key_id}_{secret}"


def hash_secret(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


def parse(presented: str) -> tuple[str, str] | None:
    """(key id, secret) of a well-formed key, else None."""
    match = _KEY.fullmatch(presented)
    return (match.group(1), match.group(2)) if match else None


def matches(stored: ApiKey | None, secret: str) -> bool:
    expected = stored.secret_hash if stored is not None else _NO_HASH
    return hmac.compare_digest(hash_secret(secret), expected) and stored is not None
