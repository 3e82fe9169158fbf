"""Import sources: SSRF and path checks, streaming over real HTTP, and image inspection (oslo format_inspector)."""

from __future__ import annotations

import http.server
import os
import socket
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest

from catalog_service.adapters.image_store import ImageStore
from catalog_service.adapters.sources import (
    ImportPolicy,
    ImportRefused,
    Inspection,
    check_source,
    inspecting,
    open_source,
)
from tests.fixtures.disk_images import (
    CASES,
    TOO_LARGE_LIMIT,
    DiskImages,
    disk_images_fixture,  # noqa: F401 - provides the disk_images fixture
    virtual_size,
)

MiB = 1 << 20


def policy(root: Path | None = None, *allowed: str, max_bytes: int = 64 * MiB) -> ImportPolicy:
    return ImportPolicy(import_root=root, allowed_sources=tuple(allowed), max_bytes=max_bytes, timeout_seconds=5)


def refusal(uri: str, rules: ImportPolicy) -> str:
    with pytest.raises(ImportRefused) as caught:
        check_source(uri, rules)
    assert caught.value.message
    assert str(caught.value) == f"{caught.value.reason}: {caught.value.message}"
    return caught.value.reason


@pytest.fixture
def fake_dns(monkeypatch: pytest.MonkeyPatch) -> dict[str, list[str]]:
    """Host names the test makes up, resolved without any network; counts lookups in ``calls``."""
    names: dict[str, list[str]] = {"calls": []}
    real = socket.getaddrinfo

    def getaddrinfo(host: Any, port: Any, *args: Any, **kwargs: Any) -> Any:
        if isinstance(host, str) and host in names:
            names["calls"].append(host)
            family = {True: socket.AF_INET6, False: socket.AF_INET}
            return [(family[":" in a], socket.SOCK_STREAM, 6, "", (a, port)) for a in names[host]]
        return real(host, port, *args, **kwargs)

    monkeypatch.setattr(socket, "getaddrinfo", getaddrinfo)
    return names


# -- check_source ------------------------------------------------------------------------------------


@pytest.mark.parametrize("uri", [
    "http://127.0.0.1/disk.raw",
    "http://127.1.2.3:8080/disk.raw",
    "http://localhost/disk.raw",
    "http://2130706433/disk.raw",  # 127.0.0.1 as one number
    "http://169.254.169.254/latest/meta-data/",
    "http://10.1.2.3/disk.raw",
    "http://192.168.1.10/disk.raw",
    "http://172.16.0.1/disk.raw",
    "http://172.31.255.254/disk.raw",
    "https://[::1]/disk.raw",
    "http://[fc00::1]/disk.raw",
    "http://[fd12:3456::1]/disk.raw",
    "http://[fe80::1]/disk.raw",
    "http://100.64.0.1/disk.raw",
    "http://0.0.0.0/disk.raw",
    "http://[::]/disk.raw",
    "http://[::ffff:127.0.0.1]/disk.raw",
    "http://[::ffff:169.254.169.254]/disk.raw",
    "http://[2002:a9fe:a9fe::1]/disk.raw",  # 6to4 around 169.254.169.254
    "http://[64:ff9b::a00:1]/disk.raw",  # NAT64 around 10.0.0.1
    "http://224.0.0.1/disk.raw",
    "http://[ff02::1]/disk.raw",
    "http://240.0.0.1/disk.raw",
    "http://255.255.255.255/disk.raw",
    "http://internal.example/disk.raw",  # a name that resolves to a private address
    "http://mixed.example/disk.raw",  # one of its addresses is private
    "ftp://images.example/disk.raw",
    "gopher://images.example/",
    "/srv/imports/disk.raw",
    "http://user:secret@images.example/disk.raw",
    "https://token@images.example/disk.raw",
])
def test_refused_sources(uri: str, fake_dns: dict[str, list[str]], tmp_path: Path) -> None:
    fake_dns["internal.example"] = ["10.0.0.5"]
    fake_dns["mixed.example"] = ["93.184.216.34", "192.168.0.7"]
    fake_dns["images.example"] = ["93.184.216.34"]
    assert refusal(uri, policy(tmp_path)) == "SOURCE_NOT_ALLOWED"


