from __future__ import annotations

from typing import Annotated

from pydantic import Field
from pydantic_settings import SettingsConfigDict

from chassis.settings import DatabaseUrl, HostPort, Seconds, ServiceSettings


class SharingSettings(ServiceSettings):
    model_config = SettingsConfigDict(env_prefix="SHARING_")

    listen_addr: HostPort = "127.0.0.1:50052"
    database_url: DatabaseUrl = "sqlite:///data/sharing.db"
    # How long the gateway may answer a public or marketplace image's launch verdict without asking again; an
    # UpdateTrustPolicy answers that much later than its commit, once no replica holds a verdict of the old policy.
    # The same on every replica. 0: no leases (every verdict is asked for).
    verdict_lease_seconds: Annotated[Seconds, Field(ge=0, le=5)] = 1.0
