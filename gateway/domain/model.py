"""The gateway's domain: accounts, the caller's view of images, instances and launches.

The rules of images, shares and prices belong to the catalog, sharing and billing; what stays here
is what a launch composes from their answers.
"""

from __future__ import annotations

import enum
import hashlib
from dataclasses import dataclass, replace
from datetime import datetime
from decimal import Decimal

from chassis import ids
from chassis.errors import FailedPrecondition, InvalidArgument, NotFound, Unavailable, clipped
from chassis.fingerprints import fingerprint

MAX_INSTANCES_PER_LAUNCH = 100
DEFAULT_SYSTEM_DISK_GB = 50
MIN_SYSTEM_DISK_GB, MAX_SYSTEM_DISK_GB = 20, 1024
MAX_CLIENT_TOKEN_LENGTH = 64
MAX_NAME_LENGTH = 60


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


class ShareState(enum.StrEnum):
    PENDING = "PENDING"
    ACCEPTED = "ACCEPTED"
    REJECTED = "REJECTED"


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


class InstanceState(enum.StrEnum):
    PENDING = "PENDING"
    RUNNING = "RUNNING"
    STOPPED = "STOPPED"
    TERMINATED = "TERMINATED"


@dataclass(frozen=True)
class Region:
    region_id: str
    display_name: str
    mainland: bool
    sync_enabled: bool


@dataclass(frozen=True)
class Image:
    """An image as the catalog describes it, plus the caller's view of it."""

    image_id: str
    region: str
    kind: CatalogKind
    state: str
    name: str
    description: str
    owner_account_id: str
    platform: str
    os_name: str
    os_type: OsType
    architecture: Architecture
    size_gb: int
    source: str
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
        """Stands in for an image the catalog does not have: a custom image of no account. It goes
        through the same permission check as a stranger's private image, so that "missing" and "not
        yours" cost the same calls and time and cannot be told apart; it is never visible."""
        return cls(image_id, region, CatalogKind.CUSTOM, "MISSING", "", "", "", "", "", OsType.LINUX,
                   Architecture.X86_64, 0, "", "", 0, datetime.fromtimestamp(0), exists=False)

    def type_for(self, account_id: str) -> ImageType:
        if self.kind is CatalogKind.CUSTOM:
            return ImageType.PRIVATE if self.owner_account_id == account_id else ImageType.SHARED
        return ImageType(self.kind.value)

    def seen_with(self, verdict: Verdict) -> Image:
        return replace(self, share_state=verdict.share_state, image_allowed=verdict.image_allowed)


@dataclass(frozen=True)
class Verdict:
    """The sharing context's answer: may the caller see and launch the image."""

    visible: bool
    allowed: bool
    basis: str
    share_state: ShareState | None = None
    image_allowed: bool = True


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
    kind: str
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
    image_allowed: bool = True


