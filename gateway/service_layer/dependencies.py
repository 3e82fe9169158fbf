"""What the gateway's handlers depend on, passed by name; bootstrap picks real or fake ones."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass, field

from chassis.clock import Clock, SystemClock
from chassis.errors import InvalidArgument, clipped
from gateway.adapters.contexts import Billing, Catalog, Sharing
from gateway.domain.model import InstanceType, Region
from gateway.service_layer.unit_of_work import GatewayUnitOfWork


@dataclass
class ReferenceData:
    """Regions and instance types: published data that cannot change while the gateway runs, read
    once from the catalog and billing and kept, so that a launch spends no call on them."""

    catalog: Catalog
    billing: Billing
    _regions: dict[str, Region] | None = None
    _types: dict[str, InstanceType] | None = None
    _lock: asyncio.Lock = field(default_factory=asyncio.Lock)

    async def regions(self) -> dict[str, Region]:
        if self._regions is None:
            async with self._lock:
                if self._regions is None:
                    self._regions = {r.region_id: r for r in await self.catalog.regions()}
        return self._regions

    async def instance_types(self) -> dict[str, InstanceType]:
        if self._types is None:
            async with self._lock:
                if self._types is None:
                    self._types = {t.instance_type: t for t in await self.billing.instance_types()}
        return self._types

    async def region(self, region_id: str) -> Region:
        found = (await self.regions()).get(region_id)
        if found is None:
            raise InvalidArgument("UNKNOWN_REGION", f"region {clipped(region_id)!r} does not exist", field="region")
        return found


@dataclass
class Dependencies:
    catalog: Catalog
    sharing: Sharing
    billing: Billing
    reference: ReferenceData
    new_uow: Callable[..., GatewayUnitOfWork]
    clock: Clock = field(default_factory=SystemClock)
