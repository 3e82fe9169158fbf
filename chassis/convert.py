"""Translations between protobuf and the domain that every servicer needs."""

from __future__ import annotations

import enum
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any, Generic, TypeVar

from google.protobuf import timestamp_pb2
from google.type import money_pb2

from chassis.errors import InvalidArgument

E = TypeVar("E", bound=enum.Enum)


class EnumMap(Generic[E]):
    """Maps a domain enum to a proto enum whose values are ``<PREFIX>_<NAME>``."""

    def __init__(self, proto_enum: Any, prefix: str, domain_enum: type[E]):
        self._to_proto = {member: proto_enum.Value(f"{prefix}_{member.name}") for member in domain_enum}
        self._from_proto = {number: member for member, number in self._to_proto.items()}
        self._prefix = prefix

    def to_proto(self, member: E | None) -> Any:  # the proto enum's ValueType
        """The proto value; the zero (UNSPECIFIED) value for None."""
        return 0 if member is None else self._to_proto[member]

    def from_proto(self, number: int, field: str, default: E | None = None) -> E:
        found = self._from_proto.get(number)
        if found is not None:
            return found
        if number == 0 and default is not None:
            return default
        raise InvalidArgument("INVALID_ENUM_VALUE", f"{field} must be one of "
                              + ", ".join(f"{self._prefix}_{m.name}" for m in self._to_proto), field=field)


def optional_time(message: Any, field: str) -> datetime | None:
    """A Timestamp field as a (naive UTC) datetime, or None when it is not set."""
    if not message.HasField(field):
        return None
    moment: datetime = getattr(message, field).ToDatetime()
    return moment


def requested_time(message: Any, name: str, field: str | None = None) -> datetime | None:
    """A caller's optional Timestamp field, as ``optional_time``; one that is no time (seconds beyond year
    9999, nanos outside 0-999999999) is INVALID_TIMESTAMP, naming ``field`` (default: the field's name)."""
    try:
        return optional_time(message, name)
    except (ValueError, OverflowError, OSError):
        field = field or name
        raise InvalidArgument("INVALID_TIMESTAMP", f"{field} is not a valid time", field=field) from None


def timestamp(moment: datetime) -> timestamp_pb2.Timestamp:
    stamp = timestamp_pb2.Timestamp()
    stamp.FromDatetime(moment if moment.tzinfo else moment.replace(tzinfo=UTC))
    return stamp


_NANOS = Decimal(1_000_000_000)


def money(currency: str, amount: Decimal) -> money_pb2.Money:
    """An exact google.type.Money (amounts finer than a nano are refused, never rounded)."""
    nanos_total = amount * _NANOS
    if nanos_total != nanos_total.to_integral_value():
        raise ValueError(f"{amount} is finer than google.type.Money can carry")
    units, nanos = divmod(int(nanos_total), 1_000_000_000)
    if units < 0 and nanos:  # units and nanos must share a sign
        units, nanos = units + 1, nanos - 1_000_000_000
    return money_pb2.Money(currency_code=currency, units=units, nanos=nanos)


def decimal_of(value: money_pb2.Money) -> Decimal:
    return Decimal(value.units) + Decimal(value.nanos) / _NANOS
