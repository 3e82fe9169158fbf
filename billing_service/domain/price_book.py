"""Reads the price book an operator publishes (a JSON data file).

The file's shape is declared below and checked by pydantic before anything is built from it, so a
broken file is refused in one line that names the file and the first problems in it.
"""

from __future__ import annotations

from decimal import Decimal
from pathlib import Path
from typing import Annotated

from pydantic import Field, TypeAdapter, ValidationError
from typing_extensions import TypedDict

from billing_service.domain.model import ChargeType, CpuArchitecture, InstanceType, MarketplaceProduct, PriceBook

DEFAULT_PRICE_BOOK = Path(__file__).resolve().parent.parent / "data" / "price_book.json"


class PriceBookError(Exception):
    """The price book cannot be read or is not a price book; the message names the file."""


Price = Annotated[Decimal, Field(ge=0, allow_inf_nan=False)]


class _Prices(TypedDict):
    POSTPAID_BY_HOUR: Price
    PREPAID: Price
    SPOTPAID: Price


class _Product(_Prices):
    provider: str
    name: str


class _InstanceType(TypedDict):
    instance_type: str
    family: str
    architecture: CpuArchitecture
    vcpus: Annotated[int, Field(gt=0)]
    memory_gb: Annotated[int, Field(gt=0)]


class _PriceBookFile(TypedDict):
    currency: Annotated[str, Field(pattern=r"^[A-Z]{3}$")]
    version: str
    instance_types: list[_InstanceType]
    # region -> instance type -> prices
    instance_prices: dict[str, dict[str, _Prices]]
    windows_license: dict[str, _Prices]
    marketplace_products: dict[str, _Product]


_FILE = TypeAdapter(_PriceBookFile)


def _prices(raw: _Prices) -> dict[ChargeType, Decimal]:
    return {charge: raw[charge.value] for charge in ChargeType}


def _parse(path: Path) -> _PriceBookFile:
    try:
        return _FILE.validate_json(path.read_bytes())
    except OSError as exc:
        raise PriceBookError(f"{path}: cannot read it: {exc.strerror}") from None
    except ValidationError as exc:
        errors = exc.errors(include_input=False, include_url=False)
        if errors[0]["type"] == "json_invalid":
            raise PriceBookError(f"{path}: invalid JSON: {errors[0]['ctx']['error']}") from None
        if not errors[0]["loc"]:
            raise PriceBookError(f"{path}: not a price book: it must be an object") from None
        problems = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in errors[:3])
        more = f" (and {len(errors) - 3} more)" if len(errors) > 3 else ""
        raise PriceBookError(f"{path}: not a price book: {problems}{more}") from None


def load_price_book(path: Path = DEFAULT_PRICE_BOOK) -> PriceBook:
    raw = _parse(path)
    offered: dict[str, list[str]] = {}
    for region, types in raw["instance_prices"].items():
        for name in types:
            offered.setdefault(name, []).append(region)
    instance_types = {
        t["instance_type"]: InstanceType(t["instance_type"], t["family"], t["architecture"],
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
