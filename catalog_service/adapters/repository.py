"""Reads and writes the catalog's rows with SQLAlchemy Core and hands back domain objects."""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from sqlalchemy import (
    BindParameter,
    ColumnElement,
    Connection,
    Integer,
    Select,
    bindparam,
    delete,
    func,
    not_,
    select,
    union_all,
    update,
)

from catalog_service.adapters.tables import IMAGES, JOBS, QUOTA_USAGE, REGIONS
from catalog_service.domain.model import (
    Architecture,
    Image,
    ImageQuery,
    ImageSource,
    ImageState,
    ImageType,
    OsType,
    Region,
)
from chassis import jobs
from chassis.db import insert_ignoring_duplicates
from chassis.stored import Document

_IMAGE_FIELDS = [f.name for f in dataclasses.fields(Image)]


def _to_image(row: object) -> Image:
    m = row._mapping  # type: ignore[attr-defined]
    return Image(
        image_id=m["image_id"], region=m["region"], image_type=ImageType(m["image_type"]),
        state=ImageState(m["state"]), name=m["name"], description=m["description"],
        owner_account_id=m["owner_account_id"], platform=m["platform"], os_name=m["os_name"],
        os_type=OsType(m["os_type"]), architecture=Architecture(m["architecture"]), size_gb=m["size_gb"],
        source=ImageSource(m["source"]), base_image_id=m["base_image_id"],
        progress_percent=m["progress_percent"], create_time=m["create_time"],
        marketplace_product_id=m["marketplace_product_id"], marketplace_provider=m["marketplace_provider"],
        checksum_sha256=m["checksum_sha256"], state_reason=m["state_reason"],
    )


def _to_row(image: Image) -> dict[str, object]:
    return {name: getattr(image, name) for name in _IMAGE_FIELDS}


# The kinds of the catalog's jobs; each puts in the image store the bytes of the image that is its subject.
CREATE_JOB, IMPORT_JOB, SYNC_JOB = "create-image", "import-image", "sync-image"


def _unversioned_create_job_to_1(stored: dict[str, Any]) -> dict[str, Any]:
    """Version 0, a create-image job's data as b0e6f8c wrote it (the job table versioned only its envelope):
    image_id, region and checksum, the fields of version 1; only the version is new."""
    return stored


def _unversioned_import_job_to_1(stored: dict[str, Any]) -> dict[str, Any]:
    """Version 0, an import-image job's data as b0e6f8c wrote it (the job table versioned only its envelope):
    image_id, region, source_uri and format, the fields of version 1; only the version is new."""
    return stored


def _unversioned_sync_job_to_1(stored: dict[str, Any]) -> dict[str, Any]:
    """Version 0, a sync-image job's data as b0e6f8c wrote it (the job table versioned only its envelope):
    image_id, source_image_id, region, destination and checksum, the fields of version 1; only the version
    is new."""
    return stored


# A create-image job's data (inside the job table's envelope). Version 1: image_id (the image it makes), region
# and checksum (the base image's: where its bytes are, and which).
CREATE_JOB_DATA = Document("create-image job", 1, upgrades={0: _unversioned_create_job_to_1})
# An import-image job's data. Version 1: image_id (the image it makes, in region), region, source_uri and
# format (ImageFormat's value, as declared by the caller).
IMPORT_JOB_DATA = Document("import-image job", 1, upgrades={0: _unversioned_import_job_to_1})
# A sync-image job's data. Version 1: image_id (the copy it makes, in destination), source_image_id, region and
# checksum (the source image's: where its bytes are, and which) and destination.
SYNC_JOB_DATA = Document("sync-image job", 1, upgrades={0: _unversioned_sync_job_to_1})
_JOB_DATA = {CREATE_JOB: CREATE_JOB_DATA, IMPORT_JOB: IMPORT_JOB_DATA, SYNC_JOB: SYNC_JOB_DATA}


@dataclass(frozen=True)
class CopyJob:
    """A create-image or sync-image job, as its handler sees it: copy the bytes ``checksum`` of ``region``
    into the region of the image ``image_id``."""

    image_id: str
    region: str
    checksum: str


@dataclass(frozen=True)
class ImportJob:
    """An import-image job, as its handler sees it: stream ``source_uri``, declared ``format``, into
    ``region``, the region of the image ``image_id``."""

    image_id: str
    region: str
    source_uri: str
    format: str


def create_job_data(image_id: str, region: str, checksum: str) -> dict[str, Any]:
    return CREATE_JOB_DATA.dump({"image_id": image_id, "region": region, "checksum": checksum})


def import_job_data(image_id: str, region: str, source_uri: str, image_format: str) -> dict[str, Any]:
    return IMPORT_JOB_DATA.dump({"image_id": image_id, "region": region, "source_uri": source_uri,
                                 "format": image_format})


def sync_job_data(image_id: str, source_image_id: str, region: str, destination: str,
                  checksum: str) -> dict[str, Any]:
    return SYNC_JOB_DATA.dump({"image_id": image_id, "source_image_id": source_image_id, "region": region,
                               "destination": destination, "checksum": checksum})


