"""The `cloudimg` CLI against a real gRPC server with small fake gateway servicers."""

import io
import json
import subprocess
import sys
from concurrent import futures

import grpc
import pytest
from google.protobuf import any_pb2, timestamp_pb2
from google.rpc import code_pb2, error_details_pb2, status_pb2
from google.type import money_pb2
from grpc_status import rpc_status

from cloudimg.gateway.v1 import (
    account_service_pb2 as account_pb,
    account_service_pb2_grpc as account_grpc,
    image_service_pb2 as image_pb,
    image_service_pb2_grpc as image_grpc,
    image_share_service_pb2 as share_pb,
    image_share_service_pb2_grpc as share_grpc,
    instance_service_pb2 as instance_pb,
    instance_service_pb2_grpc as instance_grpc,
)
from cloudimg_cli import main as cli_main, render
from cloudimg_cli.main import main

KEY = "ak-test-secret"


def ts(text: str) -> timestamp_pb2.Timestamp:
    stamp = timestamp_pb2.Timestamp()
    stamp.FromJsonString(text)
    return stamp


def usd(units: int, nanos: int = 0) -> money_pb2.Money:
    return money_pb2.Money(currency_code="USD", units=units, nanos=nanos)


IMAGES = [
    image_pb.Image(image_id="img-ubuntu22", name="Ubuntu 22.04", region="ap-guangzhou",
                   image_type=image_pb.IMAGE_TYPE_PUBLIC, state=image_pb.IMAGE_STATE_NORMAL,
                   platform="Ubuntu", architecture=image_pb.ARCHITECTURE_X86_64, size_gb=20,
                   create_time=ts("2024-05-01T08:30:00Z"), image_allowed=True),
    image_pb.Image(image_id="img-debian12", name="Debian 12", image_type=image_pb.IMAGE_TYPE_PUBLIC,
                   state=image_pb.IMAGE_STATE_NORMAL, platform="Debian", size_gb=20),
    image_pb.Image(image_id="img-shared01", name="team base", image_type=image_pb.IMAGE_TYPE_SHARED,
                   state=image_pb.IMAGE_STATE_NORMAL, platform="Ubuntu", size_gb=50,
                   share_state=image_pb.SHARE_STATE_ACCEPTED),
]

QUOTE = instance_pb.Quote(
    currency_code="USD",
    charge_type=instance_pb.CHARGE_TYPE_POSTPAID_BY_HOUR,
    image_allowed=True,
    lines=[
        instance_pb.QuoteLine(kind=instance_pb.QUOTE_LINE_KIND_INSTANCE, description="S5.MEDIUM4",
                              unit_price=usd(0, 120_000_000), quantity=2, unit="instance-hour",
                              amount=usd(0, 240_000_000)),
        instance_pb.QuoteLine(kind=instance_pb.QUOTE_LINE_KIND_IMAGE_LICENSE,
                              description="Windows Server license", unit_price=usd(0, 6_250_000),
                              quantity=2, unit="instance-hour", amount=usd(0, 12_500_000)),
    ],
    total=usd(0, 252_500_000),
)

INSTANCES = [
    instance_pb.Instance(instance_id=f"ins-0000000{n}", instance_name=f"web-{n}",
                         region="ap-guangzhou", instance_type="S5.MEDIUM4", image_id="img-ubuntu22",
                         state=instance_pb.INSTANCE_STATE_RUNNING,
                         charge_type=instance_pb.CHARGE_TYPE_POSTPAID_BY_HOUR,
                         create_time=ts("2024-06-01T00:00:00Z"))
    for n in range(3)
]


def job_image(image_id: str, state: str, percent: int, **more) -> image_pb.Image:
    """A custom image whose job is at ``percent`` (state by its short name: "CREATING", "NORMAL", ...)."""
    return image_pb.Image(image_id=image_id, image_type=image_pb.IMAGE_TYPE_PRIVATE,
                          state=image_pb.ImageState.Value(f"IMAGE_STATE_{state}"), progress_percent=percent,
                          **more)


def authorize(context: grpc.ServicerContext) -> None:
    if dict(context.invocation_metadata()).get("authorization") != f"Bearer {KEY}":
        context.abort(grpc.StatusCode.UNAUTHENTICATED, "invalid API key")


def page(items: list, request) -> tuple[list, str]:
    """Fake pagination: the page token is the offset."""
    start = int(request.page_token or 0)
    end = start + (request.page_size or 2)
    return items[start:end], str(end) if end < len(items) else ""


