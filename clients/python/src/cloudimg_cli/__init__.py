"""The `cloudimg` command-line client for the cloudimg public gRPC API."""

from importlib import metadata

# The version when the package is not installed (run from a checkout); keep it equal to pyproject.toml's.
FALLBACK_VERSION = "0.1.0"


def version() -> str:
    """The installed package's version (pyproject.toml's), else FALLBACK_VERSION."""
    try:
        return metadata.version("cloudimg")
    except metadata.PackageNotFoundError:
        return FALLBACK_VERSION
