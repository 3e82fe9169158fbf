"""A structure-aware fuzzer over every public RPC, against the real processes of the session's stack.

What is fuzzed: every method of the gateway's public services, enumerated from the generated descriptors
(a new RPC is fuzzed without editing this file). Requests are built by ``messages(descriptor)``, which walks
the message's fields: hostile strings (control characters, NUL, 10k characters, unicode, SQL, format
strings, path traversal, ids of the right shape and real ids of the stack), integers at and beyond their
limits, unknown enum numbers, nested and repeated messages, maps, oneofs, Timestamps and FieldMasks (any
other message type, such as google.type.Money, by the same walk); and plausible requests, every field of
the right kind, that get past validation to launches, resets, shares and imports. Beside
them go garbage bodies (random bytes, mangled encodings, a body over the size limit) and bad metadata (no
key, a wrong key, a malformed header, a huge header value, odd x-request-ids, spoofed internal headers).

What fails the test: a status of UNKNOWN, INTERNAL or DATA_LOSS; exception, stack-trace or SQL text in a
status message or detail; an error without a google.rpc.Status holding exactly one ErrorInfo (reason in
UPPER_SNAKE_CASE) and the detail its code needs (SPEC, "Errors"); bad credentials answered with anything
but UNAUTHENTICATED; a caller identified as someone else; any RPC that got no call; fewer than
MIN_CALLS calls; and, at the end, a service process that exited or whose health is not SERVING.

Calls that may change something (anything but Get*, List*, Quote*) are made only by two accounts made for
the fuzzer; alice and bob, whom the other tests of the session stack rely on, only make calls that change
nothing, so that the fuzzer never deletes their images, uses up their quotas or changes their trust
policies (AccountService has no RPC that revokes a key, so no call needs excluding).
"""

from __future__ import annotations

import asyncio
import re
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from functools import cache, partial
from typing import TYPE_CHECKING, Any, TypeVar

import grpc
import pytest
from cloudimg.gateway.v1 import (
    account_service_pb2,
    account_service_pb2_grpc,
    image_service_pb2,
    image_share_service_pb2,
    instance_service_pb2,
)
from google.protobuf import field_mask_pb2, text_format, timestamp_pb2
from google.protobuf.descriptor import Descriptor, FieldDescriptor
from google.protobuf.message import Message
from google.protobuf.message_factory import GetMessageClass
from google.rpc import code_pb2, error_details_pb2, status_pb2
from grpc_health.v1 import health_pb2, health_pb2_grpc
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st

from catalog_service.domain.seed import DEMO_REGION, REGIONS, seed_image_id
from devtools.stack import SERVICES, Stack
from gateway.domain.api_keys import Account
from tests.conftest import ALICE, BOB, rich_status, unpacked_details
from tests.fault.conftest import Figures

if TYPE_CHECKING:
    from hypothesis.vendor.pretty import RepresentationPrinter

MIN_CALLS = 10_000
BATCH = 50  # calls drawn per example and sent at once over one channel
EXAMPLES = MIN_CALLS // BATCH + 10
CALL_TIMEOUT = 30.0
HOME = DEMO_REGION  # where the plausible calls go: ap-guangzhou
FUZZERS = (Account("190000000001", "fuzzer-a"), Account("190000000002", "fuzzer-b"))
T = TypeVar("T")

# ---------------------------------------------------------------------------------------------------------
# The public RPCs


@dataclass(frozen=True)
class Rpc:
    path: str
    request: type[Message]
    response: type[Message]

    @property
    def name(self) -> str:
        return self.path.rsplit("/", 1)[1]

    @property
    def changes_nothing(self) -> bool:
        return self.name.startswith(("Get", "List", "Quote"))


def public_rpcs() -> list[Rpc]:
    modules = (account_service_pb2, image_service_pb2, image_share_service_pb2, instance_service_pb2)
    return [
        Rpc(f"/{service.full_name}/{method.name}", GetMessageClass(method.input_type),
            GetMessageClass(method.output_type))
        for module in modules for service in module.DESCRIPTOR.services_by_name.values()
        for method in service.methods
    ]


RPCS = public_rpcs()

# ---------------------------------------------------------------------------------------------------------
# What is known of the stack: real values, by the kind of field they go in; ids seen in answers join them.


def kind_of(field_name: str) -> str | None:
    """The kind of real value a field holds, by its name (image_id, base_image_id, instance_ids, ...)."""
    for part, kind in (("image_id", "image"), ("instance_id", "instance"), ("account_id", "account"),
                       ("token", "token"), ("request_id", "token"), ("region", "region"),
                       ("instance_type", "instance_type"), ("uri", "uri"), ("provider", "provider"),
                       ("currency", "currency")):
        if part in field_name:
            return kind
    return None


