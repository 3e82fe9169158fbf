"""The three contexts the gateway composes, behind one long-lived channel each.

Each method makes at most one RPC and translates between the context's contract and the gateway's
domain, so that handlers see neither protobuf nor gRPC. Two answers are kept instead of asked for again:
official images and quotes, which never change, and launch verdicts that sharing leased.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Collection
from datetime import datetime

from cloudimg.billing.v1 import billing_service_pb2 as billing_pb
from cloudimg.billing.v1 import billing_service_pb2_grpc as billing_grpc
from cloudimg.catalog.v1 import catalog_service_pb2 as catalog_pb
from cloudimg.catalog.v1 import catalog_service_pb2_grpc as catalog_grpc
from cloudimg.sharing.v1 import sharing_service_pb2 as sharing_pb
from cloudimg.sharing.v1 import sharing_service_pb2_grpc as sharing_grpc
from prometheus_client import Counter

from chassis import context
from chassis.clients import Downstream
from chassis.convert import EnumMap, decimal_of, optional_time, timestamp
from chassis.errors import RemoteError
from gateway.domain.instances import Instance, Launch, LaunchRequest, Reset
from gateway.domain.model import (
    Architecture,
    CatalogKind,
    Charge,
    ChargeFilter,
    ChargeKind,
    ChargeType,
    Image,
    ImageFormat,
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

_KINDS = EnumMap(catalog_pb.ImageType, "IMAGE_TYPE", CatalogKind)
_IMAGE_STATES = EnumMap(catalog_pb.ImageState, "IMAGE_STATE", ImageState)
_SOURCES = EnumMap(catalog_pb.ImageSource, "IMAGE_SOURCE", ImageSource)
_ARCHITECTURES = EnumMap(catalog_pb.Architecture, "ARCHITECTURE", Architecture)
_OS_TYPES = EnumMap(catalog_pb.OsType, "OS_TYPE", OsType)
_FORMATS = EnumMap(catalog_pb.ImageFormat, "IMAGE_FORMAT", ImageFormat)
_SHARE_KINDS = EnumMap(sharing_pb.ImageKind, "IMAGE_KIND", CatalogKind)
_SHARE_STATES = EnumMap(sharing_pb.ShareState, "SHARE_STATE", ShareState)
_BASES = EnumMap(sharing_pb.LaunchBasis, "LAUNCH_BASIS", VerdictBasis)
_MODES = EnumMap(sharing_pb.TrustPolicyMode, "TRUST_POLICY_MODE", TrustPolicyMode)
_CPU = EnumMap(billing_pb.CpuArchitecture, "CPU_ARCHITECTURE", Architecture)
_CHARGE_TYPES = EnumMap(billing_pb.ChargeType, "CHARGE_TYPE", ChargeType)
_OS_KINDS = EnumMap(billing_pb.OsKind, "OS_KIND", OsType)
_LINE_KINDS = EnumMap(billing_pb.LineKind, "LINE_KIND", QuoteLineKind)
_CHARGE_KINDS = EnumMap(billing_pb.ChargeKind, "CHARGE_KIND", ChargeKind)


def _image(p: catalog_pb.Image) -> Image:
    return Image(
        image_id=p.image_id, region=p.region, kind=_KINDS.from_proto(p.image_type, "image_type"),
        state=_IMAGE_STATES.from_proto(p.state, "state"), name=p.name,
        description=p.description, owner_account_id=p.owner_account_id, platform=p.platform, os_name=p.os_name,
        os_type=_OS_TYPES.from_proto(p.os_type, "os_type"),
        architecture=_ARCHITECTURES.from_proto(p.architecture, "architecture"), size_gb=p.size_gb,
        source=_SOURCES.from_proto(p.source, "source"), base_image_id=p.base_image_id,
        progress_percent=p.progress_percent, create_time=p.create_time.ToDatetime(),
        marketplace_product_id=p.marketplace_product_id, marketplace_provider=p.marketplace_provider,
        checksum_sha256=p.checksum_sha256, state_reason=p.state_reason,
    )


def _image_ref(image: Image) -> sharing_pb.ImageRef:
    return sharing_pb.ImageRef(
        image_id=image.image_id, region=image.region, kind=_SHARE_KINDS.to_proto(image.kind),
        owner_account_id=image.owner_account_id, marketplace_provider=image.marketplace_provider,
        launchable_state=image.state is ImageState.NORMAL,
    )


def _share(p: sharing_pb.Share) -> ImageShare:
    return ImageShare(p.image_id, p.region, p.owner_account_id, p.recipient_account_id,
                      _SHARE_STATES.from_proto(p.state, "state"), p.create_time.ToDatetime())


def _verdict(r: sharing_pb.CheckLaunchPermissionResponse) -> Verdict:
    share_state = _SHARE_STATES.from_proto(r.share_state, "share_state") if r.share_state else None
    return Verdict(r.visible, r.allowed, _BASES.from_proto(r.basis, "basis"), share_state, r.image_allowed,
                   _MODES.from_proto(r.policy_mode, "policy_mode", TrustPolicyMode.OFF), r.policy_rule)


def _trust_policy(p: sharing_pb.TrustPolicy) -> TrustPolicy:
    return TrustPolicy(
        trusted_account_ids=tuple(p.trusted_account_ids),
        mode=_MODES.from_proto(p.mode, "mode", TrustPolicyMode.OFF),
        allow_platform_images=p.allow_platform_images,
        allowed_marketplace_providers=tuple(p.allowed_marketplace_providers),
        allowed_account_ids=tuple(p.allowed_account_ids),
        update_time=optional_time(p, "update_time"),
    )


def _quote(p: billing_pb.Quote) -> Quote:
    """Billing's price; the caller's trust policy verdict (image_allowed) is the gateway's to add."""
    lines = tuple(
        QuoteLine(_LINE_KINDS.from_proto(l.kind, "kind"), l.description, decimal_of(l.unit_price), l.quantity, l.unit,
                  decimal_of(l.amount))
        for l in p.lines
    )
    return Quote(p.currency_code, _CHARGE_TYPES.from_proto(p.charge_type, "charge_type"), lines, decimal_of(p.total))


