"""Fakes of the three contexts the gateway composes, implementing its ports (gateway.service_layer.dependencies)
with the semantics its handlers rely on; mypy checks that they do (pyproject.toml's files). And another gateway
replica's worker, to run the jobs the handlers leave."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Collection
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any, TypedDict

from sqlalchemy import func, or_, select

from chassis import context
from chassis.clock import FakeClock
from chassis.errors import DomainError, FailedPrecondition, InvalidArgument, NotFound, RemoteError
from chassis.jobs import JobQueue
from chassis.rpc import status_of
from chassis.server import Background
from gateway.adapters.tables import JOBS
from gateway.domain.instances import Instance, Launch, LaunchRequest, Reset
from gateway.domain.model import (
    Architecture,
    CatalogKind,
    Charge,
    ChargeFilter,
    ChargeKind,
    ChargeType,
    Image,
    ImageImport,
    ImageQuota,
    ImageShare,
    ImageSource,
    ImageState,
    InstanceType,
    OsType,
    Price,
    Quote,
    QuoteLine,
    QuoteLineKind,
    Region,
    ShareState,
    TrustPolicy,
    TrustPolicyMode,
    Verdict,
    VerdictBasis,
)
from gateway.service_layer import background
from gateway.service_layer.dependencies import BillingPort, CatalogPort, Dependencies, SharingPort

ALICE_ID, BOB_ID, CAROL_ID = "100000000001", "100000000002", "100000000003"
NOW = datetime(2026, 1, 1, tzinfo=UTC)
HOURLY = Decimal("0.058")
WINDOWS_LICENSE = Decimal("0.04")


def image(image_id: str, kind: CatalogKind, owner: str = "platform", state: ImageState = ImageState.NORMAL,
          os_type: OsType = OsType.LINUX, architecture: Architecture = Architecture.X86_64, size_gb: int = 20,
          **more: Any) -> Image:
    source = ImageSource.INSTANCE if kind is CatalogKind.CUSTOM else ImageSource.OFFICIAL
    return Image(image_id, "ap-guangzhou", kind, state, image_id, "", owner, "Ubuntu", "Ubuntu 22.04", os_type,
                 architecture, size_gb, source, "", 100, NOW, **more)


PUBLIC = image("img-public01", CatalogKind.PUBLIC)
WINDOWS = image("img-windows1", CatalogKind.PUBLIC, os_type=OsType.WINDOWS)
ARM = image("img-arm00001", CatalogKind.PUBLIC, architecture=Architecture.ARM64)
BIG = image("img-big00001", CatalogKind.PUBLIC, size_gb=200)
ALICES = image("img-alice001", CatalogKind.CUSTOM, ALICE_ID)


def refusal(code: str, reason: str) -> RemoteError:
    """What a context's client raises when the context refuses a call with a domain error."""
    error = FailedPrecondition(reason, f"refused: {reason}", subject="x")
    return RemoteError(code, reason, error.message, status_of(error).SerializeToString())


def _caller() -> str:
    return context.caller().account_id


class FakeCatalog(CatalogPort):
    def __init__(self) -> None:
        self.known = {i.image_id: i for i in (PUBLIC, WINDOWS, ARM, BIG, ALICES)}
        self.listed: list[tuple[frozenset[CatalogKind], tuple[str, ...]]] = []
        self.calls: list[str] = []

    async def regions(self) -> list[Region]:
        return [Region("ap-guangzhou", "Guangzhou", True, True), Region("ap-singapore", "Singapore", False, False)]

    async def image(self, image_id: str, region: str = "") -> Image:
        self.calls.append("image")
        return self.known.get(image_id) or Image.missing(image_id, region)

    async def images(self, region: str, kinds: set[CatalogKind], shared_image_ids: list[str], platform: str,
                     name_filter: str, page_size: int, page_token: str) -> tuple[list[Image], str]:
        self.calls.append("images")
        self.listed.append((frozenset(kinds), tuple(shared_image_ids)))
        found = [i for i in self.known.values()
                 if (i.kind in kinds and (i.kind is not CatalogKind.CUSTOM or i.owner_account_id == _caller()))
                 or i.image_id in shared_image_ids]
        return sorted(found, key=lambda i: i.image_id)[:page_size or 50], ""

    async def create_image(self, instance: Instance, name: str, description: str, request_id: str,
                           dry_run: bool) -> Image:
        made = replace(image("img-made0001", CatalogKind.CUSTOM, instance.account_id, ImageState.CREATING),
                       base_image_id=instance.image_id)
        if not dry_run:
            self.known[made.image_id] = made
        return made

    async def import_image(self, spec: ImageImport, request_id: str, dry_run: bool) -> Image:
        return image("img-import01", CatalogKind.CUSTOM, _caller(), ImageState.IMPORTING)

    async def update_image(self, image_id: str, name: str, description: str, paths: list[str],
                           request_id: str) -> Image:
        return replace(self.known[image_id], name=name)

    async def delete_image(self, image_id: str, request_id: str, validate_only: bool = False) -> None:
        if not validate_only:
            self.known.pop(image_id, None)

    async def sync_image(self, image_id: str, destination_regions: list[str], request_id: str,
                         dry_run: bool) -> list[Image]:
        return []

    async def quota(self, region: str) -> ImageQuota:
        return ImageQuota(region, 10, 0, 5, 0)


