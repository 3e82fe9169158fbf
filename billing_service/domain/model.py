"""The billing context's domain: instance types, the price book, quotes and charges.

Money is exact: ``decimal.Decimal`` amounts in the price book's one currency.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from datetime import datetime
from decimal import Decimal

from chassis.errors import InvalidArgument

PREPAID_PERIODS = frozenset([*range(1, 13), 24, 36, 48, 60])
MAX_INSTANCES_PER_LAUNCH = 100


class ChargeType(enum.StrEnum):
    POSTPAID_BY_HOUR = "POSTPAID_BY_HOUR"
    PREPAID = "PREPAID"
    SPOTPAID = "SPOTPAID"

    @property
    def unit(self) -> str:
        return "instance-month" if self is ChargeType.PREPAID else "instance-hour"


class CpuArchitecture(enum.StrEnum):
    X86_64 = "X86_64"
    ARM64 = "ARM64"


class OsKind(enum.StrEnum):
    LINUX = "LINUX"
    WINDOWS = "WINDOWS"


class LineKind(enum.StrEnum):
    INSTANCE = "INSTANCE"
    IMAGE_LICENSE = "IMAGE_LICENSE"
    MARKETPLACE = "MARKETPLACE"


@dataclass(frozen=True)
class InstanceType:
    instance_type: str
    family: str
    architecture: CpuArchitecture
    vcpus: int
    memory_gb: int
    regions: tuple[str, ...] = ()


@dataclass(frozen=True)
class MarketplaceProduct:
    product_id: str
    provider: str
    name: str
    prices: dict[ChargeType, Decimal]

    @property
    def description(self) -> str:
        return f"{self.name} by {self.provider}"


def instance_description(instance_type: str, region: str, charge_type: ChargeType) -> str:
    return f"{instance_type} in {region} ({charge_type.value})"


def license_description(region: str) -> str:
    return f"Windows Server license in {region}"


@dataclass(frozen=True)
class ImagePricing:
    image_id: str
    os_kind: OsKind
    marketplace_product_id: str = ""


@dataclass(frozen=True)
class LaunchPricing:
    region: str
    instance_type: str
    instance_count: int
    charge_type: ChargeType
    period_months: int
    image: ImagePricing

    def fingerprint_fields(self) -> dict[str, object]:
        """The named fields that make two charge requests the same request."""
        return {"region": self.region, "instance_type": self.instance_type, "instance_count": self.instance_count,
                "charge_type": self.charge_type.value, "period_months": self.period_months,
                "image_id": self.image.image_id, "os_kind": self.image.os_kind.value,
                "marketplace_product_id": self.image.marketplace_product_id}

    def quantity(self) -> int:
        """Instance-hours for an hour of use, or instance-months for the whole prepaid period."""
        return self.instance_count * (self.period_months if self.charge_type is ChargeType.PREPAID else 1)


@dataclass(frozen=True)
class QuoteLine:
    kind: LineKind
    description: str
    unit_price: Decimal
    quantity: int
    unit: str

    @property
    def amount(self) -> Decimal:
        return self.unit_price * self.quantity


@dataclass(frozen=True)
class Quote:
    currency: str
    charge_type: ChargeType
    lines: tuple[QuoteLine, ...]

    @property
    def total(self) -> Decimal:
        return sum((line.amount for line in self.lines), Decimal(0))


class ChargeKind(enum.StrEnum):
    """What a ledger entry pays for (ACCRUED_USAGE is never stored: it is usage not settled yet)."""

    LAUNCH = "LAUNCH"
    RESET = "RESET"
    USAGE = "USAGE"
    ACCRUED_USAGE = "ACCRUED_USAGE"


class KeyOutcome(enum.StrEnum):
    """What became of a launch's idempotency key: charged once, or void (never to be charged)."""

    CHARGED = "CHARGED"
    VOID = "VOID"


