"""python -m sharing_service"""

from chassis.server import run
from sharing_service.bootstrap import bootstrap
from sharing_service.settings import SharingSettings

if __name__ == "__main__":
    run("sharing", SharingSettings, bootstrap)
