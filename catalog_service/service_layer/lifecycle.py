"""The image lifecycle's use cases: create, import, sync, update, delete, quotas.

Each mutation runs in one transaction: its request_id claim, the quota rows it locks, the image it
writes and the durable job that will put the image's bytes in the store (see jobs.py) commit together
or not at all. A dry run makes every check, quotas included, and writes nothing.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from datetime import datetime

from catalog_service.adapters.repository import (
    CREATE_JOB,
    IMPORT_JOB,
    SYNC_JOB,
    create_job_data,
    import_job_data,
    sync_job_data,
)
from catalog_service.adapters.sources import ImportPolicy, ImportRefused, check_source
from catalog_service.adapters.tables import JOBS
from catalog_service.domain.model import (
    MAX_OS_NAME_LENGTH,
    MAX_SOURCE_URI_LENGTH,
    MAX_SYNC_DESTINATIONS,
    Architecture,
    Image,
    ImageFormat,
    ImageSource,
    ImageState,
    ImageType,
    OsType,
    Quota,
    Region,
    check_description,
    check_name,
    image_busy,
    image_not_found,
    name_taken,
    platform_of,
    unknown_region,
)
from catalog_service.service_layer.unit_of_work import CatalogUnitOfWork
from chassis import ids, jobs
from chassis.clock import Clock, SystemClock
from chassis.errors import FailedPrecondition, InvalidArgument, clipped

GIB = 1 << 30


@dataclass(frozen=True)
class QuotaLimits:
    custom_images: int = 10
    daily_operations: int = 5


@dataclass
class Lifecycle:
    """What the lifecycle's use cases depend on; bootstrap picks the real pieces."""

    new_uow: Callable[..., CatalogUnitOfWork]
    regions: Mapping[str, Region]
    import_policy: ImportPolicy
    limits: QuotaLimits = field(default_factory=QuotaLimits)
    clock: Clock = field(default_factory=SystemClock)

    def region(self, region_id: str) -> Region:
        found = self.regions.get(region_id)
        if found is None:
            raise unknown_region(region_id)
        return found

    def today(self) -> str:
        return self.clock.now().date().isoformat()


@dataclass(frozen=True)
class CreateRequest:
    region: str
    instance_id: str
    name: str
    description: str
    base_image_id: str
    size_gb: int
    request_id: str = ""
    dry_run: bool = False


@dataclass(frozen=True)
class ImportRequest:
    region: str
    name: str
    description: str
    format: ImageFormat
    os_name: str
    os_type: OsType
    architecture: Architecture
    source_uri: str
    request_id: str = ""
    dry_run: bool = False


def _owned(uow: CatalogUnitOfWork, account_id: str, image_id: str, *, for_update: bool = False) -> Image:
    """The account's own custom image; NOT_FOUND for any other (the gateway tells visible ones apart)."""
    image = uow.images.get(image_id, for_update=for_update)
    if image is None or image.image_type is not ImageType.CUSTOM or image.owner_account_id != account_id:
        raise image_not_found(image_id)
    return image


def _quota_checked(uow: CatalogUnitOfWork, deps: Lifecycle, account_id: str, regions: list[str]) -> dict[str, int]:
    """Locks the account's quota rows of these regions and checks one more image and operation in each;
    returns the operations used today per region."""
    used = uow.images.lock_quota(account_id, regions, deps.today())
    for region in regions:
        Quota(deps.limits.custom_images, uow.images.count_custom(account_id, region),
              deps.limits.daily_operations, used[region]).check(1, 1, region)
    return used


def _consume(uow: CatalogUnitOfWork, deps: Lifecycle, account_id: str, used: dict[str, int]) -> None:
    for region, count in used.items():
        uow.images.set_operations_used(account_id, region, deps.today(), count + 1)


def _check_name_free(uow: CatalogUnitOfWork, account_id: str, region: str, name: str) -> None:
    if uow.images.named(account_id, region, name) is not None:
        raise name_taken(name, region)


def create_image(account_id: str, request: CreateRequest, deps: Lifecycle) -> Image:
    """A PRIVATE image of the system disk of an instance (the gateway has checked that the instance is
    the caller's): CREATING, and a job that copies the bytes of the image the instance runs."""
    deps.region(request.region)
    ids.require_id("ins", request.instance_id, "instance_id")
    ids.require_id("img", request.base_image_id, "base_image_id")
    check_name(request.name)
    check_description(request.description)
    ids.check_request_id(request.request_id)
    now = deps.clock.now()
    with deps.new_uow() as uow:
        claim = None
        if not request.dry_run:
            claim = uow.requests.claim(account_id, request.request_id, "CreateImage", region=request.region,
                                       instance_id=request.instance_id, name=request.name,
                                       description=request.description, base_image_id=request.base_image_id,
                                       size_gb=request.size_gb)
            if claim.repeated:
                return claim.response[0]
        base = uow.images.get(request.base_image_id)
        if base is None or base.region != request.region or base.state is not ImageState.NORMAL \
                or not base.checksum_sha256:
            raise FailedPrecondition(
                "BASE_IMAGE_UNAVAILABLE",
                f"the image instance {request.instance_id} was launched from ({request.base_image_id}) no longer "
                f"exists in {request.region}, so its system disk cannot be captured",
                subject=f"image:{request.base_image_id}")
        used = _quota_checked(uow, deps, account_id, [request.region])
        _check_name_free(uow, account_id, request.region, request.name)
        image = _derived(base, ids.new_id("img"), request.region, account_id, ImageState.CREATING,
                         ImageSource.INSTANCE, now, name=request.name, description=request.description,
                         size_gb=max(request.size_gb, base.size_gb))
        if request.dry_run or claim is None:
            return image
        uow.images.add(image)
        jobs.enqueue(uow.connection, JOBS, CREATE_JOB, image.image_id,
                     create_job_data(image.image_id, base.region, base.checksum_sha256), now)
        _consume(uow, deps, account_id, used)
        claim.answer([image])
        uow.commit()
    return image


