"""The sharing context's gRPC servicer: proto in, handler, proto out."""

from __future__ import annotations

from datetime import timedelta

import grpc
from cloudimg.sharing.v1 import sharing_service_pb2 as pb
from cloudimg.sharing.v1 import sharing_service_pb2_grpc as pb_grpc

from chassis import context
from chassis.clock import Clock, SystemClock
from chassis.convert import EnumMap, timestamp
from chassis.errors import InvalidArgument
from sharing_service.domain.model import ImageKind, ImageRef, Share, ShareDecision, ShareState
from sharing_service.domain.trust import PolicyDraft, TrustPolicy, TrustPolicyMode
from sharing_service.domain.verdict import LaunchBasis, Verdict, check_batch_size
from sharing_service.service_layer import handlers, trust_policies, verdicts
from sharing_service.service_layer.unit_of_work import UnitOfWorkFactory
from sharing_service.service_layer.verdicts import Leases

IMAGE_KINDS = EnumMap(pb.ImageKind, "IMAGE_KIND", ImageKind)
SHARE_STATES = EnumMap(pb.ShareState, "SHARE_STATE", ShareState)
BASES = EnumMap(pb.LaunchBasis, "LAUNCH_BASIS", LaunchBasis)
MODES = EnumMap(pb.TrustPolicyMode, "TRUST_POLICY_MODE", TrustPolicyMode)
# The servicer of a test rig that leases nothing: every verdict is asked for.
NO_LEASES = Leases(0.0)


def image_ref(proto: pb.ImageRef, field: str = "image") -> ImageRef:
    if not proto.image_id:
        raise InvalidArgument("IMAGE_REQUIRED", f"{field}.image_id is required", field=f"{field}.image_id")
    return ImageRef(proto.image_id, proto.region, IMAGE_KINDS.from_proto(proto.kind, f"{field}.kind"),
                    proto.owner_account_id, proto.marketplace_provider, proto.launchable_state)


def share_to_proto(share: Share) -> pb.Share:
    return pb.Share(image_id=share.image_id, region=share.region, owner_account_id=share.owner_account_id,
                    recipient_account_id=share.recipient_account_id, state=SHARE_STATES.to_proto(share.state),
                    create_time=timestamp(share.create_time))


def verdict_to_proto(verdict: Verdict, lease_seconds: float = 0.0) -> pb.CheckLaunchPermissionResponse:
    proto = pb.CheckLaunchPermissionResponse(
        visible=verdict.visible, allowed=verdict.allowed, basis=BASES.to_proto(verdict.basis),
        share_state=SHARE_STATES.to_proto(verdict.share_state), image_allowed=verdict.image_allowed,
        policy_mode=MODES.to_proto(verdict.policy_mode), policy_rule=verdict.policy_rule,
    )
    if lease_seconds > 0:
        proto.lease.FromTimedelta(timedelta(seconds=lease_seconds))
    return proto


def policy_draft(proto: pb.TrustPolicy) -> PolicyDraft:
    # An unspecified mode is the domain's to refuse, and only when the update names it.
    mode = None if proto.mode == pb.TRUST_POLICY_MODE_UNSPECIFIED else MODES.from_proto(proto.mode, "policy.mode")
    return PolicyDraft(list(proto.trusted_account_ids), mode, proto.allow_platform_images,
                       list(proto.allowed_marketplace_providers), list(proto.allowed_account_ids))


def policy_to_proto(policy: TrustPolicy) -> pb.TrustPolicy:
    proto = pb.TrustPolicy(
        trusted_account_ids=policy.trusted_account_ids, mode=MODES.to_proto(policy.mode),
        allow_platform_images=policy.allow_platform_images,
        allowed_marketplace_providers=policy.allowed_marketplace_providers,
        allowed_account_ids=policy.allowed_account_ids)
    if policy.update_time is not None:
        proto.update_time.CopyFrom(timestamp(policy.update_time))
    return proto


