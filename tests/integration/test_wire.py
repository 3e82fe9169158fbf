"""Hostile bytes at the edge, through real in-process servers: crafted page tokens, control characters,
undecodable and oversized bodies. Each answers a mapped status with one ErrorInfo; never UNKNOWN or
INTERNAL, never exception text."""

from __future__ import annotations

import base64
import json
import logging
import random
from collections.abc import AsyncIterable, Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import pytest
from cloudimg.catalog.v1 import catalog_service_pb2 as catalog_pb
from cloudimg.gateway.v1 import account_service_pb2 as account_pb
from cloudimg.gateway.v1 import image_service_pb2 as image_pb
from cloudimg.gateway.v1 import image_share_service_pb2 as share_pb
from cloudimg.gateway.v1 import instance_service_pb2 as instance_pb
from google.protobuf import descriptor_pb2
from google.protobuf.message import Message
from google.rpc import error_details_pb2
from grpc_health.v1 import health_pb2
from grpc_reflection.v1alpha import reflection_pb2

from catalog_service.domain.seed import seed_image_id
from chassis.rpc import MAX_MESSAGE_BYTES
from gateway.domain.api_keys import Account
from tests.conftest import BOB, CAROL, ServerFactory, internal_metadata, rich_status
from tests.integration.cloud import SERVICES, start_services

UBUNTU = seed_image_id("ap-guangzhou", "ubuntu-2204-x86")
ALICE_WEB = seed_image_id("ap-guangzhou", "alice-web")
RUN_INSTANCES = "/cloudimg.gateway.v1.InstanceService/RunInstances"
CATALOG_LIST_IMAGES = "/cloudimg.catalog.v1.CatalogService/ListImages"
# What a caller must never read in an error: the text of an exception or a parser.
LEAKS = ("Traceback", "Exception", "Error parsing", "Unexpected <class", "DecodeError", "psycopg", "sqlite")


@dataclass
class Stack:
    gateway: grpc.aio.Channel
    catalog: grpc.aio.Channel
    keys: dict[str, str]

    def auth(self, who: str = "alice") -> tuple[tuple[str, str]]:
        return (("authorization", f"Bearer {self.keys[who]}"),)

    def call(self, method: str, response: type[Message]) -> grpc.aio.UnaryUnaryMultiCallable:
        return self.gateway.unary_unary(method, request_serializer=lambda m: m.SerializeToString(),
                                        response_deserializer=response.FromString)


async def start_stack(serve: ServerFactory, urls: dict[str, str]) -> Stack:
    """The four services, each on its own database of one kind (SQLite or PostgreSQL); a third account,
    so that an image can have two shares and a second page."""
    addrs, keys = await start_services(serve, urls, [Account(CAROL, "carol")])
    return Stack(grpc.aio.insecure_channel(addrs["gateway"]), grpc.aio.insecure_channel(addrs["catalog"]), keys)




@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
async def stack(request: pytest.FixtureRequest, serve: ServerFactory, tmp_path: Path) -> Stack:
    if request.param == "postgres":
        create = request.getfixturevalue("postgres_database")
        return await start_stack(serve, {name: create() for name in SERVICES})
    return await start_stack(serve, {name: f"sqlite:///{tmp_path}/{name}.db" for name in SERVICES})


@pytest.fixture
async def sqlite_stack(serve: ServerFactory, tmp_path: Path) -> Stack:
    return await start_stack(serve, {name: f"sqlite:///{tmp_path}/{name}.db" for name in SERVICES})


def refusal(error: grpc.aio.AioRpcError) -> tuple[grpc.StatusCode, str, list[Any]]:
    """The code, ErrorInfo reason and other details of a refusal, once checked to leak nothing."""
    assert error.code() not in (grpc.StatusCode.UNKNOWN, grpc.StatusCode.INTERNAL), error
    assert not any(leak in (error.details() or "") for leak in LEAKS), error.details()
    _, info, others = rich_status(error)
    return error.code(), info.reason, others


def forged(real_token: str, key_json: str) -> str:
    """A page token with the filters' fingerprint of a real one (anyone can read it) and any key."""
    made_for = json.loads(base64.urlsafe_b64decode(real_token + "=" * (-len(real_token) % 4)))["f"]
    return base64.urlsafe_b64encode(f'{{"k":{key_json},"f":"{made_for}"}}'.encode()).decode().rstrip("=")