def _derived(base: Image, image_id: str, region: str, account_id: str, state: ImageState, source: ImageSource,
             now: datetime, **changes: object) -> Image:
    """A custom image made from ``base``: it keeps what the OS and the price depend on (the OS, and the
    marketplace product, transitively), with no bytes yet."""
    values: dict[str, object] = dict(
        image_id=image_id, region=region, image_type=ImageType.CUSTOM, state=state, owner_account_id=account_id,
        source=source, base_image_id=base.image_id, progress_percent=0, create_time=now, checksum_sha256="",
        state_reason="",
    )
    values.update(changes)
    return replace(base, **values)  # type: ignore[arg-type]


def import_image(account_id: str, request: ImportRequest, deps: Lifecycle) -> Image:
    """A PRIVATE image from a disk image at ``source_uri``: IMPORTING, and a job that streams, inspects
    and stores it. A source the policy refuses is refused here, before anything is written."""
    deps.region(request.region)
    check_name(request.name)
    check_description(request.description)
    if len(request.os_name) > MAX_OS_NAME_LENGTH:
        raise InvalidArgument("INVALID_OS_NAME", f"os_name must be at most {MAX_OS_NAME_LENGTH} characters",
                              field="os_name")
    if not request.source_uri or len(request.source_uri) > MAX_SOURCE_URI_LENGTH:
        raise InvalidArgument("INVALID_SOURCE_URI", f"source_uri is required, at most {MAX_SOURCE_URI_LENGTH} "
                              "characters", field="source_uri")
    try:
        check_source(request.source_uri, deps.import_policy)
    except ImportRefused as refused:
        raise InvalidArgument(refused.reason, f"source_uri {clipped(request.source_uri)!r}: {refused.message}",
                              field="source_uri") from None
    ids.check_request_id(request.request_id)
    now = deps.clock.now()
    with deps.new_uow() as uow:
        claim = None
        if not request.dry_run:
            claim = uow.requests.claim(account_id, request.request_id, "ImportImage", region=request.region,
                                       name=request.name, description=request.description,
                                       format=request.format.value, os_name=request.os_name,
                                       os_type=request.os_type.value, architecture=request.architecture.value,
                                       source_uri=request.source_uri)
            if claim.repeated:
                return claim.response[0]
        used = _quota_checked(uow, deps, account_id, [request.region])
        _check_name_free(uow, account_id, request.region, request.name)
        image = Image(
            image_id=ids.new_id("img"), region=request.region, image_type=ImageType.CUSTOM,
            state=ImageState.IMPORTING, name=request.name, description=request.description,
            owner_account_id=account_id, platform=platform_of(request.os_name, request.os_type),
            os_name=request.os_name or request.os_type.value.title(), os_type=request.os_type,
            architecture=request.architecture, size_gb=0, source=ImageSource.IMPORT, base_image_id="",
            progress_percent=0, create_time=now,
        )
        if request.dry_run or claim is None:
            return image
        uow.images.add(image)
        jobs.enqueue(uow.connection, JOBS, IMPORT_JOB, image.image_id,
                     import_job_data(image.image_id, image.region, request.source_uri, request.format.value), now)
        _consume(uow, deps, account_id, used)
        claim.answer([image])
        uow.commit()
    return image


