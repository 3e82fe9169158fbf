"""Sharing through real in-process servers: share acceptance by trust, the recipient's decisions, the share
limit, request_id idempotency and the delete hold under concurrency, on SQLite and PostgreSQL, with one replica
and with two replicas on one database."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Iterable
from datetime import UTC
from pathlib import Path

import grpc
import pytest
from cloudimg.sharing.v1 import sharing_service_pb2 as pb
from cloudimg.sharing.v1 import sharing_service_pb2_grpc as pb_grpc
from sqlalchemy import create_engine, func, select

from sharing_service.adapters.tables import IMAGE_LOCKS, REQUESTS, SHARES
from sharing_service.bootstrap import bootstrap
from sharing_service.domain.model import MAX_SHARES_PER_IMAGE
from sharing_service.settings import SharingSettings
from tests.conftest import ALICE, BOB, CAROL, ServerFactory, Spawn, internal_metadata, rich_status
from tests.integration.cloud import INTERNAL_SECRET

IMAGE = pb.ImageRef(image_id="img-share001", region="ap-guangzhou", kind=pb.IMAGE_KIND_CUSTOM,
                    owner_account_id=ALICE, launchable_state=True)


def account(n: int) -> str:
    return f"{300000000000 + n}"


async def replicas(serve: ServerFactory, database_url: str, count: int) -> list[pb_grpc.SharingServiceStub]:
    stubs: list[pb_grpc.SharingServiceStub] = []
    for _ in range(count):
        addr = await serve(bootstrap, SharingSettings(database_url=database_url, internal_token=INTERNAL_SECRET))
        stubs.append(pb_grpc.SharingServiceStub(grpc.aio.insecure_channel(addr)))
    return stubs


@pytest.fixture
async def sharing(serve: ServerFactory, database_url: str) -> pb_grpc.SharingServiceStub:
    return (await replicas(serve, database_url, 1))[0]


async def trust(stub: pb_grpc.SharingServiceStub, recipient: str, *owners: str) -> None:
    """The recipient's trust policy trusts these owners: their shares arrive ACCEPTED."""
    await stub.UpdateTrustPolicy(pb.UpdateTrustPolicyRequest(policy=pb.TrustPolicy(trusted_account_ids=owners),
                                                             update_paths=["trusted_account_ids"]),
                                 metadata=internal_metadata(recipient))


async def test_share_is_idempotent_and_launchable_by_the_recipient(sharing: pb_grpc.SharingServiceStub) -> None:
    await trust(sharing, BOB, ALICE)
    for _ in range(2):
        response = await sharing.ShareImage(pb.ShareImageRequest(image=IMAGE, account_ids=[BOB, BOB]),
                                            metadata=internal_metadata(ALICE))
        assert [(s.recipient_account_id, s.state) for s in response.shares] == [(BOB, pb.SHARE_STATE_ACCEPTED)]
    verdict = await sharing.CheckLaunchPermission(pb.CheckLaunchPermissionRequest(image=IMAGE),
                                                  metadata=internal_metadata(BOB))
    assert verdict.visible
    assert verdict.allowed
    assert verdict.basis == pb.LAUNCH_BASIS_SHARED
    received = await sharing.ListReceivedShares(pb.ListReceivedSharesRequest(region="ap-guangzhou"),
                                                metadata=internal_metadata(BOB))
    assert [s.image_id for s in received.shares] == [IMAGE.image_id]
    # the share holds in the image's region only
    elsewhere = pb.ImageRef(image_id=IMAGE.image_id, region="ap-beijing", kind=pb.IMAGE_KIND_CUSTOM,
                            owner_account_id=ALICE, launchable_state=True)
    verdict = await sharing.CheckLaunchPermission(pb.CheckLaunchPermissionRequest(image=elsewhere),
                                                  metadata=internal_metadata(BOB))
    assert not verdict.visible
    assert verdict.basis == pb.LAUNCH_BASIS_NONE

    await sharing.UnshareImage(pb.UnshareImageRequest(image=IMAGE, account_ids=[BOB]),
                               metadata=internal_metadata(ALICE))
    verdict = await sharing.CheckLaunchPermission(pb.CheckLaunchPermissionRequest(image=IMAGE),
                                                  metadata=internal_metadata(BOB))
    assert not verdict.visible
    assert not verdict.allowed


