"""Between the public contract (cloudimg.gateway.v1) and the gateway's domain."""

from __future__ import annotations

from chassis.context import Caller
from chassis.convert import EnumMap, money, timestamp
from cloudimg.gateway.v1 import account_service_pb2 as account_pb
from cloudimg.gateway.v1 import image_service_pb2 as image_pb
from cloudimg.gateway.v1 import image_share_service_pb2 as share_pb
from cloudimg.gateway.v1 import instance_service_pb2 as instance_pb
from gateway.domain.model import (
    DEFAULT_SYSTEM_DISK_GB, Architecture, Charge, ChargeType, Image, ImageFormat, ImageImport, ImageQuota, ImageShare,
    ImageType, Instance, InstanceState, InstanceType, LaunchRequest, OsType, Quote, Region, ShareState,
)

IMAGE_TYPES = EnumMap(image_pb.ImageType, "IMAGE_TYPE", ImageType)
SHARE_STATES = EnumMap(image_pb.ShareState, "SHARE_STATE", ShareState)
ARCHITECTURES = EnumMap(image_pb.Architecture, "ARCHITECTURE", Architecture)
OS_TYPES = EnumMap(image_pb.OsType, "OS_TYPE", OsType)
IMAGE_FORMATS = EnumMap(image_pb.ImageFormat, "IMAGE_FORMAT", ImageFormat)
CPU_ARCHITECTURES = EnumMap(instance_pb.CpuArchitecture, "CPU_ARCHITECTURE", Architecture)
CHARGE_TYPES = EnumMap(instance_pb.ChargeType, "CHARGE_TYPE", ChargeType)
INSTANCE_STATES = EnumMap(instance_pb.InstanceState, "INSTANCE_STATE", InstanceState)


def region(r: Region) -> image_pb.Region:
    return image_pb.Region(region_id=r.region_id, display_name=r.display_name, mainland=r.mainland,
                           sync_enabled=r.sync_enabled)


def image(i: Image, caller: Caller) -> image_pb.Image:
    return image_pb.Image(
        image_id=i.image_id, region=i.region, image_type=IMAGE_TYPES.to_proto(i.type_for(caller.account_id)),
        state=image_pb.ImageState.Value("IMAGE_STATE_" + i.state), name=i.name, description=i.description,
        owner_account_id=i.owner_account_id, platform=i.platform, os_name=i.os_name,
        os_type=OS_TYPES.to_proto(i.os_type), architecture=ARCHITECTURES.to_proto(i.architecture),
        size_gb=i.size_gb, source=image_pb.ImageSource.Value("IMAGE_SOURCE_" + i.source),
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


def instance_type(t: InstanceType) -> instance_pb.InstanceType:
    return instance_pb.InstanceType(instance_type=t.instance_type, family=t.family,
                                    architecture=CPU_ARCHITECTURES.to_proto(t.architecture), vcpus=t.vcpus,
                                    memory_gb=t.memory_gb)


def quote(q: Quote) -> instance_pb.Quote:
    return instance_pb.Quote(
        currency_code=q.currency, charge_type=CHARGE_TYPES.to_proto(q.charge_type), image_allowed=q.image_allowed,
        lines=[instance_pb.QuoteLine(
            kind=instance_pb.QuoteLineKind.Value("QUOTE_LINE_KIND_" + l.kind), description=l.description,
            unit_price=money(q.currency, l.unit_price), quantity=l.quantity, unit=l.unit,
            amount=money(q.currency, l.amount),
        ) for l in q.lines],
        total=money(q.currency, q.total),
    )


def instance(i: Instance) -> instance_pb.Instance:
    return instance_pb.Instance(
        instance_id=i.instance_id, region=i.region, instance_name=i.instance_name, instance_type=i.instance_type,
        image_id=i.image_id, state=INSTANCE_STATES.to_proto(i.state), charge_type=CHARGE_TYPES.to_proto(i.charge_type),
        system_disk_gb=i.system_disk_gb, architecture=CPU_ARCHITECTURES.to_proto(i.architecture),
        create_time=timestamp(i.create_time),
    )


def charge(c: Charge) -> account_pb.Charge:
    return account_pb.Charge(charge_id=c.charge_id, region=c.region, quote=quote(c.quote),
                             instance_ids=list(c.instance_ids), create_time=timestamp(c.create_time))


def launch_request(r: instance_pb.RunInstancesRequest | instance_pb.QuoteRunInstancesRequest,
                   client_token: str = "") -> LaunchRequest:
    return LaunchRequest(
        region=r.region, image_id=r.image_id, instance_type=r.instance_type, instance_count=r.instance_count,
        charge_type=CHARGE_TYPES.from_proto(r.charge_type, "charge_type", ChargeType.POSTPAID_BY_HOUR),
        period_months=r.period_months, system_disk_gb=r.system_disk_gb or DEFAULT_SYSTEM_DISK_GB,
        instance_name=r.instance_name, client_token=client_token,
    )
