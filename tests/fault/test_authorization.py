"""An authorization matrix over every public RPC that names a resource by id: a stranger learns nothing.

Alice owns custom images (made from her instance; one of them shared with carol, PENDING, not with bob)
and instances (one RUNNING, one TERMINATED); bob, the stranger, owns instances of his own. For every
id-taking RPC of the gateway (``MATRIX``), bob's call with alice's id must be answered exactly as the
same call with a missing id of the same shape (same prefix, same length, never issued): the same status
code, the same message, the same raw ``google.rpc.Status`` (trailer ``grpc-status-details-bin``), the
same other metadata and response bytes. The answers quote the id itself (message, ResourceInfo), so in
each answer its own id is replaced by a placeholder of the same length before the comparison; every
other byte must be identical. Both answers are NOT_FOUND with exactly one ErrorInfo (SPEC, "Errors"),
and afterwards nothing that alice, bob or carol can see has changed.

Each request is also sent in the variants the RPC offers (with a ``request_id`` or ``client_token``, and
as a dry run), since those take other paths through the gateway (the request ledgers, the quote path), and
with other fields that would fail a check on the resource itself (a launch in another region than the
image's, on an arm64 type, on a disk too small; a sync to the image's own region; a share with its owner),
so that no such check runs before the visibility check. And bob replaying alice's own requests, her
``request_id`` included, is answered as without it: the request ledgers are per account.

The RPCs are enumerated from the generated descriptors: every request field (nested messages included)
named ``*_id``, ``*_ids``, ``name`` or ``*_name`` must be in ``MATRIX`` or in ``NOT_RESOURCE_IDS`` with the
reason it is left out, so a new id-taking RPC fails ``test_the_matrix_covers_every_id_taking_rpc``
until it is added here.

Every channel is made by the stack (``stack.channel``), so this runs unchanged over plaintext or TLS.
"""

from __future__ import annotations

import time
from collections import defaultdict
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from types import ModuleType
from typing import TypeVar

import grpc
import pytest
from cloudimg.gateway.v1 import account_service_pb2 as account_pb
from cloudimg.gateway.v1 import image_service_pb2 as image_pb
from cloudimg.gateway.v1 import image_share_service_pb2 as share_pb
from cloudimg.gateway.v1 import instance_service_pb2 as instance_pb
from google.protobuf import descriptor, field_mask_pb2
from google.protobuf.message import Message
from google.rpc import error_details_pb2, status_pb2

from catalog_service.domain.seed import seed_image_id
from chassis import ids
from devtools.stack import Stack
from tests.conftest import ALICE, BOB, CAROL, unpacked_details
from tests.fault.conftest import Figures

GZ, SH = "ap-guangzhou", "ap-shanghai"
INSTANCE_TYPE = "S5.MEDIUM4"
PUBLIC_IMAGE = seed_image_id(GZ, "ubuntu-2204-x86")
REQUEST_ID_KEY = "x-request-id"
DETAILS_KEY = "grpc-status-details-bin"
NOT_SYNC_ENABLED = "na-siliconvalley"
ARM_INSTANCE_TYPE = "SR1.MEDIUM4"
MessageT = TypeVar("MessageT", bound=Message)
NOBODY = "999999999999"  # an account id of the right shape that no account has
GATEWAY_MODULES: tuple[ModuleType, ...] = (image_pb, share_pb, instance_pb, account_pb)


@dataclass
class World:
    """What the matrix is played on: alice's resources by kind ("image", "instance"), bob's own instances
    (by what they are), and alice's mutations made with a request_id (that bob replays)."""

    alice: dict[str, list[str]]
    bob: dict[str, str]
    alices_requests: list[tuple[str, Message]] = field(default_factory=list)


# The request builders: (the world, the id under test) -> the requests that name the id in that field and
# are otherwise ones bob could make of his own: each is sent twice, naming the stranger's id and a missing
# one. Beside the plain request come those whose other fields would fail a check on the image or instance
# itself (its region, architecture, size, owner, state), which must not run before the visibility check.
Build = Callable[[World, str], list[Message]]
Make = Callable[[World, str], Message]