# Keys no list may take: reaching a database they once answered INTERNAL.
FORGED_KEYS = {
    "NUL": json.dumps("img-\x00"),              # PostgreSQL refuses NUL in text
    "escape": json.dumps("ins-\x1b[2J"),
    "nested lists": "[" * 100_000 + "]" * 100_000,  # RecursionError in json
    "5000 digits": json.dumps("9" * 5000),      # beyond int()'s 4300 digits, and longer than any key
    "number": "12",
}
# Keys that only a list keyed by integers (charges) must refuse; a list keyed by ids may page past them.
NOT_INTEGERS = {
    "superscript two": json.dumps("²"),         # str.isdigit() passes, int() fails
    "circled one": json.dumps("①"),
    "past int64": json.dumps("9" * 20),
}
CHARGES = "/cloudimg.gateway.v1.AccountService/ListCharges"


async def test_forged_page_tokens_are_invalid_page_token_on_every_list(stack: Stack) -> None:
    alice = stack.auth()
    for token in ("a", "b"):  # two charges and two instances: a first page of one has a next page
        await stack.call(RUN_INSTANCES, instance_pb.RunInstancesResponse)(instance_pb.RunInstancesRequest(
            region="ap-guangzhou", image_id=UBUNTU, instance_type="S5.MEDIUM4", instance_count=1, client_token=token),
            metadata=alice)
    await stack.call("/cloudimg.gateway.v1.ImageShareService/ShareImage", share_pb.ShareImageResponse)(
        share_pb.ShareImageRequest(image_id=ALICE_WEB, account_ids=[BOB, CAROL], request_id="share-1"), metadata=alice)
    lists: dict[str, tuple[Callable[[str], Message], type[Message]]] = {
        "/cloudimg.gateway.v1.ImageService/ListImages": (
            lambda token: image_pb.ListImagesRequest(region="ap-guangzhou", page_size=1, page_token=token),
            image_pb.ListImagesResponse),
        "/cloudimg.gateway.v1.InstanceService/ListInstances": (
            lambda token: instance_pb.ListInstancesRequest(page_size=1, page_token=token),
            instance_pb.ListInstancesResponse),
        CHARGES: (
            lambda token: account_pb.ListChargesRequest(page_size=1, page_token=token), account_pb.ListChargesResponse),
        "/cloudimg.gateway.v1.ImageShareService/ListImageShares": (
            lambda token: share_pb.ListImageSharesRequest(image_id=ALICE_WEB, page_size=1, page_token=token),
            share_pb.ListImageSharesResponse),
        "/cloudimg.gateway.v1.InstanceService/ListPrices": (
            lambda token: instance_pb.ListPricesRequest(page_size=1, page_token=token), instance_pb.ListPricesResponse),
    }
    wrong: list[str] = []
    for method, (request, response) in lists.items():
        first = await stack.call(method, response)(request(""), metadata=alice)
        assert first.next_page_token, f"{method} has no second page to forge a token for"
        for name, key in {**FORGED_KEYS, **NOT_INTEGERS}.items():
            try:
                await stack.call(method, response)(request(forged(first.next_page_token, key)), metadata=alice)
            except grpc.aio.AioRpcError as error:
                if error.code() != grpc.StatusCode.INVALID_ARGUMENT or refusal(error)[1] != "INVALID_PAGE_TOKEN":
                    wrong.append(f"{method} {name}: {error.code().name} {error.details()[:80]}")
            else:
                if name in FORGED_KEYS or method == CHARGES:
                    wrong.append(f"{method} {name}: accepted")
    assert not wrong, "\n".join(wrong)


