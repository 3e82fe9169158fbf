from __future__ import annotations

from pydantic_settings import SettingsConfigDict

from chassis.settings import DatabaseUrl, HostPort, ServiceSettings


class CatalogSettings(ServiceSettings):
    model_config = SettingsConfigDict(env_prefix="CATALOG_")

    listen_addr: HostPort = "127.0.0.1:50051"
    database_url: DatabaseUrl = "sqlite:///data/catalog.db"
    # Seed the demo accounts' custom images (until CreateImage arrives).
    seed_demo_images: bool = True
