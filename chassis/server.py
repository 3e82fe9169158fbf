"""Server start-up and graceful shutdown, the same for every service.

A service hands over a function that adds its servicers to the server. Health reports SERVING only
once the service's start-up (its database) is ready; on SIGTERM or SIGINT it turns NOT_SERVING,
the server keeps serving for ``shutdown_drain_seconds`` (so that callers move away and the calls
already on the wire reach a handler), then in-flight calls get ``shutdown_grace_seconds`` to finish,
then the process exits.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import logging
import signal
import socket
import sys
from collections.abc import Awaitable, Callable, Coroutine, Iterable, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_health.v1.health import aio as health_aio
from grpc_reflection.v1alpha import reflection
from sqlalchemy.engine import make_url
from sqlalchemy.exc import DBAPIError

from chassis import logs, metrics, tls, tracing
from chassis.auth import internal_caller
from chassis.db import Database
from chassis.logs import fields
from chassis.migrations import MigrationError, migrate_apart
from chassis.rpc import MAX_MESSAGE_BYTES, Authenticate, ServiceInterceptor
from chassis.settings import ServiceSettings, SettingsError, load_settings

S = TypeVar("S", bound=ServiceSettings)

log = logging.getLogger("chassis.server")

# The interceptor refuses a request over MAX_MESSAGE_BYTES with an ErrorInfo (MESSAGE_TOO_LARGE); the transport
# lets through four times that so that it can, and beyond refuses the call itself (RESOURCE_EXHAUSTED, bare).
_OPTIONS = [
    ("grpc.so_reuseport", 0),  # two servers must never share a port silently
    ("grpc.max_receive_message_length", 4 * MAX_MESSAGE_BYTES),
    ("grpc.max_send_message_length", 4 * MAX_MESSAGE_BYTES),
]

# Adds a service's servicers to the server; returns the full names of the services it added.
Register = Callable[[grpc.aio.Server], Iterable[str]]


@dataclass
class RunningServer:
    server: grpc.aio.Server
    health: health_aio.HealthServicer
    port: int

    async def stop(self, grace: float | None = None, drain: float = 0.0) -> None:
        """NOT_SERVING; serving on for ``drain`` seconds; then stopping, with ``grace`` for calls in flight.

        The drain is what lets every call in flight finish: grpc.aio hands the calls that the core
        has received to handlers one at a time, and stopping the server cancels (CANCELLED) each
        call that has not reached a handler yet; under load that is most of them. Only calls in a
        handler get the grace.
        """
        await self.health.enter_graceful_shutdown()
        if drain > 0:
            await asyncio.sleep(drain)
        await self.server.stop(grace)


async def start_server(listen_addr: str, register: Register, authenticate: Authenticate,
                       default_deadline_seconds: float = 10.0,
                       credentials: grpc.ServerCredentials | None = None, access_log: bool = True) -> RunningServer:
    """Starts serving (TLS with credentials, else plaintext) and reports SERVING: call it once the
    service is ready. With tracing on (chassis.tracing), each call's server span encloses the interceptor."""
    server = grpc.aio.server(
        interceptors=[*tracing.server_interceptors(),
                      ServiceInterceptor(authenticate, default_deadline_seconds, access_log)],
        options=_OPTIONS,
    )
    names = list(register(server))
    health = health_aio.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health, server)
    reflection.enable_server_reflection(
        [*names, health_pb2.DESCRIPTOR.services_by_name["Health"].full_name, reflection.SERVICE_NAME], server
    )
    if credentials is None:
        port = server.add_insecure_port(listen_addr)
    else:
        port = server.add_secure_port(listen_addr, credentials)
    if port == 0:
        raise OSError(f"cannot listen on {listen_addr}")
    await server.start()
    for name in ["", *names]:
        await health.set(name, health_pb2.HealthCheckResponse.SERVING)
    return RunningServer(server, health, port)


