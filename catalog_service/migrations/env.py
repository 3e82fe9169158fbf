"""Alembic environment of the catalog context: its own tables, its own version table (chassis.migrations)."""

from catalog_service.adapters.tables import TABLES
from chassis.migrations import run_environment

run_environment(TABLES)
