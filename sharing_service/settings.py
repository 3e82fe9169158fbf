from __future__ import annotations

from pydantic_settings import SettingsConfigDict

from chassis.settings import ServiceSettings


class SharingSettings(ServiceSettings):
    model_config = SettingsConfigDict(env_prefix="SHARING_")

    listen_addr: str = "127.0.0.1:50052"
    database_url: str = "sqlite:///data/sharing.db"
