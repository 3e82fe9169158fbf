"""python -m gateway            serve the public API
python -m gateway demo-accounts  create the demo accounts and print new API keys for them (JSON)"""

from __future__ import annotations

import json
import sys

from chassis.server import run
from chassis.settings import load_settings
from gateway.bootstrap import bootstrap, open_database
from gateway.service_layer.accounts import issue_demo_keys
from gateway.settings import GatewayDatabaseSettings, GatewaySettings


def main(argv: list[str]) -> int:
    if argv[:1] == ["demo-accounts"]:
        db, new_uow = open_database(load_settings(GatewayDatabaseSettings).database_url)
        print(json.dumps(issue_demo_keys(new_uow), indent=2))
        db.dispose()
        return 0
    if argv:
        print(__doc__, file=sys.stderr)
        return 2
    run("gateway", GatewaySettings, bootstrap)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
