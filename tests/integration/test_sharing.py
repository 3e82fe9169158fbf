"""Sharing through real in-process servers: the share limit, request_id idempotency and the delete hold under
concurrency, on SQLite and PostgreSQL, with one replica and with two replicas on one database."""

from __future__ import annotations

import asyncio
from datetime import UTC
from pathlib import Path

import grpc
import pytest
from sqlalchemy import create_engine, func, select

from cloudimg.sharing.v1 import sharing_service_pb2 as pb
from cloudimg.sharing.v1 import sharing_service_pb2_grpc as pb_grpc
from sharing_service.adapters.tables import IMAGE_LOCKS, REQUESTS, SHARES
from sharing_service.bootstrap import bootstrap
from sharing_service.domain.model import MAX_SHARES_PER_IMAGE
from sharing_service.settings import SharingSettings
from tests.conftest import ALICE, BOB, CAROL, INTERNAL_TOKEN, internal_metadata, rich_status

IMAGE = pb.ImageRef(image_id="img-share001", region="ap-guangzhou", kind=pb.IMAGE_KIND_CUSTOM,
                    owner_account_id=ALICE, launchable_state=True)


def account(n: int) -> str:
    return f"{300000000000 + n}"


async def replicas(serve, database_url: str, count: int) -> list[pb_grpc.SharingServiceStub]:
    stubs = []
    for _ in range(count):
        addr = await serve(bootstrap, SharingSettings(database_url=database_url, internal_token=INTERNAL_TOKEN))
        stubs.append(pb_grpc.SharingServiceStub(grpc.aio.insecure_channel(addr)))
    return stubs


@pytest.fixture
async def sharing(serve, database_url: str) -> pb_grpc.SharingServiceStub:
    return (await replicas(serve, database_url, 1))[0]


async def test_share_is_idempotent_and_launchable_by_the_recipient(sharing):
    for _ in range(2):
        response = await sharing.ShareImage(pb.ShareImageRequest(image=IMAGE, account_ids=[BOB, BOB]),
                                            metadata=internal_metadata(ALICE))
        assert [(s.recipient_account_id, s.state) for s in response.shares] == [(BOB, pb.SHARE_STATE_ACCEPTED)]
    verdict = await sharing.CheckLaunchPermission(pb.CheckLaunchPermissionRequest(image=IMAGE),
                                                  metadata=internal_metadata(BOB))
    assert verdict.visible and verdict.allowed and verdict.basis == pb.LAUNCH_BASIS_SHARED
    received = await sharing.ListReceivedShares(pb.ListReceivedSharesRequest(region="ap-guangzhou"),
                                                metadata=internal_metadata(BOB))
    assert [s.image_id for s in received.shares] == [IMAGE.image_id]
    # the share holds in the image's region only
    elsewhere = pb.ImageRef(image_id=IMAGE.image_id, region="ap-beijing", kind=pb.IMAGE_KIND_CUSTOM,
                            owner_account_id=ALICE, launchable_state=True)
    verdict = await sharing.CheckLaunchPermission(pb.CheckLaunchPermissionRequest(image=elsewhere),
                                                  metadata=internal_metadata(BOB))
    assert not verdict.visible and verdict.basis == pb.LAUNCH_BASIS_NONE

    await sharing.UnshareImage(pb.UnshareImageRequest(image=IMAGE, account_ids=[BOB]),
                               metadata=internal_metadata(ALICE))
    verdict = await sharing.CheckLaunchPermission(pb.CheckLaunchPermissionRequest(image=IMAGE),
                                                  metadata=internal_metadata(BOB))
    assert not verdict.visible and not verdict.allowed


