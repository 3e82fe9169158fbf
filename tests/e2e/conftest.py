from __future__ import annotations

from collections.abc import Iterator

import pytest

from devtools.stack import Stack
from tests.conftest import BOTH_DATABASES, running_stack


@pytest.fixture(scope="session", params=BOTH_DATABASES)
def stack(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    """The four services as real processes for the whole e2e session: once on SQLite files, once
    with each service on its own PostgreSQL database."""
    with running_stack(request, tmp_path_factory.mktemp(request.param)) as running:
        yield running