def _charge(c: billing_pb.Charge) -> Charge:
    return Charge(c.charge_id, c.region, _quote(c.quote), tuple(c.instance_ids), c.create_time.ToDatetime(),
                  _CHARGE_KINDS.from_proto(c.kind, "kind", ChargeKind.LAUNCH),
                  optional_time(c, "usage_start_time"), optional_time(c, "usage_end_time"))


def _pricing(region: str, instance_type: str, count: int, charge_type: ChargeType, period_months: int,
             image_id: str, os_type: OsType, marketplace_product_id: str) -> billing_pb.LaunchPricing:
    return billing_pb.LaunchPricing(
        region=region, instance_type=instance_type, instance_count=count,
        charge_type=_CHARGE_TYPES.to_proto(charge_type), period_months=period_months,
        image=billing_pb.ImagePricing(image_id=image_id, os_kind=_OS_KINDS.to_proto(os_type),
                                      marketplace_product_id=marketplace_product_id),
    )


def _launch_pricing(request: LaunchRequest, os_type: OsType, marketplace_product_id: str
                    ) -> billing_pb.LaunchPricing:
    return _pricing(request.region, request.instance_type, request.instance_count, request.charge_type,
                    request.period_months, request.image_id, os_type, marketplace_product_id)


def _reset_pricing(reset: Reset) -> billing_pb.ResetPricing:
    return billing_pb.ResetPricing(
        instance_id=reset.instance_id,
        launch=_pricing(reset.region, reset.instance_type, 1, reset.charge_type, reset.period_months, reset.image_id,
                        reset.image_os_type, reset.marketplace_product_id),
        launch_time=timestamp(reset.launch_time), effective_time=timestamp(reset.effective_time),
    )


