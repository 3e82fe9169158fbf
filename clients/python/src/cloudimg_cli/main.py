"""cloudimg: the command-line client of the cloudimg public gRPC API.

    cloudimg [--profile NAME] [--endpoint HOST:PORT] [--ca-cert FILE | --tls] [--api-key KEY]
             [--output table|json|yaml|text] [--timeout SECONDS] [--debug] COMMAND ...

Every setting is taken from its flag, else its environment variable (CLOUDIMG_ENDPOINT, CLOUDIMG_API_KEY,
CLOUDIMG_REGION, CLOUDIMG_CA_CERT, CLOUDIMG_TLS, CLOUDIMG_OUTPUT, CLOUDIMG_TIMEOUT), else the profile
(~/.cloudimg/config and ~/.cloudimg/credentials, written by `cloudimg configure`; see config.py), else its
default. Every call authenticates with the API key, has a deadline (--timeout, default 10 s) and carries an
x-request-id of its own, which an error names so that it can be quoted; --debug prints every call.
`run` always sends a client token (--client-token, or a new one), and every other command that changes
something (the image lifecycle, sharing, answering a share, the trust policy, terminating and
resetting instances) a request id (--request-id, or a new one), so a call whose answer was lost is
retried safely, and a failed one can be retried by hand with the token it names. `--wait` follows an
image's background job (GetImage every half second, a progress bar on stderr) until it is NORMAL or has
failed. The listings that page (images, charges, prices) show one page and the token of the next, or
every page with --all; times are RFC 3339 (2026-12-01T00:00:00Z). --output json (or --json) and yaml print
the response message, and errors as one line of JSON on stderr; text prints tab-separated values.
TLS: --ca-cert trusts a private CA (a gateway's own), --tls the system's CAs; without either the CLI
speaks plaintext, which a gateway serves on loopback only.
Exit status: 0 done, 1 the call failed (one line on stderr), 2 a usage error (nothing sent).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
import uuid
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, NotRequired, Protocol, TextIO, TypedDict, TypeVar

import grpc
import yaml
from cloudimg.gateway.v1 import (
    account_service_pb2 as account_pb,
)
from cloudimg.gateway.v1 import (
    image_service_pb2 as image_pb,
)
from cloudimg.gateway.v1 import (
    image_share_service_pb2 as share_pb,
)
from cloudimg.gateway.v1 import (
    instance_service_pb2 as instance_pb,
)
from google.protobuf import field_mask_pb2, timestamp_pb2
from google.protobuf.json_format import MessageToDict
from google.protobuf.message import Message

from cloudimg_cli import config, render, version
from cloudimg_client import (
    REQUEST_ID_KEY,
    CallRecord,
    Client,
    OutcomeUnknown,
    Retry,
    error_info,
    error_reason,
    open_channel,
)

STRUCTURED = ("json", "yaml")  # the outputs whose errors are JSON too
INT32_MAX = 2**31 - 1  # what the requests' int32 fields hold
MAX_PAGE_SIZE = 1000
MAX_INSTANCES = 100  # per RunInstances call
MAX_CLIENT_TOKEN = 64
# A launch whose answer was lost is sent again with the same client token: it never launches twice.
RETRY_ATTEMPTS = 3
RETRY_BACKOFF_S = 0.5  # before the second attempt; doubled before each next one
RETRY_WITHIN_S = 30.0
RETRYABLE = (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.ABORTED)
# Failures after which the launch may exist: the user should retry with the same client token.
OUTCOME_UNKNOWN = (*RETRYABLE, grpc.StatusCode.DEADLINE_EXCEEDED)
IMAGE_TYPE = image_pb.ImageType
CHARGE_TYPE = instance_pb.ChargeType
IMAGE_FORMAT = image_pb.ImageFormat
OS_TYPE = image_pb.OsType
ARCHITECTURE = image_pb.Architecture
SHARE_STATE = image_pb.ShareState
INSTANCE_STATE = instance_pb.InstanceState
TRUST_POLICY_MODE = share_pb.TrustPolicyMode
# --wait: how often an image is looked at, and for how long by default.
WAIT_POLL_S = 0.5
WAIT_LIMIT_S = 3600
MAX_WAIT_S = 86400
BAR_WIDTH = 10
FAILED_STATES = (image_pb.IMAGE_STATE_CREATE_FAILED, image_pb.IMAGE_STATE_IMPORT_FAILED)

REGION_COLUMNS = ["region_id", "display_name", "mainland", "sync_enabled"]
INSTANCE_TYPE_COLUMNS = ["instance_type", "family", "architecture", "vcpus", "memory_gb"]
IMAGE_COLUMNS = ["image_id", "name", "image_type", "state", "share_state", "platform", "architecture", "size_gb",
                 "create_time"]
INSTANCE_COLUMNS = ["instance_id", "instance_name", "region", "instance_type", "image_id", "state",
                    "charge_type", "create_time", "update_time"]
TERMINATED_COLUMNS = ["instance_id", "instance_name", "region", "state", "terminate_time"]
SHARE_COLUMNS = ["image_id", "region", "recipient_account_id", "state", "create_time"]
IMAGE_SHARE_COLUMNS = ["recipient_account_id", "state", "create_time"]  # `shares`: one image's
# The trust policy as `trust-policy` shows it.
TRUST_POLICY_FIELDS = ["mode", "allow_platform_images", "trusted_account_ids", "allowed_marketplace_providers",
                       "allowed_account_ids", "update_time"]
# The fields `trust-policy update` may name in update_mask, in this order; each is set by the flag whose dest
# is the field's name.
TRUST_POLICY_PATHS = ["trusted_account_ids", "mode", "allow_platform_images", "allowed_marketplace_providers",
                      "allowed_account_ids"]
CHARGE_HEADERS = ["KIND", "CHARGE_ID", "REGION", "INSTANCES", "USAGE_START_TIME", "USAGE_END_TIME", "TOTAL",
                  "CREATE_TIME"]
CHARGE_INSTANCES_SHOWN = 3  # a charge's instances in the table, then "+N" (--json has them all)
PRICE_HEADERS = ["REGION", "KIND", "INSTANCE_TYPE/PRODUCT", "CHARGE_TYPE", "UNIT_PRICE", "UNIT"]
SYNC_COLUMNS = ["image_id", "region", "name", "state", "progress_percent"]


ResponseT = TypeVar("ResponseT")  # a call's response (the stubs' methods are untyped: the caller names it)
ShownT = TypeVar("ShownT")  # what a command returns and its show renders
ParsedT = TypeVar("ParsedT")  # what an argument type makes of a flag's text


# The full name of each public RPC by the name of its request message (one request message per RPC).
METHODS = {method.input_type.full_name: f"/{service.full_name}/{method.name}"
           for module in (image_pb, share_pb, instance_pb, account_pb)
           for service in module.DESCRIPTOR.services_by_name.values() for method in service.methods}


class Api:
    """The CLI's view of a cloudimg_client.Client: ``api(method, request)`` is one call with the key, a deadline,
    an x-request-id of its own (the last one sent is kept, for the error message) and the safe retries."""

    def __init__(self, client: Client):
        self.client = client
        self.images, self.shares = client.images, client.shares
        self.instances, self.accounts = client.instances, client.accounts

    @property
    def timeout(self) -> float:
        return self.client.timeout

    @property
    def last_request_id(self) -> str:
        return self.client.last_request_id

    def __call__(self, method: Callable[..., ResponseT], request: Message, timeout: float | None = None) -> ResponseT:
        return self.client.call(method, request, timeout=timeout)

    def all_pages(self, method: Callable[..., ResponseT], request: Message, items: str) -> ResponseT:
        """Follows next_page_token; returns the first response holding every page's items."""
        return self.client.all_pages(method, request, items)


