"""The catalog's gRPC servicer: proto in, handler, proto out. Nothing else."""

from __future__ import annotations

from collections.abc import Mapping

import grpc

from catalog_service.domain.model import (
    Architecture, Image, ImageQuery, ImageSource, ImageState, ImageType, OsType, Region,
)
from catalog_service.service_layer import handlers
from catalog_service.service_layer.handlers import UnitOfWorkFactory
from chassis import context
from chassis.errors import not_available_yet
from chassis.convert import EnumMap, timestamp
from cloudimg.catalog.v1 import catalog_service_pb2 as pb
from cloudimg.catalog.v1 import catalog_service_pb2_grpc as pb_grpc

IMAGE_TYPES = EnumMap(pb.ImageType, "IMAGE_TYPE", ImageType)
IMAGE_STATES = EnumMap(pb.ImageState, "IMAGE_STATE", ImageState)
OS_TYPES = EnumMap(pb.OsType, "OS_TYPE", OsType)
ARCHITECTURES = EnumMap(pb.Architecture, "ARCHITECTURE", Architecture)
SOURCES = EnumMap(pb.ImageSource, "IMAGE_SOURCE", ImageSource)


def image_to_proto(image: Image) -> pb.Image:
    return pb.Image(
        image_id=image.image_id, region=image.region, image_type=IMAGE_TYPES.to_proto(image.image_type),
        state=IMAGE_STATES.to_proto(image.state), name=image.name, description=image.description,
        owner_account_id=image.owner_account_id, platform=image.platform, os_name=image.os_name,
        os_type=OS_TYPES.to_proto(image.os_type), architecture=ARCHITECTURES.to_proto(image.architecture),
        size_gb=image.size_gb, source=SOURCES.to_proto(image.source), base_image_id=image.base_image_id,
        progress_percent=image.progress_percent, create_time=timestamp(image.create_time),
        marketplace_product_id=image.marketplace_product_id, marketplace_provider=image.marketplace_provider,
    )


class CatalogServicer(pb_grpc.CatalogServiceServicer):
    def __init__(self, regions: Mapping[str, Region], new_uow: UnitOfWorkFactory):
        self._regions = regions
        self._new_uow = new_uow
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

    # Built by a later issue; until then they answer UNIMPLEMENTED with an ErrorInfo.
    async def CreateImage(self, request: pb.CreateImageRequest, ctx: grpc.aio.ServicerContext
                         ) -> pb.CreateImageResponse:
        raise not_available_yet("CreateImage")

    async def ImportImage(self, request: pb.ImportImageRequest, ctx: grpc.aio.ServicerContext
                         ) -> pb.ImportImageResponse:
        raise not_available_yet("ImportImage")

    async def UpdateImage(self, request: pb.UpdateImageRequest, ctx: grpc.aio.ServicerContext
                         ) -> pb.UpdateImageResponse:
        raise not_available_yet("UpdateImage")

    async def DeleteImage(self, request: pb.DeleteImageRequest, ctx: grpc.aio.ServicerContext
                         ) -> pb.DeleteImageResponse:
        raise not_available_yet("DeleteImage")

    async def SyncImage(self, request: pb.SyncImageRequest, ctx: grpc.aio.ServicerContext) -> pb.SyncImageResponse:
        raise not_available_yet("SyncImage")

    async def GetImageQuota(self, request: pb.GetImageQuotaRequest, ctx: grpc.aio.ServicerContext
                           ) -> pb.GetImageQuotaResponse:
        raise not_available_yet("GetImageQuota")
