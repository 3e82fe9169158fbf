"""Schema migrations on SQLite and PostgreSQL: models and migrations agree, upgrades keep the rows."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest
from alembic import command
from sqlalchemy import inspect, text

import billing_service
import catalog_service
import gateway
import sharing_service
from billing_service.adapters.tables import TABLES as BILLING_TABLES
from catalog_service.adapters.tables import TABLES as CATALOG_TABLES
from chassis.db import Database
from chassis.migrations import BASELINE, config, migrate, version_table
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