async def test_refusals(sharing: pb_grpc.SharingServiceStub) -> None:
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


async def test_the_51st_account_is_refused_and_nothing_is_half_written(sharing: pb_grpc.SharingServiceStub) -> None:
    await sharing.ShareImage(pb.ShareImageRequest(image=IMAGE, account_ids=[account(i) for i in range(49)]),
                             metadata=internal_metadata(ALICE))
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await sharing.ShareImage(pb.ShareImageRequest(image=IMAGE, account_ids=[account(100), account(101)]),
                                 metadata=internal_metadata(ALICE))
    assert refused.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    _status, info, details = rich_status(refused.value)
    assert info.reason == "SHARE_LIMIT_EXCEEDED"
    assert details[0].violations[0].subject == f"image:{IMAGE.image_id}"
    shares = await sharing.ListImageShares(pb.ListImageSharesRequest(image=IMAGE, page_size=1000),
                                           metadata=internal_metadata(ALICE))
    assert len(shares.shares) == 49
    # sharing again with accounts that have it changes nothing, even at the limit
    await sharing.ShareImage(pb.ShareImageRequest(image=IMAGE, account_ids=[account(100)]),
                             metadata=internal_metadata(ALICE))
    await sharing.ShareImage(pb.ShareImageRequest(image=IMAGE, account_ids=[account(100), account(0)]),
                             metadata=internal_metadata(ALICE))


async def _race_to_the_limit(stubs: list[pb_grpc.SharingServiceStub], database_url: str) -> None:
    """The image has 10 shares, PENDING, ACCEPTED and REJECTED; then 80 concurrent calls, each sharing with a new
    account (some of which trust the owner): exactly 40 succeed, 40 are refused, and no share changes state."""
    stub = stubs[0]
    earlier = [account(1000 + i) for i in range(10)]
    for recipient in earlier[:3]:
        await trust(stub, recipient, ALICE)
    for n in range(0, 80, 4):
        await trust(stubs[n % len(stubs)], account(n), ALICE)
    await stub.ShareImage(pb.ShareImageRequest(image=IMAGE, account_ids=earlier), metadata=internal_metadata(ALICE))
    for recipient in earlier[3:6]:
        await stub.RejectImageShare(pb.RejectImageShareRequest(image_id=IMAGE.image_id),
                                    metadata=internal_metadata(recipient))
    before = {account_id: "ACCEPTED" if i < 3 else "REJECTED" if i < 6 else "PENDING"
              for i, account_id in enumerate(earlier)}

    async def share(n: int) -> str:
        stub = stubs[n % len(stubs)]
        try:
            await stub.ShareImage(pb.ShareImageRequest(image=IMAGE, account_ids=[account(n)]),
                                  metadata=internal_metadata(ALICE), timeout=60)
            return "OK"
        except grpc.aio.AioRpcError as exc:
            code: str = exc.code().name
            return code

    outcomes = await asyncio.gather(*(share(n) for n in range(80)))
    assert outcomes.count("OK") == MAX_SHARES_PER_IMAGE - len(earlier)
    assert outcomes.count("RESOURCE_EXHAUSTED") == 80 - (MAX_SHARES_PER_IMAGE - len(earlier))
    engine = create_engine(database_url)
    with engine.connect() as conn:
        states = dict(conn.execute(select(SHARES.c.recipient_account_id, SHARES.c.state)
                                   .where(SHARES.c.image_id == IMAGE.image_id)).all())
    engine.dispose()
    assert len(states) == MAX_SHARES_PER_IMAGE
    assert {a: states[a] for a in earlier} == before
    winners = [n for n, outcome in enumerate(outcomes) if outcome == "OK"]
    assert {states[account(n)] for n in winners} <= {"ACCEPTED", "PENDING"}
    assert all(states[account(n)] == ("ACCEPTED" if n % 4 == 0 else "PENDING") for n in winners)


