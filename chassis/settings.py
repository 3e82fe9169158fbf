"""Settings from the environment (pydantic-settings): one prefix per service, failing fast.

A bad value is refused when the settings are read, in one line that names the variable, so a service
never starts on a port it was not given or spins on an interval of 0.
"""

from __future__ import annotations

import ipaddress
import re
import sys
from typing import Annotated, Literal, TypeVar

from pydantic import AfterValidator, BeforeValidator, Field, SecretStr, ValidationError
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


HostPort = Annotated[str, AfterValidator(host_port)]
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

    listen_addr: HostPort
    database_url: DatabaseUrl
    # Proof that a call comes from the gateway; the same secret in all four services.
    internal_token: SecretStr = Field(validation_alias="CLOUDIMG_INTERNAL_TOKEN", min_length=16)
    log_level: LogLevel = Field(default="INFO", validation_alias="CLOUDIMG_LOG_LEVEL")
    # After SIGTERM: how long the server keeps serving while health says NOT_SERVING, so that load
    # balancers and clients move away and calls already on the wire reach a handler.
    shutdown_drain_seconds: Annotated[Seconds, Field(ge=0)] = 1.0
    # Then: how long in-flight calls may take to finish.
    shutdown_grace_seconds: Annotated[Seconds, Field(ge=0)] = 10.0
    # Deadline for calls that arrive without one (and for downstream calls made outside a call).
    default_deadline_seconds: Annotated[Seconds, Field(ge=0.1)] = 10.0


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
            problems.append(f"{variable}: {message}")
        service = prefix.rstrip("_").lower() or cls.__name__
        print(f"cloudimg: invalid settings for {service}: {'; '.join(problems)}", file=sys.stderr)
        raise SystemExit(2) from None