async def test_refusals(sharing):
    cases = [
        (ALICE, pb.ShareImageRequest(image=IMAGE, account_ids=[ALICE]), grpc.StatusCode.INVALID_ARGUMENT,
         "CANNOT_SHARE_WITH_OWNER"),
        (ALICE, pb.ShareImageRequest(image=IMAGE, account_ids=["12ab"]), grpc.StatusCode.INVALID_ARGUMENT,
         "INVALID_ACCOUNT_ID"),
        (ALICE, pb.ShareImageRequest(image=IMAGE), grpc.StatusCode.INVALID_ARGUMENT, "ACCOUNT_IDS_REQUIRED"),
        (BOB, pb.ShareImageRequest(image=IMAGE, account_ids=[account(1)]), grpc.StatusCode.PERMISSION_DENIED,
         "NOT_IMAGE_OWNER"),
        (ALICE, pb.ShareImageRequest(image=pb.ImageRef(image_id="img-share002", region="ap-guangzhou",
                                                       kind=pb.IMAGE_KIND_CUSTOM, owner_account_id=ALICE,
                                                       launchable_state=False), account_ids=[BOB]),
         grpc.StatusCode.FAILED_PRECONDITION, "IMAGE_STATE_INVALID"),
    ]
    for caller, request, code, reason in cases:
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await sharing.ShareImage(request, metadata=internal_metadata(caller))
        assert (refused.value.code(), rich_status(refused.value)[1].reason) == (code, reason)


async def test_the_51st_account_is_refused_and_nothing_is_half_written(sharing):
    await sharing.ShareImage(pb.ShareImageRequest(image=IMAGE, account_ids=[account(i) for i in range(49)]),
                             metadata=internal_metadata(ALICE))
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await sharing.ShareImage(pb.ShareImageRequest(image=IMAGE, account_ids=[account(100), account(101)]),
                                 metadata=internal_metadata(ALICE))
    assert refused.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    status, info, details = rich_status(refused.value)
    assert info.reason == "SHARE_LIMIT_EXCEEDED" and details[0].violations[0].subject == f"image:{IMAGE.image_id}"
    shares = await sharing.ListImageShares(pb.ListImageSharesRequest(image=IMAGE, page_size=1000),
                                           metadata=internal_metadata(ALICE))
    assert len(shares.shares) == 49
    # sharing again with accounts that have it changes nothing, even at the limit
    await sharing.ShareImage(pb.ShareImageRequest(image=IMAGE, account_ids=[account(100)]),
                             metadata=internal_metadata(ALICE))
    await sharing.ShareImage(pb.ShareImageRequest(image=IMAGE, account_ids=[account(100), account(0)]),
                             metadata=internal_metadata(ALICE))


async def _race_to_the_limit(stubs: list[pb_grpc.SharingServiceStub], database_url: str) -> None:
    """80 concurrent calls, each sharing with a new account: exactly 50 succeed, 30 are refused."""
    async def share(n: int) -> str:
        stub = stubs[n % len(stubs)]
        try:
            await stub.ShareImage(pb.ShareImageRequest(image=IMAGE, account_ids=[account(n)]),
                                  metadata=internal_metadata(ALICE), timeout=60)
            return "OK"
        except grpc.aio.AioRpcError as exc:
            return exc.code().name

    outcomes = await asyncio.gather(*(share(n) for n in range(80)))
    assert outcomes.count("OK") == MAX_SHARES_PER_IMAGE
    assert outcomes.count("RESOURCE_EXHAUSTED") == 80 - MAX_SHARES_PER_IMAGE
    engine = create_engine(database_url)
    with engine.connect() as conn:
        rows = conn.execute(select(func.count()).select_from(SHARES)
                            .where(SHARES.c.image_id == IMAGE.image_id)).scalar_one()
    engine.dispose()
    assert rows == MAX_SHARES_PER_IMAGE


def process_replicas(spawn, database_url: str, count: int) -> list[pb_grpc.SharingServiceStub]:
    """Replicas as real processes: within one process, handlers never interleave inside a transaction."""
    addrs = [spawn("sharing", {"SHARING_DATABASE_URL": database_url}).addr for _ in range(count)]
    return [pb_grpc.SharingServiceStub(grpc.aio.insecure_channel(addr)) for addr in addrs]