def process_replicas(spawn: Spawn, database_url: str, count: int) -> list[pb_grpc.SharingServiceStub]:
    """Replicas as real processes: within one process, handlers never interleave inside a transaction."""
    addrs = [spawn("sharing", {"SHARING_DATABASE_URL": database_url}).addr for _ in range(count)]
    return [pb_grpc.SharingServiceStub(grpc.aio.insecure_channel(addr)) for addr in addrs]


async def test_the_limit_holds_under_concurrency_on_sqlite_across_replicas(spawn: Spawn, tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path}/sharing.db"
    await _race_to_the_limit(process_replicas(spawn, url, 2), url)


@pytest.mark.postgres
async def test_the_limit_holds_under_concurrency_on_postgres_across_replicas(
        spawn: Spawn, postgres_database: Callable[[], str]) -> None:
    url = postgres_database()
    await _race_to_the_limit(process_replicas(spawn, url, 2), url)


async def test_a_delayed_retry_does_not_share_again_after_an_unshare(sharing: pb_grpc.SharingServiceStub) -> None:
    """The finding: share with r1, unshare with r2, then a late retry of r1 must not grant access again."""
    first = await sharing.ShareImage(pb.ShareImageRequest(image=IMAGE, account_ids=[BOB], request_id="r1"),
                                     metadata=internal_metadata(ALICE))
    await sharing.UnshareImage(pb.UnshareImageRequest(image=IMAGE, account_ids=[BOB], request_id="r2"),
                               metadata=internal_metadata(ALICE))
    retry = await sharing.ShareImage(pb.ShareImageRequest(image=IMAGE, account_ids=[BOB], request_id="r1"),
                                     metadata=internal_metadata(ALICE))
    assert retry == first
    assert [s.recipient_account_id for s in first.shares] == [BOB]
    shares = await sharing.ListImageShares(pb.ListImageSharesRequest(image=IMAGE),
                                           metadata=internal_metadata(ALICE))
    assert list(shares.shares) == []
    verdict = await sharing.CheckLaunchPermission(pb.CheckLaunchPermissionRequest(image=IMAGE),
                                                  metadata=internal_metadata(BOB))
    assert not verdict.allowed


async def test_the_same_accounts_in_another_order_are_the_same_request(sharing: pb_grpc.SharingServiceStub) -> None:
    first = await sharing.ShareImage(pb.ShareImageRequest(image=IMAGE, account_ids=[BOB, CAROL], request_id="r1"),
                                     metadata=internal_metadata(ALICE))
    await sharing.UnshareImage(pb.UnshareImageRequest(image=IMAGE, account_ids=[CAROL]),
                               metadata=internal_metadata(ALICE))
    again = await sharing.ShareImage(pb.ShareImageRequest(image=IMAGE, account_ids=[CAROL, BOB, CAROL],
                                                          request_id="r1"), metadata=internal_metadata(ALICE))
    assert again == first
    assert len(first.shares) == 2


async def test_an_empty_request_id_asks_for_no_idempotency(sharing: pb_grpc.SharingServiceStub) -> None:
    for call in ("ShareImage", "UnshareImage", "ShareImage"):
        request = getattr(pb, f"{call}Request")(image=IMAGE, account_ids=[BOB])
        response = await getattr(sharing, call)(request, metadata=internal_metadata(ALICE))
    assert [s.recipient_account_id for s in response.shares] == [BOB]


async def test_a_request_id_reused_with_other_parameters_is_refused(sharing: pb_grpc.SharingServiceStub) -> None:
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
        _status, info, details = rich_status(refused.value)
        assert (refused.value.code(), info.reason) == (grpc.StatusCode.FAILED_PRECONDITION,
                                                       "IDEMPOTENCY_PARAMETER_MISMATCH")
        assert details[0].violations[0].subject == "request_id:r1"
    shares = await sharing.ListImageShares(pb.ListImageSharesRequest(image=IMAGE), metadata=internal_metadata(ALICE))
    assert [s.recipient_account_id for s in shares.shares] == [BOB]


