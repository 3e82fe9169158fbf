"""Settings validation: every bad value is refused with one readable line, never a traceback."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path
from typing import Any, Protocol, TypedDict

import pytest
from pydantic import ValidationError
from pydantic_settings import BaseSettings

from billing_service.domain.price_book import DEFAULT_PRICE_BOOK, PriceBookError, load_price_book
from billing_service.settings import BillingSettings
from catalog_service.settings import CatalogSettings
from chassis.settings import load_settings
from gateway.settings import GatewayDatabaseSettings, GatewaySettings
from sharing_service.settings import SharingSettings
from tests.conftest import SetEnv, from_environment

TOKEN = "test-internal-token-0123456789"
DOWNSTREAMS = {"CATALOG_ADDR": "catalog:50051", "SHARING_ADDR": "sharing:50052", "BILLING_ADDR": "billing:50053"}

class SetTransportEnv(Protocol):
    def __call__(self, **values: object) -> None: ...


@pytest.fixture
def env(monkeypatch: pytest.MonkeyPatch) -> SetEnv:
    """Sets the environment the settings read: valid downstreams and token, then the given overrides."""
    def set_env(**values: str) -> None:
        # Plaintext off loopback is allowed here: these tests are about the values, the transport's are below.
        for name, value in {"CLOUDIMG_INTERNAL_TOKEN": TOKEN, "CLOUDIMG_ALLOW_PLAINTEXT": "true", **DOWNSTREAMS,
                            **values}.items():
            monkeypatch.setenv(name, value)
    return set_env


@pytest.mark.parametrize("addr", [
    "127.0.0.1:50051", "0.0.0.0:50050", "[::]:50050", "[::1]:65535", "catalog:50051", "localhost:1",
    "postgres.example.internal:5432", "catalog-0.catalog.default.svc.cluster.local:50051",
])
def test_valid_addresses(env: SetEnv, addr: str) -> None:
    env(CATALOG_LISTEN_ADDR=addr, CATALOG_ADDR=addr)
    assert CatalogSettings().listen_addr == addr
    assert from_environment(GatewaySettings).catalog_addr == addr


@pytest.mark.parametrize(("addr", "problem"), [
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
def test_bad_addresses_are_refused(env: SetEnv, addr: str, problem: str) -> None:
    env(CATALOG_LISTEN_ADDR=addr, CATALOG_ADDR=addr)
    for cls in (CatalogSettings, GatewaySettings):
        with pytest.raises(ValidationError, match=problem.replace("(", r"\(").replace(")", r"\)")):
            from_environment(cls)


@pytest.mark.parametrize("url", [
    "sqlite:///data/catalog.db", "sqlite:////tmp/catalog.db", "sqlite://",
    "postgresql+psycopg://root@127.0.0.1:5432/test",
    "postgresql+psycopg://cloudimg:secret@postgres:5432/catalog",
])
def test_supported_database_urls(env: SetEnv, url: str) -> None:
    env(CATALOG_DATABASE_URL=url, GATEWAY_DATABASE_URL=url)
    assert CatalogSettings().database_url == url
    assert GatewayDatabaseSettings().database_url == url


@pytest.mark.parametrize(("url", "problem"), [
    ("garbage", "not a database URL"),
    ("", "not a database URL"),
    ("mysql://user:secret@db/catalog", "unsupported database 'mysql'"),
    ("postgresql+nosuchdriver://user:secret@db/catalog", "driver"),
])
def test_bad_database_urls_are_refused_without_echoing_them(env: SetEnv, url: str, problem: str) -> None:
    env(CATALOG_DATABASE_URL=url, GATEWAY_DATABASE_URL=url)
    for cls in (CatalogSettings, GatewayDatabaseSettings):
        with pytest.raises(ValidationError, match=problem) as refused:
            cls()
        assert "secret" not in str(refused.value)


@pytest.mark.skipif(importlib.util.find_spec("pg8000") is not None, reason="pg8000 is installed here")
def test_a_database_driver_that_is_not_installed_is_named(env: SetEnv) -> None:
    env(CATALOG_DATABASE_URL="postgresql+pg8000://root@127.0.0.1/test")
    with pytest.raises(ValidationError, match="needs pg8000, which is not installed"):
        CatalogSettings()


@pytest.mark.parametrize("level", ["debug", "INFO", "Warning", "ERROR", "critical"])
def test_log_levels_in_any_case(env: SetEnv, level: str) -> None:
    env(CLOUDIMG_LOG_LEVEL=level)
    assert SharingSettings().log_level == level.upper()


@pytest.mark.parametrize("level", ["verbose", "", "10", "WARN "])
def test_unknown_log_levels_are_refused(env: SetEnv, level: str) -> None:
    env(CLOUDIMG_LOG_LEVEL=level)
    with pytest.raises(ValidationError, match="CRITICAL"):
        SharingSettings()


@pytest.mark.parametrize(("name", "value"), [
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
    ("GATEWAY_JOB_LEASE_SECONDS", "0.5"),
])
def test_bad_durations_are_refused(env: SetEnv, name: str, value: str) -> None:
    env(**{name: value})
    with pytest.raises(ValidationError):
        from_environment(GatewaySettings)


def test_sensible_durations_are_taken(env: SetEnv) -> None:
    env(GATEWAY_RECONCILE_INTERVAL_SECONDS="0.1", GATEWAY_SHUTDOWN_GRACE_SECONDS="0",
        GATEWAY_SHUTDOWN_DRAIN_SECONDS="0", GATEWAY_API_KEY_CACHE_SECONDS="0", GATEWAY_DEFAULT_DEADLINE_SECONDS="2.5",
        GATEWAY_JOB_LEASE_SECONDS="1")
    settings = from_environment(GatewaySettings)
    assert (settings.reconcile_interval_seconds, settings.shutdown_grace_seconds, settings.shutdown_drain_seconds,
            settings.api_key_cache_seconds, settings.default_deadline_seconds, settings.job_lease_seconds) == \
        (0.1, 0, 0, 0, 2.5, 1)


def test_load_settings_names_every_bad_setting_on_one_line(env: SetEnv, capsys: pytest.CaptureFixture[str]) -> None:
    env(GATEWAY_LISTEN_ADDR="127.0.0.1:99999", CATALOG_ADDR="garbage",
        GATEWAY_DATABASE_URL="mysql://user:hunter2@db/gateway", GATEWAY_RECONCILE_INTERVAL_SECONDS="-5")
    with pytest.raises(SystemExit) as stopped:
        load_settings(GatewaySettings)
    assert stopped.value.code == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1
    assert err.startswith("cloudimg: invalid settings for gateway: ")
    assert "GATEWAY_LISTEN_ADDR: port must be 1-65535 (got 99999)" in err
    assert "CATALOG_ADDR: must be host:port" in err
    assert "GATEWAY_DATABASE_URL: unsupported database 'mysql'" in err
    assert "GATEWAY_RECONCILE_INTERVAL_SECONDS: " in err
    assert "hunter2" not in err
    assert "Value error" not in err


def test_load_settings_names_missing_settings(monkeypatch: pytest.MonkeyPatch,
                                              capsys: pytest.CaptureFixture[str]) -> None:
    for name in ("CLOUDIMG_INTERNAL_TOKEN", *DOWNSTREAMS):
        monkeypatch.delenv(name, raising=False)
    with pytest.raises(SystemExit):
        load_settings(GatewaySettings)
    err = capsys.readouterr().err
    assert err.count("\n") == 1
    assert "SHARING_ADDR: required" in err
    assert "BILLING_ADDR: required" in err


def test_a_missing_price_book_file_is_a_bad_setting(env: SetEnv, tmp_path: Path) -> None:
    env(BILLING_PRICE_BOOK_PATH=str(tmp_path / "missing.json"))
    with pytest.raises(ValidationError, match="price_book_path"):
        BillingSettings()


def test_the_published_price_book_loads() -> None:
    book = load_price_book(DEFAULT_PRICE_BOOK)
    assert book.currency == "USD"
    assert book.instance_types
    assert book.instance_prices


def broken(book: dict[str, Any], path: list[str | int], value: object) -> dict[str, Any]:
    """The price book with the value at ``path`` replaced (or removed when value is None)."""
    here: Any = book  # JSON: objects and arrays, keys and indexes
    for key in path[:-1]:
        here = here[key]
    if value is None:
        del here[path[-1]]
    else:
        here[path[-1]] = value
    return book


@pytest.mark.parametrize(("path", "value", "problem"), [
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
def test_a_price_book_of_the_wrong_shape_is_one_line_naming_the_file(tmp_path: Path, path: list[str | int],
                                                                      value: object, problem: str) -> None:
    book_path = tmp_path / "book.json"
    book_path.write_text(json.dumps(broken(json.loads(DEFAULT_PRICE_BOOK.read_text()), path, value)))
    with pytest.raises(PriceBookError) as refused:
        load_price_book(book_path)
    message = str(refused.value)
    assert message.startswith(f"{book_path}: ")
    assert problem in message
    assert "\n" not in message


@pytest.mark.parametrize(("text", "problem"), [
    ('{"currency": "USD",', "invalid JSON"),
    ("", "invalid JSON"),
    ("[]", "not a price book: it must be an object"),
])
def test_a_price_book_that_is_not_json_is_one_line_naming_the_file(tmp_path: Path, text: str, problem: str) -> None:
    path = tmp_path / "book.json"
    path.write_text(text)
    with pytest.raises(PriceBookError) as refused:
        load_price_book(path)
    message = str(refused.value)
    assert message.startswith(f"{path}: ")
    assert problem in message
    assert "\n" not in message


def test_a_price_book_that_cannot_be_read_names_the_file(tmp_path: Path) -> None:
    with pytest.raises(PriceBookError, match=r"missing\.json: .*No such file"):
        load_price_book(tmp_path / "missing.json")


# Transport: TLS, mutual TLS inside, plaintext on loopback only.

class Pki(TypedDict):
    ca: Path
    gateway: tuple[Path, Path]
    catalog: tuple[Path, Path]


@pytest.fixture
def pki(tmp_path: Path) -> Pki:
    """A private CA's certificate and a certificate and key per name, as files: ``pki["gateway"]`` is
    (cert, key); ``pki["ca"]`` the CA's certificate."""
    import trustme

    ca = trustme.CA()
    ca.cert_pem.write_to_path(str(tmp_path / "ca.pem"))

    def issue(name: str) -> tuple[Path, Path]:
        issued = ca.issue_cert(name, "127.0.0.1")
        cert, key = tmp_path / f"{name}.pem", tmp_path / f"{name}.key"
        issued.cert_chain_pems[0].write_to_path(str(cert))
        issued.private_key_pem.write_to_path(str(key))
        return cert, key

    return Pki(ca=tmp_path / "ca.pem", gateway=issue("gateway"), catalog=issue("catalog"))


