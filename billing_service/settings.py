from __future__ import annotations

from typing import Annotated

from pydantic import Field, FilePath
from pydantic_settings import SettingsConfigDict

from billing_service.domain.price_book import DEFAULT_PRICE_BOOK
from chassis.settings import DatabaseUrl, HostPort, Seconds, ServiceSettings


class BillingSettings(ServiceSettings):
    model_config = SettingsConfigDict(env_prefix="BILLING_")

    listen_addr: HostPort = "127.0.0.1:50053"
    database_url: DatabaseUrl = "sqlite:///data/billing.db"
    # The price book an operator publishes (its content is checked when it is loaded).
    price_book_path: FilePath = DEFAULT_PRICE_BOOK
    # How often the usage of running hourly instances is settled into the ledger (each run charges the
    # hours completed since the last one).
    usage_settle_interval_seconds: Annotated[Seconds, Field(gt=0)] = 60.0
