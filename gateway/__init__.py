"""gateway: the public API, accounts and API keys, instances, and the launch that composes the contexts."""
