"""cloudimg's Python client: the public API's generated code (``cloudimg.gateway.v1``), a small typed wrapper
(``Client``: TLS, the API key, request ids, deadlines, safe retries) and the errors' decoding."""

from importlib import metadata

from cloudimg_client.client import CallRecord, Client, Retry, channel_credentials, idempotency_field, open_channel
from cloudimg_client.errors import REQUEST_ID_KEY, OutcomeUnknown, error_info, error_reason, request_id_of

__all__ = ["REQUEST_ID_KEY", "CallRecord", "Client", "OutcomeUnknown", "Retry", "channel_credentials", "error_info",
           "error_reason", "idempotency_field", "open_channel", "request_id_of", "version"]

# The version when no distribution is installed (run from a checkout); keep it equal to the pyproject files'.
FALLBACK_VERSION = "0.1.0"


def version() -> str:
    """The installed distribution's version (cloudimg-client's, else the whole cloudimg's), else FALLBACK_VERSION."""
    for distribution in ("cloudimg-client", "cloudimg"):
        try:
            return metadata.version(distribution)
        except metadata.PackageNotFoundError:
            continue
    return FALLBACK_VERSION
