"""A ghz-compatible load generator on grpc.aio: ghz's main flags, its JSON report and its summary.

    python -m devtools.loadgen --insecure --protoset build/cloudimg.protoset \\
        --call cloudimg.gateway.v1.InstanceService/RunInstances -d '{"region": "ap-guangzhou", ...}' \\
        -m '{"authorization": "Bearer ..."}' -c 50 -n 2000 -O json -o run.json 127.0.0.1:8443

ghz (github.com/bojand/ghz) cannot be installed here, so this follows its runner closely enough that a
script written for ghz runs against it unchanged:
- the report is ghz's `runner.Report` with its JSON names (runner/reporter.go): durations in integer
  nanoseconds, histogram marks in seconds, `details` always present (one entry per call, at most
  1,000,000), `options` as ghz's `runner.Options`;
- the statistics are ghz's: `rps = count / total`, `average` over every call, `fastest`, `slowest`,
  the percentiles 10/25/50/75/90/95/99 (its rank rule) and the 11-bucket histogram over OK calls only
  (over every call with --count-errors);
- status names and error strings are grpc-go's (`codes.Code.String()`: "OK", "Canceled",
  "DeadlineExceeded", ...; "rpc error: code = NotFound desc = ...");
- -z/--duration ignores -n and ends the run with endReason "timeout"; -x/--max-duration keeps -n;
  --duration-stop close (default) cancels the calls still in flight and counts them as Canceled,
  wait lets them finish, ignore drops them;
- -O summary (default) prints ghz's summary (printer/template.go), csv its listing, json and pretty the report.

Not supported (refused, never silently ignored): --async, step/line load and concurrency schedules,
--skipTLS (grpcio cannot skip certificate checks), --reflect-metadata, --debug, count-prefixed binary
data, the html, influx and prometheus formats, and template functions in -d/-m (the call-data fields
such as {{.RequestNumber}} work). A --config file must be JSON.

devtools.bench drives `run_load` directly with its own calls (metadata, answers it counts as OK).
"""

from __future__ import annotations

import argparse
import asyncio
import contextvars
import json
import re
import sys
import tempfile
import time
import uuid
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import grpc
from google.protobuf import descriptor_pb2, descriptor_pool, json_format, message_factory
from google.protobuf.descriptor import MethodDescriptor
from google.protobuf.message import Message

VERSION = "0.1.0 (ghz-compatible)"
PERCENTAGES = (10, 25, 50, 75, 90, 95, 99)  # ghz's, runner/reporter.go latencies()
HISTOGRAM_BUCKETS = 10  # + 1: ghz's marks run from fastest to slowest in 10 steps
MAX_DETAILS = 1_000_000  # ghz's maxResult
MAX_INT32 = 2**31 - 1  # ghz sets total to this when -z is given
SECOND = 1_000_000_000
# A call still in flight when the connection closes at the end of -z, as grpc-go reports it.
CLOSING = "rpc error: code = Canceled desc = grpc: the client connection is closing"

# grpc-go's spelling of the codes (codes/code_string.go), which ghz prints.
GO_CODE_NAMES = {
    grpc.StatusCode.OK: "OK",
    grpc.StatusCode.CANCELLED: "Canceled",
    grpc.StatusCode.UNKNOWN: "Unknown",
    grpc.StatusCode.INVALID_ARGUMENT: "InvalidArgument",
    grpc.StatusCode.DEADLINE_EXCEEDED: "DeadlineExceeded",
    grpc.StatusCode.NOT_FOUND: "NotFound",
    grpc.StatusCode.ALREADY_EXISTS: "AlreadyExists",
    grpc.StatusCode.PERMISSION_DENIED: "PermissionDenied",
    grpc.StatusCode.RESOURCE_EXHAUSTED: "ResourceExhausted",
    grpc.StatusCode.FAILED_PRECONDITION: "FailedPrecondition",
    grpc.StatusCode.ABORTED: "Aborted",
    grpc.StatusCode.OUT_OF_RANGE: "OutOfRange",
    grpc.StatusCode.UNIMPLEMENTED: "Unimplemented",
    grpc.StatusCode.INTERNAL: "Internal",
    grpc.StatusCode.UNAVAILABLE: "Unavailable",
    grpc.StatusCode.DATA_LOSS: "DataLoss",
    grpc.StatusCode.UNAUTHENTICATED: "Unauthenticated",
}

# Which call a worker is making, for the call's own use (the CLI's data templates and connection).
request_number: contextvars.ContextVar[int] = contextvars.ContextVar("request_number", default=0)
worker_id: contextvars.ContextVar[str] = contextvars.ContextVar("worker_id", default="")
connection_index: contextvars.ContextVar[int] = contextvars.ContextVar("connection_index", default=0)


