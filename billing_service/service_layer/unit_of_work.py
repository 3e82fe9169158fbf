from __future__ import annotations

from billing_service.adapters.repository import ChargeRepository, MeterRepository
from chassis.db import UnitOfWork


class BillingUnitOfWork(UnitOfWork):
    charges: ChargeRepository
    meters: MeterRepository

    def _begin(self) -> None:
        self.charges = ChargeRepository(self.connection)
        self.meters = MeterRepository(self.connection)
