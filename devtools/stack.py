"""The four services as real processes on loopback: for `make run`, `make bench` and end-to-end tests.

Each service runs as ``python -m <module>`` with its settings in the environment, SQLite files
under one data folder (or the database URLs given), and is waited on through gRPC health.

With ``tls=True`` the stack runs as production does: a private CA (made with trustme) issues each
service its certificate, the gateway serves TLS, the internal services serve mutual TLS and take
the gateway's client certificate as its credential, and no internal token exists. Clients reach it
through ``channel``/``aio_channel``/``cli_args``, which carry the CA (and, to an internal service,
the gateway's certificate).
"""

from __future__ import annotations

import json
import os
import secrets
import signal
import socket
import subprocess
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

SERVICES = ("catalog", "sharing", "billing", "gateway")
_MODULES = {"catalog": "catalog_service", "sharing": "sharing_service", "billing": "billing_service",
            "gateway": "gateway"}
_ROOT = Path(__file__).resolve().parent.parent
_PROMPT_RECONNECT = [("grpc.initial_reconnect_backoff_ms", 50), ("grpc.max_reconnect_backoff_ms", 100)]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _channel(addr: str, credentials: grpc.ChannelCredentials | None,
             options: Sequence[tuple[str, Any]] = ()) -> grpc.Channel:
    if credentials is None:
        return grpc.insecure_channel(addr, options=options)
    return grpc.secure_channel(addr, credentials, options=options)


def wait_serving(addr: str, timeout: float, credentials: grpc.ChannelCredentials | None = None) -> None:
    """Waits until the server at addr reports SERVING, watching its health (no polling)."""
    # Retry connecting every 50-100 ms (not gRPC's 1 s, 1.6 s, ... backoff): a server that has just
    # come up is seen at once, so "SERVING" here means SERVING now, not a second ago.
    with _channel(addr, credentials, _PROMPT_RECONNECT) as channel:
        updates = health_pb2_grpc.HealthStub(channel).Watch(health_pb2.HealthCheckRequest(), timeout=timeout,
                                                            wait_for_ready=True)
        try:
            for update in updates:
                if update.status == health_pb2.HealthCheckResponse.SERVING:
                    updates.cancel()
                    return
        except grpc.RpcError as exc:
            if exc.code() != grpc.StatusCode.DEADLINE_EXCEEDED:
                raise
        raise TimeoutError(f"{addr} did not become SERVING within {timeout} s")


