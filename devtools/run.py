"""make run: the four services on SQLite on loopback, until Ctrl-C."""

from __future__ import annotations

import os
import signal
import sys
import threading
from pathlib import Path

from devtools.stack import Stack


def main() -> int:
    data = Path(os.environ.get("CLOUDIMG_DATA_DIR", "data"))
    ports = {"gateway": 50050, "catalog": 50051, "sharing": 50052, "billing": 50053}
    stack = Stack(data, ports=dict(ports))
    print(f"starting catalog, sharing, billing and the gateway (data and logs in {data}/) ...", flush=True)
    stopped = threading.Event()
    signal.signal(signal.SIGINT, lambda *_: stopped.set())
    signal.signal(signal.SIGTERM, lambda *_: stopped.set())
    try:
        stack.start()
        print(f"\ncloudimg is up. The gateway listens on {stack.gateway_addr}\n")
        for name, key in stack.api_keys.items():
            print(f"  {name:<6} API key: {key}")
        print("\nTry it:")
        print(f"  export CLOUDIMG_ENDPOINT={stack.gateway_addr}")
        print(f"  export CLOUDIMG_API_KEY={stack.api_keys['alice']}")
        print(f"  export BOB={stack.api_keys['bob']}   # bob's key, for the README's trust tour")
        print("  .venv/bin/cloudimg images --region ap-guangzhou")
        print(f"\nImports read disk images from {stack.imports_dir.resolve()}/ (file://...) and from")
        print("http://127.0.0.1 and http://localhost URLs, which make run allows (CATALOG_IMPORT_ALLOWED_SOURCES).")
        print("\nCtrl-C stops everything.", flush=True)
        stopped.wait()
    finally:
        print("\nstopping ...", flush=True)
        stack.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