def each(*makes: Make) -> Build:
    return lambda world, id_: [make(world, id_) for make in makes]


def launches(cls: type[Message]) -> Build:
    def make(region: str = GZ, instance_type: str = INSTANCE_TYPE, system_disk_gb: int = 0) -> Make:
        return lambda _, i: cls(region=region, image_id=i, instance_type=instance_type, instance_count=1,
                                system_disk_gb=system_disk_gb)

    # another region than the image's, an arm64 type for an x86_64 image, a disk smaller than the image
    return each(make(), make(region=SH), make(instance_type=ARM_INSTANCE_TYPE), make(system_disk_gb=20))


def resets(cls: type[Message]) -> dict[str, Build]:
    return {
        "instance_id": each(lambda _, i: cls(instance_id=i, image_id=PUBLIC_IMAGE)),
        # onto bob's own instances: of the image's region and architecture, of another region, of arm64
        "image_id": each(*(lambda w, i, mine=mine: cls(instance_id=w.bob[mine], image_id=i)
                           for mine in ("x86_64", "in another region", "arm64"))),
    }


def shares(cls: type[Message], *recipients: str) -> Build:
    return each(*(lambda _, i, to=to: cls(image_id=i, account_ids=[to]) for to in recipients))


MATRIX: dict[str, dict[str, Build]] = {
    "ImageService.GetImage": {"image_id": each(lambda _, i: image_pb.GetImageRequest(image_id=i))},
    "ImageService.CreateImage": {
        "instance_id": each(lambda _, i: image_pb.CreateImageRequest(instance_id=i, name="taken")),
    },
    "ImageService.UpdateImage": {
        "image.image_id": each(lambda _, i: image_pb.UpdateImageRequest(
            image=image_pb.Image(image_id=i, name="renamed by a stranger"),
            update_mask=field_mask_pb2.FieldMask(paths=["name"]))),
    },
    "ImageService.DeleteImage": {"image_id": each(lambda _, i: image_pb.DeleteImageRequest(image_id=i))},
    "ImageService.SyncImage": {  # to a sync-enabled region, to the image's own, to one that is not sync-enabled
        "image_id": each(*(lambda _, i, to=to: image_pb.SyncImageRequest(image_id=i, destination_regions=[to])
                           for to in (SH, GZ, NOT_SYNC_ENABLED))),
    },
    # with bob himself, with the owner, with an account that has the image already, with no account at all
    "ImageShareService.ShareImage": {"image_id": shares(share_pb.ShareImageRequest, BOB, ALICE, CAROL, NOBODY)},
    "ImageShareService.UnshareImage": {"image_id": shares(share_pb.UnshareImageRequest, CAROL, BOB)},
    "ImageShareService.ListImageShares": {
        "image_id": each(lambda _, i: share_pb.ListImageSharesRequest(image_id=i)),
    },
    "ImageShareService.AcceptImageShare": {
        "image_id": each(lambda _, i: share_pb.AcceptImageShareRequest(image_id=i)),
    },
    "ImageShareService.RejectImageShare": {
        "image_id": each(lambda _, i: share_pb.RejectImageShareRequest(image_id=i)),
    },
    "InstanceService.QuoteRunInstances": {"image_id": launches(instance_pb.QuoteRunInstancesRequest)},
    "InstanceService.RunInstances": {"image_id": launches(instance_pb.RunInstancesRequest)},
    "InstanceService.GetInstance": {
        "instance_id": each(lambda _, i: instance_pb.GetInstanceRequest(instance_id=i)),
    },
    # a batch: the id alone, and after one of bob's own (all or none: his stays RUNNING)
    "InstanceService.TerminateInstances": {
        "instance_ids": each(lambda _, i: instance_pb.TerminateInstancesRequest(instance_ids=[i]),
                             lambda w, i: instance_pb.TerminateInstancesRequest(instance_ids=[w.bob["x86_64"], i])),
    },
    "InstanceService.ResetInstance": resets(instance_pb.ResetInstanceRequest),
    "InstanceService.QuoteResetInstance": resets(instance_pb.QuoteResetInstanceRequest),
    # A list filter: bob's charges of alice's instance are bob's charges of a missing one (none at all).
    "AccountService.ListCharges": {
        "instance_id": each(lambda _, i: account_pb.ListChargesRequest(instance_id=i)),
    },
}

