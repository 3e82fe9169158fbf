"""The billing context's use cases."""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from datetime import UTC, datetime

from billing_service.domain.model import Charge, InstanceType, LaunchPricing, PriceBook, Quote
from billing_service.service_layer.unit_of_work import BillingUnitOfWork
from chassis import ids, pagination
from chassis.errors import FailedPrecondition, InvalidArgument

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
    """Records exactly one charge per idempotency key: a retry returns the first charge."""
    if not idempotency_key or len(idempotency_key) > MAX_KEY_LENGTH:
        raise InvalidArgument("INVALID_IDEMPOTENCY_KEY", f"idempotency_key must be 1-{MAX_KEY_LENGTH} characters",
                              field="idempotency_key")
    priced = book.quote(launch)
    fingerprint = hashlib.sha256(repr((launch, sorted(instance_ids))).encode()).hexdigest()
    charge = Charge(ids.new_id("chg"), account_id, launch.region, priced, tuple(instance_ids), datetime.now(UTC),
                    idempotency_key, fingerprint)
    with new_uow() as uow:
        if uow.charges.add_unless_exists(charge):
            uow.commit()
            return charge
        first = uow.charges.by_idempotency_key(account_id, idempotency_key)
    if first is None or first.request_fingerprint != fingerprint:
        raise FailedPrecondition("IDEMPOTENCY_PARAMETER_MISMATCH",
                                 "idempotency_key was used before for a different charge",
                                 subject=f"idempotency_key:{idempotency_key}")
    return first


def list_charges(account_id: str, page_size: int, page_token: str, *,
                 new_uow: UnitOfWorkFactory) -> tuple[list[Charge], str]:
    size = pagination.clamp_page_size(page_size)
    fingerprint = pagination.fingerprint("charges", account_id)
    after = pagination.decode_page_token(page_token, fingerprint)
    if after is not None and not after.isdigit():
        raise InvalidArgument("INVALID_PAGE_TOKEN", "page_token is not valid", field="page_token")
    with new_uow(read_only=True) as uow:
        rows = uow.charges.of_account(account_id, int(after) if after else None, size + 1)
    page, next_token = pagination.page_of(rows, size, fingerprint, lambda row: str(row[0]))
    return [charge for _, charge in page], next_token
