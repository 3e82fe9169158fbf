"""The `cloudimg` command-line client for the cloudimg public gRPC API (built on cloudimg_client)."""

from cloudimg_client import FALLBACK_VERSION, version

__all__ = ["FALLBACK_VERSION", "version"]