# Official images (public and marketplace) never change once the catalog has them: it has no call that updates,
# syncs or deletes one (tests/integration/test_catalog.py holds it to that). So the gateway keeps each it has
# read, up to this many, and asks again only for custom images (which change) and for ids it does not know.
MAX_OFFICIAL_IMAGES = 10_000


class Catalog:
    def __init__(self, downstream: Downstream):
        self._d = downstream
        self._stub: catalog_grpc.CatalogServiceStub = downstream.stub
        self._official: dict[str, Image] = {}

    def _remember(self, image: Image) -> Image:
        if image.kind is not CatalogKind.CUSTOM and image.exists and len(self._official) < MAX_OFFICIAL_IMAGES:
            self._official[image.image_id] = image
        return image

    async def regions(self) -> list[Region]:
        response = await self._d.call(self._stub.ListRegions, catalog_pb.ListRegionsRequest())
        return [Region(r.region_id, r.display_name, r.mainland, r.sync_enabled) for r in response.regions]

    async def image(self, image_id: str, region: str = "") -> Image:
        """The image, or its stand-in (``Image.missing``) when the catalog has no such image. An official
        image read before is not asked for again (see MAX_OFFICIAL_IMAGES)."""
        known = self._official.get(image_id)
        if known is not None:
            return known
        try:
            response = await self._d.call(self._stub.GetImage, catalog_pb.GetImageRequest(image_id=image_id))
        except RemoteError as exc:
            if exc.code == "NOT_FOUND":
                return Image.missing(image_id, region)
            raise
        return self._remember(_image(response.image))

    async def images(self, region: str, kinds: set[CatalogKind], shared_image_ids: list[str], platform: str,
                     name_filter: str, page_size: int, page_token: str) -> tuple[list[Image], str]:
        response = await self._d.call(self._stub.ListImages, catalog_pb.ListImagesRequest(
            region=region, image_types=[_KINDS.to_proto(k) for k in sorted(kinds)],
            shared_image_ids=shared_image_ids, platform=platform, name_filter=name_filter,
            page_size=page_size, page_token=page_token,
        ))
        return [self._remember(_image(i)) for i in response.images], response.next_page_token

    async def create_image(self, instance: Instance, name: str, description: str, request_id: str,
                           dry_run: bool) -> Image:
        """An image of the instance's system disk; the catalog takes the os and pricing facts from the
        instance's own image (its base)."""
        response = await self._d.call(self._stub.CreateImage, catalog_pb.CreateImageRequest(
            region=instance.region, instance_id=instance.instance_id, name=name, description=description,
            base_image_id=instance.image_id, size_gb=instance.system_disk_gb,
            architecture=_ARCHITECTURES.to_proto(instance.architecture), request_id=request_id, dry_run=dry_run,
        ))
        return _image(response.image)

    async def import_image(self, spec: ImageImport, request_id: str, dry_run: bool) -> Image:
        response = await self._d.call(self._stub.ImportImage, catalog_pb.ImportImageRequest(
            region=spec.region, name=spec.name, description=spec.description, format=_FORMATS.to_proto(spec.format),
            os_name=spec.os_name, os_type=_OS_TYPES.to_proto(spec.os_type),
            architecture=_ARCHITECTURES.to_proto(spec.architecture), source_uri=spec.source_uri,
            request_id=request_id, dry_run=dry_run,
        ))
        return _image(response.image)

    async def update_image(self, image_id: str, name: str, description: str, paths: list[str],
                           request_id: str) -> Image:
        response = await self._d.call(self._stub.UpdateImage, catalog_pb.UpdateImageRequest(
            image_id=image_id, name=name, description=description, update_paths=paths, request_id=request_id))
        return _image(response.image)

    async def delete_image(self, image_id: str, request_id: str, validate_only: bool = False) -> None:
        """Deletes the image; with ``validate_only``, only asks whether it could be deleted now."""
        await self._d.call(self._stub.DeleteImage, catalog_pb.DeleteImageRequest(
            image_id=image_id, request_id=request_id, validate_only=validate_only))

    async def sync_image(self, image_id: str, destination_regions: list[str], request_id: str,
                         dry_run: bool) -> list[Image]:
        response = await self._d.call(self._stub.SyncImage, catalog_pb.SyncImageRequest(
            image_id=image_id, destination_regions=destination_regions, request_id=request_id, dry_run=dry_run))
        return [_image(i) for i in response.images]

    async def quota(self, region: str) -> ImageQuota:
        r = await self._d.call(self._stub.GetImageQuota, catalog_pb.GetImageQuotaRequest(region=region))
        return ImageQuota(region, r.custom_image_limit, r.custom_image_used, r.daily_operation_limit,
                          r.daily_operation_used)