@dataclass
class RunOptions:
    """A run's settings, named and defaulted as ghz's flags; durations in seconds (0 = unset)."""

    call: str = ""
    host: str = ""
    proto: str = ""
    protoset: str = ""
    import_paths: list[str] = field(default_factory=list)
    enable_compression: bool = False
    cacert: str = ""
    cert: str = ""
    key: str = ""
    cname: str = ""
    insecure: bool = False
    authority: str = ""
    rps: int = 0
    concurrency: int = 50
    total: int = 200
    connections: int = 1
    duration: float = 0.0  # -z: n is ignored
    max_duration: float = 0.0  # -x: n is kept
    duration_stop: str = "close"
    timeout: float = 20.0
    dial_timeout: float = 10.0
    keepalive: float = 0.0
    stream_interval: float = 0.0
    data: Any = None
    binary: bool = False
    metadata: dict[str, str] | None = None
    name: str = ""
    tags: dict[str, str] | None = None
    skip_first: int = 0
    count_errors: bool = False

    def check(self) -> None:
        if self.concurrency < 1 or self.total < 0 or self.connections < 1:
            raise ValueError("concurrency and connections must be >= 1 and total >= 0")
        if self.connections > self.concurrency:
            raise ValueError("number of connections cannot be greater than concurrency")  # ghz's words
        if self.duration < 0 or self.max_duration < 0 or self.rps < 0:
            raise ValueError("durations and rps must not be negative")
        if self.duration_stop not in ("close", "wait", "ignore"):
            raise ValueError("duration-stop must be close, wait or ignore")
        if self.skip_first > self.effective_total:
            raise ValueError("you cannot skip more requests than those run")  # ghz's words

    @property
    def stop_after(self) -> float:
        """Seconds after which the run stops (0: never), as ghz: -x wins over -z."""
        return self.max_duration or self.duration

    @property
    def effective_total(self) -> int:
        return MAX_INT32 if self.duration and not self.max_duration else self.total

    def to_ghz(self) -> dict[str, Any]:
        """ghz's `runner.Options` JSON (runner/reporter.go): its names, order and omitempty fields."""
        out: dict[str, Any] = {}

        def ns(seconds: float) -> int:
            return round(seconds * SECOND)

        def put(key: str, value: Any, omitempty: bool = True) -> None:
            if value or not omitempty:
                out[key] = value

        put("call", self.call)
        put("host", self.host)
        put("proto", self.proto)
        put("protoset", self.protoset)
        put("import-paths", list(self.import_paths))
        put("enable-compression", self.enable_compression)
        put("cacert", self.cacert)
        put("cert", self.cert)
        put("key", self.key)
        put("cname", self.cname)
        put("insecure", self.insecure, omitempty=False)
        put("authority", self.authority)
        put("rps", self.rps)
        # Only the const schedules are supported; these are ghz's command-line defaults for them.
        for key, value in (("load-schedule", "const"), ("load-start", 0), ("load-end", 0), ("load-step", 0),
                           ("load-step-duration", 0), ("load-max-duration", 0)):
            put(key, value, omitempty=False)
        put("concurrency", self.concurrency)
        for key, value in (("concurrency-schedule", "const"), ("concurrency-start", 0), ("concurrency-end", 0),
                           ("concurrency-step", 1), ("concurrency-step-duration", 0),
                           ("concurrency-max-duration", 0)):
            put(key, value, omitempty=False)
        put("total", self.effective_total)
        put("connections", self.connections)
        put("duration", ns(self.stop_after))
        put("timeout", ns(self.timeout))
        put("dial-timeout", ns(self.dial_timeout))
        put("keepalive", ns(self.keepalive))
        put("data", self.data)
        put("binary", self.binary, omitempty=False)
        put("metadata", self.metadata)
        put("CPUs", 1, omitempty=False)  # one event loop
        put("name", self.name)
        put("skipFirst", self.skip_first)
        put("count-errors", self.count_errors)
        return out


@dataclass(frozen=True)
class ResultDetail:
    timestamp_ns: int  # wall clock when the call ended, as ghz
    latency_ns: int
    error: str  # "" for OK
    status: str  # grpc-go's name of the code

    def to_ghz(self) -> dict[str, Any]:
        return {"timestamp": _go_time(self.timestamp_ns, nano=True), "latency": self.latency_ns,
                "error": self.error, "status": self.status}


@dataclass(frozen=True)
class LatencyDistribution:
    percentage: int
    latency_ns: int


@dataclass(frozen=True)
class Bucket:
    mark: float  # seconds
    count: int
    frequency: float  # share of the counted calls, 0..1


