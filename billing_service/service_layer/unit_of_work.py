from __future__ import annotations

from billing_service.adapters.repository import ChargeRepository
from chassis.db import UnitOfWork


class BillingUnitOfWork(UnitOfWork):
    charges: ChargeRepository

    def _begin(self) -> None:
        self.charges = ChargeRepository(self.connection)