@pytest.mark.parametrize("uri", ["http://[::1/disk.raw", "http://images.example:99999/", "http:///disk.raw",
                                 "http://images.example/a b", "http://images.example/\x00"])
def test_unparsable_sources(uri: str) -> None:
    assert refusal(uri, policy()) == "INVALID_SOURCE_URI"


def test_public_sources_pass(fake_dns: dict[str, list[str]]) -> None:
    fake_dns["images.example"] = ["93.184.216.34", "2606:2800:220:1::1"]
    check_source("https://images.example/ubuntu-24.04.qcow2?sig=abc", policy())
    check_source("http://8.8.8.8:8080/disk.raw", policy())
    check_source("http://[2001:4860:4860::8888]/disk.raw", policy())


def test_an_unresolvable_host_is_unreachable(fake_dns: dict[str, list[str]]) -> None:
    fake_dns["nowhere.example"] = []
    assert refusal("http://nowhere.example/disk.raw", policy()) == "SOURCE_UNREACHABLE"


def test_the_allow_list_opens_a_host_port_and_path(fake_dns: dict[str, list[str]]) -> None:
    fake_dns["127.0.0.1.attacker.example"] = ["127.0.0.1"]
    any_port = policy(None, "http://127.0.0.1")
    check_source("http://127.0.0.1:8080/disk.raw", any_port)
    check_source("http://127.0.0.1/disk.raw", any_port)
    assert refusal("https://127.0.0.1/disk.raw", any_port) == "SOURCE_NOT_ALLOWED"  # another scheme
    assert refusal("http://127.0.0.2/disk.raw", any_port) == "SOURCE_NOT_ALLOWED"
    assert refusal("http://127.0.0.1.attacker.example/disk.raw", any_port) == "SOURCE_NOT_ALLOWED"

    one_folder = policy(None, "http://127.0.0.1:8080/images/")
    check_source("http://127.0.0.1:8080/images/disk.raw", one_folder)
    for uri in ["http://127.0.0.1:8081/images/disk.raw", "http://127.0.0.1:8080/secrets",
                "http://127.0.0.1:8080/imagesX/disk.raw", "http://127.0.0.1:8080/images/../secrets",
                "http://127.0.0.1:8080/images/%2e%2e/secrets"]:
        assert refusal(uri, one_folder) == "SOURCE_NOT_ALLOWED", uri


def test_a_malformed_allow_list_entry_is_a_configuration_error() -> None:
    with pytest.raises(ValueError, match="is not an http"):
        policy(None, "127.0.0.1:8080")
    with pytest.raises(ValueError, match="is not an http"):
        policy(None, "http://user:pw@127.0.0.1/")


@pytest.fixture
def import_root(tmp_path: Path) -> Path:
    root = tmp_path / "imports"
    (root / "sub").mkdir(parents=True)
    (root / "sub" / "disk.raw").write_bytes(b"raw disk" * 1000)
    (tmp_path / "secret").write_bytes(b"not for import")
    (root / "escape").symlink_to(tmp_path / "secret")
    (root / "passwd").symlink_to("/etc/passwd")
    (root / "inner-link").symlink_to(root / "sub" / "disk.raw")
    return root


