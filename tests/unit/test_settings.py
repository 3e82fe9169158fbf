"""Settings validation: every bad value is refused with one readable line, never a traceback."""

from __future__ import annotations

import importlib.util
import json

import pytest
from pydantic import ValidationError

from billing_service.domain.price_book import DEFAULT_PRICE_BOOK, PriceBookError, load_price_book
from billing_service.settings import BillingSettings
from catalog_service.settings import CatalogSettings
from chassis.settings import load_settings
from gateway.settings import GatewayDatabaseSettings, GatewaySettings
from sharing_service.settings import SharingSettings

TOKEN = "test-internal-token-0123456789"
DOWNSTREAMS = {"CATALOG_ADDR": "catalog:50051", "SHARING_ADDR": "sharing:50052", "BILLING_ADDR": "billing:50053"}


@pytest.fixture
def env(monkeypatch):
    """Sets the environment the settings read: valid downstreams and token, then the given overrides."""
    def set_env(**values: str) -> None:
        for name, value in {"CLOUDIMG_INTERNAL_TOKEN": TOKEN, **DOWNSTREAMS, **values}.items():
            monkeypatch.setenv(name, value)
    return set_env


@pytest.mark.parametrize("addr", [
    "127.0.0.1:50051", "0.0.0.0:50050", "[::]:50050", "[::1]:65535", "catalog:50051", "localhost:1",
    "postgres.example.internal:5432", "catalog-0.catalog.default.svc.cluster.local:50051",
])
def test_valid_addresses(env, addr):
    env(CATALOG_LISTEN_ADDR=addr, CATALOG_ADDR=addr)
    assert CatalogSettings().listen_addr == addr
    assert GatewaySettings().catalog_addr == addr


@pytest.mark.parametrize("addr, problem", [
    ("127.0.0.1:99999", "port must be 1-65535 (got 99999)"),
    ("127.0.0.1:0", "port must be 1-65535 (got 0)"),
    ("garbage", "must be host:port"),
    ("", "must be host:port"),
    (":50051", "must be host:port"),
    ("catalog:", "must be host:port"),
    ("catalog:http", "must be host:port"),
    ("http://catalog:50051", "must be host:port"),
    ("catalog:50051/x", "must be host:port"),
    ("cata log:50051", "must be host:port"),
    ("[::1:50051", "must be host:port"),
    ("[zz::1]:50051", "must be host:port"),
    ("::1:50051", "must be host:port"),
])
def test_bad_addresses_are_refused(env, addr, problem):
    env(CATALOG_LISTEN_ADDR=addr, CATALOG_ADDR=addr)
    for cls in (CatalogSettings, GatewaySettings):
        with pytest.raises(ValidationError, match=problem.replace("(", r"\(").replace(")", r"\)")):
            cls()


@pytest.mark.parametrize("url", [
    "sqlite:///data/catalog.db", "sqlite:////tmp/catalog.db", "sqlite://",
    "postgresql+psycopg://root@127.0.0.1:5432/test",
    "postgresql+psycopg://cloudimg:secret@postgres:5432/catalog",
])
def test_supported_database_urls(env, url):
    env(CATALOG_DATABASE_URL=url, GATEWAY_DATABASE_URL=url)
    assert CatalogSettings().database_url == url
    assert GatewayDatabaseSettings().database_url == url


@pytest.mark.parametrize("url, problem", [
    ("garbage", "not a database URL"),
    ("", "not a database URL"),
    ("mysql://user:secret@db/catalog", "unsupported database 'mysql'"),
    ("postgresql+nosuchdriver://user:secret@db/catalog", "driver"),
])
def test_bad_database_urls_are_refused_without_echoing_them(env, url, problem):
    env(CATALOG_DATABASE_URL=url, GATEWAY_DATABASE_URL=url)
    for cls in (CatalogSettings, GatewayDatabaseSettings):
        with pytest.raises(ValidationError, match=problem) as refused:
            cls()
        assert "secret" not in str(refused.value)


@pytest.mark.skipif(importlib.util.find_spec("pg8000") is not None, reason="pg8000 is installed here")
def test_a_database_driver_that_is_not_installed_is_named(env):
    env(CATALOG_DATABASE_URL="postgresql+pg8000://root@127.0.0.1/test")
    with pytest.raises(ValidationError, match="needs pg8000, which is not installed"):
        CatalogSettings()


@pytest.mark.parametrize("level", ["debug", "INFO", "Warning", "ERROR", "critical"])
def test_log_levels_in_any_case(env, level):
    env(CLOUDIMG_LOG_LEVEL=level)
    assert SharingSettings().log_level == level.upper()


@pytest.mark.parametrize("level", ["verbose", "", "10", "WARN "])
def test_unknown_log_levels_are_refused(env, level):
    env(CLOUDIMG_LOG_LEVEL=level)
    with pytest.raises(ValidationError, match="CRITICAL"):
        SharingSettings()


@pytest.mark.parametrize("name, value", [
    ("GATEWAY_RECONCILE_INTERVAL_SECONDS", "0"),
    ("GATEWAY_RECONCILE_INTERVAL_SECONDS", "-5"),
    ("GATEWAY_RECONCILE_INTERVAL_SECONDS", "0.01"),
    ("GATEWAY_RECONCILE_INTERVAL_SECONDS", "nan"),
    ("GATEWAY_RECONCILE_INTERVAL_SECONDS", "inf"),
    ("GATEWAY_RECONCILE_INTERVAL_SECONDS", "soon"),
    ("GATEWAY_DEFAULT_DEADLINE_SECONDS", "0"),
    ("GATEWAY_DEFAULT_DEADLINE_SECONDS", "1e300"),
    ("GATEWAY_API_KEY_CACHE_SECONDS", "-1"),
    ("GATEWAY_SHUTDOWN_GRACE_SECONDS", "-1"),
    ("GATEWAY_SHUTDOWN_DRAIN_SECONDS", "-0.5"),
])
def test_bad_durations_are_refused(env, name, value):
    env(**{name: value})
    with pytest.raises(ValidationError):
        GatewaySettings()


