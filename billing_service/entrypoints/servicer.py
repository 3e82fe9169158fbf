"""The billing context's gRPC servicer: proto in, handler, proto out."""

from __future__ import annotations

from datetime import UTC, datetime

import grpc
from cloudimg.billing.v1 import billing_service_pb2 as pb
from cloudimg.billing.v1 import billing_service_pb2_grpc as pb_grpc
from google.protobuf.message import Message

from billing_service.domain.model import (
    Charge,
    ChargeFilter,
    ChargeKind,
    ChargeType,
    CpuArchitecture,
    ImagePricing,
    InstanceType,
    LaunchPricing,
    LineKind,
    OsKind,
    PriceBook,
    Quote,
)
from billing_service.domain.price_list import Price, PriceFilter, all_prices
from billing_service.domain.resets import ResetPricing
from billing_service.service_layer import handlers, ledger, usage
from billing_service.service_layer.handlers import UnitOfWorkFactory
from chassis import context
from chassis.clock import Clock
from chassis.convert import EnumMap, money, requested_time, timestamp

CHARGE_TYPES = EnumMap(pb.ChargeType, "CHARGE_TYPE", ChargeType)
ARCHITECTURES = EnumMap(pb.CpuArchitecture, "CPU_ARCHITECTURE", CpuArchitecture)
OS_KINDS = EnumMap(pb.OsKind, "OS_KIND", OsKind)
LINE_KINDS = EnumMap(pb.LineKind, "LINE_KIND", LineKind)
CHARGE_KINDS = EnumMap(pb.ChargeKind, "CHARGE_KIND", ChargeKind)


def launch_of(proto: pb.LaunchPricing, field: str = "launch") -> LaunchPricing:
    return LaunchPricing(
        region=proto.region,
        instance_type=proto.instance_type,
        instance_count=proto.instance_count,
        charge_type=CHARGE_TYPES.from_proto(proto.charge_type, f"{field}.charge_type", ChargeType.POSTPAID_BY_HOUR),
        period_months=proto.period_months,
        image=ImagePricing(
            proto.image.image_id,
            OS_KINDS.from_proto(proto.image.os_kind, f"{field}.image.os_kind", OsKind.LINUX),
            proto.image.marketplace_product_id,
        ),
    )


def time_of(message: Message, name: str, field: str) -> datetime | None:
    """An optional Timestamp field as an aware UTC datetime (None when unset; INVALID_TIMESTAMP when no time)."""
    moment = requested_time(message, name, field)
    return None if moment is None else moment.replace(tzinfo=UTC)


def reset_of(proto: pb.ResetPricing) -> ResetPricing:
    return ResetPricing(proto.instance_id, launch_of(proto.launch, "reset.launch"),
                        time_of(proto, "launch_time", "reset.launch_time"),
                        time_of(proto, "effective_time", "reset.effective_time"))


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
    proto = pb.Charge(charge_id=charge.charge_id, account_id=charge.account_id, region=charge.region,
                      quote=quote_to_proto(charge.quote), instance_ids=list(charge.instance_ids),
                      create_time=timestamp(charge.create_time), kind=CHARGE_KINDS.to_proto(charge.kind))
    if charge.usage_start_time is not None:
        proto.usage_start_time.CopyFrom(timestamp(charge.usage_start_time))
    if charge.usage_end_time is not None:
        proto.usage_end_time.CopyFrom(timestamp(charge.usage_end_time))
    return proto


def price_to_proto(price: Price, currency: str) -> pb.Price:
    return pb.Price(region=price.region, instance_type=price.instance_type,
                    charge_type=CHARGE_TYPES.to_proto(price.charge_type), unit_price=money(currency, price.unit_price),
                    unit=price.unit, kind=LINE_KINDS.to_proto(price.kind), description=price.description,
                    marketplace_product_id=price.marketplace_product_id)


def instance_type_to_proto(t: InstanceType) -> pb.InstanceType:
    return pb.InstanceType(instance_type=t.instance_type, family=t.family,
                           architecture=ARCHITECTURES.to_proto(t.architecture), vcpus=t.vcpus,
                           memory_gb=t.memory_gb, regions=list(t.regions))


