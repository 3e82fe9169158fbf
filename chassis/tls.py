"""Transport security: TLS for the public API, mutual TLS inside.

The gateway serves TLS with the certificate and key it is given. The internal services serve mutual
TLS: a caller must present a certificate issued by the private CA (``CLOUDIMG_INTERNAL_CA_FILE``),
or the handshake fails; and only a certificate that names the gateway (``CLOUDIMG_INTERNAL_PEER``,
default ``gateway``) may call anything but health and reflection. That is gRPC's server-side auth
model: the caller's identity is the verified peer certificate, not something it says in metadata.

Plaintext remains for one machine: a service listening on loopback (``make run``, the in-process
tests) may go without certificates, and the internal services then take the shared internal token
as the proof that a call comes from the gateway. Plaintext on any other address is refused at
start-up unless ``CLOUDIMG_ALLOW_PLAINTEXT`` says so (a mesh that encrypts for you).
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

import grpc

from chassis.settings import SettingsError


def read_pem(path: Path, what: str, marker: bytes) -> bytes:
    """A PEM file's bytes; a file that is not one is a setting that cannot be used (exit 2, one line)."""
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise SettingsError(f"{what} {path}: {exc.strerror}") from None
    if b"-----BEGIN " not in data or marker not in data:
        raise SettingsError(f"{what} {path} is not a PEM file holding a {what}")
    return data


def certificate(path: Path) -> bytes:
    return read_pem(path, "certificate", b"CERTIFICATE-----")


def private_key(path: Path) -> bytes:
    return read_pem(path, "private key", b"PRIVATE KEY-----")  # PKCS #8, RSA or EC


def server_credentials(cert_file: Path, key_file: Path, client_ca_file: Path | None = None) -> grpc.ServerCredentials:
    """TLS with this certificate; with a client CA, mutual TLS: every caller presents a certificate it
    issued, or the handshake fails."""
    pair = [(private_key(key_file), certificate(cert_file))]
    if client_ca_file is None:
        return grpc.ssl_server_credentials(pair)
    return grpc.ssl_server_credentials(pair, root_certificates=certificate(client_ca_file), require_client_auth=True)


def channel_credentials(ca_file: Path | None = None, cert_file: Path | None = None,
                        key_file: Path | None = None) -> grpc.ChannelCredentials:
    """TLS to a server whose certificate this CA issued (the system's roots without one), presenting
    a client certificate when one is given."""
    return grpc.ssl_channel_credentials(
        root_certificates=certificate(ca_file) if ca_file else None,
        private_key=private_key(key_file) if key_file else None,
        certificate_chain=certificate(cert_file) if cert_file else None,
    )


def peer_names(identities: Iterable[bytes] | None) -> set[str]:
    """The names in a verified peer certificate (its subject alternative names), as text."""
    return {identity.decode(errors="replace") for identity in identities or ()}
