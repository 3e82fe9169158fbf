"""TLS on the wire: the session stack serves TLS at the gateway and mutual TLS inside (devtools.stack).

A client must trust the stack's CA to reach the gateway; an internal service lets a call in only over a
certificate its private CA issued, and serves its API only to the certificate that names the gateway
(health and reflection answer any certificate of that CA, for probes). No internal token exists.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable

import grpc
import pytest
import trustme
from cloudimg.catalog.v1 import catalog_service_pb2, catalog_service_pb2_grpc
from cloudimg.gateway.v1 import image_service_pb2, image_service_pb2_grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from catalog_service.domain.seed import seed_image_id
from devtools.stack import Stack
from tests.conftest import ALICE, rich_status

GZ = "ap-guangzhou"
GET_IMAGE = catalog_service_pb2.GetImageRequest(image_id=seed_image_id(GZ, "alice-web"))


def _list_regions(stack: Stack, channel: grpc.Channel) -> image_service_pb2.ListRegionsResponse:
    stub = image_service_pb2_grpc.ImageServiceStub(channel)
    response: image_service_pb2.ListRegionsResponse = stub.ListRegions(
        image_service_pb2.ListRegionsRequest(), metadata=(("authorization", f"Bearer {stack.api_keys['alice']}"),),
        timeout=5)
    return response


def _refused(call: Callable[[], object]) -> grpc.RpcError:
    with pytest.raises(grpc.RpcError) as error:
        call()
    return error.value


def test_the_stack_runs_tls_and_has_no_internal_token(stack: Stack) -> None:
    assert stack.tls
    for service in ("catalog", "sharing", "billing", "gateway"):
        assert "CLOUDIMG_INTERNAL_TOKEN" not in stack.env(service)
    with stack.channel() as channel:
        assert _list_regions(stack, channel).regions


def test_a_client_without_the_ca_cannot_reach_the_gateway(stack: Stack) -> None:
    with grpc.insecure_channel(stack.gateway_addr) as plaintext:
        assert _refused(lambda: _list_regions(stack, plaintext)).code() == grpc.StatusCode.UNAVAILABLE
    with grpc.secure_channel(stack.gateway_addr, grpc.ssl_channel_credentials()) as system_roots:
        assert _refused(lambda: _list_regions(stack, system_roots)).code() == grpc.StatusCode.UNAVAILABLE
    stranger = trustme.CA()
    with grpc.secure_channel(stack.gateway_addr, grpc.ssl_channel_credentials(stranger.cert_pem.bytes())) as other:
        assert _refused(lambda: _list_regions(stack, other)).code() == grpc.StatusCode.UNAVAILABLE


def _catalog(stack: Stack, credentials: grpc.ChannelCredentials | None) -> grpc.Channel:
    addr = stack.addr("catalog")
    return grpc.insecure_channel(addr) if credentials is None else grpc.secure_channel(addr, credentials)


def _certificate_of(ca: trustme.CA, name: str, trusted_ca: bytes) -> grpc.ChannelCredentials:
    issued = ca.issue_cert(name, "127.0.0.1")
    return grpc.ssl_channel_credentials(trusted_ca, issued.private_key_pem.bytes(), issued.cert_chain_pems[0].bytes())


@pytest.mark.parametrize("client", ["plaintext", "no client certificate", "a certificate of another CA"])
def test_an_internal_service_refuses_a_caller_without_a_certificate_of_its_ca(stack: Stack, client: str) -> None:
    ca = stack.certificate("ca")
    credentials = {
        "plaintext": None,
        "no client certificate": grpc.ssl_channel_credentials(ca),
        "a certificate of another CA": _certificate_of(trustme.CA(), "gateway", ca),
    }[client]
    with _catalog(stack, credentials) as channel:
        stub = catalog_service_pb2_grpc.CatalogServiceStub(channel)
        error = _refused(lambda: stub.GetImage(GET_IMAGE, metadata=stack.internal_metadata(ALICE), timeout=5))
        assert error.code() == grpc.StatusCode.UNAVAILABLE  # the handshake fails: nothing reached the service
        health = health_pb2_grpc.HealthStub(channel)
        assert _refused(lambda: health.Check(health_pb2.HealthCheckRequest(), timeout=5)).code() == \
            grpc.StatusCode.UNAVAILABLE


def test_a_certificate_of_the_ca_that_does_not_name_the_gateway_gets_health_only(stack: Stack) -> None:
    """Billing's own certificate is from the right CA: the handshake succeeds, health answers (a probe),
    the API refuses it whatever its metadata claims."""
    ca = stack.certificate("ca")
    billing = grpc.ssl_channel_credentials(ca, stack.key_file("billing").read_bytes(), stack.certificate("billing"))
    with _catalog(stack, billing) as channel:
        health = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=5)
        assert health.status == health_pb2.HealthCheckResponse.SERVING
        stub = catalog_service_pb2_grpc.CatalogServiceStub(channel)
        forged = (*stack.internal_metadata(ALICE), ("x-cloudimg-internal-token", "a-guessed-token-0123456789"))
        error = _refused(lambda: stub.GetImage(GET_IMAGE, metadata=forged, timeout=5))
        assert error.code() == grpc.StatusCode.UNAUTHENTICATED
        assert rich_status(error)[1].reason == "INTERNAL_CREDENTIAL_INVALID"


def test_the_gateways_certificate_is_its_credential_and_the_account_is_still_required(stack: Stack) -> None:
    with stack.channel("catalog") as channel:
        stub = catalog_service_pb2_grpc.CatalogServiceStub(channel)
        assert stub.GetImage(GET_IMAGE, metadata=stack.internal_metadata(ALICE), timeout=5).image.image_id
        error = _refused(lambda: stub.GetImage(GET_IMAGE, timeout=5))
        assert error.code() == grpc.StatusCode.UNAUTHENTICATED
        assert rich_status(error)[1].reason == "CALLER_ACCOUNT_MISSING"


def test_the_cli_needs_the_ca_to_reach_a_tls_gateway(stack: Stack) -> None:
    env = {**os.environ, "CLOUDIMG_API_KEY": stack.api_keys["alice"]}
    for name in ("CLOUDIMG_CA_CERT", "CLOUDIMG_TLS", "CLOUDIMG_ENDPOINT"):
        env.pop(name, None)

    def cli(*flags: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "cloudimg_cli.main", *flags, "regions"], env=env,
                              capture_output=True, text=True, timeout=30)

    trusted = cli(*stack.cli_args())
    assert trusted.returncode == 0, trusted.stderr
    assert GZ in trusted.stdout, trusted.stderr
    for flags in (["--endpoint", stack.gateway_addr], ["--endpoint", stack.gateway_addr, "--tls"]):
        refused = cli(*flags)
        assert refused.returncode == 1, refused.stderr
        assert "UNAVAILABLE" in refused.stderr, refused.stderr
        assert "Traceback" not in refused.stderr
    missing = cli("--endpoint", stack.gateway_addr, "--ca-cert", str(stack.data_dir / "no-such-ca.pem"))
    assert missing.returncode == 2
    assert "no-such-ca.pem" in missing.stderr
    assert "Traceback" not in missing.stderr
