"""Plain-text rendering of protobuf messages: enum names, timestamps, money and aligned tables."""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from decimal import Decimal
from typing import TYPE_CHECKING, Any, TypeAlias, TypeVar

from cloudimg.gateway.v1 import instance_service_pb2 as instance_pb
from google.protobuf import timestamp_pb2
from google.protobuf.descriptor import EnumDescriptor, FieldDescriptor
from google.protobuf.message import Message
from google.type import money_pb2

ValueT = TypeVar("ValueT", bound=int)

if TYPE_CHECKING:
    from google._upb import _message as upb
    from google.protobuf.internal.enum_type_wrapper import _EnumTypeWrapper

    # A generated enum (image_pb.ImageType): its descriptor, and its values as mypy-protobuf types them.
    EnumType: TypeAlias = _EnumTypeWrapper[ValueT]
    # A message's descriptors: the pure-Python implementation's or the upb backend's.
    AnyEnumDescriptor: TypeAlias = EnumDescriptor | upb.EnumDescriptor
    AnyFieldDescriptor: TypeAlias = FieldDescriptor | upb.FieldDescriptor

_CENT = Decimal("0.01")


def _enum_prefix(enum: AnyEnumDescriptor) -> str:
    """The prefix every value of a buf-linted enum carries: ImageType -> "IMAGE_TYPE_"."""
    return re.sub(r"(?<!^)(?=[A-Z])", "_", enum.name).upper() + "_"


def enum_name(enum: AnyEnumDescriptor, number: int) -> str:
    """IMAGE_TYPE_PUBLIC -> "PUBLIC"; a number this client does not know is shown as the number."""
    value = enum.values_by_number.get(number)
    return value.name.removeprefix(_enum_prefix(enum)) if value else str(number)


def enum_choices(enum: EnumType[Any]) -> list[str]:
    """The short names a user may type for an enum flag (UNSPECIFIED excluded)."""
    return [enum_name(enum.DESCRIPTOR, value.number) for value in enum.DESCRIPTOR.values if value.number]


def enum_number(enum: EnumType[ValueT], name: str) -> ValueT:
    """The value a short name stands for: (image_pb.ImageType, "PUBLIC") -> IMAGE_TYPE_PUBLIC."""
    return enum.Value(_enum_prefix(enum.DESCRIPTOR) + name)


def money(amount: money_pb2.Money) -> str:
    """Exact: at least cents, and every significant digit below them ("USD 0.12", "USD 0.0125")."""
    value = Decimal(amount.units) + Decimal(amount.nanos).scaleb(-9)
    cents = value.quantize(_CENT)
    shown = cents if cents == value else value.normalize()
    return f"{amount.currency_code} {shown:f}".strip()


def cell(message: Message, name: str) -> str:
    """One field of a message as table text; a repeated field's values joined by commas."""
    field = message.DESCRIPTOR.fields_by_name[name]
    value = getattr(message, name)
    if field.is_repeated:
        return ",".join(entries(message, name)) or "-"
    if field.enum_type is not None:
        return enum_name(field.enum_type, value) if value else "-"
    if field.message_type is not None:
        if not message.HasField(name):
            return "-"
        if field.message_type.full_name == "google.protobuf.Timestamp":
            stamp: timestamp_pb2.Timestamp = value
            return stamp.ToJsonString()
        if field.message_type.full_name == "google.type.Money":
            return money(value)
    if field.type == FieldDescriptor.TYPE_BOOL:
        return "yes" if value else "no"
    return str(value) if value != "" else "-"


def table(rows: Iterable[Sequence[str]], headers: Sequence[str] = ()) -> str:
    """Rows as left-aligned columns separated by two spaces."""
    lines = [list(headers)] if headers else []
    lines += [list(row) for row in rows]
    if not lines:
        return ""
    widths = [max(map(len, column)) for column in zip(*lines, strict=True)]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(line, widths, strict=True)).rstrip() for line in lines)


def columns(messages: Iterable[Message], names: Sequence[str]) -> str:
    """A table with one row per message and one column per field name."""
    return table(([cell(m, n) for n in names] for m in messages), [n.upper() for n in names])