@dataclass(frozen=True)
class Charge:
    charge_id: str
    account_id: str
    region: str
    quote: Quote
    instance_ids: tuple[str, ...]
    create_time: datetime
    idempotency_key: str = ""
    request_fingerprint: str = ""
    kind: ChargeKind = ChargeKind.LAUNCH
    # USAGE and ACCRUED_USAGE: the time their hours cover.
    usage_start_time: datetime | None = None
    usage_end_time: datetime | None = None

    @property
    def instance_id(self) -> str | None:
        """The one instance a reset or a usage charge is for (a launch pays for several)."""
        return None if self.kind is ChargeKind.LAUNCH else self.instance_ids[0]


@dataclass(frozen=True)
class ChargeFilter:
    """Which of an account's charges a listing wants."""

    instance_id: str = ""  # a well-formed instance id, or "": every charge
    start_time: datetime | None = None  # created at or after
    end_time: datetime | None = None  # created before


@dataclass
class PriceBook:
    """What an operator publishes: instance types, and prices per region and charge type."""

    currency: str
    version: str
    instance_types: dict[str, InstanceType]
    # region -> instance type -> charge type -> unit price
    instance_prices: dict[str, dict[str, dict[ChargeType, Decimal]]]
    # region -> charge type -> unit price of a Windows license (regions without one are absent)
    windows_license: dict[str, dict[ChargeType, Decimal]]
    marketplace_products: dict[str, MarketplaceProduct] = field(default_factory=dict)

    def types_in(self, region: str) -> list[InstanceType]:
        offered = self.instance_prices.get(region)
        if offered is None:
            raise InvalidArgument("UNKNOWN_REGION", f"region {region!r} has no price book", field="region")
        return [self.instance_types[name] for name in sorted(offered)]

    def quote(self, launch: LaunchPricing) -> Quote:
        """The itemized price of a launch: instances, the Windows license, the marketplace product."""
        check_launch(launch)
        by_type = self.instance_prices.get(launch.region)
        if by_type is None:
            raise InvalidArgument("UNKNOWN_REGION", f"region {launch.region!r} has no price book", field="region")
        prices = by_type.get(launch.instance_type)
        if prices is None:
            raise InvalidArgument(
                "INSTANCE_TYPE_NOT_OFFERED",
                f"instance type {launch.instance_type!r} is not offered in {launch.region}", field="instance_type",
            )
        charge, quantity, unit = launch.charge_type, launch.quantity(), launch.charge_type.unit
        lines = [QuoteLine(LineKind.INSTANCE, instance_description(launch.instance_type, launch.region, charge),
                           prices[charge], quantity, unit)]
        license_prices = self.windows_license.get(launch.region)
        if launch.image.os_kind is OsKind.WINDOWS and license_prices:
            lines.append(QuoteLine(LineKind.IMAGE_LICENSE, license_description(launch.region),
                                   license_prices[charge], quantity, unit))
        if launch.image.marketplace_product_id:
            product = self.marketplace_products.get(launch.image.marketplace_product_id)
            if product is None:  # an image whose product was withdrawn from the book cannot be priced
                raise InvalidArgument(
                    "MARKETPLACE_PRODUCT_UNKNOWN",
                    f"marketplace product {launch.image.marketplace_product_id!r} has no price", field="image_id",
                )
            lines.append(QuoteLine(LineKind.MARKETPLACE, product.description, product.prices[charge], quantity, unit))
        return Quote(self.currency, charge, tuple(lines))


def check_launch(launch: LaunchPricing) -> None:
    if not 1 <= launch.instance_count <= MAX_INSTANCES_PER_LAUNCH:
        raise InvalidArgument("INVALID_INSTANCE_COUNT",
                              f"instance_count must be between 1 and {MAX_INSTANCES_PER_LAUNCH}",
                              field="instance_count")
    if launch.charge_type is ChargeType.PREPAID:
        if launch.period_months not in PREPAID_PERIODS:
            raise InvalidArgument("INVALID_PERIOD", "period_months must be 1-12, 24, 36, 48 or 60 for PREPAID",
                                  field="period_months")
    elif launch.period_months:
        raise InvalidArgument("INVALID_PERIOD", "period_months applies to PREPAID only", field="period_months")
