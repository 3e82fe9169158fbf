"""The public API's servicers: proto in, handler, proto out."""

from __future__ import annotations

from typing import TypeAlias

import grpc

from chassis import context
from chassis.errors import not_available_yet
from cloudimg.gateway.v1 import account_service_pb2 as account_pb
from cloudimg.gateway.v1 import account_service_pb2_grpc as account_grpc
from cloudimg.gateway.v1 import image_service_pb2 as image_pb
from cloudimg.gateway.v1 import image_service_pb2_grpc as image_grpc
from cloudimg.gateway.v1 import image_share_service_pb2 as share_pb
from cloudimg.gateway.v1 import image_share_service_pb2_grpc as share_grpc
from cloudimg.gateway.v1 import instance_service_pb2 as instance_pb
from cloudimg.gateway.v1 import instance_service_pb2_grpc as instance_grpc
from gateway.entrypoints import convert
from gateway.service_layer import accounts, image_lifecycle, images, instances
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
        found, token = await images.list_images(caller, request.region, types, request.platform,
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
        shares = await images.share_image(context.caller(), request.image_id, list(request.account_ids),
                                          request.request_id, self._deps)
        return share_pb.ShareImageResponse(shares=[convert.image_share(s) for s in shares])

    async def UnshareImage(self, request: share_pb.UnshareImageRequest, ctx: Context
                           ) -> share_pb.UnshareImageResponse:
        shares = await images.unshare_image(context.caller(), request.image_id, list(request.account_ids),
                                            request.request_id, self._deps)
        return share_pb.UnshareImageResponse(shares=[convert.image_share(s) for s in shares])

    async def ListImageShares(self, request: share_pb.ListImageSharesRequest, ctx: Context
                              ) -> share_pb.ListImageSharesResponse:
        shares, token = await images.list_image_shares(context.caller(), request.image_id, request.page_size,
                                                       request.page_token, self._deps)
        return share_pb.ListImageSharesResponse(shares=[convert.image_share(s) for s in shares],
                                                next_page_token=token)

    # Built by a later issue; until then they answer UNIMPLEMENTED with an ErrorInfo.
    async def AcceptImageShare(self, request: share_pb.AcceptImageShareRequest, ctx: Context
                              ) -> share_pb.AcceptImageShareResponse:
        raise not_available_yet("AcceptImageShare")

    async def RejectImageShare(self, request: share_pb.RejectImageShareRequest, ctx: Context
                              ) -> share_pb.RejectImageShareResponse:
        raise not_available_yet("RejectImageShare")

    async def GetTrustPolicy(self, request: share_pb.GetTrustPolicyRequest, ctx: Context
                            ) -> share_pb.GetTrustPolicyResponse:
        raise not_available_yet("GetTrustPolicy")

    async def UpdateTrustPolicy(self, request: share_pb.UpdateTrustPolicyRequest, ctx: Context
                               ) -> share_pb.UpdateTrustPolicyResponse:
        raise not_available_yet("UpdateTrustPolicy")


class InstanceServicer(instance_grpc.InstanceServiceServicer):
    def __init__(self, deps: Dependencies):
        self._deps = deps

    async def ListInstanceTypes(self, request: instance_pb.ListInstanceTypesRequest, ctx: Context
                                ) -> instance_pb.ListInstanceTypesResponse:
        types = await instances.list_instance_types(request.region, self._deps)
        return instance_pb.ListInstanceTypesResponse(instance_types=[convert.instance_type(t) for t in types])

    async def QuoteRunInstances(self, request: instance_pb.QuoteRunInstancesRequest, ctx: Context
                                ) -> instance_pb.QuoteRunInstancesResponse:
        quote = await instances.quote_run_instances(convert.launch_request(request), self._deps)
        return instance_pb.QuoteRunInstancesResponse(quote=convert.quote(quote))

    async def RunInstances(self, request: instance_pb.RunInstancesRequest, ctx: Context
                           ) -> instance_pb.RunInstancesResponse:
        launch = convert.launch_request(request, request.client_token)
        instance_ids, quote = await instances.run_instances(context.caller(), launch, request.dry_run, self._deps)
        return instance_pb.RunInstancesResponse(instance_ids=instance_ids, quote=convert.quote(quote))

    async def GetInstance(self, request: instance_pb.GetInstanceRequest, ctx: Context
                          ) -> instance_pb.GetInstanceResponse:
        found = await instances.get_instance(context.caller(), request.instance_id, self._deps)
        return instance_pb.GetInstanceResponse(instance=convert.instance(found))

    async def ListInstances(self, request: instance_pb.ListInstancesRequest, ctx: Context
                            ) -> instance_pb.ListInstancesResponse:
        found, token = await instances.list_instances(context.caller(), request.region, request.page_size,
                                                      request.page_token, self._deps)
        return instance_pb.ListInstancesResponse(instances=[convert.instance(i) for i in found],
                                                 next_page_token=token)

    # Built by a later issue; until then they answer UNIMPLEMENTED with an ErrorInfo.
    async def TerminateInstances(self, request: instance_pb.TerminateInstancesRequest, ctx: Context
                                ) -> instance_pb.TerminateInstancesResponse:
        raise not_available_yet("TerminateInstances")

    async def ResetInstance(self, request: instance_pb.ResetInstanceRequest, ctx: Context
                           ) -> instance_pb.ResetInstanceResponse:
        raise not_available_yet("ResetInstance")


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
        charges, token = await accounts.list_charges(request.page_size, request.page_token, self._deps.billing)
        return account_pb.ListChargesResponse(charges=[convert.charge(c) for c in charges], next_page_token=token)
