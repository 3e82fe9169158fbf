"""Internal credentials: internal services accept calls from the gateway only.

Under mutual TLS (chassis.tls) the caller is the peer its verified certificate names: a call is let
in when that certificate names the gateway (``CLOUDIMG_INTERNAL_PEER``), whatever its metadata says.
On plaintext (loopback only, see chassis.settings) the gateway sends a shared secret instead, which
is compared in constant time. Either way the call names the caller's account, which the gateway
authenticated.
"""

from __future__ import annotations

import hmac
from collections.abc import Mapping

import grpc

from chassis import context, errors
from chassis.clients import ACCOUNT_KEY, INTERNAL_TOKEN_KEY
from chassis.rpc import Authenticate
from chassis.tls import peer_names

_NOT_THE_GATEWAY = "this service accepts calls from the cloudimg gateway only"


def internal_caller(internal_token: str | None, gateway_peer: str, mutual_tls: bool) -> Authenticate:
    expected = (internal_token or "").encode()

    def from_gateway(metadata: Mapping[str, str], ctx: grpc.aio.ServicerContext) -> bool:
        if mutual_tls:
            return gateway_peer in peer_names(ctx.peer_identities())
        presented = metadata.get(INTERNAL_TOKEN_KEY, "").encode()
        return bool(expected) and hmac.compare_digest(presented, expected)

    def authenticate(metadata: Mapping[str, str], ctx: grpc.aio.ServicerContext) -> context.Caller:
        if not from_gateway(metadata, ctx):
            raise errors.Unauthenticated("INTERNAL_CREDENTIAL_INVALID", _NOT_THE_GATEWAY)
        account_id = metadata.get(ACCOUNT_KEY, "")
        if not account_id:
            raise errors.Unauthenticated("CALLER_ACCOUNT_MISSING", "the call does not name the caller's account")
        return context.Caller(account_id=account_id)

    return authenticate
