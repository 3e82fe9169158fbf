"""Sharing's delete hold (RetireImage / RestoreImage) through its handlers, on a real SQLite database, with a
clock that moves without sleeping."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from functools import partial
from pathlib import Path

import pytest

import sharing_service
from chassis.clock import FakeClock
from chassis.db import Database
from chassis.errors import FailedPrecondition, PermissionDenied
from chassis.migrations import migrate
from sharing_service.adapters.tables import TABLES
from sharing_service.domain.model import DELETE_HOLD, ImageKind, ImageRef, Share, ShareState
from sharing_service.service_layer import handlers
from sharing_service.service_layer.unit_of_work import SharingUnitOfWork, UnitOfWorkFactory

ALICE, BOB, CAROL = "100000000001", "100000000002", "100000000003"
IMAGE = ImageRef("img-hold0001", "ap-guangzhou", ImageKind.CUSTOM, ALICE)


@pytest.fixture
def new_uow(tmp_path: Path) -> Iterator[UnitOfWorkFactory]:
    db = Database(f"sqlite:///{tmp_path}/sharing.db")
    migrate(db, Path(sharing_service.__file__).parent, "sharing", TABLES)
    yield partial(SharingUnitOfWork, db)
    db.dispose()


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


def share(new_uow: UnitOfWorkFactory, clock: FakeClock, *accounts: str, request_id: str = "") -> list[Share]:
    return handlers.share_image(IMAGE, list(accounts), ALICE, request_id, new_uow=new_uow, clock=clock)


def retire(new_uow: UnitOfWorkFactory, clock: FakeClock, caller: str = ALICE) -> None:
    handlers.retire_image(IMAGE, caller, new_uow=new_uow, clock=clock)


def test_a_shared_image_is_not_retired_and_the_message_counts_its_shares(
        new_uow: UnitOfWorkFactory, clock: FakeClock) -> None:
    share(new_uow, clock, BOB)
    with new_uow() as uow:  # a share in any state counts, pending and rejected ones too
        uow.shares.add([Share(IMAGE.image_id, IMAGE.region, ALICE, CAROL, ShareState.REJECTED, clock.now()),
                        Share(IMAGE.image_id, IMAGE.region, ALICE, "100000000004", ShareState.PENDING, clock.now())])
        uow.commit()
    with pytest.raises(FailedPrecondition) as refused:
        retire(new_uow, clock)
    assert refused.value.reason == "IMAGE_SHARED"
    assert refused.value.message == "image img-hold0001 is shared with 3 accounts; unshare it first"
    assert refused.value.violations[0].subject == "image:img-hold0001"
    share(new_uow, clock, BOB)  # nothing was held: sharing goes on
    handlers.unshare_image(IMAGE, [BOB, CAROL], ALICE, "", new_uow=new_uow)
    with pytest.raises(FailedPrecondition) as refused:
        retire(new_uow, clock)
    assert refused.value.message == "image img-hold0001 is shared with 1 account; unshare it first"


def test_no_share_is_made_while_the_image_is_held_until_it_is_restored(
        new_uow: UnitOfWorkFactory, clock: FakeClock) -> None:
    retire(new_uow, clock)
    retire(new_uow, clock)  # again: still no shares, still held
    with pytest.raises(FailedPrecondition) as refused:
        share(new_uow, clock, BOB, request_id="r1")
    assert refused.value.reason == "IMAGE_BEING_DELETED"
    with new_uow(read_only=True) as uow:
        assert uow.shares.count(IMAGE.image_id) == 0
    handlers.restore_image(IMAGE, ALICE, new_uow=new_uow)
    handlers.restore_image(IMAGE, ALICE, new_uow=new_uow)  # nothing held: nothing to do
    # the refused call left no trace: its request_id runs now
    assert [s.recipient_account_id for s in share(new_uow, clock, BOB, request_id="r1")] == [BOB]


def test_the_hold_runs_out_on_its_own(new_uow: UnitOfWorkFactory, clock: FakeClock) -> None:
    retire(new_uow, clock)
    clock.advance(seconds=DELETE_HOLD.total_seconds() - 1)
    with pytest.raises(FailedPrecondition):
        share(new_uow, clock, BOB)
    clock.advance(seconds=1)
    assert [s.recipient_account_id for s in share(new_uow, clock, BOB)] == [BOB]


def test_the_hold_is_kept_as_an_aware_utc_time(new_uow: UnitOfWorkFactory, clock: FakeClock) -> None:
    retire(new_uow, clock)
    with new_uow() as uow:
        assert uow.shares.lock_image(IMAGE.image_id) == datetime(2026, 1, 1, 0, 5, tzinfo=UTC)


def test_only_the_owner_retires_or_restores(new_uow: UnitOfWorkFactory, clock: FakeClock) -> None:
    attempts: tuple[Callable[[], None], ...] = (lambda: retire(new_uow, clock, BOB),
                                                lambda: handlers.restore_image(IMAGE, BOB, new_uow=new_uow))
    for attempt in attempts:
        with pytest.raises(PermissionDenied) as refused:
            attempt()
        assert (refused.value.reason, refused.value.resource_name) == ("NOT_IMAGE_OWNER", IMAGE.image_id)
    retire(new_uow, clock)
    with pytest.raises(PermissionDenied):  # nor can a stranger lift the owner's hold
        handlers.restore_image(IMAGE, BOB, new_uow=new_uow)
    with pytest.raises(FailedPrecondition):
        share(new_uow, clock, BOB)
