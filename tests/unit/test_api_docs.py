"""The public API documents itself: every service, RPC, message, field, enum and enum value of
cloudimg.gateway.v1 carries a leading comment (AIP-192), the fields that bound a caller's input say
their limits, and the google.api.field_behavior annotations say which fields are required and which
the server sets.

The protos are compiled here with source info (grpc_tools.protoc, the include paths of the Makefile's
gen rule), not read from gen/: generated modules drop the comments.
"""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from google.api import field_behavior_pb2
from google.protobuf import descriptor_pb2

ROOT = Path(__file__).resolve().parents[2]
PROTOS = ROOT / "protos"
PUBLIC = PROTOS / "cloudimg" / "gateway" / "v1"
PACKAGE = "cloudimg.gateway.v1"
# Where the Google protos ours import are vendored (google/api/field_behavior.proto, google/type/money.proto).
THIRD_PARTY = ROOT / "third_party" / "googleapis"

# Field numbers of descriptor.proto, as they appear in SourceCodeInfo.Location.path.
_FILE_MESSAGE, _FILE_ENUM, _FILE_SERVICE = 4, 5, 6
_MESSAGE_FIELD, _MESSAGE_NESTED, _MESSAGE_ENUM = 2, 3, 4
_ENUM_VALUE = 2
_SERVICE_METHOD = 2

OUTPUT_ONLY = field_behavior_pb2.OUTPUT_ONLY
REQUIRED = field_behavior_pb2.REQUIRED
IDENTIFIER = field_behavior_pb2.IDENTIFIER

ProtoFiles = list[descriptor_pb2.FileDescriptorProto]


@pytest.fixture(scope="module")
def public_files(tmp_path_factory: pytest.TempPathFactory) -> ProtoFiles:
    out = tmp_path_factory.mktemp("api_docs") / "gateway.protoset"
    includes = [f"-I{PROTOS}"] + ([f"-I{THIRD_PARTY}"] if THIRD_PARTY.is_dir() else [])
    sources = sorted(str(p) for p in PUBLIC.glob("*.proto"))
    assert sources, f"no protos in {PUBLIC}"
    compiled = subprocess.run(
        [sys.executable, "-m", "grpc_tools.protoc", *includes, "--include_source_info",
         f"--descriptor_set_out={out}", *sources],
        capture_output=True, text=True, check=False,
    )
    assert compiled.returncode == 0, f"protoc failed:\n{compiled.stderr}"
    files = descriptor_pb2.FileDescriptorSet.FromString(out.read_bytes()).file
    public = [f for f in files if f.package == PACKAGE]
    assert len(public) == len(sources), [f.name for f in files]
    return public


def _comments(file: descriptor_pb2.FileDescriptorProto) -> dict[tuple[int, ...], str]:
    return {tuple(loc.path): loc.leading_comments.strip() for loc in file.source_code_info.location}


def _message_elements(message: descriptor_pb2.DescriptorProto, path: tuple[int, ...], name: str
                      ) -> Iterator[tuple[str, str, tuple[int, ...]]]:
    yield "message", name, path
    for i, field in enumerate(message.field):
        yield "field", f"{name}.{field.name}", (*path, _MESSAGE_FIELD, i)
    for i, nested in enumerate(message.nested_type):
        if nested.options.map_entry:  # generated for a map field, which carries the comment
            continue
        yield from _message_elements(nested, (*path, _MESSAGE_NESTED, i), f"{name}.{nested.name}")
    for i, enum in enumerate(message.enum_type):
        yield from _enum_elements(enum, (*path, _MESSAGE_ENUM, i), f"{name}.{enum.name}")


def _enum_elements(enum: descriptor_pb2.EnumDescriptorProto, path: tuple[int, ...], name: str
                   ) -> Iterator[tuple[str, str, tuple[int, ...]]]:
    yield "enum", name, path
    for i, value in enumerate(enum.value):
        yield "enum value", f"{name}.{value.name}", (*path, _ENUM_VALUE, i)


def _elements(file: descriptor_pb2.FileDescriptorProto) -> Iterator[tuple[str, str, tuple[int, ...]]]:
    """(kind, full name, source path) of every element of the file that a comment documents."""
    for i, service in enumerate(file.service):
        yield "service", service.name, (_FILE_SERVICE, i)
        for j, method in enumerate(service.method):
            yield "rpc", f"{service.name}.{method.name}", (_FILE_SERVICE, i, _SERVICE_METHOD, j)
    for i, message in enumerate(file.message_type):
        yield from _message_elements(message, (_FILE_MESSAGE, i), message.name)
    for i, enum in enumerate(file.enum_type):
        yield from _enum_elements(enum, (_FILE_ENUM, i), enum.name)


def _documented(files: list[descriptor_pb2.FileDescriptorProto]) -> dict[str, tuple[str, str]]:
    """Every element's full name -> (kind, its leading comment, "" when it has none)."""
    found = {}
    for file in files:
        comments = _comments(file)
        for kind, name, path in _elements(file):
            found[name] = (kind, comments.get(path, ""))
    return found


def _messages(files: list[descriptor_pb2.FileDescriptorProto]) -> dict[str, descriptor_pb2.DescriptorProto]:
    return {m.name: m for f in files for m in f.message_type}


def _behaviors(field: descriptor_pb2.FieldDescriptorProto) -> set[int]:
    # googleapis-common-protos types the extension as a plain FieldDescriptor, not an extension descriptor.
    return set(field.options.Extensions[field_behavior_pb2.field_behavior])  # type: ignore[index]


