"""Alembic environment of the sharing context: its own tables, its own version table (chassis.migrations)."""

from chassis.migrations import run_environment
from sharing_service.adapters.tables import TABLES

run_environment(TABLES)
