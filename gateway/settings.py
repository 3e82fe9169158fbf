from __future__ import annotations

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

from chassis.settings import ServiceSettings

DEFAULT_DATABASE_URL = "sqlite:///data/gateway.db"


class GatewaySettings(ServiceSettings):
    model_config = SettingsConfigDict(env_prefix="GATEWAY_")

    listen_addr: str = "127.0.0.1:50050"
    database_url: str = DEFAULT_DATABASE_URL
    # The downstream contexts (host:port); required.
    catalog_addr: str = Field(validation_alias="CATALOG_ADDR", min_length=1)
    sharing_addr: str = Field(validation_alias="SHARING_ADDR", min_length=1)
    billing_addr: str = Field(validation_alias="BILLING_ADDR", min_length=1)
    # How long a verified API key is trusted before it is read again.
    api_key_cache_seconds: float = 30.0
    # How often launches left PENDING are finished.
    reconcile_interval_seconds: float = 30.0


class GatewayDatabaseSettings(BaseSettings):
    """Just the database, for administrative commands (demo-accounts)."""

    model_config = SettingsConfigDict(env_prefix="GATEWAY_", extra="ignore")

    database_url: str = DEFAULT_DATABASE_URL
