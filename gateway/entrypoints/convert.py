"""Between the public contract (cloudimg.gateway.v1) and the gateway's domain."""

from __future__ import annotations

from datetime import datetime

from cloudimg.gateway.v1 import account_service_pb2 as account_pb
from cloudimg.gateway.v1 import image_service_pb2 as image_pb
from cloudimg.gateway.v1 import image_share_service_pb2 as share_pb
from cloudimg.gateway.v1 import instance_service_pb2 as instance_pb
from google.protobuf import timestamp_pb2

from chassis.context import Caller
from chassis.convert import EnumMap, money, requested_time, timestamp
from gateway.domain.instances import DEFAULT_SYSTEM_DISK_GB, Instance, InstanceState, LaunchRequest
from gateway.domain.model import (
    Architecture,
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
    ImageType,
    InstanceType,
    OsType,
    Price,
    Quote,
    QuoteLineKind,
    Region,
    ShareState,
    TrustPolicy,
    TrustPolicyMode,
)

IMAGE_TYPES = EnumMap(image_pb.ImageType, "IMAGE_TYPE", ImageType)
IMAGE_STATES = EnumMap(image_pb.ImageState, "IMAGE_STATE", ImageState)
IMAGE_SOURCES = EnumMap(image_pb.ImageSource, "IMAGE_SOURCE", ImageSource)
SHARE_STATES = EnumMap(image_pb.ShareState, "SHARE_STATE", ShareState)
ARCHITECTURES = EnumMap(image_pb.Architecture, "ARCHITECTURE", Architecture)
OS_TYPES = EnumMap(image_pb.OsType, "OS_TYPE", OsType)
IMAGE_FORMATS = EnumMap(image_pb.ImageFormat, "IMAGE_FORMAT", ImageFormat)
CPU_ARCHITECTURES = EnumMap(instance_pb.CpuArchitecture, "CPU_ARCHITECTURE", Architecture)
CHARGE_TYPES = EnumMap(instance_pb.ChargeType, "CHARGE_TYPE", ChargeType)
INSTANCE_STATES = EnumMap(instance_pb.InstanceState, "INSTANCE_STATE", InstanceState)
LINE_KINDS = EnumMap(instance_pb.QuoteLineKind, "QUOTE_LINE_KIND", QuoteLineKind)
CHARGE_KINDS = EnumMap(account_pb.ChargeKind, "CHARGE_KIND", ChargeKind)
TRUST_POLICY_MODES = EnumMap(share_pb.TrustPolicyMode, "TRUST_POLICY_MODE", TrustPolicyMode)


def region(r: Region) -> image_pb.Region:
    return image_pb.Region(region_id=r.region_id, display_name=r.display_name, mainland=r.mainland,
                           sync_enabled=r.sync_enabled)


def image(i: Image, caller: Caller) -> image_pb.Image:
    return image_pb.Image(
        image_id=i.image_id, region=i.region, image_type=IMAGE_TYPES.to_proto(i.type_for(caller.account_id)),
        state=IMAGE_STATES.to_proto(i.state), name=i.name, description=i.description,
        owner_account_id=i.owner_account_id, platform=i.platform, os_name=i.os_name,
        os_type=OS_TYPES.to_proto(i.os_type), architecture=ARCHITECTURES.to_proto(i.architecture),
        size_gb=i.size_gb, source=IMAGE_SOURCES.to_proto(i.source),
        base_image_id=i.base_image_id, progress_percent=i.progress_percent, create_time=timestamp(i.create_time),
        share_state=SHARE_STATES.to_proto(i.share_state),
        image_allowed=i.image_allowed, marketplace_provider=i.marketplace_provider,
        checksum_sha256=i.checksum_sha256, state_reason=i.state_reason,
    )


def image_import(r: image_pb.ImportImageRequest) -> ImageImport:
    """The import a request asks for; format, os_type and architecture are required."""
    return ImageImport(
        region=r.region, name=r.name, description=r.description,
        format=IMAGE_FORMATS.from_proto(r.format, "format"), os_name=r.os_name,
        os_type=OS_TYPES.from_proto(r.os_type, "os_type"),
        architecture=ARCHITECTURES.from_proto(r.architecture, "architecture"), source_uri=r.source_uri,
    )


def image_quota(q: ImageQuota) -> image_pb.GetImageQuotaResponse:
    return image_pb.GetImageQuotaResponse(
        region=q.region, custom_image_limit=q.custom_image_limit, custom_image_used=q.custom_image_used,
        daily_operation_limit=q.daily_operation_limit, daily_operation_used=q.daily_operation_used,
    )