def sync_image(account_id: str, image_id: str, destinations: list[str], request_id: str, dry_run: bool,
               deps: Lifecycle) -> list[Image]:
    """Copies of a NORMAL custom image in other sync-enabled regions: each a PRIVATE image of its own
    (source SYNC), SYNCING, copied and verified by its own job; counted in its region's quotas."""
    ids.require_id("img", image_id, "image_id")
    ids.check_request_id(request_id)
    if not destinations:
        raise InvalidArgument("NO_DESTINATION", "destination_regions must name at least one region",
                              field="destination_regions")
    if len(destinations) > MAX_SYNC_DESTINATIONS:
        raise InvalidArgument("TOO_MANY_DESTINATIONS", f"at most {MAX_SYNC_DESTINATIONS} destination regions "
                              "per call", field="destination_regions")
    wanted = list(dict.fromkeys(destinations))
    for index, region in enumerate(wanted):
        if region not in deps.regions:
            raise InvalidArgument("UNKNOWN_REGION", f"region {clipped(region)!r} does not exist",
                                  field=f"destination_regions[{index}]")
    now = deps.clock.now()
    with deps.new_uow() as uow:
        claim = None
        if not dry_run:
            claim = uow.requests.claim(account_id, request_id, "SyncImage", image_id=image_id,
                                       destination_regions=sorted(wanted))
            if claim.repeated:
                return claim.response
        source = _owned(uow, account_id, image_id, for_update=True)
        if source.state is not ImageState.NORMAL or not source.checksum_sha256:
            raise FailedPrecondition("IMAGE_NOT_READY", f"image {image_id} is {source.state.value}: only NORMAL "
                                     "images can be synced", subject=f"image:{image_id}")
        if not deps.regions[source.region].sync_enabled:
            raise FailedPrecondition("REGION_NOT_SYNC_ENABLED", f"images cannot be synced out of {source.region}",
                                     subject=f"region:{source.region}")
        for index, region in enumerate(wanted):
            if region == source.region:
                raise InvalidArgument("SAME_REGION", f"image {image_id} is already in {region}",
                                      field=f"destination_regions[{index}]")
            if not deps.regions[region].sync_enabled:
                raise FailedPrecondition("REGION_NOT_SYNC_ENABLED", f"images cannot be synced into {region}",
                                         subject=f"region:{region}")
        used = _quota_checked(uow, deps, account_id, wanted)
        copies = []
        for region in wanted:
            _check_name_free(uow, account_id, region, source.name)
            copies.append(_derived(source, ids.new_id("img"), region, account_id, ImageState.SYNCING,
                                   ImageSource.SYNC, now))
        if dry_run or claim is None:
            return copies
        for copy in copies:
            uow.images.add(copy)
            jobs.enqueue(uow.connection, JOBS, SYNC_JOB, copy.image_id,
                         sync_job_data(copy.image_id, source.image_id, source.region, copy.region,
                                       source.checksum_sha256), now)
        _consume(uow, deps, account_id, used)
        claim.answer(copies)
        uow.commit()
    return copies


UPDATABLE = ("name", "description")


def update_image(account_id: str, image_id: str, name: str, description: str, paths: list[str], request_id: str,
                 deps: Lifecycle) -> Image:
    ids.require_id("img", image_id, "image_id")
    ids.check_request_id(request_id)
    if not paths:
        raise InvalidArgument("EMPTY_UPDATE_MASK", "update_mask must name name and/or description",
                              field="update_mask")
    for path in paths:
        if path not in UPDATABLE:
            raise InvalidArgument("FIELD_NOT_UPDATABLE", f"{clipped(path)!r} cannot be updated: only name and "
                                  "description can", field="update_mask")
    changes: dict[str, str] = {}
    if "name" in paths:
        changes["name"] = check_name(name, "image.name")
    if "description" in paths:
        changes["description"] = check_description(description, "image.description")
    with deps.new_uow() as uow:
        claim = uow.requests.claim(account_id, request_id, "UpdateImage", image_id=image_id,
                                   paths=sorted(set(paths)), **changes)
        if claim.repeated:
            return claim.response[0]
        image = _owned(uow, account_id, image_id, for_update=True)
        if changes.get("name", image.name) != image.name:
            _check_name_free(uow, account_id, image.region, changes["name"])
        uow.images.change(image_id, **changes)
        updated = replace(image, name=changes.get("name", image.name),
                          description=changes.get("description", image.description))
        claim.answer([updated])
        uow.commit()
    return updated


def delete_image(account_id: str, image_id: str, request_id: str, validate_only: bool, deps: Lifecycle) -> None:
    """Deletes one of the account's custom images, never while a job makes it or copies from it. The
    gateway has made sure it is shared with no one (sharing holds it for the deletion)."""
    ids.require_id("img", image_id, "image_id")
    ids.check_request_id(request_id)
    with deps.new_uow() as uow:
        claim = None
        if not validate_only:
            claim = uow.requests.claim(account_id, request_id, "DeleteImage", image_id=image_id)
            if claim.repeated:
                return
        image = _owned(uow, account_id, image_id, for_update=True)
        if image.state.busy:
            raise image_busy(image)
        syncing = uow.images.syncs_from(image_id)
        if syncing:
            raise FailedPrecondition("SYNC_RUNNING", f"image {image_id} is being copied to {syncing} other "
                                     "region(s): delete it when the sync is over", subject=f"image:{image_id}")
        if claim is None:
            return
        uow.images.delete(image_id)
        claim.answer([])
        uow.commit()


def image_quota(account_id: str, region: str, deps: Lifecycle) -> Quota:
    deps.region(region)
    with deps.new_uow(read_only=True) as uow:
        return Quota(deps.limits.custom_images, uow.images.count_custom(account_id, region),
                     deps.limits.daily_operations, uow.images.operations_used(account_id, region, deps.today()))


def size_gb_of(virtual_size: int) -> int:
    """An imported image's size in whole GiB (at least 1)."""
    return max(1, math.ceil(virtual_size / GIB))
