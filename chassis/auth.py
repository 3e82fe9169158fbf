"""Internal credentials: internal services accept calls from the gateway only.

The gateway sends a shared secret with every call, together with the caller's account; an
internal service compares the secret in constant time and refuses anything else.
"""

from __future__ import annotations

import hmac
from collections.abc import Mapping

from chassis import context, errors
from chassis.clients import ACCOUNT_KEY, INTERNAL_TOKEN_KEY
from chassis.rpc import Authenticate


def internal_caller(internal_token: str) -> Authenticate:
    expected = internal_token.encode()

    def authenticate(metadata: Mapping[str, str]) -> context.Caller:
        presented = metadata.get(INTERNAL_TOKEN_KEY, "").encode()
        if not hmac.compare_digest(presented, expected):
            raise errors.Unauthenticated(
                "INTERNAL_CREDENTIAL_INVALID", "this service accepts calls from the cloudimg gateway only"
            )
        account_id = metadata.get(ACCOUNT_KEY, "")
        if not account_id:
            raise errors.Unauthenticated("CALLER_ACCOUNT_MISSING", "the call does not name the caller's account")
        return context.Caller(account_id=account_id)

    return authenticate
