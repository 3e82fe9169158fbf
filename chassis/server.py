"""Server start-up and graceful shutdown, the same for every service.

A service hands over a function that adds its servicers to the server. Health reports SERVING only
once the service's start-up (its database) is ready; on SIGTERM or SIGINT it turns NOT_SERVING,
in-flight calls get ``shutdown_grace_seconds`` to finish, then the process exits.
"""

from __future__ import annotations

import asyncio
import logging
import signal
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass
from typing import Any, TypeVar

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_health.v1.health import aio as health_aio
from grpc_reflection.v1alpha import reflection

from chassis import logs
from chassis.auth import internal_caller
from chassis.db import Database
from chassis.logs import fields
from chassis.rpc import Authenticate, ServiceInterceptor
from chassis.settings import ServiceSettings, load_settings

S = TypeVar("S", bound=ServiceSettings)

log = logging.getLogger("chassis.server")

MAX_MESSAGE_BYTES = 1 * 1024 * 1024
_OPTIONS = [
    ("grpc.so_reuseport", 0),  # two servers must never share a port silently
    ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
    ("grpc.max_send_message_length", 4 * MAX_MESSAGE_BYTES),
]

# Adds a service's servicers to the server; returns the full names of the services it added.
Register = Callable[[grpc.aio.Server], Iterable[str]]


@dataclass
class RunningServer:
    server: grpc.aio.Server
    health: health_aio.HealthServicer
    port: int

    async def stop(self, grace: float | None = None) -> None:
        await self.health.enter_graceful_shutdown()
        await self.server.stop(grace)


async def start_server(listen_addr: str, register: Register, authenticate: Authenticate,
                       default_deadline_seconds: float = 10.0) -> RunningServer:
    """Starts serving and reports SERVING: call it once the service is ready."""
    server = grpc.aio.server(
        interceptors=[ServiceInterceptor(authenticate, default_deadline_seconds)], options=_OPTIONS
    )
    names = list(register(server))
    health = health_aio.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health, server)
    reflection.enable_server_reflection(
        [*names, health_pb2.DESCRIPTOR.services_by_name["Health"].full_name, reflection.SERVICE_NAME], server
    )
    port = server.add_insecure_port(listen_addr)
    if port == 0:
        raise OSError(f"cannot listen on {listen_addr}")
    await server.start()
    for name in ["", *names]:
        await health.set(name, health_pb2.HealthCheckResponse.SERVING)
    return RunningServer(server, health, port)


async def serve(service: str, listen_addr: str, register: Register, authenticate: Authenticate, *,
                grace_seconds: float, default_deadline_seconds: float = 10.0,
                on_stop: Callable[[], Awaitable[None]] | None = None) -> None:
    """Runs a service until SIGTERM or SIGINT, then stops it gracefully."""
    running = await start_server(listen_addr, register, authenticate, default_deadline_seconds)
    log.info("serving", extra=fields(service=service, addr=listen_addr, port=running.port))
    stopping = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stopping.set)
    await stopping.wait()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.remove_signal_handler(signum)
    log.info("stopping", extra=fields(service=service, grace_seconds=grace_seconds))
    await running.stop(grace_seconds)
    if on_stop is not None:
        await on_stop()
    log.info("stopped", extra=fields(service=service))


@dataclass
class Service:
    """What a context's bootstrap hands the chassis: its servicers, how it authenticates, how it closes."""

    register: Register
    authenticate: Authenticate
    close: Callable[[], Awaitable[None]]


def servicers(*entries: tuple[Callable[[Any, grpc.aio.Server], None], object, str]) -> Register:
    """A Register for (add_XServicer_to_server, servicer, full service name) entries."""

    def register(server: grpc.aio.Server) -> list[str]:
        for add, servicer, _ in entries:
            add(servicer, server)
        return [name for _, _, name in entries]

    return register


def run(service: str, settings_class: type[ServiceSettings], bootstrap: Callable[[S], Awaitable[Service]]) -> None:
    """The body of every ``python -m <service>``: settings, logs, bootstrap, serve until SIGTERM."""

    async def main() -> None:
        settings = load_settings(settings_class)
        logs.configure(service, settings.log_level)
        built = await bootstrap(settings)  # type: ignore[arg-type]
        await serve(service, settings.listen_addr, built.register, built.authenticate,
                    grace_seconds=settings.shutdown_grace_seconds,
                    default_deadline_seconds=settings.default_deadline_seconds, on_stop=built.close)

    asyncio.run(main())


def internal_service(internal_token: str, db: Database,
                     *entries: tuple[Callable[[Any, grpc.aio.Server], None], object, str]) -> Service:
    """The Service of a context that only the gateway calls, on one database."""

    async def close() -> None:
        db.dispose()

    return Service(register=servicers(*entries), authenticate=internal_caller(internal_token), close=close)
