"""Reads the price book an operator publishes (a JSON data file)."""

from __future__ import annotations

import json
from decimal import Decimal
from pathlib import Path
from typing import Any

from billing_service.domain.model import ChargeType, CpuArchitecture, InstanceType, MarketplaceProduct, PriceBook

DEFAULT_PRICE_BOOK = Path(__file__).resolve().parent.parent / "data" / "price_book.json"


def _prices(raw: dict[str, Any]) -> dict[ChargeType, Decimal]:
    return {charge: Decimal(raw[charge.value]) for charge in ChargeType}


def load_price_book(path: Path = DEFAULT_PRICE_BOOK) -> PriceBook:
    raw = json.loads(path.read_text())
    offered: dict[str, list[str]] = {}
    for region, types in raw["instance_prices"].items():
        for name in types:
            offered.setdefault(name, []).append(region)
    instance_types = {
        t["instance_type"]: InstanceType(t["instance_type"], t["family"], CpuArchitecture(t["architecture"]),
                                         t["vcpus"], t["memory_gb"], tuple(sorted(offered.get(t["instance_type"], []))))
        for t in raw["instance_types"]
    }
    return PriceBook(
        currency=raw["currency"],
        version=raw["version"],
        instance_types=instance_types,
        instance_prices={region: {name: _prices(p) for name, p in types.items()}
                         for region, types in raw["instance_prices"].items()},
        windows_license={region: _prices(p) for region, p in raw["windows_license"].items()},
        marketplace_products={
            product_id: MarketplaceProduct(product_id, p["provider"], p["name"], _prices(p))
            for product_id, p in raw["marketplace_products"].items()
        },
    )