def image_job(kind: str, data: dict[str, Any]) -> CopyJob | ImportJob:
    """The one decoder of the catalog's job data: the document of the job's kind, of any version. Data of a
    version this release cannot read (a newer release's) raises chassis.stored.UnknownVersion; a kind it does
    not know, ValueError."""
    document = _JOB_DATA.get(kind)
    if document is None:
        raise ValueError(f"a job of kind {kind!r}: not a kind this release of the catalog knows")
    stored = document.load(data)
    if kind == IMPORT_JOB:
        return ImportJob(stored["image_id"], stored["region"], stored["source_uri"], stored["format"])
    return CopyJob(stored["image_id"], stored["region"], stored["checksum"])


@dataclass(frozen=True)
class _Shape:
    """What a listing's statement depends on, apart from its parameters' values."""

    official: tuple[str, ...]  # the official image types asked for
    own: bool
    shared: bool
    platform: bool
    name: bool
    after: bool


@functools.cache
def _listing_statement(shape: _Shape) -> Select[Any] | None:
    """The statement of a shape, built once (building it costs a third of a listing; it is executed with the
    query's values as parameters: region, viewer, shared, platform, name, after, limit)."""
    c = IMAGES.c
    common: list[ColumnElement[bool]] = [c.region == bindparam("region")]
    if shape.platform:
        common.append(func.lower(c.platform) == bindparam("platform"))
    if shape.name:
        common.append(func.lower(c.name).like(bindparam("name"), escape="/"))
    if shape.after:
        common.append(c.image_id > bindparam("after"))
    custom = ImageType.CUSTOM.value
    ranges: list[list[ColumnElement[bool]]] = [[c.image_type == kind] for kind in shape.official]
    if shape.own:
        ranges.append([c.owner_account_id == bindparam("viewer"), c.image_type == custom])
    if shape.shared:
        ranges.append([c.image_id.in_(bindparam("shared", expanding=True)), c.image_type == custom,
                       c.owner_account_id != bindparam("viewer")])
    limit: BindParameter[int] = bindparam("limit", type_=Integer)
    parts = [select(IMAGES).where(*common, *visible).order_by(c.image_id).limit(limit).subquery()
             for visible in ranges]
    if not parts:
        return None
    if len(parts) == 1:
        return select(parts[0])
    union = union_all(*(select(part) for part in parts)).subquery()
    return select(union).order_by(union.c.image_id).limit(limit)


def _like_pattern(text: str) -> str:
    """``%text%`` for LIKE ... ESCAPE '/', the text's own wildcards escaped."""
    return "%" + text.replace("/", "//").replace("%", "/%").replace("_", "/_") + "%"


def listing_statement(query: ImageQuery, after: str | None, limit: int
                      ) -> tuple[Select[Any], dict[str, Any]] | None:
    """The one statement of ``CatalogRepository.page`` and its parameters: a UNION ALL of one index range per
    visible set (None when nothing is visible)."""
    shape = _Shape(
        official=tuple(sorted(t.value for t in query.image_types if t is not ImageType.CUSTOM)),
        own=ImageType.CUSTOM in query.image_types, shared=bool(query.shared_image_ids),
        platform=bool(query.platform), name=bool(query.name_filter), after=after is not None)
    statement = _listing_statement(shape)
    if statement is None:
        return None
    return statement, {"region": query.region, "viewer": query.viewer_account_id,
                       "shared": sorted(query.shared_image_ids), "platform": query.platform.lower(),
                       "name": _like_pattern(query.name_filter.lower()), "after": after, "limit": limit}


