from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from devtools.stack import Stack


@pytest.fixture(scope="session")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    """The four services as real processes on SQLite, for the whole e2e session."""
    with Stack(Path(tmp_path_factory.mktemp("stack"))) as running:
        yield running