def retry_policy() -> Retry:
    """Retries as this module's settings say (read when a command runs, so that tests may change them)."""
    return Retry(attempts=RETRY_ATTEMPTS, backoff_s=RETRY_BACKOFF_S, within_s=RETRY_WITHIN_S, codes=RETRYABLE)


def debug_line(stream: TextIO) -> Callable[[CallRecord], None]:
    def show(call: CallRecord) -> None:
        print(f"debug: {call.method} {REQUEST_ID_KEY} {call.request_id} {call.code} {call.milliseconds:.1f} ms",
              file=stream)
    return show


# Commands: each takes (api, args) and returns the response message; its `show` renders it as text.

def listed(api: Api, args: argparse.Namespace, method: Callable[..., ResponseT], request: Message,
           items: str) -> ResponseT:
    """One page of a paginated listing (from --page-token), or every page with --all."""
    return api.all_pages(method, request, items) if args.all else api(method, request)


class Page(Protocol):
    """A page of a paginated listing."""

    @property
    def next_page_token(self) -> str: ...


def with_next_page(text: str, response: Page) -> str:
    if response.next_page_token:
        text += f"\n\nmore: --page-token {response.next_page_token} (or --all)"
    return text


def list_images(api: Api, args: argparse.Namespace) -> image_pb.ListImagesResponse:
    request = image_pb.ListImagesRequest(
        region=args.region,
        image_types=[render.enum_number(IMAGE_TYPE, t) for t in args.image_types],
        platform=args.platform,
        name_filter=args.name,
        page_size=args.page_size,
        page_token=args.page_token,
        share_states=[render.enum_number(SHARE_STATE, s) for s in args.share_states],
    )
    response: image_pb.ListImagesResponse = listed(api, args, api.images.ListImages, request, "images")
    return response


def show_images(response: image_pb.ListImagesResponse) -> str:
    return with_next_page(render.columns(response.images, IMAGE_COLUMNS), response)


def list_instances(api: Api, args: argparse.Namespace) -> instance_pb.ListInstancesResponse:
    request = instance_pb.ListInstancesRequest(
        region=args.region,
        states=[render.enum_number(INSTANCE_STATE, s) for s in args.states])
    response: instance_pb.ListInstancesResponse = api.all_pages(api.instances.ListInstances, request, "instances")
    return response


def list_charges(api: Api, args: argparse.Namespace) -> account_pb.ListChargesResponse:
    request = account_pb.ListChargesRequest(instance_id=args.instance, page_size=args.page_size,
                                            page_token=args.page_token)
    if args.since is not None:
        request.start_time.CopyFrom(args.since)
    if args.until is not None:
        request.end_time.CopyFrom(args.until)
    response: account_pb.ListChargesResponse = listed(api, args, api.accounts.ListCharges, request, "charges")
    return response


def show_charges(response: account_pb.ListChargesResponse) -> str:
    """One row a charge; the usage accrued so far (ACCRUED_USAGE) has no charge id."""
    rows = [[render.cell(c, "kind"), render.cell(c, "charge_id"), render.cell(c, "region"),
             charged_instances(c.instance_ids), render.cell(c, "usage_start_time"), render.cell(c, "usage_end_time"),
             render.cell(c.quote, "total"), render.cell(c, "create_time")]
            for c in response.charges]
    return with_next_page(render.table(rows, CHARGE_HEADERS), response)


def charged_instances(ids: Sequence[str]) -> str:
    """The first few instance ids of a charge, then how many more: "ins-1,ins-2,ins-3 +97"."""
    text = ",".join(ids[:CHARGE_INSTANCES_SHOWN]) or "-"
    return f"{text} +{len(ids) - CHARGE_INSTANCES_SHOWN}" if len(ids) > CHARGE_INSTANCES_SHOWN else text


def list_prices(api: Api, args: argparse.Namespace) -> instance_pb.ListPricesResponse:
    request = instance_pb.ListPricesRequest(
        region=args.region, instance_type=args.instance_type, page_size=args.page_size, page_token=args.page_token,
        charge_type=charge_type(args))
    response: instance_pb.ListPricesResponse = listed(api, args, api.instances.ListPrices, request, "prices")
    return response


def charge_type(args: argparse.Namespace) -> instance_pb.ChargeType.ValueType:
    """--charge-type; UNSPECIFIED when not given (a launch's default charge type, or a listing's every one)."""
    if not args.charge_type:
        return instance_pb.CHARGE_TYPE_UNSPECIFIED
    return render.enum_number(CHARGE_TYPE, args.charge_type)


def show_prices(response: instance_pb.ListPricesResponse) -> str:
    """One row a price; what it prices is the instance type, the marketplace product or, for a license, its
    description."""
    rows = [[render.cell(p, "region"), render.cell(p, "kind"),
             p.instance_type or p.marketplace_product_id or p.description or "-",
             render.cell(p, "charge_type"), render.cell(p, "unit_price"), render.cell(p, "unit")]
            for p in response.prices]
    return with_next_page(render.table(rows, PRICE_HEADERS), response)


class LaunchFields(TypedDict):
    """The fields QuoteRunInstancesRequest and RunInstancesRequest share."""

    region: str
    image_id: str
    instance_type: str
    instance_count: int
    charge_type: instance_pb.ChargeType.ValueType
    period_months: int
    system_disk_gb: int
    instance_name: str


def launch_fields(args: argparse.Namespace) -> LaunchFields:
    """The launch's flags; one not given is the field's zero (unset), as the server reads it."""
    return LaunchFields(
        region=args.region,
        image_id=args.image,
        instance_type=args.instance_type,
        instance_count=args.count,
        charge_type=charge_type(args),
        period_months=args.period_months or 0,
        system_disk_gb=args.disk_gb or 0,
        instance_name=args.name or "",
    )


# The flag that gives each idempotency field, for "retry with --client-token TOKEN".
TOKEN_FLAGS = {"client_token": "--client-token", "request_id": "--request-id"}


def run_instances(api: Api, args: argparse.Namespace) -> instance_pb.RunInstancesResponse:
    """Names its client token before it sends it (on stderr; as a field of --output json and yaml), so that a
    launch whose outcome is not known, even after Ctrl-C, can be retried with it."""
    token = args.client_token or uuid.uuid4().hex
    args.extra = {"client_token": token}
    if args.output not in STRUCTURED:
        print(f"client token: {token}", file=sys.stderr)
    request = instance_pb.RunInstancesRequest(**launch_fields(args), client_token=token, dry_run=args.dry_run)
    response: instance_pb.RunInstancesResponse = api(api.instances.RunInstances, request)
    return response


def show_run(response: instance_pb.RunInstancesResponse) -> str:
    launched = (render.table([[i] for i in response.instance_ids], ["INSTANCE_ID"])
                if response.instance_ids else "dry run: validated and priced, nothing launched")
    return launched + "\n\n" + render.quote(response.quote)


