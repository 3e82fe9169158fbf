"""The catalog's domain: regions and images. Plain Python, no framework."""

from __future__ import annotations

import enum
from dataclasses import dataclass
from datetime import datetime

from chassis.errors import AlreadyExists, FailedPrecondition, InvalidArgument, NotFound, ResourceExhausted, clipped

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

    @property
    def failed(self) -> bool:
        return self in (ImageState.CREATE_FAILED, ImageState.IMPORT_FAILED)

    @property
    def busy(self) -> bool:
        """A job is making this image: it cannot be changed into anything else or deleted yet."""
        return self in (ImageState.CREATING, ImageState.IMPORTING, ImageState.SYNCING)


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
    # The SHA-256 of its bytes in the region's image store; empty until a job has put them there.
    checksum_sha256: str = ""
    # Why it is CREATE_FAILED or IMPORT_FAILED ("FORMAT_MISMATCH: declared qcow2, found raw").
    state_reason: str = ""


class ImageFormat(enum.StrEnum):
    RAW = "RAW"
    VHD = "VHD"
    QCOW2 = "QCOW2"
    VMDK = "VMDK"


@dataclass(frozen=True)
class Quota:
    """The two image quotas of an account in a region."""

    custom_image_limit: int
    custom_image_used: int
    daily_operation_limit: int
    daily_operation_used: int

    def check(self, images: int, operations: int, region: str) -> None:
        """RESOURCE_EXHAUSTED naming the quota, its limit and its use when ``images`` more custom images
        and ``operations`` more operations today would exceed it."""
        if self.custom_image_used + images > self.custom_image_limit:
            raise ResourceExhausted(
                "CUSTOM_IMAGE_QUOTA_EXCEEDED",
                f"at most {self.custom_image_limit} custom images per account in {region}; "
                f"{self.custom_image_used} in use", subject=f"custom-images:{region}",
                metadata={"quota": "custom_images", "region": region, "limit": str(self.custom_image_limit),
                          "used": str(self.custom_image_used)})
        if self.daily_operation_used + operations > self.daily_operation_limit:
            raise ResourceExhausted(
                "DAILY_OPERATION_QUOTA_EXCEEDED",
                f"at most {self.daily_operation_limit} image operations per account in {region} per UTC day; "
                f"{self.daily_operation_used} used today", subject=f"daily-image-operations:{region}",
                metadata={"quota": "daily_image_operations", "region": region,
                          "limit": str(self.daily_operation_limit), "used": str(self.daily_operation_used)})


MAX_NAME_LENGTH = 60
MAX_DESCRIPTION_LENGTH = 256
MAX_OS_NAME_LENGTH = 128
MAX_SOURCE_URI_LENGTH = 2048
MAX_SYNC_DESTINATIONS = 10


def check_name(name: str, field: str = "name") -> str:
    if not 1 <= len(name) <= MAX_NAME_LENGTH or name.strip() != name:
        raise InvalidArgument("INVALID_IMAGE_NAME",
                              f"{field} must be 1 to {MAX_NAME_LENGTH} characters, without leading or trailing "
                              "spaces", field=field)
    return name


def check_description(description: str, field: str = "description") -> str:
    if len(description) > MAX_DESCRIPTION_LENGTH:
        raise InvalidArgument("INVALID_DESCRIPTION", f"{field} must be at most {MAX_DESCRIPTION_LENGTH} characters",
                              field=field)
    return description


def name_taken(name: str, region: str) -> AlreadyExists:
    return AlreadyExists("IMAGE_NAME_TAKEN", f"you already have an image named {clipped(name)!r} in {region}",
                         resource_type="image", resource_name=name)


def image_busy(image: Image) -> FailedPrecondition:
    return FailedPrecondition("IMAGE_BUSY", f"image {image.image_id} is {image.state.value}: wait until it is "
                              "NORMAL or failed", subject=f"image:{image.image_id}")


def platform_of(os_name: str, os_type: OsType) -> str:
    """The platform an imported image is listed under: the first word of its OS name ("Ubuntu")."""
    words = os_name.split()
    if words:
        return words[0][:64]
    return "Windows" if os_type is OsType.WINDOWS else "Linux"


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