class FakeSharing(SharingPort):
    """Shares with their states, and trust policies applied as sharing applies them."""

    def __init__(self) -> None:
        self.shared: dict[tuple[str, str], ShareState] = {}
        self.policies: dict[str, TrustPolicy] = {}
        self.calls: list[str] = []
        self.down: DomainError | None = None

    def _verdict(self, img: Image) -> Verdict:
        caller = _caller()
        if img.kind is CatalogKind.CUSTOM and img.owner_account_id == caller:
            return Verdict(True, True, VerdictBasis.OWNER)
        policy = self.policies.get(caller, TrustPolicy())
        state = self.shared.get((img.image_id, caller)) if img.kind is CatalogKind.CUSTOM else None
        if img.kind is CatalogKind.CUSTOM and state is None:
            return Verdict(False, False, VerdictBasis.NONE, policy_mode=policy.mode or TrustPolicyMode.OFF)
        if img.kind is CatalogKind.PUBLIC:
            basis, listed, rule = VerdictBasis.PUBLIC, policy.allow_platform_images, "platform images are not allowed"
        elif img.kind is CatalogKind.MARKET:
            basis, listed = VerdictBasis.MARKETPLACE, img.marketplace_provider in policy.allowed_marketplace_providers
            rule = f"marketplace provider {img.marketplace_provider!r} is not on allowed_marketplace_providers"
        else:
            basis = {ShareState.PENDING: VerdictBasis.SHARE_PENDING, ShareState.REJECTED: VerdictBasis.SHARE_REJECTED,
                     ShareState.ACCEPTED: VerdictBasis.SHARED}[state or ShareState.ACCEPTED]
            listed = img.owner_account_id in policy.allowed_account_ids
            rule = f"images of account {img.owner_account_id} are not on allowed_account_ids"
        mode = policy.mode or TrustPolicyMode.OFF
        image_allowed = mode is TrustPolicyMode.OFF or listed
        allowed = state in (None, ShareState.ACCEPTED) and (image_allowed or mode is TrustPolicyMode.AUDIT)
        return Verdict(True, allowed, basis, state, image_allowed, mode, "" if image_allowed else rule)

    async def verdict(self, image: Image) -> Verdict:
        self.calls.append("verdict")
        if self.down:
            raise self.down
        return self._verdict(image)

    async def verdicts(self, images: list[Image]) -> list[Verdict]:
        self.calls.append("verdicts")
        return [self._verdict(i) for i in images]

    async def share(self, image: Image, account_ids: list[str], request_id: str) -> list[ImageShare]:
        self.calls.append("share")
        for account in account_ids:
            trusted = image.owner_account_id in self.policies.get(account, TrustPolicy()).trusted_account_ids
            self.shared.setdefault((image.image_id, account), ShareState.ACCEPTED if trusted else ShareState.PENDING)
        return await self._shares(image)

    async def _shares(self, image: Image) -> list[ImageShare]:
        return [ImageShare(image.image_id, image.region, image.owner_account_id, who, state, NOW)
                for (image_id, who), state in sorted(self.shared.items()) if image_id == image.image_id]

    async def unshare(self, image: Image, account_ids: list[str], request_id: str) -> list[ImageShare]:
        self.calls.append("unshare")
        for account in account_ids:
            self.shared.pop((image.image_id, account), None)
        return await self._shares(image)

    async def shares_of(self, image: Image, page_size: int, page_token: str) -> tuple[list[ImageShare], str]:
        return await self._shares(image), ""

    async def retire(self, image: Image) -> None:
        self.calls.append("retire")

    async def restore(self, image: Image) -> None:
        self.calls.append("restore")

    async def received(self, region: str, states: Collection[ShareState]) -> dict[str, ShareState]:
        self.calls.append("received")
        return {image_id: state for (image_id, who), state in self.shared.items()
                if who == _caller() and state in states}

    def _move(self, image_id: str, state: ShareState) -> ImageShare:
        key = (image_id, _caller())
        if key not in self.shared:
            raise refusal("NOT_FOUND", "SHARE_NOT_FOUND")
        self.shared[key] = state
        return ImageShare(image_id, "ap-guangzhou", ALICE_ID, _caller(), state, NOW)

    async def accept(self, image_id: str, request_id: str) -> ImageShare:
        self.calls.append("accept")
        return self._move(image_id, ShareState.ACCEPTED)

    async def reject(self, image_id: str, request_id: str) -> ImageShare:
        self.calls.append("reject")
        return self._move(image_id, ShareState.REJECTED)

    async def trust_policy(self) -> TrustPolicy:
        return self.policies.get(_caller(), TrustPolicy())

    async def update_trust_policy(self, policy: TrustPolicy, paths: list[str], request_id: str) -> TrustPolicy:
        self.calls.append("update_trust_policy")
        if "mode" in paths and policy.mode is None:
            raise refusal("INVALID_ARGUMENT", "MODE_REQUIRED")
        current = self.policies.get(_caller(), TrustPolicy())
        changed = replace(current, **{path: getattr(policy, path) for path in paths}, update_time=NOW)
        self.policies[_caller()] = changed
        return changed


