"""The `cloudimg` CLI against a real gRPC server with small fake gateway servicers."""

import importlib.metadata
import io
import json
import os
import re
import stat
import subprocess
import sys
import tomllib
from collections.abc import Callable, Iterator, Sequence
from concurrent import futures
from pathlib import Path
from typing import Any, NoReturn, Protocol, TypeVar

import grpc
import pytest
import yaml
from cloudimg.gateway.v1 import (
    account_service_pb2 as account_pb,
)
from cloudimg.gateway.v1 import (
    account_service_pb2_grpc as account_grpc,
)
from cloudimg.gateway.v1 import (
    image_service_pb2 as image_pb,
)
from cloudimg.gateway.v1 import (
    image_service_pb2_grpc as image_grpc,
)
from cloudimg.gateway.v1 import (
    image_share_service_pb2 as share_pb,
)
from cloudimg.gateway.v1 import (
    image_share_service_pb2_grpc as share_grpc,
)
from cloudimg.gateway.v1 import (
    instance_service_pb2 as instance_pb,
)
from cloudimg.gateway.v1 import (
    instance_service_pb2_grpc as instance_grpc,
)
from google.protobuf import any_pb2, timestamp_pb2
from google.protobuf.message import Message
from google.rpc import code_pb2, error_details_pb2, status_pb2
from google.type import money_pb2
from grpc_status import rpc_status

import cloudimg_cli
from cloudimg_cli import main as cli_main
from cloudimg_cli import render
from cloudimg_cli.main import main

KEY = "ak-test-secret"
T = TypeVar("T")
MessageT = TypeVar("MessageT", bound=Message)
# Aborts a call of the fakes (context.abort or abort_with_status), as the test scripted it.
Abort = Callable[[grpc.ServicerContext], None]


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
                         create_time=ts("2024-06-01T00:00:00Z"), update_time=ts(f"2024-06-0{n + 1}T00:05:00Z"))
    for n in range(3)
]


SHARES = [
    share_pb.ImageShare(image_id="img-custom01", region="ap-guangzhou", owner_account_id="100000000001",
                        recipient_account_id=recipient, state=state, create_time=ts(created))
    for recipient, state, created in [
        ("100000000002", image_pb.SHARE_STATE_ACCEPTED, "2026-11-01T10:00:00Z"),
        ("100000000003", image_pb.SHARE_STATE_PENDING, "2026-11-02T10:00:00Z"),
        ("100000000004", image_pb.SHARE_STATE_REJECTED, "2026-11-03T10:00:00Z")]
]

POLICY = share_pb.TrustPolicy(trusted_account_ids=["100000000002", "100000000003"],
                              mode=share_pb.TRUST_POLICY_MODE_ENFORCE, allow_platform_images=True,
                              allowed_marketplace_providers=["Bitnami"], update_time=ts("2026-11-20T09:00:00Z"))

CHARGES = [
    account_pb.Charge(charge_id="chg-launch01", region="ap-guangzhou", kind=account_pb.CHARGE_KIND_LAUNCH,
                      instance_ids=[f"ins-0000000{n}" for n in range(5)], quote=QUOTE,
                      create_time=ts("2026-12-01T08:00:00Z")),
    account_pb.Charge(charge_id="chg-usage001", region="ap-guangzhou", kind=account_pb.CHARGE_KIND_USAGE,
                      instance_ids=["ins-00000001"], quote=instance_pb.Quote(total=usd(0, 360_000_000)),
                      usage_start_time=ts("2026-12-01T09:00:00Z"), usage_end_time=ts("2026-12-01T12:00:00Z"),
                      create_time=ts("2026-12-01T12:00:00Z")),
    account_pb.Charge(region="ap-guangzhou", kind=account_pb.CHARGE_KIND_ACCRUED_USAGE,
                      instance_ids=["ins-00000002", "ins-00000003"], quote=instance_pb.Quote(total=usd(0, 240_000_000)),
                      usage_start_time=ts("2026-12-01T09:00:00Z"), usage_end_time=ts("2026-12-01T10:00:00Z"),
                      create_time=ts("2026-12-01T09:30:00Z")),
]

PRICES = [
    instance_pb.Price(region="ap-guangzhou", kind=instance_pb.QUOTE_LINE_KIND_INSTANCE, instance_type="S5.MEDIUM4",
                      charge_type=instance_pb.CHARGE_TYPE_POSTPAID_BY_HOUR, unit_price=usd(0, 120_000_000),
                      unit="instance-hour", description="S5.MEDIUM4 in ap-guangzhou"),
    instance_pb.Price(region="ap-singapore", kind=instance_pb.QUOTE_LINE_KIND_IMAGE_LICENSE,
                      charge_type=instance_pb.CHARGE_TYPE_PREPAID, unit_price=usd(4, 500_000_000),
                      unit="instance-month", description="Windows Server license"),
    instance_pb.Price(region="ap-guangzhou", kind=instance_pb.QUOTE_LINE_KIND_MARKETPLACE,
                      charge_type=instance_pb.CHARGE_TYPE_POSTPAID_BY_HOUR, unit_price=usd(0, 20_000_000),
                      unit="instance-hour", description="WordPress by Bitnami", marketplace_product_id="bitnami-wp"),
]


def job_image(image_id: str, state: str, percent: int, *, name: str = "", region: str = "", state_reason: str = "",
              checksum_sha256: str = "") -> image_pb.Image:
    """A custom image whose job is at ``percent`` (state by its short name: "CREATING", "NORMAL", ...)."""
    return image_pb.Image(image_id=image_id, image_type=image_pb.IMAGE_TYPE_PRIVATE,
                          state=image_pb.ImageState.Value(f"IMAGE_STATE_{state}"), progress_percent=percent,
                          name=name, region=region, state_reason=state_reason, checksum_sha256=checksum_sha256)


def authorize(context: grpc.ServicerContext) -> None:
    if dict(context.invocation_metadata()).get("authorization") != f"Bearer {KEY}":
        context.abort(grpc.StatusCode.UNAUTHENTICATED, "invalid API key")


class PageRequest(Protocol):
    @property
    def page_token(self) -> str: ...
    @property
    def page_size(self) -> int: ...


def page(items: Sequence[T], request: PageRequest) -> tuple[list[T], str]:
    """Fake pagination: the page token is the offset."""
    start = int(request.page_token or 0)
    end = start + (request.page_size or 2)
    return list(items[start:end]), str(end) if end < len(items) else ""


