"""Alembic environment of the gateway context: its own tables, its own version table (chassis.migrations)."""

from gateway.adapters.tables import TABLES
from chassis.migrations import run_environment

run_environment(TABLES)
