"""Each account's image trust policy: whose shares arrive accepted, and which images it means to launch.

Shared images come from anyone and are not reviewed. ``trusted_account_ids`` names the owners whose shares
are accepted at once (others arrive PENDING). The allow-list (platform images, marketplace providers,
accounts) restricts launches in ENFORCE mode and is only reported in AUDIT mode; OFF ignores it.
"""

from __future__ import annotations

import dataclasses
import enum
from dataclasses import dataclass, replace
from datetime import datetime

from chassis import ids
from chassis.errors import FieldViolation, InvalidArgument, clipped

MAX_TRUSTED_ACCOUNTS = 200
# Marketplace providers and accounts together.
MAX_ALLOWED_ENTRIES = 200
MAX_PROVIDER_LENGTH = 64


class TrustPolicyMode(enum.StrEnum):
    OFF = "OFF"
    AUDIT = "AUDIT"
    ENFORCE = "ENFORCE"


@dataclass(frozen=True)
class TrustPolicy:
    """An account's policy; the defaults are the policy of an account that never set one."""

    trusted_account_ids: tuple[str, ...] = ()
    mode: TrustPolicyMode = TrustPolicyMode.OFF
    allow_platform_images: bool = True
    allowed_marketplace_providers: tuple[str, ...] = ()
    allowed_account_ids: tuple[str, ...] = ()
    # None for a policy never changed.
    update_time: datetime | None = None


DEFAULT_POLICY = TrustPolicy()


class PolicyField(enum.StrEnum):
    """The fields of a TrustPolicy that UpdateTrustPolicy changes, by their names in update_paths."""

    TRUSTED_ACCOUNT_IDS = "trusted_account_ids"
    MODE = "mode"
    ALLOW_PLATFORM_IMAGES = "allow_platform_images"
    ALLOWED_MARKETPLACE_PROVIDERS = "allowed_marketplace_providers"
    ALLOWED_ACCOUNT_IDS = "allowed_account_ids"


def update_fields(paths: list[str]) -> frozenset[PolicyField]:
    """The fields an update names; no path at all names every field."""
    if not paths:
        return frozenset(PolicyField)
    named = set()
    for path in paths:
        try:
            named.add(PolicyField(path))
        except ValueError:
            raise InvalidArgument(
                "INVALID_UPDATE_MASK", f"update_mask path {clipped(path)!r} is not a trust policy field; the "
                "fields are " + ", ".join(f.value for f in PolicyField), field="update_mask") from None
    return frozenset(named)


@dataclass(frozen=True)
class PolicyDraft:
    """A policy as the caller sent it, unchecked; ``mode`` is None when the caller left it unspecified."""

    trusted_account_ids: list[str]
    mode: TrustPolicyMode | None
    allow_platform_images: bool
    allowed_marketplace_providers: list[str]
    allowed_account_ids: list[str]


@dataclass(frozen=True)
class PolicyUpdate:
    """The checked, normalized values of the fields an update changes; None: the field keeps its value."""

    trusted_account_ids: tuple[str, ...] | None = None
    mode: TrustPolicyMode | None = None
    allow_platform_images: bool | None = None
    allowed_marketplace_providers: tuple[str, ...] | None = None
    allowed_account_ids: tuple[str, ...] | None = None

    def fingerprint_fields(self) -> dict[str, object]:
        """The update as plain named values, for its request_id (lists in their order: order is kept)."""
        return {
            "trusted_account_ids": _plain(self.trusted_account_ids),
            "mode": None if self.mode is None else self.mode.value,
            "allow_platform_images": self.allow_platform_images,
            "allowed_marketplace_providers": _plain(self.allowed_marketplace_providers),
            "allowed_account_ids": _plain(self.allowed_account_ids),
        }


def _plain(values: tuple[str, ...] | None) -> list[str] | None:
    return None if values is None else list(values)


def checked_update(draft: PolicyDraft, fields: frozenset[PolicyField]) -> PolicyUpdate:
    """The update of the named fields (the others are ignored, as the update mask says), checked one by one."""
    update = PolicyUpdate()
    if PolicyField.TRUSTED_ACCOUNT_IDS in fields:
        trusted = _account_ids(draft.trusted_account_ids, "policy.trusted_account_ids")
        if len(trusted) > MAX_TRUSTED_ACCOUNTS:
            raise InvalidArgument("TOO_MANY_TRUSTED_ACCOUNTS", f"a trust policy trusts at most "
                                  f"{MAX_TRUSTED_ACCOUNTS} accounts; this one names {len(trusted)}",
                                  field="policy.trusted_account_ids")
        update = replace(update, trusted_account_ids=trusted)
    if PolicyField.MODE in fields:
        if draft.mode is None:
            raise InvalidArgument("MODE_REQUIRED", "policy.mode must be OFF, AUDIT or ENFORCE", field="policy.mode")
        update = replace(update, mode=draft.mode)
    if PolicyField.ALLOW_PLATFORM_IMAGES in fields:
        update = replace(update, allow_platform_images=draft.allow_platform_images)
    if PolicyField.ALLOWED_MARKETPLACE_PROVIDERS in fields:
        update = replace(update, allowed_marketplace_providers=_providers(draft.allowed_marketplace_providers))
    if PolicyField.ALLOWED_ACCOUNT_IDS in fields:
        update = replace(update, allowed_account_ids=_account_ids(draft.allowed_account_ids,
                                                                  "policy.allowed_account_ids"))
    return update


def _account_ids(values: list[str], field: str) -> tuple[str, ...]:
    for index, value in enumerate(values):
        ids.require_account_id(value, f"{field}[{index}]")
    return tuple(dict.fromkeys(values))


def _providers(values: list[str]) -> tuple[str, ...]:
    for index, value in enumerate(values):
        if not 1 <= len(value) <= MAX_PROVIDER_LENGTH:
            raise InvalidArgument("INVALID_MARKETPLACE_PROVIDER", f"a marketplace provider is 1 to "
                                  f"{MAX_PROVIDER_LENGTH} characters",
                                  field=f"policy.allowed_marketplace_providers[{index}]")
    return tuple(dict.fromkeys(values))


def updated(stored: TrustPolicy, update: PolicyUpdate, now: datetime) -> TrustPolicy:
    """The stored (or default) policy with the update's fields changed. The allow-list's limit holds for
    the result: an update of one of its lists counts the other as it is stored."""
    named = {f.name: getattr(update, f.name) for f in dataclasses.fields(update)}
    changes = {name: value for name, value in named.items() if value is not None}
    policy = replace(stored, **changes, update_time=now)
    entries = len(policy.allowed_marketplace_providers) + len(policy.allowed_account_ids)
    if entries > MAX_ALLOWED_ENTRIES:
        changed = [f for f in (PolicyField.ALLOWED_MARKETPLACE_PROVIDERS, PolicyField.ALLOWED_ACCOUNT_IDS)
                   if f.value in changes]
        message = (f"a trust policy allows at most {MAX_ALLOWED_ENTRIES} marketplace providers and accounts "
                   f"together; this one would have {entries}")
        raise InvalidArgument("TOO_MANY_ALLOWED_ENTRIES", message,
                              violations=[FieldViolation(f"policy.{f.value}", message) for f in changed])
    return policy