def test_sensible_durations_are_taken(env):
    env(GATEWAY_RECONCILE_INTERVAL_SECONDS="0.1", GATEWAY_SHUTDOWN_GRACE_SECONDS="0",
        GATEWAY_SHUTDOWN_DRAIN_SECONDS="0", GATEWAY_API_KEY_CACHE_SECONDS="0", GATEWAY_DEFAULT_DEADLINE_SECONDS="2.5")
    settings = GatewaySettings()
    assert (settings.reconcile_interval_seconds, settings.shutdown_grace_seconds, settings.shutdown_drain_seconds,
            settings.api_key_cache_seconds, settings.default_deadline_seconds) == (0.1, 0, 0, 0, 2.5)


def test_load_settings_names_every_bad_setting_on_one_line(env, capsys):
    env(GATEWAY_LISTEN_ADDR="127.0.0.1:99999", CATALOG_ADDR="garbage",
        GATEWAY_DATABASE_URL="mysql://user:hunter2@db/gateway", GATEWAY_RECONCILE_INTERVAL_SECONDS="-5")
    with pytest.raises(SystemExit) as stopped:
        load_settings(GatewaySettings)
    assert stopped.value.code == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("cloudimg: invalid settings for gateway: ")
    assert "GATEWAY_LISTEN_ADDR: port must be 1-65535 (got 99999)" in err
    assert "CATALOG_ADDR: must be host:port" in err
    assert "GATEWAY_DATABASE_URL: unsupported database 'mysql'" in err
    assert "GATEWAY_RECONCILE_INTERVAL_SECONDS: " in err
    assert "hunter2" not in err and "Value error" not in err


def test_load_settings_names_missing_settings(monkeypatch, capsys):
    for name in ("CLOUDIMG_INTERNAL_TOKEN", *DOWNSTREAMS):
        monkeypatch.delenv(name, raising=False)
    with pytest.raises(SystemExit):
        load_settings(GatewaySettings)
    err = capsys.readouterr().err
    assert err.count("\n") == 1
    assert "CLOUDIMG_INTERNAL_TOKEN: required" in err and "BILLING_ADDR: required" in err


def test_a_missing_price_book_file_is_a_bad_setting(env, tmp_path):
    env(BILLING_PRICE_BOOK_PATH=str(tmp_path / "missing.json"))
    with pytest.raises(ValidationError, match="price_book_path"):
        BillingSettings()


def test_the_published_price_book_loads():
    book = load_price_book(DEFAULT_PRICE_BOOK)
    assert book.currency == "USD" and book.instance_types and book.instance_prices


def broken(book: dict, path: list, value: object) -> dict:
    """The price book with the value at ``path`` replaced (or removed when value is None)."""
    here = book
    for key in path[:-1]:
        here = here[key]
    if value is None:
        del here[path[-1]]
    else:
        here[path[-1]] = value
    return book


@pytest.mark.parametrize("path, value, problem", [
    (["currency"], None, "currency"),
    (["currency"], 12, "currency"),
    (["instance_prices", "ap-guangzhou", "S5.MEDIUM4", "PREPAID"], None, "PREPAID"),
    (["instance_prices", "ap-guangzhou", "S5.MEDIUM4", "PREPAID"], "cheap", "PREPAID"),
    (["instance_prices", "ap-guangzhou", "S5.MEDIUM4", "PREPAID"], "-1", "PREPAID"),
    (["instance_prices", "ap-guangzhou", "S5.MEDIUM4", "PREPAID"], "NaN", "PREPAID"),
    (["instance_types"], {"S5.MEDIUM4": 1}, "instance_types"),
    (["instance_types", 0, "architecture"], "MIPS", "architecture"),
    (["instance_types", 0, "vcpus"], "two", "vcpus"),
    (["marketplace_products"], [], "marketplace_products"),
])
def test_a_price_book_of_the_wrong_shape_is_one_line_naming_the_file(tmp_path, path, value, problem):
    book_path = tmp_path / "book.json"
    book_path.write_text(json.dumps(broken(json.loads(DEFAULT_PRICE_BOOK.read_text()), path, value)))
    with pytest.raises(PriceBookError) as refused:
        load_price_book(book_path)
    message = str(refused.value)
    assert message.startswith(f"{book_path}: ") and problem in message and "\n" not in message


@pytest.mark.parametrize("text, problem", [
    ('{"currency": "USD",', "invalid JSON"),
    ("", "invalid JSON"),
    ("[]", "not a price book: it must be an object"),
])
def test_a_price_book_that_is_not_json_is_one_line_naming_the_file(tmp_path, text, problem):
    path = tmp_path / "book.json"
    path.write_text(text)
    with pytest.raises(PriceBookError) as refused:
        load_price_book(path)
    message = str(refused.value)
    assert message.startswith(f"{path}: ") and problem in message and "\n" not in message


def test_a_price_book_that_cannot_be_read_names_the_file(tmp_path):
    with pytest.raises(PriceBookError, match="missing.json: .*No such file"):
        load_price_book(tmp_path / "missing.json")
