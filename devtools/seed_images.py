"""Fills a catalog database with custom images, for the listing benchmark (make bench) and the listing plans'
test: many images of other accounts in a region and some of one viewer's own, with ids spread over the whole
id space as real ids are (so the viewer's images interleave with everyone else's).

    python -m devtools.seed_images DATABASE_URL [--region ap-guangzhou] [--others 1000000] [--own 10000]
                                   [--viewer 100000000001] [--owners 1000]

The catalog must have migrated the database (start it once). Rows are written in batches of BATCH, with
PostgreSQL's COPY when the database is PostgreSQL; ANALYZE follows, so the planner knows the new sizes, then a
VACUUM (PostgreSQL) or a checkpoint of the write-ahead log (SQLite), so that a benchmark measures a quiet database.
"""

from __future__ import annotations

import argparse
import hashlib
import io
import sys
import time
from collections.abc import Iterator
from datetime import UTC, datetime

from sqlalchemy import Connection, Engine, insert, text

from catalog_service.adapters.tables import IMAGES
from chassis.db import create_db_engine, is_postgres

BATCH = 20_000
_ALPHABET = "abcdefghijklmnopqrstuvwxyz0123456789"
CREATED = datetime(2026, 11, 1, tzinfo=UTC)


def bench_image_id(region: str, owner: str, number: int, image_type: str = "CUSTOM") -> str:
    """A stable, well-spread id per image: what seed_image_id does for the seeded images."""
    value = int.from_bytes(hashlib.sha256(f"bench/{region}/{image_type}/{owner}/{number}".encode()).digest()[:8],
                           "big")
    chars = []
    for _ in range(8):
        value, digit = divmod(value, 36)
        chars.append(_ALPHABET[digit])
    return "img-" + "".join(chars)


def image_rows(region: str, owner: str, count: int, start: int = 0, image_type: str = "CUSTOM"
               ) -> Iterator[dict[str, object]]:
    """The rows of an owner's images number start .. start + count - 1 in a region, NORMAL and launchable."""
    for number in range(start, start + count):
        name = f"bench-{owner}-{number}" if image_type == "CUSTOM" else f"bench-{image_type.lower()}-{number}"
        yield {
            "image_id": bench_image_id(region, owner, number, image_type), "region": region,
            "image_type": image_type, "state": "NORMAL", "name": name, "description": "", "owner_account_id": owner,
            "platform": "Ubuntu", "os_name": "Ubuntu Server 22.04 LTS 64bit", "os_type": "LINUX",
            "architecture": "X86_64", "size_gb": 20, "source": "INSTANCE", "base_image_id": "",
            "progress_percent": 100, "create_time": CREATED, "marketplace_product_id": "",
            "marketplace_provider": "", "checksum_sha256": "", "state_reason": "",
        }


def _batches(rows: Iterator[dict[str, object]]) -> Iterator[list[dict[str, object]]]:
    batch: list[dict[str, object]] = []
    for row in rows:
        batch.append(row)
        if len(batch) == BATCH:
            yield batch
            batch = []
    if batch:
        yield batch


def _copy(connection: Connection, batch: list[dict[str, object]]) -> None:
    """PostgreSQL's COPY of one batch (psycopg), an order of magnitude faster than INSERTs."""
    columns = list(batch[0])
    buffer = io.StringIO()
    for row in batch:
        buffer.write("\t".join(v.isoformat() if isinstance(v, datetime) else str(v) for v in row.values()) + "\n")
    raw = connection.connection.driver_connection
    assert raw is not None
    with raw.cursor() as cursor, cursor.copy(f"COPY catalog_image ({', '.join(columns)}) FROM STDIN") as copy:
        copy.write(buffer.getvalue())


def insert_rows(engine: Engine, rows: Iterator[dict[str, object]]) -> int:
    """Writes the rows (batch by batch, each its own transaction); returns how many."""
    written = 0
    postgres = is_postgres(engine)
    for batch in _batches(rows):
        with engine.begin() as connection:
            if postgres:
                _copy(connection, batch)
            else:
                connection.execute(insert(IMAGES), batch)
        written += len(batch)
    return written


def analyze(engine: Engine) -> None:
    """The planner told the new sizes, and the database left quiet: on PostgreSQL a VACUUM now, so that
    autovacuum does not start on the new rows while a benchmark measures; on SQLite the log checkpointed
    into the database, so that readers do not go through a write-ahead log of a million rows."""
    if is_postgres(engine):
        with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as connection:
            connection.execute(text("VACUUM ANALYZE catalog_image"))
        return
    with engine.begin() as connection:
        connection.execute(text("ANALYZE"))
    raw = engine.raw_connection()  # outside a transaction: a checkpoint cannot run inside one
    try:
        raw.cursor().execute("PRAGMA wal_checkpoint(TRUNCATE)")
    finally:
        raw.close()


def seed(engine: Engine, region: str, others: int, own: int, viewer: str, owners: int = 1000,
         others_from: int = 0) -> int:
    """``others`` images spread over ``owners`` other accounts (numbered from ``others_from`` overall, so that
    seeding again adds new ones) and ``own`` of the viewer's; returns the rows written."""
    per_owner, extra = divmod(others, owners)
    written = 0
    for index in range(owners):
        owner = f"9{index:011d}"
        count = per_owner + (1 if index < extra else 0)
        written += insert_rows(engine, image_rows(region, owner, count, start=others_from // owners))
    written += insert_rows(engine, image_rows(region, viewer, own))
    analyze(engine)
    return written


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m devtools.seed_images", description=__doc__.split("\n\n")[0])
    parser.add_argument("database_url")
    parser.add_argument("--region", default="ap-guangzhou")
    parser.add_argument("--others", type=int, default=1_000_000)
    parser.add_argument("--own", type=int, default=10_000)
    parser.add_argument("--viewer", default="100000000001")
    parser.add_argument("--owners", type=int, default=1000)
    args = parser.parse_args(argv)
    engine = create_db_engine(args.database_url)
    started = time.monotonic()
    try:
        written = seed(engine, args.region, args.others, args.own, args.viewer, args.owners)
    finally:
        engine.dispose()
    print(f"seed_images: {written} images in {time.monotonic() - started:.1f} s", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