class Fakes(image_grpc.ImageServiceServicer, instance_grpc.InstanceServiceServicer,
            share_grpc.ImageShareServiceServicer, account_grpc.AccountServiceServicer):
    """All four gateway services; each call is authorized and its request recorded."""

    def __init__(self):
        self.requests = []
        self.time_remaining = None
        self.run_failures = []  # each aborts one RunInstances call, in order
        self.failures = {}  # method name -> aborts of its next calls, in order
        self.jobs = {}  # image id -> what GetImage answers for it, one after the other (the last one stays)

    def record(self, request, context):
        authorize(context)
        self.requests.append(request)

    def ListRegions(self, request, context):
        self.record(request, context)
        return image_pb.ListRegionsResponse(regions=[
            image_pb.Region(region_id="ap-guangzhou", display_name="Guangzhou", mainland=True,
                            sync_enabled=True),
            image_pb.Region(region_id="na-ashburn", display_name="Virginia"),
        ])

    def ListImages(self, request, context):
        self.record(request, context)
        images, token = page(IMAGES, request)
        return image_pb.ListImagesResponse(images=images, next_page_token=token)

    def GetImage(self, request, context):
        self.record(request, context)
        states = self.jobs.get(request.image_id)
        if states:
            return image_pb.GetImageResponse(image=states.pop(0) if len(states) > 1 else states[0])
        for image in IMAGES:
            if image.image_id == request.image_id:
                return image_pb.GetImageResponse(image=image)
        detail = any_pb2.Any()
        detail.Pack(error_details_pb2.ErrorInfo(reason="IMAGE_NOT_FOUND", domain="cloudimg"))
        context.abort_with_status(rpc_status.to_status(status_pb2.Status(
            code=code_pb2.NOT_FOUND, message=f"image {request.image_id} not found",
            details=[detail])))

    def ListInstanceTypes(self, request, context):
        self.record(request, context)
        return instance_pb.ListInstanceTypesResponse(instance_types=[
            instance_pb.InstanceType(instance_type="S5.MEDIUM4", family="S5", vcpus=2, memory_gb=4,
                                     architecture=instance_pb.CPU_ARCHITECTURE_X86_64),
        ])

    def QuoteRunInstances(self, request, context):
        self.record(request, context)
        return instance_pb.QuoteRunInstancesResponse(quote=QUOTE)

    def RunInstances(self, request, context):
        self.record(request, context)
        if self.run_failures:
            self.run_failures.pop(0)(context)
        ids = [] if request.dry_run else ["ins-aaaaaaaa", "ins-bbbbbbbb"]
        return instance_pb.RunInstancesResponse(instance_ids=ids, quote=QUOTE)

    def ListInstances(self, request, context):
        self.record(request, context)
        instances, token = page(INSTANCES, request)
        return instance_pb.ListInstancesResponse(instances=instances, next_page_token=token)

    def GetInstance(self, request, context):
        self.record(request, context)
        return instance_pb.GetInstanceResponse(instance=INSTANCES[0])

    def shares(self, request, context, state):
        self.record(request, context)
        return [share_pb.ImageShare(image_id=request.image_id, region="ap-guangzhou",
                                    owner_account_id="acc-owner", recipient_account_id=account,
                                    state=state)
                for account in request.account_ids]

    def ShareImage(self, request, context):
        return share_pb.ShareImageResponse(
            shares=self.shares(request, context, image_pb.SHARE_STATE_PENDING))

    def UnshareImage(self, request, context):
        return share_pb.UnshareImageResponse(
            shares=self.shares(request, context, image_pb.SHARE_STATE_UNSPECIFIED))

    def fail_maybe(self, method, context):
        if self.failures.get(method):
            self.failures[method].pop(0)(context)

    def CreateImage(self, request, context):
        self.record(request, context)
        self.fail_maybe("CreateImage", context)
        return image_pb.CreateImageResponse(image=job_image("img-new00001", "CREATING", 0, name=request.name))

    def ImportImage(self, request, context):
        self.record(request, context)
        return image_pb.ImportImageResponse(image=job_image("img-imp00001", "IMPORTING", 0, name=request.name))

    def SyncImage(self, request, context):
        self.record(request, context)
        return image_pb.SyncImageResponse(images=[
            job_image(f"img-syn0000{n}", "SYNCING", 0, region=region)
            for n, region in enumerate(request.destination_regions)])

    def UpdateImage(self, request, context):
        self.record(request, context)
        return image_pb.UpdateImageResponse(image=request.image)

    def DeleteImage(self, request, context):
        self.record(request, context)
        self.fail_maybe("DeleteImage", context)
        return image_pb.DeleteImageResponse()

    def GetImageQuota(self, request, context):
        self.record(request, context)
        return image_pb.GetImageQuotaResponse(region=request.region, custom_image_limit=10, custom_image_used=3,
                                              daily_operation_limit=5, daily_operation_used=5)

    def GetCallerIdentity(self, request, context):
        self.record(request, context)
        self.time_remaining = context.time_remaining()
        return account_pb.GetCallerIdentityResponse(account_id="acc-12345678",
                                                     display_name="Alice", api_key_id="key-1")


