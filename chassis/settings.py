"""Settings from the environment (pydantic-settings): one prefix per service, failing fast.

A bad value is refused when the settings are read, in one line that names the variable, so a service
never starts on a port it was not given or spins on an interval of 0.
"""

from __future__ import annotations

import ipaddress
import re
import sys
from typing import Annotated, ClassVar, Literal, TypeVar

from pydantic import AfterValidator, BeforeValidator, Field, FilePath, SecretStr, ValidationError, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict
from sqlalchemy.engine import make_url
from sqlalchemy.exc import ArgumentError

_HOST_PORT = re.compile(r"(?:\[(?P<ipv6>[0-9A-Fa-f:.]+)\]|(?P<host>[A-Za-z0-9_.-]+)):(?P<port>[0-9]+)")


def host_port(value: str) -> str:
    """HOST:PORT, the host a name, an IPv4 address or a bracketed IPv6 address ([::]:50050)."""
    match = _HOST_PORT.fullmatch(value)
    if match is None or (match["ipv6"] is not None and not _is_ipv6(match["ipv6"])):
        raise ValueError(f"must be host:port, e.g. catalog:50051 or [::]:50051 (got {value[:80]!r})")
    if not 1 <= int(match["port"]) <= 65535:
        raise ValueError(f"port must be 1-65535 (got {match['port']})")
    return value


def _is_ipv6(text: str) -> bool:
    try:
        ipaddress.IPv6Address(text)
    except ValueError:
        return False
    return True


DATABASE_BACKENDS = ("sqlite", "postgresql")


def database_url(value: str) -> str:
    """A SQLAlchemy URL of a supported backend whose driver is installed. Messages never repeat the URL:
    it may hold a password."""
    try:
        url = make_url(value)
    except ArgumentError:
        raise ValueError("not a database URL, e.g. sqlite:///data/catalog.db or "
                         "postgresql+psycopg://user@host:5432/catalog") from None
    if url.get_backend_name() not in DATABASE_BACKENDS:
        raise ValueError(f"unsupported database {url.get_backend_name()!r}: use sqlite or postgresql")
    try:
        url.get_dialect().import_dbapi()
    except ArgumentError:  # SQLAlchemy knows no such driver
        raise ValueError(f"unknown database driver {url.drivername!r}, e.g. postgresql+psycopg") from None
    except ImportError as exc:
        raise ValueError(f"database driver {url.drivername!r} needs {exc.name}, which is not installed"
                         " (postgresql+psycopg is)") from None
    return value


_OTLP_ENDPOINT = re.compile(r"(?P<scheme>https?)://(?P<addr>[^/?#]+)/?")


def otlp_endpoint(value: str) -> str:
    """An OTLP/gRPC collector: http://HOST:PORT (plaintext) or https://HOST:PORT (TLS)."""
    match = _OTLP_ENDPOINT.fullmatch(value)
    if match is None:
        raise ValueError(f"must be http://host:port or https://host:port, e.g. http://127.0.0.1:4317 "
                         f"(got {value[:80]!r})")
    host_port(match["addr"])
    return value


HostPort = Annotated[str, AfterValidator(host_port)]
OtlpEndpoint = Annotated[str, AfterValidator(otlp_endpoint)]
DatabaseUrl = Annotated[str, AfterValidator(database_url)]
LogLevel = Annotated[Literal["DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"],
                     BeforeValidator(lambda value: value.upper() if isinstance(value, str) else value)]
# A duration: finite and at most a day (larger values overflow timers and deadlines).
Seconds = Annotated[float, Field(allow_inf_nan=False, le=86_400)]


class SettingsError(Exception):
    """A setting that reads well but cannot be used (e.g. a file it names is broken): a service that
    meets one at start-up says so in one line and exits with status 2, as for an invalid setting."""