def test_file_sources_below_the_import_root(import_root: Path, tmp_path: Path) -> None:
    rules = policy(import_root)
    check_source(f"file://{import_root}/sub/disk.raw", rules)
    check_source(f"file://localhost{import_root}/sub/disk.raw", rules)
    check_source(f"file://{import_root}/inner-link", rules)  # a symlink that stays inside is fine

    assert refusal(f"file://{tmp_path}/secret", rules) == "SOURCE_NOT_ALLOWED"
    assert refusal("file:///etc/passwd", rules) == "SOURCE_NOT_ALLOWED"
    assert refusal(f"file://{import_root}/../secret", rules) == "SOURCE_NOT_ALLOWED"
    assert refusal(f"file://{import_root}/sub/../sub/disk.raw", rules) == "SOURCE_NOT_ALLOWED"
    assert refusal(f"file://{import_root}/%2e%2e/secret", rules) == "SOURCE_NOT_ALLOWED"
    assert refusal(f"file://{import_root}/escape", rules) == "SOURCE_NOT_ALLOWED"
    assert refusal(f"file://{import_root}/passwd", rules) == "SOURCE_NOT_ALLOWED"
    assert refusal(f"file://{import_root}/sub", rules) == "SOURCE_NOT_ALLOWED"  # a folder
    assert refusal(f"file://otherhost{import_root}/sub/disk.raw", rules) == "SOURCE_NOT_ALLOWED"
    assert refusal(f"file://{import_root}/sub/missing.raw", rules) == "SOURCE_UNREACHABLE"
    assert refusal(f"file://{import_root}/sub/disk.raw", policy(None)) == "SOURCE_NOT_ALLOWED"


def test_a_file_source_streams(import_root: Path) -> None:
    chunks = list(open_source(f"file://{import_root}/sub/disk.raw", policy(import_root)))
    assert b"".join(chunks) == b"raw disk" * 1000


def test_a_file_over_the_limit_is_refused_before_reading(disk_images: DiskImages) -> None:
    path = disk_images["too_large"]
    rules = policy(path.parent, max_bytes=TOO_LARGE_LIMIT)
    with pytest.raises(ImportRefused) as caught:
        next(open_source(f"file://{path}", rules))
    assert caught.value.reason == "SOURCE_TOO_LARGE"


def test_a_file_that_grows_past_the_limit_while_read_is_cut(import_root: Path) -> None:
    path = import_root / "growing.raw"
    path.write_bytes(b"g" * 1000)
    stream = open_source(f"file://{path}", policy(import_root, max_bytes=1500))
    with path.open("ab") as f:
        f.write(b"g" * 1000)
    with pytest.raises(ImportRefused) as caught:
        list(stream)
    assert caught.value.reason == "SOURCE_TOO_LARGE"


# -- open_source over real HTTP ----------------------------------------------------------------------


class ImageServer(http.server.ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = False

    def __init__(self, files: dict[str, Path]):
        super().__init__(("127.0.0.1", 0), Handler)
        self.files = files
        self.hosts: list[str] = []

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}"


class Handler(http.server.BaseHTTPRequestHandler):
    server: ImageServer

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def do_GET(self) -> None:
        self.server.hosts.append(self.headers.get("Host", ""))
        url = urlsplit(self.path)
        query = parse_qs(url.query)
        if url.path.startswith("/image/") and url.path[7:] in self.server.files:
            data = self.server.files[url.path[7:]].read_bytes()
            self.send_response(200)
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)
        elif url.path == "/stream":  # no Content-Length: the body ends when the connection closes
            self.send_response(200)
            self.end_headers()
            for _ in range(int(query["kib"][0])):
                self.wfile.write(b"s" * 1024)
        elif url.path == "/lying-length":
            self.send_response(200)
            self.send_header("Content-Length", str(10 * MiB))
            self.end_headers()
            self.wfile.write(b"short")
        elif url.path == "/redirect":
            self.send_response(int(query.get("status", ["302"])[0]))
            self.send_header("Location", query["to"][0])
            self.send_header("Content-Length", "0")
            self.end_headers()
        elif url.path == "/loop":
            self.send_response(302)
            self.send_header("Location", "/loop")
            self.send_header("Content-Length", "0")
            self.end_headers()
        else:
            self.send_error(404)


@pytest.fixture
def server(disk_images: DiskImages) -> Iterator[ImageServer]:
    srv = ImageServer({"raw": disk_images["raw"]})
    thread = threading.Thread(target=srv.serve_forever, daemon=True)
    thread.start()
    yield srv
    srv.shutdown()
    srv.server_close()
    thread.join(5)


def fetch(uri: str, rules: ImportPolicy) -> bytes:
    return b"".join(open_source(uri, rules))


