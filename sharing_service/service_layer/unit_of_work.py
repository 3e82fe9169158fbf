from __future__ import annotations

from chassis.db import UnitOfWork
from sharing_service.adapters.repository import ShareRepository


class SharingUnitOfWork(UnitOfWork):
    shares: ShareRepository

    def _begin(self) -> None:
        self.shares = ShareRepository(self.connection)