@dataclass
class Report:
    """ghz's `runner.Report`; durations in nanoseconds."""

    options: RunOptions
    end_reason: str  # "normal" or "timeout", as ghz
    date_ns: int
    count: int
    total_ns: int
    average_ns: int
    fastest_ns: int
    slowest_ns: int
    rps: float
    error_distribution: dict[str, int]
    status_code_distribution: dict[str, int]
    latency_distribution: list[LatencyDistribution] | None
    histogram: list[Bucket] | None
    details: list[ResultDetail] | None

    @property
    def name(self) -> str:
        return self.options.name

    @property
    def ok(self) -> int:
        return self.status_code_distribution.get("OK", 0)

    @property
    def failure_rate(self) -> float:
        return (self.count - self.ok) / self.count if self.count else 0.0

    def latency_ms(self, percentage: int) -> float:
        """One of ghz's percentiles in milliseconds (0 when no call counted)."""
        for point in self.latency_distribution or ():
            if point.percentage == percentage:
                return point.latency_ns / 1e6
        return 0.0

    def to_ghz(self) -> dict[str, Any]:
        """The report as ghz's `-O json` writes it (its MarshalJSON puts `date` first)."""
        out: dict[str, Any] = {"date": _go_time(self.date_ns, nano=False)}
        if self.options.name:
            out["name"] = self.options.name
        out |= {
            "endReason": self.end_reason,
            "options": self.options.to_ghz(),
            "count": self.count,
            "total": self.total_ns,
            "average": self.average_ns,
            "fastest": self.fastest_ns,
            "slowest": self.slowest_ns,
            "rps": _go_float(self.rps),
            "errorDistribution": dict(self.error_distribution),
            "statusCodeDistribution": dict(self.status_code_distribution),
            "latencyDistribution": None if self.latency_distribution is None else [
                {"percentage": p.percentage, "latency": p.latency_ns} for p in self.latency_distribution],
            "histogram": None if self.histogram is None else [
                {"mark": _go_float(b.mark), "count": b.count, "frequency": _go_float(b.frequency)}
                for b in self.histogram],
            "details": None if self.details is None else [d.to_ghz() for d in self.details],
        }
        if self.options.tags:
            out["tags"] = dict(self.options.tags)
        return out

    def summary(self) -> str:
        """ghz's `-O summary` (printer/template.go), distributions ordered by count."""
        text = "\nSummary:\n"
        if self.name:
            text += f"  Name:\t\t{self.name}\n"
        text += (f"  Count:\t{self.count}\n  Total:\t{_nano_unit(self.total_ns)}\n"
                 f"  Slowest:\t{_nano_unit(self.slowest_ns)}\n  Fastest:\t{_nano_unit(self.fastest_ns)}\n"
                 f"  Average:\t{_nano_unit(self.average_ns)}\n  Requests/sec:\t{self.rps:4.2f}\n\n"
                 f"Response time histogram:\n{_histogram_text(self.histogram or [])}Latency distribution:")
        text += "".join(f"\n  {p.percentage} % in {_nano_unit(p.latency_ns)} " for p in self.latency_distribution or [])
        text += "\n\n"
        if self.status_code_distribution:
            text += "Status code distribution:\n" + _tabulate(
                [[f"  [{code}]", f"{n} responses"] for code, n in _by_count(self.status_code_distribution)])
        text += "\n"
        if self.error_distribution:
            text += "Error distribution:\n" + _tabulate(
                [[f"  [{n}]", error] for error, n in _by_count(self.error_distribution)])
        return text + "\n"

    def csv(self) -> str:
        """ghz's `-O csv` listing."""
        rows = "".join(f"\n{d.latency_ns / SECOND * 1000:4.2f},{d.status},{d.error}" for d in self.details or [])
        return f"\nduration (ms),status,error{rows}\n"

    def render(self, output_format: str) -> str:
        if output_format == "summary":
            return self.summary()
        if output_format == "csv":
            return self.csv()
        if output_format == "json":
            return json.dumps(self.to_ghz(), separators=(",", ":"), ensure_ascii=False)
        if output_format == "pretty":
            return json.dumps(self.to_ghz(), indent=2, ensure_ascii=False)
        raise ValueError(f"unknown format: {output_format}")


def _go_float(value: float) -> float | int:
    """A whole float as Go's encoding/json writes it (0, not 0.0), so that it parses back as ghz's does."""
    return int(value) if value.is_integer() and abs(value) < 1e21 else value


def _by_count(distribution: dict[str, int]) -> list[tuple[str, int]]:
    return sorted(distribution.items(), key=lambda item: (-item[1], item[0]))


def _tabulate(rows: list[list[str]], padding: int = 3) -> str:
    """Go's text/tabwriter as ghz uses it: every cell tab-terminated, so padded to its column's width."""
    widths = [max(len(row[i]) for row in rows) + padding for i in range(len(rows[0]))]
    return "".join("".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)) + "\n"
                   for row in rows)


def _nano_unit(ns: int) -> str:
    """ghz's formatNanoUnit."""
    if ns < 10_000:
        return f"{ns} ns"
    ms = ns / 1e6
    return f"{ms:4.2f} ms" if ms < 1000 else f"{ms / 1000:4.2f} s"


