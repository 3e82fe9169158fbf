"""Each service as a real process with a bad setting or a start-up it cannot complete: it exits at once,
non-zero, with one line on stderr that says why, and no traceback."""

from __future__ import annotations

import os
import socket
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import INTERNAL_TOKEN

MODULES = {"catalog": "catalog_service", "sharing": "sharing_service", "billing": "billing_service",
           "gateway": "gateway"}


def start(service: str, tmp_path: Path, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    """Runs ``python -m <service>`` on a fresh SQLite file and valid downstreams, changed by ``env``."""
    base = {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "CLOUDIMG_INTERNAL_TOKEN": INTERNAL_TOKEN,
        f"{service.upper()}_DATABASE_URL": f"sqlite:///{tmp_path}/{service}.db",
        "CATALOG_ADDR": "127.0.0.1:50051", "SHARING_ADDR": "127.0.0.1:50052", "BILLING_ADDR": "127.0.0.1:50053",
    }
    return subprocess.run([sys.executable, "-m", MODULES[service]], env={**base, **env}, capture_output=True,
                          text=True, timeout=20)


def assert_one_line(done: subprocess.CompletedProcess[str], code: int, expected: str) -> None:
    assert (done.returncode, done.stderr.count("\n")) == (code, 1), done.stderr
    assert expected in done.stderr, done.stderr
    assert "Traceback" not in done.stderr, done.stderr


@pytest.mark.parametrize(("service", "env", "expected"), [
    ("catalog", {"CATALOG_DATABASE_URL": "garbage"},
     "cloudimg: invalid settings for catalog: CATALOG_DATABASE_URL: not a database URL"),
    ("catalog", {"CATALOG_LISTEN_ADDR": "127.0.0.1:99999"},
     "CATALOG_LISTEN_ADDR: port must be 1-65535 (got 99999)"),
    ("sharing", {"CLOUDIMG_LOG_LEVEL": "verbose"}, "invalid settings for sharing: CLOUDIMG_LOG_LEVEL: "),
    ("billing", {"BILLING_PRICE_BOOK_PATH": "/nonexistent/price_book.json"},
     "invalid settings for billing: BILLING_PRICE_BOOK_PATH: "),
    ("gateway", {"CATALOG_ADDR": "garbage"}, "invalid settings for gateway: CATALOG_ADDR: must be host:port"),
    ("gateway", {"GATEWAY_RECONCILE_INTERVAL_SECONDS": "0"}, "GATEWAY_RECONCILE_INTERVAL_SECONDS: "),
    ("gateway", {"GATEWAY_RECONCILE_INTERVAL_SECONDS": "-5"}, "GATEWAY_RECONCILE_INTERVAL_SECONDS: "),
])
def test_a_bad_setting_exits_2_with_one_line(tmp_path: Path, service: str, env: dict[str, str], expected: str) -> None:
    assert_one_line(start(service, tmp_path, env), 2, expected)


def test_a_price_book_that_is_not_json_exits_2_naming_the_file(tmp_path: Path) -> None:
    book = tmp_path / "book.json"
    book.write_text('{"currency": ')
    done = start("billing", tmp_path, {"BILLING_PRICE_BOOK_PATH": str(book)})
    assert_one_line(done, 2, f"cloudimg: billing cannot start: BILLING_PRICE_BOOK_PATH: {book}: invalid JSON")


def test_an_unreachable_database_exits_1_without_its_password(tmp_path: Path) -> None:
    done = start("catalog", tmp_path, {"CATALOG_LISTEN_ADDR": "127.0.0.1:50999",
                                       "CATALOG_DATABASE_URL": "postgresql+psycopg://cloudimg:hunter2@127.0.0.1:1/x"})
    assert_one_line(done, 1, "cloudimg: catalog cannot start: database ")
    assert "hunter2" not in done.stderr


def test_a_schema_newer_than_the_release_exits_1_saying_so(tmp_path: Path) -> None:
    """The migrations run in a child process (chassis.migrations.migrate_apart); its failure is the service's
    one line."""
    database = tmp_path / "sharing.db"
    with sqlite3.connect(database) as connection:
        connection.execute("CREATE TABLE sharing_alembic_version (version_num VARCHAR(32) NOT NULL PRIMARY KEY)")
        connection.execute("INSERT INTO sharing_alembic_version VALUES ('9999')")
    done = start("sharing", tmp_path, {"SHARING_LISTEN_ADDR": "127.0.0.1:50998"})
    assert_one_line(done, 1, f"cloudimg: sharing cannot start: migrating database sqlite:///{database}: "
                             "CommandError: Can't locate revision identified by '9999'")


def test_an_address_in_use_exits_1(tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        addr = f"127.0.0.1:{taken.getsockname()[1]}"
        done = start("sharing", tmp_path, {"SHARING_LISTEN_ADDR": addr})
    assert_one_line(done, 1, f"cloudimg: sharing cannot start: cannot listen on {addr}: ")
