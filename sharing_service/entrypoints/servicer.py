"""The sharing context's gRPC servicer: proto in, handler, proto out."""

from __future__ import annotations

import grpc

from chassis import context
from chassis.clock import Clock, SystemClock
from chassis.convert import EnumMap, timestamp
from chassis.errors import InvalidArgument, not_available_yet
from cloudimg.sharing.v1 import sharing_service_pb2 as pb
from cloudimg.sharing.v1 import sharing_service_pb2_grpc as pb_grpc
from sharing_service.domain.model import ImageKind, ImageRef, LaunchBasis, Share, ShareState
from sharing_service.service_layer import handlers
from sharing_service.service_layer.handlers import UnitOfWorkFactory

IMAGE_KINDS = EnumMap(pb.ImageKind, "IMAGE_KIND", ImageKind)
SHARE_STATES = EnumMap(pb.ShareState, "SHARE_STATE", ShareState)
BASES = EnumMap(pb.LaunchBasis, "LAUNCH_BASIS", LaunchBasis)


def image_ref(proto: pb.ImageRef) -> ImageRef:
    if not proto.image_id:
        raise InvalidArgument("IMAGE_REQUIRED", "image.image_id is required", field="image.image_id")
    return ImageRef(proto.image_id, proto.region, IMAGE_KINDS.from_proto(proto.kind, "image.kind"),
                    proto.owner_account_id, proto.marketplace_provider, proto.launchable_state)


def share_to_proto(share: Share) -> pb.Share:
    return pb.Share(image_id=share.image_id, region=share.region, owner_account_id=share.owner_account_id,
                    recipient_account_id=share.recipient_account_id, state=SHARE_STATES.to_proto(share.state),
                    create_time=timestamp(share.create_time))


class SharingServicer(pb_grpc.SharingServiceServicer):
    def __init__(self, new_uow: UnitOfWorkFactory, clock: Clock | None = None):
        self._new_uow = new_uow
        self._clock = clock or SystemClock()

    async def ShareImage(self, request: pb.ShareImageRequest, ctx: grpc.aio.ServicerContext
                         ) -> pb.ShareImageResponse:
        shares = handlers.share_image(image_ref(request.image), list(request.account_ids),
                                      context.caller().account_id, request.request_id, new_uow=self._new_uow,
                                      clock=self._clock)
        return pb.ShareImageResponse(shares=[share_to_proto(s) for s in shares])

    async def UnshareImage(self, request: pb.UnshareImageRequest, ctx: grpc.aio.ServicerContext
                           ) -> pb.UnshareImageResponse:
        shares = handlers.unshare_image(image_ref(request.image), list(request.account_ids),
                                        context.caller().account_id, request.request_id, new_uow=self._new_uow)
        return pb.UnshareImageResponse(shares=[share_to_proto(s) for s in shares])

    async def ListImageShares(self, request: pb.ListImageSharesRequest, ctx: grpc.aio.ServicerContext
                              ) -> pb.ListImageSharesResponse:
        shares, token = handlers.list_image_shares(image_ref(request.image), context.caller().account_id,
                                                   request.page_size, request.page_token, new_uow=self._new_uow)
        return pb.ListImageSharesResponse(shares=[share_to_proto(s) for s in shares], next_page_token=token)

    async def ListReceivedShares(self, request: pb.ListReceivedSharesRequest, ctx: grpc.aio.ServicerContext
                                 ) -> pb.ListReceivedSharesResponse:
        shares, token = handlers.list_received_shares(context.caller().account_id, request.region,
                                                      request.page_size, request.page_token, new_uow=self._new_uow)
        return pb.ListReceivedSharesResponse(shares=[share_to_proto(s) for s in shares], next_page_token=token)

    async def CheckLaunchPermission(self, request: pb.CheckLaunchPermissionRequest, ctx: grpc.aio.ServicerContext
                                    ) -> pb.CheckLaunchPermissionResponse:
        verdict = handlers.check_launch_permission(image_ref(request.image), context.caller().account_id,
                                                   new_uow=self._new_uow)
        return pb.CheckLaunchPermissionResponse(
            visible=verdict.visible, allowed=verdict.allowed, basis=BASES.to_proto(verdict.basis),
            share_state=SHARE_STATES.to_proto(verdict.share_state),
            image_allowed=verdict.image_allowed,
        )

    async def RetireImage(self, request: pb.RetireImageRequest, ctx: grpc.aio.ServicerContext
                          ) -> pb.RetireImageResponse:
        handlers.retire_image(image_ref(request.image), context.caller().account_id, new_uow=self._new_uow,
                              clock=self._clock)
        return pb.RetireImageResponse()

    async def RestoreImage(self, request: pb.RestoreImageRequest, ctx: grpc.aio.ServicerContext
                           ) -> pb.RestoreImageResponse:
        handlers.restore_image(image_ref(request.image), context.caller().account_id, new_uow=self._new_uow)
        return pb.RestoreImageResponse()

    # Built by a later issue; until then they answer UNIMPLEMENTED with an ErrorInfo.
    async def AcceptImageShare(self, request: pb.AcceptImageShareRequest, ctx: grpc.aio.ServicerContext
                              ) -> pb.AcceptImageShareResponse:
        raise not_available_yet("AcceptImageShare")

    async def RejectImageShare(self, request: pb.RejectImageShareRequest, ctx: grpc.aio.ServicerContext
                              ) -> pb.RejectImageShareResponse:
        raise not_available_yet("RejectImageShare")

    async def GetTrustPolicy(self, request: pb.GetTrustPolicyRequest, ctx: grpc.aio.ServicerContext
                            ) -> pb.GetTrustPolicyResponse:
        raise not_available_yet("GetTrustPolicy")

    async def UpdateTrustPolicy(self, request: pb.UpdateTrustPolicyRequest, ctx: grpc.aio.ServicerContext
                               ) -> pb.UpdateTrustPolicyResponse:
        raise not_available_yet("UpdateTrustPolicy")
