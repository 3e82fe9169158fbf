"""The public API's servicers: proto in, handler, proto out."""

from __future__ import annotations

from typing import TypeAlias

import grpc
from cloudimg.gateway.v1 import account_service_pb2 as account_pb
from cloudimg.gateway.v1 import account_service_pb2_grpc as account_grpc
from cloudimg.gateway.v1 import image_service_pb2 as image_pb
from cloudimg.gateway.v1 import image_service_pb2_grpc as image_grpc
from cloudimg.gateway.v1 import image_share_service_pb2 as share_pb
from cloudimg.gateway.v1 import image_share_service_pb2_grpc as share_grpc
from cloudimg.gateway.v1 import instance_service_pb2 as instance_pb
from cloudimg.gateway.v1 import instance_service_pb2_grpc as instance_grpc

from chassis import context
from gateway.entrypoints import convert
from gateway.service_layer import accounts, image_lifecycle, images, instances, launches, resets, shares
from gateway.service_layer.dependencies import Dependencies

Context: TypeAlias = grpc.aio.ServicerContext


class ImageServicer(image_grpc.ImageServiceServicer):
    def __init__(self, deps: Dependencies):
        self._deps = deps

    async def ListRegions(self, request: image_pb.ListRegionsRequest, ctx: Context) -> image_pb.ListRegionsResponse:
        regions = await images.list_regions(self._deps)
        return image_pb.ListRegionsResponse(regions=[convert.region(r) for r in regions])

    async def ListImages(self, request: image_pb.ListImagesRequest, ctx: Context) -> image_pb.ListImagesResponse:
        caller = context.caller()
        types = {convert.IMAGE_TYPES.from_proto(t, "image_types") for t in request.image_types}
        states = {convert.SHARE_STATES.from_proto(s, "share_states") for s in request.share_states}
        found, token = await images.list_images(caller, request.region, types, states, request.platform,
                                                request.name_filter, request.page_size, request.page_token,
                                                self._deps)
        return image_pb.ListImagesResponse(images=[convert.image(i, caller) for i in found], next_page_token=token)

    async def GetImage(self, request: image_pb.GetImageRequest, ctx: Context) -> image_pb.GetImageResponse:
        caller = context.caller()
        found = await images.get_image(caller, request.image_id, self._deps)
        return image_pb.GetImageResponse(image=convert.image(found, caller))

    async def CreateImage(self, request: image_pb.CreateImageRequest, ctx: Context) -> image_pb.CreateImageResponse:
        caller = context.caller()
        made = await image_lifecycle.create_image(caller, request.instance_id, request.name, request.description,
                                                  request.request_id, request.dry_run, self._deps)
        return image_pb.CreateImageResponse(image=convert.image(made, caller))

    async def ImportImage(self, request: image_pb.ImportImageRequest, ctx: Context) -> image_pb.ImportImageResponse:
        caller = context.caller()
        made = await image_lifecycle.import_image(convert.image_import(request), request.request_id, request.dry_run,
                                                  self._deps)
        return image_pb.ImportImageResponse(image=convert.image(made, caller))

    async def UpdateImage(self, request: image_pb.UpdateImageRequest, ctx: Context) -> image_pb.UpdateImageResponse:
        caller = context.caller()
        changed = await image_lifecycle.update_image(caller, request.image.image_id, request.image.name,
                                                     request.image.description, list(request.update_mask.paths),
                                                     request.request_id, self._deps)
        return image_pb.UpdateImageResponse(image=convert.image(changed, caller))

    async def DeleteImage(self, request: image_pb.DeleteImageRequest, ctx: Context) -> image_pb.DeleteImageResponse:
        await image_lifecycle.delete_image(context.caller(), request.image_id, request.request_id, self._deps)
        return image_pb.DeleteImageResponse()

    async def SyncImage(self, request: image_pb.SyncImageRequest, ctx: Context) -> image_pb.SyncImageResponse:
        caller = context.caller()
        copies = await image_lifecycle.sync_image(caller, request.image_id, list(request.destination_regions),
                                                  request.request_id, request.dry_run, self._deps)
        return image_pb.SyncImageResponse(images=[convert.image(i, caller) for i in copies])

    async def GetImageQuota(self, request: image_pb.GetImageQuotaRequest, ctx: Context
                           ) -> image_pb.GetImageQuotaResponse:
        return convert.image_quota(await image_lifecycle.get_image_quota(request.region, self._deps))