# The changes other than a launch send a request id (--request-id or a new one) and are retried with it.

class UsageError(Exception):
    """A command line that argparse accepts but that asks for nothing (exit 2, nothing sent)."""


class ImageFailed(Exception):
    """Images whose job ended CREATE_FAILED or IMPORT_FAILED."""

    def __init__(self, images: list[image_pb.Image]):
        super().__init__(", ".join(i.image_id for i in images))
        self.images = images


class WaitExpired(Exception):
    """--wait gave up on images still being made or copied."""

    def __init__(self, images: list[image_pb.Image], seconds: int):
        super().__init__(", ".join(i.image_id for i in images))
        self.images = images
        self.seconds = seconds


def request_id(args: argparse.Namespace) -> str:
    return args.request_id or uuid.uuid4().hex


def create_image(api: Api, args: argparse.Namespace) -> image_pb.CreateImageResponse:
    token = request_id(args)
    request = image_pb.CreateImageRequest(instance_id=args.instance, name=args.name, description=args.description,
                                          request_id=token, dry_run=args.dry_run)
    response: image_pb.CreateImageResponse = api(api.images.CreateImage, request)
    return image_pb.CreateImageResponse(image=waited(api, args, [response.image])[0])


def import_image(api: Api, args: argparse.Namespace) -> image_pb.ImportImageResponse:
    token = request_id(args)
    request = image_pb.ImportImageRequest(
        region=args.region, name=args.name, description=args.description,
        format=render.enum_number(IMAGE_FORMAT, args.format), os_name=args.os_name,
        os_type=render.enum_number(OS_TYPE, args.os_type),
        architecture=render.enum_number(ARCHITECTURE, args.arch),
        source_uri=args.source, request_id=token, dry_run=args.dry_run)
    response: image_pb.ImportImageResponse = api(api.images.ImportImage, request)
    return image_pb.ImportImageResponse(image=waited(api, args, [response.image])[0])


def sync_image(api: Api, args: argparse.Namespace) -> image_pb.SyncImageResponse:
    token = request_id(args)
    request = image_pb.SyncImageRequest(image_id=args.image_id, destination_regions=args.to, request_id=token,
                                        dry_run=args.dry_run)
    response: image_pb.SyncImageResponse = api(api.images.SyncImage, request)
    return image_pb.SyncImageResponse(images=waited(api, args, list(response.images)))


def update_image(api: Api, args: argparse.Namespace) -> image_pb.UpdateImageResponse:
    paths = [name for name in ("name", "description") if getattr(args, name) is not None]
    if not paths:
        raise UsageError("update-image: give --name, --description or both")
    token = request_id(args)
    request = image_pb.UpdateImageRequest(
        image=image_pb.Image(image_id=args.image_id, name=args.name or "", description=args.description or ""),
        update_mask=field_mask_pb2.FieldMask(paths=paths), request_id=token)
    response: image_pb.UpdateImageResponse = api(api.images.UpdateImage, request)
    return response


def delete_image(api: Api, args: argparse.Namespace) -> image_pb.DeleteImageResponse:
    token = request_id(args)
    request = image_pb.DeleteImageRequest(image_id=args.image_id, request_id=token)
    response: image_pb.DeleteImageResponse = api(api.images.DeleteImage, request)
    return response


SharesChanged = share_pb.ShareImageResponse | share_pb.UnshareImageResponse
ShareAnswered = share_pb.AcceptImageShareResponse | share_pb.RejectImageShareResponse


def change_shares(rpc: str, request_type: type[share_pb.ShareImageRequest | share_pb.UnshareImageRequest]
                  ) -> Callable[[Api, argparse.Namespace], SharesChanged]:
    """The call of `share` or `unshare`: one image, one or more accounts."""
    def call(api: Api, args: argparse.Namespace) -> SharesChanged:
        token = request_id(args)
        request = request_type(image_id=args.image_id, account_ids=args.account_ids, request_id=token)
        response: SharesChanged = api(getattr(api.shares, rpc), request)
        return response
    return call


def answer_share(rpc: str, request_type: type[share_pb.AcceptImageShareRequest | share_pb.RejectImageShareRequest]
                 ) -> Callable[[Api, argparse.Namespace], ShareAnswered]:
    """The call of `accept-share` or `reject-share`: the caller's share of one image."""
    def call(api: Api, args: argparse.Namespace) -> ShareAnswered:
        token = request_id(args)
        request = request_type(image_id=args.image_id, request_id=token)
        response: ShareAnswered = api(getattr(api.shares, rpc), request)
        return response
    return call


def update_trust_policy(api: Api, args: argparse.Namespace) -> share_pb.UpdateTrustPolicyResponse:
    """Sends the fields whose flags were given, and names exactly those in update_mask."""
    paths = [name for name in TRUST_POLICY_PATHS if getattr(args, name) is not None]
    if not paths:
        raise UsageError("trust-policy update: give at least one of --mode, --trusted-accounts, "
                         "--allow-platform-images, --allowed-providers, --allowed-accounts")
    policy = share_pb.TrustPolicy()
    for name in paths:
        value = getattr(args, name)
        if name == "mode":
            policy.mode = render.enum_number(TRUST_POLICY_MODE, value)
        elif name == "allow_platform_images":
            policy.allow_platform_images = value == "yes"
        else:
            getattr(policy, name).extend(value)
    token = request_id(args)
    request = share_pb.UpdateTrustPolicyRequest(policy=policy, update_mask=field_mask_pb2.FieldMask(paths=paths),
                                                request_id=token)
    response: share_pb.UpdateTrustPolicyResponse = api(api.shares.UpdateTrustPolicy, request)
    return response


def show_policy(response: share_pb.GetTrustPolicyResponse | share_pb.UpdateTrustPolicyResponse) -> str:
    return render.fields(response.policy, TRUST_POLICY_FIELDS)


def terminate_instances(api: Api, args: argparse.Namespace) -> instance_pb.TerminateInstancesResponse:
    token = request_id(args)
    request = instance_pb.TerminateInstancesRequest(instance_ids=args.instance_ids, request_id=token)
    response: instance_pb.TerminateInstancesResponse = api(api.instances.TerminateInstances, request)
    return response


def reset_instance(api: Api, args: argparse.Namespace) -> instance_pb.ResetInstanceResponse:
    token = request_id(args)
    request = instance_pb.ResetInstanceRequest(instance_id=args.instance_id, image_id=args.image, request_id=token,
                                               dry_run=args.dry_run)
    response: instance_pb.ResetInstanceResponse = api(api.instances.ResetInstance, request)
    return response


def show_reset(response: instance_pb.ResetInstanceResponse, args: argparse.Namespace) -> str:
    text = render.fields(response.instance) + "\n\n" + render.quote(response.quote)
    return "dry run: validated and priced, nothing changed\n\n" + text if args.dry_run else text


def waited(api: Api, args: argparse.Namespace, images: list[image_pb.Image]) -> list[image_pb.Image]:
    """The images as they are once their jobs are over, with --wait (a dry run has nothing to wait for);
    else as the call returned them."""
    if not args.wait or args.dry_run or not images:
        return images
    return wait_for_images(api, images, args.wait_timeout, Progress(sys.stderr))