# Work a service does beside answering calls (a reconciler, a job worker): it runs while the service
# is SERVING and returns soon after the event it is given is set (SIGTERM).
BackgroundWork = Callable[[asyncio.Event], Coroutine[Any, Any, None]]


class Background:
    """A service's background work, started once it is SERVING and drained when it stops."""

    def __init__(self, works: Sequence[BackgroundWork]):
        self._stopping = asyncio.Event()
        self._tasks = [asyncio.create_task(work(self._stopping)) for work in works]

    async def drain(self, grace: float | None) -> None:
        """Asks every piece of work to stop and waits for it; what is still running after the grace
        is cancelled."""
        self._stopping.set()
        if not self._tasks:
            return
        _, pending = await asyncio.wait(self._tasks, timeout=grace)
        for task in pending:
            task.cancel()
        for outcome in await asyncio.gather(*self._tasks, return_exceptions=True):
            if isinstance(outcome, Exception):
                log.error("background work failed", exc_info=outcome)


def every(seconds: float, name: str, work: Callable[[], Awaitable[object]]) -> BackgroundWork:
    """Background work that runs ``work`` every ``seconds`` until the service stops; a round that
    fails is logged, and the next one runs as planned."""

    async def loop(stopping: asyncio.Event) -> None:
        while not stopping.is_set():
            try:
                await work()
            except Exception:
                log.exception("background work failed", extra=fields(work=name))
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stopping.wait(), seconds)

    return loop


async def serve(service: str, listen_addr: str, register: Register, authenticate: Authenticate, *,
                grace_seconds: float, drain_seconds: float = 1.0, default_deadline_seconds: float = 10.0,
                background: Sequence[BackgroundWork] = (),
                on_stop: Callable[[], Awaitable[None]] | None = None,
                credentials: grpc.ServerCredentials | None = None, access_log: bool = True) -> None:
    """Runs a service until SIGTERM or SIGINT, then stops it gracefully (see ``RunningServer.stop``);
    its background work starts once it is SERVING and is drained beside the server."""
    running = await start_server(listen_addr, register, authenticate, default_deadline_seconds, credentials,
                                 access_log)
    log.info("serving", extra=fields(service=service, addr=listen_addr, port=running.port, tls=credentials is not None))
    working = Background(background)
    stopping = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stopping.set)
    await stopping.wait()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.remove_signal_handler(signum)
    log.info("stopping", extra=fields(service=service, drain_seconds=drain_seconds, grace_seconds=grace_seconds))
    await asyncio.gather(running.stop(grace_seconds, drain_seconds), working.drain(grace_seconds))
    if on_stop is not None:
        await on_stop()
    log.info("stopped", extra=fields(service=service))


@dataclass
class Service:
    """What a context's bootstrap hands the chassis: its servicers, how it authenticates, its background
    work, how it closes."""

    register: Register
    authenticate: Authenticate
    close: Callable[[], Awaitable[None]]
    background: Sequence[BackgroundWork] = ()


def servicers(*entries: tuple[Callable[[Any, grpc.aio.Server], None], object, str]) -> Register:
    """A Register for (add_XServicer_to_server, servicer, full service name) entries."""

    def register(server: grpc.aio.Server) -> list[str]:
        for add, servicer, _ in entries:
            add(servicer, server)
        return [name for _, _, name in entries]

    return register


def _check_can_listen(listen_addr: str) -> None:
    """Binds the address once, before any start-up work: gRPC only says "Failed to bind" (and logs the
    reason on a line of its own), the operating system says why."""
    host, _, port = listen_addr.rpartition(":")
    try:
        family, kind, proto, _, address = socket.getaddrinfo(
            host.strip("[]"), int(port), type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)[0]
        with socket.socket(family, kind, proto) as probe:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as gRPC's listener does
            probe.bind(address)
    except OSError as exc:
        if exc.errno == errno.EAFNOSUPPORT:  # e.g. [::] without IPv6: gRPC falls back to IPv4 itself
            return
        raise OSError(f"cannot listen on {listen_addr}: {exc.strerror}") from exc