class ServiceSettings(BaseSettings):
    """What every service reads. Subclasses set ``env_prefix`` (CATALOG_, ...) and defaults."""

    # hide_input_in_errors: a refused value may be a password or a URL that holds one.
    model_config = SettingsConfigDict(extra="ignore", frozen=True, populate_by_name=True, hide_input_in_errors=True)

    # Whether only the gateway calls this service (mutual TLS, or the internal token on loopback).
    internal: ClassVar[bool] = True

    listen_addr: HostPort
    database_url: DatabaseUrl
    # The certificate and key this service serves TLS with ({PREFIX}TLS_CERT_FILE, {PREFIX}TLS_KEY_FILE). An
    # internal service then serves mutual TLS: callers present a certificate of CLOUDIMG_INTERNAL_CA_FILE.
    tls_cert_file: FilePath | None = None
    tls_key_file: FilePath | None = None
    # The private CA of the internal services: it issues their certificates and the gateway's client certificate.
    internal_ca_file: FilePath | None = Field(default=None, validation_alias="CLOUDIMG_INTERNAL_CA_FILE")
    # The name the gateway's client certificate carries (a subject alternative name): the one caller allowed in.
    internal_peer: str = Field(default="gateway", validation_alias="CLOUDIMG_INTERNAL_PEER", min_length=1)
    # Plaintext off loopback (e.g. behind a mesh that encrypts): refused unless this says so.
    allow_plaintext: bool = Field(default=False, validation_alias="CLOUDIMG_ALLOW_PLAINTEXT")
    # Proof that a call comes from the gateway when the internal services speak plaintext (loopback only, or
    # CLOUDIMG_ALLOW_PLAINTEXT): the same secret in all four services. Unused under mutual TLS.
    internal_token: SecretStr | None = Field(default=None, validation_alias="CLOUDIMG_INTERNAL_TOKEN", min_length=16)
    log_level: LogLevel = Field(default="INFO", validation_alias="CLOUDIMG_LOG_LEVEL")
    # After SIGTERM: how long the server keeps serving while health says NOT_SERVING, so that load
    # balancers and clients move away and calls already on the wire reach a handler.
    shutdown_drain_seconds: Annotated[Seconds, Field(ge=0)] = 1.0
    # Then: how long in-flight calls may take to finish.
    shutdown_grace_seconds: Annotated[Seconds, Field(ge=0)] = 10.0
    # Deadline for calls that arrive without one (and for downstream calls made outside a call).
    default_deadline_seconds: Annotated[Seconds, Field(ge=0.1)] = 10.0
    # Where Prometheus scrapes this process ({PREFIX}METRICS_ADDR, http://HOST:PORT/metrics); unset: no metrics
    # endpoint. Plain HTTP without authentication: the metrics carry no secrets, but keep it off public networks.
    metrics_addr: HostPort | None = None
    # The OTLP/gRPC collector that traces go to (OTEL_EXPORTER_OTLP_ENDPOINT works too); unset: no tracing at all.
    otlp_endpoint: OtlpEndpoint | None = Field(default=None, validation_alias="CLOUDIMG_OTLP_ENDPOINT")
    # One INFO line per call (method, code, duration, request id, account, peer); false: at DEBUG only.
    access_log: bool = Field(default=True, validation_alias="CLOUDIMG_ACCESS_LOG")
    # Migrate the schema at start-up in this process rather than in a child (chassis.migrations.migrate_apart):
    # Alembic then stays loaded, 11 MB for the process's life. For rigs that start services hundreds of times.
    migrate_in_process: bool = Field(default=False, validation_alias="CLOUDIMG_MIGRATE_IN_PROCESS")

    @property
    def serves_tls(self) -> bool:
        return self.tls_cert_file is not None

    @model_validator(mode="after")
    def _transport(self) -> ServiceSettings:
        prefix = str(self.model_config.get("env_prefix", ""))
        if self.metrics_addr is not None and _port(self.metrics_addr) == _port(self.listen_addr):
            raise ValueError(f"{prefix}METRICS_ADDR: {self.metrics_addr} takes the port of {prefix}LISTEN_ADDR")
        if (self.tls_cert_file is None) != (self.tls_key_file is None):
            raise ValueError(f"{prefix}TLS_CERT_FILE and {prefix}TLS_KEY_FILE: set both or neither")
        if not self.serves_tls:
            check_plaintext(self, f"{prefix}LISTEN_ADDR", self.listen_addr, f"{prefix}TLS_CERT_FILE")
        if self.internal:
            if self.serves_tls and self.internal_ca_file is None:
                raise ValueError(f"CLOUDIMG_INTERNAL_CA_FILE: required with {prefix}TLS_CERT_FILE (the internal "
                                 "services serve mutual TLS: the CA that issued the gateway's client certificate)")
            if not self.serves_tls and self.internal_token is None:
                raise ValueError(f"CLOUDIMG_INTERNAL_TOKEN: required without {prefix}TLS_CERT_FILE (plaintext "
                                 "callers prove they are the gateway with it)")
        return self


def check_plaintext(settings: ServiceSettings, variable: str, addr: str, tls_variable: str) -> None:
    """Plaintext to or from addr only on loopback, unless CLOUDIMG_ALLOW_PLAINTEXT says otherwise."""
    if not settings.allow_plaintext and not is_loopback(addr):
        raise ValueError(f"{variable}: {addr} is not a loopback address, and API keys and tokens must not cross a "
                         f"network in plaintext: set {tls_variable} (TLS) or CLOUDIMG_ALLOW_PLAINTEXT=true")


def _port(addr: str) -> str:
    return addr.rpartition(":")[2]


_LOOPBACK_NAMES = {"localhost", "ip6-localhost"}


def is_loopback(addr: str) -> bool:
    """Whether HOST:PORT names this machine only (127.0.0.0/8, ::1, localhost)."""
    host = addr.rpartition(":")[0].strip("[]").lower()
    if host in _LOOPBACK_NAMES:
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


S = TypeVar("S", bound=BaseSettings)


def load_settings(cls: type[S]) -> S:
    """The settings, or one line naming every missing or wrong one and exit status 2."""
    try:
        return cls()
    except ValidationError as exc:
        prefix = str(cls.model_config.get("env_prefix", ""))
        problems = []
        for error in exc.errors(include_input=False, include_url=False):
            name = ".".join(str(part) for part in error["loc"])
            variable = name if name.isupper() else prefix + name.upper()  # aliases are already env names
            message = "required" if error["type"] == "missing" else error["msg"].removeprefix("Value error, ")
            # A check of several settings together names its variables itself.
            problems.append(f"{variable}: {message}" if name else message)
        service = prefix.rstrip("_").lower() or cls.__name__
        print(f"cloudimg: invalid settings for {service}: {'; '.join(problems)}", file=sys.stderr)
        raise SystemExit(2) from None
