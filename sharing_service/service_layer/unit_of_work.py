from __future__ import annotations

from chassis.db import UnitOfWork
from chassis.idempotency import RequestLedger
from sharing_service.adapters.repository import SHARES_ANSWER, ShareRepository
from sharing_service.adapters.tables import REQUESTS
from sharing_service.domain.model import Share


class SharingUnitOfWork(UnitOfWork):
    shares: ShareRepository
    share_requests: RequestLedger[list[Share]]

    def _begin(self) -> None:
        self.shares = ShareRepository(self.connection)
        self.share_requests = RequestLedger(self.connection, REQUESTS, SHARES_ANSWER)
