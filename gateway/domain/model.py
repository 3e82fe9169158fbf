"""The gateway's domain: the caller's view of regions, images, shares, trust policies, quotes and charges.

The rules of images, shares and prices belong to the catalog, sharing and billing; what stays here is
the vocabulary the gateway translates their answers into, and the caller's view of them. Instances and
launches, which the gateway owns, are in ``gateway.domain.instances``.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, replace
from datetime import datetime
from decimal import Decimal

from chassis.errors import InvalidArgument, NotFound, clipped


class CatalogKind(enum.StrEnum):
    """The image's type in the catalog."""

    PUBLIC = "PUBLIC"
    MARKET = "MARKET"
    CUSTOM = "CUSTOM"


class ImageType(enum.StrEnum):
    """The image's type as the caller sees it."""

    PUBLIC = "PUBLIC"
    MARKET = "MARKET"
    PRIVATE = "PRIVATE"
    SHARED = "SHARED"


class ImageState(enum.StrEnum):
    CREATING = "CREATING"
    NORMAL = "NORMAL"
    CREATE_FAILED = "CREATE_FAILED"
    IMPORTING = "IMPORTING"
    IMPORT_FAILED = "IMPORT_FAILED"
    SYNCING = "SYNCING"


class ImageSource(enum.StrEnum):
    """Where an image's bytes came from."""

    OFFICIAL = "OFFICIAL"
    INSTANCE = "INSTANCE"
    IMPORT = "IMPORT"
    SYNC = "SYNC"


class ShareState(enum.StrEnum):
    PENDING = "PENDING"
    ACCEPTED = "ACCEPTED"
    REJECTED = "REJECTED"


# What ListImages shows of the images shared with the caller unless it asks for other share states.
DEFAULT_SHARE_STATES = frozenset({ShareState.PENDING, ShareState.ACCEPTED})


class Architecture(enum.StrEnum):
    X86_64 = "X86_64"
    ARM64 = "ARM64"


class OsType(enum.StrEnum):
    LINUX = "LINUX"
    WINDOWS = "WINDOWS"


class ImageFormat(enum.StrEnum):
    """The disk-image formats an import accepts."""

    RAW = "RAW"
    VHD = "VHD"
    QCOW2 = "QCOW2"
    VMDK = "VMDK"


class ChargeType(enum.StrEnum):
    POSTPAID_BY_HOUR = "POSTPAID_BY_HOUR"
    PREPAID = "PREPAID"
    SPOTPAID = "SPOTPAID"


class VerdictBasis(enum.StrEnum):
    """Why the caller may see an image (sharing's answer)."""

    OWNER = "OWNER"
    PUBLIC = "PUBLIC"
    MARKETPLACE = "MARKETPLACE"
    SHARED = "SHARED"
    SHARE_PENDING = "SHARE_PENDING"
    SHARE_REJECTED = "SHARE_REJECTED"
    NONE = "NONE"


class TrustPolicyMode(enum.StrEnum):
    OFF = "OFF"
    AUDIT = "AUDIT"
    ENFORCE = "ENFORCE"


class QuoteLineKind(enum.StrEnum):
    INSTANCE = "INSTANCE"
    IMAGE_LICENSE = "IMAGE_LICENSE"
    MARKETPLACE = "MARKETPLACE"


class ChargeKind(enum.StrEnum):
    LAUNCH = "LAUNCH"
    RESET = "RESET"
    USAGE = "USAGE"
    ACCRUED_USAGE = "ACCRUED_USAGE"


@dataclass(frozen=True)
class Region:
    region_id: str
    display_name: str
    mainland: bool
    sync_enabled: bool


@dataclass(frozen=True)
class Verdict:
    """The sharing context's answer: may the caller see and launch the image, and what its trust policy
    says of it."""

    visible: bool
    allowed: bool
    basis: VerdictBasis
    share_state: ShareState | None = None
    image_allowed: bool = True
    policy_mode: TrustPolicyMode = TrustPolicyMode.OFF
    # Why image_allowed is false, in words (empty when it is true).
    policy_rule: str = ""


@dataclass(frozen=True)
class Image:
    """An image as the catalog describes it, plus the caller's view of it."""

    image_id: str
    region: str
    kind: CatalogKind
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
    share_state: ShareState | None = None
    image_allowed: bool = True
    # The SHA-256 of the image's bytes (hex), once they are in the region's image store.
    checksum_sha256: str = ""
    # Why a job failed (CREATE_FAILED, IMPORT_FAILED), in words.
    state_reason: str = ""
    # False for the stand-in of an image the catalog does not have (see ``missing``).
    exists: bool = True

    @classmethod
    def missing(cls, image_id: str, region: str = "") -> Image:
        """Stands in for an image the catalog does not have: a NORMAL custom image of no account. It goes
        through the same permission check as a stranger's private image, so that "missing" and "not
        yours" cost the same calls and time and cannot be told apart; it is never visible."""
        return cls(image_id, region, CatalogKind.CUSTOM, ImageState.NORMAL, "", "", "", "", "", OsType.LINUX,
                   Architecture.X86_64, 0, ImageSource.IMPORT, "", 0, datetime.fromtimestamp(0), exists=False)

    def type_for(self, account_id: str) -> ImageType:
        if self.kind is CatalogKind.CUSTOM:
            return ImageType.PRIVATE if self.owner_account_id == account_id else ImageType.SHARED
        return ImageType(self.kind.value)

    def seen_with(self, verdict: Verdict) -> Image:
        return replace(self, share_state=verdict.share_state, image_allowed=verdict.image_allowed)