class Fakes(image_grpc.ImageServiceServicer, instance_grpc.InstanceServiceServicer,
            share_grpc.ImageShareServiceServicer, account_grpc.AccountServiceServicer):
    """All four gateway services; each call is authorized and its request recorded."""

    def __init__(self) -> None:
        self.requests: list[Any] = []  # each call's request, of its method's type: a test reads the one it expects
        self.metadata: list[dict[str, str]] = []  # each call's invocation metadata, as a dict
        self.time_remaining = 0.0  # of the last GetCallerIdentity call
        self.run_failures: list[Abort] = []  # each aborts one RunInstances call, in order
        self.failures: dict[str, list[Abort]] = {}  # method name -> aborts of its next calls, in order
        # image id -> what GetImage answers for it, one after the other (the last one stays)
        self.jobs: dict[str, list[image_pb.Image]] = {}

    def record(self, request: Message, context: grpc.ServicerContext) -> None:
        self.metadata.append(dict(context.invocation_metadata()))
        authorize(context)
        self.requests.append(request)

    @property
    def request_ids(self) -> list[str]:
        """The x-request-id of each call, in order."""
        return [m.get("x-request-id", "") for m in self.metadata]

    def named(self, line: str) -> str:
        """An error line as the CLI prints it: naming the x-request-id of the last call."""
        return f"{line} (x-request-id {self.request_ids[-1]})\n"

    def ListRegions(self, request: image_pb.ListRegionsRequest,
                    context: grpc.ServicerContext) -> image_pb.ListRegionsResponse:
        self.record(request, context)
        return image_pb.ListRegionsResponse(regions=[
            image_pb.Region(region_id="ap-guangzhou", display_name="Guangzhou", mainland=True,
                            sync_enabled=True),
            image_pb.Region(region_id="na-ashburn", display_name="Virginia"),
        ])

    def ListImages(self, request: image_pb.ListImagesRequest,
                   context: grpc.ServicerContext) -> image_pb.ListImagesResponse:
        self.record(request, context)
        images, token = page(IMAGES, request)
        return image_pb.ListImagesResponse(images=images, next_page_token=token)

    def GetImage(self, request: image_pb.GetImageRequest, context: grpc.ServicerContext) -> image_pb.GetImageResponse:
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
        raise AssertionError("abort_with_status raises")

    def ListInstanceTypes(self, request: instance_pb.ListInstanceTypesRequest,
                          context: grpc.ServicerContext) -> instance_pb.ListInstanceTypesResponse:
        self.record(request, context)
        return instance_pb.ListInstanceTypesResponse(instance_types=[
            instance_pb.InstanceType(instance_type="S5.MEDIUM4", family="S5", vcpus=2, memory_gb=4,
                                     architecture=instance_pb.CPU_ARCHITECTURE_X86_64),
        ])

    def QuoteRunInstances(self, request: instance_pb.QuoteRunInstancesRequest,
                          context: grpc.ServicerContext) -> instance_pb.QuoteRunInstancesResponse:
        self.record(request, context)
        return instance_pb.QuoteRunInstancesResponse(quote=QUOTE)

    def RunInstances(self, request: instance_pb.RunInstancesRequest,
                     context: grpc.ServicerContext) -> instance_pb.RunInstancesResponse:
        self.record(request, context)
        if self.run_failures:
            self.run_failures.pop(0)(context)
        ids = [] if request.dry_run else ["ins-aaaaaaaa", "ins-bbbbbbbb"]
        return instance_pb.RunInstancesResponse(instance_ids=ids, quote=QUOTE)

    def ListInstances(self, request: instance_pb.ListInstancesRequest,
                      context: grpc.ServicerContext) -> instance_pb.ListInstancesResponse:
        self.record(request, context)
        instances, token = page(INSTANCES, request)
        return instance_pb.ListInstancesResponse(instances=instances, next_page_token=token)

    def GetInstance(self, request: instance_pb.GetInstanceRequest,
                    context: grpc.ServicerContext) -> instance_pb.GetInstanceResponse:
        self.record(request, context)
        return instance_pb.GetInstanceResponse(instance=INSTANCES[0])

    def shares(self, request: share_pb.ShareImageRequest | share_pb.UnshareImageRequest, context: grpc.ServicerContext,
               state: image_pb.ShareState.ValueType) -> list[share_pb.ImageShare]:
        self.record(request, context)
        return [share_pb.ImageShare(image_id=request.image_id, region="ap-guangzhou",
                                    owner_account_id="acc-owner", recipient_account_id=account,
                                    state=state)
                for account in request.account_ids]

    def ShareImage(self, request: share_pb.ShareImageRequest,
                   context: grpc.ServicerContext) -> share_pb.ShareImageResponse:
        shares = self.shares(request, context, image_pb.SHARE_STATE_PENDING)
        self.fail_maybe("ShareImage", context)
        return share_pb.ShareImageResponse(shares=shares)

    def UnshareImage(self, request: share_pb.UnshareImageRequest,
                     context: grpc.ServicerContext) -> share_pb.UnshareImageResponse:
        shares = self.shares(request, context, image_pb.SHARE_STATE_UNSPECIFIED)
        self.fail_maybe("UnshareImage", context)
        return share_pb.UnshareImageResponse(shares=shares)

    def fail_maybe(self, method: str, context: grpc.ServicerContext) -> None:
        if self.failures.get(method):
            self.failures[method].pop(0)(context)

    def CreateImage(self, request: image_pb.CreateImageRequest,
                    context: grpc.ServicerContext) -> image_pb.CreateImageResponse:
        self.record(request, context)
        self.fail_maybe("CreateImage", context)
        return image_pb.CreateImageResponse(image=job_image("img-new00001", "CREATING", 0, name=request.name))

    def ImportImage(self, request: image_pb.ImportImageRequest,
                    context: grpc.ServicerContext) -> image_pb.ImportImageResponse:
        self.record(request, context)
        return image_pb.ImportImageResponse(image=job_image("img-imp00001", "IMPORTING", 0, name=request.name))

    def SyncImage(self, request: image_pb.SyncImageRequest,
                  context: grpc.ServicerContext) -> image_pb.SyncImageResponse:
        self.record(request, context)
        return image_pb.SyncImageResponse(images=[
            job_image(f"img-syn0000{n}", "SYNCING", 0, region=region)
            for n, region in enumerate(request.destination_regions)])

    def UpdateImage(self, request: image_pb.UpdateImageRequest,
                    context: grpc.ServicerContext) -> image_pb.UpdateImageResponse:
        self.record(request, context)
        return image_pb.UpdateImageResponse(image=request.image)

    def DeleteImage(self, request: image_pb.DeleteImageRequest,
                    context: grpc.ServicerContext) -> image_pb.DeleteImageResponse:
        self.record(request, context)
        self.fail_maybe("DeleteImage", context)
        return image_pb.DeleteImageResponse()

    def GetImageQuota(self, request: image_pb.GetImageQuotaRequest,
                      context: grpc.ServicerContext) -> image_pb.GetImageQuotaResponse:
        self.record(request, context)
        return image_pb.GetImageQuotaResponse(region=request.region, custom_image_limit=10, custom_image_used=3,
                                              daily_operation_limit=5, daily_operation_used=5)

    def ListImageShares(self, request: share_pb.ListImageSharesRequest,
                        context: grpc.ServicerContext) -> share_pb.ListImageSharesResponse:
        self.record(request, context)
        shares, token = page(SHARES, request)
        return share_pb.ListImageSharesResponse(shares=shares, next_page_token=token)

    def answered_share(self, method: str,
                       request: share_pb.AcceptImageShareRequest | share_pb.RejectImageShareRequest,
                       context: grpc.ServicerContext, state: image_pb.ShareState.ValueType) -> share_pb.ImageShare:
        self.record(request, context)
        self.fail_maybe(method, context)
        return share_pb.ImageShare(image_id=request.image_id, region="ap-guangzhou", owner_account_id="100000000001",
                                   recipient_account_id="100000000002", state=state,
                                   create_time=ts("2026-11-01T10:00:00Z"))

    def AcceptImageShare(self, request: share_pb.AcceptImageShareRequest,
                         context: grpc.ServicerContext) -> share_pb.AcceptImageShareResponse:
        return share_pb.AcceptImageShareResponse(
            share=self.answered_share("AcceptImageShare", request, context, image_pb.SHARE_STATE_ACCEPTED))

    def RejectImageShare(self, request: share_pb.RejectImageShareRequest,
                         context: grpc.ServicerContext) -> share_pb.RejectImageShareResponse:
        return share_pb.RejectImageShareResponse(
            share=self.answered_share("RejectImageShare", request, context, image_pb.SHARE_STATE_REJECTED))

    def GetTrustPolicy(self, request: share_pb.GetTrustPolicyRequest,
                       context: grpc.ServicerContext) -> share_pb.GetTrustPolicyResponse:
        self.record(request, context)
        return share_pb.GetTrustPolicyResponse(policy=POLICY)

    def UpdateTrustPolicy(self, request: share_pb.UpdateTrustPolicyRequest,
                          context: grpc.ServicerContext) -> share_pb.UpdateTrustPolicyResponse:
        """POLICY with the fields named in update_mask taken from the request's policy."""
        self.record(request, context)
        self.fail_maybe("UpdateTrustPolicy", context)
        policy = share_pb.TrustPolicy()
        policy.CopyFrom(POLICY)
        for path in request.update_mask.paths:
            if share_pb.TrustPolicy.DESCRIPTOR.fields_by_name[path].is_repeated:
                del getattr(policy, path)[:]
                getattr(policy, path).extend(getattr(request.policy, path))
            else:
                setattr(policy, path, getattr(request.policy, path))
        policy.update_time.CopyFrom(ts("2026-12-01T10:00:00Z"))
        return share_pb.UpdateTrustPolicyResponse(policy=policy)

    def TerminateInstances(self, request: instance_pb.TerminateInstancesRequest,
                           context: grpc.ServicerContext) -> instance_pb.TerminateInstancesResponse:
        self.record(request, context)
        self.fail_maybe("TerminateInstances", context)
        return instance_pb.TerminateInstancesResponse(instances=[
            instance_pb.Instance(instance_id=i, instance_name=f"web-{n}", region="ap-guangzhou",
                                 state=instance_pb.INSTANCE_STATE_TERMINATED, terminate_time=ts("2026-12-01T11:00:00Z"))
            for n, i in enumerate(request.instance_ids)])

    def ResetInstance(self, request: instance_pb.ResetInstanceRequest,
                      context: grpc.ServicerContext) -> instance_pb.ResetInstanceResponse:
        self.record(request, context)
        self.fail_maybe("ResetInstance", context)
        instance = instance_pb.Instance()
        instance.CopyFrom(INSTANCES[0])
        if not request.dry_run:
            instance.image_id = request.image_id
            instance.update_time.CopyFrom(ts("2026-12-01T11:00:00Z"))
        return instance_pb.ResetInstanceResponse(instance=instance, quote=QUOTE)

    def QuoteResetInstance(self, request: instance_pb.QuoteResetInstanceRequest,
                           context: grpc.ServicerContext) -> instance_pb.QuoteResetInstanceResponse:
        self.record(request, context)
        return instance_pb.QuoteResetInstanceResponse(quote=QUOTE)

    def ListPrices(self, request: instance_pb.ListPricesRequest,
                   context: grpc.ServicerContext) -> instance_pb.ListPricesResponse:
        self.record(request, context)
        self.fail_maybe("ListPrices", context)
        prices, token = page(PRICES, request)
        return instance_pb.ListPricesResponse(prices=prices, next_page_token=token)

    def ListCharges(self, request: account_pb.ListChargesRequest,
                    context: grpc.ServicerContext) -> account_pb.ListChargesResponse:
        self.record(request, context)
        charges, token = page(CHARGES, request)
        return account_pb.ListChargesResponse(charges=charges, next_page_token=token)

    def GetCallerIdentity(self, request: account_pb.GetCallerIdentityRequest,
                          context: grpc.ServicerContext) -> account_pb.GetCallerIdentityResponse:
        self.record(request, context)
        self.time_remaining = context.time_remaining()
        return account_pb.GetCallerIdentityResponse(account_id="acc-12345678",
                                                     display_name="Alice", api_key_id="key-1")


