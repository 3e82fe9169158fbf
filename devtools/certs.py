"""A development and demo PKI: a private CA and a certificate and key per service, made with trustme.

    python -m devtools.certs deploy/certs [--namespace cloudimg] [--names api.example.com 203.0.113.7]

writes ``ca.pem`` and ``<service>.pem`` / ``<service>.key`` for catalog, sharing, billing and gateway.
Each certificate names its service as compose and Kubernetes reach it (``catalog``,
``catalog.<namespace>.svc``, ``catalog.<namespace>.svc.cluster.local``) and this machine (``localhost``,
``127.0.0.1``), and may serve and be presented as a client certificate: the health checks present
the service's own, and ``gateway.pem`` is both the gateway's public certificate and the client
certificate it calls the internal services with (it names ``gateway``). ``--names`` adds the names
clients dial the gateway by (its load balancer's DNS name or address).

The CA's private key is not kept: to add a name or replace a certificate, make the whole set again
(``--force``) and restart the services. Keys are readable by every user (0644) because compose
bind-mounts secrets with the host file's owner and mode, and the containers run as uid 10001; the
folder itself is made readable by its owner only. Production uses its own PKI (e.g. cert-manager).
"""

from __future__ import annotations

import argparse
import datetime
import sys
from collections.abc import Iterable, Sequence
from pathlib import Path

SERVICES = ("catalog", "sharing", "billing", "gateway")
DEFAULT_NAMESPACE = "cloudimg"
DEFAULT_DAYS = 365
KEY_MODE = 0o644  # see the module's docstring: compose secrets keep the host file's mode
DIR_MODE = 0o700


def names_of(service: str, namespace: str, extra: Iterable[str] = ()) -> list[str]:
    """The subject alternative names of a service's certificate, the first the one the gateway dials."""
    return [service, f"{service}.{namespace}.svc", f"{service}.{namespace}.svc.cluster.local",
            "localhost", "127.0.0.1", *extra]


def issue(directory: Path, namespace: str = DEFAULT_NAMESPACE, gateway_names: Sequence[str] = (),
          days: int = DEFAULT_DAYS) -> dict[str, Path]:
    """Writes the CA and each service's certificate and key into directory; returns the paths by
    file name (ca.pem, catalog.pem, catalog.key, ...)."""
    import trustme  # a development dependency: only this command needs it

    ca = trustme.CA(organization_name="cloudimg development CA")
    not_after = datetime.datetime.now(datetime.UTC) + datetime.timedelta(days=days)
    # Every certificate first, so that a name trustme refuses leaves no half-written set behind.
    leaves = {
        service: ca.issue_cert(*names_of(service, namespace, gateway_names if service == "gateway" else ()),
                               common_name=service, organization_name="cloudimg",
                               organization_unit_name=service, not_after=not_after)
        for service in SERVICES
    }
    directory.mkdir(mode=DIR_MODE, parents=True, exist_ok=True)
    written = {"ca.pem": directory / "ca.pem"}
    ca.cert_pem.write_to_path(written["ca.pem"])
    for service, leaf in leaves.items():
        cert, key = directory / f"{service}.pem", directory / f"{service}.key"
        leaf.cert_chain_pems[0].write_to_path(cert)
        leaf.private_key_pem.write_to_path(key)
        key.chmod(KEY_MODE)
        written.update({cert.name: cert, key.name: key})
    return written


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m devtools.certs", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("directory", type=Path, help="where to write the files (e.g. deploy/certs, git-ignored)")
    parser.add_argument("--namespace", default=DEFAULT_NAMESPACE,
                        help="the Kubernetes namespace the services' DNS names are in (%(default)s)")
    parser.add_argument("--names", nargs="+", default=[], metavar="NAME",
                        help="more DNS names or IP addresses for the gateway's certificate")
    parser.add_argument("--days", type=int, default=DEFAULT_DAYS, help="validity of the certificates (%(default)s)")
    parser.add_argument("--force", action="store_true", help="replace a set already in the directory")
    args = parser.parse_args(argv)
    if args.days < 1:
        parser.error("--days must be at least 1")
    if (args.directory / "ca.pem").exists() and not args.force:
        print(f"{args.directory / 'ca.pem'} exists: the services trust it; replace the set with --force",
              file=sys.stderr)
        return 1
    try:
        written = issue(args.directory, args.namespace, args.names, args.days)
    except ValueError as exc:  # a name trustme cannot put in a certificate
        parser.error(str(exc))
    except OSError as exc:
        print(f"cannot write {exc.filename}: {exc.strerror}", file=sys.stderr)
        return 1
    print("\n".join(str(path) for path in written.values()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
