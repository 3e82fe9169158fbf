"""Instances, which the gateway owns: launched from an image, reset to another, terminated; and the rules
of a launch (or a reset) that need the answers of all three contexts."""

from __future__ import annotations

import enum
import hashlib
from dataclasses import dataclass
from datetime import datetime

from chassis import ids
from chassis.errors import FailedPrecondition, InvalidArgument, Unavailable
from chassis.fingerprints import fingerprint
from gateway.domain.model import (
    Architecture,
    ChargeType,
    Image,
    ImageState,
    InstanceType,
    OsType,
    Quote,
    ShareState,
    Verdict,
    image_not_found,
)

MAX_INSTANCES_PER_LAUNCH = 100
# TerminateInstances takes as many ids as a launch makes instances.
MAX_INSTANCES_PER_CALL = MAX_INSTANCES_PER_LAUNCH
DEFAULT_SYSTEM_DISK_GB = 50
MIN_SYSTEM_DISK_GB, MAX_SYSTEM_DISK_GB = 20, 1024
MAX_CLIENT_TOKEN_LENGTH = 64
MAX_NAME_LENGTH = 60


class InstanceState(enum.StrEnum):
    PENDING = "PENDING"
    RUNNING = "RUNNING"
    STOPPED = "STOPPED"
    TERMINATED = "TERMINATED"
    RESETTING = "RESETTING"


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
    # The last change of state or image; the launch time until the first.
    update_time: datetime | None = None
    terminate_time: datetime | None = None


@dataclass(frozen=True)
class LaunchRequest:
    """What RunInstances and QuoteRunInstances ask for, defaults applied (and what a reset is checked as)."""

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


def check_launchable(request: LaunchRequest, image: Image, verdict: Verdict, instance_type: InstanceType) -> None:
    """The rules of a launch (and of a reset) that need the answers of all three contexts."""
    subject = f"image:{image.image_id}"
    if not verdict.visible or not image.exists or image.region != request.region:
        raise image_not_found(image.image_id)
    if image.state is not ImageState.NORMAL:
        raise FailedPrecondition("IMAGE_STATE_INVALID", f"image {image.image_id} is {image.state.value}; only NORMAL "
                                 "images can be launched", subject=subject)
    if verdict.share_state is ShareState.PENDING:
        raise FailedPrecondition("SHARE_PENDING", f"image {image.image_id} is shared with you but waits for your "
                                 "acceptance (AcceptImageShare)", subject=subject)
    if verdict.share_state is ShareState.REJECTED:
        raise FailedPrecondition("SHARE_REJECTED", f"you rejected the share of image {image.image_id}; accept it "
                                 "(AcceptImageShare) to use it", subject=subject)
    if not verdict.allowed:
        rule = verdict.policy_rule or "the image is outside its allow-list"
        raise FailedPrecondition("IMAGE_NOT_ALLOWED", f"your image trust policy ({verdict.policy_mode.value}) does "
                                 f"not allow image {image.image_id}: {rule}", subject=subject,
                                 metadata={"rule": rule, "mode": verdict.policy_mode.value})
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


# An image is made from an instance whose disk is there and settled: not one still launching (or
# being reset), and not one that is gone.
_IMAGEABLE_STATES = frozenset({InstanceState.RUNNING, InstanceState.STOPPED})
# States in which the instance is in the middle of a change of its own.
_BUSY_STATES = frozenset({InstanceState.PENDING, InstanceState.RESETTING})


def _terminated(instance: Instance, action: str) -> FailedPrecondition:
    return FailedPrecondition("INSTANCE_TERMINATED", f"instance {instance.instance_id} is terminated; {action}",
                              subject=f"instance:{instance.instance_id}")


def instance_busy(instance: Instance) -> FailedPrecondition:
    return FailedPrecondition("INSTANCE_BUSY", f"instance {instance.instance_id} is {instance.state.value}; try "
                              "again once it is RUNNING", subject=f"instance:{instance.instance_id}")


def check_imageable(instance: Instance) -> None:
    """May an image be made from this instance now (CreateImage)."""
    if instance.state is InstanceState.TERMINATED:
        raise _terminated(instance, "an image cannot be made from it")
    if instance.state not in _IMAGEABLE_STATES:
        raise FailedPrecondition("INSTANCE_NOT_READY", f"instance {instance.instance_id} is "
                                 f"{instance.state.value}; wait until it is RUNNING",
                                 subject=f"instance:{instance.instance_id}")


def check_resettable(instance: Instance) -> None:
    """May this instance be reinstalled from an image now (ResetInstance)."""
    if instance.state is InstanceState.TERMINATED:
        raise _terminated(instance, "it cannot be reset")
    if instance.state in _BUSY_STATES:
        raise instance_busy(instance)


def to_terminate(instances: list[Instance]) -> list[Instance]:
    """Which of these instances a TerminateInstances terminates: all but those terminated already. One that is
    launching or being reset refuses the whole call (all or nothing)."""
    for instance in instances:
        if instance.state in _BUSY_STATES:
            raise instance_busy(instance)
    return [i for i in instances if i.state is not InstanceState.TERMINATED]


def instance_ids_to_terminate(instance_ids: list[str]) -> list[str]:
    """The distinct, well-formed ids of a TerminateInstances, in the order given."""
    if not 1 <= len(instance_ids) <= MAX_INSTANCES_PER_CALL:
        raise InvalidArgument("INVALID_INSTANCE_COUNT",
                              f"instance_ids must name 1 to {MAX_INSTANCES_PER_CALL} instances", field="instance_ids")
    for index, instance_id in enumerate(instance_ids):
        ids.require_id("ins", instance_id, f"instance_ids[{index}]")
    return list(dict.fromkeys(instance_ids))


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
                     self.launch_id, self.create_time, self.create_time)
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
class Reset:
    """One ResetInstance: the instance (what it is priced by), the image it is reinstalled from (and the facts
    that price it), and when it takes effect. Kept with the reset's job until the reset is done; a quote is
    a Reset with no reset_id."""

    reset_id: str
    account_id: str
    instance_id: str
    region: str
    instance_type: str
    charge_type: ChargeType
    period_months: int
    launch_time: datetime
    image_id: str
    image_os_type: OsType
    marketplace_product_id: str
    effective_time: datetime


def reset_request(instance: Instance, image_id: str, period_months: int) -> LaunchRequest:
    """A reset is checked as the launch of one instance like this one from the new image."""
    return LaunchRequest(region=instance.region, image_id=image_id, instance_type=instance.instance_type,
                         instance_count=1, charge_type=instance.charge_type, period_months=period_months,
                         system_disk_gb=instance.system_disk_gb)


def new_reset(reset_id: str, instance: Instance, period_months: int, image: Image, now: datetime) -> Reset:
    return Reset(reset_id, instance.account_id, instance.instance_id, instance.region, instance.instance_type,
                 instance.charge_type, period_months, instance.create_time, image.image_id, image.os_type,
                 image.marketplace_product_id, now)
