"""Settings from the environment (pydantic-settings): one prefix per service, failing fast."""

from __future__ import annotations

import sys
from typing import TypeVar

from pydantic import Field, SecretStr, ValidationError
from pydantic_settings import BaseSettings, SettingsConfigDict


class ServiceSettings(BaseSettings):
    """What every service reads. Subclasses set ``env_prefix`` (CATALOG_, ...) and defaults."""

    model_config = SettingsConfigDict(extra="ignore", frozen=True, populate_by_name=True)

    listen_addr: str
    database_url: str
    # Proof that a call comes from the gateway; the same secret in all four services.
    internal_token: SecretStr = Field(validation_alias="CLOUDIMG_INTERNAL_TOKEN", min_length=16)
    log_level: str = Field(default="INFO", validation_alias="CLOUDIMG_LOG_LEVEL")
    # How long in-flight calls may take to finish after SIGTERM.
    shutdown_grace_seconds: float = 10.0
    # Deadline for calls that arrive without one (and for downstream calls made outside a call).
    default_deadline_seconds: float = 10.0


S = TypeVar("S", bound=BaseSettings)


def load_settings(cls: type[S]) -> S:
    """The settings, or a readable message and exit status 2 when some are missing or wrong."""
    try:
        return cls()
    except ValidationError as exc:
        prefix = cls.model_config.get("env_prefix", "")
        lines = [f"cloudimg: invalid or missing settings for {cls.__name__}:"]
        for error in exc.errors():
            name = ".".join(str(part) for part in error["loc"])
            lines.append(f"  {name.upper() if name.isupper() else prefix + name.upper()}: {error['msg']}")
        print("\n".join(lines), file=sys.stderr)
        raise SystemExit(2) from None