async def _race_one_request_id(stubs: list[pb_grpc.SharingServiceStub], database_url: str) -> None:
    """20 retries of one share (r-share) race 20 retries of one unshare (r-unshare) over the replicas: each
    request runs once, so every retry of it hears the same answer, and the share is created at most once."""
    async def call(n: int) -> pb.ShareImageResponse | pb.UnshareImageResponse:
        stub = stubs[n % len(stubs)]
        if n % 2:
            unshared: pb.UnshareImageResponse = await stub.UnshareImage(
                pb.UnshareImageRequest(image=IMAGE, account_ids=[BOB], request_id="r-unshare"),
                metadata=internal_metadata(ALICE), timeout=60)
            return unshared
        shared: pb.ShareImageResponse = await stub.ShareImage(
            pb.ShareImageRequest(image=IMAGE, account_ids=[BOB], request_id="r-share"),
            metadata=internal_metadata(ALICE), timeout=60)
        return shared

    answers = await asyncio.gather(*(call(n) for n in range(40)))
    shared, unshared = answers[0::2], answers[1::2]
    assert all(a == shared[0] for a in shared)
    assert all(a == unshared[0] for a in unshared)
    assert [s.recipient_account_id for s in shared[0].shares] == [BOB]
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
            shared[0].shares[0].create_time.ToDatetime(UTC)
    assert len(unshared[0].shares) == 0


async def test_one_request_id_runs_once_across_replicas_on_sqlite(spawn: Spawn, tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path}/sharing.db"
    await _race_one_request_id(process_replicas(spawn, url, 2), url)


@pytest.mark.postgres
async def test_one_request_id_runs_once_across_replicas_on_postgres(
        spawn: Spawn, postgres_database: Callable[[], str]) -> None:
    url = postgres_database()
    await _race_one_request_id(process_replicas(spawn, url, 2), url)


def expect_refusal(error: grpc.aio.AioRpcError) -> tuple[grpc.StatusCode, str]:
    return error.code(), rich_status(error)[1].reason


async def test_an_image_is_retired_only_without_shares_and_is_not_shared_while_held(
        sharing: pb_grpc.SharingServiceStub) -> None:
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
    async def outcome(call: Awaitable[object]) -> str:
        try:
            await call
            return "OK"
        except grpc.aio.AioRpcError as exc:
            code, reason = expect_refusal(exc)
            assert code == grpc.StatusCode.FAILED_PRECONDITION
            return reason

    winners: dict[str, str] = {}
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
        shared: dict[str, int] = dict(conn.execute(select(SHARES.c.image_id, func.count())
                                                   .group_by(SHARES.c.image_id)).all())
        held = {r[0] for r in conn.execute(select(IMAGE_LOCKS.c.image_id)
                                           .where(IMAGE_LOCKS.c.retired_until.is_not(None)))}
    engine.dispose()
    assert shared == {i: 1 for i, w in winners.items() if w == "share"}
    assert held == {i for i, w in winners.items() if w == "retire"}


async def test_a_share_and_a_delete_never_both_win_on_sqlite_across_replicas(spawn: Spawn, tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path}/sharing.db"
    await _race_share_and_retire(process_replicas(spawn, url, 2), url)


@pytest.mark.postgres
async def test_a_share_and_a_delete_never_both_win_on_postgres_across_replicas(
        spawn: Spawn, postgres_database: Callable[[], str]) -> None:
    url = postgres_database()
    await _race_share_and_retire(process_replicas(spawn, url, 2), url)


def states_of(shares: Iterable[pb.Share]) -> dict[str, str]:
    return {s.recipient_account_id: pb.ShareState.Name(s.state).removeprefix("SHARE_STATE_") for s in shares}


async def decide(stub: pb_grpc.SharingServiceStub, rpc: str, caller: str, image_id: str = IMAGE.image_id,
                 request_id: str = "", timeout: float | None = None) -> pb.Share:
    """AcceptImageShare or RejectImageShare (``rpc``) of the caller."""
    request = getattr(pb, f"{rpc}Request")(image_id=image_id, request_id=request_id)
    share: pb.Share = (await getattr(stub, rpc)(request, metadata=internal_metadata(caller), timeout=timeout)).share
    return share