@pytest.fixture(autouse=True)
def no_settings(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    """No setting from the environment nor from the user's own profiles: HOME is an empty directory."""
    for name in ("ENDPOINT", "API_KEY", "REGION", "CA_CERT", "TLS", "OUTPUT", "TIMEOUT", "PROFILE", "CONFIG_FILE",
                 "CREDENTIALS_FILE"):
        monkeypatch.delenv(f"CLOUDIMG_{name}", raising=False)
    home = tmp_path / "home"
    home.mkdir()
    monkeypatch.setenv("HOME", str(home))
    return home


@pytest.fixture
def fakes(monkeypatch: pytest.MonkeyPatch) -> Iterator[Fakes]:
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


class Cli(Protocol):
    """The ``cli`` fixture: ``cli(*argv)`` runs `cloudimg ARGS...`; returns (exit code, stdout, stderr)."""

    def __call__(self, *argv: str) -> tuple[int, str, str]: ...


@pytest.fixture
def cli(fakes: Fakes, capsys: pytest.CaptureFixture[str]) -> Cli:
    """Runs `cloudimg ARGS...`; returns (exit code, stdout, stderr)."""
    def run(*argv: str) -> tuple[int, str, str]:
        code = main(list(argv))
        out, err = capsys.readouterr()
        return code, out, err
    return run


def test_regions_table(cli: Cli) -> None:
    assert cli("regions") == (0, (
        "REGION_ID     DISPLAY_NAME  MAINLAND  SYNC_ENABLED\n"
        "ap-guangzhou  Guangzhou     yes       yes\n"
        "na-ashburn    Virginia      no        no\n"), "")


def test_json_flag_after_the_command(cli: Cli) -> None:
    code, out, _ = cli("regions", "--json")
    assert code == 0
    assert json.loads(out) == {"regions": [
        {"region_id": "ap-guangzhou", "display_name": "Guangzhou", "mainland": True,
         "sync_enabled": True},
        {"region_id": "na-ashburn", "display_name": "Virginia"},
    ]}


def test_images_all_follows_every_page(cli: Cli, fakes: Fakes) -> None:
    code, out, _ = cli("images", "--region", "ap-guangzhou", "--image-type", "public", "--image-type", "SHARED",
                       "--platform", "Ubuntu", "--page-size", "2", "--all")
    assert code == 0
    header, *rows = out.splitlines()
    assert header.split() == ["IMAGE_ID", "NAME", "IMAGE_TYPE", "STATE", "SHARE_STATE", "PLATFORM",
                              "ARCHITECTURE", "SIZE_GB", "CREATE_TIME"]
    assert [row.split()[0] for row in rows] == ["img-ubuntu22", "img-debian12", "img-shared01"]
    assert rows[0].endswith(
        "PUBLIC      NORMAL  -            Ubuntu    X86_64        20       2024-05-01T08:30:00Z")
    assert rows[2].endswith("SHARED      NORMAL  ACCEPTED     Ubuntu    -             50       -")
    assert "more:" not in out
    assert [r.page_token for r in fakes.requests] == ["", "2"]
    first = fakes.requests[0]
    assert list(first.image_types) == [image_pb.IMAGE_TYPE_PUBLIC, image_pb.IMAGE_TYPE_SHARED]
    assert (first.region, first.platform, first.page_size) == ("ap-guangzhou", "Ubuntu", 2)


def test_images_one_page_names_the_next_token(cli: Cli, fakes: Fakes) -> None:
    code, out, _ = cli("images", "--region", "ap-guangzhou", "--page-size", "2")
    assert code == 0
    assert "img-shared01" not in out
    assert out.endswith("more: --page-token 2 (or --all)\n")


def test_images_all_as_json_is_one_document(cli: Cli) -> None:
    code, out, _ = cli("--json", "images", "--region", "ap-guangzhou", "--all")
    assert code == 0
    body = json.loads(out)
    assert [i["image_id"] for i in body["images"]] == [i.image_id for i in IMAGES]
    assert body["images"][0]["image_type"] == "IMAGE_TYPE_PUBLIC"
    assert "next_page_token" not in body


def test_image_detail(cli: Cli) -> None:
    code, out, _ = cli("image", "img-ubuntu22")
    assert code == 0
    assert "image_type            PUBLIC\n" in out
    assert "create_time           2024-05-01T08:30:00Z\n" in out
    assert "share_state           -\n" in out


def test_quote_prints_lines_and_exact_total(cli: Cli, fakes: Fakes) -> None:
    code, out, _ = cli("quote", "--region", "ap-guangzhou", "--image", "img-ubuntu22",
                       "--instance-type", "S5.MEDIUM4", "--count", "2", "--charge-type", "prepaid",
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


def test_run_prints_instance_ids_and_quote(cli: Cli, fakes: Fakes) -> None:
    code, out, _ = cli("run", "--region", "ap-guangzhou", "--image", "img-ubuntu22", "--instance-type",
                       "S5.MEDIUM4", "--count", "2", "--name", "web", "--client-token", "tok-1")
    assert code == 0
    assert out.startswith("INSTANCE_ID\nins-aaaaaaaa\nins-bbbbbbbb\n\nKIND")
    assert "total          USD 0.2525" in out
    request = fakes.requests[0]
    assert (request.instance_name, request.client_token, request.dry_run) == ("web", "tok-1", False)


def test_run_dry_run(cli: Cli, fakes: Fakes) -> None:
    code, out, _ = cli("run", "--region", "ap-guangzhou", "--image", "img-ubuntu22", "--instance-type",
                       "S5.MEDIUM4", "--dry-run")
    assert code == 0
    assert out.startswith("dry run: validated and priced, nothing launched\n")
    assert fakes.requests[0].dry_run
    assert fakes.requests[0].instance_count == 1


def test_instance_types(cli: Cli) -> None:
    assert cli("instance-types", "--region", "ap-guangzhou")[1] == (
        "INSTANCE_TYPE  FAMILY  ARCHITECTURE  VCPUS  MEMORY_GB\n"
        "S5.MEDIUM4     S5      X86_64        2      4\n")


def test_instances_lists_every_page_and_one_instance(cli: Cli, fakes: Fakes) -> None:
    code, out, _ = cli("instances", "--region", "ap-guangzhou")
    assert code == 0
    assert [row.split()[0] for row in out.splitlines()[1:]] == [i.instance_id for i in INSTANCES]
    assert "RUNNING  POSTPAID_BY_HOUR  2024-06-01T00:00:00Z  2024-06-01T00:05:00Z\n" in out
    assert out.splitlines()[0].split()[-3:] == ["CHARGE_TYPE", "CREATE_TIME", "UPDATE_TIME"]
    assert list(fakes.requests[0].states) == []
    code, out, _ = cli("instance", "ins-00000000")
    assert code == 0
    assert "instance_name   web-0\n" in out


@pytest.mark.parametrize(("command", "state"), [("share", "PENDING"), ("unshare", "-")])
def test_share_and_unshare(cli: Cli, fakes: Fakes, command: str, state: str) -> None:
    code, out, _ = cli(command, "img-custom01", "acc-11111111", "acc-22222222")
    assert code == 0
    rows = [row.split() for row in out.splitlines()[1:]]
    assert [(r[2], r[3]) for r in rows] == [("acc-11111111", state), ("acc-22222222", state)]
    assert list(fakes.requests[0].account_ids) == ["acc-11111111", "acc-22222222"]
    assert len(fakes.requests[0].request_id) == 32


def test_whoami_sends_the_key_with_a_deadline(cli: Cli, fakes: Fakes) -> None:
    assert cli("whoami") == (0, "account_id    acc-12345678\ndisplay_name  Alice\n"
                                "api_key_id    key-1\n", "")
    assert 5 < fakes.time_remaining < 11  # 10 s, plus the wire encoding's rounding


def test_rich_error_is_one_line_with_the_reason(cli: Cli, fakes: Fakes) -> None:
    assert cli("image", "img-missing") == (
        1, "", fakes.named("error: NOT_FOUND IMAGE_NOT_FOUND: image img-missing not found"))


def test_plain_error_without_error_info(cli: Cli, fakes: Fakes) -> None:
    assert cli("--api-key", "wrong", "regions") == (
        1, "", fakes.named("error: UNAUTHENTICATED: invalid API key"))


def test_missing_api_key_exits_2(cli: Cli, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("CLOUDIMG_API_KEY")
    code, out, err = cli("regions")
    assert (code, out) == (2, "")
    assert "no API key" in err
    assert "CLOUDIMG_API_KEY" in err


def test_usage_error_exits_2(cli: Cli) -> None:
    code, _, err = cli("quote", "--region", "r", "--image", "i", "--instance-type", "t",
                       "--charge-type", "monthly")
    assert code == 2
    assert "invalid choice" in err


def test_runs_as_a_module_without_traceback(tmp_path: Path) -> None:
    env = {"PATH": "/usr/bin:/bin", "HOME": str(tmp_path)}  # no profile with a key
    done = subprocess.run([sys.executable, "-m", "cloudimg_cli.main", "whoami"], env=env,
                          capture_output=True, text=True, timeout=30)
    assert done.returncode == 2
    assert "no API key" in done.stderr
    assert "Traceback" not in done.stderr


@pytest.mark.parametrize(("units", "nanos", "shown"), [
    (0, 120_000_000, "USD 0.12"),
    (0, 12_500_000, "USD 0.0125"),
    (5, 0, "USD 5.00"),
    (1234567, 1, "USD 1234567.000000001"),
    (-1, -500_000_000, "USD -1.50"),
])
def test_money_is_exact(units: int, nanos: int, shown: str) -> None:
    assert render.money(usd(units, nanos)) == shown


def test_an_empty_endpoint_variable_is_refused(cli: Cli, monkeypatch: pytest.MonkeyPatch, fakes: Fakes) -> None:
    monkeypatch.setenv("CLOUDIMG_ENDPOINT", "")
    code, out, err = cli("regions")
    assert (code, out, err.count("\n")) == (2, "", 1)
    assert "CLOUDIMG_ENDPOINT" in err
    assert "empty" in err
    assert fakes.requests == []


@pytest.mark.parametrize("endpoint", ["garbage", "127.0.0.1:99999", "127.0.0.1:0", "http://127.0.0.1:50050"])
def test_a_bad_endpoint_is_refused(cli: Cli, monkeypatch: pytest.MonkeyPatch, endpoint: str) -> None:
    code, _, err = cli("--endpoint", endpoint, "regions")
    assert code == 2
    assert err.splitlines()[-1].startswith("cloudimg: error: argument --endpoint: must be HOST:PORT")
    monkeypatch.setenv("CLOUDIMG_ENDPOINT", endpoint)
    code, _, err = cli("regions")
    assert (code, err.count("\n")) == (2, 1)
    assert "CLOUDIMG_ENDPOINT" in err


def test_an_ipv6_endpoint_is_taken(cli: Cli) -> None:
    assert cli("--endpoint", "[::1]:1", "regions")[0] == 1  # a valid address where nothing listens


LAUNCH = ("--region", "ap-guangzhou", "--image", "img-ubuntu22", "--instance-type", "S5.MEDIUM4")


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
def test_numbers_and_tokens_out_of_range_are_usage_errors(cli: Cli, fakes: Fakes, argv: tuple[str, ...]) -> None:
    code, out, err = cli(*argv)
    assert (code, out) == (2, "")
    assert "error: argument" in err
    assert "Traceback" not in err
    assert fakes.requests == []


def test_the_largest_values_are_sent(cli: Cli, fakes: Fakes) -> None:
    assert cli("quote", *LAUNCH, "--count", "100", "--disk-gb", "2147483647")[0] == 0
    assert cli("images", "--region", "r", "--page-size", "1000")[0] == 0
    assert (fakes.requests[0].instance_count, fakes.requests[0].system_disk_gb) == (100, 2147483647)
    assert fakes.requests[1].page_size == 1000


def test_run_always_sends_a_client_token(cli: Cli, fakes: Fakes) -> None:
    assert cli("run", *LAUNCH)[0] == 0
    assert cli("run", *LAUNCH)[0] == 0
    first, second = (r.client_token for r in fakes.requests)
    assert len(first) == 32
    assert first.isascii()
    assert first != second


def abort_with(code: grpc.StatusCode, reason: str = "", message: str = "the launch's outcome is unknown") -> Abort:
    def abort(context: grpc.ServicerContext) -> None:
        if not reason:
            context.abort(code, "try again")
        detail = any_pb2.Any()
        detail.Pack(error_details_pb2.ErrorInfo(reason=reason, domain="cloudimg"))
        context.abort_with_status(rpc_status.to_status(status_pb2.Status(
            code=code.value[0], message=message, details=[detail])))
    return abort


@pytest.fixture
def no_backoff(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(cli_main, "RETRY_BACKOFF_S", 0.0)


def test_run_retries_a_lost_launch_with_the_same_token(cli: Cli, fakes: Fakes, no_backoff: None) -> None:
    fakes.run_failures[:] = [abort_with(grpc.StatusCode.UNAVAILABLE),
                             abort_with(grpc.StatusCode.ABORTED, "LAUNCH_IN_PROGRESS")]
    code, out, _ = cli("run", *LAUNCH)
    assert code == 0
    assert out.startswith("INSTANCE_ID\nins-aaaaaaaa")
    tokens = [r.client_token for r in fakes.requests]
    assert len(tokens) == 3
    assert len(set(tokens)) == 1
    assert tokens[0]


def test_run_that_still_fails_names_the_token_to_retry_with(cli: Cli, fakes: Fakes, no_backoff: None) -> None:
    fakes.run_failures[:] = [abort_with(grpc.StatusCode.UNAVAILABLE, "LAUNCH_OUTCOME_UNKNOWN")] * 5
    code, out, err = cli("run", *LAUNCH, "--client-token", "tok-7")
    assert (code, out, err.count("\n")) == (1, "", 2)
    token, error = err.splitlines()
    assert token == "client token: tok-7"
    assert error.startswith("error: UNAVAILABLE LAUNCH_OUTCOME_UNKNOWN: ")
    assert err.endswith(f"retry with --client-token tok-7 (x-request-id {fakes.request_ids[-1]})\n")
    assert [r.client_token for r in fakes.requests] == ["tok-7"] * 3


def test_run_refused_is_not_retried(cli: Cli, fakes: Fakes, no_backoff: None) -> None:
    fakes.run_failures[:] = [abort_with(grpc.StatusCode.INVALID_ARGUMENT, "INVALID_INSTANCE_COUNT")]
    code, _, err = cli("run", *LAUNCH)
    assert (code, len(fakes.requests)) == (1, 1)
    assert "--client-token" not in err


def test_bad_numbers_as_a_module_without_traceback(tmp_path: Path) -> None:
    env = {"PATH": "/usr/bin:/bin", "CLOUDIMG_API_KEY": KEY, "HOME": str(tmp_path)}
    done = subprocess.run([sys.executable, "-m", "cloudimg_cli.main", "run", *LAUNCH, "--count", "3000000000"],
                          env=env, capture_output=True, text=True, timeout=30)
    assert done.returncode == 2
    assert "--count" in done.stderr
    assert "Traceback" not in done.stderr


# The image lifecycle

@pytest.fixture
def no_wait(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(cli_main, "WAIT_POLL_S", 0.0)


def sent(fakes: Fakes, kind: type[MessageT]) -> list[MessageT]:
    return [r for r in fakes.requests if isinstance(r, kind)]


def test_create_image_sends_a_request_id_and_shows_the_new_image(cli: Cli, fakes: Fakes) -> None:
    code, out, err = cli("create-image", "--instance", "ins-00000000", "--name", "web", "--description", "v1")
    assert (code, err) == (0, "")
    assert "image_id              img-new00001\n" in out
    assert "state                 CREATING\n" in out
    (request,) = fakes.requests
    assert (request.instance_id, request.name, request.description, request.dry_run) == (
        "ins-00000000", "web", "v1", False)
    assert len(request.request_id) == 32
    assert request.request_id.isascii()


def test_create_image_wait_follows_the_job_with_a_progress_bar(cli: Cli, fakes: Fakes, no_wait: None) -> None:
    fakes.jobs["img-new00001"] = [job_image("img-new00001", "CREATING", 0), job_image("img-new00001", "CREATING", 50),
                                  job_image("img-new00001", "NORMAL", 100, checksum_sha256="ab" * 32)]
    code, out, err = cli("create-image", "--instance", "ins-00000000", "--name", "web", "--wait")
    assert code == 0
    assert err.splitlines() == ["[----------] 0% CREATING img-new00001", "[#####-----] 50% CREATING img-new00001",
                                "[##########] 100% NORMAL img-new00001"]
    assert "state                 NORMAL\n" in out
    assert "ab" * 32 in out
    assert [r.image_id for r in sent(fakes, image_pb.GetImageRequest)] == ["img-new00001"] * 3


def test_a_dry_run_waits_for_nothing(cli: Cli, fakes: Fakes) -> None:
    code, out, err = cli("create-image", "--instance", "ins-00000000", "--name", "web", "--dry-run", "--wait")
    assert (code, err) == (0, "")
    assert out.startswith("dry run: checked, nothing made\n")
    assert fakes.requests[0].dry_run
    assert sent(fakes, image_pb.GetImageRequest) == []


def test_import_image_that_fails_prints_its_reason_and_exits_1(cli: Cli, fakes: Fakes, no_wait: None) -> None:
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


def test_sync_image_waits_for_every_new_image(cli: Cli, fakes: Fakes, no_wait: None) -> None:
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


def test_wait_gives_up_after_its_timeout(cli: Cli, fakes: Fakes, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(cli_main, "WAIT_POLL_S", 0.3)
    fakes.jobs["img-new00001"] = [job_image("img-new00001", "CREATING", 10)]
    code, _, err = cli("create-image", "--instance", "ins-00000000", "--name", "web", "--wait", "--wait-timeout", "1")
    assert code == 1
    assert err.splitlines()[-1].startswith("error: gave up waiting after 1 s; still working: img-new00001")
    assert 2 <= len(sent(fakes, image_pb.GetImageRequest)) <= 5


def test_progress_redraws_one_line_on_a_terminal() -> None:
    class Terminal(io.StringIO):
        def isatty(self) -> bool:
            return True

    stream = Terminal()
    progress = cli_main.Progress(stream)
    for percent in (10, 10, 100):
        progress.show([job_image("img-a0000001", "NORMAL" if percent == 100 else "IMPORTING", percent)])
    progress.end()
    assert stream.getvalue() == ("\r[#---------] 10% IMPORTING img-a0000001"
                                 "\r[##########] 100% NORMAL img-a0000001  \n")  # padded over the longer line


@pytest.mark.parametrize(("flags", "paths", "name", "description"), [
    (("--name", "web-2"), ["name"], "web-2", ""),
    (("--description", ""), ["description"], "", ""),
    (("--name", "web-2", "--description", "v2"), ["name", "description"], "web-2", "v2"),
])
def test_update_image_masks_the_fields_it_is_given(cli: Cli, fakes: Fakes, flags: tuple[str, ...], paths: list[str],
                                                   name: str, description: str) -> None:
    code, out, _ = cli("update-image", "img-custom01", *flags)
    assert code == 0
    assert "image_id              img-custom01\n" in out
    request = fakes.requests[0]
    assert list(request.update_mask.paths) == paths
    assert (request.image.image_id, request.image.name, request.image.description) == (
        "img-custom01", name, description)
    assert request.request_id


def test_update_image_without_a_change_is_a_usage_error(cli: Cli, fakes: Fakes) -> None:
    code, out, err = cli("update-image", "img-custom01")
    assert (code, out) == (2, "")
    assert "--name, --description" in err
    assert fakes.requests == []


def test_delete_image_is_retried_with_its_request_id(cli: Cli, fakes: Fakes, no_backoff: None) -> None:
    fakes.failures["DeleteImage"] = [abort_with(grpc.StatusCode.UNAVAILABLE)]
    assert cli("delete-image", "img-custom01") == (0, "deleted img-custom01\n", "")
    ids = [r.request_id for r in fakes.requests]
    assert len(ids) == 2
    assert len(set(ids)) == 1
    assert ids[0]


def test_a_delete_that_still_fails_names_the_request_id_to_retry_with(cli: Cli, fakes: Fakes, no_backoff: None) -> None:
    fakes.failures["DeleteImage"] = [abort_with(grpc.StatusCode.UNAVAILABLE)] * 5
    code, out, err = cli("delete-image", "img-custom01", "--request-id", "del-1")
    assert (code, out) == (1, "")
    assert err.endswith(f"retry with --request-id del-1 (x-request-id {fakes.request_ids[-1]})\n")
    assert [r.request_id for r in fakes.requests] == ["del-1"] * 3


def test_a_refused_delete_is_not_retried(cli: Cli, fakes: Fakes, no_backoff: None) -> None:
    fakes.failures["DeleteImage"] = [abort_with(grpc.StatusCode.FAILED_PRECONDITION, "IMAGE_SHARED")]
    code, _, err = cli("delete-image", "img-custom01")
    assert (code, len(fakes.requests)) == (1, 1)
    assert err.startswith("error: FAILED_PRECONDITION IMAGE_SHARED: ")
    assert "--request-id" not in err


def test_quota(cli: Cli, fakes: Fakes) -> None:
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
def test_image_command_usage_errors_send_nothing(cli: Cli, fakes: Fakes, argv: tuple[str, ...]) -> None:
    code, out, err = cli(*argv)
    assert (code, out) == (2, "")
    assert "error:" in err
    assert "Traceback" not in err
    assert fakes.requests == []


# Shares, the trust policy, terminate, reset, charges and prices

def test_shares_lists_every_page_of_one_images_shares(cli: Cli, fakes: Fakes) -> None:
    assert cli("shares", "img-custom01") == (0, (
        "RECIPIENT_ACCOUNT_ID  STATE     CREATE_TIME\n"
        "100000000002          ACCEPTED  2026-11-01T10:00:00Z\n"
        "100000000003          PENDING   2026-11-02T10:00:00Z\n"
        "100000000004          REJECTED  2026-11-03T10:00:00Z\n"), "")
    assert [(r.image_id, r.page_token) for r in fakes.requests] == [("img-custom01", ""), ("img-custom01", "2")]
    code, out, _ = cli("--json", "shares", "img-custom01")
    body = json.loads(out)
    assert code == 0
    assert "next_page_token" not in body
    assert [(s["recipient_account_id"], s["state"]) for s in body["shares"]] == [
        ("100000000002", "SHARE_STATE_ACCEPTED"), ("100000000003", "SHARE_STATE_PENDING"),
        ("100000000004", "SHARE_STATE_REJECTED")]


@pytest.mark.parametrize(("command", "request_type", "state"), [
    ("accept-share", share_pb.AcceptImageShareRequest, "ACCEPTED"),
    ("reject-share", share_pb.RejectImageShareRequest, "REJECTED"),
])
def test_accept_and_reject_a_share_print_it(
        cli: Cli, fakes: Fakes, command: str,
        request_type: type[share_pb.AcceptImageShareRequest | share_pb.RejectImageShareRequest], state: str) -> None:
    code, out, err = cli(command, "img-shared01")
    assert (code, err) == (0, "")
    assert out == ("image_id              img-shared01\nregion                ap-guangzhou\n"
                   "owner_account_id      100000000001\nrecipient_account_id  100000000002\n"
                   f"state                 {state}\ncreate_time           2026-11-01T10:00:00Z\n")
    (request,) = fakes.requests
    assert isinstance(request, request_type)
    assert request.image_id == "img-shared01"
    assert len(request.request_id) == 32
    assert request.request_id.isascii()
    code, out, _ = cli("--json", command, "img-shared01", "--request-id", "answer-1")
    assert (code, json.loads(out)["share"]["state"]) == (0, f"SHARE_STATE_{state}")
    assert fakes.requests[-1].request_id == "answer-1"


def test_accepting_a_share_that_is_not_there_is_one_line(cli: Cli, fakes: Fakes, no_backoff: None) -> None:
    fakes.failures["AcceptImageShare"] = [abort_with(grpc.StatusCode.NOT_FOUND, "SHARE_NOT_FOUND",
                                                     "image img-nothere0 is not shared with you")]
    assert cli("accept-share", "img-nothere0") == (
        1, "", fakes.named("error: NOT_FOUND SHARE_NOT_FOUND: image img-nothere0 is not shared with you"))
    assert len(fakes.requests) == 1


POLICY_TEXT = ("mode                           ENFORCE\n"
               "allow_platform_images          yes\n"
               "trusted_account_ids            100000000002\n"
               "                               100000000003\n"
               "allowed_marketplace_providers  Bitnami\n"
               "allowed_account_ids            -\n"
               "update_time                    2026-11-20T09:00:00Z\n")


def test_trust_policy_alone_shows_the_policy(cli: Cli, fakes: Fakes) -> None:
    assert cli("trust-policy") == (0, POLICY_TEXT, "")
    assert fakes.requests == [share_pb.GetTrustPolicyRequest()]
    code, out, _ = cli("trust-policy", "--json")
    assert (code, json.loads(out)) == (0, {"policy": {
        "trusted_account_ids": ["100000000002", "100000000003"], "mode": "TRUST_POLICY_MODE_ENFORCE",
        "allow_platform_images": True, "allowed_marketplace_providers": ["Bitnami"],
        "update_time": "2026-11-20T09:00:00Z"}})


def test_a_policy_never_changed_shows_empty_lists_and_no_time() -> None:
    policy = share_pb.GetTrustPolicyResponse(policy=share_pb.TrustPolicy(
        mode=share_pb.TRUST_POLICY_MODE_OFF, allow_platform_images=True))
    assert cli_main.show_policy(policy) == (
        "mode                           OFF\nallow_platform_images          yes\ntrusted_account_ids            -\n"
        "allowed_marketplace_providers  -\nallowed_account_ids            -\nupdate_time                    -")


@pytest.mark.parametrize(("flags", "paths", "policy"), [
    (("--mode", "audit"), ["mode"], share_pb.TrustPolicy(mode=share_pb.TRUST_POLICY_MODE_AUDIT)),
    (("--allow-platform-images", "NO"), ["allow_platform_images"], share_pb.TrustPolicy()),
    (("--allow-platform-images", "yes"), ["allow_platform_images"], share_pb.TrustPolicy(allow_platform_images=True)),
    (("--trusted-accounts", ""), ["trusted_account_ids"], share_pb.TrustPolicy()),
    (("--allowed-accounts", "100000000005, 100000000006", "--allowed-providers", "Bitnami,WordPress Inc",
      "--trusted-accounts", "100000000007", "--mode", "OFF"),
     ["trusted_account_ids", "mode", "allowed_marketplace_providers", "allowed_account_ids"],
     share_pb.TrustPolicy(trusted_account_ids=["100000000007"], mode=share_pb.TRUST_POLICY_MODE_OFF,
                          allowed_marketplace_providers=["Bitnami", "WordPress Inc"],
                          allowed_account_ids=["100000000005", "100000000006"])),
])
def test_trust_policy_update_masks_only_the_flags_given(cli: Cli, fakes: Fakes, flags: tuple[str, ...],
                                                        paths: list[str], policy: share_pb.TrustPolicy) -> None:
    code, _out, err = cli("trust-policy", "update", *flags)
    assert (code, err) == (0, "")
    (request,) = fakes.requests
    assert list(request.update_mask.paths) == paths
    assert request.policy == policy
    assert len(request.request_id) == 32


def test_trust_policy_update_prints_the_policy_after_the_change(cli: Cli, fakes: Fakes) -> None:
    assert cli("trust-policy", "update", "--trusted-accounts", "", "--allowed-accounts", "100000000005") == (0, (
        "mode                           ENFORCE\n"
        "allow_platform_images          yes\n"
        "trusted_account_ids            -\n"
        "allowed_marketplace_providers  Bitnami\n"
        "allowed_account_ids            100000000005\n"
        "update_time                    2026-12-01T10:00:00Z\n"), "")
    code, out, _ = cli("--json", "trust-policy", "update", "--mode", "audit", "--request-id", "policy-1")
    assert (code, json.loads(out)["policy"]["mode"]) == (0, "TRUST_POLICY_MODE_AUDIT")
    assert fakes.requests[-1].request_id == "policy-1"


def test_trust_policy_update_without_a_flag_sends_nothing(cli: Cli, fakes: Fakes) -> None:
    code, out, err = cli("trust-policy", "update")
    assert (code, out, err.count("\n")) == (2, "", 1)
    assert err.startswith("cloudimg: error: trust-policy update: give at least one of --mode")
    assert fakes.requests == []


# The changes retried with their request id: (argv, the RPC)
CHANGES = [
    (("share", "img-custom01", "100000000002"), "ShareImage"),
    (("unshare", "img-custom01", "100000000002"), "UnshareImage"),
    (("accept-share", "img-shared01"), "AcceptImageShare"),
    (("reject-share", "img-shared01"), "RejectImageShare"),
    (("trust-policy", "update", "--mode", "enforce"), "UpdateTrustPolicy"),
    (("terminate", "ins-00000001", "ins-00000002"), "TerminateInstances"),
    (("reset", "ins-00000000", "--image", "img-new00001"), "ResetInstance"),
]


@pytest.mark.parametrize(("argv", "method"), CHANGES)
def test_a_change_is_retried_with_its_request_id(cli: Cli, fakes: Fakes, no_backoff: None, argv: tuple[str, ...],
                                                 method: str) -> None:
    fakes.failures[method] = [abort_with(grpc.StatusCode.UNAVAILABLE)]
    code, _, err = cli(*argv)
    assert (code, err) == (0, "")
    first, second = fakes.requests
    assert first.request_id
    assert first == second


@pytest.mark.parametrize(("argv", "method"), CHANGES)
def test_a_change_that_still_fails_names_its_request_id(cli: Cli, fakes: Fakes, no_backoff: None, argv: tuple[str, ...],
                                                        method: str) -> None:
    fakes.failures[method] = [abort_with(grpc.StatusCode.UNAVAILABLE)] * 5
    code, out, err = cli(*argv, "--request-id", "chg-1")
    assert (code, out, err) == (1, "", fakes.named("error: UNAVAILABLE: try again; retry with --request-id chg-1"))
    assert [r.request_id for r in fakes.requests] == ["chg-1"] * 3


@pytest.mark.parametrize(("argv", "method"), CHANGES)
def test_a_refused_change_is_one_line_and_not_retried(cli: Cli, fakes: Fakes, no_backoff: None, argv: tuple[str, ...],
                                                      method: str) -> None:
    fakes.failures[method] = [abort_with(grpc.StatusCode.FAILED_PRECONDITION, "IDEMPOTENCY_PARAMETER_MISMATCH",
                                         "request_id chg-1 was used with other parameters")]
    assert cli(*argv, "--request-id", "chg-1") == (
        1, "", fakes.named("error: FAILED_PRECONDITION IDEMPOTENCY_PARAMETER_MISMATCH: request_id chg-1 was used "
                           "with other parameters"))  # a refusal, not a lost answer: no "retry with"
    assert len(fakes.requests) == 1


def test_terminate_prints_the_instances_and_their_states(cli: Cli, fakes: Fakes) -> None:
    assert cli("terminate", "ins-00000002", "ins-00000001", "--request-id", "term-1") == (0, (
        "INSTANCE_ID   INSTANCE_NAME  REGION        STATE       TERMINATE_TIME\n"
        "ins-00000002  web-0          ap-guangzhou  TERMINATED  2026-12-01T11:00:00Z\n"
        "ins-00000001  web-1          ap-guangzhou  TERMINATED  2026-12-01T11:00:00Z\n"), "")
    assert fakes.requests == [instance_pb.TerminateInstancesRequest(
        instance_ids=["ins-00000002", "ins-00000001"], request_id="term-1")]
    code, out, _ = cli("--json", "terminate", "ins-00000003")
    assert (code, [(i["instance_id"], i["state"]) for i in json.loads(out)["instances"]]) == (
        0, [("ins-00000003", "INSTANCE_STATE_TERMINATED")])


def test_terminate_takes_up_to_100_ids(cli: Cli, fakes: Fakes) -> None:
    ids = [f"ins-{n:08d}" for n in range(100)]
    assert cli("terminate", *ids)[0] == 0
    assert list(fakes.requests[0].instance_ids) == ids


def test_reset_prints_the_instance_and_its_new_quote(cli: Cli, fakes: Fakes) -> None:
    code, out, err = cli("reset", "ins-00000000", "--image", "img-new00001", "--request-id", "reset-1")
    assert (code, err) == (0, "")
    assert out.startswith("instance_id     ins-00000000\n")
    assert "image_id        img-new00001\nstate           RUNNING\n" in out
    assert "update_time     2026-12-01T11:00:00Z\n" in out
    assert out.endswith("\n\nKIND           DESCRIPTION             UNIT_PRICE   QUANTITY  UNIT           AMOUNT\n"
                        "INSTANCE       S5.MEDIUM4              USD 0.12     2         instance-hour  USD 0.24\n"
                        "IMAGE_LICENSE  Windows Server license  USD 0.00625  2         instance-hour  USD 0.0125\n"
                        "\ntotal          USD 0.2525\ncharge_type    POSTPAID_BY_HOUR\nimage_allowed  yes\n")
    assert fakes.requests == [instance_pb.ResetInstanceRequest(
        instance_id="ins-00000000", image_id="img-new00001", request_id="reset-1")]
    code, out, _ = cli("--json", "reset", "ins-00000000", "--image", "img-new00001")
    body = json.loads(out)
    assert (code, body["instance"]["image_id"], body["quote"]["total"]["nanos"]) == (0, "img-new00001", 252500000)


def test_reset_dry_run_says_nothing_changed(cli: Cli, fakes: Fakes) -> None:
    code, out, _ = cli("reset", "ins-00000000", "--image", "img-new00001", "--dry-run")
    assert code == 0
    assert out.startswith("dry run: validated and priced, nothing changed\n\ninstance_id     ins-00000000\n")
    assert "image_id        img-ubuntu22\n" in out
    assert fakes.requests[0].dry_run
    assert fakes.requests[0].request_id


def test_quote_reset_prints_the_quote(cli: Cli, fakes: Fakes) -> None:
    code, out, _ = cli("quote-reset", "ins-00000000", "--image", "img-new00001")
    assert code == 0
    assert out.startswith("KIND           DESCRIPTION")
    assert out.endswith("image_allowed  yes\n")
    assert fakes.requests == [instance_pb.QuoteResetInstanceRequest(instance_id="ins-00000000",
                                                                    image_id="img-new00001")]


CHARGES_TEXT = [
    "KIND           CHARGE_ID     REGION        INSTANCES                                  USAGE_START_TIME      "
    "USAGE_END_TIME        TOTAL       CREATE_TIME",
    "LAUNCH         chg-launch01  ap-guangzhou  ins-00000000,ins-00000001,ins-00000002 +2  -                     "
    "-                     USD 0.2525  2026-12-01T08:00:00Z",
    "USAGE          chg-usage001  ap-guangzhou  ins-00000001                               2026-12-01T09:00:00Z  "
    "2026-12-01T12:00:00Z  USD 0.36    2026-12-01T12:00:00Z",
    "ACCRUED_USAGE  -             ap-guangzhou  ins-00000002,ins-00000003                  2026-12-01T09:00:00Z  "
    "2026-12-01T10:00:00Z  USD 0.24    2026-12-01T09:30:00Z",
]


def test_charges_all_shows_the_ledger_then_the_accrued_usage(cli: Cli, fakes: Fakes) -> None:
    assert cli("charges", "--all") == (0, "\n".join(CHARGES_TEXT) + "\n", "")
    assert [r.page_token for r in fakes.requests] == ["", "2"]
    assert not fakes.requests[0].HasField("start_time")
    assert not fakes.requests[0].HasField("end_time")


def test_charges_one_page_names_the_next_token(cli: Cli, fakes: Fakes) -> None:
    code, out, _ = cli("charges", "--page-size", "2")
    assert code == 0
    assert out.splitlines()[1].startswith("LAUNCH ")
    assert "ACCRUED_USAGE" not in out
    assert out.endswith("\n\nmore: --page-token 2 (or --all)\n")


def test_charges_filters_are_sent(cli: Cli, fakes: Fakes) -> None:
    code, _, _ = cli("charges", "--instance", "ins-00000001", "--since", "2026-12-01T08:00:00+08:00",
                     "--until", "2026-12-02t00:00:00.5z", "--page-size", "1000", "--page-token", "2")
    assert code == 0
    assert fakes.requests == [account_pb.ListChargesRequest(
        instance_id="ins-00000001", start_time=ts("2026-12-01T00:00:00Z"), end_time=ts("2026-12-02T00:00:00.500Z"),
        page_size=1000, page_token="2")]


def test_charges_as_json(cli: Cli) -> None:
    code, out, _ = cli("--json", "charges", "--all")
    charges = json.loads(out)["charges"]
    assert code == 0
    assert [(c.get("charge_id"), c["kind"]) for c in charges] == [
        ("chg-launch01", "CHARGE_KIND_LAUNCH"), ("chg-usage001", "CHARGE_KIND_USAGE"),
        (None, "CHARGE_KIND_ACCRUED_USAGE")]
    assert len(charges[0]["instance_ids"]) == 5
    assert charges[2]["usage_end_time"] == "2026-12-01T10:00:00Z"


PRICES_TEXT = ("REGION        KIND           INSTANCE_TYPE/PRODUCT   CHARGE_TYPE       UNIT_PRICE  UNIT\n"
               "ap-guangzhou  INSTANCE       S5.MEDIUM4              POSTPAID_BY_HOUR  USD 0.12    instance-hour\n"
               "ap-singapore  IMAGE_LICENSE  Windows Server license  PREPAID           USD 4.50    instance-month\n"
               "ap-guangzhou  MARKETPLACE    bitnami-wp              POSTPAID_BY_HOUR  USD 0.02    instance-hour\n")


def test_prices_all(cli: Cli, fakes: Fakes) -> None:
    assert cli("prices", "--all") == (0, PRICES_TEXT, "")
    assert [r.page_token for r in fakes.requests] == ["", "2"]
    assert fakes.requests[0] == instance_pb.ListPricesRequest()


def test_prices_filters_and_one_page(cli: Cli, fakes: Fakes) -> None:
    code, out, _ = cli("prices", "--region", "ap-guangzhou", "--charge-type", "spotpaid", "--instance-type",
                       "S5.MEDIUM4", "--page-size", "2")
    assert code == 0
    assert out == "\n".join(PRICES_TEXT.splitlines()[:3]) + "\n\nmore: --page-token 2 (or --all)\n"
    assert fakes.requests == [instance_pb.ListPricesRequest(
        region="ap-guangzhou", charge_type=instance_pb.CHARGE_TYPE_SPOTPAID, instance_type="S5.MEDIUM4", page_size=2)]
    code, out, _ = cli("--json", "prices", "--all")
    prices = json.loads(out)["prices"]
    assert (code, prices[2]["marketplace_product_id"], prices[1]["unit_price"]) == (
        0, "bitnami-wp", {"currency_code": "USD", "units": "4", "nanos": 500000000})


def test_prices_refused_is_one_line(cli: Cli, fakes: Fakes) -> None:
    fakes.failures["ListPrices"] = [abort_with(grpc.StatusCode.INVALID_ARGUMENT, "INVALID_PAGE_TOKEN",
                                               "page_token does not match the request")]
    assert cli("prices", "--page-token", "bogus") == (
        1, "", fakes.named("error: INVALID_ARGUMENT INVALID_PAGE_TOKEN: page_token does not match the request"))


def test_instances_by_state(cli: Cli, fakes: Fakes) -> None:
    assert cli("instances", "--state", "running", "--state", "RESETTING", "PENDING")[0] == 0
    assert list(fakes.requests[0].states) == [instance_pb.INSTANCE_STATE_RUNNING, instance_pb.INSTANCE_STATE_RESETTING,
                                              instance_pb.INSTANCE_STATE_PENDING]
    assert all(list(r.states) == list(fakes.requests[0].states) for r in fakes.requests)  # on every page


def test_images_by_share_state(cli: Cli, fakes: Fakes) -> None:
    assert cli("images", "--region", "ap-guangzhou", "--share-state", "rejected", "--share-state", "PENDING")[0] == 0
    assert list(fakes.requests[0].share_states) == [image_pb.SHARE_STATE_REJECTED, image_pb.SHARE_STATE_PENDING]
    assert cli("images", "--region", "ap-guangzhou")[0] == 0
    assert list(fakes.requests[1].share_states) == []


@pytest.mark.parametrize(("argv", "flag"), [
    (("charges", "--since", "2026-12-01"), "--since"),
    (("charges", "--since", "2026-12-01T00:00:00"), "--since"),  # no offset
    (("charges", "--until", "yesterday"), "--until"),
    (("charges", "--until", "2026-13-01T00:00:00Z"), "--until"),
    (("charges", "--page-size", "0"), "--page-size"),
    (("prices", "--charge-type", "monthly"), "--charge-type"),
    (("prices", "--page-size", "1001"), "--page-size"),
    (("terminate", "--request-id", "x" * 65, "ins-00000001"), "--request-id"),
    (("terminate", *[f"ins-{n:08d}" for n in range(101)]), "INSTANCE_ID"),
    (("terminate",), "INSTANCE_ID"),
    (("reset", "ins-00000000"), "--image"),
    (("reset", "--image", "img-new00001"), "INSTANCE_ID"),
    (("quote-reset", "ins-00000000"), "--image"),
    (("shares",), "IMAGE_ID"),
    (("accept-share",), "IMAGE_ID"),
    (("reject-share", "img-shared01", "--request-id", "caf\u00e9"), "--request-id"),
    (("trust-policy", "update", "--mode", "strict"), "--mode"),
    (("trust-policy", "update", "--allow-platform-images", "maybe"), "--allow-platform-images"),
    (("trust-policy", "update", "--trusted-accounts", "100000000002,,100000000003"), "--trusted-accounts"),
    (("trust-policy", "update", "--allowed-accounts", "100000000002,"), "--allowed-accounts"),
    (("trust-policy", "delete"), "ACTION"),
    (("instances", "--state", "sleeping"), "--state"),
    (("images", "--region", "r", "--share-state", "declined"), "--share-state"),
])
def test_new_command_usage_errors_name_the_argument_and_send_nothing(cli: Cli, fakes: Fakes, argv: tuple[str, ...],
                                                                     flag: str) -> None:
    code, out, err = cli(*argv)
    assert (code, out) == (2, "")
    assert f"error: argument {flag}" in err or f"required: {flag}" in err, err
    assert "Traceback" not in err
    assert fakes.requests == []


def test_help_names_every_command(cli: Cli) -> None:
    code, out, _ = cli("--help")
    assert code == 0
    for name in ("shares", "accept-share", "reject-share", "trust-policy", "terminate", "reset", "quote-reset",
                 "charges", "prices", "instances"):
        assert f"\n    {name} " in out
    code, out, _ = cli("trust-policy", "--help")
    assert code == 0
    assert "[update ...]" in out.splitlines()[0]
    assert "update" in out
    code, out, _ = cli("trust-policy", "update", "--help")
    assert code == 0
    assert all(flag in out for flag in ("--mode {OFF,AUDIT,ENFORCE}", "--trusted-accounts", "--allow-platform-images "
                                        "{yes,no}", "--allowed-providers", "--allowed-accounts", "--request-id"))


# Settings: profiles, configure, outputs, --version, --timeout, --debug

def profiles(home: Path, config: str = "", credentials: str = "") -> None:
    """Writes ~/.cloudimg/config and ~/.cloudimg/credentials (TOML)."""
    (home / ".cloudimg").mkdir(exist_ok=True)
    (home / ".cloudimg" / "config").write_text(config)
    if credentials:
        (home / ".cloudimg" / "credentials").write_text(credentials)


@pytest.fixture
def endpoint(monkeypatch: pytest.MonkeyPatch) -> str:
    """The fakes' endpoint, no longer in the environment: the profile must name it."""
    value = os.environ["CLOUDIMG_ENDPOINT"]
    monkeypatch.delenv("CLOUDIMG_ENDPOINT")
    monkeypatch.delenv("CLOUDIMG_API_KEY")
    return value


def test_the_default_profile_supplies_endpoint_key_and_region(cli: Cli, fakes: Fakes, no_settings: Path,
                                                              endpoint: str) -> None:
    profiles(no_settings, f'[default]\nendpoint = "{endpoint}"\nregion = "ap-singapore"\n',
             f'[default]\napi_key = "{KEY}"\n')
    assert cli("images")[0] == 0
    assert cli("quote", "--image", "img-ubuntu22", "--instance-type", "S5.MEDIUM4")[0] == 0
    assert [r.region for r in fakes.requests] == ["ap-singapore", "ap-singapore"]


def test_the_api_key_may_be_in_the_config_file_but_the_credentials_file_wins(cli: Cli, fakes: Fakes, no_settings: Path,
                                                                             endpoint: str) -> None:
    profiles(no_settings, f'[default]\nendpoint = "{endpoint}"\napi_key = "{KEY}"\n')
    assert cli("whoami")[0] == 0
    profiles(no_settings, f'[default]\nendpoint = "{endpoint}"\napi_key = "{KEY}"\n', '[default]\napi_key = "other"\n')
    assert cli("whoami")[0] == 1  # UNAUTHENTICATED: the credentials file's key was sent


@pytest.mark.parametrize(("flag", "env", "expected"), [
    ("ap-flag", "ap-env", "ap-flag"),
    (None, "ap-env", "ap-env"),
    (None, None, "ap-profile"),
])
def test_a_flag_beats_the_environment_which_beats_the_profile(cli: Cli, fakes: Fakes, no_settings: Path,
                                                              monkeypatch: pytest.MonkeyPatch, flag: str | None,
                                                              env: str | None, expected: str) -> None:
    profiles(no_settings, '[default]\nregion = "ap-profile"\nendpoint = "127.0.0.1:1"\ntimeout = 1\n')
    if env:
        monkeypatch.setenv("CLOUDIMG_REGION", env)
    # the endpoint and the key still come from the environment, over the profile's endpoint
    assert cli("images", *(("--region", flag) if flag else ()))[0] == 0
    assert fakes.requests[0].region == expected


def test_the_profile_is_chosen_by_flag_then_environment(cli: Cli, fakes: Fakes, no_settings: Path,
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    profiles(no_settings, '[default]\nregion = "ap-default"\n[prod]\nregion = "ap-prod"\n[test]\nregion = "ap-test"\n')
    assert cli("images")[0] == 0
    monkeypatch.setenv("CLOUDIMG_PROFILE", "test")
    assert cli("images")[0] == 0
    assert cli("--profile", "prod", "images")[0] == 0
    assert cli("images", "--profile", "prod")[0] == 0  # after the command too
    assert [r.region for r in fakes.requests] == ["ap-default", "ap-test", "ap-prod", "ap-prod"]


def test_the_config_file_may_be_elsewhere(cli: Cli, fakes: Fakes, tmp_path: Path,
                                          monkeypatch: pytest.MonkeyPatch) -> None:
    elsewhere = tmp_path / "cloudimg.toml"
    elsewhere.write_text('[default]\nregion = "ap-elsewhere"\n')
    monkeypatch.setenv("CLOUDIMG_CONFIG_FILE", str(elsewhere))
    assert cli("images")[0] == 0
    assert fakes.requests[0].region == "ap-elsewhere"


def test_a_missing_default_profile_is_no_profile_but_a_named_one_is_an_error(cli: Cli, fakes: Fakes,
                                                                             no_settings: Path) -> None:
    assert cli("whoami")[0] == 0  # no config file at all
    code, out, err = cli("--profile", "prod", "whoami")
    assert (code, out, err.count("\n")) == (2, "", 1)
    assert "profile 'prod'" in err
    assert "cloudimg configure --profile prod" in err
    assert len(fakes.requests) == 1


@pytest.mark.parametrize(("text", "named"), [
    ("[default\nregion = 1", "config"),  # not TOML
    ('region = "ap-guangzhou"\n', "is not a profile"),
    ('[default]\nregoin = "ap-guangzhou"\n', "unknown setting 'regoin'"),
    ('[default]\ntimeout = 0\n', "timeout must be a number of seconds greater than 0"),
    ('[default]\ntimeout = true\n', "timeout must be"),
    ('[default]\ntls = "maybe"\n', "tls must be true or false"),
    ('[default]\noutput = "xml"\n', "output must be one of table, json, yaml, text"),
    ('[default]\nendpoint = "nowhere"\n', "endpoint must be HOST:PORT"),
    ('[default]\nregion = 5\n', "region must be a non-empty string"),
])
def test_a_bad_config_file_is_one_line_and_sends_nothing(cli: Cli, fakes: Fakes, no_settings: Path, text: str,
                                                         named: str) -> None:
    profiles(no_settings, text)
    code, out, err = cli("whoami")
    assert (code, out, err.count("\n")) == (2, "", 1)
    assert err.startswith("cloudimg: error: ")
    assert str(no_settings / ".cloudimg" / "config") in err
    assert named in err
    assert fakes.requests == []


@pytest.mark.parametrize(("name", "value", "named"), [
    ("CLOUDIMG_TIMEOUT", "soon", "CLOUDIMG_TIMEOUT must be a number"),
    ("CLOUDIMG_TLS", "2", "CLOUDIMG_TLS must be true or false"),
    ("CLOUDIMG_OUTPUT", "xml", "CLOUDIMG_OUTPUT must be one of"),
    ("CLOUDIMG_PROFILE", "a b", "CLOUDIMG_PROFILE must be"),
])
def test_a_bad_variable_is_one_line_naming_it(cli: Cli, fakes: Fakes, monkeypatch: pytest.MonkeyPatch, name: str,
                                              value: str, named: str) -> None:
    monkeypatch.setenv(name, value)
    code, out, err = cli("whoami")
    assert (code, out, err.count("\n")) == (2, "", 1)
    assert named in err
    assert fakes.requests == []


def test_configure_writes_the_profile_and_the_key_beside_it(cli: Cli, fakes: Fakes, no_settings: Path, endpoint: str,
                                                            tmp_path: Path) -> None:
    ca = tmp_path / "ca.pem"
    ca.write_text("not used here")
    code, out, err = cli("configure", "--endpoint", endpoint, "--api-key", KEY, "--region", "ap-guangzhou",
                         "--ca-cert", str(ca), "--no-tls", "--timeout", "2.5")
    assert (code, err) == (0, "")
    folder = no_settings / ".cloudimg"
    assert tomllib.loads((folder / "config").read_text()) == {"default": {
        "endpoint": endpoint, "region": "ap-guangzhou", "ca_cert": str(ca), "tls": False, "timeout": 2.5}}
    assert tomllib.loads((folder / "credentials").read_text()) == {"default": {"api_key": KEY}}
    assert stat.S_IMODE((folder / "credentials").stat().st_mode) == 0o600
    assert stat.S_IMODE(folder.stat().st_mode) == 0o700
    # what it prints: the settings in effect for that profile, the key masked
    rows = {row.split()[0]: row.split(None, 2)[1:] for row in out.splitlines()[1:]}
    assert rows["api_key"] == ["************cret", f"profile 'default' ({folder / 'credentials'})"]
    assert rows["timeout"] == ["2.5", f"profile 'default' ({folder / 'config'})"]
    assert KEY not in out
    assert fakes.requests == []


def test_configure_changes_only_what_it_is_given(cli: Cli, fakes: Fakes, no_settings: Path, endpoint: str) -> None:
    profiles(no_settings, '[default]\nregion = "ap-guangzhou"\nca_cert = "/ca.pem"\noutput = "json"\n\n'
                          '[prod]\nregion = "na-ashburn"\n')
    assert cli("configure", "--profile", "staging", "--endpoint", endpoint, "--output", "text")[0] == 0
    assert cli("configure", "--region", "ap-beijing", "--ca-cert", "")[0] == 0  # "" removes a setting
    assert tomllib.loads((no_settings / ".cloudimg" / "config").read_text()) == {
        "default": {"region": "ap-beijing", "output": "json"}, "prod": {"region": "na-ashburn"},
        "staging": {"endpoint": endpoint, "output": "text"}}
    assert not (no_settings / ".cloudimg" / "credentials").exists()


def test_configure_reads_the_key_from_stdin(cli: Cli, no_settings: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sys, "stdin", io.StringIO("ak-from-stdin\n"))
    assert cli("configure", "--profile", "ci", "--api-key", "-")[0] == 0
    credentials = tomllib.loads((no_settings / ".cloudimg" / "credentials").read_text())
    assert credentials == {"ci": {"api_key": "ak-from-stdin"}}


@pytest.mark.parametrize(("argv", "named"), [
    (("configure",), "configure: give the settings to save"),
    (("configure", "--ca-cert", "/nonexistent/ca.pem"), "--ca-cert /nonexistent/ca.pem: no such file"),
    (("configure", "--profile", "a.b", "--region", "r"), "argument --profile"),
    (("configure", "--timeout", "0"), "argument --timeout"),
])
def test_configure_refuses_and_writes_nothing(cli: Cli, no_settings: Path, argv: tuple[str, ...], named: str) -> None:
    code, out, err = cli(*argv)
    assert (code, out) == (2, "")
    assert named in err
    assert not (no_settings / ".cloudimg").exists()


def test_configure_list_shows_each_setting_and_where_it_comes_from(cli: Cli, no_settings: Path,
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    profiles(no_settings, '[default]\nregion = "ap-guangzhou"\ntimeout = 30\n', '[default]\napi_key = "ak-12"\n')
    monkeypatch.setenv("CLOUDIMG_ENDPOINT", "gw.example.com:443")
    monkeypatch.delenv("CLOUDIMG_API_KEY", raising=False)
    config_file, credentials = no_settings / ".cloudimg" / "config", no_settings / ".cloudimg" / "credentials"
    assert cli("configure", "list", "--tls") == (0, (
        "NAME      VALUE               SOURCE\n"
        "profile   default             default\n"
        "endpoint  gw.example.com:443  env CLOUDIMG_ENDPOINT\n"
        f"api_key   ************        profile 'default' ({credentials})\n"
        f"region    ap-guangzhou        profile 'default' ({config_file})\n"
        "ca_cert   -                   default\n"
        "tls       yes                 --tls\n"
        "output    table               default\n"
        f"timeout   30                  profile 'default' ({config_file})\n"), "")
    code, out, _ = cli("configure", "list", "--json")
    settings = {row["name"]: row for row in json.loads(out)["settings"]}
    assert (code, settings["api_key"]["value"], settings["ca_cert"]["value"], settings["timeout"]["value"]) == (
        0, "************", None, 30.0)


def test_a_command_that_needs_a_region_says_so_in_one_line(cli: Cli, fakes: Fakes) -> None:
    for argv in (("images",), ("instance-types",), ("quota",), ("run", "--image", "i", "--instance-type", "t")):
        code, out, err = cli(*argv)
        assert (code, out, err.count("\n")) == (2, "", 1), argv
        assert err.startswith(f"cloudimg: error: {argv[0]} needs a region: pass --region, set CLOUDIMG_REGION")
    assert fakes.requests == []


def test_the_listings_of_every_region_ignore_the_default_region(cli: Cli, fakes: Fakes,
                                                                monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CLOUDIMG_REGION", "ap-guangzhou")
    assert cli("instances")[0] == 0
    assert cli("prices")[0] == 0
    assert {r.region for r in fakes.requests} == {""}


def test_output_yaml_is_the_json_document(cli: Cli) -> None:
    code, out, _ = cli("--output", "yaml", "images", "--region", "ap-guangzhou", "--all")
    assert code == 0
    assert out.startswith("images:\n- image_id: img-ubuntu22\n")
    assert yaml.safe_load(out) == json.loads(cli("--json", "images", "--region", "ap-guangzhou", "--all")[1])


def test_output_text_is_tab_separated(cli: Cli) -> None:
    code, out, _ = cli("--output", "text", "images", "--region", "ap-guangzhou", "--page-size", "2")
    assert code == 0
    lines = [line.split("\t") for line in out.splitlines()]
    assert lines[0][:6] == ["IMAGES", "img-ubuntu22", "ap-guangzhou", "PUBLIC", "NORMAL", "Ubuntu 22.04"]
    assert [line[0] for line in lines] == ["IMAGES", "IMAGES", "NEXT_PAGE_TOKEN"]
    assert lines[2] == ["NEXT_PAGE_TOKEN", "2"]
    assert len({len(line) for line in lines[:2]}) == 1  # every image has every column
    fields = [f.name for f in image_pb.Image.DESCRIPTOR.fields]  # the columns: the API's order
    first, second = (dict(zip(fields, line[1:], strict=True)) for line in lines[:2])
    assert (first["create_time"], first["image_allowed"], first["architecture"], first["size_gb"]) == (
        "2024-05-01T08:30:00Z", "true", "X86_64", "20")
    assert (second["create_time"], second["image_allowed"], second["architecture"], second["region"]) == (
        "", "false", "", "")


def test_output_text_of_a_launch(cli: Cli, fakes: Fakes) -> None:
    code, out, err = cli("run", *LAUNCH, "--output", "text", "--client-token", "tok-1")
    assert (code, err) == (0, "client token: tok-1\n")
    assert out == ("INSTANCE_IDS\tins-aaaaaaaa\nINSTANCE_IDS\tins-bbbbbbbb\n"
                   "QUOTE\tUSD\tUSD 0.2525\tPOSTPAID_BY_HOUR\ttrue\n"
                   "LINES\tINSTANCE\tS5.MEDIUM4\tUSD 0.12\t2\tinstance-hour\tUSD 0.24\n"
                   "LINES\tIMAGE_LICENSE\tWindows Server license\tUSD 0.00625\t2\tinstance-hour\tUSD 0.0125\n")


def test_output_text_of_one_message_is_one_line(cli: Cli) -> None:
    assert cli("whoami", "--output", "text") == (0, "acc-12345678\tAlice\tkey-1\n", "")


def test_output_from_the_environment_and_from_the_profile(cli: Cli, no_settings: Path,
                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    profiles(no_settings, '[default]\noutput = "json"\n')
    assert json.loads(cli("whoami")[1])["account_id"] == "acc-12345678"
    monkeypatch.setenv("CLOUDIMG_OUTPUT", "text")
    assert cli("whoami")[1] == "acc-12345678\tAlice\tkey-1\n"
    assert cli("whoami", "--output", "table")[1].startswith("account_id    acc-12345678\n")


@pytest.mark.parametrize("output", ["--json", "--output=json", "--output=yaml"])
def test_errors_are_json_on_stderr_under_json_and_yaml(cli: Cli, fakes: Fakes, output: str) -> None:
    code, out, err = cli(output, "image", "img-missing")
    assert (code, out, err.count("\n")) == (1, "", 1)
    assert json.loads(err) == {"code": "NOT_FOUND", "reason": "IMAGE_NOT_FOUND",
                               "message": "image img-missing not found", "metadata": {},
                               "request_id": fakes.request_ids[-1]}


def test_a_json_error_carries_the_error_info_metadata_and_what_to_retry_with(cli: Cli, fakes: Fakes,
                                                                             no_backoff: None) -> None:
    def unknown(context: grpc.ServicerContext) -> None:
        detail = any_pb2.Any()
        detail.Pack(error_details_pb2.ErrorInfo(reason="LAUNCH_OUTCOME_UNKNOWN", domain="cloudimg",
                                                metadata={"launch_id": "lch-1", "client_token": "tok-7"}))
        context.abort_with_status(rpc_status.to_status(status_pb2.Status(
            code=code_pb2.UNAVAILABLE, message="the outcome is unknown", details=[detail])))

    fakes.run_failures[:] = [unknown] * 3
    code, out, err = cli("--json", "run", *LAUNCH, "--client-token", "tok-7")
    assert (code, out) == (1, "")
    assert json.loads(err) == {"code": "UNAVAILABLE", "reason": "LAUNCH_OUTCOME_UNKNOWN",
                               "message": "the outcome is unknown",
                               "metadata": {"launch_id": "lch-1", "client_token": "tok-7"},
                               "request_id": fakes.request_ids[-1],
                               "retry_with": {"flag": "--client-token", "value": "tok-7"}}


def test_a_usage_error_after_parsing_is_json_too(cli: Cli, fakes: Fakes) -> None:
    code, out, err = cli("--json", "images")
    assert (code, out) == (2, "")
    error = json.loads(err)
    assert (error["code"], error["request_id"]) == ("USAGE_ERROR", None)
    assert error["message"].startswith("images needs a region")


def test_run_names_its_client_token(cli: Cli, fakes: Fakes) -> None:
    code, _, err = cli("run", *LAUNCH)
    (request,) = fakes.requests
    assert (code, err) == (0, f"client token: {request.client_token}\n")
    code, out, err = cli("--json", "run", *LAUNCH, "--dry-run")
    assert (code, err) == (0, "")
    assert json.loads(out)["client_token"] == fakes.requests[1].client_token
    code, out, _ = cli("--output", "yaml", "run", *LAUNCH, "--client-token", "tok-9")
    assert yaml.safe_load(out)["client_token"] == "tok-9"


def test_version(cli: Cli, monkeypatch: pytest.MonkeyPatch) -> None:
    assert cli("--version") == (0, f"cloudimg {importlib.metadata.version('cloudimg')}\n", "")

    def not_installed(name: str) -> NoReturn:
        raise importlib.metadata.PackageNotFoundError(name)

    monkeypatch.setattr(importlib.metadata, "version", not_installed)
    assert cli("--version") == (0, f"cloudimg {cloudimg_cli.FALLBACK_VERSION}\n", "")


@pytest.mark.parametrize("value", ["0", "-1", "ten", "nan", "inf", ""])
def test_timeout_must_be_positive_seconds(cli: Cli, fakes: Fakes, value: str) -> None:
    code, out, err = cli("--timeout", value, "whoami")
    assert (code, out) == (2, "")
    assert "argument --timeout: must be a number of seconds greater than 0" in err
    assert fakes.requests == []


def test_timeout_is_the_deadline_of_each_call(cli: Cli, fakes: Fakes, no_settings: Path,
                                              monkeypatch: pytest.MonkeyPatch) -> None:
    assert cli("whoami", "--timeout", "30")[0] == 0
    assert 25 < fakes.time_remaining < 31  # plus the wire encoding's rounding
    monkeypatch.setenv("CLOUDIMG_TIMEOUT", "2")
    assert cli("whoami")[0] == 0
    assert 0 < fakes.time_remaining < 3
    monkeypatch.delenv("CLOUDIMG_TIMEOUT")
    profiles(no_settings, "[default]\ntimeout = 60\n")
    assert cli("whoami")[0] == 0
    assert 55 < fakes.time_remaining < 61


def test_every_call_sends_an_x_request_id_of_its_own(cli: Cli, fakes: Fakes) -> None:
    assert cli("images", "--region", "ap-guangzhou", "--all")[0] == 0
    first, second = fakes.request_ids
    assert len(first) == 32
    assert int(first, 16) >= 0
    assert first != second


def test_debug_describes_the_endpoint_and_every_call(cli: Cli, fakes: Fakes) -> None:
    code, out, err = cli("--debug", "images", "--region", "ap-guangzhou", "--all")
    assert code == 0
    assert out.startswith("IMAGE_ID")
    lines = err.splitlines()
    assert lines[0] == (f"debug: endpoint {os.environ['CLOUDIMG_ENDPOINT']} (plaintext), profile default, "
                        "timeout 10 s")
    for line, request_id in zip(lines[1:], fakes.request_ids, strict=True):
        assert re.fullmatch(rf"debug: /cloudimg\.gateway\.v1\.ImageService/ListImages x-request-id {request_id} OK "
                            r"[0-9]+\.[0-9] ms", line), line
    code, _, err = cli("image", "img-missing", "--debug")
    assert code == 1
    assert f"ImageService/GetImage x-request-id {fakes.request_ids[-1]} NOT_FOUND " in err
    assert err.splitlines()[-1].endswith(f"(x-request-id {fakes.request_ids[-1]})")


def test_the_old_type_flags_still_work_with_a_warning(cli: Cli, fakes: Fakes) -> None:
    code, _, err = cli("images", "--region", "ap-guangzhou", "--type", "public", "--type", "SHARED")
    assert (code, err) == (0, "cloudimg: warning: --type is deprecated, use --image-type\n")
    assert list(fakes.requests[0].image_types) == [image_pb.IMAGE_TYPE_PUBLIC, image_pb.IMAGE_TYPE_SHARED]
    code, _, err = cli("quote", "--region", "ap-guangzhou", "--image", "img-ubuntu22", "--type", "S5.MEDIUM4")
    assert (code, err) == (0, "cloudimg: warning: --type is deprecated, use --instance-type\n")
    assert fakes.requests[1].instance_type == "S5.MEDIUM4"


@pytest.mark.parametrize(("argv", "named"), [
    (("quote", "--region", "r", "--image", "i"), "one of the arguments --instance-type is required"),
    (("run", "--region", "r", "--image", "i", "--type", "a", "--instance-type", "b"),
     "argument --instance-type: not allowed with argument --type"),
    (("images", "--region", "r", "--type", "bogus"), "argument --type: invalid choice"),
    (("images", "--region", "r", "--image-type", "bogus"), "argument --image-type: invalid choice"),
])
def test_instance_and_image_type_usage_errors(cli: Cli, fakes: Fakes, argv: tuple[str, ...], named: str) -> None:
    code, out, err = cli(*argv)
    assert (code, out) == (2, "")
    assert named in err
    assert fakes.requests == []


def test_help_names_the_settings(cli: Cli) -> None:
    code, out, _ = cli("--help")
    assert code == 0
    for flag in ("--profile NAME", "--output {table,json,yaml,text}", "--timeout SECONDS", "--debug", "--version",
                 "--tls, --no-tls", "configure"):
        assert flag in out, flag
    code, out, _ = cli("run", "--help")
    assert code == 0
    assert "--instance-type INSTANCE_TYPE" in out
    assert "--type" not in out
