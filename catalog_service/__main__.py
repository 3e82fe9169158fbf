"""python -m catalog_service"""

from catalog_service.bootstrap import bootstrap
from catalog_service.settings import CatalogSettings
from chassis.server import run

if __name__ == "__main__":
    run("catalog", CatalogSettings, bootstrap)
