"""What the gateway's handlers depend on, passed by name: the three contexts as ports (what a handler may
ask of each), the gateway's own database, the clock. Bootstrap wires the real adapters
(gateway.adapters.contexts); handler tests pass fakes that implement the same ports."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Collection
from dataclasses import dataclass, field
from datetime import datetime
from typing import Protocol

from chassis.clock import Clock, SystemClock
from chassis.errors import InvalidArgument, clipped
from gateway.domain.instances import Instance, Launch, LaunchRequest, Reset
from gateway.domain.model import (
    CatalogKind,
    Charge,
    ChargeFilter,
    ChargeType,
    Image,
    ImageImport,
    ImageQuota,
    ImageShare,
    InstanceType,
    Price,
    Quote,
    Region,
    ShareState,
    TrustPolicy,
    Verdict,
)
from gateway.service_layer.unit_of_work import GatewayUnitOfWork


class CatalogPort(Protocol):
    """Regions and images (the catalog context)."""

    async def regions(self) -> list[Region]: ...

    async def image(self, image_id: str, region: str = "") -> Image:
        """The image, or its stand-in (``Image.missing``) when the catalog has no such image."""
        ...

    async def images(self, region: str, kinds: set[CatalogKind], shared_image_ids: list[str], platform: str,
                     name_filter: str, page_size: int, page_token: str) -> tuple[list[Image], str]: ...

    async def create_image(self, instance: Instance, name: str, description: str, request_id: str,
                           dry_run: bool) -> Image: ...

    async def import_image(self, spec: ImageImport, request_id: str, dry_run: bool) -> Image: ...

    async def update_image(self, image_id: str, name: str, description: str, paths: list[str],
                           request_id: str) -> Image: ...

    async def delete_image(self, image_id: str, request_id: str, validate_only: bool = False) -> None: ...

    async def sync_image(self, image_id: str, destination_regions: list[str], request_id: str,
                         dry_run: bool) -> list[Image]: ...

    async def quota(self, region: str) -> ImageQuota: ...


class SharingPort(Protocol):
    """Shares, trust policies and the launch verdict (the sharing context)."""

    async def verdict(self, image: Image) -> Verdict: ...

    async def verdicts(self, images: list[Image]) -> list[Verdict]:
        """The verdicts of many images (a page) in one call, in order."""
        ...

    async def share(self, image: Image, account_ids: list[str], request_id: str) -> list[ImageShare]: ...

    async def unshare(self, image: Image, account_ids: list[str], request_id: str) -> list[ImageShare]: ...

    async def shares_of(self, image: Image, page_size: int, page_token: str) -> tuple[list[ImageShare], str]: ...

    async def retire(self, image: Image) -> None: ...

    async def restore(self, image: Image) -> None: ...

    async def received(self, region: str, states: Collection[ShareState]) -> dict[str, ShareState]:
        """The images shared with the caller in a region, in these share states, and the state of each."""
        ...

    async def accept(self, image_id: str, request_id: str) -> ImageShare: ...

    async def reject(self, image_id: str, request_id: str) -> ImageShare: ...

    async def trust_policy(self) -> TrustPolicy: ...

    async def update_trust_policy(self, policy: TrustPolicy, paths: list[str], request_id: str) -> TrustPolicy: ...


class BillingPort(Protocol):
    """Instance types, prices, quotes and the ledger (the billing context)."""

    async def instance_types(self) -> list[InstanceType]: ...

    async def quote(self, request: LaunchRequest, image: Image) -> Quote: ...

    async def charge(self, launch: Launch) -> tuple[str, Quote]:
        """Charges a launch once: a retry with the same launch returns the first charge (its id, its quote)."""
        ...

    async def resolve(self, launch: Launch) -> tuple[str, Quote] | None:
        """The launch's charge if billing recorded one; None when it did not, and never will now."""
        ...

    async def quote_reset(self, reset: Reset) -> Quote: ...

    async def charge_reset(self, reset: Reset) -> Quote:
        """Records a reset's price change once per reset id; a retry returns the first charge's quote."""
        ...

    async def end_usage(self, instance_ids: list[str], end_time: datetime) -> None:
        """Ends the metering of terminated instances (idempotent)."""
        ...

    async def charges(self, filters: ChargeFilter, page_size: int, page_token: str) -> tuple[list[Charge], str]: ...

    async def prices(self, region: str, charge_type: ChargeType | None, instance_type: str, page_size: int,
                     page_token: str) -> tuple[list[Price], str]: ...


@dataclass
class ReferenceData:
    """Regions and instance types: published data that cannot change while the gateway runs, read
    once from the catalog and billing and kept, so that a launch spends no call on them."""

    catalog: CatalogPort
    billing: BillingPort
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
    catalog: CatalogPort
    sharing: SharingPort
    billing: BillingPort
    reference: ReferenceData
    new_uow: Callable[..., GatewayUnitOfWork]
    clock: Clock = field(default_factory=SystemClock)