def test_every_element_of_the_public_api_has_a_leading_comment(public_files: ProtoFiles) -> None:
    documented = _documented(public_files)
    kinds = {kind for kind, _ in documented.values()}
    assert {"service", "rpc", "message", "field", "enum", "enum value"} <= kinds
    missing = sorted(f"{kind} {name}" for name, (kind, comment) in documented.items() if not comment)
    assert not missing, f"{len(missing)} elements of {PACKAGE} have no leading comment:\n" + "\n".join(missing)


def test_every_rpc_says_which_errors_it_answers(public_files: ProtoFiles) -> None:
    """Each RPC's comment names its errors (code and reason), or says it has none of its own."""
    rpcs = {name: comment for name, (kind, comment) in _documented(public_files).items() if kind == "rpc"}
    assert len(rpcs) >= 25
    silent = sorted(name for name, comment in rpcs.items()
                    if "Errors:" not in comment and "errors" not in comment and "NOT_FOUND" not in comment)
    assert not silent, "RPCs whose comment names no errors: " + ", ".join(silent)


def test_fields_that_bound_input_state_their_limits(public_files: ProtoFiles) -> None:
    """page_size says its default and maximum, the idempotency keys their length, and the request fields
    that take an id the id's shape."""
    shapes = ('"img-"', '"ins-"', "12 digits")
    documented = _documented(public_files)
    problems = []
    for name, message in _messages(public_files).items():
        if not name.endswith("Request"):
            continue
        for field in message.field:
            comment = documented[f"{name}.{field.name}"][1]
            if field.name == "page_size" and not ("50" in comment and "1000" in comment):
                problems.append(f"{name}.page_size does not state its default (50) and maximum (1000)")
            elif field.name in ("request_id", "client_token") and "64" not in comment:
                problems.append(f"{name}.{field.name} does not state its length (at most 64)")
            elif field.name.endswith(("_id", "_ids")) and field.name != "request_id" \
                    and not any(shape in comment for shape in shapes):
                problems.append(f"{name}.{field.name} does not state the shape of the id")
    assert not problems, "\n".join(problems)


def test_resources_mark_what_the_server_sets_as_output_only(public_files: ProtoFiles) -> None:
    messages = _messages(public_files)
    fields = {m: {f.name: f for f in messages[m].field} for m in ("Image", "Instance", "ImageShare", "Charge")}
    # The ids of resources the server creates.
    assert _behaviors(fields["Instance"]["instance_id"]) == {OUTPUT_ONLY}
    assert _behaviors(fields["Charge"]["charge_id"]) == {OUTPUT_ONLY}
    assert OUTPUT_ONLY in _behaviors(fields["ImageShare"]["image_id"])
    # An image's id is set by the server and names the image to change in UpdateImage (AIP-203).
    assert _behaviors(fields["Image"]["image_id"]) == {IDENTIFIER}
    for message in ("Image", "Instance", "ImageShare", "Charge"):
        assert OUTPUT_ONLY in _behaviors(fields[message]["create_time"]), f"{message}.create_time"
    for name in ("state", "region", "owner_account_id", "checksum_sha256", "progress_percent"):
        assert OUTPUT_ONLY in _behaviors(fields["Image"][name]), f"Image.{name}"
    # What UpdateImage changes is not output only.
    assert not _behaviors(fields["Image"]["name"]) & {OUTPUT_ONLY}
    assert not _behaviors(fields["Image"]["description"]) & {OUTPUT_ONLY}
    # Every field of an instance, a share and a charge is the server's.
    for message in ("Instance", "ImageShare", "Charge"):
        loose = [f.name for f in messages[message].field if OUTPUT_ONLY not in _behaviors(f)]
        assert not loose, f"{message} fields not OUTPUT_ONLY: {loose}"


def test_requests_mark_what_the_caller_must_send(public_files: ProtoFiles) -> None:
    messages = _messages(public_files)
    required = {
        "GetImageRequest": ["image_id"], "DeleteImageRequest": ["image_id"],
        "CreateImageRequest": ["instance_id", "name"],
        "ImportImageRequest": ["region", "name", "format", "os_type", "architecture", "source_uri"],
        "UpdateImageRequest": ["image", "update_mask"], "SyncImageRequest": ["image_id", "destination_regions"],
        "ShareImageRequest": ["image_id", "account_ids"], "AcceptImageShareRequest": ["image_id"],
        "RunInstancesRequest": ["region", "image_id", "instance_type", "instance_count"],
        "GetInstanceRequest": ["instance_id"], "TerminateInstancesRequest": ["instance_ids"],
        "ResetInstanceRequest": ["instance_id", "image_id"],
    }
    for message, names in required.items():
        fields = {f.name: f for f in messages[message].field}
        for name in names:
            assert REQUIRED in _behaviors(fields[name]), f"{message}.{name} is not REQUIRED"
    for name, request in messages.items():
        if name.endswith("Request"):
            for field in request.field:
                assert OUTPUT_ONLY not in _behaviors(field), f"{name}.{field.name}: a request field is OUTPUT_ONLY"
                if field.name in ("request_id", "client_token", "page_token", "page_size", "dry_run"):
                    assert REQUIRED not in _behaviors(field), f"{name}.{field.name} is optional, not REQUIRED"
