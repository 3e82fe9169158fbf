"""`make bench`: the performance goals of issue 9, each measured and printed as a figure with its target and
PASS/FAIL, on SQLite and then on PostgreSQL (when the server at CLOUDIMG_BENCH_PG_URL answers).

For each database it starts a bare grpc.aio echo (devtools.echo: Health/Check in one Python process, the
baseline) and the four services (devtools.stack) in a temporary folder, then, over one long-lived channel per
target, with a warmup before each measured run (ghz's -c, -n and -x: devtools.loadgen):
- P1  RunInstances (1 instance of a public image), QuoteRunInstances and GetImage at --concurrency, as
      ratios of the echo's rps in the same run, 0 errors; RunInstances' p50 with one call in flight;
- P2  the CPU of a launch of 100 instances against a launch of 1 (every service process's CPU per call; the
      two measured in turn three times more, medians compared);
      beside them, the cost of the hops: the gateway's Health/Check (no hop, no caller), GetImage of a public
      image (answered by the gateway alone: the image kept, its verdict leased) and of the caller's own custom
      image (two hops: catalog and sharing) at --concurrency;
- P3  ListImages' first page, a page 20 pages deep and GetImage (one call in flight, p50) with 1,000,000
      images of other accounts in the region and 10,000 of the caller's own (devtools.seed_images), against
      the same with 1,000 of other accounts in another region (--listing-others sets the large number); the
      two measured in turn three times, medians compared;
- P4  each service SERVING after a restart, idle RSS, and the RSS after --launches launches against the
      RSS after a tenth of them;
- P5  all of it again on PostgreSQL, side by side.
On SQLite it also measures GetImage while the catalog imports a sparse 2 GiB disk, and NOT_FOUND timing.
Each measured run is written as ghz's JSON report to build/bench/<database>-<run>.json; build/bench.json
holds the goals (figure, target, pass) and each run's headline numbers. Exits 1 when more than 1 % of a
measured run's calls failed. Compare ratios from one run, not absolute figures across runs.

    python -m devtools.bench [--concurrency 50] [--total 2000] [--duration 10] [--launches 100000]
                             [--listing-others 1000000] [--databases sqlite,postgres] [--json-only]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import re
import secrets
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import grpc
import psutil
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
from chassis.db import create_db_engine
from devtools import seed_images
from devtools.loadgen import Report, RunOptions, run_load
from devtools.stack import SERVICES, Stack, free_port, wait_serving

BUILD = Path(__file__).resolve().parent.parent / "build"
OUTPUT = BUILD / "bench.json"
REPORTS = BUILD / "bench"
MAX_FAILURE_RATE = 0.01
CALL_TIMEOUT = 10.0
REGION = "ap-guangzhou"
ALICE = "100000000001"
IMPORT_BYTES = 2 << 30
PG_URL = os.environ.get("CLOUDIMG_BENCH_PG_URL", "postgresql://root@127.0.0.1:5432/test")
LISTING_PAGE = 50
DEEP_PAGE = 20
LISTING_OWN = 10_000
LISTING_SMALL = 1_000
LISTING_REPETITIONS = 3
P2_REPETITIONS = 3
# P3's small case lives in another region of the same catalog, so that small and large can be measured in turn.
SMALL_REGION = "ap-shanghai"

Call = Callable[[], Awaitable[object]]


@dataclass
class Goal:
    goal: str  # "P1"
    what: str
    figure: float | None  # None: not measured
    target: str  # "≥ 0.20", "≤ 3 ms"
    passed: bool | None
    database: str = ""

    def row(self) -> str:
        shown = "n/a" if self.figure is None else f"{self.figure:.3g}"
        verdict = "n/a" if self.passed is None else "PASS" if self.passed else "FAIL"
        return f"  {self.goal:<3} {self.database:<9} {self.what:<64} {shown:>9}  {self.target:<8} {verdict}"


def at_least(goal: str, what: str, figure: float | None, target: float, database: str, unit: str = "") -> Goal:
    return Goal(goal, what, figure, f"≥ {target:g}{unit}", None if figure is None else figure >= target, database)


def at_most(goal: str, what: str, figure: float | None, target: float, database: str, unit: str = "") -> Goal:
    return Goal(goal, what, figure, f"≤ {target:g}{unit}", None if figure is None else figure <= target, database)


@dataclass
class Measured:
    """One database's runs and figures."""

    database: str
    reports: list[Report] = field(default_factory=list)
    cpu_ms: dict[str, float] = field(default_factory=dict)  # run name -> CPU ms per call, all servers
    figures: dict[str, float] = field(default_factory=dict)

    def report(self, name: str) -> Report:
        return next(r for r in self.reports if r.name == name)


