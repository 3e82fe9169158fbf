"""devtools.certs: the development PKI that compose and the Kubernetes instructions use."""

import datetime
import ipaddress
import stat
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.x509.oid import ExtendedKeyUsageOID

from devtools import certs

SERVICES = ("catalog", "sharing", "billing", "gateway")


@pytest.fixture(scope="module")
def issued(tmp_path_factory: pytest.TempPathFactory) -> Path:
    directory = tmp_path_factory.mktemp("pki") / "certs"
    assert certs.main([str(directory), "--namespace", "images", "--names", "api.example.com", "203.0.113.7"]) == 0
    return directory


def load(path: Path) -> x509.Certificate:
    return x509.load_pem_x509_certificate(path.read_bytes())


def names(cert: x509.Certificate) -> tuple[set[str], set[str]]:
    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    return set(san.get_values_for_type(x509.DNSName)), {str(a) for a in san.get_values_for_type(x509.IPAddress)}


def test_writes_the_ca_and_a_certificate_and_key_per_service(issued: Path) -> None:
    expected = {"ca.pem"} | {f"{s}.{ext}" for s in SERVICES for ext in ("pem", "key")}
    assert {p.name for p in issued.iterdir()} == expected
    assert stat.S_IMODE(issued.stat().st_mode) == 0o700  # the folder of keys: its owner only


@pytest.mark.parametrize("service", SERVICES)
def test_each_certificate_is_issued_by_the_ca_for_its_key(issued: Path, service: str) -> None:
    ca, cert = load(issued / "ca.pem"), load(issued / f"{service}.pem")
    cert.verify_directly_issued_by(ca)  # raises unless the CA's key signed it
    assert ca.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    key = serialization.load_pem_private_key((issued / f"{service}.key").read_bytes(), password=None)
    spki = serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    assert key.public_key().public_bytes(*spki) == cert.public_key().public_bytes(*spki)
    # Compose bind-mounts the key with its host mode, for the containers' uid 10001.
    assert stat.S_IMODE((issued / f"{service}.key").stat().st_mode) == certs.KEY_MODE


@pytest.mark.parametrize("service", SERVICES)
def test_each_certificate_names_its_service_as_compose_and_kubernetes_reach_it(issued: Path, service: str) -> None:
    dns, ips = names(load(issued / f"{service}.pem"))
    assert {service, f"{service}.images.svc", f"{service}.images.svc.cluster.local", "localhost"} <= dns
    assert "127.0.0.1" in ips
    extra = ({"api.example.com"}, {"203.0.113.7"}) if service == "gateway" else (set(), set())
    assert dns - {service, f"{service}.images.svc", f"{service}.images.svc.cluster.local", "localhost"} == extra[0]
    assert ips - {"127.0.0.1"} == extra[1]
    assert all(ipaddress.ip_address(ip) for ip in ips)


@pytest.mark.parametrize("service", SERVICES)
def test_each_certificate_serves_and_is_a_client_certificate(issued: Path, service: str) -> None:
    # The health checks present the service's own certificate; the gateway's is its client certificate too.
    usages = load(issued / f"{service}.pem").extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert {ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH} <= set(usages)


def test_certificates_expire_after_the_days_asked_for(tmp_path: Path) -> None:
    assert certs.main([str(tmp_path / "pki"), "--days", "30"]) == 0
    expires = load(tmp_path / "pki" / "catalog.pem").not_valid_after_utc
    remaining = expires - datetime.datetime.now(datetime.UTC)
    assert datetime.timedelta(days=29) < remaining <= datetime.timedelta(days=30)


def test_keeps_a_set_the_services_already_trust_unless_forced(tmp_path: Path,
                                                              capsys: pytest.CaptureFixture[str]) -> None:
    directory = tmp_path / "pki"
    assert certs.main([str(directory)]) == 0
    before = (directory / "ca.pem").read_bytes()
    assert certs.main([str(directory)]) == 1
    assert "--force" in capsys.readouterr().err
    assert (directory / "ca.pem").read_bytes() == before
    assert certs.main([str(directory), "--force"]) == 0
    assert (directory / "ca.pem").read_bytes() != before


def test_refuses_a_name_no_certificate_can_carry(tmp_path: Path) -> None:
    with pytest.raises(SystemExit) as exited:
        certs.main([str(tmp_path / "pki"), "--names", "not a name"])
    assert exited.value.code == 2
    assert not (tmp_path / "pki").exists()