# What the answer to both calls is, where it is not NOT_FOUND.
EXPECTED_CODE = {"AccountService.ListCharges": grpc.StatusCode.OK}

# Request fields that look like ids or names but name no resource a stranger could reach, and why.
NOT_RESOURCE_IDS: dict[tuple[str, str], str] = {
    **{(m, "request_id"): "the caller's own idempotency key (ledgers are per account); every request is also "
                          "sent with one (see variants)"
       for m in ("ImageService.CreateImage", "ImageService.ImportImage", "ImageService.UpdateImage",
                 "ImageService.DeleteImage", "ImageService.SyncImage", "ImageShareService.ShareImage",
                 "ImageShareService.UnshareImage", "ImageShareService.AcceptImageShare",
                 "ImageShareService.RejectImageShare", "ImageShareService.UpdateTrustPolicy",
                 "InstanceService.TerminateInstances", "InstanceService.ResetInstance")},
    ("ImageService.CreateImage", "name"): "the display name of the image to make",
    ("ImageService.ImportImage", "name"): "the display name of the image to import",
    ("ImageService.ImportImage", "os_name"): "the imported disk's operating system, in words",
    ("ImageService.UpdateImage", "image.name"): "the new display name",
    ("ImageService.UpdateImage", "image.owner_account_id"): "output only: UpdateImage reads image_id, name and "
                                                            "description",
    ("ImageService.UpdateImage", "image.base_image_id"): "output only, as owner_account_id",
    ("ImageService.UpdateImage", "image.os_name"): "output only, as owner_account_id",
    ("InstanceService.RunInstances", "instance_name"): "the display name of the instances to launch",
    ("InstanceService.QuoteRunInstances", "instance_name"): "as RunInstances",
    # Accounts are not anyone's resources: ShareImage answers UNKNOWN_ACCOUNT for an account that does not
    # exist, by contract (image_share_service.proto). The image_id of these calls is in the matrix.
    ("ImageShareService.ShareImage", "account_ids"): "the recipients (accounts), see above",
    ("ImageShareService.UnshareImage", "account_ids"): "the recipients (accounts), see above",
    ("ImageShareService.UpdateTrustPolicy", "policy.trusted_account_ids"): "accounts in the caller's own policy",
    ("ImageShareService.UpdateTrustPolicy", "policy.allowed_account_ids"): "accounts in the caller's own policy",
}

# The optional fields that send a request down another path, each with the value the variant sets.
VARIANTS: dict[str, Callable[[], object]] = {
    "request_id": lambda: "authz-" + ids.new_id("r"),
    "client_token": lambda: "authz-" + ids.new_id("t"),
    "dry_run": lambda: True,
}


def _id_like(name: str) -> bool:
    return name == "name" or name.endswith(("_id", "_ids", "_name"))


def _id_fields(message: descriptor.Descriptor, prefix: str = "") -> Iterator[str]:
    """The paths of a request's id-like fields, into the API's own nested messages."""
    for f in message.fields:
        if f.message_type is not None and f.message_type.full_name.startswith("cloudimg."):
            yield from _id_fields(f.message_type, f"{prefix}{f.name}.")
        elif f.type == descriptor.FieldDescriptor.TYPE_STRING and _id_like(f.name):
            yield prefix + f.name


def _methods() -> dict[str, descriptor.MethodDescriptor]:
    return {f"{service.name}.{method.name}": method
            for module in GATEWAY_MODULES for service in module.DESCRIPTOR.services_by_name.values()
            for method in service.methods}