class FakeBilling(BillingPort):
    """Billing's ledger semantics: a charge per launch id, resolution, void ids refused for good; reset charges
    per reset id; ended usage.

    ``refuse``: CreateCharge fails before it writes; ``lose``: it writes, then the answer is lost; ``down``:
    every call fails (also ResolveCharge)."""

    def __init__(self) -> None:
        self.charged: dict[str, Launch] = {}
        self.voided: set[str] = set()
        self.resets: dict[str, Reset] = {}
        self.ended: list[tuple[tuple[str, ...], datetime]] = []
        self.refuse: Exception | None = None
        self.lose: Exception | None = None
        self.down: Exception | None = None
        # ChargeReset alone fails before it records anything (a reset priced a moment before, then billing went).
        self.reset_down: Exception | None = None
        self.calls: list[str] = []

    async def instance_types(self) -> list[InstanceType]:
        regions = frozenset({"ap-guangzhou", "ap-singapore"})
        return [InstanceType("S5.MEDIUM4", "S5", Architecture.X86_64, 2, 4, regions),
                InstanceType("SR1.MEDIUM4", "SR1", Architecture.ARM64, 2, 4, regions)]

    def _quote(self, count: int, os_type: OsType = OsType.LINUX,
               charge_type: ChargeType = ChargeType.POSTPAID_BY_HOUR) -> Quote:
        lines = [QuoteLine(QuoteLineKind.INSTANCE, "S5.MEDIUM4", HOURLY, count, "instance-hour", HOURLY * count)]
        if os_type is OsType.WINDOWS:
            lines.append(QuoteLine(QuoteLineKind.IMAGE_LICENSE, "Windows", WINDOWS_LICENSE, count, "instance-hour",
                                   WINDOWS_LICENSE * count))
        return Quote("USD", charge_type, tuple(lines), sum((line.amount for line in lines), Decimal(0)))

    def _failing(self, call: str) -> None:
        self.calls.append(call)
        failure = self.refuse or self.down
        if failure is not None:
            raise failure

    async def quote(self, request: LaunchRequest, image: Image) -> Quote:
        self._failing("quote")
        return self._quote(request.instance_count, image.os_type)

    async def charge(self, launch: Launch) -> tuple[str, Quote]:
        self._failing("charge")
        if launch.launch_id in self.voided:
            raise refusal("FAILED_PRECONDITION", "LAUNCH_VOIDED")
        self.charged.setdefault(launch.launch_id, launch)
        if self.lose:
            raise self.lose
        return f"chg-{launch.launch_id[4:]}", self._quote(launch.request.instance_count, launch.image_os_type)

    async def resolve(self, launch: Launch) -> tuple[str, Quote] | None:
        self.calls.append("resolve")
        if self.down:
            raise self.down
        if launch.launch_id not in self.charged:
            self.voided.add(launch.launch_id)
            return None
        return f"chg-{launch.launch_id[4:]}", self._quote(launch.request.instance_count, launch.image_os_type)

    async def quote_reset(self, reset: Reset) -> Quote:
        self._failing("quote_reset")
        return self._quote(1, reset.image_os_type, reset.charge_type)

    async def charge_reset(self, reset: Reset) -> Quote:
        self._failing("charge_reset")
        if self.reset_down is not None:
            raise self.reset_down
        first = self.resets.setdefault(reset.reset_id, reset)
        if first != reset:
            raise refusal("FAILED_PRECONDITION", "IDEMPOTENCY_PARAMETER_MISMATCH")
        if self.lose:
            raise self.lose
        return self._quote(1, reset.image_os_type, reset.charge_type)

    async def end_usage(self, instance_ids: list[str], end_time: datetime) -> None:
        self._failing("end_usage")
        self.ended.append((tuple(instance_ids), end_time))

    async def charges(self, filters: ChargeFilter, page_size: int, page_token: str) -> tuple[list[Charge], str]:
        self.calls.append("charges")
        found = [Charge(f"chg-{launch_id[4:]}", launch.request.region, self._quote(len(launch.instance_ids)),
                        tuple(launch.instance_ids), launch.create_time, ChargeKind.LAUNCH)
                 for launch_id, launch in self.charged.items()
                 if not filters.instance_id or filters.instance_id in launch.instance_ids]
        return found, ""

    async def prices(self, region: str, charge_type: ChargeType | None, instance_type: str, page_size: int,
                     page_token: str) -> tuple[list[Price], str]:
        self.calls.append("prices")
        if instance_type and instance_type != "S5.MEDIUM4":
            raise InvalidArgument("INSTANCE_TYPE_NOT_OFFERED", "no", field="instance_type")
        return [Price(region or "ap-guangzhou", QuoteLineKind.INSTANCE, "S5.MEDIUM4",
                      charge_type or ChargeType.POSTPAID_BY_HOUR, "USD", HOURLY, "instance-hour", "S5.MEDIUM4")], ""