@pytest.mark.parametrize("field", ["name_filter", "platform"])
@pytest.mark.parametrize("value", ["ubuntu\x00", "\x00", "a\x1bb", "\x7f", "\x9b"])
async def test_control_characters_in_image_filters_are_invalid_characters(stack: Stack, field: str,
                                                                          value: str) -> None:
    public = image_pb.ListImagesRequest(region="ap-guangzhou")
    internal = catalog_pb.ListImagesRequest(region="ap-guangzhou", image_types=[catalog_pb.IMAGE_TYPE_PUBLIC])
    for filtered in (public, internal):
        setattr(filtered, field, value)
    requests: list[tuple[Callable[..., Awaitable[object]], Message, tuple[tuple[str, str], ...]]] = [
        (stack.call("/cloudimg.gateway.v1.ImageService/ListImages", image_pb.ListImagesResponse), public,
         stack.auth()),
        (stack.catalog.unary_unary(CATALOG_LIST_IMAGES, request_serializer=lambda m: m.SerializeToString(),
                                   response_deserializer=catalog_pb.ListImagesResponse.FromString),
         internal, internal_metadata()),
    ]
    for call, request, metadata in requests:
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await call(request, metadata=metadata)
        code, reason, others = refusal(refused.value)
        assert (code, reason) == (grpc.StatusCode.INVALID_ARGUMENT, "INVALID_CHARACTERS")
        assert [v.field for v in others[0].field_violations] == [field]


async def test_a_control_character_in_a_list_is_named_by_its_index(sqlite_stack: Stack) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await sqlite_stack.call("/cloudimg.gateway.v1.ImageShareService/ShareImage", share_pb.ShareImageResponse)(
            share_pb.ShareImageRequest(image_id=ALICE_WEB, account_ids=[BOB, "1000\x0000003"]),
            metadata=sqlite_stack.auth())
    code, reason, others = refusal(refused.value)
    assert (code, reason) == (grpc.StatusCode.INVALID_ARGUMENT, "INVALID_CHARACTERS")
    assert [v.field for v in others[0].field_violations] == ["account_ids[1]"]


def raw(channel: grpc.aio.Channel, method: str) -> grpc.aio.UnaryUnaryMultiCallable:
    return channel.unary_unary(method, request_serializer=None, response_deserializer=None)


