"""cloudimg: the command-line client of the cloudimg public gRPC API.

    cloudimg [--endpoint HOST:PORT] [--api-key KEY] [--json] COMMAND ...

Every call authenticates with the API key (--api-key or CLOUDIMG_API_KEY) and has a 10 s deadline.
"""

import argparse
from typing import Any
import json
import os
import sys
from collections.abc import Sequence

import grpc
from google.protobuf.json_format import MessageToDict
from google.protobuf.message import Message
from google.rpc import error_details_pb2
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
from cloudimg_cli import render

DEFAULT_ENDPOINT = "127.0.0.1:50050"
TIMEOUT_S = 10.0
IMAGE_TYPE = image_pb.ImageType.DESCRIPTOR
CHARGE_TYPE = instance_pb.ChargeType.DESCRIPTOR

REGION_COLUMNS = ["region_id", "display_name", "mainland", "sync_enabled"]
INSTANCE_TYPE_COLUMNS = ["instance_type", "family", "architecture", "vcpus", "memory_gb"]
IMAGE_COLUMNS = ["image_id", "name", "image_type", "state", "platform", "architecture", "size_gb",
                 "create_time"]
INSTANCE_COLUMNS = ["instance_id", "instance_name", "region", "instance_type", "image_id", "state",
                    "charge_type", "create_time"]
SHARE_COLUMNS = ["image_id", "region", "recipient_account_id", "state", "create_time"]


class Api:
    """The four public services on one channel; every call carries the API key and the deadline."""

    def __init__(self, channel: grpc.Channel, api_key: str):
        self.images = image_grpc.ImageServiceStub(channel)
        self.shares = share_grpc.ImageShareServiceStub(channel)
        self.instances = instance_grpc.InstanceServiceStub(channel)
        self.accounts = account_grpc.AccountServiceStub(channel)
        self._metadata = (("authorization", f"Bearer {api_key}"),)

    def __call__(self, method: Any, request: Any) -> Any:
        return method(request, metadata=self._metadata, timeout=TIMEOUT_S)

    def all_pages(self, method: Any, request: Any, items: str) -> Any:
        """Follows next_page_token; returns the first response holding every page's items."""
        result = page = self(method, request)
        while page.next_page_token:
            request.page_token = page.next_page_token
            page = self(method, request)
            getattr(result, items).extend(getattr(page, items))
        result.next_page_token = ""
        return result


# Commands: each takes (api, args) and returns the response message; its `show` renders it as text.

def list_images(api: Api, args: argparse.Namespace) -> Message:
    request = image_pb.ListImagesRequest(
        region=args.region,
        image_types=[render.enum_number(IMAGE_TYPE, t) for t in args.types],  # type: ignore[misc]
        platform=args.platform,
        name_filter=args.name,
        page_size=args.page_size,
        page_token=args.page_token,
    )
    if args.all:
        return api.all_pages(api.images.ListImages, request, "images")
    return api(api.images.ListImages, request)


def show_images(response: Any) -> str:
    text = render.columns(response.images, IMAGE_COLUMNS)
    if response.next_page_token:
        text += f"\n\nmore: --page-token {response.next_page_token} (or --all)"
    return text


def launch_fields(args: argparse.Namespace) -> dict:
    """The fields QuoteRunInstancesRequest and RunInstancesRequest share."""
    return dict(
        region=args.region,
        image_id=args.image,
        instance_type=args.type,
        instance_count=args.count,
        charge_type=render.enum_number(CHARGE_TYPE, args.charge_type) if args.charge_type else 0,
        period_months=args.period_months,
        system_disk_gb=args.disk_gb,
        instance_name=args.name,
    )


def run_instances(api: Api, args: argparse.Namespace) -> Message:
    request = instance_pb.RunInstancesRequest(
        **launch_fields(args), client_token=args.client_token, dry_run=args.dry_run)
    return api(api.instances.RunInstances, request)


def show_run(response: Any) -> str:
    launched = (render.table([[i] for i in response.instance_ids], ["INSTANCE_ID"])
                if response.instance_ids else "dry run: validated and priced, nothing launched")
    return launched + "\n\n" + render.quote(response.quote)


