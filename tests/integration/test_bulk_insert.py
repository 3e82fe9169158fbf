"""chassis.db.bulk_insert on SQLite and PostgreSQL: the rows it hands the driver are stored exactly as
SQLAlchemy's own insert stores them, so that reads, comparisons and orderings cannot tell them apart."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone

import pytest
from sqlalchemy import Column, DateTime, Integer, MetaData, String, Table, Text, func, select
from sqlalchemy.exc import IntegrityError

from chassis.db import Database, bulk_insert
from gateway.adapters.tables import INSTANCES

METADATA = MetaData()
# Two tables alike: one written by bulk_insert, one by SQLAlchemy's insert.
COLUMNS = ("name", "count", "note", "at", "naive_at")


def _table(name: str) -> Table:
    return Table(name, METADATA, Column("seq", Integer, primary_key=True, autoincrement=True),
                 Column("name", String(16), nullable=False), Column("count", Integer), Column("note", Text),
                 Column("at", INSTANCES.c.create_time.type.copy()), Column("naive_at", DateTime))


BULK, PLAIN = _table("test_bulk"), _table("test_plain")
WHEN = datetime(2026, 12, 1, 22, 0, 0, tzinfo=UTC)
ROWS = [
    ("a", 1, "x", WHEN, WHEN.replace(tzinfo=None)),
    ("b", None, None, WHEN + timedelta(microseconds=1), None),
    ("c", 3, "x", WHEN, datetime(2026, 1, 1)),  # the same time again, and one on a whole second
    ("d", 4, "", datetime(2026, 12, 1, 23, 30, tzinfo=timezone(timedelta(hours=1, minutes=30))), None),
    ("e", 5, "ünïcode", None, None),
]


@pytest.fixture
def database(database_url: str) -> Database:
    db = Database(database_url)
    METADATA.create_all(db.engine)
    return db


def test_bulk_rows_are_stored_as_sqlalchemys_insert_stores_them(database: Database) -> None:
    with database.engine.begin() as connection:
        bulk_insert(connection, BULK, COLUMNS, ROWS)
        connection.execute(PLAIN.insert(), [dict(zip(COLUMNS, row, strict=True)) for row in ROWS])
        bulk_insert(connection, BULK, COLUMNS, [])  # nothing to write is not an error
    with database.engine.connect() as connection:
        def read(table: Table) -> list[tuple[object, ...]]:
            return [tuple(r) for r in connection.execute(select(*(table.c[c] for c in COLUMNS)).order_by(table.c.seq))]

        def raw(table: Table) -> list[tuple[object, ...]]:  # what the database holds, untouched by SQLAlchemy types
            return [tuple(r) for r in connection.exec_driver_sql(
                f"SELECT name, count, note, at, naive_at FROM {table.name} ORDER BY seq")]

        assert read(BULK) == read(PLAIN)
        assert raw(BULK) == raw(PLAIN)
        assert read(BULK)[0][3] == WHEN
        assert read(BULK)[3][3] == datetime(2026, 12, 1, 22, 0, tzinfo=UTC)  # stored in UTC
        # A comparison with a bound time finds the same rows in both.
        for table in (BULK, PLAIN):
            assert [r.name for r in connection.execute(select(table.c.name).where(table.c.at > WHEN))] == ["b"]
            assert connection.execute(select(func.count()).select_from(table).where(table.c.at == WHEN)).scalar() == 3


def test_a_refused_row_writes_none_of_the_batch(database: Database) -> None:
    with pytest.raises(IntegrityError), database.engine.begin() as connection:
        bulk_insert(connection, BULK, COLUMNS, [ROWS[0], (None, 1, "", None, None)])
    with database.engine.connect() as connection:
        assert connection.execute(select(func.count()).select_from(BULK)).scalar() == 0