@pytest.fixture
def transport_env(monkeypatch: pytest.MonkeyPatch) -> SetTransportEnv:
    """Like ``env`` but nothing about the transport is given unless asked for."""
    for name in ("CLOUDIMG_INTERNAL_TOKEN", "CLOUDIMG_ALLOW_PLAINTEXT", "CLOUDIMG_INTERNAL_CA_FILE"):
        monkeypatch.delenv(name, raising=False)

    def set_env(**values: object) -> None:
        loopback = {"CATALOG_ADDR": "127.0.0.1:50051", "SHARING_ADDR": "127.0.0.1:50052",
                    "BILLING_ADDR": "127.0.0.1:50053"}
        for name, value in {**loopback, **values}.items():
            monkeypatch.setenv(name, str(value))
    return set_env


def refusal(settings_class: type[BaseSettings]) -> str:
    with pytest.raises(ValidationError) as refused:
        settings_class()
    return str(refused.value)


@pytest.mark.parametrize(("settings_class", "variable"), [(CatalogSettings, "CATALOG_LISTEN_ADDR"),
                                                      (GatewaySettings, "GATEWAY_LISTEN_ADDR")])
def test_plaintext_off_loopback_is_refused_unless_allowed(transport_env: SetTransportEnv,
                                                          settings_class: type[CatalogSettings | GatewaySettings],
                                                          variable: str) -> None:
    transport_env(CLOUDIMG_INTERNAL_TOKEN=TOKEN, **{variable: "0.0.0.0:50050"})
    assert f"{variable}: 0.0.0.0:50050 is not a loopback address" in refusal(settings_class)
    transport_env(CLOUDIMG_INTERNAL_TOKEN=TOKEN, CLOUDIMG_ALLOW_PLAINTEXT="true", **{variable: "0.0.0.0:50050"})
    assert from_environment(settings_class).listen_addr == "0.0.0.0:50050"