def wait_for_images(api: Api, images: list[image_pb.Image], limit_s: float, progress: Progress
                    ) -> list[image_pb.Image]:
    """Looks at each image every WAIT_POLL_S until it is NORMAL or failed; ImageFailed if any failed."""
    latest = {i.image_id: i for i in images}
    give_up = time.monotonic() + limit_s
    while True:
        for image_id, image in latest.items():
            if image.state == image_pb.IMAGE_STATE_NORMAL or image.state in FAILED_STATES:
                continue
            try:
                seen: image_pb.GetImageResponse = api(api.images.GetImage, image_pb.GetImageRequest(image_id=image_id))
                latest[image_id] = seen.image
            except grpc.RpcError as err:
                if err.code() not in OUTCOME_UNKNOWN:  # a lost answer: look again next time
                    progress.end()
                    raise
        progress.show(list(latest.values()))
        running = [i for i in latest.values()
                   if i.state != image_pb.IMAGE_STATE_NORMAL and i.state not in FAILED_STATES]
        if not running:
            break
        if time.monotonic() + WAIT_POLL_S > give_up:
            progress.end()
            raise WaitExpired(running, int(limit_s))
        time.sleep(WAIT_POLL_S)
    progress.end()
    failed = [i for i in latest.values() if i.state in FAILED_STATES]
    if failed:
        raise ImageFailed(failed)
    return [latest[i.image_id] for i in images]


class Progress:
    """One line on stderr, e.g. "[#####-----] 50% IMPORTING img-1a2b3c4d": redrawn in place on a terminal,
    a new line whenever it changes otherwise (logs)."""

    def __init__(self, stream: TextIO):
        self._stream = stream
        self._tty = stream.isatty()
        self._last = ""

    def show(self, images: list[image_pb.Image]) -> None:
        percents = [100 if i.state == image_pb.IMAGE_STATE_NORMAL else max(0, min(100, i.progress_percent))
                    for i in images]
        percent = sum(percents) // len(percents)
        filled = percent * BAR_WIDTH // 100
        states = sorted({render.enum_name(image_pb.ImageState.DESCRIPTOR, i.state) for i in images})
        line = (f"[{'#' * filled}{'-' * (BAR_WIDTH - filled)}] {percent}% {','.join(states)} "
                + " ".join(i.image_id for i in images))
        if line == self._last:
            return
        if self._tty:
            self._stream.write("\r" + line.ljust(len(self._last)))
        else:
            self._stream.write(line + "\n")
        self._stream.flush()
        self._last = line

    def end(self) -> None:
        if self._tty and self._last:
            self._stream.write("\n")
            self._stream.flush()
        self._last = ""


# configure: local commands, given the settings instead of the API.

SettingValue = str | bool | float | None


class SettingRow(TypedDict):
    name: str
    value: SettingValue
    source: str


class SettingsDocument(TypedDict):
    """The settings in effect, as `configure` and `configure list` return them."""

    profile: str
    config_file: str
    credentials_file: str
    settings: list[SettingRow]


def configure(settings: config.Settings, args: argparse.Namespace) -> SettingsDocument:
    """Saves the settings given as flags (and only those) in the profile; the profile's settings after."""
    changes = {name: setting.value for name, setting in settings.values.items() if setting.source.startswith("--")}
    if not changes:
        raise UsageError("configure: give the settings to save: --endpoint, --api-key, --region, --ca-cert, "
                         "--tls/--no-tls, --output, --timeout (cloudimg configure list shows them)")
    if changes.get("api_key") == "-":
        changes["api_key"] = sys.stdin.readline().strip()
        if not changes["api_key"]:
            raise UsageError("configure: --api-key -: no key on stdin")
    for name, value in changes.items():
        if value == "":
            changes[name] = None  # removes it
        elif name == "ca_cert":
            path = Path(value).expanduser().resolve()  # the same file from any directory
            if not path.is_file():
                raise UsageError(f"configure: --ca-cert {value}: no such file")
            changes[name] = str(path)
    config.write_profile(settings, changes)
    chosen = settings.profile.value if settings.profile.source == "--profile" else None
    return settings_document(config.resolve({}, os.environ, chosen))


def settings_document(settings: config.Settings) -> SettingsDocument:
    """The settings in effect as --output json shows them: each with its source, the API key masked."""
    rows: list[SettingRow] = [{"name": "profile", "value": settings.profile.value, "source": settings.profile.source}]
    for name, setting in settings.values.items():
        value = config.masked(setting.value) if name == config.SECRET and setting.value else setting.value
        rows.append({"name": name, "value": value, "source": setting.source})
    return {"profile": settings.profile.value, "config_file": str(settings.config_file),
            "credentials_file": str(settings.credentials_file), "settings": rows}


def _setting_text(value: SettingValue, yes: str, no: str, unset: str) -> str:
    if isinstance(value, bool):
        return yes if value else no
    if isinstance(value, float):
        return f"{value:g}"
    return unset if value is None else str(value)


def show_settings(document: SettingsDocument) -> str:
    return render.table([[row["name"], _setting_text(row["value"], "yes", "no", "-"), row["source"]]
                         for row in document["settings"]], ["NAME", "VALUE", "SOURCE"])


def settings_text(document: SettingsDocument) -> str:
    return "\n".join("\t".join([row["name"], _setting_text(row["value"], "true", "false", ""), row["source"]])
                     for row in document["settings"])


def show_made(response: image_pb.CreateImageResponse | image_pb.ImportImageResponse, args: argparse.Namespace
              ) -> str:
    text = render.fields(response.image)
    return "dry run: checked, nothing made\n\n" + text if args.dry_run else text


def show_synced(response: image_pb.SyncImageResponse, args: argparse.Namespace) -> str:
    text = render.columns(response.images, SYNC_COLUMNS)
    return "dry run: checked, nothing copied\n\n" + text if args.dry_run else text