@dataclass(eq=False)  # hashable by identity: the strategies built for it are cached
class Known:
    pools: dict[str, list[str]] = field(default_factory=dict)
    limit: int = 300

    def add(self, kind: str, value: str) -> None:
        pool = self.pools.setdefault(kind, [])
        if value and value not in pool and len(pool) < self.limit:
            pool.append(value)

    def pick(self, kind: str, index: int) -> str:
        """A value of the kind ("image"; "image:home" for the plausible ones, in the home region)."""
        pool = self.pools.get(kind) or self.pools.get(kind.split(":")[0]) or [""]
        return pool[index % len(pool)]

    def learn(self, message: Message) -> None:
        """Adds the ids, tokens and regions of an answer."""
        for fd, value in message.ListFields():
            if fd.type == FieldDescriptor.TYPE_MESSAGE:
                for item in (value.values() if _is_map(fd) else value if _is_repeated(fd) else [value]):
                    if isinstance(item, Message):
                        self.learn(item)
            elif fd.type == FieldDescriptor.TYPE_STRING and (kind := kind_of(fd.name)) is not None:
                for item in value if _is_repeated(fd) else [value]:
                    self.add(kind, item)
                    if kind not in ("region", "instance_type"):  # plausible calls: the home region, x86
                        self.add(f"{kind}:home", item)


def seeded_known(stack: Stack) -> Known:
    known = Known()
    seeded = {
        "region": [r.region_id for r in REGIONS] + ["", "AP-GUANGZHOU", "ap-nowhere"],
        "image": [seed_image_id(r.region_id, key) for r in REGIONS for key in ("ubuntu-2204-x86", "ubuntu-2204-arm",
                                                                              "windows-2022-x86", "wordpress")]
                 + [seed_image_id(DEMO_REGION, key) for key in ("alice-web", "alice-blog", "bob-arm")],
        "instance": ["ins-00000000", "ins-zzzzzzzz"],
        "account": [a.account_id for a in FUZZERS] + [ALICE, BOB, "000000000000", "999999999999"],
        "instance_type": ["S5.MEDIUM4", "S5.SMALL2", "SA2.MEDIUM4", "s5.medium4"],
        "token": ["fuzz-token-1", "fuzz-token-2", "x" * 64, "x" * 65],
        "uri": [f"file://{stack.imports_dir}/missing.raw", f"file://{stack.imports_dir}/../gateway.db",
                "file:///etc/passwd", f"http://127.0.0.1:{stack.ports['gateway']}/disk.raw",
                "http://localhost:1/disk.raw", "http://169.254.169.254/latest/meta-data/", "s3://bucket/x.qcow2"],
        "provider": ["Bitnami", "BT Panel", "bitnami"],
        "currency": ["USD", "CNY", "XXX", "usd"],
    }
    home = {
        "region:home": [HOME],
        "image:home": [seed_image_id(HOME, key) for key in ("ubuntu-2204-x86", "ubuntu-2204-arm", "windows-2022-x86",
                                                            "wordpress", "lamp")],
        "account:home": [a.account_id for a in FUZZERS] + [ALICE, BOB],
        "instance_type:home": ["S5.MEDIUM4"],
        "token:home": ["fuzz-token-1", "fuzz-token-2", "fuzz-token-3"],
        "uri:home": [f"file://{stack.imports_dir}/missing.raw", f"http://127.0.0.1:{stack.ports['gateway']}/d.raw"],
    }
    for kind, values in {**seeded, **home}.items():
        for value in values:
            known.add(kind, value)
    return known


# ---------------------------------------------------------------------------------------------------------
# Strategies built from the message descriptors

HOSTILE_STRINGS = [
    "", " ", "\x00", "img-\x00abcdefg", "a\x00b", "\x01\x02\x1b[31m\x7f", "\x85\x9f", "\t\n\r", "x" * 10_000,
    "é" * 3000, "\U0001f600" * 100, "\u202egnp.exe", "\ufeffname", "Ω≈ç√∫", "' OR 1=1 --",
    "'; DROP TABLE images; --", '" OR ""="', "%s%s%s%n", "%(name)s", "{0}{1}{__class__}", "${jndi:ldap://x}",
    "../../../../etc/passwd", "..\\..\\..\\windows\\win.ini", "/dev/zero", "*", "%", "_", "null", "None",
    "-1", "1e309", "NaN", "<script>alert(1)</script>", "img-", "img-ABCDEFGH", "img-abcdefg", "img-abcdefghi",
    "ins-", "ins-ABCDEFGH", "img-abcdefgh ", " img-abcdefgh", "ins-abcdefgh\n",
]
MASK_PATHS = [*sorted({f.name for m in (image_service_pb2, image_share_service_pb2)
                       for d in m.DESCRIPTOR.message_types_by_name.values() for f in d.fields}),
              "*", "", "image.name", "policy.mode"]