def test_plaintext_to_internal_services_off_loopback_is_refused(transport_env: SetTransportEnv) -> None:
    transport_env(CLOUDIMG_INTERNAL_TOKEN=TOKEN, BILLING_ADDR="billing:50053")
    assert "BILLING_ADDR: billing:50053 is not a loopback address" in refusal(GatewaySettings)


def test_on_loopback_plaintext_needs_the_internal_token(transport_env: SetTransportEnv) -> None:
    transport_env()
    assert "CLOUDIMG_INTERNAL_TOKEN: required without CATALOG_TLS_CERT_FILE" in refusal(CatalogSettings)
    assert "CLOUDIMG_INTERNAL_TOKEN: required without CLOUDIMG_INTERNAL_CA_FILE" in refusal(GatewaySettings)
    transport_env(CLOUDIMG_INTERNAL_TOKEN=TOKEN)
    assert CatalogSettings().internal_token is not None
    assert not CatalogSettings().serves_tls


def test_a_certificate_goes_with_its_key(transport_env: SetTransportEnv, pki: Pki) -> None:
    transport_env(CATALOG_TLS_CERT_FILE=pki["catalog"][0], CLOUDIMG_INTERNAL_CA_FILE=pki["ca"])
    assert "CATALOG_TLS_CERT_FILE and CATALOG_TLS_KEY_FILE: set both or neither" in refusal(CatalogSettings)


