"""Accounts and API keys: who calls, and the demo accounts of a new installation."""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence
from datetime import UTC, datetime

from chassis.context import Caller
from chassis.errors import Unauthenticated
from gateway.domain import api_keys
from gateway.domain.api_keys import Account, ApiKey
from gateway.domain.model import Charge, ChargeFilter
from gateway.service_layer.dependencies import BillingPort
from gateway.service_layer.unit_of_work import GatewayUnitOfWork

DEMO_ACCOUNTS = (Account("100000000001", "alice"), Account("100000000002", "bob"))

UnitOfWorkFactory = Callable[..., GatewayUnitOfWork]


def issue_keys(new_uow: UnitOfWorkFactory, accounts: Sequence[Account]) -> dict[str, dict[str, str]]:
    """Creates the accounts that are missing and gives each a new API key (revoking its old ones): the
    operator's way in, since accounts come from outside the public API (sign-up, an organization)."""
    now = datetime.now(UTC)
    issued = {}
    with new_uow() as uow:
        uow.accounts.add_missing(accounts, now)
        for account in accounts:
            key, plain = api_keys.new_api_key(account.account_id)
            uow.accounts.replace_keys(account.account_id, key, now)
            issued[account.display_name] = {"account_id": account.account_id, "api_key": plain}
        uow.commit()
    return issued


def issue_demo_keys(new_uow: UnitOfWorkFactory) -> dict[str, dict[str, str]]:
    """Creates the demo accounts if missing and gives each a new API key (revoking the old ones)."""
    return issue_keys(new_uow, DEMO_ACCOUNTS)


async def list_charges(filters: ChargeFilter, page_size: int, page_token: str, billing: BillingPort
                       ) -> tuple[list[Charge], str]:
    """The caller's charges in the order they were recorded, then the usage accrued and not settled yet
    (billing filters, validates and pages them)."""
    return await billing.charges(filters, page_size, page_token)


def get_caller_identity(caller: Caller, new_uow: UnitOfWorkFactory) -> tuple[Account, str]:
    with new_uow(read_only=True) as uow:
        account = uow.accounts.get(caller.account_id)
    return account or Account(caller.account_id, ""), caller.api_key_id


class ApiKeyAuthenticator:
    """Authenticates ``authorization: Bearer <api key>``. Verified keys are kept for a short while so
    that the hot path reads no row; a revoked key stops working within ``cache_seconds``."""

    def __init__(self, new_uow: UnitOfWorkFactory, cache_seconds: float = 30.0):
        self._new_uow = new_uow
        self._cache_seconds = cache_seconds
        self._cache: dict[str, tuple[ApiKey, float]] = {}

    def __call__(self, metadata: Mapping[str, str], ctx: object = None) -> Caller:
        header = metadata.get("authorization", "")
        scheme, _, presented = header.partition(" ")
        parsed = api_keys.parse(presented.strip()) if scheme.lower() == "bearer" else None
        if parsed is None:
            raise Unauthenticated("API_KEY_MISSING" if not header else "API_KEY_INVALID",
                                  "send a valid API key as 'authorization: Bearer <api key>'")
        key_id, secret = parsed
        stored = self._lookup(key_id)
        if not api_keys.matches(stored, secret):
            raise Unauthenticated("API_KEY_INVALID", "the API key is not valid")
        assert stored is not None
        return Caller(stored.account_id, stored.key_id)

    def _lookup(self, key_id: str) -> ApiKey | None:
        now = time.monotonic()
        cached = self._cache.get(key_id)
        if cached is not None and cached[1] > now:
            return cached[0]
        with self._new_uow(read_only=True) as uow:
            stored = uow.accounts.key(key_id)
        if stored is not None:
            if len(self._cache) > 10_000:
                self._cache.clear()
            self._cache[key_id] = (stored, now + self._cache_seconds)
        return stored
