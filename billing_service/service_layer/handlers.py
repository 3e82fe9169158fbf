"""The billing context's use cases of the price book and of launches: instance types, prices, quotes, and
the one charge of each launch (which also starts metering its instances)."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable

from billing_service.domain.metering import launch_segment
from billing_service.domain.model import (
    MAX_INSTANCES_PER_LAUNCH,
    Charge,
    InstanceType,
    KeyOutcome,
    LaunchPricing,
    PriceBook,
    Quote,
)
from billing_service.domain.price_list import Price, PriceFilter, PriceKey
from billing_service.service_layer.unit_of_work import BillingUnitOfWork
from chassis import ids, pagination
from chassis.clock import Clock
from chassis.errors import CONTROL_CHARACTERS, FailedPrecondition, InvalidArgument
from chassis.fingerprints import fingerprint

UnitOfWorkFactory = Callable[..., BillingUnitOfWork]
MAX_KEY_LENGTH = 64
MAX_INSTANCE_ID_LENGTH = 32
# Usage charges carry keys of their own (domain.metering.Usage.idempotency_key): no caller may take one.
RESERVED_KEY_PREFIX = "usage:"


def list_instance_types(region: str, *, book: PriceBook) -> list[InstanceType]:
    if not region:
        return sorted(book.instance_types.values(), key=lambda t: t.instance_type)
    return book.types_in(region)


def quote(launch: LaunchPricing, *, book: PriceBook) -> Quote:
    return book.quote(launch)


def create_charge(launch: LaunchPricing, idempotency_key: str, instance_ids: list[str], account_id: str, *,
                  book: PriceBook, new_uow: UnitOfWorkFactory, clock: Clock) -> Charge:
    """Records exactly one charge per idempotency key: a retry returns the first charge, and a key that
    ResolveCharge voided is refused for good. The transaction that records it opens the meter of each
    instance, so an instance is metered if and only if its launch was charged."""
    check_key(idempotency_key)
    _check_instance_ids(instance_ids)
    priced = book.quote(launch)
    fingerprint = charge_fingerprint(launch, instance_ids)
    now = clock.now()
    charge = Charge(ids.new_id("chg"), account_id, launch.region, priced, tuple(instance_ids), now,
                    idempotency_key, fingerprint)
    with new_uow() as uow:
        outcome = uow.charges.claim_key(account_id, idempotency_key, KeyOutcome.CHARGED, now)
        if outcome is KeyOutcome.VOID:
            raise _voided(idempotency_key)
        if uow.charges.add_unless_exists(charge):
            uow.meters.add_for_instances(launch_segment(account_id, launch, priced, now), instance_ids)
            uow.commit()
            return charge
        first = uow.charges.by_idempotency_key(account_id, idempotency_key)
        uow.commit()
    if first is None or first.request_fingerprint not in (fingerprint,
                                                           legacy_charge_fingerprint(launch, instance_ids)):
        raise FailedPrecondition("IDEMPOTENCY_PARAMETER_MISMATCH",
                                 "idempotency_key was used before for a different charge",
                                 subject=f"idempotency_key:{idempotency_key}")
    return first


def resolve_charge(idempotency_key: str, account_id: str, *, new_uow: UnitOfWorkFactory, clock: Clock
                   ) -> Charge | None:
    """The charge recorded for the key, or None when there is none: then the key is void, and
    CreateCharge refuses it from now on, so a late or retried charge can never land."""
    check_key(idempotency_key)
    with new_uow() as uow:
        outcome = uow.charges.claim_key(account_id, idempotency_key, KeyOutcome.VOID, clock.now())
        charge = uow.charges.by_idempotency_key(account_id, idempotency_key)
        if outcome is KeyOutcome.VOID and charge is not None:  # charged before keys were claimed
            uow.charges.mark_key_charged(account_id, idempotency_key)
        uow.commit()
    return charge


def charge_fingerprint(launch: LaunchPricing, instance_ids: list[str]) -> str:
    return fingerprint("charge", **launch.fingerprint_fields(), instance_ids=sorted(instance_ids))


def legacy_charge_fingerprint(launch: LaunchPricing, instance_ids: list[str]) -> str:
    """How charges recorded before named-field fingerprints (d1e6c55) were fingerprinted: sha256 of the repr() of
    (LaunchPricing, sorted instance ids). Spelled out from named fields as the dataclasses of that release
    printed them, not from today's repr(), so a field added to LaunchPricing or ImagePricing since cannot
    change it (and turn a launch left PENDING across a deploy into IDEMPOTENCY_PARAMETER_MISMATCH)."""
    image, charge_type, os_kind = launch.image, launch.charge_type, launch.image.os_kind
    printed = (f"LaunchPricing(region={launch.region!r}, instance_type={launch.instance_type!r}, "
               f"instance_count={launch.instance_count!r}, "
               f"charge_type=<ChargeType.{charge_type.name}: {charge_type.value!r}>, "
               f"period_months={launch.period_months!r}, image=ImagePricing(image_id={image.image_id!r}, "
               f"os_kind=<OsKind.{os_kind.name}: {os_kind.value!r}>, "
               f"marketplace_product_id={image.marketplace_product_id!r}))")
    return hashlib.sha256(f"({printed}, {sorted(instance_ids)!r})".encode()).hexdigest()


def check_key(idempotency_key: str) -> None:
    if not idempotency_key or len(idempotency_key) > MAX_KEY_LENGTH:
        raise InvalidArgument("INVALID_IDEMPOTENCY_KEY", f"idempotency_key must be 1-{MAX_KEY_LENGTH} characters",
                              field="idempotency_key")
    if idempotency_key.startswith(RESERVED_KEY_PREFIX):
        raise InvalidArgument("INVALID_IDEMPOTENCY_KEY",
                              f"idempotency_key must not start with {RESERVED_KEY_PREFIX!r} (usage charges' keys)",
                              field="idempotency_key")


def _check_instance_ids(instance_ids: list[str]) -> None:
    """What a meter can hold: up to a launch's worth of distinct ids of bounded length."""
    if len(instance_ids) > MAX_INSTANCES_PER_LAUNCH:
        raise InvalidArgument("INVALID_INSTANCE_IDS", f"at most {MAX_INSTANCES_PER_LAUNCH} instance_ids",
                              field="instance_ids")
    for instance_id in instance_ids:
        if not 1 <= len(instance_id) <= MAX_INSTANCE_ID_LENGTH or CONTROL_CHARACTERS.search(instance_id):
            raise InvalidArgument("INVALID_INSTANCE_IDS", f"instance_ids must be 1-{MAX_INSTANCE_ID_LENGTH} "
                                  "characters without control characters", field="instance_ids")
    if len(set(instance_ids)) != len(instance_ids):
        raise InvalidArgument("INVALID_INSTANCE_IDS", "instance_ids must not repeat an id", field="instance_ids")