class ImageShareServicer(share_grpc.ImageShareServiceServicer):
    def __init__(self, deps: Dependencies):
        self._deps = deps

    async def ShareImage(self, request: share_pb.ShareImageRequest, ctx: Context) -> share_pb.ShareImageResponse:
        found = await shares.share_image(context.caller(), request.image_id, list(request.account_ids),
                                         request.request_id, self._deps)
        return share_pb.ShareImageResponse(shares=[convert.image_share(s) for s in found])

    async def UnshareImage(self, request: share_pb.UnshareImageRequest, ctx: Context
                           ) -> share_pb.UnshareImageResponse:
        found = await shares.unshare_image(context.caller(), request.image_id, list(request.account_ids),
                                           request.request_id, self._deps)
        return share_pb.UnshareImageResponse(shares=[convert.image_share(s) for s in found])

    async def ListImageShares(self, request: share_pb.ListImageSharesRequest, ctx: Context
                              ) -> share_pb.ListImageSharesResponse:
        found, token = await shares.list_image_shares(context.caller(), request.image_id, request.page_size,
                                                      request.page_token, self._deps)
        return share_pb.ListImageSharesResponse(shares=[convert.image_share(s) for s in found],
                                                next_page_token=token)

    async def AcceptImageShare(self, request: share_pb.AcceptImageShareRequest, ctx: Context
                               ) -> share_pb.AcceptImageShareResponse:
        share = await shares.accept_image_share(request.image_id, request.request_id, self._deps)
        return share_pb.AcceptImageShareResponse(share=convert.image_share(share))

    async def RejectImageShare(self, request: share_pb.RejectImageShareRequest, ctx: Context
                               ) -> share_pb.RejectImageShareResponse:
        share = await shares.reject_image_share(request.image_id, request.request_id, self._deps)
        return share_pb.RejectImageShareResponse(share=convert.image_share(share))

    async def GetTrustPolicy(self, request: share_pb.GetTrustPolicyRequest, ctx: Context
                             ) -> share_pb.GetTrustPolicyResponse:
        policy = await shares.get_trust_policy(self._deps)
        return share_pb.GetTrustPolicyResponse(policy=convert.trust_policy(policy))

    async def UpdateTrustPolicy(self, request: share_pb.UpdateTrustPolicyRequest, ctx: Context
                                ) -> share_pb.UpdateTrustPolicyResponse:
        policy = await shares.update_trust_policy(convert.trust_policy_of(request.policy),
                                                  list(request.update_mask.paths), request.request_id, self._deps)
        return share_pb.UpdateTrustPolicyResponse(policy=convert.trust_policy(policy))