async def test_a_share_arrives_accepted_from_a_trusted_owner_and_pending_from_anyone_else(
        sharing: pb_grpc.SharingServiceStub) -> None:
    await trust(sharing, BOB, CAROL, ALICE)
    await trust(sharing, CAROL, account(1))  # trusts someone else
    shared = await sharing.ShareImage(pb.ShareImageRequest(image=IMAGE, account_ids=[BOB, CAROL, account(2)]),
                                      metadata=internal_metadata(ALICE))
    assert states_of(shared.shares) == {BOB: "ACCEPTED", CAROL: "PENDING", account(2): "PENDING"}
    verdicts = [await sharing.CheckLaunchPermission(pb.CheckLaunchPermissionRequest(image=IMAGE),
                                                    metadata=internal_metadata(caller)) for caller in (BOB, CAROL)]
    assert [(v.visible, v.allowed, v.basis, v.share_state) for v in verdicts] == [
        (True, True, pb.LAUNCH_BASIS_SHARED, pb.SHARE_STATE_ACCEPTED),
        (True, False, pb.LAUNCH_BASIS_SHARE_PENDING, pb.SHARE_STATE_PENDING)]


async def test_sharing_again_keeps_every_share_s_state(sharing: pb_grpc.SharingServiceStub) -> None:
    await sharing.ShareImage(pb.ShareImageRequest(image=IMAGE, account_ids=[BOB, CAROL]),
                             metadata=internal_metadata(ALICE))
    await decide(sharing, "RejectImageShare", CAROL)
    await trust(sharing, BOB, ALICE)  # trusting the owner afterwards does not accept the share it has
    await trust(sharing, CAROL, ALICE)
    again = await sharing.ShareImage(pb.ShareImageRequest(image=IMAGE, account_ids=[CAROL, BOB, account(1)]),
                                     metadata=internal_metadata(ALICE))
    assert states_of(again.shares) == {BOB: "PENDING", CAROL: "REJECTED", account(1): "PENDING"}


async def test_the_recipient_accepts_and_rejects_a_share(sharing: pb_grpc.SharingServiceStub) -> None:
    shared = await sharing.ShareImage(pb.ShareImageRequest(image=IMAGE, account_ids=[BOB]),
                                      metadata=internal_metadata(ALICE))
    created = shared.shares[0].create_time
    steps = [("AcceptImageShare", pb.SHARE_STATE_ACCEPTED, pb.LAUNCH_BASIS_SHARED, True),
             ("AcceptImageShare", pb.SHARE_STATE_ACCEPTED, pb.LAUNCH_BASIS_SHARED, True),
             ("RejectImageShare", pb.SHARE_STATE_REJECTED, pb.LAUNCH_BASIS_SHARE_REJECTED, False),
             ("RejectImageShare", pb.SHARE_STATE_REJECTED, pb.LAUNCH_BASIS_SHARE_REJECTED, False),
             ("AcceptImageShare", pb.SHARE_STATE_ACCEPTED, pb.LAUNCH_BASIS_SHARED, True)]
    for rpc, state, basis, allowed in steps:
        share = await decide(sharing, rpc, BOB)
        assert share == pb.Share(image_id=IMAGE.image_id, region=IMAGE.region, owner_account_id=ALICE,
                                 recipient_account_id=BOB, state=state, create_time=created)
        verdict = await sharing.CheckLaunchPermission(pb.CheckLaunchPermissionRequest(image=IMAGE),
                                                      metadata=internal_metadata(BOB))
        # a rejected share is still visible: its recipient can change its mind
        assert (verdict.visible, verdict.allowed, verdict.basis, verdict.share_state) == (True, allowed, basis, state)
    await sharing.ShareImage(pb.ShareImageRequest(image=IMAGE, account_ids=[CAROL]),
                             metadata=internal_metadata(ALICE))
    assert (await decide(sharing, "RejectImageShare", CAROL)).state == pb.SHARE_STATE_REJECTED  # from PENDING
    owners_view = await sharing.ListImageShares(pb.ListImageSharesRequest(image=IMAGE),
                                                metadata=internal_metadata(ALICE))
    assert states_of(owners_view.shares) == {BOB: "ACCEPTED", CAROL: "REJECTED"}


