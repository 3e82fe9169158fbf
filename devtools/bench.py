"""`make bench`: RunInstances against a bare Health/Check on the same gateway, at 1 and N calls in flight;
then GetImage while the catalog imports a 2 GiB disk, and the catalog's peak memory meanwhile.

Starts the four services (devtools.stack) in a temporary folder and, for each target, runs a warmup
and then a measured load over one long-lived channel: at concurrency 1 (total / 10 calls: a call's
own latency) and at --concurrency (--total calls or --duration seconds, whichever ends first: ghz's
-n with -x). Prints ghz's summaries and the RunInstances / Check throughput ratio. Each measured run
is written as ghz's JSON report (devtools.loadgen) to build/bench/<run>.json, one report per run as
ghz writes them; build/bench.json is a summary of this benchmark (the ratio, the import figures, each
run's headline numbers and its report's path), not a ghz report. Exits 1 when more than 1 % of any
measured run's calls failed.

    python -m devtools.bench [--concurrency 50] [--total 2000] [--duration 10] [--json-only]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import re
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from pathlib import Path

import grpc
from cloudimg.catalog.v1 import catalog_service_pb2 as catalog_pb2
from cloudimg.catalog.v1 import catalog_service_pb2_grpc as catalog_pb2_grpc
from cloudimg.gateway.v1 import (
    image_service_pb2,
    image_service_pb2_grpc,
    instance_service_pb2,
    instance_service_pb2_grpc,
)
from grpc_health.v1 import health_pb2, health_pb2_grpc

from catalog_service.domain.seed import seed_image_id
from devtools.loadgen import Report, RunOptions, run_load
from devtools.stack import Stack

BUILD = Path(__file__).resolve().parent.parent / "build"
OUTPUT = BUILD / "bench.json"
REPORTS = BUILD / "bench"
MAX_FAILURE_RATE = 0.01
CALL_TIMEOUT = 10.0
REGION = "ap-guangzhou"
IMPORT_BYTES = 2 << 30


Call = Callable[[], Awaitable[object]]


def options(name: str, call: str, addr: str, concurrency: int, total: int, args: argparse.Namespace) -> RunOptions:
    """A measured run as ghz's flags would give it: -c, -n and -x (at most --duration seconds); calls still
    in flight at the limit finish (their own deadline bounds them) rather than count as Canceled."""
    return RunOptions(name=name, call=call, host=addr, insecure=True, concurrency=concurrency, total=total,
                      max_duration=args.duration, duration_stop="wait", timeout=CALL_TIMEOUT)


def targets(channel: grpc.aio.Channel, api_key: str, stranger_key: str) -> dict[str, tuple[str, Call]]:
    """Each target's name: the method it calls (as ghz's --call) and one call of it."""
    instances = instance_service_pb2_grpc.InstanceServiceStub(channel)
    images = image_service_pb2_grpc.ImageServiceStub(channel)
    health = health_pb2_grpc.HealthStub(channel)
    launch = instance_service_pb2.RunInstancesRequest(
        region=REGION, image_id=seed_image_id(REGION, "ubuntu-2204-x86"), instance_type="S5.MEDIUM4",
        instance_count=1)
    metadata = (("authorization", f"Bearer {api_key}"),)
    check = health_pb2.HealthCheckRequest()
    stranger = (("authorization", f"Bearer {stranger_key}"),)

    def hidden(image_id: str) -> Callable[[], Awaitable[object]]:
        """GetImage by a stranger, whose answer is NOT_FOUND (counted as OK here)."""
        request = image_service_pb2.GetImageRequest(image_id=image_id)

        async def call() -> object:
            try:
                return await images.GetImage(request, metadata=stranger, timeout=CALL_TIMEOUT)
            except grpc.aio.AioRpcError as error:
                if error.code() != grpc.StatusCode.NOT_FOUND:
                    raise
                return error

        return call

    get_image = "cloudimg.gateway.v1.ImageService/GetImage"
    return {
        "RunInstances": ("cloudimg.gateway.v1.InstanceService/RunInstances",
                         lambda: instances.RunInstances(launch, metadata=metadata, timeout=CALL_TIMEOUT)),
        "Check": ("grpc.health.v1.Health/Check", lambda: health.Check(check, timeout=CALL_TIMEOUT)),
        # An image that exists but is not the caller's must answer exactly as fast as a missing one.
        "GetImage-private": (get_image, hidden(seed_image_id(REGION, "alice-web"))),
        "GetImage-missing": (get_image, hidden("img-zz000000")),
    }


def _rss_mib(pid: int) -> float:
    """The resident set of a process now, in MiB (Linux)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def _sparse_file(path: Path, size: int) -> None:
    """A file of size bytes that takes no disk space (all a hole)."""
    with open(path, "wb") as sparse:
        sparse.truncate(size)


