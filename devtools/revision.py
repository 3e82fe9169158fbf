"""`make revision SERVICE=billing MESSAGE="what changes"`: a new Alembic revision for one context.

Migrates a scratch SQLite database to the context's newest revision, then lets Alembic write the
difference between it and the models as the next numbered revision in ``<service>/migrations/versions``.
Read and tidy what it wrote: autogenerate is a draft (it cannot see renames, for one).
"""

from __future__ import annotations

import sys
import tempfile
from importlib import import_module
from pathlib import Path

from alembic import command
from alembic.script import ScriptDirectory

from chassis.db import Database
from chassis.migrations import config, migrate

PACKAGES = {"catalog": "catalog_service", "sharing": "sharing_service", "billing": "billing_service",
            "gateway": "gateway"}


def main(argv: list[str]) -> int:
    if len(argv) != 2 or argv[0] not in PACKAGES or not argv[1].strip():
        print(f"usage: python -m devtools.revision {{{','.join(PACKAGES)}}} MESSAGE", file=sys.stderr)
        return 2
    context, message = argv
    package = import_module(PACKAGES[context])
    package_dir = Path(package.__file__).parent  # type: ignore[arg-type]
    tables = import_module(f"{PACKAGES[context]}.adapters.tables").TABLES
    with tempfile.TemporaryDirectory() as scratch:
        db = Database(f"sqlite:///{scratch}/{context}.db")
        migrate(db, package_dir, context, tables)
        with db.engine.begin() as connection:
            cfg = config(package_dir, context, connection)
            head = ScriptDirectory.from_config(cfg).get_current_head() or "0000"
            command.revision(cfg, message, autogenerate=True, rev_id=f"{int(head) + 1:04d}")
        db.dispose()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