def _histogram_text(buckets: list[Bucket]) -> str:
    """ghz's printer histogram: marks in ms, bars of up to 40 ∎."""
    if not buckets:
        return ""
    max_count = max(b.count for b in buckets)
    mark_width = len(f"{max(b.mark for b in buckets) * 1000:.3f}")
    count_width = len(str(max_count))
    lines = []
    for b in buckets:
        bar = (b.count * 40 + max_count // 2) // max_count if max_count else 0
        mark, count = f"{b.mark * 1000:.3f}", str(b.count)
        lines.append(f"  {mark.ljust(mark_width)} [{count}]{' ' * (count_width - len(count))} |{'∎' * bar}\n")
    return "".join(lines)


def _go_time(ns: int, *, nano: bool) -> str:
    """Go's time.RFC3339 (report date) or RFC3339Nano (details) in local time, as ghz writes them."""
    seconds, fraction = divmod(ns, SECOND)
    moment = datetime.fromtimestamp(seconds).astimezone()
    text = moment.strftime("%Y-%m-%dT%H:%M:%S")
    if nano and fraction:
        text += "." + f"{fraction:09d}".rstrip("0")
    offset = moment.utcoffset()
    minutes = int(offset.total_seconds()) // 60 if offset else 0
    if minutes == 0:
        return text + "Z"
    sign = "+" if minutes > 0 else "-"
    return text + f"{sign}{abs(minutes) // 60:02d}:{abs(minutes) % 60:02d}"


def latencies(ordered: Sequence[float]) -> list[LatencyDistribution]:
    """ghz's percentiles over sorted latencies in seconds (runner/reporter.go latencies(), its rank rule)."""
    points = []
    for p in PERCENTAGES:
        ip = (p / 100.0) * len(ordered)
        di = int(ip)
        if ip == di:  # a whole rank lands on the percentile: ranks are 0-based
            di -= 1
        value = ordered[max(di, 0)]
        # ghz leaves a zero entry for a zero latency; so do we.
        points.append(LatencyDistribution(p, int(value * SECOND)) if value > 0 else LatencyDistribution(0, 0))
    return points


def histogram(ordered: Sequence[float]) -> list[Bucket]:
    """ghz's 11 buckets from fastest to slowest over sorted latencies in seconds (runner/reporter.go)."""
    fastest, slowest = ordered[0], ordered[-1]
    step = (slowest - fastest) / HISTOGRAM_BUCKETS
    marks = [fastest + step * i for i in range(HISTOGRAM_BUCKETS)] + [slowest]
    counts = [0] * len(marks)
    bucket = 0
    for latency in ordered:
        while latency > marks[bucket] and bucket < len(marks) - 1:
            bucket += 1
        counts[bucket] += 1
    return [Bucket(mark, count, count / len(ordered)) for mark, count in zip(marks, counts, strict=True)]


def _report(options: RunOptions, results: list[ResultDetail], total_ns: int, end_reason: str) -> Report:
    """ghz's Reporter.Finalize."""
    results = results[options.skip_first:]
    details = results[:MAX_DETAILS]
    count = len(results)
    average = rps = 0.0
    fastest = slowest = 0
    distribution: list[LatencyDistribution] | None = None
    buckets: list[Bucket] | None = None
    if details:
        average = sum(r.latency_ns / SECOND for r in results) / count
        rps = count / (total_ns / SECOND) if total_ns else 0.0
        counted = sorted(d.latency_ns / SECOND for d in details if options.count_errors or not d.error)
        if counted:
            fastest, slowest = int(counted[0] * SECOND), int(counted[-1] * SECOND)
            buckets, distribution = histogram(counted), latencies(counted)
    return Report(
        options=options, end_reason=end_reason, date_ns=time.time_ns(), count=count, total_ns=total_ns,
        average_ns=int(average * SECOND), fastest_ns=fastest, slowest_ns=slowest, rps=rps,
        error_distribution=dict(Counter(r.error for r in results if r.error)),
        status_code_distribution=dict(Counter(r.status for r in results)),
        latency_distribution=distribution, histogram=buckets, details=details or None,
    )


async def run_load(call: Callable[[], Awaitable[object]], options: RunOptions, *, warmup: int = 0) -> Report:
    """Runs `options.total` calls (or for -z/-x seconds) with `options.concurrency` workers and reports
    them as ghz would. `call` makes one call and carries its own deadline; a gRPC error counts as a failed
    call, any other exception is a bug and propagates. `warmup` unrecorded calls go first (not a ghz flag:
    unlike its --skipFirst they stay out of the total time)."""
    options.check()
    if warmup:
        await _run(call, RunOptions(concurrency=min(options.concurrency, warmup), total=warmup,
                                    connections=1, duration_stop="wait"))
    return _report(options, *await _run(call, options))


async def _run(call: Callable[[], Awaitable[object]], options: RunOptions) -> tuple[list[ResultDetail], int, str]:
    results: list[ResultDetail] = []
    total, limit, close = options.effective_total, options.stop_after, options.duration_stop
    issued = 0
    stopping = False
    start = time.perf_counter()

    def record(t0: int, status: str, error: str) -> None:
        results.append(ResultDetail(time.time_ns(), time.perf_counter_ns() - t0, error, status))

    async def worker(index: int) -> None:
        nonlocal issued
        # ghz's worker ids: "g<worker>c<connection>", prefixed by the run's name.
        connection = index % options.connections
        worker_id.set(f"{options.name + ':' if options.name else ''}g{index}c{connection}")
        connection_index.set(connection)
        while not stopping and issued < total:
            number = issued
            issued += 1
            if options.rps:  # ghz's constant pacer: call k goes out k / rps seconds after the start
                send_at = start + number / options.rps
                if limit and send_at - start >= limit:
                    return
                await asyncio.sleep(max(0.0, send_at - time.perf_counter()))
            request_number.set(number)
            t0 = time.perf_counter_ns()
            try:
                await call()
            except grpc.aio.AioRpcError as error:
                name = GO_CODE_NAMES.get(error.code(), "Unknown")
                record(t0, name, f"rpc error: code = {name} desc = {error.details() or ''}")
            except asyncio.CancelledError:  # in flight when -z closed the run
                if close == "close":
                    record(t0, "Canceled", CLOSING)
                raise
            else:
                record(t0, "OK", "")

    workers = [asyncio.create_task(worker(i)) for i in range(options.concurrency)]
    reason = "normal"
    try:
        done, pending = await asyncio.wait(workers, timeout=limit or None, return_when=asyncio.FIRST_EXCEPTION)
        for task in done:
            task.result()  # a bug in `call` (not a gRPC error) propagates from here
        if pending:
            reason, stopping = "timeout", True
            if close == "wait":
                await asyncio.gather(*pending)
    finally:
        for task in workers:
            task.cancel()
        await asyncio.gather(*workers, return_exceptions=True)
    return results, round((time.perf_counter() - start) * SECOND), reason


# --- the command line --------------------------------------------------------------------------------

_DURATION = re.compile(r"(\d+\.?\d*|\.\d+)(ns|us|µs|μs|ms|s|m|h)")
_UNIT_NS = {"ns": 1, "us": 1e3, "µs": 1e3, "μs": 1e3, "ms": 1e6, "s": 1e9, "m": 60e9, "h": 3600e9}


def parse_duration(text: str) -> float:
    """Go's time.ParseDuration ("10s", "1m30s", "250ms", "0") in seconds."""
    text = str(text).strip()
    if text in ("0", "+0", "-0", ""):
        return 0.0
    sign, body = (-1, text[1:]) if text.startswith("-") else (1, text.lstrip("+"))
    position, ns = 0, 0.0
    for match in _DURATION.finditer(body):
        if match.start() != position:
            break
        ns += float(match.group(1)) * _UNIT_NS[match.group(2)]
        position = match.end()
    if position != len(body) or not body:
        raise argparse.ArgumentTypeError(f"time: invalid duration {text!r}")
    return sign * ns / SECOND


def _json_object(text: str) -> Any:
    try:
        return json.loads(text)
    except json.JSONDecodeError as error:
        raise argparse.ArgumentTypeError(f"Error unmarshaling '{text}': {error}") from error


def build_parser() -> argparse.ArgumentParser:
    """ghz's flags (cmd/ghz/main.go), names, short forms and defaults."""
    p = argparse.ArgumentParser(prog="python -m devtools.loadgen", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    flag = p.add_argument
    on_off = argparse.BooleanOptionalAction  # kingpin bools take --x and --no-x
    flag("--config", default="", help="JSON config file with the run's settings (flags override it)")
    flag("--proto", default="", help="the .proto file (compiled here with grpcio-tools)")
    flag("--protoset", default="", help="the compiled protoset file; alternative to --proto")
    flag("--call", default="", help="package.Service/Method or package.Service.Method")
    flag("-i", "--import-paths", default="", help="comma separated proto import paths")
    flag("--cacert", default="", help="trusted root certificates for verifying the server")
    flag("--cert", default="", help="client certificate to present (with --key)")
    flag("--key", default="", help="client private key (with --cert)")
    flag("--cname", default="", help="server name override when validating the TLS certificate")
    flag("--skipTLS", dest="skip_tls", action=on_off, default=False, help="not supported (grpcio cannot)")
    flag("--insecure", action=on_off, default=False, help="plaintext connection")
    flag("--authority", default="", help="value of the :authority pseudo-header")
    flag("--async", dest="async_", action=on_off, default=False, help="not supported")
    flag("-r", "--rps", type=int, default=0, help="requests per second (constant pacing); 0 = unlimited")
    flag("--load-schedule", default="const", help="only const is supported")
    for name in ("--load-start", "--load-end", "--load-step", "--concurrency-start", "--concurrency-end"):
        flag(name, type=int, default=0, help=argparse.SUPPRESS)
    flag("--concurrency-step", type=int, default=1, help=argparse.SUPPRESS)
    for name in ("--load-step-duration", "--load-max-duration", "--concurrency-step-duration",
                 "--concurrency-max-duration"):
        flag(name, type=parse_duration, default=0.0, help=argparse.SUPPRESS)
    flag("-c", "--concurrency", type=int, default=50, help="request workers (50)")
    flag("--concurrency-schedule", default="const", help="only const is supported")
    flag("-n", "--total", type=int, default=200, help="number of requests (200)")
    flag("-t", "--timeout", type=parse_duration, default=20.0, help="timeout of each request (20s; 0 = none)")
    flag("-z", "--duration", type=parse_duration, default=0.0, help="run for this long, ignoring -n (10s, 3m)")
    flag("-x", "--max-duration", type=parse_duration, default=0.0, help="stop after this long, keeping -n")
    flag("--duration-stop", default="close", choices=("close", "wait", "ignore"),
         help="calls in flight at -z: close (count as Canceled), wait (let finish), ignore (drop)")
    flag("-d", "--data", default="", help="call data as JSON (an object, or an array of them); @ reads stdin")
    flag("-D", "--data-file", default="", help="file with the call data JSON")
    flag("-b", "--binary", action=on_off, default=False, help="call data is one serialized message on stdin")
    flag("-B", "--binary-file", default="", help="file with the call data as one serialized message")
    flag("-m", "--metadata", default="", help="request metadata as JSON")
    flag("-M", "--metadata-file", default="", help="file with the request metadata JSON")
    flag("--stream-interval", type=parse_duration, default=0.0, help="pause between streamed messages")
    flag("--reflect-metadata", default="", help="not supported (grpcio-reflection sends none)")
    flag("-o", "--output", default="", help="output path (stdout when absent)")
    flag("-O", "--format", default="summary", choices=("summary", "csv", "json", "pretty"), help="(summary)")
    flag("--skipFirst", dest="skip_first", type=int, default=0, help="leave the first X calls out of the tally")
    flag("--count-errors", action=on_off, default=False, help="count failed calls in the latency statistics")
    flag("--connections", type=int, default=1, help="connections to share the workers (1)")
    flag("--connect-timeout", type=parse_duration, default=10.0, help="recorded; channels connect lazily")
    flag("--keepalive", type=parse_duration, default=0.0, help="keepalive time")
    flag("--name", default="", help="name of the run")
    flag("--tags", default="", help="user tags as JSON")
    flag("--cpus", type=int, default=1, help="accepted; one event loop runs the calls")
    flag("--debug", default="", help="not supported")
    flag("-e", "--enable-compression", action=on_off, default=False, help="gzip the requests")
    flag("-v", "--version", action="version", version=VERSION)
    flag("host", nargs="?", default="", help="host:port to test")
    return p


def _config_defaults(path: str) -> dict[str, Any]:
    """ghz's --config JSON (runner.Config's JSON names) as parser defaults."""
    config = json.loads(Path(path).read_text())
    renames = {"skipTLS": "skip_tls", "skipFirst": "skip_first", "async": "async_"}
    defaults: dict[str, Any] = {}
    for key, value in config.items():
        dest = renames.get(key, key.replace("-", "_"))
        if key in ("data", "metadata", "tags", "reflect-metadata") and not isinstance(value, str):
            value = json.dumps(value)
        elif key == "import-paths" and isinstance(value, list):
            value = ",".join(value)
        defaults[dest] = value
    return defaults


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.config:
        parser.set_defaults(**_config_defaults(args.config))
        args = parser.parse_args(argv)
    refused = {"async_": "--async", "skip_tls": "--skipTLS", "debug": "--debug",
               "reflect_metadata": "--reflect-metadata"}
    for dest, flag_name in refused.items():
        if getattr(args, dest):
            parser.error(f"{flag_name} is not supported by this load generator")
    if args.load_schedule != "const" or args.concurrency_schedule != "const":
        parser.error("only the const load and concurrency schedules are supported")
    if bool(args.cert) != bool(args.key):
        parser.error("--cert and --key go together")
    if not args.call:
        parser.error("call required")
    if not args.host:
        parser.error("host required")
    return args


def options_from_args(args: argparse.Namespace) -> RunOptions:
    data: Any = None
    if args.data == "@":
        data = json.loads(sys.stdin.read())
    elif args.data.strip():
        data = _json_object(args.data)
    elif args.data_file:
        data = json.loads(Path(args.data_file).read_text())
    metadata_text = args.metadata.strip() or (Path(args.metadata_file).read_text() if args.metadata_file else "")
    return RunOptions(
        call=args.call, host=args.host, proto=args.proto, protoset=args.protoset,
        import_paths=[p for p in args.import_paths.split(",") if p.strip()],
        enable_compression=args.enable_compression, cacert=args.cacert, cert=args.cert, key=args.key,
        cname=args.cname, insecure=args.insecure, authority=args.authority, rps=args.rps,
        concurrency=args.concurrency, total=args.total, connections=args.connections, duration=args.duration,
        max_duration=args.max_duration, duration_stop=args.duration_stop, timeout=args.timeout,
        dial_timeout=args.connect_timeout, keepalive=args.keepalive, stream_interval=args.stream_interval,
        data=data, binary=bool(args.binary or args.binary_file),
        metadata=_json_object(metadata_text) if metadata_text else None,
        name=args.name.strip(), tags=_json_object(args.tags) if args.tags.strip() else None,
        skip_first=args.skip_first, count_errors=args.count_errors,
    )


def _pool_from_protoset(raw: bytes) -> descriptor_pool.DescriptorPool:
    files = descriptor_pb2.FileDescriptorSet.FromString(raw).file
    by_name = {f.name: f for f in files}
    pool = descriptor_pool.DescriptorPool()
    added: set[str] = set()

    def add(name: str) -> None:  # dependencies first, whatever order the set lists them in
        if name in added:
            return
        added.add(name)
        for dependency in by_name[name].dependency:
            add(dependency)
        pool.Add(by_name[name])

    for name in by_name:
        add(name)
    return pool


def _compile_proto(proto: str, import_paths: Sequence[str]) -> bytes:
    """A --proto file compiled to a protoset with grpcio-tools; like ghz, its folder and . are import paths."""
    import grpc_tools
    from grpc_tools import protoc

    includes = [*import_paths, str(Path(proto).parent), ".", str(Path(grpc_tools.__file__).parent / "_proto")]
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "call.protoset"
        code = protoc.main(["protoc", *(f"-I{p}" for p in includes), "--include_imports",
                            f"--descriptor_set_out={out}", proto])
        if code != 0:
            raise ValueError(f"could not compile {proto}")
        return out.read_bytes()


def _split_call(call: str) -> tuple[str, str]:
    service, sep, method = call.rpartition("/") if "/" in call else call.rpartition(".")
    if not sep or not service or not method:
        raise ValueError(f"call: invalid method name {call!r}: give package.Service/Method")
    return service, method


def resolve_method(options: RunOptions) -> MethodDescriptor:
    """The method's descriptor from --proto, --protoset or, like ghz without either, server reflection."""
    service, method = _split_call(options.call)
    channel = None
    if options.proto:
        pool = _pool_from_protoset(_compile_proto(options.proto, options.import_paths))
    elif options.protoset:
        pool = _pool_from_protoset(Path(options.protoset).read_bytes())
    else:
        from grpc_reflection.v1alpha.proto_reflection_descriptor_database import (
            ProtoReflectionDescriptorDatabase,
        )

        channel = _sync_channel(options)
        pool = descriptor_pool.DescriptorPool(ProtoReflectionDescriptorDatabase(channel))
    try:
        return pool.FindServiceByName(service).FindMethodByName(method)
    except (KeyError, grpc.RpcError) as error:
        raise ValueError(f"cannot find method {options.call!r}: {error}") from error
    finally:
        if channel is not None:
            channel.close()


def _channel_options(options: RunOptions) -> list[tuple[str, Any]]:
    opts: list[tuple[str, Any]] = [("grpc.max_receive_message_length", MAX_INT32),
                                   ("grpc.max_send_message_length", MAX_INT32)]
    if options.authority:
        opts.append(("grpc.default_authority", options.authority))
    if options.cname:
        opts.append(("grpc.ssl_target_name_override", options.cname))
    if options.keepalive:
        ms = round(options.keepalive * 1000)
        opts += [("grpc.keepalive_time_ms", ms), ("grpc.keepalive_timeout_ms", ms)]
    return opts


def _credentials(options: RunOptions) -> grpc.ChannelCredentials:
    def read(path: str) -> bytes | None:
        return Path(path).read_bytes() if path else None

    return grpc.ssl_channel_credentials(root_certificates=read(options.cacert), private_key=read(options.key),
                                        certificate_chain=read(options.cert))


def _sync_channel(options: RunOptions) -> grpc.Channel:
    if options.insecure:
        return grpc.insecure_channel(options.host, options=_channel_options(options))
    return grpc.secure_channel(options.host, _credentials(options), options=_channel_options(options))


def open_channel(options: RunOptions) -> grpc.aio.Channel:
    compression = grpc.Compression.Gzip if options.enable_compression else None
    if options.insecure:
        return grpc.aio.insecure_channel(options.host, options=_channel_options(options), compression=compression)
    return grpc.aio.secure_channel(options.host, _credentials(options), options=_channel_options(options),
                                   compression=compression)


_TEMPLATE = re.compile(r"\{\{\s*\.(\w+)\s*\}\}")


def _template_fields(method: MethodDescriptor) -> dict[str, Any]:
    """ghz's call template data (runner/call_template_data.go) for the call being made."""
    now = time.time_ns()
    return {
        "WorkerID": worker_id.get(), "RequestNumber": request_number.get(),
        "FullyQualifiedName": method.full_name, "MethodName": method.name,
        "ServiceName": method.containing_service.name, "InputName": method.input_type.name,
        "OutputName": method.output_type.name, "IsClientStreaming": str(method.client_streaming).lower(),
        "IsServerStreaming": str(method.server_streaming).lower(), "Timestamp": _go_time(now, nano=False),
        "TimestampUnix": now // SECOND, "TimestampUnixMilli": now // 1_000_000, "TimestampUnixNano": now,
        "UUID": str(uuid.uuid4()),
    }


def _render(text: str, method: MethodDescriptor) -> str:
    values = _template_fields(method)
    return _TEMPLATE.sub(lambda m: str(values.get(m.group(1), m.group(0))), text)


def make_call(method: MethodDescriptor, channels: Sequence[grpc.aio.Channel], options: RunOptions,
              binary: bytes | None = None) -> Callable[[], Awaitable[object]]:
    """One call of `method` per invocation, with ghz's data (an array: one element per call, round robin;
    the whole array for a client stream) and metadata, both templated per call when they use {{.Field}}."""
    request_class = message_factory.GetMessageClass(method.input_type)
    response_class = message_factory.GetMessageClass(method.output_type)
    path = f"/{method.containing_service.full_name}/{method.name}"
    kind = {(False, False): "unary_unary", (False, True): "unary_stream", (True, False): "stream_unary",
            (True, True): "stream_stream"}[(method.client_streaming, method.server_streaming)]
    stubs = [getattr(ch, kind)(path, request_serializer=lambda m: m.SerializeToString(),
                               response_deserializer=response_class.FromString) for ch in channels]
    data_text = json.dumps(options.data) if options.data is not None else ""
    metadata_text = json.dumps(options.metadata) if options.metadata else ""
    templated_data, templated_metadata = "{{" in data_text, "{{" in metadata_text

    def messages(text: str) -> list[Message]:
        if binary is not None:
            return [request_class.FromString(binary)]
        value = json.loads(text) if text else {}
        items = value if isinstance(value, list) else [value]
        return [json_format.ParseDict(item, request_class()) for item in items] or [request_class()]

    def metadata_of(text: str) -> tuple[tuple[str, str], ...] | None:
        value = json.loads(text) if text else {}
        return tuple((str(k).lower(), str(v)) for k, v in value.items()) or None

    fixed_messages = None if templated_data else messages(data_text)
    fixed_metadata = None if templated_metadata else metadata_of(metadata_text)
    timeout = options.timeout or None

    async def stream(items: list[Message]) -> AsyncIterator[Message]:
        for index, item in enumerate(items):
            if index and options.stream_interval:
                await asyncio.sleep(options.stream_interval)
            yield item

    async def call() -> object:
        inputs = fixed_messages or messages(_render(data_text, method))
        metadata = fixed_metadata if not templated_metadata else metadata_of(_render(metadata_text, method))
        stub = stubs[connection_index.get() % len(stubs)]
        if kind in ("unary_unary", "unary_stream"):
            one = inputs[request_number.get() % len(inputs)]
            if kind == "unary_unary":
                return await stub(one, metadata=metadata, timeout=timeout)
            return [reply async for reply in stub(one, metadata=metadata, timeout=timeout)]
        if kind == "stream_unary":
            return await stub(stream(inputs), metadata=metadata, timeout=timeout)
        return [reply async for reply in stub(stream(inputs), metadata=metadata, timeout=timeout)]

    return call


def _binary_data(args: argparse.Namespace) -> bytes | None:
    """The call data as one serialized message: stdin's (-b), a file's (-B), or None (JSON call data)."""
    if args.binary:
        return sys.stdin.buffer.read()
    return Path(args.binary_file).read_bytes() if args.binary_file else None


async def run_cli(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    channels: list[grpc.aio.Channel] = []
    try:
        try:  # like ghz: a bad setting, file, method or data is one line on stderr and exit status 1
            options = options_from_args(args)
            options.check()
            binary = await asyncio.to_thread(_binary_data, args)
            method = resolve_method(options)
            channels = [open_channel(options) for _ in range(options.connections)]
            call = make_call(method, channels, options, binary)
        except (ValueError, OSError, argparse.ArgumentTypeError, json_format.ParseError) as error:
            print(error, file=sys.stderr)
            return 1
        report = await run_load(call, options)
    finally:
        for channel in channels:
            await channel.close()
    text = report.render(args.format)
    if args.output.strip():
        await asyncio.to_thread(Path(args.output.strip()).write_text, text)
    else:
        sys.stdout.write(text)
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    return asyncio.run(run_cli(argv))


if __name__ == "__main__":
    sys.exit(main())

