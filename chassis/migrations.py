"""Schema migrations (Alembic): one migration environment per context, run when a service starts.

Each context keeps its migrations in ``<package>/migrations/versions`` and its own version table
(``<context>_alembic_version``); its ``env.py`` is one call to ``run_environment``. At start-up
``migrate`` brings the context's tables to the newest revision, in one transaction: on PostgreSQL
under an advisory lock, so replicas starting together take turns; on SQLite in batch mode, which
rebuilds a table where SQLite cannot alter it. A database whose tables were made before migrations
existed (by ``create_all``) is stamped at the first revision, then upgraded like any other.

Alembic (with Mako and Pygments) is 11 MB of a process's memory, and a service needs it only to change
its schema. So a server never loads it: ``migrate_apart`` runs the migrations in a child process
(``python -m chassis.migrations``) unless the database is at the newest revision already, which
``at_head`` tells from the version table and the revision files alone; ``migrate`` in the server then
finds nothing to do and returns before importing Alembic.
"""

from __future__ import annotations

import importlib
import os
import re
import subprocess
import sys
from collections.abc import Iterable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sqlalchemy import Connection, MetaData, Table, inspect, text

from chassis.db import Database, is_postgres

if TYPE_CHECKING:
    from alembic.config import Config

# Any constant: replicas starting together take this PostgreSQL advisory lock to migrate in turn.
_SCHEMA_LOCK = 7_326_001
# The first revision of every context: the schema as it was when migrations began.
BASELINE = "0001"


def version_table(context_name: str) -> str:
    return f"{context_name}_alembic_version"


def config(package_dir: Path, context_name: str, connection: Connection | None = None) -> Config:
    """The Alembic configuration of one context (``package_dir`` holds its ``migrations`` folder)."""
    from alembic.config import Config

    cfg = Config()
    cfg.set_main_option("script_location", str(package_dir / "migrations"))
    cfg.attributes["context_name"] = context_name
    cfg.attributes["connection"] = connection
    return cfg


def migrate(db: Database, package_dir: Path, context_name: str, tables: Iterable[Table]) -> None:
    """Brings the context's tables to the newest revision (see the module's docstring)."""
    if at_head(db, package_dir, context_name):
        return
    from alembic import command

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
    from alembic import context

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


_REVISION = re.compile(r"^revision\s*(?::[^=]*)?=\s*[\"']([^\"']+)[\"']", re.MULTILINE)
_DOWN_REVISION = re.compile(r"^down_revision\s*(?::[^=]*)?=\s*(?:[\"']([^\"']+)[\"']|None)", re.MULTILINE)


def head_revision(package_dir: Path) -> str | None:
    """The newest revision of a context, read off its revision files as Alembic would (the one revision no
    other revises); None when they do not make one line."""
    revisions: set[str] = set()
    revised: set[str] = set()
    for path in (package_dir / "migrations" / "versions").glob("*.py"):
        source = path.read_text()
        revision, down = _REVISION.search(source), _DOWN_REVISION.search(source)
        if revision is None or down is None:
            return None
        revisions.add(revision.group(1))
        if down.group(1):
            revised.add(down.group(1))
    heads = revisions - revised
    return heads.pop() if len(heads) == 1 else None


def at_head(db: Database, package_dir: Path, context_name: str) -> bool:
    """Whether the context's tables are at its newest revision, without Alembic."""
    head = head_revision(package_dir)
    table = version_table(context_name)
    with db.read_engine.connect() as connection:
        if head is None or not inspect(connection).has_table(table):
            return False
        return connection.execute(text(f"SELECT version_num FROM {table}")).scalars().all() == [head]


class MigrationError(Exception):
    """The child process could not migrate; its message is the child's one line."""


_URL_VARIABLE = "CLOUDIMG_MIGRATE_DATABASE_URL"


def migrate_apart(url: str, package: str, context_name: str) -> None:
    """Brings the context of ``package`` (which holds ``migrations/`` and ``adapters.tables.TABLES``) to the
    newest revision in a child process, so that this one never loads Alembic: nothing happens when the
    database is at head. The child gets the URL through its environment, not its command line."""
    package_dir = _package_dir(package)
    db = Database(url)
    try:
        if at_head(db, package_dir, context_name):
            return
    finally:
        db.dispose()
    child = subprocess.run([sys.executable, "-m", "chassis.migrations", package, context_name],
                           env={**os.environ, _URL_VARIABLE: url}, capture_output=True, text=True, check=False)
    if child.returncode != 0:
        lines = child.stderr.strip().splitlines()
        raise MigrationError(lines[-1] if lines else f"migrations exited with code {child.returncode}")


def _package_dir(package: str) -> Path:
    return Path(importlib.import_module(package).__file__ or "").parent


def _main(package: str, context_name: str) -> int:
    """The child of ``migrate_apart``: migrates, or says why not in one line on stderr."""
    tables: list[Table] = importlib.import_module(f"{package}.adapters.tables").TABLES
    db = Database(os.environ[_URL_VARIABLE])
    try:
        migrate(db, _package_dir(package), context_name, tables)
    except Exception as exc:
        orig = getattr(exc, "orig", None)
        print(" ".join(str(orig if orig is not None else f"{type(exc).__name__}: {exc}").split()), file=sys.stderr)
        return 1
    finally:
        db.dispose()
    return 0


if __name__ == "__main__":
    sys.exit(_main(*sys.argv[1:3]))