async def test_a_decision_is_idempotent_by_request_id(sharing: pb_grpc.SharingServiceStub) -> None:
    await sharing.ShareImage(pb.ShareImageRequest(image=IMAGE, account_ids=[BOB]), metadata=internal_metadata(ALICE))
    other = pb.ImageRef(image_id="img-share002", region="ap-guangzhou", kind=pb.IMAGE_KIND_CUSTOM,
                        owner_account_id=ALICE, launchable_state=True)
    await sharing.ShareImage(pb.ShareImageRequest(image=other, account_ids=[BOB]), metadata=internal_metadata(ALICE))
    first = await decide(sharing, "AcceptImageShare", BOB, request_id="d1")
    await decide(sharing, "RejectImageShare", BOB, request_id="d2")
    assert await decide(sharing, "AcceptImageShare", BOB, request_id="d1") == first
    shares = await sharing.ListImageShares(pb.ListImageSharesRequest(image=IMAGE), metadata=internal_metadata(ALICE))
    assert states_of(shares.shares) == {BOB: "REJECTED"}  # the replay changed nothing
    for rpc, image_id in (("RejectImageShare", IMAGE.image_id), ("AcceptImageShare", other.image_id)):
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await decide(sharing, rpc, BOB, image_id, request_id="d1")
        _status, info, details = rich_status(refused.value)
        assert (refused.value.code(), info.reason) == (grpc.StatusCode.FAILED_PRECONDITION,
                                                       "IDEMPOTENCY_PARAMETER_MISMATCH")
        assert details[0].violations[0].subject == "request_id:d1"


async def test_a_missing_image_and_one_not_shared_with_the_caller_are_the_same_not_found(
        sharing: pb_grpc.SharingServiceStub) -> None:
    await sharing.ShareImage(pb.ShareImageRequest(image=IMAGE, account_ids=[BOB]), metadata=internal_metadata(ALICE))
    missing = "img-missing1"

    async def refusal(rpc: str, caller: str, image_id: str) -> bytes:
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await decide(sharing, rpc, caller, image_id, request_id="n1")
        status, info, details = rich_status(refused.value)
        assert (refused.value.code(), info.reason) == (grpc.StatusCode.NOT_FOUND, "SHARE_NOT_FOUND")
        assert refused.value.details() == f"image {image_id} is not shared with you"
        assert (details[0].resource_type, details[0].resource_name) == ("image", image_id)
        # everything else byte for byte (the two ids have the same length)
        serialized: bytes = status.SerializeToString()
        return serialized.replace(image_id.encode(), b"<image id>")

    for rpc in ("AcceptImageShare", "RejectImageShare"):
        answers = {await refusal(rpc, CAROL, IMAGE.image_id), await refusal(rpc, CAROL, missing),
                   await refusal(rpc, ALICE, IMAGE.image_id)}  # the owner is no recipient either
        assert len(answers) == 1
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await decide(sharing, "AcceptImageShare", BOB, "img-BAD")
    _status, info, details = rich_status(refused.value)
    assert (refused.value.code(), info.reason) == (grpc.StatusCode.INVALID_ARGUMENT, "INVALID_ID")
    assert details[0].field_violations[0].field == "image_id"


async def test_an_unshared_image_is_gone_for_its_recipient_at_once(sharing: pb_grpc.SharingServiceStub) -> None:
    await sharing.ShareImage(pb.ShareImageRequest(image=IMAGE, account_ids=[BOB]), metadata=internal_metadata(ALICE))
    await sharing.UnshareImage(pb.UnshareImageRequest(image=IMAGE, account_ids=[BOB]),
                               metadata=internal_metadata(ALICE))
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await decide(sharing, "AcceptImageShare", BOB)
    assert expect_refusal(refused.value) == (grpc.StatusCode.NOT_FOUND, "SHARE_NOT_FOUND")
    received = await sharing.ListReceivedShares(pb.ListReceivedSharesRequest(region="ap-guangzhou",
                                                                             states=list(pb.ShareState.values())[1:]),
                                                metadata=internal_metadata(BOB))
    assert list(received.shares) == []