_ID_CHARS = "abcdefghijklmnopqrstuvwxyz0123456789"
_NAME_CHARS = "abcxyz-_ 019"
# plausible numbers by a part of the field's name (instance_count, system_disk_gb, period_months, page_size)
_PLAUSIBLE_INTS = {"count": [1, 2, 1], "disk": [0, 50, 60], "period": [0, 1, 0], "size": [0, 10, 1]}
_INT_LIMITS = {
    FieldDescriptor.CPPTYPE_INT32: (-2**31, 2**31 - 1), FieldDescriptor.CPPTYPE_INT64: (-2**63, 2**63 - 1),
    FieldDescriptor.CPPTYPE_UINT32: (0, 2**32 - 1), FieldDescriptor.CPPTYPE_UINT64: (0, 2**64 - 1),
}
_EDGE_INTS = [0, 1, -1, 2, 12, 13, 24, 50, 51, 99, 100, 101, 200, 1000, 1001, 2**31 - 1, -2**31, 2**32,
              2**53 + 1, 2**63 - 1, -2**63, 2**64 - 1]


def _as_is(value: T) -> T:
    return value


def weighted(*choices: tuple[int, st.SearchStrategy[T]]) -> st.SearchStrategy[T]:
    """One of the strategies, each as often as its weight says. st.one_of draws its branches evenly but counts
    a strategy given twice once, so each copy is made a distinct strategy (flatmap would do it, ten times slower)."""
    return st.one_of(*(s.map(_as_is) for weight, s in choices for _ in range(weight)))


def _is_repeated(fd: FieldDescriptor) -> bool:
    return bool(fd.is_repeated)


def _is_map(fd: FieldDescriptor) -> bool:
    return fd.type == FieldDescriptor.TYPE_MESSAGE and fd.message_type is not None and \
        fd.message_type.GetOptions().map_entry


def shaped_strings(kind: str | None, known: Known) -> st.SearchStrategy[str]:
    """Strings of the shape a field of this kind expects: real values, and new ones of the right shape."""
    real = st.integers(0, 2**16).map(partial(known.pick, kind)) if kind else st.nothing()
    made = {
        "image": st.text(_ID_CHARS, min_size=8, max_size=8).map("img-".__add__),
        "instance": st.text(_ID_CHARS, min_size=8, max_size=8).map("ins-".__add__),
        "account": st.text("0123456789", min_size=12, max_size=12),
        "token": st.text(st.characters(codec="ascii"), min_size=1, max_size=70),
    }.get(kind or "", st.text(max_size=30))
    return weighted((2, real), (1, made))


def strings(fd: FieldDescriptor, known: Known, plausible: bool) -> st.SearchStrategy[str]:
    kind = kind_of(fd.name)
    if plausible:
        return st.integers(0, 2**16).map(partial(known.pick, f"{kind}:home")) if kind \
            else st.text(_NAME_CHARS, min_size=1, max_size=12)
    # mostly of the right shape, so that calls get past validation into the services
    shaped = shaped_strings(kind, known)
    return weighted((1, st.sampled_from(HOSTILE_STRINGS)), (1, st.text(max_size=20)), (3, shaped))


def integers(fd: FieldDescriptor, plausible: bool) -> st.SearchStrategy[int]:
    if plausible:
        return st.sampled_from(next((v for k, v in _PLAUSIBLE_INTS.items() if k in fd.name), [0, 1, 2]))
    low, high = _INT_LIMITS[fd.cpp_type]
    return st.one_of(st.sampled_from([i for i in _EDGE_INTS if low <= i <= high]), st.integers(low, high))


def enums(fd: FieldDescriptor, plausible: bool) -> st.SearchStrategy[int]:
    """Proto3 enums are open: besides the declared numbers, any int32."""
    assert fd.enum_type is not None, fd.full_name
    declared = [v.number for v in fd.enum_type.values]
    if plausible:
        return st.sampled_from(declared[1:] or declared)  # not _UNSPECIFIED
    return weighted((2, st.sampled_from(declared)), (1, st.integers(-2**31, 2**31 - 1)))


