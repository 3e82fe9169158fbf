"""Alembic environment of the billing context: its own tables, its own version table (chassis.migrations)."""

from billing_service.adapters.tables import TABLES
from chassis.migrations import run_environment

run_environment(TABLES)
