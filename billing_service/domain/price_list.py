"""The price book as a list a caller can read: one price per thing priced and charge type.

A marketplace product is priced the same wherever its images are offered (which regions that is, the
catalog knows; billing does not), so its prices carry no region ("") and are listed for any region.
"""

from __future__ import annotations

from dataclasses import dataclass
from decimal import Decimal

from billing_service.domain.model import (
    ChargeType,
    LineKind,
    PriceBook,
    instance_description,
    license_description,
)
from chassis.errors import InvalidArgument, clipped

_KIND_ORDER = {kind: n for n, kind in enumerate(LineKind)}
_CHARGE_ORDER = {charge: n for n, charge in enumerate(ChargeType)}

# (kind, region, instance type or marketplace product, charge type), in list order.
PriceKey = tuple[int, str, str, int]


@dataclass(frozen=True)
class Price:
    kind: LineKind
    region: str
    instance_type: str
    marketplace_product_id: str
    charge_type: ChargeType
    unit_price: Decimal
    description: str

    @property
    def unit(self) -> str:
        return self.charge_type.unit

    @property
    def key(self) -> PriceKey:
        """The list's order: instances, then licenses, then marketplace products; by region and name."""
        return (_KIND_ORDER[self.kind], self.region, self.instance_type or self.marketplace_product_id,
                _CHARGE_ORDER[self.charge_type])


def all_prices(book: PriceBook) -> list[Price]:
    """Every price in the book, in list order."""
    prices = [
        Price(LineKind.INSTANCE, region, name, "", charge, by_charge[charge],
              instance_description(name, region, charge))
        for region, by_type in book.instance_prices.items() for name, by_charge in by_type.items()
        for charge in ChargeType
    ]
    prices += [Price(LineKind.IMAGE_LICENSE, region, "", "", charge, by_charge[charge], license_description(region))
               for region, by_charge in book.windows_license.items() for charge in ChargeType]
    prices += [Price(LineKind.MARKETPLACE, "", "", product.product_id, charge, product.prices[charge],
                     product.description)
               for product in book.marketplace_products.values() for charge in ChargeType]
    return sorted(prices, key=lambda p: p.key)


@dataclass(frozen=True)
class PriceFilter:
    region: str = ""  # "": every region
    charge_type: ChargeType | None = None
    instance_type: str = ""  # only INSTANCE prices of this type

    def check(self, book: PriceBook) -> None:
        if self.region and self.region not in book.instance_prices:
            raise InvalidArgument("UNKNOWN_REGION", f"region {clipped(self.region)!r} has no price book",
                                  field="region")
        if self.instance_type and self.instance_type not in book.instance_types:
            raise InvalidArgument("UNKNOWN_INSTANCE_TYPE",
                                  f"instance type {clipped(self.instance_type)!r} is not in the price book",
                                  field="instance_type")

    def admits(self, price: Price) -> bool:
        return ((not self.region or price.region in (self.region, ""))
                and (self.charge_type is None or price.charge_type is self.charge_type)
                and (not self.instance_type or price.instance_type == self.instance_type))