def add_change_flags(parser: argparse.ArgumentParser, dry_run: bool = True, wait: bool = True) -> None:
    """--request-id of a change, and for the changes that start a job --dry-run and --wait."""
    parser.add_argument("--request-id", type=client_token,
                        help=f"idempotency key (up to {MAX_CLIENT_TOKEN} ASCII characters; default a new one)")
    if dry_run:
        parser.add_argument("--dry-run", action="store_true", help="check only: nothing is made or counted")
    if wait:
        parser.add_argument("--wait", action="store_true",
                            help="follow the job until the image is NORMAL (exit 0) or failed (exit 1)")
        parser.add_argument("--wait-timeout", type=bounded(1, MAX_WAIT_S), default=WAIT_LIMIT_S, metavar="SECONDS",
                            help=f"give up waiting after this long (1-{MAX_WAIT_S}, default {WAIT_LIMIT_S})")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="cloudimg", description="Client for the cloudimg image control plane.",
        epilog="Each setting comes from its flag, else its environment variable, else the profile (cloudimg "
               "configure), else its default.",
        parents=[global_flags(with_defaults=True)])
    parser.add_argument("--version", action="version", version=f"cloudimg {version()}")
    parser.set_defaults(local=False, needs_region=False, extra={}, text=render.text)
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def subcommand(name: str, summary: str, under: argparse._SubParsersAction[argparse.ArgumentParser],
                   description: str) -> argparse.ArgumentParser:
        return under.add_parser(name, help=summary, description=description or summary,
                                parents=[global_flags(with_defaults=False)])

    def command(name: str, summary: str, call: Callable[[Api, argparse.Namespace], ShownT],
                show: Callable[[ShownT], str] | None = None, *,
                show_with_args: Callable[[ShownT, argparse.Namespace], str] | None = None,
                under: argparse._SubParsersAction[argparse.ArgumentParser] = commands,
                description: str = "") -> argparse.ArgumentParser:
        """A subcommand (of ``under``, by default a top-level one): ``call(api, args)`` returns the response,
        ``show(response)`` (or ``show_with_args(response, args)``) renders it as text."""
        sub = subcommand(name, summary, under, description)
        if show_with_args is not None:
            sub.set_defaults(call=call, show=show_with_args)
        elif show is not None:
            sub.set_defaults(call=call, show=lambda response, _args: show(response))
        else:
            raise TypeError(f"command {name}: give show or show_with_args")
        return sub

    def settings_command(name: str, summary: str,
                         call: Callable[[config.Settings, argparse.Namespace], SettingsDocument],
                         under: argparse._SubParsersAction[argparse.ArgumentParser] = commands,
                         description: str = "") -> argparse.ArgumentParser:
        """A local subcommand: ``call(settings, args)`` returns the settings document that it shows."""
        sub = subcommand(name, summary, under, description)
        sub.set_defaults(call=call, show=lambda document, _args: show_settings(document), local=True,
                         text=settings_text)
        return sub

    sub = settings_command("configure", "Save settings in a profile (--profile, default \"default\"); configure "
                           "list shows them.", configure,
                           description="Save the settings given as flags in a profile of the config file (--profile, "
                                       "default \"default\"), the API key in the credentials file beside it; --region "
                                       "\"\", --ca-cert \"\" or --api-key \"\" removes that setting, --api-key - reads "
                                       "the key from stdin. Prints the profile's settings afterwards (`cloudimg "
                                       "configure list`).")
    sub.add_argument("--region", help="the default region of the commands that need one")
    sub.usage = "%(prog)s [-h] [--profile NAME] [--endpoint HOST:PORT] [--api-key KEY] [--region REGION] [...]"
    actions = sub.add_subparsers(dest="configure_action", metavar="ACTION")
    settings_command("list", "Show the settings in effect, where each comes from, the API key masked.",
                     lambda settings, args: settings_document(settings), under=actions)

    command("regions", "List the regions.",
            lambda api, args: api(api.images.ListRegions, image_pb.ListRegionsRequest()),
            lambda r: render.columns(r.regions, REGION_COLUMNS))

    sub = command("images", "List the images of a region that the caller may see (one page, or --all).",
                  list_images, show_images)
    add_region_flag(sub)
    add_enum_list_flag(sub, "--image-type", "image_types", IMAGE_TYPE, "image types to list", "default every type")
    sub.add_argument("--type", dest="image_types", action=DeprecatedAlias, use="--image-type", extend=True,
                     nargs="+", type=str.upper, choices=render.enum_choices(IMAGE_TYPE), help=argparse.SUPPRESS)
    add_enum_list_flag(sub, "--share-state", "share_states", SHARE_STATE, "SHARED images: the share states to list",
                       "default PENDING and ACCEPTED; a REJECTED share is listed only when asked for")
    sub.add_argument("--platform", help="exact platform, case-insensitive (e.g. Ubuntu)")
    sub.add_argument("--name", help="substring of the image name, case-insensitive")
    add_page_flags(sub)

    sub = command("image", "Show one image.",
                  lambda api, args: api(api.images.GetImage,
                                        image_pb.GetImageRequest(image_id=args.image_id)),
                  lambda r: render.fields(r.image))
    sub.add_argument("image_id", metavar="IMAGE_ID")

    sub = command("instance-types", "List the instance types of a region.",
                  lambda api, args: api(api.instances.ListInstanceTypes,
                                        instance_pb.ListInstanceTypesRequest(region=args.region)),
                  lambda r: render.columns(r.instance_types, INSTANCE_TYPE_COLUMNS))
    add_region_flag(sub)

    sub = command("prices", "List the published price book: instance, Windows license and marketplace prices "
                  "(one page, or --all).", list_prices, show_prices)
    sub.add_argument("--region", help="default every region")
    sub.add_argument("--charge-type", type=str.upper, choices=render.enum_choices(CHARGE_TYPE),
                     help="default every charge type")
    sub.add_argument("--instance-type", metavar="INSTANCE_TYPE",
                     help="only the instance prices of this type (default every price)")
    add_page_flags(sub)

    sub = command("quote", "Price a launch without creating anything.",
                  lambda api, args: api(
                      api.instances.QuoteRunInstances,
                      instance_pb.QuoteRunInstancesRequest(**launch_fields(args))),
                  lambda r: render.quote(r.quote))
    add_launch_flags(sub)

    sub = command("run", "Launch instances from an image.", run_instances, show_run)
    add_launch_flags(sub)
    sub.add_argument("--client-token", type=client_token,
                     help=f"idempotency token (up to {MAX_CLIENT_TOKEN} ASCII characters; default a new one)")
    sub.add_argument("--dry-run", action="store_true", help="validate and price only")

    sub = command("instances", "List the caller's instances with their states (every page).",
                  list_instances, lambda r: render.columns(r.instances, INSTANCE_COLUMNS))
    sub.add_argument("--region", help="default every region")
    add_enum_list_flag(sub, "--state", "states", INSTANCE_STATE, "instance states to list", "default every state")

    sub = command("instance", "Show one instance.",
                  lambda api, args: api(
                      api.instances.GetInstance,
                      instance_pb.GetInstanceRequest(instance_id=args.instance_id)),
                  lambda r: render.fields(r.instance))
    sub.add_argument("instance_id", metavar="INSTANCE_ID")

    sub = command("terminate", f"Terminate 1 to {MAX_INSTANCES} of your instances, all or none.",
                  terminate_instances, lambda r: render.columns(r.instances, TERMINATED_COLUMNS),
                  description=f"Terminate 1 to {MAX_INSTANCES} of your instances, all or none (terminating a "
                              "terminated one changes nothing; a PENDING or RESETTING one is refused). Hourly "
                              "instances are charged for their usage up to now.")
    sub.add_argument("instance_ids", metavar="INSTANCE_ID", nargs="+", action=at_most(MAX_INSTANCES),
                     help=f"1 to {MAX_INSTANCES} instance ids")
    add_change_flags(sub, dry_run=False, wait=False)

    sub = command("reset", "Reinstall one of your RUNNING instances from an image; prints it and its new price.",
                  reset_instance, show_with_args=show_reset,
                  description="Reinstall one of your RUNNING instances from an image (in its region, of its "
                              "architecture, no larger than its system disk, one you may launch); it is RESETTING "
                              "until done, then RUNNING the image, priced from then on by the quote printed.")
    sub.add_argument("instance_id", metavar="INSTANCE_ID")
    sub.add_argument("--image", required=True, metavar="IMAGE_ID", help="the image to reinstall it from")
    sub.add_argument("--dry-run", action="store_true", help="validate and price only: nothing changes")
    add_change_flags(sub, dry_run=False, wait=False)

    sub = command("quote-reset", "Price a reset of one of your instances without changing anything.",
                  lambda api, args: api(
                      api.instances.QuoteResetInstance,
                      instance_pb.QuoteResetInstanceRequest(instance_id=args.instance_id, image_id=args.image)),
                  lambda r: render.quote(r.quote))
    sub.add_argument("instance_id", metavar="INSTANCE_ID")
    sub.add_argument("--image", required=True, metavar="IMAGE_ID", help="the image to reinstall it from")

    for name, summary, change in (
            ("share", "Share one of your custom images with other accounts.",
             change_shares("ShareImage", share_pb.ShareImageRequest)),
            ("unshare", "Stop sharing one of your custom images with other accounts.",
             change_shares("UnshareImage", share_pb.UnshareImageRequest))):
        sub = command(name, summary, change, lambda r: render.columns(r.shares, SHARE_COLUMNS))
        sub.add_argument("image_id", metavar="IMAGE_ID")
        sub.add_argument("account_ids", metavar="ACCOUNT_ID", nargs="+")
        add_change_flags(sub, dry_run=False, wait=False)

    sub = command("shares", "List who one of your custom images is shared with, and each share's state.",
                  lambda api, args: api.all_pages(
                      api.shares.ListImageShares, share_pb.ListImageSharesRequest(image_id=args.image_id), "shares"),
                  lambda r: render.columns(r.shares, IMAGE_SHARE_COLUMNS))
    sub.add_argument("image_id", metavar="IMAGE_ID")

    for name, summary, answer in (
            ("accept-share", "Accept an image shared with you (pending or rejected) so that you can launch it.",
             answer_share("AcceptImageShare", share_pb.AcceptImageShareRequest)),
            ("reject-share", "Reject an image shared with you: it is no longer listed or launchable until accepted.",
             answer_share("RejectImageShare", share_pb.RejectImageShareRequest))):
        sub = command(name, summary, answer, lambda r: render.fields(r.share))
        sub.add_argument("image_id", metavar="IMAGE_ID")
        add_change_flags(sub, dry_run=False, wait=False)

    sub = command("trust-policy", "Show your image trust policy, or change it (trust-policy update).",
                  lambda api, args: api(api.shares.GetTrustPolicy, share_pb.GetTrustPolicyRequest()), show_policy,
                  description="Show your image trust policy: shares from trusted accounts are accepted at once, "
                              "others arrive PENDING; in ENFORCE mode only your own images and those the allow-list "
                              "names can be launched or reset to, in AUDIT mode the others are flagged "
                              "image_allowed=no, in OFF mode nothing is restricted. "
                              "`cloudimg trust-policy update` changes it.")
    # Without an action it shows the policy: the usage line says the action is optional.
    sub.usage = "%(prog)s [-h] [--profile NAME] [--output FORMAT] [...] [update ...]"
    actions = sub.add_subparsers(dest="trust_policy_action", metavar="ACTION")
    sub = command("update", "Change the fields of your trust policy given as flags (the others stay); prints it.",
                  update_trust_policy, show_policy, under=actions,
                  description="Change the fields of your trust policy given as flags, and only those; prints the "
                              "policy after the change, which applies to your very next call. A list flag "
                              "replaces the whole list; \"\" empties it.")
    sub.add_argument("--mode", type=str.upper, choices=render.enum_choices(TRUST_POLICY_MODE),
                     help="ENFORCE: refuse launches outside the allow-list; AUDIT: flag them; OFF: neither")
    sub.add_argument("--trusted-accounts", dest="trusted_account_ids", type=name_list, metavar="ACCOUNT,...",
                     help="accounts whose shares are accepted at once")
    sub.add_argument("--allow-platform-images", dest="allow_platform_images", type=str.lower, choices=["yes", "no"],
                     help="allow-list: platform (PUBLIC) images")
    sub.add_argument("--allowed-providers", dest="allowed_marketplace_providers", type=name_list,
                     metavar="PROVIDER,...", help="allow-list: marketplace images of these providers (e.g. Bitnami)")
    sub.add_argument("--allowed-accounts", dest="allowed_account_ids", type=name_list, metavar="ACCOUNT,...",
                     help="allow-list: custom images shared with you by these accounts")
    add_change_flags(sub, dry_run=False, wait=False)

    sub = command("create-image", "Make a custom image from one of your instances.", create_image,
                  show_with_args=show_made)
    sub.add_argument("--instance", required=True, metavar="INSTANCE_ID")
    sub.add_argument("--name", required=True)
    sub.add_argument("--description", default="")
    add_change_flags(sub)

    sub = command("import-image", "Import a custom image from a disk image (qcow2, raw, vhd, vmdk).",
                  import_image, show_with_args=show_made)
    add_region_flag(sub)
    sub.add_argument("--name", required=True)
    sub.add_argument("--description", default="")
    sub.add_argument("--format", required=True, type=str.upper, choices=render.enum_choices(IMAGE_FORMAT))
    sub.add_argument("--os-type", required=True, type=str.upper, choices=render.enum_choices(OS_TYPE))
    sub.add_argument("--os-name", default="", help='e.g. "Debian 12"')
    sub.add_argument("--arch", required=True, type=str.upper, choices=render.enum_choices(ARCHITECTURE))
    sub.add_argument("--source", required=True, metavar="URI",
                     help="where the catalog reads the disk image: an http(s) URL, or file:// under its import root")
    add_change_flags(sub)

    sub = command("sync-image", "Copy one of your custom images to other regions (one new image each).",
                  sync_image, show_with_args=show_synced)
    sub.add_argument("image_id", metavar="IMAGE_ID")
    sub.add_argument("--to", required=True, action="append", metavar="REGION",
                     help="a destination region (repeatable)")
    add_change_flags(sub)

    sub = command("update-image", "Rename or re-describe one of your custom images.", update_image,
                  lambda r: render.fields(r.image))
    sub.add_argument("image_id", metavar="IMAGE_ID")
    sub.add_argument("--name", help="the new name")
    sub.add_argument("--description", help="the new description")
    add_change_flags(sub, dry_run=False, wait=False)

    sub = command("delete-image", "Delete one of your custom images (not while it is shared).", delete_image,
                  show_with_args=lambda r, args: f"deleted {args.image_id}")
    sub.add_argument("image_id", metavar="IMAGE_ID")
    add_change_flags(sub, dry_run=False, wait=False)

    sub = command("quota", "Show your custom-image and daily image-operation quotas in a region.",
                  lambda api, args: api(api.images.GetImageQuota, image_pb.GetImageQuotaRequest(region=args.region)),
                  render.fields)
    add_region_flag(sub)

    command("whoami", "Show the account and API key the calls are made with.",
            lambda api, args: api(api.accounts.GetCallerIdentity,
                                  account_pb.GetCallerIdentityRequest()),
            render.fields)

    sub = command("charges", "List what you have been charged, then the usage accrued so far (one page, or --all).",
                  list_charges, show_charges,
                  description="List your charges in the order they were made (launches, resets and the settled "
                              "usage of hourly instances), then the usage accrued so far and not settled yet "
                              "(ACCRUED_USAGE, no charge id).")
    sub.add_argument("--instance", metavar="INSTANCE_ID", help="only the charges of this instance")
    sub.add_argument("--since", type=rfc3339, metavar="TIME",
                     help="only charges made at or after this RFC 3339 time, e.g. 2026-12-01T00:00:00Z")
    sub.add_argument("--until", type=rfc3339, metavar="TIME", help="only charges made before this RFC 3339 time")
    add_page_flags(sub)
    return parser


