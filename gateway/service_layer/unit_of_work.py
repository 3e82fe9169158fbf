from __future__ import annotations

from chassis.db import UnitOfWork
from gateway.adapters.repository import AccountRepository, InstanceRepository, LaunchRepository


class GatewayUnitOfWork(UnitOfWork):
    accounts: AccountRepository
    instances: InstanceRepository
    launches: LaunchRepository

    def _begin(self) -> None:
        self.accounts = AccountRepository(self.connection)
        self.instances = InstanceRepository(self.connection)
        self.launches = LaunchRepository(self.connection)