def _reason(exc: Exception, database_url: str) -> str:
    """Why a service could not start, in one line a person can act on."""
    url = make_url(database_url).render_as_string(hide_password=True)
    if isinstance(exc, DBAPIError):  # the driver's message says why; SQLAlchemy's adds SQL and a link
        return f"database {url}: {exc.orig}"
    if isinstance(exc, MigrationError):
        return f"migrating database {url}: {exc}"
    if isinstance(exc, (SettingsError, OSError)):
        return str(exc)
    return f"{type(exc).__name__}: {exc}"


def run(service: str, settings_class: type[ServiceSettings], bootstrap: Callable[[S], Awaitable[Service]]) -> None:
    """The body of every ``python -m <service>``: settings, logs, bootstrap, serve until SIGTERM.

    A service that cannot start (a setting it cannot use, its database unreachable, its address taken)
    says why in one line on stderr and exits 2 for a setting, 1 otherwise; the traceback is logged at
    DEBUG only. The schema is migrated first, in a child process (``chassis.migrations.migrate_apart``),
    so the server never loads Alembic (unless CLOUDIMG_MIGRATE_IN_PROCESS says otherwise).
    """
    settings = load_settings(settings_class)
    logs.configure(service, settings.log_level)
    package = bootstrap.__module__.rpartition(".")[0]  # <package>.bootstrap

    async def main() -> None:
        _check_can_listen(settings.listen_addr)
        credentials = serving_credentials(settings)
        if settings.metrics_addr is not None:
            try:
                metrics.serve_metrics(settings.metrics_addr)
            except OSError as exc:
                prefix = str(settings.model_config.get("env_prefix", ""))
                raise OSError(f"{prefix}METRICS_ADDR: cannot listen on {settings.metrics_addr}: "
                              f"{exc.strerror or exc}") from exc
        tracing.configure(service, settings.otlp_endpoint)  # before bootstrap: the gateway's channels trace
        if not settings.migrate_in_process:  # else bootstrap's migrate does it here
            migrate_apart(settings.database_url, package, service)  # before serving: blocking is fine
        built = await bootstrap(settings)  # type: ignore[arg-type]
        try:
            await serve(service, settings.listen_addr, built.register, built.authenticate,
                        grace_seconds=settings.shutdown_grace_seconds, drain_seconds=settings.shutdown_drain_seconds,
                        default_deadline_seconds=settings.default_deadline_seconds, background=built.background,
                        on_stop=built.close, credentials=credentials, access_log=settings.access_log)
        finally:
            tracing.shutdown()

    try:
        asyncio.run(main())
    except KeyboardInterrupt:  # Ctrl-C before serving (serving, SIGINT stops it gracefully)
        raise SystemExit(130) from None
    except Exception as exc:
        log.debug("cannot start", exc_info=True)
        print(f"cloudimg: {service} cannot start: {' '.join(_reason(exc, settings.database_url).split())}",
              file=sys.stderr)
        raise SystemExit(2 if isinstance(exc, SettingsError) else 1) from None


def serving_credentials(settings: ServiceSettings) -> grpc.ServerCredentials | None:
    """What a service serves with: TLS when it has a certificate (mutual TLS for an internal service),
    else plaintext (which its settings allow on loopback only)."""
    if settings.tls_cert_file is None or settings.tls_key_file is None:
        return None
    client_ca = settings.internal_ca_file if settings.internal else None
    return tls.server_credentials(settings.tls_cert_file, settings.tls_key_file, client_ca)


def internal_service(settings: ServiceSettings, db: Database,
                     *entries: tuple[Callable[[Any, grpc.aio.Server], None], object, str]) -> Service:
    """The Service of a context that only the gateway calls, on one database."""

    async def close() -> None:
        db.dispose()

    token = settings.internal_token.get_secret_value() if settings.internal_token else None
    authenticate = internal_caller(token, settings.internal_peer, mutual_tls=settings.serves_tls)
    return Service(register=servicers(*entries), authenticate=authenticate, close=close)
