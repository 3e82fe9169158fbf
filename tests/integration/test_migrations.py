"""Schema migrations on SQLite and PostgreSQL: models and migrations agree, upgrades keep the rows."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest
from alembic import command
from alembic.script import ScriptDirectory
from sqlalchemy import inspect, text

import billing_service
import catalog_service
import gateway
import sharing_service
from billing_service.adapters.tables import TABLES as BILLING_TABLES
from catalog_service.adapters.tables import TABLES as CATALOG_TABLES
from chassis.db import Database
from chassis.migrations import (
    BASELINE,
    MigrationError,
    at_head,
    config,
    head_revision,
    migrate,
    migrate_apart,
    version_table,
)
from gateway.adapters.tables import TABLES as GATEWAY_TABLES
from sharing_service.adapters.tables import TABLES as SHARING_TABLES

CONTEXTS = {
    "catalog": (Path(catalog_service.__file__).parent, CATALOG_TABLES),
    "sharing": (Path(sharing_service.__file__).parent, SHARING_TABLES),
    "billing": (Path(billing_service.__file__).parent, BILLING_TABLES),
    "gateway": (Path(gateway.__file__).parent, GATEWAY_TABLES),
}
NOW = datetime(2026, 11, 28, tzinfo=UTC)


@pytest.fixture
def db(database_url: str) -> Iterator[Database]:
    database = Database(database_url)
    yield database
    database.dispose()


def migrate_context(db: Database, context: str) -> None:
    package_dir, tables = CONTEXTS[context]
    migrate(db, package_dir, context, tables)


def upgrade_to(db: Database, context: str, revision: str) -> None:
    with db.engine.begin() as connection:
        command.upgrade(config(CONTEXTS[context][0], context, connection), revision)


@pytest.mark.parametrize("context", CONTEXTS)
def test_every_model_change_has_its_migration(db: Database, context: str) -> None:
    """`alembic check`: the newest revision builds exactly the tables the models describe."""
    migrate_context(db, context)
    with db.engine.begin() as connection:
        command.check(config(CONTEXTS[context][0], context, connection))  # raises when they differ


def test_all_four_contexts_migrate_side_by_side_in_one_database(db: Database) -> None:
    """Each context keeps its own version table, so they can even share a database."""
    for context in CONTEXTS:
        migrate_context(db, context)
    names = set(inspect(db.engine).get_table_names())
    assert {version_table(c) for c in CONTEXTS} <= names
    assert {t.name for _, tables in CONTEXTS.values() for t in tables} <= names


def test_a_database_at_the_first_revision_with_rows_is_upgraded_and_keeps_them(db: Database) -> None:
    upgrade_to(db, "billing", BASELINE)
    upgrade_to(db, "sharing", BASELINE)
    with db.engine.begin() as connection:
        connection.execute(text(
            "INSERT INTO billing_charge (charge_id, account_id, idempotency_key, request_fingerprint, region, "
            "currency, charge_type, total, lines, instance_ids, create_time) VALUES ('chg-00000001', "
            "'100000000001', 'lch-00000001', 'f', 'ap-guangzhou', 'USD', 'POSTPAID_BY_HOUR', '0.058', '[]', "
            "'[\"ins-00000001\"]', :now)"), {"now": NOW})
        connection.execute(text(
            "INSERT INTO sharing_share (image_id, recipient_account_id, owner_account_id, region, state, "
            "create_time) VALUES ('img-00000001', '100000000002', '100000000001', 'ap-guangzhou', 'ACCEPTED', "
            ":now)"), {"now": NOW})
    migrate_context(db, "billing")
    migrate_context(db, "sharing")
    migrate_context(db, "billing")  # at head already: nothing to do
    with db.engine.connect() as connection:
        assert connection.execute(text("SELECT charge_id, total FROM billing_charge")).all() == [
            ("chg-00000001", "0.058")]
        assert connection.execute(text("SELECT recipient_account_id FROM sharing_share")).all() == [
            ("100000000002",)]
        assert connection.execute(text("SELECT count(*) FROM billing_charge_key")).scalar_one() == 0
        assert connection.execute(text("SELECT count(*) FROM sharing_request")).scalar_one() == 0


def test_tables_made_before_migrations_existed_are_adopted_not_recreated(db: Database) -> None:
    """A database of the release before migrations (tables made by create_all, no version table)."""
    upgrade_to(db, "billing", BASELINE)
    with db.engine.begin() as connection:
        connection.execute(text(f"DROP TABLE {version_table('billing')}"))
        connection.execute(text(
            "INSERT INTO billing_charge (charge_id, account_id, idempotency_key, request_fingerprint, region, "
            "currency, charge_type, total, lines, instance_ids, create_time) VALUES ('chg-00000002', "
            "'100000000001', 'lch-00000002', 'f', 'ap-guangzhou', 'USD', 'POSTPAID_BY_HOUR', '1', '[]', '[]', "
            ":now)"), {"now": NOW})
    migrate_context(db, "billing")
    with db.engine.connect() as connection:
        assert connection.execute(text("SELECT charge_id FROM billing_charge")).scalar_one() == "chg-00000002"
        assert connection.execute(text(f"SELECT version_num FROM {version_table('billing')}")).scalar_one() == "0003"


@pytest.mark.parametrize("context", CONTEXTS)
def test_the_head_read_off_the_revision_files_is_alembics(db: Database, context: str) -> None:
    package_dir, _ = CONTEXTS[context]
    assert head_revision(package_dir) == ScriptDirectory.from_config(config(package_dir, context)).get_current_head()
    assert not at_head(db, package_dir, context)  # an empty database
    upgrade_to(db, context, BASELINE)
    assert not at_head(db, package_dir, context)  # behind
    migrate_context(db, context)
    assert at_head(db, package_dir, context)


def _python(code: str, url: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-c", code], env={**os.environ, "URL": url}, capture_output=True,
                          text=True, timeout=60, check=False)


def test_a_server_migrates_in_a_child_and_never_loads_alembic(database_url: str) -> None:
    """migrate_apart migrates a new database in a child process; then the service's own migrate finds it at
    head and returns, so the server's process never imports Alembic (11 MB of its memory)."""
    done = _python(
        "import os, sys\n"
        "from pathlib import Path\n"
        "import sharing_service\n"
        "from chassis.db import Database\n"
        "from chassis.migrations import at_head, migrate, migrate_apart\n"
        "from sharing_service.adapters.tables import TABLES\n"
        "migrate_apart(os.environ['URL'], 'sharing_service', 'sharing')\n"
        "db = Database(os.environ['URL'])\n"
        "package_dir = Path(sharing_service.__file__).parent\n"
        "assert at_head(db, package_dir, 'sharing')\n"
        "migrate(db, package_dir, 'sharing', TABLES)\n"
        "migrate_apart(os.environ['URL'], 'sharing_service', 'sharing')  # at head: no child at all\n"
        "print(sorted(m for m in sys.modules if m.split('.')[0] in ('alembic', 'mako')))\n", database_url)
    assert (done.returncode, done.stdout.strip()) == (0, "[]"), done.stderr


def test_a_migration_that_fails_in_the_child_says_why_in_one_line(db: Database, database_url: str) -> None:
    migrate_context(db, "sharing")
    with db.engine.begin() as connection:
        connection.execute(text(f"UPDATE {version_table('sharing')} SET version_num = '9999'"))
    with pytest.raises(MigrationError, match=r"^CommandError: Can't locate revision identified by '9999'$"):
        migrate_apart(database_url, "sharing_service", "sharing")