# Launch verdicts sharing leased (a public or marketplace image's, by caller), kept up to this many at once.
MAX_LEASED_VERDICTS = 10_000
VERDICTS = Counter("cloudimg_launch_verdicts_total", "Launch verdicts of single images (GetImage, quotes, launches) "
                   "by where the answer came from: a lease sharing granted (leased) or a call (asked).", ("answer",))
_LEASED, _ASKED = VERDICTS.labels("leased"), VERDICTS.labels("asked")
QUOTES_KEPT = Counter("cloudimg_quotes_kept_total", "Quotes the gateway answered with one billing gave it before.")
_VerdictKey = tuple[str, str, str, CatalogKind, str, str, ImageState]


class Sharing:
    def __init__(self, downstream: Downstream, monotonic: Callable[[], float] = time.monotonic):
        self._d = downstream
        self._stub: sharing_grpc.SharingServiceStub = downstream.stub
        self._now = monotonic
        # (caller, image) -> (verdict, when its lease runs out on the monotonic clock)
        self._leased: dict[_VerdictKey, tuple[Verdict, float]] = {}

    async def verdict(self, image: Image) -> Verdict:
        """The caller's verdict on the image: a leased one while its lease lasts (sharing's UpdateTrustPolicy waits
        every lease out before it answers, so none outlives the policy it was read from), else sharing's answer."""
        caller = context.current_caller.get()
        key: _VerdictKey | None = None if caller is None else (
            caller.account_id, image.image_id, image.region, image.kind, image.owner_account_id,
            image.marketplace_provider, image.state)
        if key is not None and (held := self._leased.get(key)) is not None:
            if held[1] > self._now():
                _LEASED.inc()
                return held[0]
            del self._leased[key]
        sent = self._now()  # a lease counts from the request's sending: no later than sharing's read of the policy
        response = await self._d.call(self._stub.CheckLaunchPermission,
                                      sharing_pb.CheckLaunchPermissionRequest(image=_image_ref(image)))
        _ASKED.inc()
        found = _verdict(response)
        if key is not None and response.HasField("lease"):
            self._hold(key, found, sent + response.lease.seconds + response.lease.nanos / 1e9)
        return found

    def _hold(self, key: _VerdictKey, found: Verdict, until: float) -> None:
        if len(self._leased) >= MAX_LEASED_VERDICTS:
            now = self._now()
            self._leased = {k: v for k, v in self._leased.items() if v[1] > now}
            if len(self._leased) >= MAX_LEASED_VERDICTS:
                self._leased.clear()
        self._leased[key] = (found, until)

    async def verdicts(self, images: list[Image]) -> list[Verdict]:
        if not images:
            return []
        r = await self._d.call(self._stub.CheckLaunchPermissions, sharing_pb.CheckLaunchPermissionsRequest(
            images=[_image_ref(i) for i in images]))
        return [_verdict(v) for v in r.verdicts]

    async def share(self, image: Image, account_ids: list[str], request_id: str) -> list[ImageShare]:
        r = await self._d.call(self._stub.ShareImage, sharing_pb.ShareImageRequest(
            image=_image_ref(image), account_ids=account_ids, request_id=request_id))
        return [_share(s) for s in r.shares]

    async def unshare(self, image: Image, account_ids: list[str], request_id: str) -> list[ImageShare]:
        r = await self._d.call(self._stub.UnshareImage, sharing_pb.UnshareImageRequest(
            image=_image_ref(image), account_ids=account_ids, request_id=request_id))
        return [_share(s) for s in r.shares]

    async def shares_of(self, image: Image, page_size: int, page_token: str) -> tuple[list[ImageShare], str]:
        r = await self._d.call(self._stub.ListImageShares, sharing_pb.ListImageSharesRequest(
            image=_image_ref(image), page_size=page_size, page_token=page_token))
        return [_share(s) for s in r.shares], r.next_page_token

    async def retire(self, image: Image) -> None:
        """Holds the image for deletion: refused while it has shares, and no share is made during the hold."""
        await self._d.call(self._stub.RetireImage, sharing_pb.RetireImageRequest(image=_image_ref(image)))

    async def restore(self, image: Image) -> None:
        """Ends the hold of ``retire`` when the image was not deleted after all."""
        await self._d.call(self._stub.RestoreImage, sharing_pb.RestoreImageRequest(image=_image_ref(image)))

    async def received(self, region: str, states: Collection[ShareState]) -> dict[str, ShareState]:
        """The images shared with the caller in a region in these states (the first 1000), and the state of each."""
        r = await self._d.call(self._stub.ListReceivedShares, sharing_pb.ListReceivedSharesRequest(
            region=region, page_size=1000, states=[_SHARE_STATES.to_proto(s) for s in sorted(states)]))
        return {s.image_id: _SHARE_STATES.from_proto(s.state, "state") for s in r.shares}

    async def accept(self, image_id: str, request_id: str) -> ImageShare:
        r = await self._d.call(self._stub.AcceptImageShare, sharing_pb.AcceptImageShareRequest(
            image_id=image_id, request_id=request_id))
        return _share(r.share)

    async def reject(self, image_id: str, request_id: str) -> ImageShare:
        r = await self._d.call(self._stub.RejectImageShare, sharing_pb.RejectImageShareRequest(
            image_id=image_id, request_id=request_id))
        return _share(r.share)

    async def trust_policy(self) -> TrustPolicy:
        r = await self._d.call(self._stub.GetTrustPolicy, sharing_pb.GetTrustPolicyRequest())
        return _trust_policy(r.policy)

    async def update_trust_policy(self, policy: TrustPolicy, paths: list[str], request_id: str) -> TrustPolicy:
        r = await self._d.call(self._stub.UpdateTrustPolicy, sharing_pb.UpdateTrustPolicyRequest(
            policy=sharing_pb.TrustPolicy(
                trusted_account_ids=policy.trusted_account_ids, mode=_MODES.to_proto(policy.mode),
                allow_platform_images=policy.allow_platform_images,
                allowed_marketplace_providers=policy.allowed_marketplace_providers,
                allowed_account_ids=policy.allowed_account_ids,
            ),
            update_paths=paths, request_id=request_id))
        return _trust_policy(r.policy)