def test_the_matrix_covers_every_id_taking_rpc(figures: Figures) -> None:
    methods = _methods()
    found = {(name, path) for name, method in methods.items() for path in _id_fields(method.input_type)}
    covered = {(name, path) for name, fields in MATRIX.items() for path in fields}
    assert found - covered - set(NOT_RESOURCE_IDS) == set(), "id-taking RPCs missing from MATRIX"
    assert covered - found == set(), "MATRIX names fields that the requests do not have"
    assert set(NOT_RESOURCE_IDS) - found == set(), "NOT_RESOURCE_IDS names fields that the requests do not have"
    mark, anyone = "img-00000000", World({}, defaultdict(lambda: "ins-00000000"))
    for name, fields in MATRIX.items():  # each builder names the id in the field it is filed under
        for path, build in fields.items():
            for request in build(anyone, mark):
                assert request.DESCRIPTOR is methods[name].input_type
                assert mark in str(_field(request, path)), (name, path)
    figures.most(rpcs=len(MATRIX), id_fields=len(covered), excluded_fields=len(NOT_RESOURCE_IDS))


def _field(message: Message, path: str) -> object:
    for part in path.split("."):
        message = getattr(message, part)
    return message


# --- Calling the gateway and comparing answers -------------------------------------------------------------


@dataclass(frozen=True)
class Answer:
    """Everything a caller receives, with the id it asked about replaced by its placeholder."""

    code: grpc.StatusCode
    message: str
    status: bytes  # the raw google.rpc.Status
    body: bytes  # the raw response, when the call succeeded
    metadata: tuple[tuple[str, str | bytes], ...] = field(default=())  # initial and trailing, but the status


class Gateway:
    """Any public RPC by its name ("ImageService.GetImage"), as one of the accounts, over the stack's channel."""

    def __init__(self, stack: Stack, keys: dict[str, str]):
        self._channel = stack.channel("gateway")
        self._keys = keys

    def close(self) -> None:
        self._channel.close()

    def raw(self, method: descriptor.MethodDescriptor, request: Message, who: str
            ) -> tuple[grpc.StatusCode, str, bytes, tuple[tuple[str, str | bytes], ...]]:
        rpc = self._channel.unary_unary(f"/{method.containing_service.full_name}/{method.name}",
                                        request_serializer=lambda m: m.SerializeToString(),
                                        response_deserializer=lambda raw: raw)
        metadata = (("authorization", f"Bearer {self._keys[who]}"),)
        try:
            body, call = rpc.with_call(request, metadata=metadata, timeout=15)
            return grpc.StatusCode.OK, "", body, tuple(call.initial_metadata()) + tuple(call.trailing_metadata())
        except grpc.RpcError as error:
            sent = tuple(error.initial_metadata() or ()) + tuple(error.trailing_metadata() or ())
            return error.code(), error.details() or "", b"", sent

    def answer(self, method: descriptor.MethodDescriptor, request: Message, who: str, id_: str) -> Answer:
        code, message, body, metadata = self.raw(method, request, who)
        text, placeholder = id_, _placeholder(id_)
        raw, raw_placeholder = text.encode(), placeholder.encode()
        assert raw, "the id to hide"

        def hide(value: str | bytes) -> str | bytes:
            return value.replace(raw, raw_placeholder) if isinstance(value, bytes) else value.replace(text, placeholder)

        status = b"".join(v for k, v in metadata if k == DETAILS_KEY and isinstance(v, bytes))  # a -bin key
        # Every answer carries its call's own x-request-id: there, but nothing to compare.
        assert any(k == REQUEST_ID_KEY for k, _ in metadata), f"no {REQUEST_ID_KEY} in the answer"
        others = tuple((k, hide(v)) for k, v in metadata if k not in (DETAILS_KEY, REQUEST_ID_KEY))
        return Answer(code, message.replace(text, placeholder), status.replace(raw, raw_placeholder),
                      body.replace(raw, raw_placeholder), others)

    def call(self, name: str, request: Message, who: str, response: type[MessageT]) -> MessageT:
        """The answer of a call that must succeed, of its method's response type (``response``)."""
        method = _methods()[name]
        code, message, body, _ = self.raw(method, request, who)
        assert code == grpc.StatusCode.OK, f"{name}: {code.name} {message}"
        assert response.DESCRIPTOR is method.output_type, f"{name} answers a {method.output_type.full_name}"
        return response.FromString(body)