@dataclass
class FakeDependencies(Dependencies):
    """The gateway's dependencies on these fakes and a FakeClock, typed as such: a test reaches into them (what
    they were asked, what they hold, what they are to fail with) and moves the time."""

    catalog: FakeCatalog
    sharing: FakeSharing
    billing: FakeBilling
    clock: FakeClock


class LaunchChanges(TypedDict, total=False):
    """The fields of a LaunchRequest, as keyword arguments: what a test changes of its usual request."""

    region: str
    image_id: str
    instance_type: str
    instance_count: int
    charge_type: ChargeType
    period_months: int
    system_disk_gb: int
    instance_name: str
    client_token: str


def not_found() -> NotFound:
    return NotFound("IMAGE_NOT_FOUND", "no", resource_type="image", resource_name="x")


def other_replica(deps: Dependencies) -> JobQueue:
    """The gateway's jobs as another replica (another owner) sees them."""
    return JobQueue(deps.new_uow.args[0], JOBS, deps.clock, "gateway-replica-b")  # type: ignore[attr-defined]


async def run_another_replica(deps: Dependencies) -> None:
    """Runs another replica's job worker until it has nothing due and nothing running (time stands still
    meanwhile, so a job that failed waits for its retry)."""
    replica = other_replica(deps)
    c = JOBS.c

    def busy() -> int:
        with deps.new_uow(read_only=True) as uow:
            return int(uow.connection.execute(select(func.count()).select_from(JOBS).where(
                c.state == "PENDING",
                or_(c.lease_until.is_(None), c.lease_until <= deps.clock.now(), c.lease_owner == replica.owner),
            )).scalar_one())

    worker = Background([background.operations_worker(deps, replica, timedelta(seconds=5), poll_seconds=0.01)])
    try:
        deadline = time.monotonic() + 5
        while busy():
            assert time.monotonic() < deadline, "the worker never finished"
            await asyncio.sleep(0.01)
    finally:
        await worker.drain(1)