class CatalogRepository:
    def __init__(self, connection: Connection):
        self._connection = connection

    def regions(self) -> list[Region]:
        rows = self._connection.execute(select(REGIONS).order_by(REGIONS.c.region_id))
        return [Region(r.region_id, r.display_name, r.mainland, r.sync_enabled) for r in rows]

    def add_missing_regions(self, regions: Iterable[Region]) -> None:
        values = [dataclasses.asdict(r) for r in regions]
        if values:
            self._connection.execute(insert_ignoring_duplicates(self._connection, REGIONS), values)

    def add_missing_images(self, images: Iterable[Image]) -> None:
        values = [_to_row(i) for i in images]
        if values:
            self._connection.execute(insert_ignoring_duplicates(self._connection, IMAGES), values)

    def get(self, image_id: str, *, for_update: bool = False) -> Image | None:
        """The image; ``for_update`` locks its row until the transaction ends (PostgreSQL; on SQLite the
        writer's BEGIN IMMEDIATE already runs one writer at a time)."""
        statement = select(IMAGES).where(IMAGES.c.image_id == image_id)
        row = self._connection.execute(statement.with_for_update() if for_update else statement).first()
        return None if row is None else _to_image(row)

    def add(self, image: Image) -> None:
        self._connection.execute(IMAGES.insert().values(_to_row(image)))

    def change(self, image_id: str, **values: object) -> None:
        self._connection.execute(update(IMAGES).where(IMAGES.c.image_id == image_id).values(**values))

    def delete(self, image_id: str) -> None:
        self._connection.execute(delete(IMAGES).where(IMAGES.c.image_id == image_id))

    def fill_missing_checksums(self, checksums: dict[str, str]) -> None:
        """Records the bytes of seeded images that a catalog from before the image store made."""
        c = IMAGES.c
        for image_id, checksum in checksums.items():
            self._connection.execute(update(IMAGES).where(c.image_id == image_id, c.checksum_sha256 == "")
                                     .values(checksum_sha256=checksum))

    def named(self, owner_account_id: str, region: str, name: str) -> str | None:
        """The id of the account's image of that name in the region, if there is one."""
        c = IMAGES.c
        return self._connection.execute(select(c.image_id).where(
            c.owner_account_id == owner_account_id, c.region == region, c.name == name)).scalar()

    def count_custom(self, owner_account_id: str, region: str) -> int:
        """The account's custom images in the region that count against its quota: all but failed ones."""
        c = IMAGES.c
        failed = [ImageState.CREATE_FAILED.value, ImageState.IMPORT_FAILED.value]
        return self._connection.execute(select(func.count()).select_from(IMAGES).where(
            c.owner_account_id == owner_account_id, c.region == region, c.image_type == ImageType.CUSTOM.value,
            not_(c.state.in_(failed)))).scalar_one()

    def syncs_from(self, image_id: str) -> int:
        """How many copies of the image are being synced to other regions now."""
        c = IMAGES.c
        return self._connection.execute(select(func.count()).select_from(IMAGES).where(
            c.base_image_id == image_id, c.state == ImageState.SYNCING.value)).scalar_one()

    def stored_blobs(self) -> set[tuple[str, str]]:
        """Every (region, checksum) that an image refers to."""
        c = IMAGES.c
        rows = self._connection.execute(select(c.region, c.checksum_sha256).where(c.checksum_sha256 != "").distinct())
        return {(r[0], r[1]) for r in rows}

    def blobs_jobs_will_read(self) -> set[tuple[str, str]]:
        """Every (region, checksum) that a pending create or sync job is to copy."""
        rows = self._connection.execute(select(JOBS.c.kind, JOBS.c.payload).where(JOBS.c.state == "PENDING"))
        found = set()
        for kind, payload in rows:
            # Through the job table's decoder and its kind's: a payload or data this release cannot read (a newer
            # release's), or a kind it does not know, raises, so the collection stops and deletes nothing rather
            # than the bytes that job may be about to copy.
            job = image_job(kind, jobs.payload_data(payload))
            if isinstance(job, CopyJob) and job.checksum and job.region:
                found.add((job.region, job.checksum))
        return found

    def lock_quota(self, account_id: str, regions: Iterable[str], today: str) -> dict[str, int]:
        """Locks the account's quota rows of these regions (in one order, so two calls never deadlock)
        until the transaction ends, and returns the operations each has used today."""
        wanted = sorted(set(regions))
        self._connection.execute(insert_ignoring_duplicates(self._connection, QUOTA_USAGE), [
            {"account_id": account_id, "region": region, "day": today, "operations_used": 0} for region in wanted])
        c = QUOTA_USAGE.c
        rows = self._connection.execute(
            select(c.region, c.day, c.operations_used).where(c.account_id == account_id, c.region.in_(wanted))
            .order_by(c.region).with_for_update()).all()
        return {r.region: (r.operations_used if r.day == today else 0) for r in rows}

    def operations_used(self, account_id: str, region: str, today: str) -> int:
        c = QUOTA_USAGE.c
        row = self._connection.execute(select(c.day, c.operations_used).where(
            c.account_id == account_id, c.region == region)).first()
        return 0 if row is None or row.day != today else row.operations_used

    def set_operations_used(self, account_id: str, region: str, today: str, used: int) -> None:
        c = QUOTA_USAGE.c
        self._connection.execute(update(QUOTA_USAGE).where(c.account_id == account_id, c.region == region)
                                 .values(day=today, operations_used=used))

    def get_many(self, image_ids: Iterable[str]) -> list[Image]:
        rows = self._connection.execute(select(IMAGES).where(IMAGES.c.image_id.in_(list(image_ids))))
        return [_to_image(r) for r in rows]

    def page(self, query: ImageQuery, after: str | None, limit: int) -> list[Image]:
        """Up to ``limit`` images of the query with ids above ``after``, in id order.

        The caller sees the official images of the kinds asked for, its own custom images and those shared
        with it. Each of those sets is read by an index that holds exactly it, in id order (official:
        region, type, id; own: region, owner, type, id; shared: the primary key), each up to ``limit``, and
        the page is the first ``limit`` of their union: so a page costs the same whatever other accounts
        keep in the region (a walk of the region's whole id index, filtering visibility after, did not)."""
        listing = listing_statement(query, after, limit)
        if listing is None:
            return []
        statement, parameters = listing  # values for parameters a shape lacks are ignored
        return [_to_image(r) for r in self._connection.execute(statement, parameters)]
