"""Shared fixtures: in-process servers on 127.0.0.1:0, PostgreSQL databases, the internal credential,
real disk images (tests/fixtures/disk_images.py)."""

from __future__ import annotations

import asyncio
import contextlib
import os
import sqlite3
import subprocess
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol, TypeVar

import grpc
import pytest
import pytest_asyncio
from google.rpc import error_details_pb2, status_pb2
from pydantic_settings import BaseSettings
from sqlalchemy import create_engine, text

from chassis.clients import ACCOUNT_KEY, INTERNAL_TOKEN_KEY
from chassis.server import Background, RunningServer, Service, start_server

if TYPE_CHECKING:
    from devtools.stack import Stack

pytest_plugins = ["tests.fixtures.disk_images"]

INTERNAL_TOKEN = "test-internal-token-0123456789"
ALICE, BOB, CAROL = "100000000001", "100000000002", "100000000003"
PG_URL = os.environ.get("CLOUDIMG_TEST_PG_URL", "postgresql://root@127.0.0.1:5432/test")
# The suite starts services hundreds of times, each on a new database: a child process to migrate each would
# add more than a second to every stack's start. Services the tests start migrate in their own process;
# the child (production's way) has its own tests (test_migrations.py, e2e/test_bad_settings.py).
os.environ.setdefault("CLOUDIMG_MIGRATE_IN_PROCESS", "true")
# Every UpdateTrustPolicy waits out the verdict leases (1 s by default): a short lease keeps the many tests that
# change policies quick, and is exactly as safe. tests/e2e/test_verdict_leases.py runs the default's length.
os.environ.setdefault("SHARING_VERDICT_LEASE_SECONDS", "0.05")


def internal_metadata(account_id: str = ALICE, token: str = INTERNAL_TOKEN) -> tuple[tuple[str, str], ...]:
    return ((INTERNAL_TOKEN_KEY, token), (ACCOUNT_KEY, account_id))


def rich_status(error: grpc.RpcError) -> tuple[status_pb2.Status, error_details_pb2.ErrorInfo, list[Any]]:
    """The google.rpc.Status of a failed call, its one ErrorInfo, and its other details (unpacked)."""
    raw = dict(error.trailing_metadata() or ()).get("grpc-status-details-bin")
    assert raw, f"no rich status on {error}"
    status = status_pb2.Status.FromString(raw)
    details = unpacked_details(status)
    infos = [d for d in details if isinstance(d, error_details_pb2.ErrorInfo)]
    assert len(infos) == 1, f"expected exactly one ErrorInfo, got {infos}"
    return status, infos[0], [d for d in details if d is not infos[0]]


def unpacked_details(status: status_pb2.Status) -> list[Any]:
    """The google.rpc details of a status, unpacked, in order."""
    found = []
    for detail in status.details:
        for kind in (error_details_pb2.ErrorInfo, error_details_pb2.BadRequest, error_details_pb2.ResourceInfo,
                     error_details_pb2.PreconditionFailure, error_details_pb2.QuotaFailure):
            message = kind()
            if detail.Unpack(message):  # False for a detail of another type
                found.append(message)
    return found


SettingsT = TypeVar("SettingsT")
EnvSettingsT = TypeVar("EnvSettingsT", bound=BaseSettings)


def from_environment(settings_class: type[EnvSettingsT]) -> EnvSettingsT:
    """The settings as a service's start-up reads them: every field from the environment (so none is passed,
    though some, like the gateway's downstream addresses, are required)."""
    return settings_class()


class SetEnv(Protocol):
    """An ``env`` fixture: sets the environment variables given (over the module's valid defaults)."""

    def __call__(self, **values: str) -> None: ...


class ServerFactory(Protocol):
    """The ``serve`` fixture: ``addr = await serve(bootstrap, settings)``."""

    def __call__(self, bootstrap: Callable[[SettingsT], Awaitable[Service]],
                 settings: SettingsT) -> Awaitable[str]: ...


@pytest_asyncio.fixture
async def serve() -> AsyncIterator[ServerFactory]:
    """Starts a context's real server in-process: ``addr = await serve(bootstrap, settings)``."""
    started: list[tuple[RunningServer, Background, Service]] = []

    async def start(bootstrap: Callable[[SettingsT], Awaitable[Service]], settings: SettingsT) -> str:
        service = await bootstrap(settings)
        running = await start_server("127.0.0.1:0", service.register, service.authenticate)
        started.append((running, Background(service.background), service))
        return f"127.0.0.1:{running.port}"

    yield start
    for running, background, service in reversed(started):
        await asyncio.gather(running.stop(None), background.drain(5))
        await service.close()


def _postgres_reachable() -> str | None:
    try:
        import psycopg

        with psycopg.connect(PG_URL, connect_timeout=3):
            return None
    except Exception as exc:  # any failure to connect means: no PostgreSQL here
        return f"PostgreSQL is not reachable at {PG_URL}: {exc.__class__.__name__}"


