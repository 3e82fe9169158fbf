"""Alembic environment of the sharing context: its own tables, its own version table (chassis.migrations)."""

from sharing_service.adapters.tables import TABLES
from chassis.migrations import run_environment

run_environment(TABLES)