def scalars(fd: FieldDescriptor, known: Known, plausible: bool) -> st.SearchStrategy[Any]:
    if fd.type == FieldDescriptor.TYPE_STRING:
        return strings(fd, known, plausible)
    if fd.type == FieldDescriptor.TYPE_BYTES:
        return st.binary(max_size=64)
    if fd.cpp_type == FieldDescriptor.CPPTYPE_BOOL:
        return st.booleans()
    if fd.cpp_type == FieldDescriptor.CPPTYPE_ENUM:
        return enums(fd, plausible)
    if fd.cpp_type in (FieldDescriptor.CPPTYPE_FLOAT, FieldDescriptor.CPPTYPE_DOUBLE):
        return st.floats(width=32 if fd.cpp_type == FieldDescriptor.CPPTYPE_FLOAT else 64)
    return integers(fd, plausible)


def timestamps(plausible: bool) -> st.SearchStrategy[Message]:
    """Real moments (around now, and the extremes a Timestamp allows), besides the generic walk's any ints."""
    now = int(time.time())
    seconds = st.integers(now - 86_400 * 30, now + 86_400 * 30)
    if plausible:
        return st.builds(timestamp_pb2.Timestamp, seconds=seconds)
    seconds |= st.sampled_from([0, -62_135_596_800, 253_402_300_799, -62_135_596_801, 253_402_300_800])
    return st.builds(timestamp_pb2.Timestamp, seconds=seconds, nanos=st.sampled_from([0, 999_999_999, 10**9, -1]))


def field_masks(plausible: bool) -> st.SearchStrategy[Message]:
    path = st.sampled_from(MASK_PATHS) if plausible else \
        st.one_of(st.sampled_from(MASK_PATHS), st.sampled_from(HOSTILE_STRINGS))
    return st.builds(field_mask_pb2.FieldMask, paths=st.lists(path, max_size=3))


_WELL_KNOWN = {"google.protobuf.Timestamp": timestamps, "google.protobuf.FieldMask": field_masks}
MAX_DEPTH = 4


def values(fd: FieldDescriptor, known: Known, depth: int, plausible: bool) -> st.SearchStrategy[Any]:
    """What one field is set to: a value, a list of them, or a dict for a map."""
    if _is_map(fd):
        assert fd.message_type is not None  # a map's entry
        key, value = fd.message_type.fields_by_name["key"], fd.message_type.fields_by_name["value"]
        return st.dictionaries(scalars(key, known, plausible), values(value, known, depth + 1, plausible),
                               max_size=4)
    one = messages(fd.message_type, known, depth + 1, plausible) if fd.type == FieldDescriptor.TYPE_MESSAGE \
        else scalars(fd, known, plausible)
    if not _is_repeated(fd):
        return one
    if plausible:
        return st.lists(one, min_size=1, max_size=2)
    # a few entries, or one entry many times over (past every "at most N"), kept under the request size limit
    # that the server answers with a rich status (a longer list is the garbage bodies' part)
    many = st.tuples(one, st.sampled_from([51, 101, 201, 1001])).filter(
        lambda pair: _encoded_size(pair[0]) * pair[1] <= MANY_BYTES).map(lambda pair: [pair[0]] * pair[1])
    return weighted((3, st.lists(one, max_size=4)), (1, many))


# The most a field's repeated entries take (the server reads up to 1 MiB with a rich MESSAGE_TOO_LARGE beyond).
MANY_BYTES = 512 * 1024


def _encoded_size(value: object) -> int:
    """About what one entry of a repeated field takes on the wire."""
    if isinstance(value, Message):
        return value.ByteSize() + 2
    if isinstance(value, str):
        return len(value.encode("utf-8", "surrogatepass")) + 2
    if isinstance(value, bytes):
        return len(value) + 2
    return 10


def _set(message: Message, fd: FieldDescriptor, value: Any) -> None:
    if _is_map(fd):
        target = getattr(message, fd.name)
        for key, item in value.items():
            if isinstance(item, Message):
                target[key].CopyFrom(item)
            else:
                target[key] = item
    elif _is_repeated(fd):
        getattr(message, fd.name).extend(value)
    elif isinstance(value, Message):
        getattr(message, fd.name).CopyFrom(value)
    else:
        setattr(message, fd.name, value)


def _built(descriptor: Descriptor, chosen: list[tuple[FieldDescriptor, Any]]) -> Message:
    message = GetMessageClass(descriptor)()
    for fd, value in chosen:
        _set(message, fd, value)
    return message