# A quote is a function of what it prices and of billing's price book, which billing reads when it starts and which
# no call changes (like the instance types, see ReferenceData). So the gateway keeps each quote it got, up to this
# many, and a price book changed by a deploy reaches quotes when the gateways restart too (charges are priced by
# billing itself, always with its own book).
MAX_QUOTES = 1_000


class Billing:
    def __init__(self, downstream: Downstream):
        self._d = downstream
        self._stub: billing_grpc.BillingServiceStub = downstream.stub
        self._quotes: dict[bytes, Quote] = {}

    async def instance_types(self) -> list[InstanceType]:
        r = await self._d.call(self._stub.ListInstanceTypes, billing_pb.ListInstanceTypesRequest())
        return [InstanceType(t.instance_type, t.family, _CPU.from_proto(t.architecture, "architecture"), t.vcpus,
                             t.memory_gb, frozenset(t.regions)) for t in r.instance_types]

    async def quote(self, request: LaunchRequest, image: Image) -> Quote:
        """Billing's price of the launch; one it gave before is not asked for again (see MAX_QUOTES)."""
        pricing = _launch_pricing(request, image.os_type, image.marketplace_product_id)
        key = pricing.SerializeToString(deterministic=True)
        known = self._quotes.get(key)
        if known is not None:
            QUOTES_KEPT.inc()
            return known
        r = await self._d.call(self._stub.Quote, billing_pb.QuoteRequest(launch=pricing))
        found = _quote(r.quote)
        if len(self._quotes) >= MAX_QUOTES:
            self._quotes.clear()
        self._quotes[key] = found
        return found

    async def charge(self, launch: Launch) -> tuple[str, Quote]:
        """Charges a launch once: a retry with the same launch returns the first charge."""
        r = await self._d.call(self._stub.CreateCharge, billing_pb.CreateChargeRequest(
            launch=_launch_pricing(launch.request, launch.image_os_type, launch.marketplace_product_id),
            idempotency_key=launch.launch_id, instance_ids=launch.instance_ids,
        ))
        return r.charge.charge_id, _quote(r.charge.quote)

    async def resolve(self, launch: Launch) -> tuple[str, Quote] | None:
        """The launch's charge if billing recorded one; None when it did not, and never will now."""
        r = await self._d.call(self._stub.ResolveCharge,
                               billing_pb.ResolveChargeRequest(idempotency_key=launch.launch_id))
        return None if r.voided else (r.charge.charge_id, _quote(r.charge.quote))

    async def quote_reset(self, reset: Reset) -> Quote:
        r = await self._d.call(self._stub.QuoteReset, billing_pb.QuoteResetRequest(reset=_reset_pricing(reset)))
        return _quote(r.quote)

    async def charge_reset(self, reset: Reset) -> Quote:
        r = await self._d.call(self._stub.ChargeReset, billing_pb.ChargeResetRequest(
            reset=_reset_pricing(reset), idempotency_key=reset.reset_id))
        return _quote(r.charge.quote)

    async def end_usage(self, instance_ids: list[str], end_time: datetime) -> None:
        await self._d.call(self._stub.EndUsage, billing_pb.EndUsageRequest(
            instance_ids=instance_ids, end_time=timestamp(end_time)))

    async def charges(self, filters: ChargeFilter, page_size: int, page_token: str) -> tuple[list[Charge], str]:
        request = billing_pb.ListChargesRequest(page_size=page_size, page_token=page_token,
                                                instance_id=filters.instance_id)
        if filters.start_time is not None:
            request.start_time.CopyFrom(timestamp(filters.start_time))
        if filters.end_time is not None:
            request.end_time.CopyFrom(timestamp(filters.end_time))
        r = await self._d.call(self._stub.ListCharges, request)
        return [_charge(c) for c in r.charges], r.next_page_token

    async def prices(self, region: str, charge_type: ChargeType | None, instance_type: str, page_size: int,
                     page_token: str) -> tuple[list[Price], str]:
        r = await self._d.call(self._stub.ListPrices, billing_pb.ListPricesRequest(
            region=region, charge_type=_CHARGE_TYPES.to_proto(charge_type), instance_type=instance_type,
            page_size=page_size, page_token=page_token))
        return [Price(p.region, _LINE_KINDS.from_proto(p.kind, "kind"), p.instance_type,
                      _CHARGE_TYPES.from_proto(p.charge_type, "charge_type"), p.unit_price.currency_code,
                      decimal_of(p.unit_price), p.unit, p.description, p.marketplace_product_id)
                for p in r.prices], r.next_page_token
