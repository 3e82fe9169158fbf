"""What arrives on the wire, on its own: crafted page tokens, control characters in any string field."""

from __future__ import annotations

import base64
import json
from collections.abc import Callable
from typing import Any

import pytest
from cloudimg.billing.v1 import billing_service_pb2 as billing_pb
from cloudimg.catalog.v1 import catalog_service_pb2 as catalog_pb
from google.protobuf import struct_pb2
from google.protobuf.message import Message
from hypothesis import given
from hypothesis import strategies as st

from chassis import errors, pagination
from chassis.rpc import check_strings

MADE_FOR = pagination.fingerprint("charges", "100000000001")


def crafted(body: str) -> str:
    """A page token as a caller can forge one: any JSON body, base64 without padding."""
    return base64.urlsafe_b64encode(body.encode()).decode().rstrip("=")


def with_key(key_json: str) -> str:
    return crafted(f'{{"k":{key_json},"f":"{MADE_FOR}"}}')


def refused(decode: Callable[[str, str], object], token: str) -> errors.InvalidArgument:
    with pytest.raises(errors.InvalidArgument) as caught:
        decode(token, MADE_FOR)
    assert caught.value.reason == "INVALID_PAGE_TOKEN"
    assert [v.field for v in caught.value.violations] == ["page_token"]
    return caught.value


@pytest.mark.parametrize("token", [
    pytest.param(with_key(json.dumps("img-1\x00")), id="NUL"),  # PostgreSQL refuses NUL in text
    pytest.param(with_key(json.dumps("img-\x1b[0m")), id="escape"),
    pytest.param(with_key(json.dumps("img-\x85")), id="C1"),
    pytest.param(with_key(json.dumps("i" * 300)), id="long key"),
    *(pytest.param(with_key(key), id=f"key {key}") for key in ("12", "null", "[]", "{}", "true")),
    pytest.param(with_key("[" * 1500 + "]" * 1500), id="RecursionError"),  # within the length bound
    pytest.param(with_key("[" * 50_000 + "]" * 50_000), id="deep"),
    pytest.param(with_key("1" * 5000), id="5000 digits"),  # int() refuses more than 4300
    pytest.param(crafted("[" * 100_000), id="unclosed"),
    *(pytest.param(crafted(body), id=f"body {body[:8]}") for body in ('"k"', "[1,2]", f'{{"f":"{MADE_FOR}"}}')),
    *(pytest.param(token, id=f"token {token[:8]}") for token in ("²", "①", "%%%", "a" * 5000, "e30")),
    pytest.param(base64.urlsafe_b64encode(b"\xff\xfe{").decode(), id="not UTF-8"),
])
def test_a_crafted_page_token_is_invalid_argument_and_nothing_else(token: str) -> None:
    refused(pagination.decode_page_token, token)
    refused(pagination.decode_int_page_token, token)


@pytest.mark.parametrize("key", ["²", "①", "٣", "1" * 5000, "9" * 19, "-1", "+1", " 1", "1 ", "1\n", "", "0x1",
                                 "1_000", "1e3"])
def test_an_integer_key_is_ascii_digits_that_fit_a_bigint(key: str) -> None:
    refused(pagination.decode_int_page_token, with_key(json.dumps(key)))


def test_integer_keys_round_trip() -> None:
    for seq in (0, 7, 10**18 - 1):
        assert pagination.decode_int_page_token(pagination.encode_page_token(str(seq), MADE_FOR), MADE_FOR) == seq
    assert pagination.decode_int_page_token("", MADE_FOR) is None


def test_a_key_with_a_tab_or_any_printable_text_round_trips() -> None:
    for key in ("img-abc12345", "Ünïcødé 名前", "tab\there", "x" * 256, "🚀" * 256):
        assert pagination.decode_page_token(pagination.encode_page_token(key, MADE_FOR), MADE_FOR) == key


json_bodies = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=30),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.sampled_from(["k", "f", "x"]), inner, max_size=3),
    max_leaves=20,
)


@given(st.one_of(json_bodies, st.fixed_dictionaries({"k": json_bodies, "f": st.just(MADE_FOR)})))
def test_any_token_body_decodes_to_a_clean_key_or_invalid_page_token(body: Any) -> None:
    token = crafted(json.dumps(body))
    for decode in (pagination.decode_page_token, pagination.decode_int_page_token):
        try:
            key = decode(token, MADE_FOR)
        except errors.InvalidArgument as refusal:
            if refusal.reason != "INVALID_PAGE_TOKEN":
                raise AssertionError(f"refused as {refusal.reason}, not INVALID_PAGE_TOKEN") from refusal
        else:
            assert key == body["k"] or key == int(body["k"])


@given(st.binary(max_size=2000))
def test_any_bytes_as_a_token_decode_or_are_invalid_page_token(raw: bytes) -> None:
    for token in (base64.urlsafe_b64encode(raw).decode(), raw.decode("latin-1")):
        for decode in (pagination.decode_page_token, pagination.decode_int_page_token):
            try:
                decode(token, MADE_FOR)
            except errors.InvalidArgument as refusal:
                if refusal.reason != "INVALID_PAGE_TOKEN":
                    raise AssertionError(f"refused as {refusal.reason}, not INVALID_PAGE_TOKEN") from refusal


def field_refused(message: Message) -> str:
    with pytest.raises(errors.InvalidArgument) as caught:
        check_strings(message)
    assert caught.value.reason == "INVALID_CHARACTERS"
    assert len(caught.value.violations) == 1
    return caught.value.violations[0].field


@pytest.mark.parametrize("bad", ["\x00", "a\x00b", "\x01", "\x08", "\x0b", "\x0c", "\x1b[31m", "\x1f", "\x7f", "\x80",
                                 "\x85", "\x9f"])
def test_control_characters_are_refused_in_any_string_field_with_its_path(bad: str) -> None:
    assert field_refused(catalog_pb.ListImagesRequest(region="ap-guangzhou", name_filter=bad)) == "name_filter"
    assert field_refused(catalog_pb.BatchGetImagesRequest(image_ids=["img-1", "img-2", bad])) == "image_ids[2]"
    quote = billing_pb.QuoteRequest(launch=billing_pb.LaunchPricing(
        region="ap-singapore", image=billing_pb.ImagePricing(image_id=bad)))
    assert field_refused(quote) == "launch.image.image_id"


def test_control_characters_are_refused_in_maps_and_nested_lists() -> None:
    nested = struct_pb2.Struct()
    nested.update({"tags": {"list": ["ok", {"deep": "x\x00"}]}})
    assert field_refused(nested) == 'fields["tags"].struct_value.fields["list"].list_value.values[1]' \
                                    '.struct_value.fields["deep"].string_value'
    bad_key = struct_pb2.Struct()
    bad_key.update({"a\x00": 1})
    assert field_refused(bad_key) == "fields"


@pytest.mark.parametrize("fine", ["", "plain", "tab\tnewline\nreturn\r", "Ünïcødé 名前 emoji 🚀", "\xa0nbsp",
                                  "\u2028", "x" * 10_000])
def test_ordinary_text_passes(fine: str) -> None:
    check_strings(catalog_pb.ListImagesRequest(region="ap-guangzhou", name_filter=fine, shared_image_ids=[fine]))
    struct = struct_pb2.Struct()
    struct.update({fine: [fine, {fine: fine}]})
    check_strings(struct)