class SharingServicer(pb_grpc.SharingServiceServicer):
    def __init__(self, new_uow: UnitOfWorkFactory, clock: Clock | None = None, leases: Leases = NO_LEASES):
        self._new_uow = new_uow
        self._clock = clock or SystemClock()
        self._leases = leases

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
        states = [SHARE_STATES.from_proto(s, f"states[{i}]") for i, s in enumerate(request.states)]
        shares, token = handlers.list_received_shares(context.caller().account_id, request.region, states,
                                                      request.page_size, request.page_token, new_uow=self._new_uow)
        return pb.ListReceivedSharesResponse(shares=[share_to_proto(s) for s in shares], next_page_token=token)

    async def CheckLaunchPermission(self, request: pb.CheckLaunchPermissionRequest, ctx: grpc.aio.ServicerContext
                                    ) -> pb.CheckLaunchPermissionResponse:
        verdict = verdicts.check_launch_permission(image_ref(request.image), context.caller().account_id,
                                                   new_uow=self._new_uow)
        return verdict_to_proto(verdict, self._leases.of(verdict))

    async def CheckLaunchPermissions(self, request: pb.CheckLaunchPermissionsRequest,
                                     ctx: grpc.aio.ServicerContext) -> pb.CheckLaunchPermissionsResponse:
        check_batch_size(len(request.images))  # before converting a page that is refused anyway
        images = [image_ref(image, f"images[{i}]") for i, image in enumerate(request.images)]
        found = verdicts.check_launch_permissions(images, context.caller().account_id, new_uow=self._new_uow)
        return pb.CheckLaunchPermissionsResponse(verdicts=[verdict_to_proto(v, self._leases.of(v)) for v in found])

    async def RetireImage(self, request: pb.RetireImageRequest, ctx: grpc.aio.ServicerContext
                          ) -> pb.RetireImageResponse:
        handlers.retire_image(image_ref(request.image), context.caller().account_id, new_uow=self._new_uow,
                              clock=self._clock)
        return pb.RetireImageResponse()

    async def RestoreImage(self, request: pb.RestoreImageRequest, ctx: grpc.aio.ServicerContext
                           ) -> pb.RestoreImageResponse:
        handlers.restore_image(image_ref(request.image), context.caller().account_id, new_uow=self._new_uow)
        return pb.RestoreImageResponse()

    async def AcceptImageShare(self, request: pb.AcceptImageShareRequest, ctx: grpc.aio.ServicerContext
                               ) -> pb.AcceptImageShareResponse:
        share = handlers.decide_share(request.image_id, ShareDecision.ACCEPT, context.caller().account_id,
                                      request.request_id, new_uow=self._new_uow)
        return pb.AcceptImageShareResponse(share=share_to_proto(share))

    async def RejectImageShare(self, request: pb.RejectImageShareRequest, ctx: grpc.aio.ServicerContext
                               ) -> pb.RejectImageShareResponse:
        share = handlers.decide_share(request.image_id, ShareDecision.REJECT, context.caller().account_id,
                                      request.request_id, new_uow=self._new_uow)
        return pb.RejectImageShareResponse(share=share_to_proto(share))

    async def GetTrustPolicy(self, request: pb.GetTrustPolicyRequest, ctx: grpc.aio.ServicerContext
                             ) -> pb.GetTrustPolicyResponse:
        policy = trust_policies.get_trust_policy(context.caller().account_id, new_uow=self._new_uow)
        return pb.GetTrustPolicyResponse(policy=policy_to_proto(policy))

    async def UpdateTrustPolicy(self, request: pb.UpdateTrustPolicyRequest, ctx: grpc.aio.ServicerContext
                                ) -> pb.UpdateTrustPolicyResponse:
        policy = trust_policies.update_trust_policy(
            policy_draft(request.policy), list(request.update_paths), context.caller().account_id,
            request.request_id, new_uow=self._new_uow, clock=self._clock)
        # In force everywhere before it answers (a retry of the update waits too: its first call may not have).
        await self._leases.run_out()
        return pb.UpdateTrustPolicyResponse(policy=policy_to_proto(policy))