def image_not_found(image_id: str) -> NotFound:
    """The one answer for an image that does not exist and one the caller may not see."""
    return NotFound("IMAGE_NOT_FOUND", f"image {image_id} does not exist", resource_type="image",
                    resource_name=image_id)


@dataclass(frozen=True)
class ImageImport:
    """What ImportImage asks the catalog to fetch, inspect and keep."""

    region: str
    name: str
    description: str
    format: ImageFormat
    os_name: str
    os_type: OsType
    architecture: Architecture
    source_uri: str


@dataclass(frozen=True)
class ImageQuota:
    """The caller's two image quotas in a region (the catalog keeps the counts)."""

    region: str
    custom_image_limit: int
    custom_image_used: int
    daily_operation_limit: int
    daily_operation_used: int


# The fields of an image that its owner may change (UpdateImage's update_mask).
IMAGE_UPDATE_PATHS = ("name", "description")


def image_update_paths(paths: list[str]) -> list[str]:
    """The update_mask's paths, each once; INVALID_ARGUMENT for an empty mask or any other field."""
    if not paths:
        raise InvalidArgument("UPDATE_MASK_REQUIRED", "update_mask must name the fields to change: "
                              + ", ".join(IMAGE_UPDATE_PATHS), field="update_mask")
    for path in paths:
        if path not in IMAGE_UPDATE_PATHS:
            raise InvalidArgument("INVALID_UPDATE_MASK", f"update_mask path {clipped(path)!r} cannot be changed; "
                                  "only " + ", ".join(IMAGE_UPDATE_PATHS), field="update_mask")
    return list(dict.fromkeys(paths))


@dataclass(frozen=True)
class ImageShare:
    image_id: str
    region: str
    owner_account_id: str
    recipient_account_id: str
    state: ShareState
    create_time: datetime


@dataclass(frozen=True)
class TrustPolicy:
    """An account's image trust policy (sharing keeps it and applies it; the gateway passes it on)."""

    trusted_account_ids: tuple[str, ...] = ()
    # None only in an update that leaves the mode unspecified (sharing refuses it when the mask names "mode").
    mode: TrustPolicyMode | None = TrustPolicyMode.OFF
    allow_platform_images: bool = True
    allowed_marketplace_providers: tuple[str, ...] = ()
    allowed_account_ids: tuple[str, ...] = ()
    update_time: datetime | None = None


# The fields of a trust policy that UpdateTrustPolicy's update_mask may name.
TRUST_POLICY_PATHS = ("trusted_account_ids", "mode", "allow_platform_images", "allowed_marketplace_providers",
                      "allowed_account_ids")


def trust_policy_paths(paths: list[str]) -> list[str]:
    """The update_mask's paths, each once; empty or "*" means every field; any other path is refused."""
    if not paths or paths == ["*"]:
        return list(TRUST_POLICY_PATHS)
    for path in paths:
        if path not in TRUST_POLICY_PATHS:
            raise InvalidArgument("INVALID_UPDATE_MASK", f"update_mask path {clipped(path)!r} is not a trust policy "
                                  "field; the fields are " + ", ".join(TRUST_POLICY_PATHS), field="update_mask")
    return list(dict.fromkeys(paths))


@dataclass(frozen=True)
class InstanceType:
    instance_type: str
    family: str
    architecture: Architecture
    vcpus: int
    memory_gb: int
    regions: frozenset[str]


@dataclass(frozen=True)
class QuoteLine:
    kind: QuoteLineKind
    description: str
    unit_price: Decimal
    quantity: int
    unit: str
    amount: Decimal


@dataclass(frozen=True)
class Quote:
    currency: str
    charge_type: ChargeType
    lines: tuple[QuoteLine, ...]
    total: Decimal
    # The caller's trust policy verdict on the image priced (set by the gateway, not by billing).
    image_allowed: bool = True


@dataclass(frozen=True)
class Charge:
    """One entry of the caller's charges: the ledger's, or usage accrued and not settled yet (no charge_id)."""

    charge_id: str
    region: str
    quote: Quote
    instance_ids: tuple[str, ...]
    create_time: datetime
    kind: ChargeKind = ChargeKind.LAUNCH
    usage_start_time: datetime | None = None
    usage_end_time: datetime | None = None


@dataclass(frozen=True)
class ChargeFilter:
    """What ListCharges narrows the caller's charges to."""

    instance_id: str = ""
    start_time: datetime | None = None
    end_time: datetime | None = None


@dataclass(frozen=True)
class Price:
    """One entry of the published price book."""

    region: str
    kind: QuoteLineKind
    instance_type: str
    charge_type: ChargeType
    currency: str
    unit_price: Decimal
    unit: str
    description: str
    marketplace_product_id: str = ""