@pytest.fixture(scope="session")
def postgres_server() -> str:
    reason = _postgres_reachable()
    if reason is not None:
        if os.environ.get("CLOUDIMG_REQUIRE_POSTGRES") == "1":
            pytest.fail(reason + " (CLOUDIMG_REQUIRE_POSTGRES=1)")
        pytest.skip(reason)
    return PG_URL


@contextlib.contextmanager
def _databases(server: str) -> Iterator[Callable[[], str]]:
    import psycopg

    created: list[str] = []

    def create() -> str:
        name = f"cloudimg_test_{uuid.uuid4().hex[:12]}"
        with psycopg.connect(server, autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{name}"')
        created.append(name)
        base = server.rsplit("/", 1)[0].replace("postgresql://", "postgresql+psycopg://", 1)
        return f"{base}/{name}"

    yield create
    with psycopg.connect(server, autocommit=True) as conn:
        for name in created:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture
def postgres_database(postgres_server: str) -> Iterator[Callable[[], str]]:
    """A factory of new, empty PostgreSQL databases (SQLAlchemy URLs), dropped after the test."""
    with _databases(postgres_server) as create:
        yield create


@pytest.fixture(scope="session")
def postgres_databases(postgres_server: str) -> Iterator[Callable[[], str]]:
    """The same, for session-scoped fixtures: dropped at the end of the session."""
    with _databases(postgres_server) as create:
        yield create


class ServiceProcess(subprocess.Popen[bytes]):
    """A service started by ``spawn``, with the address it listens on."""

    addr: str


class Spawn(Protocol):
    """The ``spawn`` fixture: ``spawn(service, env, wait=True)``."""

    def __call__(self, service: str, env: dict[str, str], wait: bool = True) -> ServiceProcess: ...


@pytest.fixture
def spawn(tmp_path: Path) -> Iterator[Spawn]:
    """Starts a service as a real process: ``spawn("sharing", {"SHARING_DATABASE_URL": ...})`` gives the
    process, with its address as ``.addr``, once it is SERVING; it is stopped afterwards."""
    import sys

    from devtools.stack import free_port, wait_serving

    processes: list[ServiceProcess] = []
    modules = {"catalog": "catalog_service", "sharing": "sharing_service", "billing": "billing_service",
               "gateway": "gateway"}

    def start(service: str, env: dict[str, str], wait: bool = True) -> ServiceProcess:
        addr = f"127.0.0.1:{free_port()}"
        log = open(tmp_path / f"{service}-{len(processes)}.log", "wb")  # noqa: SIM115
        process = ServiceProcess(
            [sys.executable, "-m", modules[service]], stdout=log, stderr=subprocess.STDOUT,
            env={**os.environ, "CLOUDIMG_INTERNAL_TOKEN": INTERNAL_TOKEN,
                 f"{service.upper()}_LISTEN_ADDR": addr, **env},
        )
        process.addr = addr
        processes.append(process)
        if wait:
            wait_serving(addr, 60)
        return process

    yield start
    for process in processes:
        if process.poll() is None:
            process.terminate()
    for process in processes:
        process.wait(30)


@contextlib.contextmanager
def running_stack(request: pytest.FixtureRequest, data_dir: Path, database_factory: str = "postgres_databases",
                  extra_env: dict[str, str] | None = None) -> Iterator[Stack]:
    """The four services as real processes (devtools.stack.Stack), over TLS: on SQLite files when
    ``request.param`` is "sqlite", each on its own new PostgreSQL database when it is "postgres"."""
    from devtools.stack import Stack

    urls: dict[str, str] = {}
    if request.param == "postgres":
        new_database: Callable[[], str] = request.getfixturevalue(database_factory)
        urls = {service: new_database() for service in ("catalog", "sharing", "billing", "gateway")}
    with Stack(data_dir, database_urls=urls, extra_env=dict(extra_env or {}), tls=True) as running:
        yield running


BOTH_DATABASES = ["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)]


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """A new, empty database for one service: a SQLite file, then a PostgreSQL database."""
    if request.param == "postgres":
        return str(request.getfixturevalue("postgres_database")())
    return f"sqlite:///{tmp_path}/service.db"


@contextlib.contextmanager
def billing_writes_held(stack: Stack) -> Iterator[None]:
    """Billing's ledger locked against writes while the block runs (reads go on): charges wait in billing."""
    url = stack.database_urls.get("billing")
    if url is None:
        connection = sqlite3.connect(stack.data_dir / "billing.db", isolation_level=None)
        connection.execute("BEGIN IMMEDIATE")  # WAL: readers go on, every writer waits
        try:
            yield
        finally:
            connection.execute("ROLLBACK")
            connection.close()
        return
    engine = create_engine(url)
    try:
        with engine.connect() as held:
            held.execute(text("LOCK TABLE billing_charge IN EXCLUSIVE MODE"))  # reads pass, writes wait
            try:
                yield
            finally:
                held.rollback()
    finally:
        engine.dispose()
