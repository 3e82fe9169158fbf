"""devtools.loadgen against a real in-process grpc.aio server, and its output against ghz's own.

tests/fixtures/ghz_report.json is a real ghz JSON report, recorded by the iter8 project from a ghz run
(github.com/iter8-tools/iter8, metrics/server_test.go, `ghzResultJSON`, dated 2023-07-17), taken out of
the wrapper iter8 keeps it in; iter8 had already cut its `details` to 8 entries. It is a run with
--count-errors against a refused connection: every call Unavailable. ghz's own docs sample
(github.com/bojand/ghz, www/website/static/pretty.json, linked from www/docs/output.md) predates ghz's
current option names, so `options` is also checked against the JSON tags of ghz's runner.Options
(runner/reporter.go), listed below.
"""

import argparse
import asyncio
import json
import re
import socket
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import grpc
import pytest
from google.protobuf import descriptor_pb2, json_format, message_factory
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_health.v1._async import HealthServicer

from devtools import certs
from devtools.loadgen import (
    CLOSING,
    GO_CODE_NAMES,
    MAX_INT32,
    RunOptions,
    histogram,
    latencies,
    parse_args,
    parse_duration,
    resolve_method,
    run_cli,
    run_load,
)

ROOT = Path(__file__).resolve().parents[2]
GHZ = json.loads((ROOT / "tests" / "fixtures" / "ghz_report.json").read_text())
PROTOSET = ROOT / "build" / "cloudimg.protoset"
SLOW_METHOD = "/loadgen.test.Slow/Sleep"
CHECK = "grpc.health.v1.Health/Check"

# ghz's runner.Options JSON names (runner/reporter.go), and those without omitempty (always written).
GHZ_OPTION_KEYS = {
    "call", "host", "proto", "protoset", "import-paths", "enable-compression", "cacert", "cert", "key", "cname",
    "skipTLS", "insecure", "authority", "rps", "load-schedule", "load-start", "load-end", "load-step",
    "load-step-duration", "load-max-duration", "concurrency", "concurrency-schedule", "concurrency-start",
    "concurrency-end", "concurrency-step", "concurrency-step-duration", "concurrency-max-duration", "total",
    "async", "connections", "duration", "timeout", "dial-timeout", "keepalive", "data", "binary", "metadata",
    "CPUs", "name", "skipFirst", "count-errors",
}
GHZ_ALWAYS = {
    "insecure", "load-schedule", "load-start", "load-end", "load-step", "load-step-duration", "load-max-duration",
    "concurrency-schedule", "concurrency-start", "concurrency-end", "concurrency-step",
    "concurrency-step-duration", "concurrency-max-duration", "binary", "CPUs",
}
RFC3339 = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(Z|[+-]\d\d:\d\d)$")
RFC3339_NANO = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d{1,9})?(Z|[+-]\d\d:\d\d)$")
GO_ERROR = re.compile(r"^rpc error: code = (\w+) desc = ")

Call = Callable[[], Awaitable[object]]


async def _sleep(request: bytes, context: grpc.aio.ServicerContext) -> bytes:
    await asyncio.sleep(float(request.decode()))
    return b""


@pytest.fixture(scope="module")
async def server_addr() -> AsyncIterator[str]:
    server = grpc.aio.server(options=[("grpc.so_reuseport", 0)])
    health_pb2_grpc.add_HealthServicer_to_server(HealthServicer(), server)
    server.add_generic_rpc_handlers([grpc.method_handlers_generic_handler(
        "loadgen.test.Slow", {"Sleep": grpc.unary_unary_rpc_method_handler(_sleep)})])
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    yield f"127.0.0.1:{port}"
    await server.stop(0)


@pytest.fixture(scope="module")
async def channel(server_addr: str) -> AsyncIterator[grpc.aio.Channel]:
    async with grpc.aio.insecure_channel(server_addr) as ch:
        yield ch