@pytest.fixture
def fakes(monkeypatch):
    fakes = Fakes()
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=4),
                         options=[("grpc.so_reuseport", 0)])
    image_grpc.add_ImageServiceServicer_to_server(fakes, server)
    instance_grpc.add_InstanceServiceServicer_to_server(fakes, server)
    share_grpc.add_ImageShareServiceServicer_to_server(fakes, server)
    account_grpc.add_AccountServiceServicer_to_server(fakes, server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    monkeypatch.setenv("CLOUDIMG_ENDPOINT", f"127.0.0.1:{port}")
    monkeypatch.setenv("CLOUDIMG_API_KEY", KEY)
    yield fakes
    server.stop(None)


@pytest.fixture
def cli(fakes, capsys):
    """Runs `cloudimg ARGS...`; returns (exit code, stdout, stderr)."""
    def run(*argv: str) -> tuple[int, str, str]:
        code = main(list(argv))
        out, err = capsys.readouterr()
        return code, out, err
    return run


def test_regions_table(cli):
    assert cli("regions") == (0, (
        "REGION_ID     DISPLAY_NAME  MAINLAND  SYNC_ENABLED\n"
        "ap-guangzhou  Guangzhou     yes       yes\n"
        "na-ashburn    Virginia      no        no\n"), "")


def test_json_flag_after_the_command(cli):
    code, out, _ = cli("regions", "--json")
    assert code == 0
    assert json.loads(out) == {"regions": [
        {"region_id": "ap-guangzhou", "display_name": "Guangzhou", "mainland": True,
         "sync_enabled": True},
        {"region_id": "na-ashburn", "display_name": "Virginia"},
    ]}


def test_images_all_follows_every_page(cli, fakes):
    code, out, _ = cli("images", "--region", "ap-guangzhou", "--type", "public", "--type", "SHARED",
                       "--platform", "Ubuntu", "--page-size", "2", "--all")
    assert code == 0
    header, *rows = out.splitlines()
    assert header.split() == ["IMAGE_ID", "NAME", "IMAGE_TYPE", "STATE", "PLATFORM",
                              "ARCHITECTURE", "SIZE_GB", "CREATE_TIME"]
    assert [row.split()[0] for row in rows] == ["img-ubuntu22", "img-debian12", "img-shared01"]
    assert rows[0].endswith(
        "PUBLIC      NORMAL  Ubuntu    X86_64        20       2024-05-01T08:30:00Z")
    assert "more:" not in out
    assert [r.page_token for r in fakes.requests] == ["", "2"]
    first = fakes.requests[0]
    assert list(first.image_types) == [image_pb.IMAGE_TYPE_PUBLIC, image_pb.IMAGE_TYPE_SHARED]
    assert (first.region, first.platform, first.page_size) == ("ap-guangzhou", "Ubuntu", 2)


def test_images_one_page_names_the_next_token(cli, fakes):
    code, out, _ = cli("images", "--region", "ap-guangzhou", "--page-size", "2")
    assert code == 0
    assert "img-shared01" not in out
    assert out.endswith("more: --page-token 2 (or --all)\n")


def test_images_all_as_json_is_one_document(cli):
    code, out, _ = cli("--json", "images", "--region", "ap-guangzhou", "--all")
    assert code == 0
    body = json.loads(out)
    assert [i["image_id"] for i in body["images"]] == [i.image_id for i in IMAGES]
    assert body["images"][0]["image_type"] == "IMAGE_TYPE_PUBLIC"
    assert "next_page_token" not in body


def test_image_detail(cli):
    code, out, _ = cli("image", "img-ubuntu22")
    assert code == 0
    assert "image_type            PUBLIC\n" in out
    assert "create_time           2024-05-01T08:30:00Z\n" in out
    assert "share_state           -\n" in out


def test_quote_prints_lines_and_exact_total(cli, fakes):
    code, out, _ = cli("quote", "--region", "ap-guangzhou", "--image", "img-ubuntu22",
                       "--type", "S5.MEDIUM4", "--count", "2", "--charge-type", "prepaid",
                       "--period-months", "3", "--disk-gb", "60")
    assert code == 0
    assert out == (
        "KIND           DESCRIPTION             UNIT_PRICE   QUANTITY  UNIT           AMOUNT\n"
        "INSTANCE       S5.MEDIUM4              USD 0.12     2         instance-hour  USD 0.24\n"
        "IMAGE_LICENSE  Windows Server license  USD 0.00625  2         instance-hour  USD 0.0125\n"
        "\n"
        "total          USD 0.2525\n"
        "charge_type    POSTPAID_BY_HOUR\n"
        "image_allowed  yes\n")
    assert fakes.requests == [instance_pb.QuoteRunInstancesRequest(
        region="ap-guangzhou", image_id="img-ubuntu22", instance_type="S5.MEDIUM4",
        instance_count=2, charge_type=instance_pb.CHARGE_TYPE_PREPAID, period_months=3,
        system_disk_gb=60)]


def test_run_prints_instance_ids_and_quote(cli, fakes):
    code, out, _ = cli("run", "--region", "ap-guangzhou", "--image", "img-ubuntu22", "--type",
                       "S5.MEDIUM4", "--count", "2", "--name", "web", "--client-token", "tok-1")
    assert code == 0
    assert out.startswith("INSTANCE_ID\nins-aaaaaaaa\nins-bbbbbbbb\n\nKIND")
    assert "total          USD 0.2525" in out
    request = fakes.requests[0]
    assert (request.instance_name, request.client_token, request.dry_run) == ("web", "tok-1", False)


def test_run_dry_run(cli, fakes):
    code, out, _ = cli("run", "--region", "ap-guangzhou", "--image", "img-ubuntu22", "--type",
                       "S5.MEDIUM4", "--dry-run")
    assert code == 0
    assert out.startswith("dry run: validated and priced, nothing launched\n")
    assert fakes.requests[0].dry_run and fakes.requests[0].instance_count == 1


def test_instance_types(cli):
    assert cli("instance-types", "--region", "ap-guangzhou")[1] == (
        "INSTANCE_TYPE  FAMILY  ARCHITECTURE  VCPUS  MEMORY_GB\n"
        "S5.MEDIUM4     S5      X86_64        2      4\n")


def test_instances_lists_every_page_and_one_instance(cli, fakes):
    code, out, _ = cli("instances", "--region", "ap-guangzhou")
    assert code == 0
    assert [row.split()[0] for row in out.splitlines()[1:]] == [i.instance_id for i in INSTANCES]
    assert "RUNNING  POSTPAID_BY_HOUR  2024-06-01T00:00:00Z" in out
    code, out, _ = cli("instance", "ins-00000000")
    assert code == 0
    assert "instance_name   web-0\n" in out


@pytest.mark.parametrize("command, state", [("share", "PENDING"), ("unshare", "-")])
def test_share_and_unshare(cli, fakes, command, state):
    code, out, _ = cli(command, "img-custom01", "acc-11111111", "acc-22222222")
    assert code == 0
    rows = [row.split() for row in out.splitlines()[1:]]
    assert [(r[2], r[3]) for r in rows] == [("acc-11111111", state), ("acc-22222222", state)]
    assert list(fakes.requests[0].account_ids) == ["acc-11111111", "acc-22222222"]


def test_whoami_sends_the_key_with_a_deadline(cli, fakes):
    assert cli("whoami") == (0, "account_id    acc-12345678\ndisplay_name  Alice\n"
                                "api_key_id    key-1\n", "")
    assert 5 < fakes.time_remaining < 11  # 10 s, plus the wire encoding's rounding


def test_rich_error_is_one_line_with_the_reason(cli):
    assert cli("image", "img-missing") == (
        1, "", "error: NOT_FOUND IMAGE_NOT_FOUND: image img-missing not found\n")


def test_plain_error_without_error_info(cli):
    assert cli("--api-key", "wrong", "regions") == (
        1, "", "error: UNAUTHENTICATED: invalid API key\n")


def test_missing_api_key_exits_2(cli, monkeypatch):
    monkeypatch.delenv("CLOUDIMG_API_KEY")
    code, out, err = cli("regions")
    assert (code, out) == (2, "")
    assert "no API key" in err and "CLOUDIMG_API_KEY" in err


def test_usage_error_exits_2(cli):
    code, _, err = cli("quote", "--region", "r", "--image", "i", "--type", "t",
                       "--charge-type", "monthly")
    assert code == 2
    assert "invalid choice" in err


def test_runs_as_a_module_without_traceback():
    env = {"PATH": "/usr/bin:/bin"}
    done = subprocess.run([sys.executable, "-m", "cloudimg_cli.main", "whoami"], env=env,
                          capture_output=True, text=True, timeout=30)
    assert done.returncode == 2
    assert "no API key" in done.stderr and "Traceback" not in done.stderr


@pytest.mark.parametrize("units, nanos, shown", [
    (0, 120_000_000, "USD 0.12"),
    (0, 12_500_000, "USD 0.0125"),
    (5, 0, "USD 5.00"),
    (1234567, 1, "USD 1234567.000000001"),
    (-1, -500_000_000, "USD -1.50"),
])
def test_money_is_exact(units, nanos, shown):
    assert render.money(usd(units, nanos)) == shown


def test_an_empty_endpoint_variable_is_refused(cli, monkeypatch, fakes):
    monkeypatch.setenv("CLOUDIMG_ENDPOINT", "")
    code, out, err = cli("regions")
    assert (code, out, err.count("\n")) == (2, "", 1)
    assert "CLOUDIMG_ENDPOINT" in err and "empty" in err
    assert fakes.requests == []


@pytest.mark.parametrize("endpoint", ["garbage", "127.0.0.1:99999", "127.0.0.1:0", "http://127.0.0.1:50050"])
def test_a_bad_endpoint_is_refused(cli, monkeypatch, endpoint):
    code, _, err = cli("--endpoint", endpoint, "regions")
    assert code == 2
    assert err.splitlines()[-1].startswith("cloudimg: error: argument --endpoint: must be HOST:PORT")
    monkeypatch.setenv("CLOUDIMG_ENDPOINT", endpoint)
    code, _, err = cli("regions")
    assert (code, err.count("\n")) == (2, 1)
    assert "CLOUDIMG_ENDPOINT" in err


def test_an_ipv6_endpoint_is_taken(cli):
    assert cli("--endpoint", "[::1]:1", "regions")[0] == 1  # a valid address where nothing listens


LAUNCH = ("--region", "ap-guangzhou", "--image", "img-ubuntu22", "--type", "S5.MEDIUM4")


@pytest.mark.parametrize("argv", [
    ("images", "--region", "r", "--page-size", "99999999999"),
    ("images", "--region", "r", "--page-size", "1001"),
    ("images", "--region", "r", "--page-size", "-1"),
    ("run", *LAUNCH, "--count", "3000000000"),
    ("run", *LAUNCH, "--count", "0"),
    ("run", *LAUNCH, "--count", "101"),
    ("quote", *LAUNCH, "--count", "-2"),
    ("quote", *LAUNCH, "--period-months", "99999999999"),
    ("quote", *LAUNCH, "--disk-gb", "2147483648"),
    ("quote", *LAUNCH, "--disk-gb", "ten"),
    ("run", *LAUNCH, "--client-token", "x" * 65),
    ("run", *LAUNCH, "--client-token", "caf\u00e9"),
])
def test_numbers_and_tokens_out_of_range_are_usage_errors(cli, fakes, argv):
    code, out, err = cli(*argv)
    assert (code, out) == (2, "")
    assert "error: argument" in err and "Traceback" not in err
    assert fakes.requests == []


def test_the_largest_values_are_sent(cli, fakes):
    assert cli("quote", *LAUNCH, "--count", "100", "--disk-gb", "2147483647")[0] == 0
    assert cli("images", "--region", "r", "--page-size", "1000")[0] == 0
    assert (fakes.requests[0].instance_count, fakes.requests[0].system_disk_gb) == (100, 2147483647)
    assert fakes.requests[1].page_size == 1000


def test_run_always_sends_a_client_token(cli, fakes):
    assert cli("run", *LAUNCH)[0] == 0
    assert cli("run", *LAUNCH)[0] == 0
    first, second = (r.client_token for r in fakes.requests)
    assert len(first) == 32 and first.isascii() and first != second


def abort_with(code: grpc.StatusCode, reason: str = ""):
    def abort(context):
        if not reason:
            context.abort(code, "try again")
        detail = any_pb2.Any()
        detail.Pack(error_details_pb2.ErrorInfo(reason=reason, domain="cloudimg"))
        context.abort_with_status(rpc_status.to_status(status_pb2.Status(
            code=code.value[0], message="the launch's outcome is unknown", details=[detail])))
    return abort


@pytest.fixture
def no_backoff(monkeypatch):
    monkeypatch.setattr(cli_main, "RETRY_BACKOFF_S", 0.0)


def test_run_retries_a_lost_launch_with_the_same_token(cli, fakes, no_backoff):
    fakes.run_failures[:] = [abort_with(grpc.StatusCode.UNAVAILABLE),
                             abort_with(grpc.StatusCode.ABORTED, "LAUNCH_IN_PROGRESS")]
    code, out, _ = cli("run", *LAUNCH)
    assert code == 0 and out.startswith("INSTANCE_ID\nins-aaaaaaaa")
    tokens = [r.client_token for r in fakes.requests]
    assert len(tokens) == 3 and len(set(tokens)) == 1 and tokens[0]


def test_run_that_still_fails_names_the_token_to_retry_with(cli, fakes, no_backoff):
    fakes.run_failures[:] = [abort_with(grpc.StatusCode.UNAVAILABLE, "LAUNCH_OUTCOME_UNKNOWN")] * 5
    code, out, err = cli("run", *LAUNCH, "--client-token", "tok-7")
    assert (code, out, err.count("\n")) == (1, "", 1)
    assert err.startswith("error: UNAVAILABLE LAUNCH_OUTCOME_UNKNOWN: ")
    assert err.endswith("retry with --client-token tok-7\n")
    assert [r.client_token for r in fakes.requests] == ["tok-7"] * 3


def test_run_refused_is_not_retried(cli, fakes, no_backoff):
    fakes.run_failures[:] = [abort_with(grpc.StatusCode.INVALID_ARGUMENT, "INVALID_INSTANCE_COUNT")]
    code, _, err = cli("run", *LAUNCH)
    assert (code, len(fakes.requests)) == (1, 1)
    assert "--client-token" not in err


def test_bad_numbers_as_a_module_without_traceback():
    env = {"PATH": "/usr/bin:/bin", "CLOUDIMG_API_KEY": KEY}
    done = subprocess.run([sys.executable, "-m", "cloudimg_cli.main", "run", *LAUNCH, "--count", "3000000000"],
                          env=env, capture_output=True, text=True, timeout=30)
    assert done.returncode == 2
    assert "--count" in done.stderr and "Traceback" not in done.stderr


# The image lifecycle

@pytest.fixture
def no_wait(monkeypatch):
    monkeypatch.setattr(cli_main, "WAIT_POLL_S", 0.0)


def sent(fakes, kind) -> list:
    return [r for r in fakes.requests if isinstance(r, kind)]


def test_create_image_sends_a_request_id_and_shows_the_new_image(cli, fakes):
    code, out, err = cli("create-image", "--instance", "ins-00000000", "--name", "web", "--description", "v1")
    assert (code, err) == (0, "")
    assert "image_id              img-new00001\n" in out and "state                 CREATING\n" in out
    (request,) = fakes.requests
    assert (request.instance_id, request.name, request.description, request.dry_run) == (
        "ins-00000000", "web", "v1", False)
    assert len(request.request_id) == 32 and request.request_id.isascii()


def test_create_image_wait_follows_the_job_with_a_progress_bar(cli, fakes, no_wait):
    fakes.jobs["img-new00001"] = [job_image("img-new00001", "CREATING", 0), job_image("img-new00001", "CREATING", 50),
                                  job_image("img-new00001", "NORMAL", 100, checksum_sha256="ab" * 32)]
    code, out, err = cli("create-image", "--instance", "ins-00000000", "--name", "web", "--wait")
    assert code == 0
    assert err.splitlines() == ["[----------] 0% CREATING img-new00001", "[#####-----] 50% CREATING img-new00001",
                                "[##########] 100% NORMAL img-new00001"]
    assert "state                 NORMAL\n" in out and "ab" * 32 in out
    assert [r.image_id for r in sent(fakes, image_pb.GetImageRequest)] == ["img-new00001"] * 3


def test_a_dry_run_waits_for_nothing(cli, fakes):
    code, out, err = cli("create-image", "--instance", "ins-00000000", "--name", "web", "--dry-run", "--wait")
    assert (code, err) == (0, "")
    assert out.startswith("dry run: checked, nothing made\n")
    assert fakes.requests[0].dry_run and sent(fakes, image_pb.GetImageRequest) == []


def test_import_image_that_fails_prints_its_reason_and_exits_1(cli, fakes, no_wait):
    fakes.jobs["img-imp00001"] = [
        job_image("img-imp00001", "IMPORTING", 30),
        job_image("img-imp00001", "IMPORT_FAILED", 30, state_reason="FORMAT_MISMATCH: the bytes are raw, not qcow2")]
    code, out, err = cli("import-image", "--region", "ap-guangzhou", "--name", "disk", "--format", "qcow2",
                         "--os-type", "linux", "--os-name", "Debian 12", "--arch", "arm64",
                         "--source", "file:///srv/imports/disk.qcow2", "--wait")
    assert (code, out) == (1, "")
    assert err.splitlines()[-1] == ("error: image img-imp00001 is IMPORT_FAILED: FORMAT_MISMATCH: the bytes are raw, "
                                    "not qcow2")
    assert "[###-------] 30% IMPORTING img-imp00001" in err.splitlines()
    request = fakes.requests[0]
    assert (request.format, request.os_type, request.architecture, request.os_name, request.source_uri) == (
        image_pb.IMAGE_FORMAT_QCOW2, image_pb.OS_TYPE_LINUX, image_pb.ARCHITECTURE_ARM64, "Debian 12",
        "file:///srv/imports/disk.qcow2")
    assert request.request_id


def test_sync_image_waits_for_every_new_image(cli, fakes, no_wait):
    fakes.jobs["img-syn00000"] = [job_image("img-syn00000", "SYNCING", 40, region="ap-beijing"),
                                  job_image("img-syn00000", "NORMAL", 100, region="ap-beijing")]
    fakes.jobs["img-syn00001"] = [job_image("img-syn00001", "SYNCING", 20, region="ap-shanghai"),
                                  job_image("img-syn00001", "SYNCING", 80, region="ap-shanghai"),
                                  job_image("img-syn00001", "NORMAL", 100, region="ap-shanghai")]
    code, out, err = cli("sync-image", "img-custom01", "--to", "ap-beijing", "--to", "ap-shanghai", "--wait",
                         "--request-id", "sync-1")
    assert code == 0
    assert err.splitlines() == ["[###-------] 30% SYNCING img-syn00000 img-syn00001",
                                "[#########-] 90% NORMAL,SYNCING img-syn00000 img-syn00001",
                                "[##########] 100% NORMAL img-syn00000 img-syn00001"]
    assert [row.split()[:2] + row.split()[-2:] for row in out.splitlines()[1:]] == [
        ["img-syn00000", "ap-beijing", "NORMAL", "100"], ["img-syn00001", "ap-shanghai", "NORMAL", "100"]]
    request = sent(fakes, image_pb.SyncImageRequest)[0]
    assert (list(request.destination_regions), request.request_id) == (["ap-beijing", "ap-shanghai"], "sync-1")
    # once an image is NORMAL it is not looked at again
    assert [r.image_id for r in sent(fakes, image_pb.GetImageRequest)] == [
        "img-syn00000", "img-syn00001", "img-syn00000", "img-syn00001", "img-syn00001"]


def test_wait_gives_up_after_its_timeout(cli, fakes, monkeypatch):
    monkeypatch.setattr(cli_main, "WAIT_POLL_S", 0.3)
    fakes.jobs["img-new00001"] = [job_image("img-new00001", "CREATING", 10)]
    code, _, err = cli("create-image", "--instance", "ins-00000000", "--name", "web", "--wait", "--wait-timeout", "1")
    assert code == 1
    assert err.splitlines()[-1].startswith("error: gave up waiting after 1 s; still working: img-new00001")
    assert 2 <= len(sent(fakes, image_pb.GetImageRequest)) <= 5


def test_progress_redraws_one_line_on_a_terminal():
    class Terminal(io.StringIO):
        def isatty(self):
            return True

    stream = Terminal()
    progress = cli_main.Progress(stream)
    for percent in (10, 10, 100):
        progress.show([job_image("img-a0000001", "NORMAL" if percent == 100 else "IMPORTING", percent)])
    progress.end()
    assert stream.getvalue() == ("\r[#---------] 10% IMPORTING img-a0000001"
                                 "\r[##########] 100% NORMAL img-a0000001  \n")  # padded over the longer line


@pytest.mark.parametrize("flags, paths, name, description", [
    (("--name", "web-2"), ["name"], "web-2", ""),
    (("--description", ""), ["description"], "", ""),
    (("--name", "web-2", "--description", "v2"), ["name", "description"], "web-2", "v2"),
])
def test_update_image_masks_the_fields_it_is_given(cli, fakes, flags, paths, name, description):
    code, out, _ = cli("update-image", "img-custom01", *flags)
    assert code == 0 and "image_id              img-custom01\n" in out
    request = fakes.requests[0]
    assert list(request.update_mask.paths) == paths
    assert (request.image.image_id, request.image.name, request.image.description) == (
        "img-custom01", name, description)
    assert request.request_id


def test_update_image_without_a_change_is_a_usage_error(cli, fakes):
    code, out, err = cli("update-image", "img-custom01")
    assert (code, out) == (2, "") and "--name, --description" in err
    assert fakes.requests == []


def test_delete_image_is_retried_with_its_request_id(cli, fakes, no_backoff):
    fakes.failures["DeleteImage"] = [abort_with(grpc.StatusCode.UNAVAILABLE)]
    assert cli("delete-image", "img-custom01") == (0, "deleted img-custom01\n", "")
    ids = [r.request_id for r in fakes.requests]
    assert len(ids) == 2 and len(set(ids)) == 1 and ids[0]


def test_a_delete_that_still_fails_names_the_request_id_to_retry_with(cli, fakes, no_backoff):
    fakes.failures["DeleteImage"] = [abort_with(grpc.StatusCode.UNAVAILABLE)] * 5
    code, out, err = cli("delete-image", "img-custom01", "--request-id", "del-1")
    assert (code, out) == (1, "")
    assert err.endswith("retry with --request-id del-1\n")
    assert [r.request_id for r in fakes.requests] == ["del-1"] * 3


def test_a_refused_delete_is_not_retried(cli, fakes, no_backoff):
    fakes.failures["DeleteImage"] = [abort_with(grpc.StatusCode.FAILED_PRECONDITION, "IMAGE_SHARED")]
    code, _, err = cli("delete-image", "img-custom01")
    assert (code, len(fakes.requests)) == (1, 1)
    assert err.startswith("error: FAILED_PRECONDITION IMAGE_SHARED: ") and "--request-id" not in err


def test_quota(cli, fakes):
    code, out, _ = cli("quota", "--region", "ap-guangzhou")
    assert code == 0
    assert out == ("region                 ap-guangzhou\ncustom_image_limit     10\ncustom_image_used      3\n"
                   "daily_operation_limit  5\ndaily_operation_used   5\n")
    code, out, _ = cli("--json", "quota", "--region", "ap-guangzhou")
    assert json.loads(out)["daily_operation_used"] == 5


IMPORT = ("import-image", "--region", "r", "--name", "n", "--format", "qcow2", "--os-type", "linux", "--arch",
          "x86_64", "--source", "https://example.com/disk.qcow2")


@pytest.mark.parametrize("argv", [
    ("import-image", "--region", "r", "--name", "n", "--format", "iso", "--os-type", "linux", "--arch", "x86_64",
     "--source", "s"),
    ("import-image", "--region", "r", "--name", "n", "--format", "raw", "--os-type", "linux", "--source", "s"),
    (*IMPORT, "--os-type", "beos"),
    ("create-image", "--instance", "ins-00000000", "--name", "n", "--wait-timeout", "0"),
    ("create-image", "--instance", "ins-00000000", "--name", "n", "--request-id", "x" * 65),
    ("create-image", "--name", "n"),
    ("sync-image", "img-custom01"),
    ("delete-image",),
    ("quota",),
])
def test_image_command_usage_errors_send_nothing(cli, fakes, argv):
    code, out, err = cli(*argv)
    assert (code, out) == (2, "")
    assert "error:" in err and "Traceback" not in err
    assert fakes.requests == []