async def test_the_limit_holds_under_concurrency_on_sqlite_across_replicas(spawn, tmp_path: Path):
    url = f"sqlite:///{tmp_path}/sharing.db"
    await _race_to_the_limit(process_replicas(spawn, url, 2), url)


@pytest.mark.postgres
async def test_the_limit_holds_under_concurrency_on_postgres_across_replicas(spawn, postgres_database):
    url = postgres_database()
    await _race_to_the_limit(process_replicas(spawn, url, 2), url)


async def test_a_delayed_retry_does_not_share_again_after_an_unshare(sharing):
    """The finding: share with r1, unshare with r2, then a late retry of r1 must not grant access again."""
    first = await sharing.ShareImage(pb.ShareImageRequest(image=IMAGE, account_ids=[BOB], request_id="r1"),
                                     metadata=internal_metadata(ALICE))
    await sharing.UnshareImage(pb.UnshareImageRequest(image=IMAGE, account_ids=[BOB], request_id="r2"),
                               metadata=internal_metadata(ALICE))
    retry = await sharing.ShareImage(pb.ShareImageRequest(image=IMAGE, account_ids=[BOB], request_id="r1"),
                                     metadata=internal_metadata(ALICE))
    assert retry == first and [s.recipient_account_id for s in first.shares] == [BOB]
    shares = await sharing.ListImageShares(pb.ListImageSharesRequest(image=IMAGE),
                                           metadata=internal_metadata(ALICE))
    assert list(shares.shares) == []
    verdict = await sharing.CheckLaunchPermission(pb.CheckLaunchPermissionRequest(image=IMAGE),
                                                  metadata=internal_metadata(BOB))
    assert not verdict.allowed


async def test_the_same_accounts_in_another_order_are_the_same_request(sharing):
    first = await sharing.ShareImage(pb.ShareImageRequest(image=IMAGE, account_ids=[BOB, CAROL], request_id="r1"),
                                     metadata=internal_metadata(ALICE))
    await sharing.UnshareImage(pb.UnshareImageRequest(image=IMAGE, account_ids=[CAROL]),
                               metadata=internal_metadata(ALICE))
    again = await sharing.ShareImage(pb.ShareImageRequest(image=IMAGE, account_ids=[CAROL, BOB, CAROL],
                                                          request_id="r1"), metadata=internal_metadata(ALICE))
    assert again == first and len(first.shares) == 2


async def test_an_empty_request_id_asks_for_no_idempotency(sharing):
    for call in ("ShareImage", "UnshareImage", "ShareImage"):
        request = getattr(pb, f"{call}Request")(image=IMAGE, account_ids=[BOB])
        response = await getattr(sharing, call)(request, metadata=internal_metadata(ALICE))
    assert [s.recipient_account_id for s in response.shares] == [BOB]


async def test_a_request_id_reused_with_other_parameters_is_refused(sharing):
    await sharing.ShareImage(pb.ShareImageRequest(image=IMAGE, account_ids=[BOB], request_id="r1"),
                             metadata=internal_metadata(ALICE))
    other_image = pb.ImageRef(image_id="img-share002", region="ap-guangzhou", kind=pb.IMAGE_KIND_CUSTOM,
                              owner_account_id=ALICE, launchable_state=True)
    reuses = [
        sharing.ShareImage(pb.ShareImageRequest(image=IMAGE, account_ids=[CAROL], request_id="r1"),
                           metadata=internal_metadata(ALICE)),
        sharing.ShareImage(pb.ShareImageRequest(image=other_image, account_ids=[BOB], request_id="r1"),
                           metadata=internal_metadata(ALICE)),
        # the same id on the other RPC is another request too
        sharing.UnshareImage(pb.UnshareImageRequest(image=IMAGE, account_ids=[BOB], request_id="r1"),
                             metadata=internal_metadata(ALICE)),
    ]
    for reuse in reuses:
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await reuse
        status, info, details = rich_status(refused.value)
        assert (refused.value.code(), info.reason) == (grpc.StatusCode.FAILED_PRECONDITION,
                                                       "IDEMPOTENCY_PARAMETER_MISMATCH")
        assert details[0].violations[0].subject == "request_id:r1"
    shares = await sharing.ListImageShares(pb.ListImageSharesRequest(image=IMAGE), metadata=internal_metadata(ALICE))
    assert [s.recipient_account_id for s in shares.shares] == [BOB]


