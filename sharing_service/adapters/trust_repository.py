"""Reads and writes trust policies with SQLAlchemy Core: a row per account (mode, platform flag, update time)
and an entry per value of its lists, so that the questions the hot paths ask are primary-key lookups."""

from __future__ import annotations

import enum
from collections.abc import Iterable
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import Connection, and_, bindparam, delete, or_, select, update

from chassis.db import insert_ignoring_duplicates
from chassis.idempotency import ResponseFormat
from chassis.stored import Document
from sharing_service.adapters.tables import TRUST_ENTRIES, TRUST_POLICIES
from sharing_service.domain.trust import DEFAULT_POLICY, TrustPolicy, TrustPolicyMode
from sharing_service.domain.verdict import AllowList


class PolicyList(enum.StrEnum):
    """The lists of a policy as the entry table names them."""

    TRUSTED_ACCOUNTS = "TRUSTED_ACCOUNT"
    ALLOWED_PROVIDERS = "ALLOWED_PROVIDER"
    ALLOWED_ACCOUNTS = "ALLOWED_ACCOUNT"


def _lists(policy: TrustPolicy) -> dict[PolicyList, tuple[str, ...]]:
    return {PolicyList.TRUSTED_ACCOUNTS: policy.trusted_account_ids,
            PolicyList.ALLOWED_PROVIDERS: policy.allowed_marketplace_providers,
            PolicyList.ALLOWED_ACCOUNTS: policy.allowed_account_ids}


def _aware(moment: datetime) -> datetime:
    # SQLite hands back the naive UTC time that it stored.
    return moment.replace(tzinfo=moment.tzinfo or UTC)


# What every verdict reads first, built once (building it cost as much as running it).
_POLICY_FLAGS = select(TRUST_POLICIES.c.mode, TRUST_POLICIES.c.allow_platform_images).where(
    TRUST_POLICIES.c.account_id == bindparam("account"))