def _voided(idempotency_key: str) -> FailedPrecondition:
    return FailedPrecondition("LAUNCH_VOIDED", "this launch was voided when its outcome was resolved; it is "
                              "never charged", subject=f"idempotency_key:{idempotency_key}")


def list_prices(filters: PriceFilter, page_size: int, page_token: str, *, book: PriceBook,
                prices: list[Price]) -> tuple[list[Price], str]:
    """A page of ``prices`` (the book's, domain.price_list.all_prices: in key order) that the filters admit."""
    filters.check(book)
    size = pagination.clamp_page_size(page_size)
    print_ = pagination.fingerprint("prices", filters.region,
                                    filters.charge_type.value if filters.charge_type else "", filters.instance_type)
    after = _price_key(pagination.decode_page_token(page_token, print_))
    wanted: list[Price] = []
    for price in prices:
        if (after is None or price.key > after) and filters.admits(price):
            wanted.append(price)
            if len(wanted) > size:
                break
    return pagination.page_of(wanted, size, print_, lambda p: json.dumps(list(p.key)))


def _price_key(key: str | None) -> PriceKey | None:
    """A price list's page key, [kind, region, name, charge type]; anything else is refused."""
    if key is None:
        return None
    try:
        kind, region, name, charge = json.loads(key)
    except (ValueError, TypeError):
        raise _invalid_token() from None
    if not (_is_rank(kind) and isinstance(region, str) and isinstance(name, str) and _is_rank(charge)):
        raise _invalid_token()
    return kind, region, name, charge


def _is_rank(value: object) -> bool:
    return type(value) is int and 0 <= value < 10


def _invalid_token() -> InvalidArgument:
    return InvalidArgument("INVALID_PAGE_TOKEN", "page_token is not valid", field="page_token")