def test_an_internal_service_serving_tls_serves_mutual_tls_so_needs_the_ca(transport_env: SetTransportEnv,
                                                                           pki: Pki) -> None:
    cert, key = pki["catalog"]
    transport_env(CATALOG_LISTEN_ADDR="0.0.0.0:50051", CATALOG_TLS_CERT_FILE=cert, CATALOG_TLS_KEY_FILE=key)
    assert "CLOUDIMG_INTERNAL_CA_FILE: required with CATALOG_TLS_CERT_FILE" in refusal(CatalogSettings)
    transport_env(CATALOG_LISTEN_ADDR="0.0.0.0:50051", CATALOG_TLS_CERT_FILE=cert, CATALOG_TLS_KEY_FILE=key,
                  CLOUDIMG_INTERNAL_CA_FILE=pki["ca"])
    settings = CatalogSettings()  # no token needed: the gateway's certificate is its credential
    assert settings.serves_tls
    assert settings.internal_token is None
    assert settings.internal_peer == "gateway"


def test_the_gateway_with_the_internal_ca_needs_its_client_certificate(transport_env: SetTransportEnv,
                                                                        pki: Pki) -> None:
    cert, key = pki["gateway"]
    tls = dict(GATEWAY_LISTEN_ADDR="0.0.0.0:50050", GATEWAY_TLS_CERT_FILE=cert, GATEWAY_TLS_KEY_FILE=key,
               CLOUDIMG_INTERNAL_CA_FILE=pki["ca"], CATALOG_ADDR="catalog:50051", SHARING_ADDR="sharing:50052",
               BILLING_ADDR="billing:50053")
    transport_env(**tls)
    assert "GATEWAY_INTERNAL_CERT_FILE and GATEWAY_INTERNAL_KEY_FILE: required" in refusal(GatewaySettings)
    transport_env(**tls, GATEWAY_INTERNAL_CERT_FILE=cert, GATEWAY_INTERNAL_KEY_FILE=key)
    settings = from_environment(GatewaySettings)
    assert settings.serves_tls
    assert settings.internal_tls
    assert settings.internal_token is None


def test_a_certificate_file_that_is_not_pem_cannot_be_served_with(tmp_path: Path, pki: Pki) -> None:
    from chassis import tls
    from chassis.settings import SettingsError

    garbage = tmp_path / "garbage.pem"
    garbage.write_text("not a certificate")
    with pytest.raises(SettingsError, match=r"garbage\.pem is not a PEM file holding a certificate"):
        tls.server_credentials(garbage, pki["catalog"][1])
    with pytest.raises(SettingsError, match=r"garbage\.pem is not a PEM file holding a private key"):
        tls.server_credentials(pki["catalog"][0], garbage)
    assert tls.server_credentials(*pki["catalog"], client_ca_file=pki["ca"]) is not None


@pytest.mark.parametrize(("addr", "loopback"), [
    ("127.0.0.1:1", True), ("127.1.2.3:1", True), ("localhost:1", True), ("[::1]:1", True),
    ("0.0.0.0:1", False), ("[::]:1", False), ("catalog:50051", False), ("10.0.0.1:1", False),
])
def test_loopback_addresses(addr: str, loopback: bool) -> None:
    from chassis.settings import is_loopback

    assert is_loopback(addr) is loopback