@dataclass
class Stack:
    data_dir: Path
    database_urls: dict[str, str] = field(default_factory=dict)
    extra_env: dict[str, str] = field(default_factory=dict)
    tls: bool = False
    ports: dict[str, int] = field(default_factory=dict)
    internal_token: str = field(default_factory=lambda: secrets.token_urlsafe(24))
    api_keys: dict[str, str] = field(default_factory=dict)
    processes: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)
    _logs: dict[str, IO[bytes]] = field(default_factory=dict)

    def addr(self, service: str) -> str:
        return f"127.0.0.1:{self.ports[service]}"

    # How clients reach the stack. Tests and tools make every channel through these, so the same test runs
    # over plaintext (make run) and over TLS (the e2e and fault suites).

    def channel(self, service: str = "gateway", options: Sequence[tuple[str, Any]] = ()) -> grpc.Channel:
        """A blocking channel to a service; to an internal one it is the gateway's (its credentials)."""
        return _channel(self.addr(service), self.credentials(service), options)

    def aio_channel(self, service: str = "gateway", options: Sequence[tuple[str, Any]] = ()) -> grpc.aio.Channel:
        """An asyncio channel to a service; to an internal one it is the gateway's (its credentials)."""
        credentials = self.credentials(service)
        if credentials is None:
            return grpc.aio.insecure_channel(self.addr(service), options=options)
        return grpc.aio.secure_channel(self.addr(service), credentials, options=options)

    def credentials(self, service: str = "gateway") -> grpc.ChannelCredentials | None:
        """None on plaintext; else TLS trusting the stack's CA, with the gateway's certificate to an
        internal service."""
        if not self.tls:
            return None
        ca = self.certificate("ca")
        if service == "gateway":
            return grpc.ssl_channel_credentials(ca)
        return grpc.ssl_channel_credentials(ca, self.key_file("gateway").read_bytes(), self.certificate("gateway"))

    def internal_metadata(self, account_id: str) -> tuple[tuple[str, str], ...]:
        """The metadata the gateway sends an internal service for a caller's account (under mutual TLS
        its certificate is its credential: no token)."""
        account = ("x-cloudimg-account-id", account_id)
        return (account,) if self.tls else (("x-cloudimg-internal-token", self.internal_token), account)

    def cli_args(self) -> list[str]:
        """The CLI flags that point it at this stack's gateway."""
        return ["--endpoint", self.gateway_addr, *(["--ca-cert", str(self.cert_file("ca"))] if self.tls else [])]

    @property
    def tls_dir(self) -> Path:
        return self.data_dir / "tls"

    def cert_file(self, name: str) -> Path:
        """The PEM certificate of the CA ("ca") or of a service."""
        return self.tls_dir / f"{name}.pem"

    def key_file(self, name: str) -> Path:
        return self.tls_dir / f"{name}.key"

    def certificate(self, name: str) -> bytes:
        return self.cert_file(name).read_bytes()

    def _issue_certificates(self) -> None:
        """A private CA and a certificate per service, for its name, 127.0.0.1 and localhost."""
        import trustme

        self.tls_dir.mkdir(exist_ok=True)
        ca = trustme.CA(organization_name="cloudimg test stack")
        ca.cert_pem.write_to_path(str(self.cert_file("ca")))
        for service in SERVICES:
            issued = ca.issue_cert(service, "127.0.0.1", "localhost")
            issued.private_key_pem.write_to_path(str(self.key_file(service)))
            issued.cert_chain_pems[0].write_to_path(str(self.cert_file(service)))

    @property
    def gateway_addr(self) -> str:
        return self.addr("gateway")

    def env(self, service: str) -> dict[str, str]:
        prefix = service.upper()
        env = {
            **os.environ,
            f"{prefix}_LISTEN_ADDR": self.addr(service),
            f"{prefix}_DATABASE_URL": self.database_urls.get(service, f"sqlite:///{self.data_dir / service}.db"),
        }
        if self.tls:
            env.update({
                "CLOUDIMG_INTERNAL_CA_FILE": str(self.cert_file("ca")),
                f"{prefix}_TLS_CERT_FILE": str(self.cert_file(service)),
                f"{prefix}_TLS_KEY_FILE": str(self.key_file(service)),
            })
            env.pop("CLOUDIMG_INTERNAL_TOKEN", None)
            if service == "gateway":  # its server certificate names it "gateway": its client certificate too
                env.update({"GATEWAY_INTERNAL_CERT_FILE": str(self.cert_file("gateway")),
                            "GATEWAY_INTERNAL_KEY_FILE": str(self.key_file("gateway"))})
        else:
            env["CLOUDIMG_INTERNAL_TOKEN"] = self.internal_token
        env.update(self.extra_env)
        if service == "catalog":
            # Images live beside the databases; imports read the imports/ folder and loopback URLs.
            env.setdefault("CATALOG_IMAGE_STORE_DIR", str(self.data_dir / "images"))
            env.setdefault("CATALOG_IMPORT_ROOT", str(self.imports_dir))
            env.setdefault("CATALOG_IMPORT_ALLOWED_SOURCES", "http://127.0.0.1,http://localhost")
        if service == "gateway":
            env.update({f"{d.upper()}_ADDR": self.addr(d) for d in ("catalog", "sharing", "billing")})
        return env

    @property
    def imports_dir(self) -> Path:
        """The folder file:// imports may read (CATALOG_IMPORT_ROOT)."""
        return self.data_dir / "imports"

    def start(self, timeout: float = 60.0) -> Stack:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self.imports_dir.mkdir(exist_ok=True)
        for service in SERVICES:
            self.ports.setdefault(service, free_port())
        if self.tls and not self.cert_file("ca").exists():
            self._issue_certificates()
        self.api_keys = self.issue_demo_keys()
        for service in SERVICES:
            self.start_service(service)
        for service in SERVICES:
            self.wait(service, timeout)
        return self

    def issue_demo_keys(self) -> dict[str, str]:
        return self._gateway_admin("demo-accounts")

    def issue_key(self, account_id: str, name: str) -> str:
        """Creates the account if it is missing and returns a new API key for it (``gateway issue-key``);
        it joins ``api_keys`` under its name."""
        self.api_keys[name] = self._gateway_admin("issue-key", account_id, name)[name]
        return self.api_keys[name]

    def _gateway_admin(self, *command: str) -> dict[str, str]:
        out = subprocess.run([sys.executable, "-m", "gateway", *command], env=self.env("gateway"),
                             cwd=_ROOT, check=True, capture_output=True)
        return {name: entry["api_key"] for name, entry in json.loads(out.stdout).items()}

    def start_service(self, service: str) -> None:
        log = self._logs.get(service) or open(self.data_dir / f"{service}.log", "ab")  # noqa: SIM115
        self._logs[service] = log
        self.processes[service] = subprocess.Popen(
            [sys.executable, "-m", _MODULES[service]], env=self.env(service), cwd=_ROOT,
            stdout=log, stderr=subprocess.STDOUT,
        )

    def wait(self, service: str, timeout: float = 60.0) -> None:
        """Waits until the service is SERVING; fails at once, with its log, if its process ends."""
        process = self.processes[service]
        for _ in range(max(1, int(timeout))):
            if process.poll() is not None:
                break
            try:
                wait_serving(self.addr(service), 1.0, self.credentials(service))
                return
            except TimeoutError:
                continue
        raise RuntimeError(f"{service} did not start (exit code {process.poll()}); see "
                           f"{self.data_dir / service}.log:\n{self.log_tail(service)}")

    def log_tail(self, service: str, lines: int = 30) -> str:
        path = self.data_dir / f"{service}.log"
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:]) if path.exists() else ""

    def kill(self, service: str) -> None:
        """Kills a service at once (SIGKILL), as a crash would."""
        process = self.processes.pop(service)
        process.kill()
        process.wait()

    def send_signal(self, service: str, signum: int = signal.SIGTERM) -> None:
        """Sends a signal and returns at once; ``wait_exit`` then waits for the process to end."""
        self.processes[service].send_signal(signum)

    def wait_exit(self, service: str, timeout: float = 30.0) -> int:
        """Waits for a signalled service to exit; returns its exit code."""
        code = self.processes[service].wait(timeout)
        del self.processes[service]
        return code

    def terminate(self, service: str, timeout: float = 30.0) -> int:
        """SIGTERM, then the exit code once the service has drained and stopped."""
        self.send_signal(service)
        return self.wait_exit(service, timeout)

    def stop(self) -> None:
        # All at once (the gateway first): each service drains for a moment after SIGTERM.
        running = [service for service in reversed(SERVICES) if service in self.processes]
        for service in running:
            self.send_signal(service)
        for service in running:
            try:
                self.wait_exit(service, 15)
            except subprocess.TimeoutExpired:
                self.kill(service)
        for log in self._logs.values():
            log.close()

    def __enter__(self) -> Stack:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
