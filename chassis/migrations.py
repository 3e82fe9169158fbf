"""Schema migrations (Alembic): one migration environment per context, run when a service starts.

Each context keeps its migrations in ``<package>/migrations/versions`` and its own version table
(``<context>_alembic_version``); its ``env.py`` is one call to ``run_environment``. At start-up
``migrate`` brings the context's tables to the newest revision, in one transaction: on PostgreSQL
under an advisory lock, so replicas starting together take turns; on SQLite in batch mode, which
rebuilds a table where SQLite cannot alter it. A database whose tables were made before migrations
existed (by ``create_all``) is stamped at the first revision, then upgraded like any other.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from typing import Any

from alembic import command, context
from alembic.config import Config
from sqlalchemy import Connection, MetaData, Table, inspect

from chassis.db import Database, is_postgres

# Any constant: replicas starting together take this PostgreSQL advisory lock to migrate in turn.
_SCHEMA_LOCK = 7_326_001
# The first revision of every context: the schema as it was when migrations began.
BASELINE = "0001"


def version_table(context_name: str) -> str:
    return f"{context_name}_alembic_version"


def config(package_dir: Path, context_name: str, connection: Connection | None = None) -> Config:
    """The Alembic configuration of one context (``package_dir`` holds its ``migrations`` folder)."""
    cfg = Config()
    cfg.set_main_option("script_location", str(package_dir / "migrations"))
    cfg.attributes["context_name"] = context_name
    cfg.attributes["connection"] = connection
    return cfg


def migrate(db: Database, package_dir: Path, context_name: str, tables: Iterable[Table]) -> None:
    """Brings the context's tables to the newest revision (see the module's docstring)."""
    with db.engine.begin() as connection:
        if is_postgres(db.engine):
            connection.exec_driver_sql(f"SELECT pg_advisory_xact_lock({_SCHEMA_LOCK})")
        cfg = config(package_dir, context_name, connection)
        present = set(inspect(connection).get_table_names())
        if version_table(context_name) not in present and present & {t.name for t in tables}:
            command.stamp(cfg, BASELINE)  # made by create_all, before migrations
        command.upgrade(cfg, "head")


def run_environment(tables: Iterable[Table]) -> None:
    """The body of every context's ``env.py``: runs the migration command on the connection that
    ``migrate`` (or a test) handed over, comparing against the context's own tables only."""
    cfg = context.config
    connection = cfg.attributes.get("connection")
    if connection is None:
        raise RuntimeError("cloudimg migrations run through chassis.migrations, on a connection")
    target = MetaData()
    for table in tables:
        table.to_metadata(target)
    names = set(target.tables)

    def include_object(obj: Any, name: str | None, type_: str, reflected: bool, compare_to: Any) -> bool:
        # Other contexts' tables may share a database (tests); they are not this context's business.
        return type_ != "table" or name in names

    context.configure(
        connection=connection, target_metadata=target, include_object=include_object,
        version_table=version_table(cfg.attributes["context_name"]),
        render_as_batch=connection.dialect.name == "sqlite", compare_type=True,
    )
    with context.begin_transaction():
        context.run_migrations()