@cache
def messages(descriptor: Descriptor, known: Known, depth: int = 0, plausible: bool = False
             ) -> st.SearchStrategy[Message]:
    """Messages of this type, down to MAX_DEPTH. Hostile ones have any of their fields set to anything (at
    most one field of each oneof); plausible ones have every field set to a value of the right kind (real ids,
    the home region, small numbers, declared enum values), so that they reach the services' own rules."""
    if depth > MAX_DEPTH:
        return st.just(GetMessageClass(descriptor)())
    generic = _generic(descriptor, known, depth, plausible)
    if descriptor.full_name in _WELL_KNOWN:
        special = _WELL_KNOWN[descriptor.full_name](plausible)
        return special if plausible else st.one_of(special, generic)
    return generic


def _generic(descriptor: Descriptor, known: Known, depth: int, plausible: bool) -> st.SearchStrategy[Message]:
    alone = {fd: values(fd, known, depth, plausible) for fd in descriptor.fields if fd.containing_oneof is None}
    groups = [oneof.fields for oneof in descriptor.oneofs]
    chosen = st.fixed_dictionaries(alone) if plausible else st.fixed_dictionaries({}, optional=alone)
    parts: list[st.SearchStrategy[list[tuple[FieldDescriptor, Any]]]] = [chosen.map(lambda c: list(c.items()))]
    for group in groups:  # one member of the oneof, or none
        members = [values(fd, known, depth, plausible).map(partial(lambda fd, v: [(fd, v)], fd)) for fd in group]
        parts.append(st.one_of(st.just([]), *members))
    return st.tuples(*parts).map(lambda lists: _built(descriptor, [pair for chosen in lists for pair in chosen]))


# Bodies that are not the method's message: random bytes, a real encoding cut short or with bytes changed,
# and a few classics (a length past the end, an invalid wire type, deep nesting, a body over the limit).
OVERSIZED_BODY = b"\x12" + b"\x80\x80\x60" + b"A" * 1_572_864
CLASSIC_BODIES = [b"\x0a\xff\xff\xff\xff\x0f", b"\x0f", b"\x0b" * 100, b"\x08" + b"\xff" * 11, b"\x12\x05ab",
                  b"\x0a" * 5000, b"\xff" * 20, b"\x07\x00", b"\x0a\x02\xc3\x28", b"\x0a\x04\xed\xa0\x80\x00",
                  b"\x0a\x01\x00", OVERSIZED_BODY]


def _mangled(encoded: bytes, at: int, junk: bytes, how: int) -> bytes:
    cut = at % (len(encoded) + 1)
    return (encoded[:cut], encoded[:cut] + junk + encoded[cut + len(junk):], encoded + junk)[how]


def garbage(rpc: Rpc, known: Known) -> st.SearchStrategy[bytes]:
    encoded = messages(rpc.request.DESCRIPTOR, known).map(lambda m: m.SerializeToString())
    mangled = st.builds(_mangled, encoded, st.integers(0, 2**16), st.binary(min_size=1, max_size=8),
                        st.integers(0, 2))
    return st.one_of(st.binary(max_size=64), mangled, st.sampled_from(CLASSIC_BODIES))


# ---------------------------------------------------------------------------------------------------------
# Who calls: the fuzzer's accounts, alice and bob (calls that change nothing), and callers who are no one.


@dataclass(frozen=True)
class Identity:
    label: str
    metadata: tuple[tuple[str, str], ...]
    account_id: str | None  # None: the gateway must refuse it (UNAUTHENTICATED)
    may_change: bool = False


def _bearer(key: str) -> tuple[tuple[str, str], ...]:
    return (("authorization", f"Bearer {key}"),)


def bad_credentials(alice_key: str) -> list[Identity]:
    wrong_secret = alice_key[:-1] + ("A" if alice_key[-1] != "A" else "B")
    headers = {
        "no authorization": (),
        "a wrong key": _bearer("cik_abcdefgh_" + "A" * 43),
        "alice's key with a wrong secret": _bearer(wrong_secret),
        "a bare Bearer": (("authorization", "Bearer"),),
        "Basic credentials": (("authorization", "Basic YWxpY2U6c2VjcmV0"),),
        "a key without a scheme": (("authorization", alice_key),),
        "an SQL key": _bearer("' OR 1=1 --"),
        "a format-string key": _bearer("%s%s%n{0}"),
        "a huge key": _bearer("cik_" + "A" * 6000),
        "a huge other header": (("x-padding", "y" * 6000),),
        "a spoofed internal caller": (("x-cloudimg-internal-token", "guess"), ("x-cloudimg-account-id", ALICE)),
    }
    return [Identity(label, metadata, None) for label, metadata in headers.items()]