async def _race_one_request_id(stubs: list[pb_grpc.SharingServiceStub], database_url: str) -> None:
    """20 retries of one share (r-share) race 20 retries of one unshare (r-unshare) over the replicas: each
    request runs once, so every retry of it hears the same answer, and the share is created at most once."""
    async def call(n: int) -> object:
        stub = stubs[n % len(stubs)]
        if n % 2:
            return await stub.UnshareImage(pb.UnshareImageRequest(image=IMAGE, account_ids=[BOB],
                                                                  request_id="r-unshare"),
                                           metadata=internal_metadata(ALICE), timeout=60)
        return await stub.ShareImage(pb.ShareImageRequest(image=IMAGE, account_ids=[BOB], request_id="r-share"),
                                     metadata=internal_metadata(ALICE), timeout=60)

    answers = await asyncio.gather(*(call(n) for n in range(40)))
    shared, unshared = answers[0::2], answers[1::2]
    assert all(a == shared[0] for a in shared) and all(a == unshared[0] for a in unshared)
    assert [s.recipient_account_id for s in shared[0].shares] == [BOB]  # type: ignore[attr-defined]
    engine = create_engine(database_url)
    with engine.connect() as conn:
        share_rows = conn.execute(select(SHARES.c.create_time).where(SHARES.c.image_id == IMAGE.image_id)).all()
        request_rows = conn.execute(select(REQUESTS.c.request_id).where(REQUESTS.c.account_id == ALICE)).all()
    engine.dispose()
    assert sorted(r[0] for r in request_rows) == ["r-share", "r-unshare"]
    # the unshare ran either before the share (which stays, created by the one ShareImage that ran) or after it
    assert len(share_rows) <= 1
    if share_rows:
        created = share_rows[0][0]  # naive UTC from SQLite, aware from PostgreSQL
        assert created.replace(tzinfo=created.tzinfo or UTC) == \
            shared[0].shares[0].create_time.ToDatetime(UTC)  # type: ignore[attr-defined]
    assert len(unshared[0].shares) == 0  # type: ignore[attr-defined]


async def test_one_request_id_runs_once_across_replicas_on_sqlite(spawn, tmp_path: Path):
    url = f"sqlite:///{tmp_path}/sharing.db"
    await _race_one_request_id(process_replicas(spawn, url, 2), url)


@pytest.mark.postgres
async def test_one_request_id_runs_once_across_replicas_on_postgres(spawn, postgres_database):
    url = postgres_database()
    await _race_one_request_id(process_replicas(spawn, url, 2), url)


def expect_refusal(error: grpc.aio.AioRpcError) -> tuple[grpc.StatusCode, str]:
    return error.code(), rich_status(error)[1].reason