def options(name: str, call: str, addr: str, concurrency: int, total: int, args: argparse.Namespace) -> RunOptions:
    """A measured run as ghz's flags would give it: -c, -n and -x (at most --duration seconds); calls still
    in flight at the limit finish (their own deadline bounds them) rather than count as Canceled."""
    return RunOptions(name=name, call=call, host=addr, insecure=True, concurrency=concurrency, total=total,
                      max_duration=args.duration, duration_stop="wait", timeout=CALL_TIMEOUT)


def cpu_seconds(pids: list[int]) -> float:
    total = 0.0
    for pid in pids:
        times = psutil.Process(pid).cpu_times()
        total += times.user + times.system
    return total


def rss_mib(pid: int) -> float:
    return float(psutil.Process(pid).memory_info().rss) / (1 << 20)


async def measure(measured: Measured, pids: list[int], call: Call, run: RunOptions, warmup: int,
                  quiet: bool) -> Report:
    """A run, and the CPU its calls cost every server process (ms per call)."""
    for _ in range(warmup):
        with contextlib.suppress(grpc.RpcError):
            await call()
    before = cpu_seconds(pids)
    report = await run_load(call, run)
    spent = cpu_seconds(pids) - before
    measured.reports.append(report)
    measured.cpu_ms[run.name] = spent * 1000 / max(report.count, 1)
    if not quiet:
        print(f"  {measured.database:<9} {report.name:<34} {report.rps:8.1f} rps  p50 {report.latency_ms(50):7.2f} ms"
              f"  p99 {report.latency_ms(99):7.2f} ms  cpu {measured.cpu_ms[run.name]:6.2f} ms/call  failed "
              f"{report.count - report.ok}/{report.count}", flush=True)
    return report


@contextlib.contextmanager
def echo_server() -> Iterator[tuple[str, int]]:
    port = free_port()
    addr = f"127.0.0.1:{port}"
    process = subprocess.Popen([sys.executable, "-m", "devtools.echo", addr])
    try:
        wait_serving(addr, 30)
        yield addr, process.pid
    finally:
        process.terminate()
        process.wait(10)


@contextlib.contextmanager
def postgres_databases() -> Iterator[dict[str, str] | None]:
    """Four new databases on the PostgreSQL server (dropped afterwards), or None when it does not answer."""
    try:
        import psycopg

        admin = psycopg.connect(PG_URL.replace("postgresql+psycopg://", "postgresql://"), autocommit=True,
                                connect_timeout=3)
    except Exception as exc:  # no server: P5 is reported as not measured, with the reason
        print(f"bench: PostgreSQL at {PG_URL} does not answer ({exc}); P5 not measured", file=sys.stderr)
        yield None
        return
    suffix = secrets.token_hex(4)
    names = {service: f"bench_{service}_{suffix}" for service in SERVICES}
    base = PG_URL.rsplit("/", 1)[0].replace("postgresql://", "postgresql+psycopg://")
    try:
        for name in names.values():
            admin.execute(f'CREATE DATABASE "{name}"')
        yield {service: f"{base}/{name}" for service, name in names.items()}
    finally:
        for name in names.values():
            admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        admin.close()