def identities(stack: Stack, fuzzer_keys: dict[str, str]) -> list[Identity]:
    good = [Identity(account.display_name, _bearer(fuzzer_keys[account.account_id]), account.account_id, True)
            for account in FUZZERS]
    good += [Identity(name, _bearer(stack.api_keys[name]), account_id)
             for name, account_id in (("alice", ALICE), ("bob", BOB))]
    # a real key, with headers that must change nothing: it must still be that account calling
    spoofing = (("x-cloudimg-account-id", ALICE), ("x-cloudimg-internal-token", "guess"))
    good.append(Identity("fuzzer-a spoofing alice", good[0].metadata + spoofing, FUZZERS[0].account_id, True))
    return good + bad_credentials(stack.api_keys["alice"])


ODD_REQUEST_IDS = ["", "'; DROP TABLE requests; --", "../../etc/passwd", "%s%n%x", "a b c", "x" * 1000,
                   "{}", "null", "\\u0000", "<>&\"'"]


def with_request_id(identity: Identity, request_id: str | None) -> Identity:
    if request_id is None:
        return identity
    return Identity(identity.label + f" (x-request-id {request_id[:20]!r})",
                    (*identity.metadata, ("x-request-id", request_id)), identity.account_id, identity.may_change)


@dataclass(frozen=True, repr=False)
class Call:
    rpc: Rpc
    body: Message | bytes
    identity: Identity

    def __repr__(self) -> str:
        return self.describe()

    # how hypothesis shows a falsifying example
    def _repr_pretty_(self, printer: RepresentationPrinter, cycle: bool) -> None:
        printer.text(self.describe())

    def describe(self) -> str:
        body = text_format.MessageToString(self.body, as_one_line=True) if isinstance(self.body, Message) \
            else f"garbage {self.body[:80]!r} ({len(self.body)} bytes)"
        return f"{self.rpc.name} as {self.identity.label}: {body[:400]}"


def calls(known: Known, everyone: list[Identity]) -> st.SearchStrategy[Call]:
    """A call to any public RPC, by anyone but alice or bob when it may change something."""

    def to(rpc: Rpc) -> st.SearchStrategy[Call]:
        callers = st.sampled_from([i for i in everyone if i.account_id and (rpc.changes_nothing or i.may_change)])
        nobody = st.sampled_from([i for i in everyone if i.account_id is None])
        who = st.builds(with_request_id, weighted((4, callers), (1, nobody)),
                        st.none() | st.sampled_from(ODD_REQUEST_IDS))
        message = weighted((3, messages(rpc.request.DESCRIPTOR, known)),
                           (2, messages(rpc.request.DESCRIPTOR, known, plausible=True)))
        return st.builds(Call, st.just(rpc), weighted((4, message), (1, garbage(rpc, known))), who)

    return st.one_of(*(to(rpc) for rpc in RPCS))


# ---------------------------------------------------------------------------------------------------------
# Sending, and what an answer must not be

LEAKS = re.compile(
    r"Traceback|Exception|[A-Z][A-Za-z]*Error\b|sqlalchemy|psycopg|sqlite3?\b|SELECT |INSERT |UPDATE |DELETE FROM"
    r"| FROM |File \"|line \d+, in |grpc\._|<[a-z_.]+ object at 0x")
FORBIDDEN_CODES = {grpc.StatusCode.UNKNOWN, grpc.StatusCode.INTERNAL, grpc.StatusCode.DATA_LOSS}
# The detail each code carries beside its ErrorInfo (SPEC, "Errors").
MATCHING_DETAIL: dict[grpc.StatusCode, type[Message]] = {
    grpc.StatusCode.INVALID_ARGUMENT: error_details_pb2.BadRequest,
    grpc.StatusCode.NOT_FOUND: error_details_pb2.ResourceInfo,
    grpc.StatusCode.PERMISSION_DENIED: error_details_pb2.ResourceInfo,
    grpc.StatusCode.ALREADY_EXISTS: error_details_pb2.ResourceInfo,
    grpc.StatusCode.FAILED_PRECONDITION: error_details_pb2.PreconditionFailure,
    grpc.StatusCode.RESOURCE_EXHAUSTED: error_details_pb2.QuotaFailure,
}
REASON = re.compile(r"[A-Z][A-Z0-9]*(_[A-Z0-9]+)*")