def fetch_refusal(uri: str, rules: ImportPolicy) -> ImportRefused:
    with pytest.raises(ImportRefused) as caught:
        fetch(uri, rules)
    return caught.value


def test_a_local_server_is_refused_without_the_allow_list(server: ImageServer) -> None:
    assert fetch_refusal(f"{server.base}/image/raw", policy()).reason == "SOURCE_NOT_ALLOWED"
    assert server.hosts == []  # refused before any connection


def test_the_allow_list_streams_from_a_local_server(server: ImageServer, disk_images: DiskImages) -> None:
    chunks = list(open_source(f"{server.base}/image/raw", policy(None, "http://127.0.0.1")))

    assert b"".join(chunks) == disk_images["raw"].read_bytes()
    assert max(len(c) for c in chunks) <= MiB
    assert server.hosts == [f"127.0.0.1:{server.server_address[1]}"]


def test_it_connects_to_the_address_it_checked_with_the_name_as_host(
        server: ImageServer, fake_dns: dict[str, list[str]], disk_images: DiskImages) -> None:
    # ::1 first: nothing listens there, so the next checked address is used; one lookup only (no rebinding).
    fake_dns["mirror.internal"] = ["::1", "127.0.0.1"]
    port = server.server_address[1]

    data = fetch(f"http://mirror.internal:{port}/image/raw", policy(None, "http://mirror.internal"))

    assert data == disk_images["raw"].read_bytes()
    assert fake_dns["calls"] == ["mirror.internal"]
    assert server.hosts == [f"mirror.internal:{port}"]


def test_redirects_are_followed_and_every_hop_is_checked(server: ImageServer, disk_images: DiskImages) -> None:
    rules = policy(None, "http://127.0.0.1")
    assert fetch(f"{server.base}/redirect?to=/image/raw", rules) == disk_images["raw"].read_bytes()
    assert fetch(f"{server.base}/redirect?status=307&to={server.base}/image/raw", rules) \
        == disk_images["raw"].read_bytes()

    for target in ["http://169.254.169.254/latest/meta-data/", "http://10.0.0.1/", "file:///etc/passwd",
                   "http://[::ffff:169.254.169.254]/"]:
        refused = fetch_refusal(f"{server.base}/redirect?to={target}", rules)
        assert refused.reason == "SOURCE_NOT_ALLOWED", target

    assert fetch_refusal(f"{server.base}/loop", rules).reason == "SOURCE_UNREACHABLE"


def test_http_errors_are_unreachable(server: ImageServer) -> None:
    rules = policy(None, "http://127.0.0.1")
    refused = fetch_refusal(f"{server.base}/image/nothing-here", rules)
    assert (refused.reason, "404" in refused.message) == ("SOURCE_UNREACHABLE", True)

    assert fetch_refusal(f"{server.base}/lying-length", rules).reason == "SOURCE_UNREACHABLE"


def test_connection_refused_is_unreachable() -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]  # closed again: nothing listens there
    refused = fetch_refusal(f"http://127.0.0.1:{port}/disk.raw", policy(None, "http://127.0.0.1"))
    assert refused.reason == "SOURCE_UNREACHABLE"


def test_over_the_limit_with_content_length(server: ImageServer, disk_images: DiskImages) -> None:
    size = disk_images["raw"].stat().st_size
    rules = policy(None, "http://127.0.0.1", max_bytes=size - 1)
    stream = open_source(f"{server.base}/image/raw", rules)
    with pytest.raises(ImportRefused) as caught:
        next(stream)  # refused at once, before any byte is handed over
    assert caught.value.reason == "SOURCE_TOO_LARGE"
    assert fetch(f"{server.base}/image/raw", policy(None, "http://127.0.0.1", max_bytes=size)) \
        == disk_images["raw"].read_bytes()


def test_over_the_limit_without_content_length(server: ImageServer) -> None:
    rules = policy(None, "http://127.0.0.1", max_bytes=MiB + 10)
    assert len(fetch(f"{server.base}/stream?kib=1024", rules)) == MiB
    refused = fetch_refusal(f"{server.base}/stream?kib=4096", rules)
    assert refused.reason == "SOURCE_TOO_LARGE"