@dataclass(frozen=True)
class LaunchRequest:
    """What RunInstances and QuoteRunInstances ask for, defaults applied."""

    region: str
    image_id: str
    instance_type: str
    instance_count: int
    charge_type: ChargeType
    period_months: int
    system_disk_gb: int
    instance_name: str = ""
    client_token: str = ""

    def validate(self) -> None:
        if not self.region:
            raise InvalidArgument("REGION_REQUIRED", "region is required", field="region")
        ids.require_id("img", self.image_id, "image_id")
        if not self.instance_type or len(self.instance_type) > 32:
            raise InvalidArgument("INSTANCE_TYPE_REQUIRED", "instance_type is required (at most 32 characters)",
                                  field="instance_type")
        if not 1 <= self.instance_count <= MAX_INSTANCES_PER_LAUNCH:
            raise InvalidArgument("INVALID_INSTANCE_COUNT",
                                  f"instance_count must be between 1 and {MAX_INSTANCES_PER_LAUNCH}",
                                  field="instance_count")
        if not MIN_SYSTEM_DISK_GB <= self.system_disk_gb <= MAX_SYSTEM_DISK_GB:
            raise InvalidArgument("INVALID_SYSTEM_DISK_SIZE",
                                  f"system_disk_gb must be between {MIN_SYSTEM_DISK_GB} and {MAX_SYSTEM_DISK_GB}",
                                  field="system_disk_gb")
        if len(self.instance_name) > MAX_NAME_LENGTH:
            raise InvalidArgument("INSTANCE_NAME_TOO_LONG",
                                  f"instance_name is longer than {MAX_NAME_LENGTH} characters", field="instance_name")
        if not self.instance_name.isprintable():
            raise InvalidArgument("INVALID_INSTANCE_NAME", "instance_name must not contain control characters",
                                  field="instance_name")
        token = self.client_token
        if len(token) > MAX_CLIENT_TOKEN_LENGTH or not (token.isascii() and token.isprintable()):
            raise InvalidArgument("INVALID_CLIENT_TOKEN",
                                  f"client_token must be at most {MAX_CLIENT_TOKEN_LENGTH} printable ASCII characters",
                                  field="client_token")

    def fingerprint(self) -> str:
        """What makes two launches with one client token the same launch."""
        return fingerprint("launch", region=self.region, image_id=self.image_id, instance_type=self.instance_type,
                           instance_count=self.instance_count, charge_type=self.charge_type.value,
                           period_months=self.period_months, system_disk_gb=self.system_disk_gb,
                           instance_name=self.instance_name)

    def legacy_fingerprint(self) -> str:
        """How launches recorded before named-field fingerprints were fingerprinted."""
        parts = (self.region, self.image_id, self.instance_type, self.instance_count, self.charge_type.value,
                 self.period_months, self.system_disk_gb, self.instance_name)
        return hashlib.sha256(repr(parts).encode()).hexdigest()


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


def image_not_found(image_id: str) -> NotFound:
    """The one answer for an image that does not exist and one the caller may not see."""
    return NotFound("IMAGE_NOT_FOUND", f"image {image_id} does not exist", resource_type="image",
                    resource_name=image_id)


def check_launchable(request: LaunchRequest, image: Image, verdict: Verdict, instance_type: InstanceType) -> None:
    """The launch rules that need the answers of all three contexts."""
    if not verdict.visible or not image.exists or image.region != request.region:
        raise image_not_found(image.image_id)
    if image.state != "NORMAL":
        raise FailedPrecondition("IMAGE_STATE_INVALID", f"image {image.image_id} is {image.state}; only NORMAL "
                                 "images can be launched", subject=f"image:{image.image_id}")
    if verdict.share_state is ShareState.PENDING:
        raise FailedPrecondition("SHARE_PENDING", f"image {image.image_id} is shared with you but waits for your "
                                 "acceptance (AcceptImageShare)", subject=f"image:{image.image_id}")
    if not verdict.allowed:
        raise FailedPrecondition("IMAGE_NOT_ALLOWED", f"your image trust policy does not allow image "
                                 f"{image.image_id}", subject=f"image:{image.image_id}")
    if image.architecture is not instance_type.architecture:
        raise InvalidArgument(
            "ARCHITECTURE_MISMATCH",
            f"image {image.image_id} is {image.architecture.value} and cannot run on "
            f"{instance_type.instance_type} ({instance_type.architecture.value})",
            field="instance_type",
        )
    if image.size_gb > request.system_disk_gb:
        raise InvalidArgument(
            "SYSTEM_DISK_TOO_SMALL",
            f"image {image.image_id} needs a system disk of at least {image.size_gb} GB; "
            f"system_disk_gb is {request.system_disk_gb}",
            field="system_disk_gb",
        )


def offered_type(types: dict[str, InstanceType], name: str, region: str) -> InstanceType:
    found = types.get(name)
    if found is None or region not in found.regions:
        raise InvalidArgument("INSTANCE_TYPE_NOT_OFFERED", f"instance type {name!r} is not offered in {region}",
                              field="instance_type")
    return found


