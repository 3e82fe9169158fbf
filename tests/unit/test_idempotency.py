"""The chassis request ledger (request_id idempotency) on a real database: SQLite, then PostgreSQL."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from sqlalchemy import MetaData, func, select

from chassis.db import Database, UnitOfWork
from chassis.errors import FailedPrecondition, InvalidArgument
from chassis.idempotency import KEEP_FOR, RequestLedger, ResponseFormat, request_table

REQUESTS = request_table("test", MetaData())
ALICE, BOB = "100000000001", "100000000002"


class Clock:
    def __init__(self) -> None:
        self.now = datetime(2030, 1, 1, tzinfo=UTC)

    def __call__(self) -> datetime:
        return self.now


DECODED: list[int] = []


def _decode(version: int, body: Any) -> list[str]:
    DECODED.append(version)
    return list(body)


NAMES = ResponseFormat[list[str]](version=3, encode=list, decode=_decode)


CLOCK = Clock()


class LedgerUnitOfWork(UnitOfWork):
    def _begin(self) -> None:
        self.requests = RequestLedger(self.connection, REQUESTS, NAMES, clock=CLOCK)


@pytest.fixture
def db(database_url: str) -> Iterator[Database]:
    database = Database(database_url)
    REQUESTS.metadata.create_all(database.engine)
    CLOCK.now = Clock().now
    yield database
    database.dispose()


def rename(db: Database, request_id: str, name: str, account_id: str = ALICE, method: str = "Rename") -> list[str]:
    """A mutation as a handler writes it: its answer is the names it was called with."""
    with LedgerUnitOfWork(db) as uow:
        claim = uow.requests.claim(account_id, request_id, method, name=name)
        if claim.repeated:
            return claim.response
        claim.answer([name, request_id])
        uow.commit()
    return [name, request_id]


def stored(db: Database) -> int:
    with db.engine.connect() as conn:
        return int(conn.execute(select(func.count()).select_from(REQUESTS)).scalar_one())


def test_a_repeat_returns_the_first_answer_through_its_format_version(db: Database) -> None:
    assert rename(db, "r1", "a") == ["a", "r1"]
    DECODED.clear()
    assert rename(db, "r1", "a") == ["a", "r1"]
    assert DECODED == [3]
    assert stored(db) == 1


def test_other_parameters_or_another_method_are_a_mismatch(db: Database) -> None:
    rename(db, "r1", "a")
    for name, method in [("b", "Rename"), ("a", "Delete")]:
        with pytest.raises(FailedPrecondition) as refused:
            rename(db, "r1", name, method=method)
        assert refused.value.reason == "IDEMPOTENCY_PARAMETER_MISMATCH"
        assert refused.value.violations[0].subject == "request_id:r1"
    assert "(for Rename)" in refused.value.message


def test_request_ids_belong_to_an_account(db: Database) -> None:
    rename(db, "r1", "a")
    assert rename(db, "r1", "b", account_id=BOB) == ["b", "r1"]


def test_an_empty_request_id_records_nothing(db: Database) -> None:
    rename(db, "", "a")
    rename(db, "", "b")
    assert stored(db) == 0


def test_a_call_that_rolls_back_leaves_its_request_id_free(db: Database) -> None:
    with LedgerUnitOfWork(db) as uow:
        assert not uow.requests.claim(ALICE, "r1", "Rename", name="a").repeated
    assert rename(db, "r1", "b") == ["b", "r1"]


def test_a_malformed_request_id_is_refused(db: Database) -> None:
    with pytest.raises(InvalidArgument):
        rename(db, "x" * 65, "a")


def test_records_are_kept_for_a_week_then_dropped_by_a_later_request_of_the_account(db: Database) -> None:
    rename(db, "old", "a")
    rename(db, "old-bob", "a", account_id=BOB)
    CLOCK.now += KEEP_FOR - timedelta(seconds=1)
    rename(db, "r2", "a")
    assert rename(db, "old", "a") == ["a", "old"]
    assert stored(db) == 3
    CLOCK.now += timedelta(seconds=2)
    rename(db, "r3", "a")
    assert stored(db) == 3  # ALICE's "old" went; BOB's waits for a request of BOB's


def test_a_concurrent_repeat_waits_for_the_first_and_returns_its_answer(db: Database) -> None:
    """The second claim blocks (PostgreSQL: on the primary key; SQLite: on BEGIN IMMEDIATE) until the first
    transaction commits, then sees the answer instead of running the mutation again."""
    second: list[list[str]] = []
    with LedgerUnitOfWork(db) as first:
        claim = first.requests.claim(ALICE, "r1", "Rename", name="a")
        thread = threading.Thread(target=lambda: second.append(rename(db, "r1", "a")))
        thread.start()
        thread.join(0.5)
        assert thread.is_alive()  # still waiting on the first transaction
        claim.answer(["first"])
        first.commit()
    thread.join(30)
    assert second == [["first"]]
    assert stored(db) == 1
