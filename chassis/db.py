"""The database engine and the unit of work (SQLite by default, PostgreSQL in production).

SQLite runs in WAL mode with a busy timeout, and every writing transaction starts with
BEGIN IMMEDIATE: SQLAlchemy's lazy BEGIN would let two read-then-write transactions interleave
and break limits. Readers use ``read_only`` units of work, which start with a plain BEGIN.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from types import TracebackType
from typing import Any, Self

from sqlalchemy import Connection, Engine, Table, create_engine, event
from sqlalchemy.engine import make_url
from sqlalchemy.exc import DBAPIError

_BEGIN_OPTION = "cloudimg_begin"


def create_db_engine(url: str) -> Engine:
    parsed = make_url(url)
    if parsed.get_backend_name() != "sqlite":
        return create_engine(url, pool_pre_ping=True, pool_size=10, max_overflow=10)
    if parsed.database and parsed.database != ":memory:":
        Path(parsed.database).parent.mkdir(parents=True, exist_ok=True)
    engine = create_engine(url, connect_args={"check_same_thread": False, "timeout": 30})

    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_connection: Any, _record: Any) -> None:
        dbapi_connection.isolation_level = None  # we emit BEGIN ourselves, below
        cursor = dbapi_connection.cursor()
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute("PRAGMA synchronous=NORMAL")
        cursor.execute("PRAGMA busy_timeout=30000")
        cursor.execute("PRAGMA foreign_keys=ON")
        cursor.close()

    @event.listens_for(engine, "begin")
    def _on_begin(connection: Any) -> None:
        connection.exec_driver_sql(connection.get_execution_options().get(_BEGIN_OPTION, "BEGIN IMMEDIATE"))

    return engine


def is_postgres(engine: Engine) -> bool:
    return engine.dialect.name == "postgresql"


class Database:
    """A context's database: the engine, and a view of it whose transactions only read."""

    def __init__(self, url: str):
        self.engine = create_db_engine(url)
        self.read_engine = self.engine.execution_options(**{_BEGIN_OPTION: "BEGIN"})

    def dispose(self) -> None:
        self.engine.dispose()


class UnitOfWork:
    """One transaction: ``with uow: ...; uow.commit()``. Rolls back unless committed.

    Repositories work on ``self.connection`` with SQLAlchemy Core: an ORM session would cost several
    times as much per statement on the hot path, and the tables' rows map to domain objects anyway.
    Never await inside one: the event loop would run other calls while a write lock is held.
    Contexts subclass it to hang their repositories on the connection.
    """

    def __init__(self, db: Database, *, read_only: bool = False):
        self._engine = db.read_engine if read_only else db.engine
        self.connection: Connection

    def __enter__(self) -> Self:
        self.connection = self._engine.connect()
        self._transaction = self.connection.begin()
        self._begin()
        return self

    def _begin(self) -> None:
        """Hook for subclasses to build their repositories on ``self.connection``."""

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        if self._transaction.is_active:
            self._transaction.rollback()
        self.connection.close()

    def commit(self) -> None:
        self._transaction.commit()


@functools.cache
def _ignoring_insert(dialect: str, table: Table, returning: tuple[str, ...]) -> Any:
    statement: Any
    if dialect == "postgresql":
        from sqlalchemy.dialects.postgresql import insert as pg_insert

        statement = pg_insert(table).on_conflict_do_nothing()
    else:
        from sqlalchemy.dialects.sqlite import insert as sqlite_insert

        statement = sqlite_insert(table).on_conflict_do_nothing()
    return statement.returning(*(table.c[name] for name in returning)) if returning else statement


def ignoring_insert(connection: Connection, table: Table, *returning: str) -> Any:
    """INSERT ... ON CONFLICT DO NOTHING [RETURNING the columns named] for the connection's dialect, built once:
    execute it with the row as parameters (``connection.execute(statement, row)``, or a list of rows), so that
    the hot path neither builds nor compiles a statement per call. A row went in when it is returned."""
    return _ignoring_insert(connection.dialect.name, table, returning)


def insert_ignoring_duplicates(connection: Connection, table: Table) -> Any:
    """INSERT ... ON CONFLICT DO NOTHING for the connection's dialect (SQLite or PostgreSQL).

    To learn whether the row went in, add ``.returning(<a column>)`` and look for a row: psycopg
    reports no rowcount (-1) for an INSERT.
    """
    return _ignoring_insert(connection.dialect.name, table, ())


_PLACEHOLDERS = {"qmark": "?", "format": "%s", "pyformat": "%s"}
_BULK_INSERTS: dict[tuple[str, Table, tuple[str, ...]], tuple[str, tuple[Callable[[Any], Any] | None, ...]]] = {}


def _bulk_insert(dialect: Any, table: Table, columns: tuple[str, ...]
                 ) -> tuple[str, tuple[Callable[[Any], Any] | None, ...]]:
    key = (dialect.name, table, columns)
    found = _BULK_INSERTS.get(key)
    if found is None:
        preparer = dialect.identifier_preparer
        into = f"{preparer.format_table(table)} ({', '.join(preparer.quote(c) for c in columns)})"
        if dialect.name == "postgresql":
            sql = f"COPY {into} FROM STDIN"
        else:
            sql = f"INSERT INTO {into} VALUES ({', '.join(_PLACEHOLDERS[dialect.paramstyle] for _ in columns)})"
        found = _BULK_INSERTS[key] = sql, tuple(table.c[c].type._cached_bind_processor(dialect) for c in columns)
    return found


def bulk_insert(connection: Connection, table: Table, columns: Sequence[str], rows: Iterable[Sequence[Any]]) -> None:
    """Many rows in one executemany (SQLite) or one COPY (PostgreSQL), handed to the driver as they are stored.
    The statement is rendered once per dialect, table and columns; each column's values go through its type's
    bind processor once per distinct value (a launch's rows share their times and most of their strings)
    instead of through SQLAlchemy's per-row parameter processing, which cost more than the insert itself.
    ``rows`` hold the values the columns' types take (aware datetimes, plain strings), in ``columns``' order:
    what is stored is exactly what ``connection.execute(table.insert(), [{...}, ...])`` would store, and a
    refused row fails the statement with SQLAlchemy's error (IntegrityError, ...), as there."""
    sql, processors = _bulk_insert(connection.dialect, table, tuple(columns))
    batch = [list(row) for row in rows]
    if not batch:
        return
    for index, process in enumerate(processors):
        if process is None:
            continue
        stored: dict[Any, Any] = {}
        for row in batch:
            value = row[index]
            if value is not None:
                row[index] = stored[value] if value in stored else stored.setdefault(value, process(value))
    if connection.dialect.name == "postgresql":
        _copy(connection, sql, batch)
    else:
        connection.exec_driver_sql(sql, [tuple(row) for row in batch])


def _copy(connection: Connection, statement: str, rows: list[list[Any]]) -> None:
    """COPY ... FROM STDIN in the connection's transaction: psycopg's executemany costs three times as much a row
    in the service (12 µs against 4), and a launch writes 100."""
    dbapi = connection.dialect.loaded_dbapi
    try:
        with connection.connection.dbapi_connection.cursor() as cursor, cursor.copy(statement) as copy:  # type: ignore[union-attr]
            for row in rows:
                copy.write_row(row)
    except dbapi.Error as exc:
        raise DBAPIError.instance(statement, None, exc, dbapi.Error, dialect=connection.dialect) from exc