def global_flags(with_defaults: bool) -> argparse.ArgumentParser:
    """The connection and output flags, accepted before or after the command.

    The copy given to the commands has no defaults, so it never overwrites a value given earlier. A setting
    not given is None here: main() takes it from the environment, the profile or its default.
    """
    def default(value: bool | None) -> bool | str | None:
        return value if with_defaults else argparse.SUPPRESS

    flags = argparse.ArgumentParser(add_help=False)
    flags.add_argument("--profile", type=checked(config.profile_name), default=default(None), metavar="NAME",
                       help=f"the profile of the config file to use (env CLOUDIMG_PROFILE, default "
                            f"\"{config.DEFAULT_PROFILE}\")")
    flags.add_argument("--endpoint", type=checked(config.endpoint), default=default(None), metavar="HOST:PORT",
                       help=f"the gateway (env CLOUDIMG_ENDPOINT, default {config.DEFAULTS['endpoint']})")
    flags.add_argument("--api-key", default=default(None), metavar="KEY", help="API key (env CLOUDIMG_API_KEY)")
    flags.add_argument("--ca-cert", metavar="FILE", default=default(None),
                       help="speak TLS to the gateway, trusting the CA in this PEM file (env CLOUDIMG_CA_CERT)")
    flags.add_argument("--tls", action=argparse.BooleanOptionalAction, default=default(None),
                       help="speak TLS to the gateway, trusting the system's CAs (env CLOUDIMG_TLS=1); "
                            "implied by --ca-cert")
    flags.add_argument("--output", type=str.lower, choices=config.OUTPUTS, default=default(None),
                       help="table (the default), json, yaml or text: tab-separated values (env CLOUDIMG_OUTPUT)")
    flags.add_argument("--json", dest="output", action="store_const", const="json", default=argparse.SUPPRESS,
                       help="the same as --output json")
    flags.add_argument("--timeout", type=checked(config.timeout), default=default(None), metavar="SECONDS",
                       help=f"the deadline of each call (env CLOUDIMG_TIMEOUT, default "
                            f"{config.DEFAULTS['timeout']:g})")
    flags.add_argument("--debug", action="store_true", default=default(False),
                       help="describe every call on stderr: endpoint, method, x-request-id, outcome, duration")
    return flags