class TrustPolicyRepository:
    def __init__(self, connection: Connection):
        self._connection = connection

    def get(self, account_id: str) -> TrustPolicy:
        """The account's policy; the default one if it never set one."""
        c = TRUST_POLICIES.c
        row = self._connection.execute(select(c.mode, c.allow_platform_images, c.update_time)
                                       .where(c.account_id == account_id)).first()
        return DEFAULT_POLICY if row is None else self._with_lists(account_id, row)

    def lock(self, account_id: str, now: datetime) -> TrustPolicy:
        """Locks the account's policy for a change (a row lock on PostgreSQL; SQLite's BEGIN IMMEDIATE already
        serializes writers) and returns it as stored: a first change locks a default row made for it."""
        self._connection.execute(insert_ignoring_duplicates(self._connection, TRUST_POLICIES), [{
            "account_id": account_id, "mode": DEFAULT_POLICY.mode.value,
            "allow_platform_images": DEFAULT_POLICY.allow_platform_images, "update_time": now}])
        c = TRUST_POLICIES.c
        row = self._connection.execute(select(c.mode, c.allow_platform_images, c.update_time)
                                       .where(c.account_id == account_id).with_for_update()).one()
        return self._with_lists(account_id, row)

    def _with_lists(self, account_id: str, row: Any) -> TrustPolicy:
        e = TRUST_ENTRIES.c
        values: dict[PolicyList, list[str]] = {name: [] for name in PolicyList}
        for list_name, value in self._connection.execute(
                select(e.list_name, e.value).where(e.account_id == account_id).order_by(e.list_name, e.ordinal)):
            values[PolicyList(list_name)].append(value)
        return TrustPolicy(
            trusted_account_ids=tuple(values[PolicyList.TRUSTED_ACCOUNTS]), mode=TrustPolicyMode(row.mode),
            allow_platform_images=row.allow_platform_images,
            allowed_marketplace_providers=tuple(values[PolicyList.ALLOWED_PROVIDERS]),
            allowed_account_ids=tuple(values[PolicyList.ALLOWED_ACCOUNTS]), update_time=_aware(row.update_time))

    def save(self, account_id: str, stored: TrustPolicy, policy: TrustPolicy) -> None:
        """Writes a policy locked by ``lock`` over what it stored; a list that did not change is not touched."""
        if policy.update_time is None:
            raise ValueError("a policy is saved with the time of its change")
        self._connection.execute(update(TRUST_POLICIES).where(TRUST_POLICIES.c.account_id == account_id).values(
            mode=policy.mode.value, allow_platform_images=policy.allow_platform_images,
            update_time=policy.update_time))
        before = _lists(stored)
        e = TRUST_ENTRIES.c
        for name, values in _lists(policy).items():
            if values == before[name]:
                continue
            self._connection.execute(delete(TRUST_ENTRIES).where(e.account_id == account_id, e.list_name == name))
            if values:
                self._connection.execute(TRUST_ENTRIES.insert(), [
                    {"account_id": account_id, "list_name": name.value, "value": value, "ordinal": ordinal}
                    for ordinal, value in enumerate(values)])

    def trusting(self, owner_account_id: str, recipient_account_ids: Iterable[str]) -> set[str]:
        """Which of these accounts trust the owner (one query, however many they are)."""
        recipients = sorted(set(recipient_account_ids))
        if not recipients:
            return set()
        e = TRUST_ENTRIES.c
        rows = self._connection.execute(select(e.account_id).where(
            e.account_id.in_(recipients), e.list_name == PolicyList.TRUSTED_ACCOUNTS.value,
            e.value == owner_account_id))
        return {r[0] for r in rows}

    def allow_list(self, account_id: str, providers: Iterable[str], owners: Iterable[str]) -> AllowList:
        """The account's mode and platform flag, and which of these providers and owners its allow-list holds:
        one query for the policy, and one for the entries when the mode looks at them and there are any to
        look up, however many they are."""
        row = self._connection.execute(_POLICY_FLAGS, {"account": account_id}).first()
        if row is None:
            return AllowList()
        mode = TrustPolicyMode(row.mode)
        providers, owners = sorted(set(providers)), sorted(set(owners))
        if mode is TrustPolicyMode.OFF or not (providers or owners):
            return AllowList(mode, row.allow_platform_images)
        e = TRUST_ENTRIES.c
        wanted = [and_(e.list_name == name.value, e.value.in_(values))
                  for name, values in ((PolicyList.ALLOWED_PROVIDERS, providers), (PolicyList.ALLOWED_ACCOUNTS, owners))
                  if values]
        found: dict[str, set[str]] = {name.value: set() for name in PolicyList}
        for list_name, value in self._connection.execute(
                select(e.list_name, e.value).where(e.account_id == account_id, or_(*wanted))):
            found[list_name].add(value)
        return AllowList(mode, row.allow_platform_images, frozenset(found[PolicyList.ALLOWED_PROVIDERS.value]),
                         frozenset(found[PolicyList.ALLOWED_ACCOUNTS.value]))


def _policy_to_json(policy: TrustPolicy) -> dict[str, Any]:
    return {"trusted_account_ids": list(policy.trusted_account_ids), "mode": policy.mode.value,
            "allow_platform_images": policy.allow_platform_images,
            "allowed_marketplace_providers": list(policy.allowed_marketplace_providers),
            "allowed_account_ids": list(policy.allowed_account_ids),
            "update_time": None if policy.update_time is None else policy.update_time.isoformat()}


def _policy_from_json(stored: Any) -> TrustPolicy:
    update_time = stored["update_time"]
    return TrustPolicy(
        trusted_account_ids=tuple(stored["trusted_account_ids"]), mode=TrustPolicyMode(stored["mode"]),
        allow_platform_images=stored["allow_platform_images"],
        allowed_marketplace_providers=tuple(stored["allowed_marketplace_providers"]),
        allowed_account_ids=tuple(stored["allowed_account_ids"]),
        update_time=None if update_time is None else datetime.fromisoformat(update_time))


# What UpdateTrustPolicy answered: the whole policy after the call. Version 1 (the first): trusted_account_ids,
# mode, allow_platform_images, allowed_marketplace_providers, allowed_account_ids, update_time (ISO 8601 or null).
POLICY_ANSWER = ResponseFormat.of(Document("UpdateTrustPolicy answer", 1), encode=_policy_to_json,
                                  decode=_policy_from_json)