@dataclass(frozen=True)
class Outcome:
    call: Call
    code: grpc.StatusCode
    message: str = ""
    status: status_pb2.Status | None = None
    answer: Message | None = None


class Sender:
    """One multicallable per RPC on one channel, sending bodies as bytes (garbage as is)."""

    def __init__(self, channel: grpc.aio.Channel):
        self._stubs = {rpc.path: channel.unary_unary(rpc.path, request_serializer=None, response_deserializer=None)
                       for rpc in RPCS}

    async def send_all(self, calls: list[Call]) -> list[Outcome]:
        return await asyncio.gather(*(self.send(call) for call in calls))

    async def send(self, call: Call) -> Outcome:
        body = call.body.SerializeToString() if isinstance(call.body, Message) else call.body
        try:
            raw = await self._stubs[call.rpc.path](body, metadata=call.identity.metadata, timeout=CALL_TIMEOUT)
        except grpc.aio.AioRpcError as error:
            details = dict(error.trailing_metadata() or ()).get("grpc-status-details-bin")
            status = status_pb2.Status.FromString(details) if details else None
            return Outcome(call, error.code(), error.details() or "", status)
        return Outcome(call, grpc.StatusCode.OK, answer=call.rpc.response.FromString(raw))


def problems(outcome: Outcome) -> Iterator[str]:
    """What is wrong with an answer, in words; nothing for a good one."""
    call, code = outcome.call, outcome.code
    if call.identity.account_id is None and code != grpc.StatusCode.UNAUTHENTICATED:
        yield f"bad credentials answered {code.name}, not UNAUTHENTICATED"
    if code == grpc.StatusCode.OK:
        yield from _identity_problems(outcome)
        return
    if code in FORBIDDEN_CODES:
        yield f"status {code.name}"
    texts = [outcome.message] + (_texts(outcome.status) if outcome.status else [])
    for text in texts:
        if (leak := LEAKS.search(text)) is not None:
            yield f"exception or SQL text on the wire ({leak.group(0)!r}): {text[:300]!r}"
    yield from _rich_status_problems(code, outcome.status)


def _texts(status: status_pb2.Status) -> list[str]:
    """Every string a rich status carries: its message, and those in its details, however deep."""
    found = [status.message]
    pending: list[Message] = list(unpacked_details(status))
    while pending:
        message = pending.pop()
        for fd, value in message.ListFields():
            items = list(value.items()) if _is_map(fd) else value if _is_repeated(fd) else [value]
            for item in items:
                for part in item if isinstance(item, tuple) else (item,):
                    if isinstance(part, str):
                        found.append(part)
                    elif isinstance(part, Message):
                        pending.append(part)
    return found


def _rich_status_problems(code: grpc.StatusCode, status: status_pb2.Status | None) -> Iterator[str]:
    if status is None:
        yield f"{code.name} without a google.rpc.Status"
        return
    if status.code != code.value[0]:
        yield f"the rich status says {code_pb2.Code.Name(status.code)}, the call {code.name}"
    details = unpacked_details(status)
    if len(details) != len(status.details):
        yield f"details of unknown types: {[d.type_url for d in status.details]}"
    infos = [d for d in details if isinstance(d, error_details_pb2.ErrorInfo)]
    if len(infos) != 1:
        yield f"{len(infos)} ErrorInfo instead of one"
    elif not REASON.fullmatch(infos[0].reason):
        yield f"reason {infos[0].reason!r} is not UPPER_SNAKE_CASE"
    wanted = MATCHING_DETAIL.get(code)
    if wanted is not None and not any(isinstance(d, wanted) for d in details):
        yield f"{code.name} without its {wanted.DESCRIPTOR.name}"


def _identity_problems(outcome: Outcome) -> Iterator[str]:
    answer = outcome.answer
    if isinstance(answer, account_service_pb2.GetCallerIdentityResponse) and \
            answer.account_id != outcome.call.identity.account_id:
        yield f"called as {outcome.call.identity.account_id}, identified as {answer.account_id}"


@dataclass
class Tally:
    by_rpc: Counter[str] = field(default_factory=Counter)
    by_code: Counter[str] = field(default_factory=Counter)

    def add(self, outcome: Outcome) -> None:
        self.by_rpc[outcome.call.rpc.name] += 1
        self.by_code[outcome.code.name] += 1

    @property
    def calls(self) -> int:
        return sum(self.by_code.values())


# ---------------------------------------------------------------------------------------------------------
# The fuzzer's own accounts, and the stack's health afterwards


