from __future__ import annotations

from pydantic_settings import SettingsConfigDict

from chassis.settings import DatabaseUrl, HostPort, ServiceSettings


class SharingSettings(ServiceSettings):
    model_config = SettingsConfigDict(env_prefix="SHARING_")

    listen_addr: HostPort = "127.0.0.1:50052"
    database_url: DatabaseUrl = "sqlite:///data/sharing.db"
