from __future__ import annotations

from chassis.db import UnitOfWork
from chassis.idempotency import RequestLedger
from gateway.adapters.repository import (
    INSTANCES_ANSWER,
    RESET_ANSWER,
    AccountRepository,
    InstanceRepository,
    LaunchRepository,
    ResetAnswer,
)
from gateway.adapters.tables import REQUESTS
from gateway.domain.instances import Instance


class GatewayUnitOfWork(UnitOfWork):
    accounts: AccountRepository
    instances: InstanceRepository
    launches: LaunchRepository
    # TerminateInstances and ResetInstance by request_id (one ledger table, one response format each).
    terminations: RequestLedger[list[Instance]]
    resets: RequestLedger[ResetAnswer]

    def _begin(self) -> None:
        self.accounts = AccountRepository(self.connection)
        self.instances = InstanceRepository(self.connection)
        self.launches = LaunchRepository(self.connection)
        self.terminations = RequestLedger(self.connection, REQUESTS, INSTANCES_ANSWER)
        self.resets = RequestLedger(self.connection, REQUESTS, RESET_ANSWER)
