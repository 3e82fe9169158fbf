"""The `cloudimg` command-line client for the cloudimg public gRPC API."""