def change_shares(rpc: str, request_type: type[Message]):
    """The call of `share` or `unshare`: one image, one or more accounts."""
    def call(api: Api, args: argparse.Namespace) -> Message:
        request = request_type(image_id=args.image_id, account_ids=args.account_ids)
        return api(getattr(api.shares, rpc), request)
    return call


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="cloudimg", description="Client for the cloudimg image control plane.",
        parents=[global_flags(with_defaults=True)])
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def command(name: str, summary: str, call, show) -> argparse.ArgumentParser:
        sub = commands.add_parser(name, help=summary, description=summary,
                                  parents=[global_flags(with_defaults=False)])
        sub.set_defaults(call=call, show=show)
        return sub

    command("regions", "List the regions.",
            lambda api, args: api(api.images.ListRegions, image_pb.ListRegionsRequest()),
            lambda r: render.columns(r.regions, REGION_COLUMNS))

    sub = command("images", "List the images of a region that the caller may see.",
                  list_images, show_images)
    sub.add_argument("--region", required=True)
    sub.add_argument("--type", dest="types", action="extend", nargs="+", default=[],
                     type=str.upper, choices=render.enum_choices(IMAGE_TYPE), metavar="TYPE",
                     help=f"image types to list, of {', '.join(render.enum_choices(IMAGE_TYPE))} "
                          "(repeatable; default every type)")
    sub.add_argument("--platform", help="exact platform, case-insensitive (e.g. Ubuntu)")
    sub.add_argument("--name", help="substring of the image name, case-insensitive")
    sub.add_argument("--page-size", type=int)
    sub.add_argument("--page-token")
    sub.add_argument("--all", action="store_true", help="follow every page")

    sub = command("image", "Show one image.",
                  lambda api, args: api(api.images.GetImage,
                                        image_pb.GetImageRequest(image_id=args.image_id)),
                  lambda r: render.fields(r.image))
    sub.add_argument("image_id", metavar="IMAGE_ID")

    sub = command("instance-types", "List the instance types of a region.",
                  lambda api, args: api(api.instances.ListInstanceTypes,
                                        instance_pb.ListInstanceTypesRequest(region=args.region)),
                  lambda r: render.columns(r.instance_types, INSTANCE_TYPE_COLUMNS))
    sub.add_argument("--region", required=True)

    sub = command("quote", "Price a launch without creating anything.",
                  lambda api, args: api(
                      api.instances.QuoteRunInstances,
                      instance_pb.QuoteRunInstancesRequest(**launch_fields(args))),
                  lambda r: render.quote(r.quote))
    add_launch_flags(sub)

    sub = command("run", "Launch instances from an image.", run_instances, show_run)
    add_launch_flags(sub)
    sub.add_argument("--client-token", help="idempotency token (up to 64 ASCII characters)")
    sub.add_argument("--dry-run", action="store_true", help="validate and price only")

    sub = command("instances", "List the caller's instances (every page).",
                  lambda api, args: api.all_pages(
                      api.instances.ListInstances,
                      instance_pb.ListInstancesRequest(region=args.region), "instances"),
                  lambda r: render.columns(r.instances, INSTANCE_COLUMNS))
    sub.add_argument("--region", help="default every region")

    sub = command("instance", "Show one instance.",
                  lambda api, args: api(
                      api.instances.GetInstance,
                      instance_pb.GetInstanceRequest(instance_id=args.instance_id)),
                  lambda r: render.fields(r.instance))
    sub.add_argument("instance_id", metavar="INSTANCE_ID")

    for name, summary, call in (
            ("share", "Share one of your custom images with other accounts.",
             change_shares("ShareImage", share_pb.ShareImageRequest)),
            ("unshare", "Stop sharing one of your custom images with other accounts.",
             change_shares("UnshareImage", share_pb.UnshareImageRequest))):
        sub = command(name, summary, call, lambda r: render.columns(r.shares, SHARE_COLUMNS))
        sub.add_argument("image_id", metavar="IMAGE_ID")
        sub.add_argument("account_ids", metavar="ACCOUNT_ID", nargs="+")

    command("whoami", "Show the account and API key the calls are made with.",
            lambda api, args: api(api.accounts.GetCallerIdentity,
                                  account_pb.GetCallerIdentityRequest()),
            render.fields)
    return parser


def global_flags(with_defaults: bool) -> argparse.ArgumentParser:
    """The connection and output flags, accepted before or after the command.

    The copy given to the commands has no defaults, so it never overwrites a value given earlier.
    """
    def default(value):
        return value if with_defaults else argparse.SUPPRESS

    flags = argparse.ArgumentParser(add_help=False)
    flags.add_argument("--endpoint",
                       default=default(os.environ.get("CLOUDIMG_ENDPOINT") or DEFAULT_ENDPOINT),
                       help=f"HOST:PORT of the gateway (env CLOUDIMG_ENDPOINT, default "
                            f"{DEFAULT_ENDPOINT})")
    flags.add_argument("--api-key", default=default(os.environ.get("CLOUDIMG_API_KEY")),
                       help="API key (env CLOUDIMG_API_KEY)")
    flags.add_argument("--json", action="store_true", default=default(False),
                       help="print the response as JSON")
    return flags


def add_launch_flags(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--region", required=True)
    parser.add_argument("--image", required=True, metavar="IMAGE_ID")
    parser.add_argument("--type", required=True, metavar="INSTANCE_TYPE")
    parser.add_argument("--count", type=int, default=1)
    parser.add_argument("--charge-type", type=str.upper, choices=render.enum_choices(CHARGE_TYPE),
                        help="default POSTPAID_BY_HOUR")
    parser.add_argument("--period-months", type=int, help="PREPAID only")
    parser.add_argument("--disk-gb", type=int, help="system disk size (default 50)")
    parser.add_argument("--name", help="instance name")


def describe_error(err: grpc.RpcError) -> str:
    """One line: "error: CODE REASON: message", REASON from the rich status's ErrorInfo if any."""
    code = err.code().name
    reason = error_reason(err)
    message = " ".join((err.details() or "").split())
    return f"error: {code} {reason}: {message}" if reason else f"error: {code}: {message}"


def error_reason(err: grpc.RpcError) -> str:
    try:
        status = rpc_status.from_call(err)
    except ValueError:  # a rich status that contradicts the call's own code or message
        return ""
    for detail in status.details if status else ():
        if detail.Is(error_details_pb2.ErrorInfo.DESCRIPTOR):
            info = error_details_pb2.ErrorInfo()
            detail.Unpack(info)
            return info.reason
    return ""


def main(argv: Sequence[str] | None = None) -> int:
    try:
        args = build_parser().parse_args(argv)
    except SystemExit as exit_:  # usage errors (2) and --help (0)
        return int(exit_.code or 0)
    if not args.api_key:
        print("error: no API key: pass --api-key or set CLOUDIMG_API_KEY", file=sys.stderr)
        return 2
    try:
        with grpc.insecure_channel(args.endpoint) as channel:
            response = args.call(Api(channel, args.api_key), args)
    except grpc.RpcError as err:
        print(describe_error(err), file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
    if args.json:
        print(json.dumps(MessageToDict(response, preserving_proto_field_name=True), indent=2))
    else:
        print(args.show(response))
    return 0


if __name__ == "__main__":
    sys.exit(main())