@pytest.fixture
def fuzzer_keys(stack: Stack) -> dict[str, str]:
    """New API keys of the fuzzer's two accounts, issued as an operator does (`gateway issue-key`):
    AccountService has no RPC that creates an account."""
    return {account.account_id: stack.issue_key(account.account_id, account.display_name) for account in FUZZERS}


def assert_stack_whole(stack: Stack) -> None:
    exited = {name: stack.processes[name].poll() for name in SERVICES if stack.processes[name].poll() is not None}
    assert not exited, f"service processes exited: {exited}"
    for name in SERVICES:
        with stack.channel(name) as channel:
            health = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=10)
        assert health.status == health_pb2.HealthCheckResponse.SERVING, f"{name} is {health.status}"


# ---------------------------------------------------------------------------------------------------------
# The tests


def test_every_public_rpc_is_found_in_the_descriptors() -> None:
    services = {rpc.path.split("/")[1] for rpc in RPCS}
    assert services == {f"cloudimg.gateway.v1.{name}" for name in
                        ("InstanceService", "AccountService", "ImageService", "ImageShareService")}
    assert {"RunInstances", "ShareImage", "ListCharges", "UpdateTrustPolicy"} <= {rpc.name for rpc in RPCS}


@pytest.mark.parametrize("start_time", [timestamp_pb2.Timestamp(seconds=1_793_553_646, nanos=10**9),
                                        timestamp_pb2.Timestamp(seconds=2**63 - 1)])
def test_list_charges_refuses_a_time_that_is_not_a_timestamp(stack: Stack, fuzzer_keys: dict[str, str],
                                                             start_time: timestamp_pb2.Timestamp) -> None:
    """Found by the fuzzer: nanos past 999999999 or seconds past year 9999 were INTERNAL (ToDatetime raised)."""
    request = account_service_pb2.ListChargesRequest(start_time=start_time)
    with stack.channel("gateway") as channel, pytest.raises(grpc.RpcError) as refused:
        account_service_pb2_grpc.AccountServiceStub(channel).ListCharges(
            request, metadata=_bearer(fuzzer_keys[FUZZERS[0].account_id]), timeout=10)
    assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert rich_status(refused.value)[1].reason == "INVALID_TIMESTAMP"


def test_fuzzed_calls_to_every_public_rpc_get_a_clean_rich_error_or_an_answer(stack: Stack, fuzzer_keys: dict[str, str],
                                                                              figures: Figures) -> None:
    known = seeded_known(stack)
    everyone = identities(stack, fuzzer_keys)
    tally = Tally()
    loop = asyncio.new_event_loop()

    async def open_sender() -> tuple[grpc.aio.Channel, Sender]:
        channel = stack.aio_channel("gateway", options=[("grpc.max_send_message_length", 8 << 20)])
        return channel, Sender(channel)

    channel, sender = loop.run_until_complete(open_sender())

    # Generation only: each bad answer is reported with its own call, and shrinking a batch of calls against
    # a live stack takes minutes.
    @settings(max_examples=EXAMPLES, deadline=None, database=None, print_blob=False, phases=[Phase.generate],
              suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.large_base_example])
    @given(batch=st.lists(calls(known, everyone), min_size=BATCH, max_size=BATCH))
    def fuzz(batch: list[Call]) -> None:
        outcomes = loop.run_until_complete(sender.send_all(batch))
        found = []
        for outcome in outcomes:
            tally.add(outcome)
            if outcome.answer is not None:
                known.learn(outcome.answer)
            found += [f"{problem}\n    call: {outcome.call.describe()}\n    answer: {outcome.code.name} "
                      f"{outcome.message[:300]!r}" for problem in problems(outcome)]
        assert not found, f"{len(found)} bad answers:\n" + "\n".join(found[:10])

    started = time.monotonic()
    try:
        fuzz()
    finally:
        loop.run_until_complete(channel.close())
        loop.close()
    elapsed = time.monotonic() - started
    print(f"\n{tally.calls} calls in {elapsed:.1f} s over {len(tally.by_rpc)} RPCs: {dict(tally.by_code)}")
    figures.add(calls=tally.calls, ok=tally.by_code["OK"], refused=tally.calls - tally.by_code["OK"],
                seconds=round(elapsed, 1))
    figures.most(rpcs=len(tally.by_rpc))
    silent = [rpc.name for rpc in RPCS if tally.by_rpc[rpc.name] == 0]
    assert not silent, f"RPCs never called: {silent}"
    assert tally.calls >= MIN_CALLS
    assert_stack_whole(stack)