def _with(request: MessageT, **fields: object) -> MessageT:
    """A copy of a request with some of its fields set."""
    changed = type(request)()
    changed.CopyFrom(request)
    for name, value in fields.items():
        setattr(changed, name, value)
    return changed


def _variants(request: Message) -> Iterator[Message]:
    """The request as built, then with each optional field that takes another path set."""
    yield request
    for name, value in VARIANTS.items():
        if name in request.DESCRIPTOR.fields_by_name:
            yield _with(request, **{name: value()})


def _missing_like(id_: str) -> str:
    """An id of the same shape that was never issued (8 random letters and digits: 36**8 of them)."""
    prefix = id_.split("-")[0]
    missing = ids.new_id(prefix)
    assert len(missing) == len(id_)
    assert ids.is_id(prefix, id_)
    assert missing != id_
    return missing


def _placeholder(id_: str) -> str:
    """What an answer's id is replaced by: of the id's length, so that a replaced status still parses."""
    return id_[:-8] + "X" * 8


def _pairs(build: Build, world: World, theirs: str, missing: str) -> Iterator[tuple[Message, Message]]:
    """(the request naming the stranger's id, the same naming the missing id), in every variant."""
    for stranger, nobody in zip(build(world, theirs), build(world, missing), strict=True):
        yield from zip(_variants(stranger), _variants(nobody), strict=True)


def _check_answer(answer: Answer, expected: grpc.StatusCode, what: str) -> None:
    """The expected code; for an error, a google.rpc.Status of the same code and message with one ErrorInfo."""
    assert answer.code == expected, f"{what}: {answer.code.name} {answer.message}"
    if expected == grpc.StatusCode.OK:
        return
    status = status_pb2.Status.FromString(answer.status)
    assert (status.code, status.message) == (expected.value[0], answer.message), what
    infos = [d for d in unpacked_details(status) if isinstance(d, error_details_pb2.ErrorInfo)]
    assert len(infos) == 1, f"{what}: expected exactly one ErrorInfo, got {infos}"


# --- The world, and what of it each account can see --------------------------------------------------------