def add_region_flag(parser: argparse.ArgumentParser) -> None:
    """--region of a command that needs one: the profile's (or CLOUDIMG_REGION) when not given."""
    parser.add_argument("--region", help="default: env CLOUDIMG_REGION, else the profile's region")
    parser.set_defaults(needs_region=True)


class DeprecatedAlias(argparse.Action):
    """An old name of a flag, kept for the scripts that use it: it does what the flag ``use`` does (store, or
    with extend=True add to the list) and warns once on stderr."""

    def __init__(self, option_strings: Sequence[str], dest: str, use: str, extend: bool = False, **kwargs: Any):
        super().__init__(option_strings, dest, **kwargs)
        self.use, self.extend, self.warned = use, extend, False

    def __call__(self, parser: argparse.ArgumentParser, namespace: argparse.Namespace,
                 values: str | Sequence[Any] | None, option_string: str | None = None) -> None:
        if not self.warned:
            print(f"cloudimg: warning: {option_string} is deprecated, use {self.use}", file=sys.stderr)
            self.warned = True
        if self.extend:  # nargs="+": values is a list
            values = [*(getattr(namespace, self.dest, None) or []), *(values or [])]
        setattr(namespace, self.dest, values)


def add_page_flags(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--page-size", type=bounded(1, MAX_PAGE_SIZE), help=f"1-{MAX_PAGE_SIZE} (default 50)")
    parser.add_argument("--page-token", help="the page to show, as the previous one named it")
    parser.add_argument("--all", action="store_true", help="follow every page")


def add_enum_list_flag(parser: argparse.ArgumentParser, flag: str, dest: str, enum: render.EnumType[Any], what: str,
                       default: str) -> None:
    """A repeatable flag of an enum's short names, any case (--state running --state PENDING)."""
    choices = render.enum_choices(enum)
    parser.add_argument(flag, dest=dest, action="extend", nargs="+", default=[], type=str.upper, choices=choices,
                        metavar=flag.removeprefix("--").replace("-", "_").upper(),
                        help=f"{what}, of {', '.join(choices)} (repeatable; {default})")


def add_launch_flags(parser: argparse.ArgumentParser) -> None:
    add_region_flag(parser)
    parser.add_argument("--image", required=True, metavar="IMAGE_ID")
    instance_type = parser.add_mutually_exclusive_group(required=True)
    instance_type.add_argument("--instance-type", metavar="INSTANCE_TYPE", help="e.g. S5.MEDIUM4")
    instance_type.add_argument("--type", dest="instance_type", action=DeprecatedAlias, use="--instance-type",
                               help=argparse.SUPPRESS)
    parser.add_argument("--count", type=bounded(1, MAX_INSTANCES), default=1, help=f"1-{MAX_INSTANCES} (default 1)")
    parser.add_argument("--charge-type", type=str.upper, choices=render.enum_choices(CHARGE_TYPE),
                        help="default POSTPAID_BY_HOUR")
    parser.add_argument("--period-months", type=bounded(1, INT32_MAX), help="PREPAID only")
    parser.add_argument("--disk-gb", type=bounded(1, INT32_MAX), help="system disk size (default 50)")
    parser.add_argument("--name", help="instance name")


# Argument types: argparse turns their errors into a usage error (exit 2) naming the flag.

def bounded(low: int, high: int) -> Callable[[str], int]:
    """An integer from low to high."""
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            value = None
        if value is None or not low <= value <= high:
            raise argparse.ArgumentTypeError(f"must be an integer from {low} to {high} (got {text!r})")
        return value
    return parse


def checked(parse: Callable[[str], ParsedT]) -> Callable[[str], ParsedT]:
    """A setting's parser as an argument type: its ValueError a usage error naming the flag."""
    def parse_flag(text: str) -> ParsedT:
        try:
            return parse(text)
        except ValueError as exc:
            raise argparse.ArgumentTypeError(str(exc)) from None
    return parse_flag


def rfc3339(text: str) -> timestamp_pb2.Timestamp:
    """An RFC 3339 time with its offset: 2026-12-01T00:00:00Z, 2026-12-01T08:00:00+08:00."""
    stamp = timestamp_pb2.Timestamp()
    try:
        stamp.FromJsonString(text.upper())  # RFC 3339 allows a lowercase "t" and "z"
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"must be an RFC 3339 time with an offset, e.g. 2026-12-01T00:00:00Z (got {text[:80]!r})") from None
    return stamp


def name_list(text: str) -> list[str]:
    """Comma-separated names ("a,b" or "a, b"); "" is the empty list."""
    if not text.strip():
        return []
    names = [name.strip() for name in text.split(",")]
    if not all(names):
        raise argparse.ArgumentTypeError(f"must be comma-separated names, none of them empty (got {text[:80]!r})")
    return names


def at_most(limit: int) -> type[argparse.Action]:
    """The action of a positional taking 1 or more values (nargs="+") but no more than limit."""
    class AtMost(argparse.Action):
        def __call__(self, parser: argparse.ArgumentParser, namespace: argparse.Namespace,
                     values: str | Sequence[Any] | None, option_string: str | None = None) -> None:
            if values is not None and len(values) > limit:
                raise argparse.ArgumentError(self, f"at most {limit} (got {len(values)})")
            setattr(namespace, self.dest, values)
    return AtMost