def entries(message: Message, name: str) -> list[str]:
    """The values of a repeated field of scalars or enums, as text."""
    field = message.DESCRIPTOR.fields_by_name[name]
    values = getattr(message, name)
    if field.enum_type is not None:
        return [enum_name(field.enum_type, v) for v in values]
    return [str(v) for v in values]


def fields(message: Message, names: Sequence[str] = ()) -> str:
    """A two-column "field value" listing of one message (every field unless names are given); a repeated
    field has one value a line ("-" when it has none)."""
    names = names or [field.name for field in message.DESCRIPTOR.fields]
    rows = []
    for name in names:
        if message.DESCRIPTOR.fields_by_name[name].is_repeated:
            values = entries(message, name) or ["-"]
            rows += [[name, values[0]], *[["", v] for v in values[1:]]]
        else:
            rows.append([name, cell(message, name)])
    return table(rows)


def quote(q: instance_pb.Quote) -> str:
    """A cloudimg.gateway.v1.Quote: its itemized lines, then the total."""
    lines = columns(q.lines, ["kind", "description", "unit_price", "quantity", "unit", "amount"])
    return lines + "\n\n" + fields(q, ["total", "charge_type", "image_allowed"])


# --output text: tab-separated values, like `aws --output text`.

_VALUE_TYPES = ("google.protobuf.Timestamp", "google.type.Money")  # one cell each, not a record of their own


def text(response: Message) -> str:
    """A response as lines of tab-separated values, for scripts (cut, awk, read).

    Its scalar fields make the first line (next_page_token, when there is one, a line of its own named
    NEXT_PAGE_TOKEN); a repeated scalar field one line per value, named after the field (INSTANCE_IDS ins-1);
    each message it holds (an element of a repeated field, or a single one) a line named after its field
    (IMAGES, QUOTE) holding that message's scalar fields in the API's order, followed by the lines of the
    messages it holds in turn. A cell is a value as the tables show it ("" when unset, true or false for a
    boolean, a repeated field's values joined by commas)."""
    lines = []
    scalars = [f.name for f in response.DESCRIPTOR.fields
               if not _is_record(f) and not f.is_repeated and f.name != "next_page_token"]
    if scalars:
        lines.append("\t".join(text_cell(response, name) for name in scalars))
    for field in response.DESCRIPTOR.fields:
        if field.is_repeated and not _is_record(field):
            lines += [f"{field.name.upper()}\t{_clean(value)}" for value in entries(response, field.name)]
    lines += _records(response)
    token = getattr(response, "next_page_token", "")
    if token:
        lines.append(f"NEXT_PAGE_TOKEN\t{token}")
    return "\n".join(lines)


def _records(message: Message) -> list[str]:
    """The lines of the messages a message holds."""
    lines = []
    for field in message.DESCRIPTOR.fields:
        if not _is_record(field):
            continue
        if field.is_repeated:
            held = list(getattr(message, field.name))
        else:
            held = [getattr(message, field.name)] if message.HasField(field.name) else []
        for item in held:
            cells = [text_cell(item, f.name) for f in item.DESCRIPTOR.fields if not _is_record(f)]
            lines.append("\t".join([field.name.upper(), *cells]))
            lines += _records(item)
    return lines


def _is_record(field: AnyFieldDescriptor) -> bool:
    return field.message_type is not None and field.message_type.full_name not in _VALUE_TYPES


def text_cell(message: Message, name: str) -> str:
    field = message.DESCRIPTOR.fields_by_name[name]
    value = getattr(message, name)
    if field.is_repeated:
        return ",".join(_clean(v) for v in entries(message, name))
    if field.type == FieldDescriptor.TYPE_BOOL:
        return "true" if value else "false"
    if field.enum_type is not None and not value:
        return ""
    if field.message_type is not None and not message.HasField(name):
        return ""
    shown = cell(message, name)
    return _clean(shown) if shown != "-" or value == "-" else ""


def _clean(value: str) -> str:
    """A tab or a line break inside a value would split its cell or its line."""
    return " ".join(value.split("\t")).replace("\r", " ").replace("\n", " ")
