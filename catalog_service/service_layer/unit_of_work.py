from __future__ import annotations

from catalog_service.adapters.repository import CatalogRepository
from chassis.db import UnitOfWork


class CatalogUnitOfWork(UnitOfWork):
    images: CatalogRepository

    def _begin(self) -> None:
        self.images = CatalogRepository(self.connection)
