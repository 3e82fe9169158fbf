"""The catalog's domain: regions and images. Plain Python, no framework."""

from __future__ import annotations

import enum
from dataclasses import dataclass
from datetime import datetime

from chassis.errors import InvalidArgument, NotFound, clipped

PLATFORM_ACCOUNT_ID = "platform"


class ImageType(enum.StrEnum):
    PUBLIC = "PUBLIC"
    MARKET = "MARKET"
    CUSTOM = "CUSTOM"


class ImageState(enum.StrEnum):
    CREATING = "CREATING"
    NORMAL = "NORMAL"
    CREATE_FAILED = "CREATE_FAILED"
    IMPORTING = "IMPORTING"
    IMPORT_FAILED = "IMPORT_FAILED"
    SYNCING = "SYNCING"


class OsType(enum.StrEnum):
    LINUX = "LINUX"
    WINDOWS = "WINDOWS"


class Architecture(enum.StrEnum):
    X86_64 = "X86_64"
    ARM64 = "ARM64"


class ImageSource(enum.StrEnum):
    OFFICIAL = "OFFICIAL"
    INSTANCE = "INSTANCE"
    IMPORT = "IMPORT"
    SYNC = "SYNC"


@dataclass(frozen=True)
class Region:
    region_id: str
    display_name: str
    mainland: bool
    sync_enabled: bool


@dataclass
class Image:
    image_id: str
    region: str
    image_type: ImageType
    state: ImageState
    name: str
    description: str
    owner_account_id: str
    platform: str
    os_name: str
    os_type: OsType
    architecture: Architecture
    size_gb: int
    source: ImageSource
    base_image_id: str
    progress_percent: int
    create_time: datetime
    marketplace_product_id: str = ""
    marketplace_provider: str = ""


@dataclass(frozen=True)
class ImageQuery:
    """Which images of a region a caller lists (see ListImages in the catalog contract)."""

    region: str
    viewer_account_id: str
    image_types: frozenset[ImageType]
    shared_image_ids: frozenset[str]
    platform: str = ""
    name_filter: str = ""

    def fingerprint_parts(self) -> tuple[object, ...]:
        """What a page token is bound to. Not the shared ids: a share that arrives between two pages
        must not invalidate the token."""
        return (self.region, self.viewer_account_id, sorted(self.image_types), self.platform.lower(),
                self.name_filter.lower())


MAX_FILTER_LENGTH = 128


def check_filter_length(field: str, value: str) -> str:
    if len(value) > MAX_FILTER_LENGTH:
        raise InvalidArgument("FILTER_TOO_LONG", f"{field} is longer than {MAX_FILTER_LENGTH} characters",
                              field=field)
    return value


def image_not_found(image_id: str) -> NotFound:
    return NotFound("IMAGE_NOT_FOUND", f"image {image_id} does not exist", resource_type="image",
                    resource_name=image_id)


def unknown_region(region: str) -> InvalidArgument:
    return InvalidArgument("UNKNOWN_REGION", f"region {clipped(region)!r} does not exist", field="region")
