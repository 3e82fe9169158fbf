"""The catalog's gRPC servicer: proto in, handler, proto out. Nothing else."""

from __future__ import annotations

import asyncio
from collections.abc import Mapping

import grpc
from cloudimg.catalog.v1 import catalog_service_pb2 as pb
from cloudimg.catalog.v1 import catalog_service_pb2_grpc as pb_grpc

from catalog_service.domain.model import (
    Architecture,
    Image,
    ImageFormat,
    ImageQuery,
    ImageSource,
    ImageState,
    ImageType,
    OsType,
    Region,
)
from catalog_service.service_layer import handlers, lifecycle
from catalog_service.service_layer.handlers import UnitOfWorkFactory
from chassis import context
from chassis.convert import EnumMap, timestamp

IMAGE_TYPES = EnumMap(pb.ImageType, "IMAGE_TYPE", ImageType)
IMAGE_STATES = EnumMap(pb.ImageState, "IMAGE_STATE", ImageState)
OS_TYPES = EnumMap(pb.OsType, "OS_TYPE", OsType)
ARCHITECTURES = EnumMap(pb.Architecture, "ARCHITECTURE", Architecture)
SOURCES = EnumMap(pb.ImageSource, "IMAGE_SOURCE", ImageSource)
FORMATS = EnumMap(pb.ImageFormat, "IMAGE_FORMAT", ImageFormat)


def image_to_proto(image: Image) -> pb.Image:
    return pb.Image(
        image_id=image.image_id, region=image.region, image_type=IMAGE_TYPES.to_proto(image.image_type),
        state=IMAGE_STATES.to_proto(image.state), name=image.name, description=image.description,
        owner_account_id=image.owner_account_id, platform=image.platform, os_name=image.os_name,
        os_type=OS_TYPES.to_proto(image.os_type), architecture=ARCHITECTURES.to_proto(image.architecture),
        size_gb=image.size_gb, source=SOURCES.to_proto(image.source), base_image_id=image.base_image_id,
        progress_percent=image.progress_percent, create_time=timestamp(image.create_time),
        marketplace_product_id=image.marketplace_product_id, marketplace_provider=image.marketplace_provider,
        checksum_sha256=image.checksum_sha256, state_reason=image.state_reason,
    )


class CatalogServicer(pb_grpc.CatalogServiceServicer):
    def __init__(self, regions: Mapping[str, Region], new_uow: UnitOfWorkFactory, images: lifecycle.Lifecycle):
        self._regions = regions
        self._new_uow = new_uow
        self._lifecycle = images
        self._regions_response = pb.ListRegionsResponse(regions=[
            pb.Region(region_id=r.region_id, display_name=r.display_name, mainland=r.mainland,
                      sync_enabled=r.sync_enabled)
            for r in regions.values()
        ])

    async def ListRegions(self, request: pb.ListRegionsRequest, ctx: grpc.aio.ServicerContext
                          ) -> pb.ListRegionsResponse:
        return self._regions_response

    async def GetImage(self, request: pb.GetImageRequest, ctx: grpc.aio.ServicerContext) -> pb.GetImageResponse:
        image = handlers.get_image(request.image_id, new_uow=self._new_uow)
        return pb.GetImageResponse(image=image_to_proto(image))

    async def BatchGetImages(self, request: pb.BatchGetImagesRequest, ctx: grpc.aio.ServicerContext
                             ) -> pb.BatchGetImagesResponse:
        images, missing = handlers.batch_get_images(list(request.image_ids), new_uow=self._new_uow)
        return pb.BatchGetImagesResponse(images=[image_to_proto(i) for i in images], missing_image_ids=missing)

    async def ListImages(self, request: pb.ListImagesRequest, ctx: grpc.aio.ServicerContext
                         ) -> pb.ListImagesResponse:
        query = ImageQuery(
            region=request.region,
            viewer_account_id=context.caller().account_id,
            image_types=frozenset(IMAGE_TYPES.from_proto(t, "image_types") for t in request.image_types),
            shared_image_ids=frozenset(request.shared_image_ids),
            platform=request.platform,
            name_filter=request.name_filter,
        )
        images, next_token = handlers.list_images(
            query, request.page_size, request.page_token, regions=self._regions, new_uow=self._new_uow
        )
        return pb.ListImagesResponse(images=[image_to_proto(i) for i in images], next_page_token=next_token)

    async def CreateImage(self, request: pb.CreateImageRequest, ctx: grpc.aio.ServicerContext
                          ) -> pb.CreateImageResponse:
        image = lifecycle.create_image(context.caller().account_id, lifecycle.CreateRequest(
            region=request.region, instance_id=request.instance_id, name=request.name,
            description=request.description, base_image_id=request.base_image_id, size_gb=request.size_gb,
            request_id=request.request_id, dry_run=request.dry_run), self._lifecycle)
        return pb.CreateImageResponse(image=image_to_proto(image))

    async def ImportImage(self, request: pb.ImportImageRequest, ctx: grpc.aio.ServicerContext
                          ) -> pb.ImportImageResponse:
        # In a thread: checking the source resolves its host name.
        image = await asyncio.to_thread(lifecycle.import_image, context.caller().account_id, lifecycle.ImportRequest(
            region=request.region, name=request.name, description=request.description,
            format=FORMATS.from_proto(request.format, "format"), os_name=request.os_name,
            os_type=OS_TYPES.from_proto(request.os_type, "os_type"),
            architecture=ARCHITECTURES.from_proto(request.architecture, "architecture"),
            source_uri=request.source_uri, request_id=request.request_id, dry_run=request.dry_run), self._lifecycle)
        return pb.ImportImageResponse(image=image_to_proto(image))

    async def UpdateImage(self, request: pb.UpdateImageRequest, ctx: grpc.aio.ServicerContext
                          ) -> pb.UpdateImageResponse:
        image = lifecycle.update_image(context.caller().account_id, request.image_id, request.name,
                                       request.description, list(request.update_paths), request.request_id,
                                       self._lifecycle)
        return pb.UpdateImageResponse(image=image_to_proto(image))

    async def DeleteImage(self, request: pb.DeleteImageRequest, ctx: grpc.aio.ServicerContext
                          ) -> pb.DeleteImageResponse:
        lifecycle.delete_image(context.caller().account_id, request.image_id, request.request_id,
                               request.validate_only, self._lifecycle)
        return pb.DeleteImageResponse()

    async def SyncImage(self, request: pb.SyncImageRequest, ctx: grpc.aio.ServicerContext) -> pb.SyncImageResponse:
        images = lifecycle.sync_image(context.caller().account_id, request.image_id,
                                      list(request.destination_regions), request.request_id, request.dry_run,
                                      self._lifecycle)
        return pb.SyncImageResponse(images=[image_to_proto(i) for i in images])

    async def GetImageQuota(self, request: pb.GetImageQuotaRequest, ctx: grpc.aio.ServicerContext
                            ) -> pb.GetImageQuotaResponse:
        quota = lifecycle.image_quota(context.caller().account_id, request.region, self._lifecycle)
        return pb.GetImageQuotaResponse(
            custom_image_limit=quota.custom_image_limit, custom_image_used=quota.custom_image_used,
            daily_operation_limit=quota.daily_operation_limit, daily_operation_used=quota.daily_operation_used)
