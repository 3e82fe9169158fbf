from __future__ import annotations

from typing import Annotated, ClassVar

from pydantic import Field, FilePath, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from chassis.settings import DatabaseUrl, HostPort, Seconds, ServiceSettings, check_plaintext

DEFAULT_DATABASE_URL = "sqlite:///data/gateway.db"


class GatewaySettings(ServiceSettings):
    model_config = SettingsConfigDict(env_prefix="GATEWAY_")
    internal: ClassVar[bool] = False

    listen_addr: HostPort = "127.0.0.1:50050"
    database_url: DatabaseUrl = DEFAULT_DATABASE_URL
    # The downstream contexts; required.
    catalog_addr: HostPort = Field(validation_alias="CATALOG_ADDR")
    sharing_addr: HostPort = Field(validation_alias="SHARING_ADDR")
    billing_addr: HostPort = Field(validation_alias="BILLING_ADDR")
    # How long a verified API key is trusted before it is read again (0: read it on every call).
    api_key_cache_seconds: Annotated[Seconds, Field(ge=0)] = 30.0
    # The longest an open launch (IN_DOUBT, or PENDING with its call over) waits between two attempts to
    # settle it: its job is retried after 1 s, 2 s, 4 s... up to this; the floor keeps a tiny value from
    # spinning the worker.
    reconcile_interval_seconds: Annotated[Seconds, Field(ge=0.1)] = 5.0
    # A job's lease (settling a launch, ending usage, finishing a reset): a gateway that stops heartbeating for
    # this long (it died) loses its jobs to the other replicas, or to itself once restarted. Its jobs are one
    # billing call each, so the lease is short: an operation a dead gateway held waits at most this long.
    job_lease_seconds: Annotated[Seconds, Field(ge=1)] = 10.0
    # The client certificate the gateway presents to the internal services (mutual TLS, with
    # CLOUDIMG_INTERNAL_CA_FILE verifying theirs); it names the gateway (CLOUDIMG_INTERNAL_PEER).
    internal_cert_file: FilePath | None = None
    internal_key_file: FilePath | None = None

    @property
    def internal_tls(self) -> bool:
        return self.internal_ca_file is not None

    @model_validator(mode="after")
    def _downstream_transport(self) -> GatewaySettings:
        if self.internal_tls:
            if self.internal_cert_file is None or self.internal_key_file is None:
                raise ValueError("GATEWAY_INTERNAL_CERT_FILE and GATEWAY_INTERNAL_KEY_FILE: required with "
                                 "CLOUDIMG_INTERNAL_CA_FILE (the client certificate the internal services verify)")
            return self
        if self.internal_token is None:
            raise ValueError("CLOUDIMG_INTERNAL_TOKEN: required without CLOUDIMG_INTERNAL_CA_FILE (the internal "
                             "services then take the token as the proof that a call comes from the gateway)")
        for variable, addr in (("CATALOG_ADDR", self.catalog_addr), ("SHARING_ADDR", self.sharing_addr),
                               ("BILLING_ADDR", self.billing_addr)):
            check_plaintext(self, variable, addr, "CLOUDIMG_INTERNAL_CA_FILE")
        return self


class GatewayDatabaseSettings(BaseSettings):
    """Just the database, for administrative commands (demo-accounts)."""

    model_config = SettingsConfigDict(env_prefix="GATEWAY_", extra="ignore", hide_input_in_errors=True)

    database_url: DatabaseUrl = DEFAULT_DATABASE_URL