async def test_an_image_is_retired_only_without_shares_and_is_not_shared_while_held(sharing):
    await sharing.ShareImage(pb.ShareImageRequest(image=IMAGE, account_ids=[BOB]), metadata=internal_metadata(ALICE))
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await sharing.RetireImage(pb.RetireImageRequest(image=IMAGE), metadata=internal_metadata(ALICE))
    status, info, details = rich_status(refused.value)
    assert (refused.value.code(), info.reason) == (grpc.StatusCode.FAILED_PRECONDITION, "IMAGE_SHARED")
    assert status.message == f"image {IMAGE.image_id} is shared with 1 account; unshare it first"
    assert details[0].violations[0].subject == f"image:{IMAGE.image_id}"

    await sharing.UnshareImage(pb.UnshareImageRequest(image=IMAGE, account_ids=[BOB]),
                               metadata=internal_metadata(ALICE))
    for _ in range(2):  # retiring an image without shares again changes nothing
        await sharing.RetireImage(pb.RetireImageRequest(image=IMAGE), metadata=internal_metadata(ALICE))
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await sharing.ShareImage(pb.ShareImageRequest(image=IMAGE, account_ids=[BOB]),
                                 metadata=internal_metadata(ALICE))
    assert expect_refusal(refused.value) == (grpc.StatusCode.FAILED_PRECONDITION, "IMAGE_BEING_DELETED")

    for call, request in (("RetireImage", pb.RetireImageRequest(image=IMAGE)),
                          ("RestoreImage", pb.RestoreImageRequest(image=IMAGE))):
        with pytest.raises(grpc.aio.AioRpcError) as refused:  # only the owner
            await getattr(sharing, call)(request, metadata=internal_metadata(BOB))
        assert expect_refusal(refused.value) == (grpc.StatusCode.PERMISSION_DENIED, "NOT_IMAGE_OWNER")

    await sharing.RestoreImage(pb.RestoreImageRequest(image=IMAGE), metadata=internal_metadata(ALICE))
    shared = await sharing.ShareImage(pb.ShareImageRequest(image=IMAGE, account_ids=[BOB]),
                                      metadata=internal_metadata(ALICE))
    assert [s.recipient_account_id for s in shared.shares] == [BOB]


def race_image(n: int) -> pb.ImageRef:
    return pb.ImageRef(image_id=f"img-race{n:04d}", region="ap-guangzhou", kind=pb.IMAGE_KIND_CUSTOM,
                       owner_account_id=ALICE, launchable_state=True)


async def _race_share_and_retire(stubs: list[pb_grpc.SharingServiceStub], database_url: str) -> None:
    """50 rounds, each on a fresh image: a ShareImage and a RetireImage race on two replicas. One of them
    goes first, and the other is refused; never do both succeed, and the rows agree with the answers."""
    async def outcome(call: object) -> str:
        try:
            await call  # type: ignore[misc]
            return "OK"
        except grpc.aio.AioRpcError as exc:
            code, reason = expect_refusal(exc)
            assert code == grpc.StatusCode.FAILED_PRECONDITION
            return reason

    winners = {}
    for n in range(50):
        image = race_image(n)
        share, retire = await asyncio.gather(
            outcome(stubs[n % 2].ShareImage(pb.ShareImageRequest(image=image, account_ids=[BOB]),
                                            metadata=internal_metadata(ALICE), timeout=60)),
            outcome(stubs[(n + 1) % 2].RetireImage(pb.RetireImageRequest(image=image),
                                                   metadata=internal_metadata(ALICE), timeout=60)),
        )
        assert (share, retire) in {("OK", "IMAGE_SHARED"), ("IMAGE_BEING_DELETED", "OK")}
        winners[image.image_id] = "share" if share == "OK" else "retire"
    engine = create_engine(database_url)
    with engine.connect() as conn:
        shared = dict(conn.execute(select(SHARES.c.image_id, func.count()).group_by(SHARES.c.image_id)).all())
        held = {r[0] for r in conn.execute(select(IMAGE_LOCKS.c.image_id)
                                           .where(IMAGE_LOCKS.c.retired_until.is_not(None)))}
    engine.dispose()
    assert shared == {i: 1 for i, w in winners.items() if w == "share"}
    assert held == {i for i, w in winners.items() if w == "retire"}


async def test_a_share_and_a_delete_never_both_win_on_sqlite_across_replicas(spawn, tmp_path: Path):
    url = f"sqlite:///{tmp_path}/sharing.db"
    await _race_share_and_retire(process_replicas(spawn, url, 2), url)


@pytest.mark.postgres
async def test_a_share_and_a_delete_never_both_win_on_postgres_across_replicas(spawn, postgres_database):
    url = postgres_database()
    await _race_share_and_retire(process_replicas(spawn, url, 2), url)
