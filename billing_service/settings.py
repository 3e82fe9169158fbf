from __future__ import annotations

from pydantic import FilePath
from pydantic_settings import SettingsConfigDict

from billing_service.domain.price_book import DEFAULT_PRICE_BOOK
from chassis.settings import DatabaseUrl, HostPort, ServiceSettings


class BillingSettings(ServiceSettings):
    model_config = SettingsConfigDict(env_prefix="BILLING_")

    listen_addr: HostPort = "127.0.0.1:50053"
    database_url: DatabaseUrl = "sqlite:///data/billing.db"
    # The price book an operator publishes (its content is checked when it is loaded).
    price_book_path: FilePath = DEFAULT_PRICE_BOOK
