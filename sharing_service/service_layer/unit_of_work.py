from __future__ import annotations

from collections.abc import Callable

from chassis.db import UnitOfWork
from chassis.idempotency import RequestLedger
from sharing_service.adapters.repository import SHARE_ANSWER, SHARES_ANSWER, ShareRepository
from sharing_service.adapters.tables import REQUESTS
from sharing_service.adapters.trust_repository import POLICY_ANSWER, TrustPolicyRepository
from sharing_service.domain.model import Share
from sharing_service.domain.trust import TrustPolicy


class SharingUnitOfWork(UnitOfWork):
    shares: ShareRepository
    trust: TrustPolicyRepository
    # One request table; a ledger per kind of answer (a request_id reused on another RPC is refused all the same).
    share_requests: RequestLedger[list[Share]]
    decision_requests: RequestLedger[Share]
    policy_requests: RequestLedger[TrustPolicy]

    def _begin(self) -> None:
        self.shares = ShareRepository(self.connection)
        self.trust = TrustPolicyRepository(self.connection)
        self.share_requests = RequestLedger(self.connection, REQUESTS, SHARES_ANSWER)
        self.decision_requests = RequestLedger(self.connection, REQUESTS, SHARE_ANSWER)
        self.policy_requests = RequestLedger(self.connection, REQUESTS, POLICY_ANSWER)


UnitOfWorkFactory = Callable[..., SharingUnitOfWork]