@dataclass(frozen=True)
class Instance:
    instance_id: str
    account_id: str
    region: str
    instance_name: str
    instance_type: str
    image_id: str
    state: InstanceState
    charge_type: ChargeType
    system_disk_gb: int
    architecture: Architecture
    launch_id: str
    create_time: datetime


# An image is made from an instance whose disk is there and settled: not one still launching (or
# being reset), and not one that is gone.
_IMAGEABLE_STATES = frozenset({InstanceState.RUNNING, InstanceState.STOPPED})


def check_imageable(instance: Instance) -> None:
    """May an image be made from this instance now (CreateImage)."""
    if instance.state is InstanceState.TERMINATED:
        raise FailedPrecondition("INSTANCE_TERMINATED", f"instance {instance.instance_id} is terminated; an image "
                                 "cannot be made from it", subject=f"instance:{instance.instance_id}")
    if instance.state not in _IMAGEABLE_STATES:
        raise FailedPrecondition("INSTANCE_NOT_READY", f"instance {instance.instance_id} is "
                                 f"{instance.state.value}; wait until it is RUNNING",
                                 subject=f"instance:{instance.instance_id}")


class LaunchState(enum.StrEnum):
    # Claimed (the client token is taken, its instances written PENDING) and being charged.
    PENDING = "PENDING"
    # The charge's outcome was lost (billing unreachable or too slow) and no call is finishing it:
    # whoever finds it asks billing to resolve it (finish if charged, void and forget if not).
    IN_DOUBT = "IN_DOUBT"
    DONE = "DONE"


@dataclass
class Launch:
    """One RunInstances: the claim on its client token, and, once done, its result."""

    launch_id: str
    account_id: str
    client_token: str | None
    fingerprint: str
    state: LaunchState
    request: LaunchRequest
    image_os_type: OsType
    image_architecture: Architecture
    marketplace_product_id: str
    # The caller's trust policy verdict on the image, which the quote reports.
    image_allowed: bool
    instance_ids: list[str]
    create_time: datetime
    quote: Quote | None = None
    charge_id: str = ""

    def instances(self) -> list[Instance]:
        """Its instances, PENDING until the launch is charged."""
        r = self.request
        return [
            Instance(instance_id, self.account_id, r.region, r.instance_name or instance_id, r.instance_type,
                     r.image_id, InstanceState.PENDING, r.charge_type, r.system_disk_gb, self.image_architecture,
                     self.launch_id, self.create_time)
            for instance_id in self.instance_ids
        ]


def launch_outcome_unknown(launch: Launch) -> Unavailable:
    """The truth for a caller whose launch may or may not have been charged: a retry with the same
    client token returns its instances if it was, or launches it if it was not; never both."""
    token = launch.client_token or launch.launch_id
    return Unavailable(
        "LAUNCH_OUTCOME_UNKNOWN",
        f"the outcome of launch {launch.launch_id} is not known yet (billing did not answer); retry with "
        f"client_token {token!r} to get its instances; it is never launched or charged twice",
        metadata={"launch_id": launch.launch_id, "client_token": token},
    )


def check_same_launch(launch: Launch, request: LaunchRequest) -> None:
    if launch.fingerprint not in (request.fingerprint(), request.legacy_fingerprint()):
        raise FailedPrecondition("IDEMPOTENCY_PARAMETER_MISMATCH",
                                 "client_token was used before with other parameters",
                                 subject=f"client_token:{request.client_token}")


@dataclass(frozen=True)
class ImageShare:
    image_id: str
    region: str
    owner_account_id: str
    recipient_account_id: str
    state: ShareState
    create_time: datetime


@dataclass(frozen=True)
class Charge:
    charge_id: str
    region: str
    quote: Quote
    instance_ids: tuple[str, ...]
    create_time: datetime
