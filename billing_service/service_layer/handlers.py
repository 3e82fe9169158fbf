"""The billing context's use cases."""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from datetime import UTC, datetime

from billing_service.domain.model import Charge, InstanceType, KeyOutcome, LaunchPricing, PriceBook, Quote
from billing_service.service_layer.unit_of_work import BillingUnitOfWork
from chassis import ids, pagination
from chassis.errors import FailedPrecondition, InvalidArgument
from chassis.fingerprints import fingerprint

UnitOfWorkFactory = Callable[..., BillingUnitOfWork]
MAX_KEY_LENGTH = 64


def list_instance_types(region: str, *, book: PriceBook) -> list[InstanceType]:
    if not region:
        return sorted(book.instance_types.values(), key=lambda t: t.instance_type)
    return book.types_in(region)


def quote(launch: LaunchPricing, *, book: PriceBook) -> Quote:
    return book.quote(launch)


def create_charge(launch: LaunchPricing, idempotency_key: str, instance_ids: list[str], account_id: str, *,
                  book: PriceBook, new_uow: UnitOfWorkFactory) -> Charge:
    """Records exactly one charge per idempotency key: a retry returns the first charge, and a key that
    ResolveCharge voided is refused for good."""
    _check_key(idempotency_key)
    priced = book.quote(launch)
    fingerprint = charge_fingerprint(launch, instance_ids)
    now = datetime.now(UTC)
    charge = Charge(ids.new_id("chg"), account_id, launch.region, priced, tuple(instance_ids), now,
                    idempotency_key, fingerprint)
    with new_uow() as uow:
        outcome = uow.charges.claim_key(account_id, idempotency_key, KeyOutcome.CHARGED, now)
        if outcome is KeyOutcome.VOID:
            raise _voided(idempotency_key)
        if uow.charges.add_unless_exists(charge):
            uow.commit()
            return charge
        first = uow.charges.by_idempotency_key(account_id, idempotency_key)
        uow.commit()
    if first is None or first.request_fingerprint not in (fingerprint, _legacy_fingerprint(launch, instance_ids)):
        raise FailedPrecondition("IDEMPOTENCY_PARAMETER_MISMATCH",
                                 "idempotency_key was used before for a different charge",
                                 subject=f"idempotency_key:{idempotency_key}")
    return first


def resolve_charge(idempotency_key: str, account_id: str, *, new_uow: UnitOfWorkFactory) -> Charge | None:
    """The charge recorded for the key, or None when there is none: then the key is void, and
    CreateCharge refuses it from now on, so a late or retried charge can never land."""
    _check_key(idempotency_key)
    with new_uow() as uow:
        outcome = uow.charges.claim_key(account_id, idempotency_key, KeyOutcome.VOID, datetime.now(UTC))
        charge = uow.charges.by_idempotency_key(account_id, idempotency_key)
        if outcome is KeyOutcome.VOID and charge is not None:  # charged before keys were claimed
            uow.charges.mark_key_charged(account_id, idempotency_key)
        uow.commit()
    return charge


def charge_fingerprint(launch: LaunchPricing, instance_ids: list[str]) -> str:
    return fingerprint("charge", **launch.fingerprint_fields(), instance_ids=sorted(instance_ids))


def _legacy_fingerprint(launch: LaunchPricing, instance_ids: list[str]) -> str:
    """How charges recorded before named-field fingerprints were fingerprinted (repr of the request)."""
    return hashlib.sha256(repr((launch, sorted(instance_ids))).encode()).hexdigest()


def _check_key(idempotency_key: str) -> None:
    if not idempotency_key or len(idempotency_key) > MAX_KEY_LENGTH:
        raise InvalidArgument("INVALID_IDEMPOTENCY_KEY", f"idempotency_key must be 1-{MAX_KEY_LENGTH} characters",
                              field="idempotency_key")


def _voided(idempotency_key: str) -> FailedPrecondition:
    return FailedPrecondition("LAUNCH_VOIDED", "this launch was voided when its outcome was resolved; it is "
                              "never charged", subject=f"idempotency_key:{idempotency_key}")


def list_charges(account_id: str, page_size: int, page_token: str, *,
                 new_uow: UnitOfWorkFactory) -> tuple[list[Charge], str]:
    size = pagination.clamp_page_size(page_size)
    fingerprint = pagination.fingerprint("charges", account_id)
    after = pagination.decode_int_page_token(page_token, fingerprint)
    with new_uow(read_only=True) as uow:
        rows = uow.charges.of_account(account_id, after, size + 1)
    page, next_token = pagination.page_of(rows, size, fingerprint, lambda row: str(row[0]))
    return [charge for _, charge in page], next_token