def client_token(text: str) -> str:
    if not 0 < len(text) <= MAX_CLIENT_TOKEN or not (text.isascii() and text.isprintable()):
        raise argparse.ArgumentTypeError(f"must be 1 to {MAX_CLIENT_TOKEN} printable ASCII characters")
    return text


def describe_error(err: grpc.RpcError) -> str:
    """One line: "error: CODE REASON: message", REASON from the rich status's ErrorInfo if any."""
    code = err.code().name
    reason = error_reason(err)
    message = " ".join((err.details() or "").split())
    return f"error: {code} {reason}: {message}" if reason else f"error: {code}: {message}"


class RetryWith(TypedDict):
    flag: str  # --client-token or --request-id
    value: str


class ErrorDocument(TypedDict):
    """An error as --output json and yaml print it on stderr."""

    code: str
    reason: str
    message: str
    metadata: dict[str, str]
    request_id: str | None
    images: NotRequired[list[dict[str, Any]]]  # IMAGE_FAILED: the images, as --output json shows them
    retry_with: NotRequired[RetryWith]  # a change that may have happened: the token to send it again with


def error_document(code: str, message: str, err: grpc.RpcError | None = None, request_id: str | None = None,
                   images: list[dict[str, Any]] | None = None) -> ErrorDocument:
    """An error as --output json prints it on stderr: the gRPC code and the ErrorInfo's reason and metadata
    for a failed call (with its x-request-id), else a code of this client's own (USAGE_ERROR, ...)."""
    info = error_info(err) if err is not None else None
    document = ErrorDocument(code=code, reason=info.reason if info else "", message=message,
                             metadata=dict(info.metadata) if info else {}, request_id=request_id)
    if images is not None:
        document["images"] = images
    return document


class Failed(Exception):
    """What main() reports: the exit status, the line for table and text output, the JSON document for the
    structured outputs."""

    def __init__(self, status: int, line: str, document: ErrorDocument):
        super().__init__(line)
        self.status, self.line, self.document = status, line, document


def usage_failure(message: str) -> Failed:
    return Failed(2, f"cloudimg: error: {message}", error_document("USAGE_ERROR", message))


def call_failure(err: grpc.RpcError, request_id: str) -> Failed:
    message = " ".join((err.details() or "").split())
    return Failed(1, f"{describe_error(err)} ({REQUEST_ID_KEY} {request_id})",
                  error_document(err.code().name, message, err, request_id))


def main(argv: Sequence[str] | None = None) -> int:
    try:
        args = build_parser().parse_args(argv)
    except SystemExit as exit_:  # usage errors (2), --help and --version (0)
        return int(exit_.code or 0)
    try:
        settings = config.resolve({name: getattr(args, name, None) for name in config.DEFAULTS}, os.environ,
                                  args.profile, new_profile=args.call is configure)
    except config.ConfigError as exc:  # before the output is known: a line
        print(f"cloudimg: error: {exc}", file=sys.stderr)
        return 2
    args.output = settings["output"]
    try:
        response = run(args, settings)
    except Failed as failed:
        if args.output in STRUCTURED:
            print(json.dumps(failed.document), file=sys.stderr)
        else:
            print(failed.line, file=sys.stderr)
        return failed.status
    except KeyboardInterrupt:
        return 130
    text = shown(response, args)
    if text:
        print(text)
    return 0


Response = Message | SettingsDocument  # what a command returns: a response, or a local command's document


def run(args: argparse.Namespace, settings: config.Settings) -> Response:
    """The command's response; Failed when it fails."""
    try:
        if args.local:
            document: SettingsDocument = args.call(settings, args)
            return document
    except (UsageError, config.ConfigError) as exc:
        raise usage_failure(str(exc)) from None
    if not settings["api_key"]:
        raise usage_failure("no API key: pass --api-key, set CLOUDIMG_API_KEY or save one with: cloudimg "
                            "configure --api-key KEY")
    if args.needs_region:
        args.region = settings["region"]
        if not args.region:
            raise usage_failure(f"{args.command} needs a region: pass --region, set CLOUDIMG_REGION or save one "
                                "with: cloudimg configure --region REGION")
    try:
        channel = open_channel(settings["endpoint"], ca_cert=settings["ca_cert"] or None, tls=settings["tls"])
    except OSError as exc:
        raise usage_failure(f"--ca-cert {settings['ca_cert']}: {exc.strerror}") from None
    debug = sys.stderr if args.debug else None
    if debug:
        transport = (f"TLS trusting {settings['ca_cert']}" if settings["ca_cert"]
                     else "TLS" if settings["tls"] else "plaintext")
        print(f"debug: endpoint {settings['endpoint']} ({transport}), profile {settings.profile.value}, "
              f"timeout {settings['timeout']:g} s", file=debug)
    api = Api(Client(settings["endpoint"], settings["api_key"], timeout=settings["timeout"], retry=retry_policy(),
                     on_call=debug_line(debug) if debug else None, channel=channel))
    try:
        with channel:
            response: Message = args.call(api, args)
            return response
    except grpc.RpcError as err:
        raise call_failure(err, api.last_request_id) from None
    except OutcomeUnknown as unknown:
        failed = call_failure(unknown.error, api.last_request_id)
        flag = TOKEN_FLAGS[unknown.field]
        line = failed.line.replace(f" ({REQUEST_ID_KEY} ", f"; retry with {flag} {unknown.token} "
                                                          f"({REQUEST_ID_KEY} ", 1)
        raise Failed(1, line, {**failed.document, "retry_with": {"flag": flag, "value": unknown.token}}
                     ) from None
    except UsageError as exc:
        raise usage_failure(str(exc)) from None
    except ImageFailed as failed_images:
        reasons = [f"image {image.image_id} is {render.enum_name(image_pb.ImageState.DESCRIPTOR, image.state)}: "
                   f"{image.state_reason or 'no reason given'}" for image in failed_images.images]
        raise Failed(1, "\n".join(f"error: {reason}" for reason in reasons),
                     error_document("IMAGE_FAILED", "; ".join(reasons),
                                    images=[MessageToDict(i, preserving_proto_field_name=True)
                                            for i in failed_images.images])) from None
    except WaitExpired as expired:
        message = (f"gave up waiting after {expired.seconds} s; still working: {expired} (look again with: "
                   "cloudimg image IMAGE_ID)")
        raise Failed(1, f"error: {message}", error_document("WAIT_EXPIRED", message)) from None


def shown(response: Response, args: argparse.Namespace) -> str:
    """The response in the chosen output; the fields a command adds (run's client token) in json and yaml."""
    if args.output in STRUCTURED:
        document = response if isinstance(response, dict) else MessageToDict(response,
                                                                              preserving_proto_field_name=True)
        document = {**document, **args.extra}
        if args.output == "json":
            return json.dumps(document, indent=2)
        return yaml.safe_dump(document, sort_keys=False, allow_unicode=True).rstrip("\n")
    # text: --output text (a local command's own, else render.text); show: the table
    text: str = args.text(response) if args.output == "text" else args.show(response, args)
    return text


if __name__ == "__main__":
    sys.exit(main())