async def import_while_serving(stack: Stack, api_key: str, args: argparse.Namespace
                               ) -> tuple[dict[str, float], list[Report]]:
    """GetImage at one call in flight, idle and while the catalog imports a sparse 2 GiB raw disk, and
    the catalog's peak RSS meanwhile: a running job must neither stall calls nor hold the image in memory."""
    disk = stack.imports_dir / "bench-2g.raw"
    await asyncio.to_thread(_sparse_file, disk, IMPORT_BYTES)
    catalog_pid = stack.processes["catalog"].pid
    meta = (("x-cloudimg-internal-token", stack.internal_token), ("x-cloudimg-account-id", "100000000002"))
    get = image_service_pb2.GetImageRequest(image_id=seed_image_id(REGION, "ubuntu-2204-x86"))
    auth = (("authorization", f"Bearer {api_key}"),)
    async with grpc.aio.insecure_channel(stack.gateway_addr) as gateway, \
            grpc.aio.insecure_channel(stack.addr("catalog")) as internal:
        images = image_service_pb2_grpc.ImageServiceStub(gateway)
        catalog = catalog_pb2_grpc.CatalogServiceStub(internal)
        call = lambda: images.GetImage(get, metadata=auth, timeout=CALL_TIMEOUT)  # noqa: E731
        method = "cloudimg.gateway.v1.ImageService/GetImage"
        idle = await run_load(call, options("GetImage idle c=1", method, stack.gateway_addr, 1,
                                            max(1, args.total // 10), args), warmup=20)
        rss_before = _rss_mib(catalog_pid)
        started = time.monotonic()
        image = (await catalog.ImportImage(catalog_pb2.ImportImageRequest(
            region=REGION, name="bench 2 GiB", format=catalog_pb2.IMAGE_FORMAT_RAW, os_name="Debian 12",
            os_type=catalog_pb2.OS_TYPE_LINUX, architecture=catalog_pb2.ARCHITECTURE_X86_64,
            source_uri=disk.resolve().as_uri()), metadata=meta)).image
        peak = rss_before
        busy = None
        done = asyncio.Event()

        async def watch() -> None:
            nonlocal peak
            while True:
                peak = max(peak, _rss_mib(catalog_pid))
                state = (await catalog.GetImage(catalog_pb2.GetImageRequest(image_id=image.image_id),
                                                metadata=meta)).image.state
                if state != catalog_pb2.IMAGE_STATE_IMPORTING:
                    done.set()
                    return
                await asyncio.sleep(0.05)

        watcher = asyncio.create_task(watch())
        busy = await run_load(call, options("GetImage during import c=1", method, stack.gateway_addr, 1,
                                            1_000_000, args))
        await asyncio.wait_for(watcher, 600)
        seconds = time.monotonic() - started
    disk.unlink()
    return {"getimage_idle_p50_ms": idle.latency_ms(50), "getimage_during_import_p50_ms": busy.latency_ms(50),
            "catalog_rss_before_mib": rss_before, "catalog_rss_peak_mib": peak, "import_seconds": seconds}, [idle, busy]


async def bench(addr: str, api_key: str, stranger_key: str, args: argparse.Namespace) -> list[Report]:
    levels = sorted({1, args.concurrency})
    reports = []
    async with grpc.aio.insecure_channel(addr) as channel:
        for name, (method, call) in targets(channel, api_key, stranger_key).items():
            for concurrency in levels:
                total = args.total if concurrency > 1 else max(1, args.total // 10)
                run = options(f"{name} c={concurrency}", method, addr, concurrency, total, args)
                report = await run_load(call, run, warmup=min(total, max(20, 2 * concurrency)))
                reports.append(report)
                if not args.json_only:
                    print(report.summary(), flush=True)
    return reports


def report_file(name: str) -> str:
    """A run's report file name: "RunInstances c=50" -> "RunInstances-c50.json"."""
    return re.sub(r"[^A-Za-z0-9_.-]+", "-", name.replace("=", "")).strip("-") + ".json"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m devtools.bench", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--concurrency", type=int, default=50, help="calls in flight for the loaded run (50)")
    parser.add_argument("--total", type=int, default=2000, help="calls per loaded run; total/10 at concurrency 1")
    parser.add_argument("--duration", type=float, default=10.0, help="at most this many seconds per run (10)")
    parser.add_argument("--json-only", action="store_true", help="print only the JSON paths")
    args = parser.parse_args(argv)
    if args.concurrency < 1 or args.total < 1 or args.duration <= 0:
        parser.error("--concurrency and --total must be >= 1 and --duration > 0")

    with tempfile.TemporaryDirectory(prefix="cloudimg-bench-") as tmp, Stack(Path(tmp)) as stack:
        reports = asyncio.run(bench(stack.gateway_addr, stack.api_keys["alice"], stack.api_keys["bob"], args))
        importing, import_runs = asyncio.run(import_while_serving(stack, stack.api_keys["alice"], args))

    by_name = {r.name: r for r in reports}
    loaded = f"c={args.concurrency}"
    check_rps = by_name[f"Check {loaded}"].rps
    ratio = by_name[f"RunInstances {loaded}"].rps / check_rps if check_rps else 0.0
    failed = [r for r in reports if r.failure_rate > MAX_FAILURE_RATE]
    REPORTS.mkdir(parents=True, exist_ok=True)
    for stale in REPORTS.glob("*.json"):
        stale.unlink()
    runs = []
    for r in reports + import_runs:
        path = REPORTS / report_file(r.name)
        path.write_text(r.render("pretty") + "\n")
        runs.append({"name": r.name, "report": str(path.relative_to(BUILD.parent)), "count": r.count,
                     "rps": r.rps, "p50_ms": r.latency_ms(50), "p99_ms": r.latency_ms(99),
                     "failed": r.count - r.ok})
    OUTPUT.write_text(json.dumps({
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "concurrency": args.concurrency,
        "run_instances_to_check_rps_ratio": ratio,
        "runs": runs,
        "import": importing,
    }, indent=2) + "\n")

    if not args.json_only:
        print(f"\nRunInstances rps / Check rps at {loaded}: {ratio:.3f}")
        private = by_name["GetImage-private c=1"].latency_ms(50)
        missing = by_name["GetImage-missing c=1"].latency_ms(50)
        print(f"NOT_FOUND p50 at c=1: another account's private image {private:.2f} ms, a missing id "
              f"{missing:.2f} ms (ratio {private / missing if missing else 0:.2f}; 1.00 leaks nothing)")
        idle, busy = importing["getimage_idle_p50_ms"], importing["getimage_during_import_p50_ms"]
        print(f"GetImage p50 at c=1: idle {idle:.2f} ms, while a 2 GiB import runs {busy:.2f} ms "
              f"(ratio {busy / idle if idle else 0:.2f}; goal <= 2)")
        print(f"catalog RSS: {importing['catalog_rss_before_mib']:.0f} MiB before the import, peak "
              f"{importing['catalog_rss_peak_mib']:.0f} MiB during it ({importing['import_seconds']:.1f} s)")
        for r in reports:
            print(f"  {r.name:<18} {r.rps:8.1f} rps  p50 {r.latency_ms(50):7.2f} ms  p99 {r.latency_ms(99):7.2f} ms  "
                  f"failed {r.count - r.ok}/{r.count}")
    print(OUTPUT)
    print(REPORTS)
    for r in failed:
        print(f"FAILED: {r.name}: {r.count - r.ok} of {r.count} calls failed: {r.error_distribution}",
              file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