@pytest.fixture(scope="module")
def health_protoset(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A protoset of grpc/health/v1/health.proto, as `protoc --include_imports --descriptor_set_out` makes."""
    files = descriptor_pb2.FileDescriptorSet()
    health_pb2.DESCRIPTOR.CopyToProto(files.file.add())
    path = tmp_path_factory.mktemp("protoset") / "health.protoset"
    path.write_bytes(files.SerializeToString())
    return path


def check(channel: grpc.aio.Channel, service: str = "") -> Call:
    stub = health_pb2_grpc.HealthStub(channel)
    return lambda: stub.Check(health_pb2.HealthCheckRequest(service=service), timeout=5)


def mixed(channel: grpc.aio.Channel, every: int = 4) -> Call:
    """Check, with every `every`th call asking for an unknown service (NOT_FOUND)."""
    known, unknown = check(channel), check(channel, "no.such.Service")
    calls = 0

    def call() -> Awaitable[object]:
        nonlocal calls
        calls += 1
        return unknown() if calls % every == 0 else known()

    return call


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def go_code(error: str) -> str:
    """The gRPC code name in an error as Go's grpc writes it (``rpc error: code = NotFound desc = ...``)."""
    matched = GO_ERROR.match(error)
    assert matched is not None, error
    return matched[1]


def assert_same_shape(ours: dict[str, Any], ghz: dict[str, Any]) -> None:
    """Our report has ghz's keys at every level, its value types and its spellings."""
    assert ours.keys() == ghz.keys()
    for key in ("count", "total", "average", "fastest", "slowest"):
        assert isinstance(ours[key], int), key
        assert isinstance(ghz[key], int), key
    assert isinstance(ours["rps"], int | float)
    assert isinstance(ghz["rps"], float)
    assert RFC3339.match(ours["date"])
    assert RFC3339.match(ghz["date"])
    assert ours["endReason"] in ("normal", "timeout")
    assert ghz["endReason"] == "normal"

    assert ghz["options"].keys() <= GHZ_OPTION_KEYS
    assert GHZ_ALWAYS <= ours["options"].keys() <= GHZ_OPTION_KEYS
    for key in ours["options"].keys() & ghz["options"].keys():
        assert type(ours["options"][key]) is type(ghz["options"][key]), key

    for section in ("latencyDistribution", "histogram", "details"):
        assert ours[section], section
        assert ghz[section], section
        for ours_entry in ours[section]:
            assert ours_entry.keys() == ghz[section][0].keys(), section
    assert [p["percentage"] for p in ours["latencyDistribution"]] == \
        [p["percentage"] for p in ghz["latencyDistribution"]] == [10, 25, 50, 75, 90, 95, 99]
    assert all(isinstance(p["latency"], int) for p in ours["latencyDistribution"] + ghz["latencyDistribution"])
    assert len(ours["histogram"]) == len(ghz["histogram"]) == 11
    for bucket in ours["histogram"] + ghz["histogram"]:
        assert isinstance(bucket["mark"], int | float)
        assert isinstance(bucket["count"], int)
        assert isinstance(bucket["frequency"], int | float)
    for detail in ours["details"] + ghz["details"]:
        assert RFC3339_NANO.match(detail["timestamp"])
        assert isinstance(detail["latency"], int)
        assert detail["status"] in GO_CODE_NAMES.values()
        if detail["status"] == "OK":
            assert detail["error"] == ""
        else:
            assert go_code(detail["error"]) == detail["status"]

    for distribution in (ours, ghz):
        assert set(distribution["statusCodeDistribution"]) <= set(GO_CODE_NAMES.values())
        for error in distribution["errorDistribution"]:
            assert go_code(error) in distribution["statusCodeDistribution"]


async def test_the_json_report_has_ghz_keys_types_and_spellings(channel: grpc.aio.Channel) -> None:
    report = await run_load(mixed(channel), RunOptions(call=CHECK, host="127.0.0.1:1", insecure=True,
                                                       concurrency=4, total=40))
    ours = json.loads(report.render("json"))
    assert_same_shape(ours, GHZ)
    assert ours["statusCodeDistribution"] == {"OK": 30, "NotFound": 10}
    assert len(ours["details"]) == ours["count"] == 40


async def test_a_refused_connection_reports_as_ghz_did(tmp_path: Path, health_protoset: Path) -> None:
    """The fixture's run: every call Unavailable, the latency statistics from failed calls (--count-errors)."""
    out = tmp_path / "refused.json"
    code = await run_cli(["--insecure", "--protoset", str(health_protoset), "--call", CHECK, "--count-errors",
                          "-c", "2", "-n", "10", "-t", "2s", "-O", "pretty", "-o", str(out),
                          f"127.0.0.1:{closed_port()}"])
    assert code == 0
    ours = json.loads(out.read_text())
    assert_same_shape(ours, GHZ)
    assert ours["statusCodeDistribution"] == {"Unavailable": 10} == {
        k: v // 20 for k, v in GHZ["statusCodeDistribution"].items()}
    assert ours["options"]["count-errors"] is True
    assert ours["options"]["dial-timeout"] == 10 * 10**9


async def test_the_command_line_runs_a_protoset_method(server_addr: str, health_protoset: Path,
                                                       tmp_path: Path) -> None:
    out = tmp_path / "check.json"
    code = await run_cli(["--insecure", "--protoset", str(health_protoset), "--call", CHECK, "-d", '{"service": ""}',
                          "-m", '{"x-request-id": "{{.RequestNumber}}"}', "-c", "4", "-n", "40", "--name", "health",
                          "-O", "json", "-o", str(out), server_addr])
    assert code == 0
    ours = json.loads(out.read_text())
    assert ours["count"] == 40 == sum(ours["statusCodeDistribution"].values()) == len(ours["details"])
    assert ours["statusCodeDistribution"] == {"OK": 40}
    assert ours["errorDistribution"] == {}
    assert ours["name"] == "health"
    assert ours["endReason"] == "normal"
    options = ours["options"]
    assert (options["call"], options["host"], options["total"], options["concurrency"]) == (CHECK, server_addr, 40, 4)
    assert options["data"] == {"service": ""}
    assert options["metadata"] == {"x-request-id": "{{.RequestNumber}}"}
    assert options["timeout"] == 20 * 10**9
    assert options["insecure"] is True
    assert sum(b["count"] for b in ours["histogram"]) == 40


async def test_the_default_output_is_ghz_summary(server_addr: str, health_protoset: Path,
                                                 capsys: pytest.CaptureFixture[str]) -> None:
    assert await run_cli(["--insecure", "--protoset", str(health_protoset), "--call", "grpc.health.v1.Health.Check",
                          "-c", "2", "-n", "20", server_addr]) == 0
    text = capsys.readouterr().out
    for line in ("\nSummary:\n", "  Count:\t20\n", "  Requests/sec:\t", "\nResponse time histogram:\n", " |∎",
                 "Latency distribution:\n  10 % in ", "\n  99 % in ",
                 "Status code distribution:\n  [OK]   20 responses"):
        assert line in text
    assert "Error distribution" not in text


async def test_duration_ignores_total_and_ends_by_time(server_addr: str, health_protoset: Path,
                                                       tmp_path: Path) -> None:
    out = tmp_path / "z.json"
    started = time.perf_counter()
    assert await run_cli(["--insecure", "--protoset", str(health_protoset), "--call", CHECK, "-z", "300ms",
                          "-n", "5", "-c", "2", "-O", "json", "-o", str(out), server_addr]) == 0
    assert time.perf_counter() - started < 2.0
    ours = json.loads(out.read_text())
    assert ours["endReason"] == "timeout"
    assert ours["count"] == sum(ours["statusCodeDistribution"].values()) > 0
    assert ours["options"]["duration"] == 300_000_000
    assert ours["options"]["total"] == MAX_INT32


async def test_tls_with_a_ca_and_a_client_certificate(tmp_path: Path, health_protoset: Path) -> None:
    """--cacert verifies the server; --cert/--key present a client certificate to a mutual-TLS server."""
    issued = certs.issue(tmp_path / "pki")

    def read(name: str) -> bytes:
        return issued[name].read_bytes()

    server = grpc.aio.server(options=[("grpc.so_reuseport", 0)])
    health_pb2_grpc.add_HealthServicer_to_server(HealthServicer(), server)
    port = server.add_secure_port("127.0.0.1:0", grpc.ssl_server_credentials(
        [(read("catalog.key"), read("catalog.pem"))], root_certificates=read("ca.pem"), require_client_auth=True))
    await server.start()
    try:
        base = ["--protoset", str(health_protoset), "--call", CHECK, "--cacert", str(issued["ca.pem"]),
                "-c", "2", "-n", "4", "-t", "5s", "-O", "json"]
        out = tmp_path / "tls.json"
        assert await run_cli([*base, "--cert", str(issued["gateway.pem"]), "--key", str(issued["gateway.key"]),
                              "--cname", "catalog", "-o", str(out), f"127.0.0.1:{port}"]) == 0
        ours = json.loads(out.read_text())
        assert ours["statusCodeDistribution"] == {"OK": 4}
        assert ours["options"]["insecure"] is False
        assert ours["options"]["cacert"] == str(issued["ca.pem"])
        assert ours["options"]["cname"] == "catalog"
        assert await run_cli([*base, "-o", str(out), f"127.0.0.1:{port}"]) == 0  # no client certificate
        assert "OK" not in json.loads(out.read_text())["statusCodeDistribution"]
    finally:
        await server.stop(0)


async def test_bad_data_is_one_line_and_exit_status_1(health_protoset: Path,
                                                      capsys: pytest.CaptureFixture[str]) -> None:
    assert await run_cli(["--insecure", "--protoset", str(health_protoset), "--call", CHECK, "-d", '{"nope": 1}',
                          "127.0.0.1:1"]) == 1
    assert "nope" in capsys.readouterr().err


def test_flags_parse_like_ghz() -> None:
    args = parse_args(["--call", "pkg.Service/Method", "--protoset", "x.protoset", "--insecure", "-c", "7",
                       "-n", "300", "-z", "1m30s", "-x", "2s", "-t", "250ms", "-d", '{"a": 1}', "-m", '{"k": "v"}',
                       "-O", "pretty", "-o", "out.json", "-i", "a,b", "--connections", "2", "--skipFirst", "3",
                       "-r", "100", "--duration-stop", "wait", "--count-errors", "host:1"])
    assert (args.call, args.protoset, args.insecure, args.concurrency, args.total) == \
        ("pkg.Service/Method", "x.protoset", True, 7, 300)
    assert (args.duration, args.max_duration, args.timeout) == (90.0, 2.0, 0.25)
    assert (args.data, args.metadata, args.format, args.output, args.host) == \
        ('{"a": 1}', '{"k": "v"}', "pretty", "out.json", "host:1")
    assert (args.import_paths, args.connections, args.skip_first, args.rps, args.duration_stop) == \
        ("a,b", 2, 3, 100, "wait")
    defaults = parse_args(["--call", "a.B/C", "h:1"])
    assert (defaults.concurrency, defaults.total, defaults.timeout, defaults.format, defaults.insecure) == \
        (50, 200, 20.0, "summary", False)  # ghz's defaults
    with pytest.raises(SystemExit):
        parse_args(["--call", "a.B/C", "--async", "h:1"])  # refused, not ignored


def test_a_config_file_is_read_and_flags_override_it(tmp_path: Path) -> None:
    config = tmp_path / "ghz.json"
    config.write_text(json.dumps({"call": "a.B/C", "host": "h:1", "insecure": True, "total": 5, "concurrency": 2,
                                  "timeout": "3s", "data": {"name": "x"}, "import-paths": ["p", "q"]}))
    args = parse_args(["--config", str(config), "-n", "9"])
    assert (args.call, args.host, args.insecure, args.total, args.concurrency, args.timeout) == \
        ("a.B/C", "h:1", True, 9, 2, 3.0)
    assert json.loads(args.data) == {"name": "x"}
    assert args.import_paths == "p,q"


def test_go_durations() -> None:
    assert parse_duration("10s") == 10
    assert parse_duration("3m") == 180
    assert parse_duration("0") == 0
    assert parse_duration("1h2m3.5s") == 3723.5
    assert parse_duration("250ms") == 0.25
    assert parse_duration("1500us") == pytest.approx(0.0015)
    with pytest.raises(argparse.ArgumentTypeError):
        parse_duration("10")  # Go wants a unit


@pytest.mark.skipif(not PROTOSET.exists(), reason="build/cloudimg.protoset is made by `make gen`")
def test_methods_resolve_from_the_cloudimg_protoset() -> None:
    method = resolve_method(RunOptions(call="cloudimg.gateway.v1.ImageService/GetImage", protoset=str(PROTOSET)))
    assert method.input_type.full_name == "cloudimg.gateway.v1.GetImageRequest"
    request = json_format.ParseDict({"imageId": "img-12345678"}, message_factory.GetMessageClass(method.input_type)())
    assert [(field.name, value) for field, value in request.ListFields()] == [("image_id", "img-12345678")]
    dotted = resolve_method(RunOptions(call="cloudimg.gateway.v1.ImageService.GetImage", protoset=str(PROTOSET)))
    assert dotted.full_name == method.full_name


def test_percentiles_and_histogram_follow_ghz() -> None:
    ordered = [i / 1000 for i in range(1, 11)]  # 1..10 ms
    assert [(p.percentage, p.latency_ns) for p in latencies(ordered)] == [
        (10, 1_000_000), (25, 3_000_000), (50, 5_000_000), (75, 8_000_000), (90, 9_000_000),
        (95, 10_000_000), (99, 10_000_000)]
    buckets = histogram(ordered)
    assert len(buckets) == 11
    assert buckets[0].mark == 0.001
    assert buckets[-1].mark == 0.010
    assert sum(b.count for b in buckets) == 10
    assert sum(b.frequency for b in buckets) == pytest.approx(1)


async def test_counts_add_up_and_percentiles_are_ordered(channel: grpc.aio.Channel) -> None:
    report = await run_load(check(channel), RunOptions(concurrency=8, total=200, name="Check"))
    assert report.count == 200 == sum(report.status_code_distribution.values())
    assert report.status_code_distribution == {"OK": 200}
    assert report.error_distribution == {}
    assert report.end_reason == "normal"
    assert report.latency_distribution is not None
    points = [p.latency_ns for p in report.latency_distribution]
    assert 0 < report.fastest_ns <= points[0]
    assert points == sorted(points)
    assert points[-1] <= report.slowest_ns
    assert report.fastest_ns <= report.average_ns <= report.slowest_ns
    assert report.rps == pytest.approx(report.count / (report.total_ns / 1e9))


async def test_failures_are_counted_by_ghz_code_names(channel: grpc.aio.Channel) -> None:
    report = await run_load(mixed(channel), RunOptions(concurrency=4, total=100))
    assert report.status_code_distribution == {"OK": 75, "NotFound": 25}
    assert sum(report.error_distribution.values()) == 25
    assert all(key.startswith("rpc error: code = NotFound desc = ") for key in report.error_distribution)
    assert report.failure_rate == pytest.approx(0.25)
    assert report.histogram is not None
    assert sum(b.count for b in report.histogram) == 75  # OK calls only, as ghz without --count-errors


async def test_a_deadline_is_deadline_exceeded(channel: grpc.aio.Channel) -> None:
    slow = channel.unary_unary(SLOW_METHOD)
    report = await run_load(lambda: slow(b"1", timeout=0.05), RunOptions(concurrency=2, total=2))
    assert report.status_code_distribution == {"DeadlineExceeded": 2}
    assert report.latency_distribution is None
    assert report.histogram is None
    assert report.fastest_ns == 0
    counted = await run_load(lambda: slow(b"1", timeout=0.05), RunOptions(concurrency=2, total=2, count_errors=True))
    assert counted.latency_distribution
    assert counted.fastest_ns > 0


async def test_warmup_calls_are_made_but_not_counted(channel: grpc.aio.Channel) -> None:
    stub, calls = check(channel), 0

    def counted() -> Awaitable[object]:
        nonlocal calls
        calls += 1
        return stub()

    report = await run_load(counted, RunOptions(concurrency=3, total=20), warmup=10)
    assert calls == 30
    assert report.count == 20


async def test_skip_first_leaves_calls_out_of_the_tally(channel: grpc.aio.Channel) -> None:
    report = await run_load(check(channel), RunOptions(concurrency=2, total=20, skip_first=5))
    assert report.details is not None
    assert report.count == 15 == len(report.details)


async def test_max_duration_keeps_total(channel: grpc.aio.Channel) -> None:
    report = await run_load(check(channel), RunOptions(concurrency=2, total=20, max_duration=5))
    assert report.count == 20
    assert report.end_reason == "normal"


async def test_calls_in_flight_at_the_duration_close_as_canceled(channel: grpc.aio.Channel) -> None:
    slow = channel.unary_unary(SLOW_METHOD)
    started = time.perf_counter()
    report = await run_load(lambda: slow(b"10", timeout=30), RunOptions(concurrency=3, duration=0.1))
    assert time.perf_counter() - started < 1.5
    assert report.status_code_distribution == {"Canceled": 3}
    assert report.error_distribution == {CLOSING: 3}
    assert report.end_reason == "timeout"


async def test_duration_stop_wait_and_ignore(channel: grpc.aio.Channel) -> None:
    slow = channel.unary_unary(SLOW_METHOD)
    waited = await run_load(lambda: slow(b"0.3", timeout=5), RunOptions(concurrency=2, duration=0.1,
                                                                       duration_stop="wait"))
    assert waited.status_code_distribution == {"OK": 2}
    assert waited.total_ns >= 0.3e9
    ignored = await run_load(lambda: slow(b"10", timeout=30), RunOptions(concurrency=2, duration=0.1,
                                                                        duration_stop="ignore"))
    assert ignored.count == 0
    assert ignored.details is None
    assert json.loads(ignored.render("json"))["details"] is None  # ghz writes null for no calls


async def test_summary_and_csv(channel: grpc.aio.Channel) -> None:
    report = await run_load(mixed(channel), RunOptions(concurrency=2, total=20, name="Check c=2"))
    text = report.summary()
    for label in ("Summary:\n  Name:\t\tCheck c=2\n  Count:\t20\n", "Response time histogram:", "  50 % in ",
                  "Status code distribution:\n  [OK]         15 responses   \n  [NotFound]   5 responses    \n",
                  "Error distribution:\n  [5]   rpc error: code = NotFound desc = "):
        assert label in text
    rows = report.csv().strip().splitlines()
    assert rows[0] == "duration (ms),status,error"
    assert len(rows) == 21
    assert sum(row.split(",")[1] == "NotFound" for row in rows[1:]) == 5


def test_bad_options_are_refused() -> None:
    with pytest.raises(ValueError, match="number of connections cannot be greater than concurrency"):
        RunOptions(concurrency=1, connections=2).check()
    with pytest.raises(ValueError, match="you cannot skip more requests than those run"):
        RunOptions(total=5, skip_first=6).check()


def test_a_proto_file_is_compiled_with_its_imports(tmp_path: Path) -> None:
    (tmp_path / "dep.proto").write_text('syntax = "proto3";\npackage t;\nimport "google/protobuf/timestamp.proto";\n'
                                        "message When { google.protobuf.Timestamp at = 1; }\n")
    (tmp_path / "svc").mkdir()
    (tmp_path / "svc" / "svc.proto").write_text('syntax = "proto3";\npackage t;\nimport "dep.proto";\n'
                                                "service Clock { rpc Now(When) returns (When); }\n")
    method = resolve_method(RunOptions(call="t.Clock/Now", proto=str(tmp_path / "svc" / "svc.proto"),
                                       import_paths=[str(tmp_path)]))
    assert method.input_type.full_name == "t.When"
    assert not method.client_streaming