def random_bodies(seed: int, valid: bytes, count: int = 200) -> list[bytes]:
    """Random bytes, and a valid body with a few bytes changed: both bounded, the same on every run."""
    rng = random.Random(seed)
    bodies = [rng.randbytes(rng.randint(1, 64)) for _ in range(count // 2)]
    for _ in range(count - len(bodies)):
        body = bytearray(valid)
        for _ in range(rng.randint(1, 3)):
            body[rng.randrange(len(body))] = rng.randrange(256)
        bodies.append(bytes(body))
    return bodies


async def test_random_bodies_answer_malformed_request_or_a_mapped_status(
        sqlite_stack: Stack, caplog: pytest.LogCaptureFixture) -> None:
    launch = instance_pb.RunInstancesRequest(region="ap-guangzhou", image_id=UBUNTU, instance_type="S5.MEDIUM4",
                                             instance_count=1, instance_name="web", client_token="fuzz")
    listing = catalog_pb.ListImagesRequest(region="ap-guangzhou", image_types=[catalog_pb.IMAGE_TYPE_PUBLIC],
                                           platform="Ubuntu", name_filter="server", page_size=5)
    targets = [(raw(sqlite_stack.gateway, RUN_INSTANCES), sqlite_stack.auth(), launch, 1),
               (raw(sqlite_stack.catalog, CATALOG_LIST_IMAGES), internal_metadata(), listing, 2)]
    with caplog.at_level(logging.WARNING):
        for call, metadata, valid, seed in targets:
            reasons: dict[str, int] = {}
            for body in random_bodies(seed, valid.SerializeToString()):
                try:
                    await call(body, metadata=metadata)
                except grpc.aio.AioRpcError as error:
                    code, reason, others = refusal(error)
                else:
                    code, reason, others = grpc.StatusCode.OK, "OK", []
                reasons[reason] = reasons.get(reason, 0) + 1
                if reason == "MALFORMED_REQUEST":
                    assert code == grpc.StatusCode.INVALID_ARGUMENT
                    assert [type(d) for d in others] == [error_details_pb2.BadRequest]
            assert reasons.get("MALFORMED_REQUEST", 0) > 50, reasons
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING], "a refused body logged a failure"


async def test_an_undecodable_body_without_credentials_is_unauthenticated_not_unknown(sqlite_stack: Stack) -> None:
    for channel, method in [(sqlite_stack.gateway, RUN_INSTANCES), (sqlite_stack.catalog, CATALOG_LIST_IMAGES)]:
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await raw(channel, method)(b"\xff\xff\xff", metadata=())
        assert refusal(refused.value)[0] == grpc.StatusCode.UNAUTHENTICATED  # authentication comes first


@pytest.mark.parametrize("size", [MAX_MESSAGE_BYTES + 1, 3 * MAX_MESSAGE_BYTES])
async def test_a_body_over_the_size_limit_is_message_too_large(sqlite_stack: Stack, size: int) -> None:
    for channel, method, metadata in [(sqlite_stack.gateway, RUN_INSTANCES, sqlite_stack.auth()),
                                      (sqlite_stack.catalog, CATALOG_LIST_IMAGES, internal_metadata())]:
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await raw(channel, method)(b"\x00" * size, metadata=metadata)
        code, reason, others = refusal(refused.value)
        assert (code, reason) == (grpc.StatusCode.RESOURCE_EXHAUSTED, "MESSAGE_TOO_LARGE")
        assert [type(d) for d in others] == [error_details_pb2.QuotaFailure]


async def test_a_body_of_exactly_the_limit_is_read(sqlite_stack: Stack) -> None:
    request = instance_pb.RunInstancesRequest(region="ap-guangzhou", image_id=UBUNTU, instance_type="S5.MEDIUM4",
                                              instance_count=1)
    request.instance_name = "x" * (MAX_MESSAGE_BYTES - request.ByteSize() - 4)
    assert request.ByteSize() == MAX_MESSAGE_BYTES
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await sqlite_stack.call(RUN_INSTANCES, instance_pb.RunInstancesResponse)(request, metadata=sqlite_stack.auth())
    code, reason, _ = refusal(refused.value)
    assert code == grpc.StatusCode.INVALID_ARGUMENT
    assert reason != "MESSAGE_TOO_LARGE"


async def test_a_body_over_the_transport_limit_is_still_resource_exhausted(sqlite_stack: Stack) -> None:
    """grpc itself refuses it before any handler, with its own message and no ErrorInfo."""
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await raw(sqlite_stack.gateway, RUN_INSTANCES)(b"\x00" * (8 * MAX_MESSAGE_BYTES), metadata=sqlite_stack.auth())
    assert refused.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED


async def test_health_and_reflection_refuse_undecodable_bodies_and_still_answer_anyone(sqlite_stack: Stack) -> None:
    channel = sqlite_stack.catalog
    check = channel.unary_unary("/grpc.health.v1.Health/Check", request_serializer=None,
                                response_deserializer=health_pb2.HealthCheckResponse.FromString)
    assert (await check(health_pb2.HealthCheckRequest().SerializeToString())).status == \
        health_pb2.HealthCheckResponse.SERVING
    reflect = channel.stream_stream("/grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo",
                                    request_serializer=None,
                                    response_deserializer=reflection_pb2.ServerReflectionResponse.FromString)
    listed = [r async for r in reflect(iter([reflection_pb2.ServerReflectionRequest(list_services="").
                                             SerializeToString()]))]
    assert "cloudimg.catalog.v1.CatalogService" in {s.name for s in listed[0].list_services_response.service}
    found = [r async for r in reflect(iter([reflection_pb2.ServerReflectionRequest(
        file_containing_symbol="cloudimg.catalog.v1.CatalogService").SerializeToString()]))]
    descriptor_pb2.FileDescriptorProto.FromString(found[0].file_descriptor_response.file_descriptor_proto[0])

    watch = channel.unary_stream("/grpc.health.v1.Health/Watch", request_serializer=None, response_deserializer=None)
    watching = watch(health_pb2.HealthCheckRequest().SerializeToString())
    async for first in watching:
        assert health_pb2.HealthCheckResponse.FromString(first).status == health_pb2.HealthCheckResponse.SERVING
        break
    watching.cancel()
    for call in (lambda: check(b"\xff\xff"), lambda: _drain(watch(b"\xff\xff")),
                 lambda: _drain(reflect(iter([reflection_pb2.ServerReflectionRequest(list_services="").
                                             SerializeToString(), b"\xff\xff"])))):
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await call()
        assert refusal(refused.value)[:2] == (grpc.StatusCode.INVALID_ARGUMENT, "MALFORMED_REQUEST")


async def _drain(call: AsyncIterable[object]) -> list[object]:
    return [response async for response in call]
