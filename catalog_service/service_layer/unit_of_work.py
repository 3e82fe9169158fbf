from __future__ import annotations

import dataclasses
from datetime import datetime
from typing import Any

from catalog_service.adapters.repository import CatalogRepository
from catalog_service.adapters.tables import REQUESTS
from catalog_service.domain.model import (
    Architecture,
    Image,
    ImageSource,
    ImageState,
    ImageType,
    OsType,
)
from chassis.db import UnitOfWork
from chassis.idempotency import RequestLedger, ResponseFormat
from chassis.stored import Document

_ENUMS = {"image_type": ImageType, "state": ImageState, "os_type": OsType, "architecture": Architecture,
          "source": ImageSource}
_FIELDS = {f.name: f for f in dataclasses.fields(Image)}


def _encode(images: list[Image]) -> list[dict[str, Any]]:
    encoded = []
    for image in images:
        values = {name: getattr(image, name) for name in _FIELDS}
        values["create_time"] = image.create_time.isoformat()
        encoded.append({k: (v.value if k in _ENUMS else v) for k, v in values.items()})
    return encoded


def _decode(stored: Any) -> list[Image]:
    """The images of a version 1 answer, their fields by name: one added to Image after the answer was kept, and
    absent from it, takes its default; one no longer in Image is dropped."""
    images = []
    for values in stored:
        known = {k: v for k, v in values.items() if k in _FIELDS}
        for name, enum_type in _ENUMS.items():
            known[name] = enum_type(known[name])
        known["create_time"] = datetime.fromisoformat(known["create_time"])
        images.append(Image(**known))
    return images


# What a mutation answered, kept by request_id: the images it made or changed (none for a delete). Version 1,
# the only one ever written (b0e6f8c on): a list of images, their fields by name, enums by value, create_time
# in ISO 8601.
IMAGES_RESPONSE = ResponseFormat.of(Document("catalog mutation answer", 1), encode=_encode, decode=_decode)


class CatalogUnitOfWork(UnitOfWork):
    images: CatalogRepository
    requests: RequestLedger[list[Image]]

    def _begin(self) -> None:
        self.images = CatalogRepository(self.connection)
        self.requests = RequestLedger(self.connection, REQUESTS, IMAGES_RESPONSE)
