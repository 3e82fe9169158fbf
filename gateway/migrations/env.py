"""Alembic environment of the gateway context: its own tables, its own version table (chassis.migrations)."""

from chassis.migrations import run_environment
from gateway.adapters.tables import TABLES

run_environment(TABLES)