class InstanceServicer(instance_grpc.InstanceServiceServicer):
    def __init__(self, deps: Dependencies):
        self._deps = deps

    async def ListInstanceTypes(self, request: instance_pb.ListInstanceTypesRequest, ctx: Context
                                ) -> instance_pb.ListInstanceTypesResponse:
        types = await instances.list_instance_types(request.region, self._deps)
        return instance_pb.ListInstanceTypesResponse(instance_types=[convert.instance_type(t) for t in types])

    async def QuoteRunInstances(self, request: instance_pb.QuoteRunInstancesRequest, ctx: Context
                                ) -> instance_pb.QuoteRunInstancesResponse:
        quote = await launches.quote_run_instances(convert.launch_request(request), self._deps)
        return instance_pb.QuoteRunInstancesResponse(quote=convert.quote(quote))

    async def RunInstances(self, request: instance_pb.RunInstancesRequest, ctx: Context
                           ) -> instance_pb.RunInstancesResponse:
        launch = convert.launch_request(request, request.client_token)
        instance_ids, quote = await launches.run_instances(context.caller(), launch, request.dry_run, self._deps)
        return instance_pb.RunInstancesResponse(instance_ids=instance_ids, quote=convert.quote(quote))

    async def GetInstance(self, request: instance_pb.GetInstanceRequest, ctx: Context
                          ) -> instance_pb.GetInstanceResponse:
        found = await instances.get_instance(context.caller(), request.instance_id, self._deps)
        return instance_pb.GetInstanceResponse(instance=convert.instance(found))

    async def ListInstances(self, request: instance_pb.ListInstancesRequest, ctx: Context
                            ) -> instance_pb.ListInstancesResponse:
        states = {convert.INSTANCE_STATES.from_proto(s, "states") for s in request.states}
        found, token = await instances.list_instances(context.caller(), request.region, states, request.page_size,
                                                      request.page_token, self._deps)
        return instance_pb.ListInstancesResponse(instances=[convert.instance(i) for i in found],
                                                 next_page_token=token)

    async def TerminateInstances(self, request: instance_pb.TerminateInstancesRequest, ctx: Context
                                 ) -> instance_pb.TerminateInstancesResponse:
        ended = await instances.terminate_instances(context.caller(), list(request.instance_ids), request.request_id,
                                                    self._deps)
        return instance_pb.TerminateInstancesResponse(instances=[convert.instance(i) for i in ended])

    async def ResetInstance(self, request: instance_pb.ResetInstanceRequest, ctx: Context
                            ) -> instance_pb.ResetInstanceResponse:
        reset, quote = await resets.reset_instance(context.caller(), request.instance_id, request.image_id,
                                                   request.request_id, request.dry_run, self._deps)
        return instance_pb.ResetInstanceResponse(instance=convert.instance(reset), quote=convert.quote(quote))

    async def QuoteResetInstance(self, request: instance_pb.QuoteResetInstanceRequest, ctx: Context
                                 ) -> instance_pb.QuoteResetInstanceResponse:
        quote = await resets.quote_reset_instance(context.caller(), request.instance_id, request.image_id,
                                                  self._deps)
        return instance_pb.QuoteResetInstanceResponse(quote=convert.quote(quote))

    async def ListPrices(self, request: instance_pb.ListPricesRequest, ctx: Context
                         ) -> instance_pb.ListPricesResponse:
        charge_type = convert.CHARGE_TYPES.from_proto(request.charge_type, "charge_type") if request.charge_type \
            else None
        prices, token = await instances.list_prices(request.region, charge_type, request.instance_type,
                                                    request.page_size, request.page_token, self._deps)
        return instance_pb.ListPricesResponse(prices=[convert.price(p) for p in prices], next_page_token=token)


class AccountServicer(account_grpc.AccountServiceServicer):
    def __init__(self, deps: Dependencies):
        self._deps = deps

    async def GetCallerIdentity(self, request: account_pb.GetCallerIdentityRequest, ctx: Context
                                ) -> account_pb.GetCallerIdentityResponse:
        account, key_id = accounts.get_caller_identity(context.caller(), self._deps.new_uow)
        return account_pb.GetCallerIdentityResponse(account_id=account.account_id,
                                                    display_name=account.display_name, api_key_id=key_id)

    async def ListCharges(self, request: account_pb.ListChargesRequest, ctx: Context
                          ) -> account_pb.ListChargesResponse:
        charges, token = await accounts.list_charges(convert.charge_filter(request), request.page_size,
                                                     request.page_token, self._deps.billing)
        return account_pb.ListChargesResponse(charges=[convert.charge(c) for c in charges], next_page_token=token)