def targets(channel: grpc.aio.Channel, api_key: str) -> dict[str, tuple[str, Call]]:
    instances = instance_service_pb2_grpc.InstanceServiceStub(channel)
    images = image_service_pb2_grpc.ImageServiceStub(channel)
    health = health_pb2_grpc.HealthStub(channel)
    public = seed_image_id(REGION, "ubuntu-2204-x86")
    metadata = (("authorization", f"Bearer {api_key}"),)

    def launch(count: int) -> instance_service_pb2.RunInstancesRequest:
        return instance_service_pb2.RunInstancesRequest(region=REGION, image_id=public, instance_type="S5.MEDIUM4",
                                                        instance_count=count)

    one, hundred = launch(1), launch(100)
    quote = instance_service_pb2.QuoteRunInstancesRequest(region=REGION, image_id=public,
                                                          instance_type="S5.MEDIUM4", instance_count=1)
    get = image_service_pb2.GetImageRequest(image_id=public)
    # Alice's own custom image: the catalog is asked for it and sharing for its verdict every time (two hops).
    get_custom = image_service_pb2.GetImageRequest(image_id=seed_image_id(REGION, "alice-web"))
    check = health_pb2.HealthCheckRequest()
    return {
        "Check": ("grpc.health.v1.Health/Check", lambda: health.Check(check, timeout=CALL_TIMEOUT)),
        "GetImage": ("cloudimg.gateway.v1.ImageService/GetImage",
                     lambda: images.GetImage(get, metadata=metadata, timeout=CALL_TIMEOUT)),
        "GetImage-custom": ("cloudimg.gateway.v1.ImageService/GetImage",
                            lambda: images.GetImage(get_custom, metadata=metadata, timeout=CALL_TIMEOUT)),
        "QuoteRunInstances": ("cloudimg.gateway.v1.InstanceService/QuoteRunInstances",
                              lambda: instances.QuoteRunInstances(quote, metadata=metadata, timeout=CALL_TIMEOUT)),
        "RunInstances": ("cloudimg.gateway.v1.InstanceService/RunInstances",
                         lambda: instances.RunInstances(one, metadata=metadata, timeout=CALL_TIMEOUT)),
        "RunInstances-100": ("cloudimg.gateway.v1.InstanceService/RunInstances",
                             lambda: instances.RunInstances(hundred, metadata=metadata, timeout=CALL_TIMEOUT)),
    }


def hidden(images: image_service_pb2_grpc.ImageServiceStub, image_id: str, key: str) -> Call:
    """GetImage by a stranger, whose answer is NOT_FOUND (counted as OK here)."""
    request = image_service_pb2.GetImageRequest(image_id=image_id)
    stranger = (("authorization", f"Bearer {key}"),)

    async def call() -> object:
        try:
            return await images.GetImage(request, metadata=stranger, timeout=CALL_TIMEOUT)
        except grpc.aio.AioRpcError as error:
            if error.code() != grpc.StatusCode.NOT_FOUND:
                raise
            return error

    return call


