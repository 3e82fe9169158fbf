"""The image lifecycle handlers of the gateway (create, import, update, sync, delete, quota) with fake contexts
and the gateway's own SQLite database; and the translation of their calls into the internal contracts."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal

import pytest
from cloudimg.catalog.v1 import catalog_service_pb2 as catalog_pb
from cloudimg.gateway.v1 import image_service_pb2 as image_pb
from cloudimg.sharing.v1 import sharing_service_pb2 as sharing_pb
from google.protobuf.message import Message

from chassis import context
from chassis.clock import FakeClock
from chassis.context import Caller
from chassis.errors import (
    DomainError,
    FailedPrecondition,
    InvalidArgument,
    NotFound,
    PermissionDenied,
    RemoteError,
    Unavailable,
    Unreached,
)
from chassis.rpc import status_of
from gateway.adapters.contexts import Catalog, Sharing
from gateway.bootstrap import open_database
from gateway.domain.api_keys import Account
from gateway.domain.instances import Instance, InstanceState
from gateway.domain.model import (
    Architecture,
    CatalogKind,
    ChargeType,
    Image,
    ImageFormat,
    ImageImport,
    ImageQuota,
    ImageSource,
    ImageState,
    OsType,
    Region,
    ShareState,
    Verdict,
    VerdictBasis,
)
from gateway.entrypoints import convert
from gateway.service_layer import image_lifecycle
from gateway.service_layer.dependencies import Dependencies, ReferenceData
from tests.unit import gateway_fakes

ALICE, BOB, CAROL = Caller("100000000001"), Caller("100000000002"), Caller("100000000003")
NOW = datetime(2026, 1, 1, tzinfo=UTC)


def image(image_id: str, kind: CatalogKind, owner: str = "platform", state: str = "NORMAL", **more: Any) -> Image:
    return Image(image_id, "ap-guangzhou", kind, ImageState(state), image_id, "", owner, "Ubuntu", "Ubuntu 22.04",
                 OsType.LINUX, Architecture.X86_64, 20, ImageSource.INSTANCE, "", 100, NOW, **more)


PUBLIC = image("img-public01", CatalogKind.PUBLIC)
ALICES = image("img-alice001", CatalogKind.CUSTOM, ALICE.account_id)
SHARED_WITH_BOB = image("img-alice002", CatalogKind.CUSTOM, ALICE.account_id)
CAROLS = image("img-carol001", CatalogKind.CUSTOM, CAROL.account_id)
MISSING = "img-zz000000"
Journal = list[tuple[str, *tuple[object, ...]]]  # the calls made of the contexts, in order: (what, arguments...)


def instance(instance_id: str, state: InstanceState = InstanceState.RUNNING, owner: Caller = ALICE) -> Instance:
    return Instance(instance_id, owner.account_id, "ap-guangzhou", instance_id, "S5.MEDIUM4", PUBLIC.image_id, state,
                    ChargeType.POSTPAID_BY_HOUR, 60, Architecture.ARM64, "lch-00000001", NOW, NOW)


RUNNING, STOPPED, PENDING, TERMINATED = (
    instance("ins-running1"), instance("ins-stopped1", InstanceState.STOPPED),
    instance("ins-pending1", InstanceState.PENDING), instance("ins-termina1", InstanceState.TERMINATED))
BOBS_INSTANCE = instance("ins-bobs0001", owner=BOB)


def refusal(code: str, reason: str) -> RemoteError:
    """What a client raises when its context refuses a call with a domain error."""
    error = FailedPrecondition(reason, f"refused: {reason}", subject="image:x")
    return RemoteError(code, reason, error.message, status_of(error).SerializeToString())


class FakeCatalog(gateway_fakes.FakeCatalog):
    """The catalog's images, with its ownership check (NOT_FOUND for an image the caller does not own) and its
    request ledger for deletes (a repeated request_id answers as the first call did); each call journaled. (Its
    listing, which these handlers do not use, is gateway_fakes'.)"""

    def __init__(self, journal: Journal):
        super().__init__()
        self.known = {i.image_id: i for i in (PUBLIC, ALICES, SHARED_WITH_BOB, CAROLS)}
        self.journal = journal
        self.deleted: dict[tuple[str, str], str] = {}  # (account, request_id) -> image_id
        self.refuse: dict[str, DomainError] = {}  # "validate" or "delete" -> what that call raises
        self.quotas = ImageQuota("ap-guangzhou", 10, 3, 5, 1)

    async def regions(self) -> list[Region]:
        return [Region("ap-guangzhou", "Guangzhou", True, True), Region("ap-beijing", "Beijing", True, True)]

    async def image(self, image_id: str, region: str = "") -> Image:
        self.journal.append(("catalog.image", image_id))
        return self.known.get(image_id) or Image.missing(image_id, region)

    def _owned(self, image_id: str) -> Image:
        found = self.known.get(image_id)
        if found is None or found.owner_account_id != context.caller().account_id:
            raise refusal("NOT_FOUND", "IMAGE_NOT_FOUND")
        return found

    async def create_image(self, source: Instance, name: str, description: str, request_id: str,
                           dry_run: bool) -> Image:
        self.journal.append(("catalog.create", source, name, description, request_id, dry_run))
        return replace(image("img-new00001", CatalogKind.CUSTOM, source.account_id, "CREATING"),
                       base_image_id=source.image_id)

    async def import_image(self, spec: ImageImport, request_id: str, dry_run: bool) -> Image:
        self.journal.append(("catalog.import", spec, request_id, dry_run))
        return image("img-new00002", CatalogKind.CUSTOM, context.caller().account_id, "IMPORTING")

    async def update_image(self, image_id: str, name: str, description: str, paths: list[str],
                           request_id: str) -> Image:
        self.journal.append(("catalog.update", image_id, name, description, paths, request_id))
        return self._owned(image_id)

    async def sync_image(self, image_id: str, destination_regions: list[str], request_id: str,
                         dry_run: bool) -> list[Image]:
        self.journal.append(("catalog.sync", image_id, destination_regions, request_id, dry_run))
        self._owned(image_id)
        return [image(f"img-sync000{n}", CatalogKind.CUSTOM, context.caller().account_id, "SYNCING")
                for n, _ in enumerate(destination_regions)]

    async def delete_image(self, image_id: str, request_id: str, validate_only: bool = False) -> None:
        self.journal.append(("catalog.delete", image_id, request_id, validate_only))
        account = context.caller().account_id
        if not validate_only and self.deleted.get((account, request_id)) == image_id:
            return
        failure = self.refuse.get("validate" if validate_only else "delete")
        if failure is not None:
            raise failure
        self._owned(image_id)
        if not validate_only:
            del self.known[image_id]
            if request_id:
                self.deleted[(account, request_id)] = image_id

    async def quota(self, region: str) -> ImageQuota:
        self.journal.append(("catalog.quota", region))
        return self.quotas


class FakeSharing(gateway_fakes.FakeSharing):
    """Shares as they stand, and the holds of a delete (retire, restore); each call journaled. (The rest, which
    these handlers do not use, is gateway_fakes'.)"""

    def __init__(self, journal: Journal):
        super().__init__()
        self.shared = {(SHARED_WITH_BOB.image_id, BOB.account_id): ShareState.ACCEPTED}
        self.journal = journal
        self.refuse: dict[str, DomainError] = {}  # "retire" or "restore" -> what that call raises

    async def verdict(self, img: Image) -> Verdict:
        self.journal.append(("sharing.verdict", img.image_id))
        caller = context.caller().account_id
        if img.kind is not CatalogKind.CUSTOM or img.owner_account_id == caller:
            return Verdict(True, True, VerdictBasis.OWNER)
        state = self.shared.get((img.image_id, caller))
        return Verdict(state is not None, state is ShareState.ACCEPTED, VerdictBasis.SHARED, state)

    async def retire(self, img: Image) -> None:
        self.journal.append(("sharing.retire", img.image_id))
        if "retire" in self.refuse:
            raise self.refuse["retire"]

    async def restore(self, img: Image) -> None:
        self.journal.append(("sharing.restore", img.image_id))
        if "restore" in self.refuse:
            raise self.refuse["restore"]


@dataclass
class LifecycleDependencies(Dependencies):
    """The dependencies of the lifecycle handlers, on these fakes (and no billing, which they never ask)."""

    catalog: FakeCatalog
    sharing: FakeSharing


@pytest.fixture
def deps(tmp_path: Path) -> LifecycleDependencies:
    _db, new_uow = open_database(f"sqlite:///{tmp_path}/gateway.db")
    with new_uow() as uow:
        uow.accounts.add_missing([Account(c.account_id, "") for c in (ALICE, BOB, CAROL)], NOW)
        uow.instances.add([RUNNING, STOPPED, PENDING, TERMINATED, BOBS_INSTANCE])
        uow.commit()
    journal: Journal = []
    catalog = FakeCatalog(journal)
    return LifecycleDependencies(catalog, FakeSharing(journal), None,  # type: ignore[arg-type]
                                 ReferenceData(catalog, None), new_uow, FakeClock(NOW))  # type: ignore[arg-type]


@pytest.fixture(autouse=True)
def as_alice() -> None:
    context.current_caller.set(ALICE)


def as_caller(caller: Caller) -> None:
    context.current_caller.set(caller)


def journal(deps: LifecycleDependencies) -> Journal:
    return deps.catalog.journal


def calls(deps: LifecycleDependencies) -> list[str]:
    return [entry[0] for entry in journal(deps)]


def hidden_answer(error: DomainError, image_id: str) -> bytes:
    """The NOT_FOUND a caller hears, with the id itself blanked out."""
    answer: bytes = status_of(error).SerializeToString()  # google.rpc has no py.typed marker: Any to mypy
    return answer.replace(image_id.encode(), b"ID")


# CreateImage

@pytest.mark.parametrize("source", [RUNNING, STOPPED], ids=["running", "stopped"])
async def test_an_image_is_made_from_the_callers_own_instance(deps: LifecycleDependencies, source: Instance) -> None:
    made = await image_lifecycle.create_image(ALICE, source.instance_id, "web", "v1", "r1", False, deps)
    assert made.state == "CREATING"
    assert made.base_image_id == PUBLIC.image_id
    assert journal(deps) == [("catalog.create", source, "web", "v1", "r1", False)]


async def test_a_dry_run_is_passed_on(deps: LifecycleDependencies) -> None:
    await image_lifecycle.create_image(ALICE, RUNNING.instance_id, "web", "", "", True, deps)
    assert journal(deps)[0][-1] is True


async def test_another_accounts_instance_is_not_found_like_a_missing_one(deps: LifecycleDependencies) -> None:
    answers: list[bytes] = []
    for instance_id in (BOBS_INSTANCE.instance_id, "ins-zz000000"):
        with pytest.raises(NotFound) as hidden:
            await image_lifecycle.create_image(ALICE, instance_id, "web", "", "", False, deps)
        assert hidden.value.reason == "INSTANCE_NOT_FOUND"
        answers.append(hidden_answer(hidden.value, instance_id))
    assert answers[0] == answers[1]
    assert journal(deps) == []


@pytest.mark.parametrize(("source", "reason"), [(TERMINATED, "INSTANCE_TERMINATED"), (PENDING, "INSTANCE_NOT_READY")])
async def test_an_image_is_made_only_from_a_settled_instance(deps: LifecycleDependencies, source: Instance,
                                                             reason: str) -> None:
    with pytest.raises(FailedPrecondition) as refused:
        await image_lifecycle.create_image(ALICE, source.instance_id, "web", "", "", False, deps)
    assert refused.value.reason == reason
    assert refused.value.violations[0].subject == f"instance:{source.instance_id}"
    assert journal(deps) == []


@pytest.mark.parametrize(("instance_id", "request_id", "reason"), [
    ("i-1", "", "INVALID_ID"), (RUNNING.instance_id, "r" * 65, "INVALID_REQUEST_ID")])
async def test_create_requests_are_checked_first(deps: LifecycleDependencies, instance_id: str, request_id: str,
                                                 reason: str) -> None:
    with pytest.raises(InvalidArgument) as refused:
        await image_lifecycle.create_image(ALICE, instance_id, "web", "", request_id, False, deps)
    assert refused.value.reason == reason
    assert journal(deps) == []


# ImportImage

IMPORT = image_pb.ImportImageRequest(
    region="ap-guangzhou", name="disk", format=image_pb.IMAGE_FORMAT_QCOW2, os_name="Debian 12",
    os_type=image_pb.OS_TYPE_LINUX, architecture=image_pb.ARCHITECTURE_ARM64,
    source_uri="file:///srv/imports/disk.qcow2")


async def test_an_import_is_passed_on_with_its_facts(deps: LifecycleDependencies) -> None:
    spec = convert.image_import(IMPORT)
    assert spec == ImageImport("ap-guangzhou", "disk", "", ImageFormat.QCOW2, "Debian 12", OsType.LINUX,
                               Architecture.ARM64, "file:///srv/imports/disk.qcow2")
    made = await image_lifecycle.import_image(spec, "r1", True, deps)
    assert made.state == "IMPORTING"
    assert journal(deps) == [("catalog.import", spec, "r1", True)]


@pytest.mark.parametrize("field", ["format", "os_type", "architecture"])
async def test_an_import_names_its_missing_enum_field(field: Literal["format", "os_type", "architecture"]) -> None:
    request = image_pb.ImportImageRequest()
    request.CopyFrom(IMPORT)
    request.ClearField(field)
    with pytest.raises(InvalidArgument) as refused:
        convert.image_import(request)
    assert [v.field for v in refused.value.violations] == [field]


@pytest.mark.parametrize(("region", "reason"), [("", "REGION_REQUIRED"), ("mars-1", "UNKNOWN_REGION")])
async def test_an_import_into_an_unknown_region_is_refused_before_the_catalog(deps: LifecycleDependencies, region: str,
                                                                              reason: str) -> None:
    spec = convert.image_import(image_pb.ImportImageRequest(**{**_fields(IMPORT), "region": region}))
    with pytest.raises(InvalidArgument) as refused:
        await image_lifecycle.import_image(spec, "", False, deps)
    assert refused.value.reason == reason
    assert journal(deps) == []


def _fields(message: Message) -> dict[str, Any]:
    return {f.name: v for f, v in message.ListFields()}


# UpdateImage

@pytest.mark.parametrize(("paths", "reason"), [
    ([], "UPDATE_MASK_REQUIRED"), (["name", "size_gb"], "INVALID_UPDATE_MASK"), (["*"], "INVALID_UPDATE_MASK"),
    (["image_id"], "INVALID_UPDATE_MASK")])
async def test_the_update_mask_names_only_name_and_description(deps: LifecycleDependencies, paths: list[str],
                                                               reason: str) -> None:
    with pytest.raises(InvalidArgument) as refused:
        await image_lifecycle.update_image(ALICE, ALICES.image_id, "new", "", paths, "", deps)
    assert refused.value.reason == reason
    assert [v.field for v in refused.value.violations] == ["update_mask"]
    assert journal(deps) == []


async def test_the_owner_renames_its_image_with_the_paths_it_names(deps: LifecycleDependencies) -> None:
    await image_lifecycle.update_image(ALICE, ALICES.image_id, "new", "desc", ["description", "name", "name"],
                                       "r1", deps)
    assert journal(deps)[-1] == ("catalog.update", ALICES.image_id, "new", "desc", ["description", "name"], "r1")


# Who may change an image: the same for every lifecycle call that changes one.

Change = Callable[[Caller, str, Dependencies], Awaitable[object]]


def change(name: str) -> Change:
    changes: dict[str, Change] = {
        "update": lambda c, i, d: image_lifecycle.update_image(c, i, "new", "", ["name"], "", d),
        "sync": lambda c, i, d: image_lifecycle.sync_image(c, i, ["ap-beijing"], "", False, d),
        "delete": lambda c, i, d: image_lifecycle.delete_image(c, i, "", d),
        "delete-with-request-id": lambda c, i, d: image_lifecycle.delete_image(c, i, "r-del", d),
    }
    return changes[name]


CHANGES = ["update", "sync", "delete", "delete-with-request-id"]


@pytest.mark.parametrize("name", CHANGES)
async def test_a_recipient_may_not_change_a_shared_image(deps: LifecycleDependencies, name: str) -> None:
    as_caller(BOB)
    with pytest.raises(PermissionDenied) as refused:
        await change(name)(BOB, SHARED_WITH_BOB.image_id, deps)
    assert refused.value.reason == "SHARED_IMAGE_READ_ONLY"
    assert calls(deps) == ["catalog.image", "sharing.verdict"]


@pytest.mark.parametrize("name", CHANGES)
async def test_nobody_changes_a_public_image(deps: LifecycleDependencies, name: str) -> None:
    with pytest.raises(PermissionDenied) as refused:
        await change(name)(ALICE, PUBLIC.image_id, deps)
    assert refused.value.reason == "NOT_IMAGE_OWNER"
    assert calls(deps) == ["catalog.image", "sharing.verdict"]


@pytest.mark.parametrize("name", CHANGES)
async def test_a_strangers_image_is_not_found_exactly_like_a_missing_one(deps: LifecycleDependencies,
                                                                         name: str) -> None:
    as_caller(BOB)
    seen: dict[str, tuple[list[str], bytes]] = {}
    for image_id in (CAROLS.image_id, MISSING):
        journal(deps).clear()
        with pytest.raises(NotFound) as hidden:
            await change(name)(BOB, image_id, deps)
        assert hidden.value.reason == "IMAGE_NOT_FOUND"
        seen[image_id] = (calls(deps), hidden_answer(hidden.value, image_id))
    assert seen[CAROLS.image_id] == seen[MISSING]
    assert CAROLS.image_id in deps.catalog.known


@pytest.mark.parametrize("name", ["update", "sync", "delete"])
async def test_a_malformed_image_id_is_refused_before_any_call(deps: LifecycleDependencies, name: str) -> None:
    with pytest.raises(InvalidArgument) as refused:
        await change(name)(ALICE, "img-NOPE", deps)
    assert refused.value.reason == "INVALID_ID"
    assert journal(deps) == []


# SyncImage

async def test_the_owner_syncs_and_gets_the_new_images(deps: LifecycleDependencies) -> None:
    copies = await image_lifecycle.sync_image(ALICE, ALICES.image_id, ["ap-beijing", "ap-shanghai"], "r1", True,
                                              deps)
    assert [c.state for c in copies] == ["SYNCING", "SYNCING"]
    assert journal(deps)[-1] == ("catalog.sync", ALICES.image_id, ["ap-beijing", "ap-shanghai"], "r1", True)


# DeleteImage: validate, retire, delete; restore only when the image certainly stayed.

DELETE_STEPS = [("catalog.image", ALICES.image_id), ("catalog.delete", ALICES.image_id, "", True),
                ("sharing.retire", ALICES.image_id), ("catalog.delete", ALICES.image_id, "r1", False)]


async def test_a_delete_validates_then_retires_then_deletes(deps: LifecycleDependencies) -> None:
    await image_lifecycle.delete_image(ALICE, ALICES.image_id, "r1", deps)
    assert journal(deps) == DELETE_STEPS
    assert ALICES.image_id not in deps.catalog.known


async def test_a_delete_the_catalog_refuses_at_once_touches_no_share(deps: LifecycleDependencies) -> None:
    deps.catalog.refuse["validate"] = busy = refusal("FAILED_PRECONDITION", "IMAGE_BUSY")
    with pytest.raises(RemoteError) as refused:
        await image_lifecycle.delete_image(ALICE, ALICES.image_id, "r1", deps)
    assert refused.value is busy
    assert journal(deps) == DELETE_STEPS[:2]


async def test_a_shared_image_is_not_deleted(deps: LifecycleDependencies) -> None:
    deps.sharing.refuse["retire"] = shared = refusal("FAILED_PRECONDITION", "IMAGE_SHARED")
    with pytest.raises(RemoteError) as refused:
        await image_lifecycle.delete_image(ALICE, ALICES.image_id, "r1", deps)
    assert refused.value is shared
    assert journal(deps) == DELETE_STEPS[:3]
    assert ALICES.image_id in deps.catalog.known


KEPT = [refusal("FAILED_PRECONDITION", "SYNC_RUNNING"),
        refusal("FAILED_PRECONDITION", "IDEMPOTENCY_PARAMETER_MISMATCH"),
        Unreached("DEPENDENCY_UNAVAILABLE", "the catalog service is unavailable; try again")]


@pytest.mark.parametrize("failure", KEPT, ids=["refused", "request-id-mismatch", "never-sent"])
async def test_a_delete_that_certainly_did_not_happen_releases_the_hold(deps: LifecycleDependencies,
                                                                        failure: DomainError) -> None:
    deps.catalog.refuse["delete"] = failure
    with pytest.raises(DomainError) as failed:
        await image_lifecycle.delete_image(ALICE, ALICES.image_id, "r1", deps)
    assert failed.value is failure
    assert journal(deps) == [*DELETE_STEPS, ("sharing.restore", ALICES.image_id)]


async def test_a_hold_that_cannot_be_released_leaves_the_caller_with_the_refusal(deps: LifecycleDependencies) -> None:
    deps.catalog.refuse["delete"] = failure = KEPT[0]
    deps.sharing.refuse["restore"] = Unavailable("DEPENDENCY_UNAVAILABLE", "down")
    with pytest.raises(RemoteError) as failed:
        await image_lifecycle.delete_image(ALICE, ALICES.image_id, "r1", deps)
    assert failed.value is failure
    assert calls(deps)[-1] == "sharing.restore"


UNKNOWN = [Unavailable("DEPENDENCY_UNAVAILABLE", "the catalog service is unavailable; try again"),
           DomainError("DEPENDENCY_FAILED", "the catalog service failed"),
           refusal("NOT_FOUND", "IMAGE_NOT_FOUND")]


@pytest.mark.parametrize("failure", UNKNOWN, ids=["unavailable", "failed", "deleted-meanwhile"])
async def test_a_delete_that_may_have_happened_keeps_the_hold(deps: LifecycleDependencies,
                                                              failure: DomainError) -> None:
    deps.catalog.refuse["delete"] = failure
    with pytest.raises(DomainError) as failed:
        await image_lifecycle.delete_image(ALICE, ALICES.image_id, "r1", deps)
    assert failed.value is failure
    assert journal(deps) == DELETE_STEPS


async def test_a_repeated_delete_of_a_deleted_image_succeeds_through_the_catalogs_ledger(
        deps: LifecycleDependencies) -> None:
    await image_lifecycle.delete_image(ALICE, ALICES.image_id, "r1", deps)
    journal(deps).clear()
    await image_lifecycle.delete_image(ALICE, ALICES.image_id, "r1", deps)
    assert journal(deps) == [("catalog.image", ALICES.image_id), ("sharing.verdict", ALICES.image_id),
                             ("catalog.delete", ALICES.image_id, "r1", False)]
    for request_id in ("", "r2"):  # another request finds the image gone
        with pytest.raises(NotFound) as gone:
            await image_lifecycle.delete_image(ALICE, ALICES.image_id, request_id, deps)
        assert gone.value.reason == "IMAGE_NOT_FOUND"
    assert "sharing.retire" not in calls(deps)


async def test_delete_requests_are_checked_first(deps: LifecycleDependencies) -> None:
    with pytest.raises(InvalidArgument) as refused:
        await image_lifecycle.delete_image(ALICE, ALICES.image_id, "caf\u00e9", deps)
    assert refused.value.reason == "INVALID_REQUEST_ID"
    assert journal(deps) == []


# GetImageQuota

async def test_the_quota_comes_from_the_catalog(deps: LifecycleDependencies) -> None:
    assert await image_lifecycle.get_image_quota("ap-guangzhou", deps) == ImageQuota("ap-guangzhou", 10, 3, 5, 1)
    assert journal(deps) == [("catalog.quota", "ap-guangzhou")]
    assert convert.image_quota(ImageQuota("ap-guangzhou", 10, 3, 5, 1)) == image_pb.GetImageQuotaResponse(
        region="ap-guangzhou", custom_image_limit=10, custom_image_used=3, daily_operation_limit=5,
        daily_operation_used=1)


@pytest.mark.parametrize(("region", "reason"), [("", "REGION_REQUIRED"), ("mars-1", "UNKNOWN_REGION")])
async def test_the_quota_of_an_unknown_region_is_refused(deps: LifecycleDependencies, region: str, reason: str) -> None:
    with pytest.raises(InvalidArgument) as refused:
        await image_lifecycle.get_image_quota(region, deps)
    assert refused.value.reason == reason
    assert journal(deps) == []


# The public Image carries the checksum and the reason of a failed job.

def test_the_public_image_carries_its_checksum_and_state_reason() -> None:
    failed = image("img-fail0001", CatalogKind.CUSTOM, ALICE.account_id, "IMPORT_FAILED", checksum_sha256="ab" * 32,
                   state_reason="FORMAT_MISMATCH: the bytes are raw, not qcow2")
    shown = convert.image(failed, ALICE)
    assert (shown.state, shown.checksum_sha256, shown.state_reason) == (
        image_pb.IMAGE_STATE_IMPORT_FAILED, "ab" * 32, "FORMAT_MISMATCH: the bytes are raw, not qcow2")


# The contexts: one RPC per call, translated into the internal contracts.

class RecordingDownstream:
    """Stands in for chassis.clients.Downstream: records each (method, request), answers from ``answers``."""

    def __init__(self, answers: dict[str, Any]):
        self.sent: list[tuple[str, Any]] = []
        self._answers = answers
        self.stub = self

    def __getattr__(self, method: str) -> str:
        return method

    async def call(self, method: str, request: Any) -> Any:
        self.sent.append((method, request))
        return self._answers[method]


CATALOG_IMAGE = catalog_pb.Image(
    image_id="img-new00001", region="ap-guangzhou", image_type=catalog_pb.IMAGE_TYPE_CUSTOM,
    state=catalog_pb.IMAGE_STATE_NORMAL, owner_account_id=ALICE.account_id, os_type=catalog_pb.OS_TYPE_LINUX,
    architecture=catalog_pb.ARCHITECTURE_ARM64, source=catalog_pb.IMAGE_SOURCE_IMPORT, checksum_sha256="cd" * 32,
    state_reason="")


async def test_the_catalog_client_translates_each_lifecycle_call() -> None:
    d = RecordingDownstream({
        "CreateImage": catalog_pb.CreateImageResponse(image=CATALOG_IMAGE),
        "ImportImage": catalog_pb.ImportImageResponse(image=CATALOG_IMAGE),
        "UpdateImage": catalog_pb.UpdateImageResponse(image=CATALOG_IMAGE),
        "DeleteImage": catalog_pb.DeleteImageResponse(),
        "SyncImage": catalog_pb.SyncImageResponse(images=[CATALOG_IMAGE, CATALOG_IMAGE]),
        "GetImageQuota": catalog_pb.GetImageQuotaResponse(custom_image_limit=10, custom_image_used=2,
                                                          daily_operation_limit=5, daily_operation_used=4),
    })
    catalog = Catalog(d)  # type: ignore[arg-type]
    made = await catalog.create_image(RUNNING, "web", "v1", "r1", True)
    assert made.checksum_sha256 == "cd" * 32
    assert made.architecture is Architecture.ARM64
    await catalog.import_image(convert.image_import(IMPORT), "r2", False)
    await catalog.update_image(ALICES.image_id, "new", "", ["name"], "r3")
    await catalog.delete_image(ALICES.image_id, "", validate_only=True)
    await catalog.delete_image(ALICES.image_id, "r4")
    assert len(await catalog.sync_image(ALICES.image_id, ["ap-beijing", "ap-shanghai"], "r5", False)) == 2
    assert await catalog.quota("ap-beijing") == ImageQuota("ap-beijing", 10, 2, 5, 4)
    assert d.sent == [
        ("CreateImage", catalog_pb.CreateImageRequest(
            region="ap-guangzhou", instance_id=RUNNING.instance_id, name="web", description="v1",
            base_image_id=PUBLIC.image_id, size_gb=60, architecture=catalog_pb.ARCHITECTURE_ARM64, request_id="r1",
            dry_run=True)),
        ("ImportImage", catalog_pb.ImportImageRequest(
            region="ap-guangzhou", name="disk", format=catalog_pb.IMAGE_FORMAT_QCOW2, os_name="Debian 12",
            os_type=catalog_pb.OS_TYPE_LINUX, architecture=catalog_pb.ARCHITECTURE_ARM64,
            source_uri="file:///srv/imports/disk.qcow2", request_id="r2")),
        ("UpdateImage", catalog_pb.UpdateImageRequest(image_id=ALICES.image_id, name="new", update_paths=["name"],
                                                      request_id="r3")),
        ("DeleteImage", catalog_pb.DeleteImageRequest(image_id=ALICES.image_id, validate_only=True)),
        ("DeleteImage", catalog_pb.DeleteImageRequest(image_id=ALICES.image_id, request_id="r4")),
        ("SyncImage", catalog_pb.SyncImageRequest(image_id=ALICES.image_id,
                                                  destination_regions=["ap-beijing", "ap-shanghai"], request_id="r5")),
        ("GetImageQuota", catalog_pb.GetImageQuotaRequest(region="ap-beijing")),
    ]


async def test_the_sharing_client_retires_and_restores_the_image_it_is_given() -> None:
    d = RecordingDownstream({"RetireImage": sharing_pb.RetireImageResponse(),
                             "RestoreImage": sharing_pb.RestoreImageResponse()})
    sharing = Sharing(d)  # type: ignore[arg-type]
    await sharing.retire(ALICES)
    await sharing.restore(ALICES)
    ref = sharing_pb.ImageRef(image_id=ALICES.image_id, region="ap-guangzhou", kind=sharing_pb.IMAGE_KIND_CUSTOM,
                              owner_account_id=ALICE.account_id, launchable_state=True)
    assert d.sent == [("RetireImage", sharing_pb.RetireImageRequest(image=ref)),
                      ("RestoreImage", sharing_pb.RestoreImageRequest(image=ref))]
