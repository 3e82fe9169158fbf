from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from devtools.stack import Stack


@pytest.fixture(scope="session", params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def stack(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    """The four services as real processes for the whole e2e session: once on SQLite files, once
    with each service on its own PostgreSQL database."""
    urls = {}
    if request.param == "postgres":
        new_database = request.getfixturevalue("postgres_databases")
        urls = {service: new_database() for service in ("catalog", "sharing", "billing", "gateway")}
    with Stack(Path(tmp_path_factory.mktemp(request.param)), database_urls=urls) as running:
        yield running