def image_share(s: ImageShare) -> share_pb.ImageShare:
    return share_pb.ImageShare(image_id=s.image_id, region=s.region, owner_account_id=s.owner_account_id,
                               recipient_account_id=s.recipient_account_id, state=SHARE_STATES.to_proto(s.state),
                               create_time=timestamp(s.create_time))


def trust_policy(p: TrustPolicy) -> share_pb.TrustPolicy:
    return share_pb.TrustPolicy(
        trusted_account_ids=p.trusted_account_ids, mode=TRUST_POLICY_MODES.to_proto(p.mode),
        allow_platform_images=p.allow_platform_images, allowed_marketplace_providers=p.allowed_marketplace_providers,
        allowed_account_ids=p.allowed_account_ids,
        update_time=None if p.update_time is None else timestamp(p.update_time),
    )


def trust_policy_of(p: share_pb.TrustPolicy) -> TrustPolicy:
    """The policy a caller asks for; sharing validates it (mode UNSPECIFIED is refused there when it is updated)."""
    return TrustPolicy(
        trusted_account_ids=tuple(p.trusted_account_ids),
        mode=TRUST_POLICY_MODES.from_proto(p.mode, "policy.mode") if p.mode else None,
        allow_platform_images=p.allow_platform_images,
        allowed_marketplace_providers=tuple(p.allowed_marketplace_providers),
        allowed_account_ids=tuple(p.allowed_account_ids),
    )


def instance_type(t: InstanceType) -> instance_pb.InstanceType:
    return instance_pb.InstanceType(instance_type=t.instance_type, family=t.family,
                                    architecture=CPU_ARCHITECTURES.to_proto(t.architecture), vcpus=t.vcpus,
                                    memory_gb=t.memory_gb)


def quote(q: Quote) -> instance_pb.Quote:
    return instance_pb.Quote(
        currency_code=q.currency, charge_type=CHARGE_TYPES.to_proto(q.charge_type), image_allowed=q.image_allowed,
        lines=[instance_pb.QuoteLine(
            kind=LINE_KINDS.to_proto(l.kind), description=l.description,
            unit_price=money(q.currency, l.unit_price), quantity=l.quantity, unit=l.unit,
            amount=money(q.currency, l.amount),
        ) for l in q.lines],
        total=money(q.currency, q.total),
    )


def _time(moment: datetime | None) -> timestamp_pb2.Timestamp | None:
    return None if moment is None else timestamp(moment)


def instance(i: Instance) -> instance_pb.Instance:
    return instance_pb.Instance(
        instance_id=i.instance_id, region=i.region, instance_name=i.instance_name, instance_type=i.instance_type,
        image_id=i.image_id, state=INSTANCE_STATES.to_proto(i.state), charge_type=CHARGE_TYPES.to_proto(i.charge_type),
        system_disk_gb=i.system_disk_gb, architecture=CPU_ARCHITECTURES.to_proto(i.architecture),
        create_time=timestamp(i.create_time), update_time=_time(i.update_time or i.create_time),
        terminate_time=_time(i.terminate_time),
    )


def charge(c: Charge) -> account_pb.Charge:
    return account_pb.Charge(charge_id=c.charge_id, region=c.region, quote=quote(c.quote),
                             instance_ids=list(c.instance_ids), create_time=timestamp(c.create_time),
                             kind=CHARGE_KINDS.to_proto(c.kind), usage_start_time=_time(c.usage_start_time),
                             usage_end_time=_time(c.usage_end_time))


def charge_filter(r: account_pb.ListChargesRequest) -> ChargeFilter:
    return ChargeFilter(instance_id=r.instance_id, start_time=requested_time(r, "start_time"),
                        end_time=requested_time(r, "end_time"))


def price(p: Price) -> instance_pb.Price:
    return instance_pb.Price(region=p.region, kind=LINE_KINDS.to_proto(p.kind), instance_type=p.instance_type,
                             charge_type=CHARGE_TYPES.to_proto(p.charge_type),
                             unit_price=money(p.currency, p.unit_price), unit=p.unit, description=p.description,
                             marketplace_product_id=p.marketplace_product_id)


def launch_request(r: instance_pb.RunInstancesRequest | instance_pb.QuoteRunInstancesRequest,
                   client_token: str = "") -> LaunchRequest:
    return LaunchRequest(
        region=r.region, image_id=r.image_id, instance_type=r.instance_type, instance_count=r.instance_count,
        charge_type=CHARGE_TYPES.from_proto(r.charge_type, "charge_type", ChargeType.POSTPAID_BY_HOUR),
        period_months=r.period_months, system_disk_gb=r.system_disk_gb or DEFAULT_SYSTEM_DISK_GB,
        instance_name=r.instance_name, client_token=client_token,
    )
