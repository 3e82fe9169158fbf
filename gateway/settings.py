from __future__ import annotations

from typing import Annotated

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

from chassis.settings import DatabaseUrl, HostPort, Seconds, ServiceSettings

DEFAULT_DATABASE_URL = "sqlite:///data/gateway.db"


class GatewaySettings(ServiceSettings):
    model_config = SettingsConfigDict(env_prefix="GATEWAY_")

    listen_addr: HostPort = "127.0.0.1:50050"
    database_url: DatabaseUrl = DEFAULT_DATABASE_URL
    # The downstream contexts; required.
    catalog_addr: HostPort = Field(validation_alias="CATALOG_ADDR")
    sharing_addr: HostPort = Field(validation_alias="SHARING_ADDR")
    billing_addr: HostPort = Field(validation_alias="BILLING_ADDR")
    # How long a verified API key is trusted before it is read again (0: read it on every call).
    api_key_cache_seconds: Annotated[Seconds, Field(ge=0)] = 30.0
    # The longest an open launch (IN_DOUBT, or PENDING with its call over) waits between two attempts to
    # settle it: its job is retried after 1 s, 2 s, 4 s... up to this; the floor keeps a tiny value from
    # spinning the worker.
    reconcile_interval_seconds: Annotated[Seconds, Field(ge=0.1)] = 5.0


class GatewayDatabaseSettings(BaseSettings):
    """Just the database, for administrative commands (demo-accounts)."""

    model_config = SettingsConfigDict(env_prefix="GATEWAY_", extra="ignore", hide_input_in_errors=True)

    database_url: DatabaseUrl = DEFAULT_DATABASE_URL
