"""python -m billing_service"""

from billing_service.bootstrap import bootstrap
from billing_service.settings import BillingSettings
from chassis.server import run

if __name__ == "__main__":
    run("billing", BillingSettings, bootstrap)