def _normal_image(gateway: Gateway, image_id: str, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while True:
        image = gateway.call("ImageService.GetImage", image_pb.GetImageRequest(image_id=image_id), "alice",
                             image_pb.GetImageResponse).image
        if image.state == image_pb.IMAGE_STATE_NORMAL:
            return
        assert image.state in (image_pb.IMAGE_STATE_CREATING, image_pb.IMAGE_STATE_SYNCING), image
        assert time.monotonic() < deadline, f"{image_id} still {image.state}"
        time.sleep(0.05)


@pytest.fixture(scope="module")
def world(stack: Stack) -> Iterator[tuple[World, Gateway]]:
    """Alice's images and instances, bob's: made once per stack."""
    keys = dict(stack.api_keys)
    if "carol" not in keys:
        # Carol is not a demo account: the operator adds her (only accounts that exist can be shared with).
        keys["carol"] = stack.issue_key(CAROL, "carol")
    gateway = Gateway(stack, keys)
    try:
        yield _make_world(gateway), gateway
    finally:
        gateway.close()


def _make_world(gateway: Gateway) -> World:
    def run(who: str, count: int = 1, region: str = GZ, image: str = "ubuntu-2204-x86",
            instance_type: str = INSTANCE_TYPE) -> list[str]:
        request = instance_pb.RunInstancesRequest(region=region, image_id=seed_image_id(region, image),
                                                  instance_type=instance_type, instance_count=count)
        return list(gateway.call("InstanceService.RunInstances", request, who,
                                 instance_pb.RunInstancesResponse).instance_ids)

    def alice(rpc: str, request: Message, response: type[MessageT]) -> MessageT:
        request = _with(request, request_id="alice-" + ids.new_id("r"))
        requests.append((rpc, request))
        return gateway.call(rpc, request, "alice", response)

    requests: list[tuple[str, Message]] = []
    running, terminated = run("alice", 2)
    images = [alice("ImageService.CreateImage", image_pb.CreateImageRequest(
        instance_id=running, name=f"alice golden {n}"), image_pb.CreateImageResponse).image.image_id for n in (1, 2)]
    for image_id in images:
        _normal_image(gateway, image_id)
    shared = alice("ImageShareService.ShareImage", share_pb.ShareImageRequest(image_id=images[0], account_ids=[CAROL]),
                   share_pb.ShareImageResponse)
    assert [(s.recipient_account_id, s.state) for s in shared.shares] == [(CAROL, image_pb.SHARE_STATE_PENDING)]
    alice("ImageService.UpdateImage", image_pb.UpdateImageRequest(
        image=image_pb.Image(image_id=images[1], description="not shared"),
        update_mask=field_mask_pb2.FieldMask(paths=["description"])), image_pb.UpdateImageResponse)
    alice("InstanceService.TerminateInstances", instance_pb.TerminateInstancesRequest(instance_ids=[terminated]),
          instance_pb.TerminateInstancesResponse)
    for instance_id, state in ((running, instance_pb.INSTANCE_STATE_RUNNING),
                               (terminated, instance_pb.INSTANCE_STATE_TERMINATED)):
        got = gateway.call("InstanceService.GetInstance", instance_pb.GetInstanceRequest(instance_id=instance_id),
                           "alice", instance_pb.GetInstanceResponse)
        assert got.instance.state == state, got
    bob = {"x86_64": run("bob")[0], "in another region": run("bob", region=SH)[0],
           "arm64": run("bob", image="ubuntu-2204-arm", instance_type=ARM_INSTANCE_TYPE)[0]}
    return World(alice={"image": images, "instance": [running, terminated]}, bob=bob, alices_requests=requests)


def _seen(world: World, gateway: Gateway) -> dict[str, bytes]:
    """Everything the three accounts can see of the world (charges but the usage accruing as time passes)."""
    seen: dict[str, Message] = {}
    for who in ("alice", "bob", "carol"):
        for region in (GZ, SH):
            seen[f"{who} images {region}"] = gateway.call("ImageService.ListImages", image_pb.ListImagesRequest(
                region=region, image_types=[image_pb.IMAGE_TYPE_PRIVATE, image_pb.IMAGE_TYPE_SHARED],
                share_states=[image_pb.SHARE_STATE_PENDING, image_pb.SHARE_STATE_ACCEPTED,
                              image_pb.SHARE_STATE_REJECTED], page_size=1000), who, image_pb.ListImagesResponse)
            seen[f"{who} quota {region}"] = gateway.call("ImageService.GetImageQuota",
                                                         image_pb.GetImageQuotaRequest(region=region), who,
                                                         image_pb.GetImageQuotaResponse)
        seen[f"{who} instances"] = gateway.call("InstanceService.ListInstances",
                                                instance_pb.ListInstancesRequest(page_size=1000), who,
                                                instance_pb.ListInstancesResponse)
        charges = gateway.call("AccountService.ListCharges", account_pb.ListChargesRequest(page_size=1000), who,
                               account_pb.ListChargesResponse)
        seen[f"{who} charges"] = account_pb.ListChargesResponse(
            charges=[c for c in charges.charges if c.kind != account_pb.CHARGE_KIND_ACCRUED_USAGE])
        seen[f"{who} trust policy"] = gateway.call("ImageShareService.GetTrustPolicy",
                                                   share_pb.GetTrustPolicyRequest(), who,
                                                   share_pb.GetTrustPolicyResponse)
    for image_id in world.alice["image"]:
        seen[f"image {image_id}"] = gateway.call("ImageService.GetImage", image_pb.GetImageRequest(image_id=image_id),
                                                 "alice", image_pb.GetImageResponse)
        seen[f"shares of {image_id}"] = gateway.call("ImageShareService.ListImageShares",
                                                     share_pb.ListImageSharesRequest(image_id=image_id), "alice",
                                                     share_pb.ListImageSharesResponse)
    return {what: message.SerializeToString(deterministic=True) for what, message in seen.items()}


# --- The matrix --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("rpc", sorted(MATRIX))
def test_a_strangers_id_is_answered_as_a_missing_one(rpc: str, world: tuple[World, Gateway], figures: Figures
                                                     ) -> None:
    world_, gateway = world
    method = _methods()[rpc]
    expected = EXPECTED_CODE.get(rpc, grpc.StatusCode.NOT_FOUND)
    before = _seen(world_, gateway)
    leaks: list[str] = []
    pairs = 0
    for path, build in MATRIX[rpc].items():
        kind = path.rsplit(".", 1)[-1].removesuffix("_ids").removesuffix("_id")  # "image", "instance"
        for theirs in world_.alice[kind]:
            missing = _missing_like(theirs)
            for request, same_for_missing in _pairs(build, world_, theirs, missing):
                stranger = gateway.answer(method, request, "bob", theirs)
                nobody = gateway.answer(method, same_for_missing, "bob", missing)
                what = f"{rpc} {path}={theirs} {request}".replace("\n", " ")
                _check_answer(nobody, expected, f"missing id: {what}")
                _check_answer(stranger, expected, f"stranger's id: {what}")
                pairs += 1
                if stranger != nobody:
                    leaks.append(f"{what}\n  stranger's: {stranger}\n  missing:    {nobody}")
    assert not leaks, "a stranger's id is answered unlike a missing one:\n" + "\n".join(leaks)
    assert _seen(world_, gateway) == before, f"bob's {rpc} calls changed what the accounts see"
    figures.add(pairs_compared=pairs)


def test_a_stranger_replaying_the_owners_request_id_is_answered_as_without_it(world: tuple[World, Gateway],
                                                                               figures: Figures) -> None:
    """The request ledgers are per account: bob sending alice's very requests (her request_id included) is
    answered as the same request with a new request_id, NOT_FOUND, and not with alice's first answer."""
    world_, gateway = world
    methods = _methods()
    before = _seen(world_, gateway)
    leaks: list[str] = []
    for rpc, request in world_.alices_requests:
        named = _field(request, next(iter(MATRIX[rpc])))  # the resource the request names (of a batch, the first)
        if isinstance(named, Sequence) and not isinstance(named, str):
            named = named[0]
        assert isinstance(named, str), named
        fresh = _with(request, request_id="bob-" + ids.new_id("r"))
        replayed = gateway.answer(methods[rpc], request, "bob", named)
        answered = gateway.answer(methods[rpc], fresh, "bob", named)
        _check_answer(replayed, grpc.StatusCode.NOT_FOUND, f"replayed {rpc} {request}")
        # the control: alice's own replay is answered from her ledger (and, idempotent, changes nothing)
        assert gateway.raw(methods[rpc], request, "alice")[0] == grpc.StatusCode.OK, (rpc, request)
        if replayed != answered:
            leaks.append(f"{rpc} {request}\n  replayed: {replayed}\n  new:      {answered}")
    assert not leaks, "a replayed request_id is answered unlike a new one:\n" + "\n".join(leaks)
    assert _seen(world_, gateway) == before, "bob's replays changed what the accounts see"
    figures.most(rpcs=len({rpc for rpc, _ in world_.alices_requests}))
    figures.add(pairs_compared=len(world_.alices_requests))