async def calls_and_cpu(measured: Measured, stack: Stack, echo: tuple[str, int], args: argparse.Namespace) -> None:
    """P1 and P2: the echo and the public calls at 1 and --concurrency calls in flight."""
    service_pids = [p.pid for p in stack.processes.values()]
    levels = sorted({1, args.concurrency})
    echo_addr, echo_pid = echo
    async with grpc.aio.insecure_channel(echo_addr) as channel:
        health = health_pb2_grpc.HealthStub(channel)
        check = health_pb2.HealthCheckRequest()
        for concurrency in levels:
            total = args.total if concurrency > 1 else max(1, args.total // 10)
            await measure(measured, [echo_pid], lambda: health.Check(check, timeout=CALL_TIMEOUT),
                          options(f"echo c={concurrency}", "grpc.health.v1.Health/Check", echo_addr, concurrency,
                                  total, args), min(total, 2 * concurrency + 20), args.json_only)
    async with grpc.aio.insecure_channel(stack.gateway_addr) as channel:
        for name, (method, call) in targets(channel, stack.api_keys["alice"]).items():
            for concurrency in ([args.concurrency] if name in ("Check", "GetImage-custom", "RunInstances-100")
                                else levels):
                total = args.total if concurrency > 1 else max(1, args.total // 10)
                if name == "RunInstances-100":
                    total = max(1, args.total // 10)
                await measure(measured, service_pids, call,
                              options(f"{name} c={concurrency}", method, stack.gateway_addr, concurrency, total, args),
                              min(total, 2 * concurrency + 20), args.json_only)
        # P2's two launches again, in turn, P2_REPETITIONS times: the machine drifts within minutes, and P2
        # compares the medians of their CPU per call.
        launches = targets(channel, stack.api_keys["alice"])
        for repetition in range(1, P2_REPETITIONS + 1):
            for name, total in (("RunInstances", max(1, args.total // 4)),
                                ("RunInstances-100", max(1, args.total // 10))):
                method, call = launches[name]
                await measure(measured, service_pids, call,
                              options(f"{name} c={args.concurrency} #{repetition}", method, stack.gateway_addr,
                                      args.concurrency, total, args), args.concurrency, args.json_only)
        if measured.database == "sqlite":
            images = image_service_pb2_grpc.ImageServiceStub(channel)
            get_image = "cloudimg.gateway.v1.ImageService/GetImage"
            for name, image_id in (("GetImage-private", seed_image_id(REGION, "alice-web")),
                                   ("GetImage-missing", "img-zz000000")):
                await measure(measured, service_pids, hidden(images, image_id, stack.api_keys["bob"]),
                              options(f"{name} c=1", get_image, stack.gateway_addr, 1, max(1, args.total // 10),
                                      args), 20, args.json_only)


async def startup_and_memory(measured: Measured, stack: Stack, args: argparse.Namespace) -> None:
    """P4: each service restarted and SERVING; idle RSS; RSS after a tenth of --launches and after all."""
    for service in SERVICES:
        measured.figures[f"rss_idle_mib_{service}"] = rss_mib(stack.processes[service].pid)
    for service in SERVICES:
        await asyncio.to_thread(stack.terminate, service)
        started = time.monotonic()
        await asyncio.to_thread(stack.start_service, service)
        await asyncio.to_thread(stack.wait, service)
        measured.figures[f"startup_seconds_{service}"] = time.monotonic() - started
    for service in SERVICES:  # idle again, freshly started
        measured.figures[f"rss_idle_mib_{service}"] = max(measured.figures[f"rss_idle_mib_{service}"],
                                                          rss_mib(stack.processes[service].pid))
    async with grpc.aio.insecure_channel(stack.gateway_addr) as channel:
        method, call = targets(channel, stack.api_keys["alice"])["RunInstances"]
        for phase, count in (("tenth", args.launches // 10), ("all", args.launches - args.launches // 10)):
            run = RunOptions(name=f"launches-{phase}", call=method, host=stack.gateway_addr, insecure=True,
                             concurrency=args.concurrency, total=count, timeout=CALL_TIMEOUT)
            report = await run_load(call, run)
            measured.reports.append(report)
            for service in SERVICES:
                measured.figures[f"rss_after_{phase}_mib_{service}"] = rss_mib(stack.processes[service].pid)
            if not args.json_only:
                print(f"  {measured.database:<9} {report.count} launches ({phase}): {report.rps:.0f} rps, failed "
                      f"{report.count - report.ok}", flush=True)


async def page_token_at(images: image_service_pb2_grpc.ImageServiceStub, metadata: tuple[tuple[str, str], ...],
                        region: str, depth: int) -> str:
    request = image_service_pb2.ListImagesRequest(region=region, page_size=LISTING_PAGE)
    for _ in range(depth - 1):
        response = await images.ListImages(request, metadata=metadata, timeout=CALL_TIMEOUT)
        request.page_token = response.next_page_token
    return request.page_token


async def listing_runs(measured: Measured, stack: Stack, phase: str, region: str, repetition: int,
                       args: argparse.Namespace) -> None:
    service_pids = [p.pid for p in stack.processes.values()]
    metadata = (("authorization", f"Bearer {stack.api_keys['alice']}"),)
    own = seed_images.bench_image_id(region, ALICE, 17)
    async with grpc.aio.insecure_channel(stack.gateway_addr) as channel:
        images = image_service_pb2_grpc.ImageServiceStub(channel)
        first = image_service_pb2.ListImagesRequest(region=region, page_size=LISTING_PAGE)
        deep = image_service_pb2.ListImagesRequest(region=region, page_size=LISTING_PAGE,
                                                   page_token=await page_token_at(images, metadata, region, DEEP_PAGE))
        get = image_service_pb2.GetImageRequest(image_id=own)
        total = max(1, args.total // 10)
        for name, method, call in (
                ("ListImages first page", "ListImages",
                 lambda: images.ListImages(first, metadata=metadata, timeout=CALL_TIMEOUT)),
                (f"ListImages page {DEEP_PAGE}", "ListImages",
                 lambda: images.ListImages(deep, metadata=metadata, timeout=CALL_TIMEOUT)),
                ("GetImage own", "GetImage", lambda: images.GetImage(get, metadata=metadata, timeout=CALL_TIMEOUT))):
            await measure(measured, service_pids, call,
                          options(f"{name} {phase} c=1 #{repetition}", f"cloudimg.gateway.v1.ImageService/{method}",
                                  stack.gateway_addr, 1, total, args), 20, args.json_only)


async def listing(measured: Measured, stack: Stack, args: argparse.Namespace) -> None:
    """P3: the same pages in a region with LISTING_SMALL images of other accounts and in one with
    --listing-others, both with LISTING_OWN of the caller's. The two are measured in turn, LISTING_REPETITIONS
    times, and compared by their medians: these machines drift by half within minutes, so a small run followed
    minutes later by a large one compared the machine's moods as much as the listing."""
    engine = create_db_engine(stack.database_urls.get("catalog", f"sqlite:///{stack.data_dir / 'catalog'}.db"))
    owners = 1000
    try:
        started = time.monotonic()
        await asyncio.to_thread(seed_images.seed, engine, SMALL_REGION, LISTING_SMALL, LISTING_OWN, ALICE, owners)
        measured.figures["seed_small_seconds"] = time.monotonic() - started
        started = time.monotonic()
        await asyncio.to_thread(seed_images.seed, engine, REGION, args.listing_others, LISTING_OWN, ALICE, owners)
        measured.figures["seed_large_seconds"] = time.monotonic() - started
        if not args.json_only:
            print(f"  {measured.database:<9} seeded {LISTING_SMALL} images of other accounts in {SMALL_REGION} and "
                  f"{args.listing_others} in {REGION} in {measured.figures['seed_large_seconds']:.0f} s", flush=True)
        for repetition in range(1, LISTING_REPETITIONS + 1):
            await listing_runs(measured, stack, "small", SMALL_REGION, repetition, args)
            await listing_runs(measured, stack, "large", REGION, repetition, args)
    finally:
        engine.dispose()


def _sparse_file(path: Path, size: int) -> None:
    """A file of size bytes that takes no disk space (all a hole)."""
    with open(path, "wb") as sparse:
        sparse.truncate(size)


async def import_while_serving(measured: Measured, stack: Stack, args: argparse.Namespace) -> None:
    """GetImage at one call in flight, idle and while the catalog imports a sparse 2 GiB raw disk, and
    the catalog's peak RSS meanwhile: a running job must neither stall calls nor hold the image in memory."""
    disk = stack.imports_dir / "bench-2g.raw"
    await asyncio.to_thread(_sparse_file, disk, IMPORT_BYTES)
    catalog_pid = stack.processes["catalog"].pid
    meta = (("x-cloudimg-internal-token", stack.internal_token), ("x-cloudimg-account-id", "100000000002"))
    get = image_service_pb2.GetImageRequest(image_id=seed_image_id(REGION, "ubuntu-2204-x86"))
    auth = (("authorization", f"Bearer {stack.api_keys['alice']}"),)
    async with grpc.aio.insecure_channel(stack.gateway_addr) as gateway, \
            grpc.aio.insecure_channel(stack.addr("catalog")) as internal:
        images = image_service_pb2_grpc.ImageServiceStub(gateway)
        catalog = catalog_pb2_grpc.CatalogServiceStub(internal)

        def call() -> Awaitable[object]:
            answer: Awaitable[object] = images.GetImage(get, metadata=auth, timeout=CALL_TIMEOUT)
            return answer

        method = "cloudimg.gateway.v1.ImageService/GetImage"
        idle = await run_load(call, options("GetImage idle c=1", method, stack.gateway_addr, 1,
                                            max(1, args.total // 10), args), warmup=20)
        rss_before = rss_mib(catalog_pid)
        started = time.monotonic()
        image = (await catalog.ImportImage(catalog_pb2.ImportImageRequest(
            region=REGION, name="bench 2 GiB", format=catalog_pb2.IMAGE_FORMAT_RAW, os_name="Debian 12",
            os_type=catalog_pb2.OS_TYPE_LINUX, architecture=catalog_pb2.ARCHITECTURE_X86_64,
            source_uri=disk.resolve().as_uri()), metadata=meta)).image
        peak = rss_before

        async def watch() -> None:
            nonlocal peak
            while True:
                peak = max(peak, rss_mib(catalog_pid))
                state = (await catalog.GetImage(catalog_pb2.GetImageRequest(image_id=image.image_id),
                                                metadata=meta)).image.state
                if state != catalog_pb2.IMAGE_STATE_IMPORTING:
                    return
                await asyncio.sleep(0.05)

        watcher = asyncio.create_task(watch())
        busy = await run_load(call, options("GetImage during import c=1", method, stack.gateway_addr, 1,
                                            1_000_000, args))
        await asyncio.wait_for(watcher, 600)
        seconds = time.monotonic() - started
    disk.unlink()
    measured.reports += [idle, busy]
    measured.figures.update(getimage_idle_p50_ms=idle.latency_ms(50), getimage_during_import_p50_ms=busy.latency_ms(50),
                            catalog_rss_before_mib=rss_before, catalog_rss_peak_mib=peak, import_seconds=seconds)


async def bench_one(database: str, database_urls: dict[str, str], args: argparse.Namespace) -> Measured:
    measured = Measured(database)
    with tempfile.TemporaryDirectory(prefix="cloudimg-bench-") as tmp, echo_server() as echo:
        stack = Stack(Path(tmp), database_urls=database_urls, extra_env={"CLOUDIMG_ACCESS_LOG": "false"}
                      if args.no_access_log else {})
        with stack:
            await calls_and_cpu(measured, stack, echo, args)
            if database == "sqlite" and not args.skip_import:
                await import_while_serving(measured, stack, args)
            await startup_and_memory(measured, stack, args)
            if args.listing_others:
                await listing(measured, stack, args)
    return measured


def ratio(a: float | None, b: float | None) -> float | None:
    return None if a is None or b is None or b == 0 else a / b


def goals(measured: Measured, args: argparse.Namespace) -> list[Goal]:
    db = measured.database
    loaded = f"c={args.concurrency}"
    names = {r.name for r in measured.reports}

    def rps(name: str) -> float | None:
        return measured.report(name).rps if name in names else None

    def p50(name: str) -> float | None:
        """The run's p50, or the median of its repetitions' (``name #1``, ``name #2``, ...)."""
        found = [r.latency_ms(50) for r in measured.reports if r.name == name or r.name.startswith(f"{name} #")]
        return statistics.median(found) if found else None

    def cpu(name: str) -> float | None:
        """The median CPU per call of the run and its repetitions (``name #1``, ...)."""
        found = [ms for run, ms in measured.cpu_ms.items() if run == name or run.startswith(f"{name} #")]
        return statistics.median(found) if found else None

    echo = rps(f"echo {loaded}")
    failed = sum(r.count - r.ok for r in measured.reports if r.name.startswith(("RunInstances", "launches")))
    found = [
        at_least("P1", f"RunInstances rps / echo rps at {loaded}", ratio(rps(f"RunInstances {loaded}"), echo), 0.20,
                 db),
        at_most("P1", "RunInstances errors", float(failed), 0, db),
        at_most("P1", "RunInstances p50 at c=1 (ms)", p50("RunInstances c=1"), 3, db, " ms"),
        at_least("P1", f"QuoteRunInstances rps / echo rps at {loaded}",
                 ratio(rps(f"QuoteRunInstances {loaded}"), echo), 0.35, db),
        at_least("P1", f"GetImage rps / echo rps at {loaded}", ratio(rps(f"GetImage {loaded}"), echo), 0.35, db),
        at_most("P2", "CPU of RunInstances x100 / CPU of x1",
                ratio(cpu(f"RunInstances-100 {loaded}"), cpu(f"RunInstances {loaded}")), 1.5, db),
    ]
    for run in ("ListImages first page", f"ListImages page {DEEP_PAGE}", "GetImage own"):
        found.append(at_most("P3", f"{run} p50: {args.listing_others:,} others / {LISTING_SMALL:,}",
                             ratio(p50(f"{run} large c=1"), p50(f"{run} small c=1")), 1.5, db))
    startup = [v for k, v in measured.figures.items() if k.startswith("startup_seconds_")]
    found.append(at_most("P4", "slowest service SERVING after start (s)", max(startup) if startup else None, 3, db,
                         " s"))
    idle = [v for k, v in measured.figures.items() if k.startswith("rss_idle_mib_")]
    found.append(at_most("P4", "largest idle RSS (MB)", max(idle) * 1.048576 if idle else None, 80, db, " MB"))
    growth = [ratio(measured.figures.get(f"rss_after_all_mib_{s}"), measured.figures.get(f"rss_after_tenth_mib_{s}"))
              for s in SERVICES]
    known = [g for g in growth if g is not None]
    found.append(at_most("P4", f"RSS after {args.launches:,} launches / after {args.launches // 10:,} (max)",
                         max(known) if known else None, 1.10, db))
    return found


def report_file(database: str, name: str) -> str:
    """A run's report file name: ("sqlite", "RunInstances c=50") -> "sqlite-RunInstances-c50.json"."""
    return re.sub(r"[^A-Za-z0-9_.-]+", "-", f"{database} {name}".replace("=", "")).strip("-") + ".json"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m devtools.bench", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--concurrency", type=int, default=50, help="calls in flight for the loaded runs (50)")
    parser.add_argument("--total", type=int, default=2000, help="calls per loaded run; total/10 at concurrency 1")
    parser.add_argument("--duration", type=float, default=10.0, help="at most this many seconds per run (10)")
    parser.add_argument("--launches", type=int, default=100_000, help="launches for the memory goal (100000)")
    parser.add_argument("--listing-others", type=int, default=1_000_000,
                        help="images of other accounts for the listing goal (1000000; 0 skips it)")
    parser.add_argument("--databases", default="sqlite,postgres", help="which databases (sqlite,postgres)")
    parser.add_argument("--skip-import", action="store_true", help="skip the 2 GiB import run")
    parser.add_argument("--no-access-log", action="store_true", help="services without their access log")
    parser.add_argument("--json-only", action="store_true", help="print only the goals and the JSON paths")
    args = parser.parse_args(argv)
    if args.concurrency < 1 or args.total < 1 or args.duration <= 0 or args.launches < 10:
        parser.error("--concurrency and --total must be >= 1, --duration > 0 and --launches >= 10")
    if args.listing_others and args.listing_others <= LISTING_SMALL:
        parser.error(f"--listing-others must be above {LISTING_SMALL} (or 0)")
    wanted = [d.strip() for d in args.databases.split(",") if d.strip()]

    results: list[Measured] = []
    all_goals: list[Goal] = []
    for database in wanted:
        if database == "sqlite":
            results.append(asyncio.run(bench_one("sqlite", {}, args)))
        elif database == "postgres":
            with postgres_databases() as urls:
                if urls is None:
                    all_goals.append(Goal("P5", "the bench on PostgreSQL", None, "measured", False, "postgres"))
                    continue
                results.append(asyncio.run(bench_one("postgres", urls, args)))
        else:
            parser.error(f"unknown database {database!r}")
    for measured in results:
        all_goals += goals(measured, args)
    if "postgres" in wanted and any(m.database == "postgres" for m in results):
        all_goals.append(Goal("P5", "the same bench on PostgreSQL, beside SQLite", 1.0, "measured", True, "postgres"))

    REPORTS.mkdir(parents=True, exist_ok=True)
    for stale in REPORTS.glob("*.json"):
        stale.unlink()
    runs = []
    for measured in results:
        for r in measured.reports:
            path = REPORTS / report_file(measured.database, r.name)
            path.write_text(r.render("pretty") + "\n")
            runs.append({"database": measured.database, "name": r.name, "report": str(path.relative_to(BUILD.parent)),
                         "count": r.count, "rps": r.rps, "p50_ms": r.latency_ms(50), "p99_ms": r.latency_ms(99),
                         "cpu_ms_per_call": measured.cpu_ms.get(r.name), "failed": r.count - r.ok})
    OUTPUT.write_text(json.dumps({
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": {"cpus": os.cpu_count(), "host": socket.gethostname()},
        "options": {k: v for k, v in vars(args).items()},
        "goals": [g.__dict__ for g in all_goals],
        "figures": {m.database: m.figures for m in results},
        "runs": runs,
    }, indent=2) + "\n")

    print("\ngoal database  what" + " " * 61 + "figure  target   verdict")
    for goal in all_goals:
        print(goal.row())
    for measured in results:
        if measured.database == "sqlite" and "getimage_idle_p50_ms" in measured.figures:
            f = measured.figures
            print(f"GetImage p50 at c=1: idle {f['getimage_idle_p50_ms']:.2f} ms, while a 2 GiB import runs "
                  f"{f['getimage_during_import_p50_ms']:.2f} ms; catalog RSS {f['catalog_rss_before_mib']:.0f} MiB "
                  f"before, peak {f['catalog_rss_peak_mib']:.0f} MiB")
        if measured.database == "sqlite" and "GetImage-missing c=1" in {r.name for r in measured.reports}:
            private = measured.report("GetImage-private c=1").latency_ms(50)
            missing = measured.report("GetImage-missing c=1").latency_ms(50)
            print(f"NOT_FOUND p50 at c=1: another account's private image {private:.2f} ms, a missing id "
                  f"{missing:.2f} ms (ratio {private / missing if missing else 0:.2f}; 1.00 leaks nothing)")
    print(OUTPUT)
    failed = [(m.database, r) for m in results for r in m.reports if r.failure_rate > MAX_FAILURE_RATE]
    for database, r in failed:
        print(f"FAILED: {database} {r.name}: {r.count - r.ok} of {r.count} calls failed: {r.error_distribution}",
              file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
