"""python -m gateway            serve the public API
python -m gateway demo-accounts  create the demo accounts and print new API keys for them (JSON)
python -m gateway issue-key ACCOUNT_ID NAME  create the account if missing, print a new API key for it (JSON)"""

from __future__ import annotations

import json
import re
import sys
from collections.abc import Sequence

from chassis.server import run
from chassis.settings import load_settings
from gateway.bootstrap import bootstrap, open_database
from gateway.domain.api_keys import Account
from gateway.service_layer.accounts import issue_demo_keys, issue_keys
from gateway.settings import GatewayDatabaseSettings, GatewaySettings

ACCOUNT_ID = re.compile(r"[0-9]{12}")


def _issue(accounts: Sequence[Account] | None) -> int:
    db, new_uow = open_database(load_settings(GatewayDatabaseSettings).database_url)
    try:
        print(json.dumps(issue_demo_keys(new_uow) if accounts is None else issue_keys(new_uow, accounts), indent=2))
    finally:
        db.dispose()
    return 0


def main(argv: list[str]) -> int:
    if argv[:1] == ["demo-accounts"] and len(argv) == 1:
        return _issue(None)
    if argv[:1] == ["issue-key"] and len(argv) == 3:
        if not ACCOUNT_ID.fullmatch(argv[1]) or not argv[2].strip():
            print("cloudimg: issue-key: ACCOUNT_ID is 12 digits, NAME is not empty", file=sys.stderr)
            return 2
        return _issue([Account(argv[1], argv[2])])
    if argv:
        print(__doc__, file=sys.stderr)
        return 2
    run("gateway", GatewaySettings, bootstrap)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