# -- inspecting --------------------------------------------------------------------------------------


def read_chunks(path: Path, size: int = MiB) -> Iterator[bytes]:
    with path.open("rb") as f:
        while chunk := f.read(size):
            yield chunk


def inspected(stream: Iterator[bytes], verdict: Callable[[], Inspection]) -> Inspection:
    """The verdict once the whole stream is read (a refusal comes from the stream or from the verdict)."""
    for _ in stream:
        pass
    return verdict()


@pytest.mark.parametrize("name", [n for n, c in CASES.items() if c.refused is None])
def test_real_images_are_accepted_with_their_virtual_size(name: str, disk_images: DiskImages) -> None:
    case = CASES[name]
    path = disk_images[case.image]
    stream, verdict = inspecting(read_chunks(path, 64 * 1024), case.declared)

    assert b"".join(stream) == path.read_bytes()  # the bytes pass through unchanged
    inspection = verdict()
    assert inspection.format == case.declared
    expected = path.stat().st_size if case.declared == "raw" else virtual_size(path)
    assert inspection.virtual_size == expected


@pytest.mark.parametrize("name", [n for n, c in CASES.items() if c.refused is not None])
def test_hostile_images_are_refused_with_their_reason(name: str, disk_images: DiskImages) -> None:
    case = CASES[name]
    stream, verdict = inspecting(read_chunks(disk_images[case.image]), case.declared)

    with pytest.raises(ImportRefused) as caught:
        inspected(stream, verdict)

    assert caught.value.reason == case.refused
    assert len(str(caught.value)) < 160


def test_a_mismatch_names_both_formats(disk_images: DiskImages) -> None:
    stream, verdict = inspecting(read_chunks(disk_images["raw"]), "qcow2")
    with pytest.raises(ImportRefused) as caught:
        inspected(stream, verdict)
    assert str(caught.value) == "FORMAT_MISMATCH: declared qcow2, but the image is raw"


def test_an_unsafe_header_stops_the_stream_early(disk_images: DiskImages) -> None:
    padded = disk_images["qcow2_backing_file"].read_bytes().ljust(8 * MiB, b"\0")
    pulled = []

    def source() -> Iterator[bytes]:
        for start in range(0, len(padded), MiB):
            pulled.append(start)
            yield padded[start:start + MiB]

    stream, _ = inspecting(source(), "qcow2")
    with pytest.raises(ImportRefused) as caught:
        list(stream)
    assert caught.value.reason == "BACKING_FILE"
    assert len(pulled) == 1


def test_the_verdict_needs_the_whole_stream(disk_images: DiskImages) -> None:
    stream, verdict = inspecting(read_chunks(disk_images["raw"]), "raw")
    next(stream)
    with pytest.raises(RuntimeError):
        verdict()


def test_the_verdict_repeats_the_refusal_the_stream_raised(disk_images: DiskImages) -> None:
    stream, verdict = inspecting(read_chunks(disk_images["vmdk_flat_host_extent"]), "vmdk")
    with pytest.raises(ImportRefused) as in_stream:
        list(stream)
    with pytest.raises(ImportRefused) as from_verdict:
        verdict()
    assert from_verdict.value is in_stream.value
    assert str(in_stream.value) == (
        "VMDK_EXTENT: unsafe VMDK descriptor (createType monolithicflat): unsupported subformat")


def test_an_unknown_declared_format_is_a_programming_error() -> None:
    with pytest.raises(ValueError, match="cannot inspect declared format 'iso'"):
        inspecting([b""], "iso")


def test_an_http_import_streams_into_the_store_while_inspected(
        server: ImageServer, disk_images: DiskImages, tmp_path: Path) -> None:
    store = ImageStore(tmp_path / "store")
    stream, verdict = inspecting(open_source(f"{server.base}/image/raw", policy(None, "http://127.0.0.1")), "raw")

    blob = store.write("ap-guangzhou", stream)

    assert verdict().virtual_size == blob.size == disk_images["raw"].stat().st_size
    assert b"".join(store.read("ap-guangzhou", blob.checksum)) == disk_images["raw"].read_bytes()


