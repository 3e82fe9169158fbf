"""Trust policies and the verdicts they shape, through real in-process servers on SQLite and PostgreSQL: get and
update (mask, limits, request_id), exact under concurrency across replicas, a change seen by the next verdict on
another replica, the batch verdict of a mixed page, and what a batch costs in SQL statements."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any, TypedDict, Unpack

import grpc
import pytest
from cloudimg.sharing.v1 import sharing_service_pb2 as pb
from cloudimg.sharing.v1 import sharing_service_pb2_grpc as pb_grpc
from sqlalchemy import Connection, Engine, create_engine, event, func, make_url, select
from sqlalchemy.engine.interfaces import DBAPICursor, ExecutionContext

from sharing_service.adapters.tables import REQUESTS, TRUST_ENTRIES, TRUST_POLICIES
from sharing_service.bootstrap import bootstrap
from sharing_service.settings import SharingSettings
from tests.conftest import ALICE, BOB, CAROL, ServerFactory, Spawn, internal_metadata, rich_status
from tests.integration.cloud import INTERNAL_SECRET
from tests.integration.test_sharing import process_replicas, replicas

REGION = "ap-guangzhou"
DAVE = "100000000004"


class PolicyFields(TypedDict, total=False):
    """The fields of a TrustPolicy that an update sends."""

    trusted_account_ids: Iterable[str]
    mode: pb.TrustPolicyMode.ValueType
    allow_platform_images: bool
    allowed_marketplace_providers: Iterable[str]
    allowed_account_ids: Iterable[str]


@pytest.fixture
async def pair(serve: ServerFactory, database_url: str) -> list[pb_grpc.SharingServiceStub]:
    """Two replicas on one database."""
    return await replicas(serve, database_url, 2)


def custom(image_id: str, owner: str) -> pb.ImageRef:
    return pb.ImageRef(image_id=image_id, region=REGION, kind=pb.IMAGE_KIND_CUSTOM, owner_account_id=owner,
                       launchable_state=True)


PUBLIC = pb.ImageRef(image_id="img-public01", region=REGION, kind=pb.IMAGE_KIND_PUBLIC, launchable_state=True)
MARKET = pb.ImageRef(image_id="img-market01", region=REGION, kind=pb.IMAGE_KIND_MARKET,
                     marketplace_provider="Bitnami", launchable_state=True)


async def get(stub: pb_grpc.SharingServiceStub, caller: str = BOB) -> pb.TrustPolicy:
    response: pb.GetTrustPolicyResponse = await stub.GetTrustPolicy(pb.GetTrustPolicyRequest(),
                                                                    metadata=internal_metadata(caller))
    return response.policy


async def update(stub: pb_grpc.SharingServiceStub, paths: list[str], caller: str = BOB, request_id: str = "",
                 **fields: Unpack[PolicyFields]) -> pb.TrustPolicy:
    response: pb.UpdateTrustPolicyResponse = await stub.UpdateTrustPolicy(pb.UpdateTrustPolicyRequest(
        policy=pb.TrustPolicy(**fields), update_paths=paths, request_id=request_id),
        metadata=internal_metadata(caller), timeout=60)
    return response.policy


async def refused_update(stub: pb_grpc.SharingServiceStub, paths: list[str],
                         **fields: Unpack[PolicyFields]) -> tuple[grpc.StatusCode, str, list[str]]:
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await update(stub, paths, **fields)
    _status, info, details = rich_status(refused.value)
    return refused.value.code(), info.reason, [v.field for v in details[0].field_violations]


def without_time(policy: pb.TrustPolicy) -> pb.TrustPolicy:
    copy = pb.TrustPolicy()
    copy.CopyFrom(policy)
    copy.ClearField("update_time")
    return copy


async def test_an_account_that_never_set_a_policy_has_the_default_one(pair: list[pb_grpc.SharingServiceStub]) -> None:
    policy = await get(pair[0])
    assert policy == pb.TrustPolicy(mode=pb.TRUST_POLICY_MODE_OFF, allow_platform_images=True)
    assert not policy.HasField("update_time")


async def test_an_update_changes_the_fields_it_names_and_is_read_back_anywhere(
        pair: list[pb_grpc.SharingServiceStub]) -> None:
    first = await update(pair[0], ["mode", "allowed_marketplace_providers"], mode=pb.TRUST_POLICY_MODE_AUDIT,
                         allowed_marketplace_providers=["Bitnami", "Acme", "Bitnami"], trusted_account_ids=[CAROL])
    assert without_time(first) == pb.TrustPolicy(mode=pb.TRUST_POLICY_MODE_AUDIT, allow_platform_images=True,
                                                 allowed_marketplace_providers=["Bitnami", "Acme"])
    assert first.HasField("update_time")
    second = await update(pair[1], ["trusted_account_ids", "allowed_account_ids"],
                          trusted_account_ids=[DAVE, CAROL, DAVE], allowed_account_ids=[ALICE])
    assert without_time(second) == pb.TrustPolicy(
        trusted_account_ids=[DAVE, CAROL], mode=pb.TRUST_POLICY_MODE_AUDIT, allow_platform_images=True,
        allowed_marketplace_providers=["Bitnami", "Acme"], allowed_account_ids=[ALICE])
    assert second.update_time.ToDatetime() >= first.update_time.ToDatetime()
    assert await get(pair[0]) == second
    # no path: every field, as sent
    everything = await update(pair[0], [], mode=pb.TRUST_POLICY_MODE_ENFORCE)
    assert without_time(everything) == pb.TrustPolicy(mode=pb.TRUST_POLICY_MODE_ENFORCE)
    assert await get(pair[1]) == everything
    assert await get(pair[1], CAROL) == pb.TrustPolicy(mode=pb.TRUST_POLICY_MODE_OFF, allow_platform_images=True)


async def test_bad_updates_are_refused_with_the_field_named(pair: list[pb_grpc.SharingServiceStub]) -> None:
    stub = pair[0]
    await update(stub, ["allowed_marketplace_providers"], allowed_marketplace_providers=[f"p{i}" for i in range(150)])
    before = await get(stub)
    accounts = [f"{300000000000 + i}" for i in range(201)]
    cases: list[tuple[tuple[list[str], PolicyFields], tuple[str, list[str]]]] = [
        ((["mode", "owner"], {}), ("INVALID_UPDATE_MASK", ["update_mask"])),
        ((["mode"], {}), ("MODE_REQUIRED", ["policy.mode"])),
        (([], {"trusted_account_ids": [BOB]}), ("MODE_REQUIRED", ["policy.mode"])),
        ((["trusted_account_ids"], {"trusted_account_ids": [BOB, CAROL, DAVE, "1000000000x4"]}),
         ("INVALID_ACCOUNT_ID", ["policy.trusted_account_ids[3]"])),
        ((["allowed_account_ids"], {"allowed_account_ids": ["12"]}),
         ("INVALID_ACCOUNT_ID", ["policy.allowed_account_ids[0]"])),
        ((["allowed_marketplace_providers"], {"allowed_marketplace_providers": ["ok", "x" * 65]}),
         ("INVALID_MARKETPLACE_PROVIDER", ["policy.allowed_marketplace_providers[1]"])),
        ((["allowed_marketplace_providers"], {"allowed_marketplace_providers": [""]}),
         ("INVALID_MARKETPLACE_PROVIDER", ["policy.allowed_marketplace_providers[0]"])),
        ((["trusted_account_ids"], {"trusted_account_ids": accounts}),
         ("TOO_MANY_TRUSTED_ACCOUNTS", ["policy.trusted_account_ids"])),
        # 150 providers stored and 51 accounts: 201 entries
        ((["allowed_account_ids"], {"allowed_account_ids": accounts[:51]}),
         ("TOO_MANY_ALLOWED_ENTRIES", ["policy.allowed_account_ids"])),
        ((["mode"], {"mode": pb.TrustPolicyMode.ValueType(7)}), ("INVALID_ENUM_VALUE", ["policy.mode"])),
    ]
    for (paths, fields), (reason, violations) in cases:
        assert await refused_update(stub, paths, **fields) == (grpc.StatusCode.INVALID_ARGUMENT, reason, violations)
    assert await get(stub) == before
    # exactly at the limits
    fits = await update(stub, ["allowed_account_ids", "trusted_account_ids"], allowed_account_ids=accounts[:50],
                        trusted_account_ids=accounts[:200] + accounts[:3])
    assert (len(fits.allowed_account_ids), len(fits.trusted_account_ids)) == (50, 200)


async def test_an_update_is_idempotent_by_request_id(pair: list[pb_grpc.SharingServiceStub], database_url: str) -> None:
    first = await update(pair[0], ["mode"], request_id="p1", mode=pb.TRUST_POLICY_MODE_AUDIT)
    await update(pair[1], ["mode"], request_id="p2", mode=pb.TRUST_POLICY_MODE_ENFORCE)
    assert await update(pair[1], ["mode"], request_id="p1", mode=pb.TRUST_POLICY_MODE_AUDIT) == first
    assert (await get(pair[0])).mode == pb.TRUST_POLICY_MODE_ENFORCE
    retries: list[tuple[list[str], PolicyFields]] = [(["mode"], {"mode": pb.TRUST_POLICY_MODE_OFF}),
                                                     (["allow_platform_images"], {"mode": pb.TRUST_POLICY_MODE_AUDIT})]
    for paths, fields in retries:
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await update(pair[0], paths, request_id="p1", **fields)
        _status, info, details = rich_status(refused.value)
        assert (refused.value.code(), info.reason) == (grpc.StatusCode.FAILED_PRECONDITION,
                                                       "IDEMPOTENCY_PARAMETER_MISMATCH")
        assert details[0].violations[0].subject == "request_id:p1"
    engine = create_engine(database_url)
    with engine.connect() as conn:
        assert conn.execute(select(func.count()).select_from(REQUESTS)).scalar_one() == 2
    engine.dispose()


async def _race_updates(stubs: list[pb_grpc.SharingServiceStub], database_url: str) -> None:
    """Rounds of concurrent updates over two replicas, each of other fields: every field lands (none overwrites
    another's with what it read before), and of two allow-lists that only fit alone, exactly one is kept."""
    providers = [f"provider-{i}" for i in range(150)]
    accounts = [f"{300000000000 + i}" for i in range(150)]

    async def outcome(n: int, caller: str, paths: list[str], **fields: Unpack[PolicyFields]) -> str:
        try:
            await update(stubs[n % 2], paths, caller, **fields)
            return "OK"
        except grpc.aio.AioRpcError as exc:
            reason: str = rich_status(exc)[1].reason
            return reason

    for round_ in range(10):
        caller = f"{400000000000 + round_}"
        results = await asyncio.gather(
            outcome(round_, caller, ["allowed_marketplace_providers"], allowed_marketplace_providers=providers),
            outcome(round_ + 1, caller, ["allowed_account_ids"], allowed_account_ids=accounts),
            outcome(round_, caller, ["mode"], mode=pb.TRUST_POLICY_MODE_ENFORCE),
            outcome(round_ + 1, caller, ["trusted_account_ids"], trusted_account_ids=[ALICE]),
            outcome(round_, caller, ["allow_platform_images"], allow_platform_images=False),
        )
        assert sorted(results[:2]) == ["OK", "TOO_MANY_ALLOWED_ENTRIES"]
        assert list(results[2:]) == ["OK"] * 3
        policy = await get(stubs[round_ % 2], caller)
        kept = list(policy.allowed_marketplace_providers) or list(policy.allowed_account_ids)
        assert kept == (providers if results[0] == "OK" else accounts)
        assert (policy.mode, list(policy.trusted_account_ids), policy.allow_platform_images) == (
            pb.TRUST_POLICY_MODE_ENFORCE, [ALICE], False)
    engine = create_engine(database_url)
    with engine.connect() as conn:
        assert conn.execute(select(func.count()).select_from(TRUST_POLICIES)).scalar_one() == 10
        # 150 allow-list entries and one trusted account per policy
        assert conn.execute(select(func.count()).select_from(TRUST_ENTRIES)).scalar_one() == 10 * 151
    engine.dispose()


async def test_concurrent_updates_lose_nothing_and_keep_the_limit_on_sqlite_across_replicas(
        spawn: Spawn, tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path}/sharing.db"
    await _race_updates(process_replicas(spawn, url, 2), url)


@pytest.mark.postgres
async def test_concurrent_updates_lose_nothing_and_keep_the_limit_on_postgres_across_replicas(
        spawn: Spawn, postgres_database: Callable[[], str]) -> None:
    url = postgres_database()
    await _race_updates(process_replicas(spawn, url, 2), url)


async def verdict(stub: pb_grpc.SharingServiceStub, image: pb.ImageRef,
                  caller: str = BOB) -> pb.CheckLaunchPermissionResponse:
    found: pb.CheckLaunchPermissionResponse = await stub.CheckLaunchPermission(
        pb.CheckLaunchPermissionRequest(image=image), metadata=internal_metadata(caller))
    return found


async def test_a_policy_change_is_seen_by_the_very_next_verdict_on_another_replica(
        pair: list[pb_grpc.SharingServiceStub]) -> None:
    carols = custom("img-carol001", CAROL)
    await pair[0].ShareImage(pb.ShareImageRequest(image=carols, account_ids=[BOB]), metadata=internal_metadata(CAROL))
    await pair[0].AcceptImageShare(pb.AcceptImageShareRequest(image_id=carols.image_id),
                                   metadata=internal_metadata(BOB))
    for stub in pair:  # both replicas have answered under the default policy
        found = await verdict(stub, carols)
        assert (found.allowed, found.image_allowed, found.policy_mode) == (True, True, pb.TRUST_POLICY_MODE_OFF)
    await update(pair[0], ["mode"], mode=pb.TRUST_POLICY_MODE_ENFORCE)
    found = await verdict(pair[1], carols)
    assert (found.visible, found.allowed, found.image_allowed, found.policy_mode, found.policy_rule) == (
        True, False, False, pb.TRUST_POLICY_MODE_ENFORCE, f"images of account {CAROL} are not on allowed_account_ids")
    await update(pair[1], ["allowed_account_ids"], allowed_account_ids=[CAROL])
    assert (await verdict(pair[0], carols)).allowed
    await update(pair[0], ["mode", "allowed_account_ids"], mode=pb.TRUST_POLICY_MODE_AUDIT)
    found = await verdict(pair[1], carols)
    assert (found.allowed, found.image_allowed, found.policy_mode) == (True, False, pb.TRUST_POLICY_MODE_AUDIT)


async def test_the_verdicts_of_a_mixed_page_come_in_its_order(pair: list[pb_grpc.SharingServiceStub]) -> None:
    stub = pair[0]
    alices, carols, daves = custom("img-alice001", ALICE), custom("img-carol001", CAROL), custom("img-dave0001", DAVE)
    bobs, missing = custom("img-bob00001", BOB), custom("img-missing1", "")
    await update(stub, ["trusted_account_ids"], trusted_account_ids=[CAROL])
    for image, owner in ((alices, ALICE), (carols, CAROL), (daves, DAVE)):
        await stub.ShareImage(pb.ShareImageRequest(image=image, account_ids=[BOB]), metadata=internal_metadata(owner))
    await stub.RejectImageShare(pb.RejectImageShareRequest(image_id=daves.image_id), metadata=internal_metadata(BOB))
    await update(stub, ["mode", "allow_platform_images", "allowed_account_ids"], mode=pb.TRUST_POLICY_MODE_ENFORCE,
                 allow_platform_images=True, allowed_account_ids=[CAROL, DAVE])
    page = [MARKET, carols, bobs, missing, alices, PUBLIC, daves, carols]
    response = await stub.CheckLaunchPermissions(pb.CheckLaunchPermissionsRequest(images=page),
                                                 metadata=internal_metadata(BOB))
    E = pb.TRUST_POLICY_MODE_ENFORCE
    assert [(v.visible, v.allowed, v.basis, v.share_state, v.image_allowed, v.policy_mode, v.policy_rule)
            for v in response.verdicts] == [
        (True, False, pb.LAUNCH_BASIS_MARKETPLACE, 0, False, E,
         "marketplace provider 'Bitnami' is not on allowed_marketplace_providers"),
        (True, True, pb.LAUNCH_BASIS_SHARED, pb.SHARE_STATE_ACCEPTED, True, E, ""),
        (True, True, pb.LAUNCH_BASIS_OWNER, 0, True, E, ""),
        (False, False, pb.LAUNCH_BASIS_NONE, 0, True, E, ""),
        (True, False, pb.LAUNCH_BASIS_SHARE_PENDING, pb.SHARE_STATE_PENDING, False, E,
         f"images of account {ALICE} are not on allowed_account_ids"),
        (True, True, pb.LAUNCH_BASIS_PUBLIC, 0, True, E, ""),
        (True, False, pb.LAUNCH_BASIS_SHARE_REJECTED, pb.SHARE_STATE_REJECTED, True, E, ""),
        (True, True, pb.LAUNCH_BASIS_SHARED, pb.SHARE_STATE_ACCEPTED, True, E, ""),
    ]
    # the platform images' verdicts are leased (SHARING_VERDICT_LEASE_SECONDS, 0.05 s in tests), no other
    leases = [v.lease.ToTimedelta().total_seconds() if v.HasField("lease") else None for v in response.verdicts]
    assert leases == [0.05, None, None, None, None, 0.05, None, None]
    # each verdict of the page is the one CheckLaunchPermission gives
    assert list(response.verdicts) == [await verdict(stub, image) for image in page]


async def test_an_update_answers_once_the_leases_on_the_old_policy_have_run_out(
        serve: ServerFactory, database_url: str) -> None:
    addr = await serve(bootstrap, SharingSettings(database_url=database_url, internal_token=INTERNAL_SECRET,
                                                  verdict_lease_seconds=0.3))
    stub = pb_grpc.SharingServiceStub(grpc.aio.insecure_channel(addr))
    found = await verdict(stub, PUBLIC)
    assert found.lease.ToTimedelta().total_seconds() == 0.3
    for request_id in ("", "r-1", "r-1"):  # a retry waits too: the first call may have ended before its wait did
        started = time.monotonic()
        await update(stub, ["mode"], request_id=request_id, mode=pb.TRUST_POLICY_MODE_ENFORCE)
        assert time.monotonic() - started >= 0.3


async def test_a_batch_of_more_than_1000_images_is_refused(pair: list[pb_grpc.SharingServiceStub]) -> None:
    response = await pair[0].CheckLaunchPermissions(pb.CheckLaunchPermissionsRequest(images=[PUBLIC] * 1000),
                                                    metadata=internal_metadata(BOB))
    assert len(response.verdicts) == 1000
    for images, reason, field in (([PUBLIC] * 1001, "TOO_MANY_IMAGES", "images"),
                                  ([PUBLIC, pb.ImageRef(kind=pb.IMAGE_KIND_PUBLIC)], "IMAGE_REQUIRED",
                                   "images[1].image_id"),
                                  ([pb.ImageRef(image_id="img-nokind01")], "INVALID_ENUM_VALUE", "images[0].kind")):
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await pair[0].CheckLaunchPermissions(pb.CheckLaunchPermissionsRequest(images=images),
                                                 metadata=internal_metadata(BOB))
        _status, info, details = rich_status(refused.value)
        assert (refused.value.code(), info.reason, details[0].field_violations[0].field) == (
            grpc.StatusCode.INVALID_ARGUMENT, reason, field)


@contextlib.contextmanager
def statements_on(database_url: str) -> Iterator[list[str]]:
    """The SQL statements sent to one database by any engine of this process (the in-process servers')."""
    database = make_url(database_url).database
    seen: list[str] = []

    def count(conn: Connection, cursor: DBAPICursor, statement: str, parameters: Any,
              context: ExecutionContext | None, executemany: bool) -> None:
        if conn.engine.url.database == database:
            seen.append(statement)

    event.listen(Engine, "before_cursor_execute", count)
    try:
        yield seen
    finally:
        event.remove(Engine, "before_cursor_execute", count)


async def test_a_batch_of_500_costs_the_statements_of_a_batch_of_1(pair: list[pb_grpc.SharingServiceStub],
                                                                   database_url: str) -> None:
    stub = pair[0]
    await update(stub, ["mode", "allowed_account_ids", "allowed_marketplace_providers"],
                 mode=pb.TRUST_POLICY_MODE_AUDIT, allowed_account_ids=[CAROL], allowed_marketplace_providers=["p3"])
    page: list[pb.ImageRef] = []
    for n in range(500):
        if n % 3 == 0:
            page.append(custom(f"img-p{n:07d}", (CAROL, DAVE, BOB, "")[n % 4]))
        elif n % 3 == 1:
            page.append(pb.ImageRef(image_id=f"img-p{n:07d}", region=REGION, kind=pb.IMAGE_KIND_MARKET,
                                    marketplace_provider=f"p{n % 7}", launchable_state=True))
        else:
            page.append(pb.ImageRef(image_id=f"img-p{n:07d}", region=REGION, kind=pb.IMAGE_KIND_PUBLIC))
    for image in page[:40:3]:  # some of the page is shared with Bob
        if image.owner_account_id not in ("", BOB):
            await stub.ShareImage(pb.ShareImageRequest(image=image, account_ids=[BOB]),
                                  metadata=internal_metadata(image.owner_account_id))

    async def statements(images: list[pb.ImageRef]) -> int:
        with statements_on(database_url) as seen:
            response = await stub.CheckLaunchPermissions(pb.CheckLaunchPermissionsRequest(images=images),
                                                         metadata=internal_metadata(BOB))
        assert len(response.verdicts) == len(images)
        return len(seen)

    # a missing image is asked about as a stranger's custom image, and costs what that costs
    missing, strangers = custom("img-missing1", ""), custom("img-strange1", DAVE)
    one = await statements([missing])
    assert one > 0
    assert await statements([strangers]) == one
    assert await statements(page) == one
    with statements_on(database_url) as seen:
        await verdict(stub, missing)
    assert len(seen) == one
