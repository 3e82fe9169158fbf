"""Container health check: exit 0 when the server at HOST:PORT reports SERVING, else 1.

Asks grpc.health.v1 Health/Check for the overall service "" with a 2 s deadline, so images need no
grpc_health_probe binary (and Kubernetes' native gRPC probes cannot speak TLS):

    python -m devtools.healthcheck --service catalog 127.0.0.1:50051

TLS: with ``--service NAME`` the check reads the variables that service serves with, from the
container's environment: ``{PREFIX}TLS_CERT_FILE`` and ``{PREFIX}TLS_KEY_FILE`` (PREFIX = CATALOG_,
SHARING_, BILLING_, GATEWAY_) become its client certificate (an internal service demands one, from its
CA, even for health), and ``CLOUDIMG_INTERNAL_CA_FILE`` the CA that verifies the server; the server's
certificate must name the service (``catalog``...), as the gateway's calls need anyway. Without
``--service``, the one service whose ``{PREFIX}TLS_CERT_FILE`` is set is the one checked. ``--ca-cert``,
``--cert``, ``--key`` and ``--server-name`` override what the environment says. The check speaks TLS when
a certificate or a CA is known that way, plaintext otherwise (a service on loopback in development).
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

TIMEOUT_SECONDS = 2.0
PREFIXES = {"catalog": "CATALOG_", "sharing": "SHARING_", "billing": "BILLING_", "gateway": "GATEWAY_"}
CA_VARIABLE = "CLOUDIMG_INTERNAL_CA_FILE"


@dataclass(frozen=True)
class Tls:
    """What the check dials with: the CA that verifies the server (None: the system's roots), the
    client certificate it presents, and the name the server's certificate must carry."""

    ca_file: Path | None = None
    cert_file: Path | None = None
    key_file: Path | None = None
    server_name: str | None = None

    def credentials(self) -> grpc.ChannelCredentials:
        """The channel credentials; OSError when a file cannot be read."""
        return grpc.ssl_channel_credentials(
            root_certificates=self.ca_file.read_bytes() if self.ca_file else None,
            private_key=self.key_file.read_bytes() if self.key_file else None,
            certificate_chain=self.cert_file.read_bytes() if self.cert_file else None,
        )


class UsageError(Exception):
    """Flags and environment that do not say what to check."""


def check(address: str, timeout: float = TIMEOUT_SECONDS, tls: Tls | None = None) -> str:
    """The overall serving status's name, or the gRPC status code's name when the call fails."""
    if tls is None:
        channel = grpc.insecure_channel(address)
    else:
        options = [("grpc.ssl_target_name_override", tls.server_name)] if tls.server_name else []
        channel = grpc.secure_channel(address, tls.credentials(), options=options)
    with channel:
        try:
            response = health_pb2_grpc.HealthStub(channel).Check(
                health_pb2.HealthCheckRequest(service=""), timeout=timeout
            )
        except grpc.RpcError as error:
            code: str = error.code().name
            return code
    status: str = health_pb2.HealthCheckResponse.ServingStatus.Name(response.status)
    return status


def service_of(env: Mapping[str, str]) -> str | None:
    """The one service whose certificate variable is set in this environment, if any."""
    serving = [name for name, prefix in PREFIXES.items() if env.get(f"{prefix}TLS_CERT_FILE")]
    if len(serving) > 1:
        raise UsageError(f"TLS certificates of {', '.join(serving)} are set: say which with --service")
    return serving[0] if serving else None


def tls_settings(args: argparse.Namespace, env: Mapping[str, str]) -> Tls | None:
    """TLS from the flags, completed from the service's environment; None for plaintext."""
    service = args.service or service_of(env)
    prefix = PREFIXES[service] if service else None

    def pick(flag: str | None, variable: str | None) -> Path | None:
        value = flag or (env.get(variable) if variable else None)
        return Path(value) if value else None

    cert = pick(args.cert, f"{prefix}TLS_CERT_FILE" if prefix else None)
    key = pick(args.key, f"{prefix}TLS_KEY_FILE" if prefix else None)
    if (cert is None) != (key is None):
        raise UsageError("a client certificate needs both --cert and --key (or both TLS variables)")
    if cert is None and args.ca_cert is None:
        return None  # the service serves plaintext
    ca = pick(args.ca_cert, CA_VARIABLE)
    return Tls(ca_file=ca, cert_file=cert, key_file=key, server_name=args.server_name or service)


def main(argv: list[str] | None = None, env: Mapping[str, str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m devtools.healthcheck", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("address", help="HOST:PORT of a gRPC server")
    parser.add_argument("--service", choices=sorted(PREFIXES),
                        help="read TLS files from this service's variables (default: the one whose "
                             "{PREFIX}TLS_CERT_FILE is set)")
    parser.add_argument("--ca-cert", metavar="FILE", help=f"CA that verifies the server (default: ${CA_VARIABLE}, "
                                                          "else the system's roots)")
    parser.add_argument("--cert", metavar="FILE", help="client certificate (default: ${PREFIX}TLS_CERT_FILE)")
    parser.add_argument("--key", metavar="FILE", help="its private key (default: ${PREFIX}TLS_KEY_FILE)")
    parser.add_argument("--server-name", metavar="NAME",
                        help="name the server's certificate must carry (default: the service's name, "
                             "else the address's host)")
    parser.add_argument("--timeout", type=float, default=TIMEOUT_SECONDS, help="deadline in seconds (%(default)s)")
    args = parser.parse_args(argv)
    try:
        tls = tls_settings(args, os.environ if env is None else env)
        status = check(args.address, args.timeout, tls)
    except UsageError as exc:
        parser.error(str(exc))
    except OSError as exc:  # a certificate, key or CA file that cannot be read: unhealthy, and why
        status = f"cannot read {exc.filename}: {exc.strerror}"
    print(f"{args.address}: {status}")
    return 0 if status == "SERVING" else 1


if __name__ == "__main__":
    sys.exit(main())