class BillingServicer(pb_grpc.BillingServiceServicer):
    def __init__(self, book: PriceBook, new_uow: UnitOfWorkFactory, clock: Clock):
        self._book = book
        self._prices = all_prices(book)  # the book does not change while the service runs
        self._new_uow = new_uow
        self._clock = clock

    async def ListInstanceTypes(self, request: pb.ListInstanceTypesRequest, ctx: grpc.aio.ServicerContext
                                ) -> pb.ListInstanceTypesResponse:
        types = handlers.list_instance_types(request.region, book=self._book)
        return pb.ListInstanceTypesResponse(instance_types=[instance_type_to_proto(t) for t in types])

    async def Quote(self, request: pb.QuoteRequest, ctx: grpc.aio.ServicerContext) -> pb.QuoteResponse:
        return pb.QuoteResponse(quote=quote_to_proto(handlers.quote(launch_of(request.launch), book=self._book)))

    async def CreateCharge(self, request: pb.CreateChargeRequest, ctx: grpc.aio.ServicerContext
                           ) -> pb.CreateChargeResponse:
        charge = handlers.create_charge(launch_of(request.launch), request.idempotency_key, list(request.instance_ids),
                                        context.caller().account_id, book=self._book, new_uow=self._new_uow,
                                        clock=self._clock)
        return pb.CreateChargeResponse(charge=charge_to_proto(charge))

    async def ResolveCharge(self, request: pb.ResolveChargeRequest, ctx: grpc.aio.ServicerContext
                            ) -> pb.ResolveChargeResponse:
        charge = handlers.resolve_charge(request.idempotency_key, context.caller().account_id,
                                         new_uow=self._new_uow, clock=self._clock)
        if charge is None:
            return pb.ResolveChargeResponse(voided=True)
        return pb.ResolveChargeResponse(charge=charge_to_proto(charge))

    async def ListCharges(self, request: pb.ListChargesRequest, ctx: grpc.aio.ServicerContext
                          ) -> pb.ListChargesResponse:
        filters = ChargeFilter(request.instance_id, time_of(request, "start_time", "start_time"),
                               time_of(request, "end_time", "end_time"))
        charges, token = ledger.list_charges(context.caller().account_id, request.page_size, request.page_token,
                                             filters, new_uow=self._new_uow, clock=self._clock)
        return pb.ListChargesResponse(charges=[charge_to_proto(c) for c in charges], next_page_token=token)

    async def ListPrices(self, request: pb.ListPricesRequest, ctx: grpc.aio.ServicerContext) -> pb.ListPricesResponse:
        charge_type = CHARGE_TYPES.from_proto(request.charge_type, "charge_type") if request.charge_type else None
        filters = PriceFilter(request.region, charge_type, request.instance_type)
        prices, token = handlers.list_prices(filters, request.page_size, request.page_token, book=self._book,
                                             prices=self._prices)
        return pb.ListPricesResponse(prices=[price_to_proto(p, self._book.currency) for p in prices],
                                     next_page_token=token)

    async def QuoteReset(self, request: pb.QuoteResetRequest, ctx: grpc.aio.ServicerContext) -> pb.QuoteResetResponse:
        quote = usage.quote_reset(reset_of(request.reset), context.caller().account_id, book=self._book,
                                  new_uow=self._new_uow, clock=self._clock)
        return pb.QuoteResetResponse(quote=quote_to_proto(quote))

    async def ChargeReset(self, request: pb.ChargeResetRequest, ctx: grpc.aio.ServicerContext
                          ) -> pb.ChargeResetResponse:
        charge = usage.charge_reset(reset_of(request.reset), request.idempotency_key, context.caller().account_id,
                                    book=self._book, new_uow=self._new_uow, clock=self._clock)
        return pb.ChargeResetResponse(charge=charge_to_proto(charge))

    async def EndUsage(self, request: pb.EndUsageRequest, ctx: grpc.aio.ServicerContext) -> pb.EndUsageResponse:
        charges = usage.end_usage(list(request.instance_ids), time_of(request, "end_time", "end_time"),
                                  context.caller().account_id, new_uow=self._new_uow, clock=self._clock)
        return pb.EndUsageResponse(charges=[charge_to_proto(c) for c in charges])