def test_a_refused_import_leaves_nothing_in_the_store(disk_images: DiskImages, tmp_path: Path) -> None:
    store = ImageStore(tmp_path / "store")
    stream, _ = inspecting(read_chunks(disk_images["qcow2_data_file"]), "qcow2")
    with pytest.raises(ImportRefused):
        store.write("ap-guangzhou", stream)
    assert [p for p in (tmp_path / "store").rglob("*") if p.is_file()] == []


def test_environment_proxies_are_not_used(server: ImageServer, monkeypatch: pytest.MonkeyPatch,
                                          disk_images: DiskImages) -> None:
    monkeypatch.setenv("http_proxy", "http://10.9.9.9:3128")
    monkeypatch.setenv("HTTP_PROXY", "http://10.9.9.9:3128")
    assert fetch(f"{server.base}/image/raw", policy(None, "http://127.0.0.1")) == disk_images["raw"].read_bytes()
    assert os.environ["http_proxy"]  # still set: the fetch went direct anyway


# -- https: the vetted address, with the name for SNI and certificate checks --------------------------


def self_signed(folder: Path, name: str) -> tuple[Path, Path]:
    from datetime import UTC, datetime, timedelta

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    now = datetime.now(UTC)
    cert = (x509.CertificateBuilder().subject_name(subject).issuer_name(subject).public_key(key.public_key())
            .serial_number(x509.random_serial_number()).not_valid_before(now - timedelta(minutes=5))
            .not_valid_after(now + timedelta(hours=1))
            .add_extension(x509.SubjectAlternativeName([x509.DNSName(name)]), critical=False)
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .sign(key, hashes.SHA256()))
    cert_path, key_path = folder / f"{name}.pem", folder / f"{name}.key"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    return cert_path, key_path


@pytest.fixture
def tls_server(server: ImageServer, tmp_path: Path) -> Iterator[tuple[ImageServer, list[str | None], Path]]:
    import ssl

    cert, key = self_signed(tmp_path, "mirror.internal")
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(cert, key)
    sni: list[str | None] = []
    context.sni_callback = lambda _sock, name, _ctx: sni.append(name)
    tls = ImageServer(server.files)
    tls.socket = context.wrap_socket(tls.socket, server_side=True)
    thread = threading.Thread(target=tls.serve_forever, daemon=True)
    thread.start()
    yield tls, sni, cert
    tls.shutdown()
    tls.server_close()
    thread.join(5)


def test_https_verifies_the_certificate_for_the_name_while_connecting_to_the_checked_address(
        tls_server: tuple[ImageServer, list[str | None], Path], fake_dns: dict[str, list[str]],
        monkeypatch: pytest.MonkeyPatch, disk_images: DiskImages) -> None:
    server, sni, cert = tls_server
    port = server.server_address[1]
    fake_dns["mirror.internal"] = ["127.0.0.1"]
    rules = policy(None, "https://mirror.internal")

    untrusted = fetch_refusal(f"https://mirror.internal:{port}/image/raw", rules)
    assert untrusted.reason == "SOURCE_UNREACHABLE"
    assert "certificate" in untrusted.message.lower()

    monkeypatch.setenv("SSL_CERT_FILE", str(cert))  # trust the test's own CA (OpenSSL reads it per context)
    assert fetch(f"https://mirror.internal:{port}/image/raw", rules) == disk_images["raw"].read_bytes()
    assert sni[-1] == "mirror.internal"
    assert server.hosts[-1] == f"mirror.internal:{port}"

    fake_dns["other.internal"] = ["127.0.0.1"]  # the certificate does not name this host
    wrong_name = fetch_refusal(f"https://other.internal:{port}/image/raw", policy(None, "https://other.internal"))
    assert wrong_name.reason == "SOURCE_UNREACHABLE"
