from __future__ import annotations

from pathlib import Path

from pydantic_settings import SettingsConfigDict

from billing_service.domain.price_book import DEFAULT_PRICE_BOOK
from chassis.settings import ServiceSettings


class BillingSettings(ServiceSettings):
    model_config = SettingsConfigDict(env_prefix="BILLING_")

    listen_addr: str = "127.0.0.1:50053"
    database_url: str = "sqlite:///data/billing.db"
    # The price book an operator publishes.
    price_book_path: Path = DEFAULT_PRICE_BOOK
