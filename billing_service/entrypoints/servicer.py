"""The billing context's gRPC servicer: proto in, handler, proto out."""

from __future__ import annotations

import grpc

from billing_service.domain.model import (
    Charge, ChargeType, CpuArchitecture, ImagePricing, InstanceType, LaunchPricing, LineKind, OsKind, PriceBook, Quote,
)
from billing_service.service_layer import handlers
from billing_service.service_layer.handlers import UnitOfWorkFactory
from chassis import context
from chassis.errors import not_available_yet
from chassis.convert import EnumMap, money, timestamp
from cloudimg.billing.v1 import billing_service_pb2 as pb
from cloudimg.billing.v1 import billing_service_pb2_grpc as pb_grpc

CHARGE_TYPES = EnumMap(pb.ChargeType, "CHARGE_TYPE", ChargeType)
ARCHITECTURES = EnumMap(pb.CpuArchitecture, "CPU_ARCHITECTURE", CpuArchitecture)
OS_KINDS = EnumMap(pb.OsKind, "OS_KIND", OsKind)
LINE_KINDS = EnumMap(pb.LineKind, "LINE_KIND", LineKind)


def launch_of(proto: pb.LaunchPricing) -> LaunchPricing:
    return LaunchPricing(
        region=proto.region,
        instance_type=proto.instance_type,
        instance_count=proto.instance_count,
        charge_type=CHARGE_TYPES.from_proto(proto.charge_type, "charge_type", ChargeType.POSTPAID_BY_HOUR),
        period_months=proto.period_months,
        image=ImagePricing(
            proto.image.image_id,
            OS_KINDS.from_proto(proto.image.os_kind, "image.os_kind", OsKind.LINUX),
            proto.image.marketplace_product_id,
        ),
    )


def quote_to_proto(quote: Quote) -> pb.Quote:
    currency = quote.currency
    return pb.Quote(
        currency_code=currency,
        charge_type=CHARGE_TYPES.to_proto(quote.charge_type),
        lines=[pb.QuoteLine(kind=LINE_KINDS.to_proto(l.kind), description=l.description,
                            unit_price=money(currency, l.unit_price), quantity=l.quantity, unit=l.unit,
                            amount=money(currency, l.amount))
               for l in quote.lines],
        total=money(currency, quote.total),
    )


def charge_to_proto(charge: Charge) -> pb.Charge:
    return pb.Charge(charge_id=charge.charge_id, account_id=charge.account_id, region=charge.region,
                     quote=quote_to_proto(charge.quote), instance_ids=list(charge.instance_ids),
                     create_time=timestamp(charge.create_time))


def instance_type_to_proto(t: InstanceType) -> pb.InstanceType:
    return pb.InstanceType(instance_type=t.instance_type, family=t.family,
                           architecture=ARCHITECTURES.to_proto(t.architecture), vcpus=t.vcpus,
                           memory_gb=t.memory_gb, regions=list(t.regions))


class BillingServicer(pb_grpc.BillingServiceServicer):
    def __init__(self, book: PriceBook, new_uow: UnitOfWorkFactory):
        self._book = book
        self._new_uow = new_uow

    async def ListInstanceTypes(self, request: pb.ListInstanceTypesRequest, ctx: grpc.aio.ServicerContext
                                ) -> pb.ListInstanceTypesResponse:
        types = handlers.list_instance_types(request.region, book=self._book)
        return pb.ListInstanceTypesResponse(instance_types=[instance_type_to_proto(t) for t in types])

    async def Quote(self, request: pb.QuoteRequest, ctx: grpc.aio.ServicerContext) -> pb.QuoteResponse:
        return pb.QuoteResponse(quote=quote_to_proto(handlers.quote(launch_of(request.launch), book=self._book)))

    async def CreateCharge(self, request: pb.CreateChargeRequest, ctx: grpc.aio.ServicerContext
                           ) -> pb.CreateChargeResponse:
        charge = handlers.create_charge(launch_of(request.launch), request.idempotency_key, list(request.instance_ids),
                                        context.caller().account_id, book=self._book, new_uow=self._new_uow)
        return pb.CreateChargeResponse(charge=charge_to_proto(charge))

    async def ResolveCharge(self, request: pb.ResolveChargeRequest, ctx: grpc.aio.ServicerContext
                            ) -> pb.ResolveChargeResponse:
        charge = handlers.resolve_charge(request.idempotency_key, context.caller().account_id,
                                         new_uow=self._new_uow)
        if charge is None:
            return pb.ResolveChargeResponse(voided=True)
        return pb.ResolveChargeResponse(charge=charge_to_proto(charge))

    async def ListCharges(self, request: pb.ListChargesRequest, ctx: grpc.aio.ServicerContext
                          ) -> pb.ListChargesResponse:
        charges, token = handlers.list_charges(context.caller().account_id, request.page_size, request.page_token,
                                               new_uow=self._new_uow)
        return pb.ListChargesResponse(charges=[charge_to_proto(c) for c in charges], next_page_token=token)

    # Built by a later issue; until then they answer UNIMPLEMENTED with an ErrorInfo.
    async def ListPrices(self, request: pb.ListPricesRequest, ctx: grpc.aio.ServicerContext) -> pb.ListPricesResponse:
        raise not_available_yet("ListPrices")
