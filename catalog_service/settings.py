from __future__ import annotations

from pathlib import Path
from typing import Annotated

from pydantic import Field
from pydantic.functional_validators import BeforeValidator
from pydantic_settings import NoDecode, SettingsConfigDict
from sqlalchemy.engine import make_url

from chassis.settings import DatabaseUrl, HostPort, Seconds, ServiceSettings


def _comma_separated(value: object) -> object:
    """CATALOG_IMPORT_ALLOWED_SOURCES=http://127.0.0.1,http://mirror.internal:8080/images/"""
    if isinstance(value, str):
        return [part.strip() for part in value.split(",") if part.strip()]
    return value


class CatalogSettings(ServiceSettings):
    model_config = SettingsConfigDict(env_prefix="CATALOG_")

    listen_addr: HostPort = "127.0.0.1:50051"
    database_url: DatabaseUrl = "sqlite:///data/catalog.db"
    # Seed the demo accounts' custom images.
    seed_demo_images: bool = True
    # Where image bytes live: one folder per region, content-addressed; replicas share it. Unset: an
    # images/ folder beside a SQLite database, else data/images.
    image_store_dir: Path | None = None
    # Copies and imports move at most this many bytes per second (0: as fast as the disk goes), so
    # that a demo or a test can watch progress move.
    copy_bytes_per_second: Annotated[int, Field(ge=0)] = 0
    # file:// imports only below this folder; unset: no file imports.
    import_root: Path | None = None
    # URL prefixes that imports may read from although their host is private or loopback
    # (e.g. http://127.0.0.1:8080/); comma-separated.
    import_allowed_sources: Annotated[list[str], NoDecode, BeforeValidator(_comma_separated)] = Field(
        default_factory=list)
    # The largest image an import may bring in, checked while it streams.
    import_max_bytes: Annotated[int, Field(ge=1)] = 64 << 30
    # Custom images per account and region (every state but failed), and image operations (create,
    # import, sync per destination) per account, region and UTC day.
    custom_image_quota: Annotated[int, Field(ge=0, le=100_000)] = 10
    daily_operation_quota: Annotated[int, Field(ge=0, le=100_000)] = 5
    # A job's lease: a replica that stops heartbeating for this long loses its jobs to the others.
    job_lease_seconds: Annotated[Seconds, Field(ge=1)] = 30.0
    # How many jobs one replica runs at once.
    job_concurrency: Annotated[int, Field(ge=1, le=64)] = 2
    # How often bytes that no image needs any more are removed, and how old they must be.
    gc_interval_seconds: Annotated[Seconds, Field(ge=1)] = 600.0
    gc_min_age_seconds: Annotated[Seconds, Field(ge=0)] = 3600.0


def store_dir(settings: CatalogSettings) -> Path:
    if settings.image_store_dir is not None:
        return settings.image_store_dir
    url = make_url(settings.database_url)
    if url.get_backend_name() == "sqlite" and url.database and url.database != ":memory:":
        return Path(url.database).parent / "images"
    return Path("data/images")