async def test_received_shares_are_listed_by_state(sharing: pb_grpc.SharingServiceStub) -> None:
    images = [pb.ImageRef(image_id=f"img-recv000{n}", region="ap-guangzhou", kind=pb.IMAGE_KIND_CUSTOM,
                          owner_account_id=ALICE, launchable_state=True) for n in range(3)]
    for image in images:
        await sharing.ShareImage(pb.ShareImageRequest(image=image, account_ids=[BOB]),
                                 metadata=internal_metadata(ALICE))
    await decide(sharing, "AcceptImageShare", BOB, images[1].image_id)
    await decide(sharing, "RejectImageShare", BOB, images[2].image_id)

    async def received(states: list[pb.ShareState.ValueType], page_size: int = 0, page_token: str = ""
                       ) -> tuple[list[tuple[str, pb.ShareState.ValueType]], str]:
        r: pb.ListReceivedSharesResponse = await sharing.ListReceivedShares(pb.ListReceivedSharesRequest(
            region="ap-guangzhou", states=states, page_size=page_size, page_token=page_token),
            metadata=internal_metadata(BOB))
        return [(s.image_id, s.state) for s in r.shares], r.next_page_token

    pending, accepted, rejected = [(i.image_id, s) for i, s in zip(images, (
        pb.SHARE_STATE_PENDING, pb.SHARE_STATE_ACCEPTED, pb.SHARE_STATE_REJECTED), strict=True)]
    assert await received([]) == ([pending, accepted], "")
    assert await received([pb.SHARE_STATE_REJECTED]) == ([rejected], "")
    assert await received([pb.SHARE_STATE_ACCEPTED, pb.SHARE_STATE_REJECTED]) == ([accepted, rejected], "")
    everything = [pb.SHARE_STATE_PENDING, pb.SHARE_STATE_ACCEPTED, pb.SHARE_STATE_REJECTED]
    page, token = await received(everything, page_size=2)
    assert page == [pending, accepted]
    assert await received(everything, 2, token) == ([rejected], "")
    for states, page_token, field in (([pb.SHARE_STATE_PENDING], token, "page_token"),
                                      ([pb.SHARE_STATE_UNSPECIFIED], "", "states[0]"),
                                      ([pb.SHARE_STATE_PENDING, pb.ShareState.ValueType(9)], "", "states[1]")):
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await received(states, 2, page_token)
        _status, _info, details = rich_status(refused.value)
        assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert details[0].field_violations[0].field == field


async def _race_one_accept(stubs: list[pb_grpc.SharingServiceStub], database_url: str) -> None:
    """20 retries of one AcceptImageShare over two replicas: it runs once, every retry hears its answer."""
    await stubs[0].ShareImage(pb.ShareImageRequest(image=IMAGE, account_ids=[BOB]), metadata=internal_metadata(ALICE))
    answers = await asyncio.gather(*(decide(stubs[n % len(stubs)], "AcceptImageShare", BOB, request_id="a-1",
                                            timeout=60) for n in range(20)))
    assert all(a == answers[0] for a in answers)
    assert answers[0].state == pb.SHARE_STATE_ACCEPTED
    engine = create_engine(database_url)
    with engine.connect() as conn:
        ledger = conn.execute(select(REQUESTS.c.request_id, REQUESTS.c.method)
                              .where(REQUESTS.c.account_id == BOB)).all()
        state = conn.execute(select(SHARES.c.state).where(SHARES.c.image_id == IMAGE.image_id)).scalar_one()
    engine.dispose()
    assert [tuple(r) for r in ledger] == [("a-1", "AcceptImageShare")]
    assert state == "ACCEPTED"


async def test_one_accept_request_id_runs_once_across_replicas_on_sqlite(spawn: Spawn, tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path}/sharing.db"
    await _race_one_accept(process_replicas(spawn, url, 2), url)


@pytest.mark.postgres
async def test_one_accept_request_id_runs_once_across_replicas_on_postgres(
        spawn: Spawn, postgres_database: Callable[[], str]) -> None:
    url = postgres_database()
    await _race_one_accept(process_replicas(spawn, url, 2), url)
