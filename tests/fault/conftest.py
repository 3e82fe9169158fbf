"""The standing fault and attack suite: real processes attacked, killed and restarted.

Each test records what it did in ``figures`` (calls made, processes killed, faults survived, anything
lost); at the end of the session they are written to build/fault-report.json, which ``make
fault-report`` turns into the README's reliability table.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest

from devtools.stack import Stack
from tests.conftest import BOTH_DATABASES, running_stack

REPORT = Path(__file__).resolve().parents[2] / "build" / "fault-report.json"
_figures: dict[str, dict[str, int | float]] = {}


class Figures:
    """What one test did, under its name in the report: ``figures.add(calls=1200, kills=8, lost=0)``
    adds to the numbers already recorded (a parametrized test sums its runs)."""

    def __init__(self, name: str):
        self._entry = _figures.setdefault(name, {})

    def add(self, **numbers: int | float) -> None:
        for key, value in numbers.items():
            self._entry[key] = self._entry.get(key, 0) + value

    def most(self, **numbers: int | float) -> None:
        """Numbers that are not summed over runs (how many RPCs a test covers): the largest is kept."""
        for key, value in numbers.items():
            self._entry[key] = max(self._entry.get(key, value), value)


@pytest.fixture
def figures(request: pytest.FixtureRequest) -> Figures:
    return Figures(request.node.originalname)


def pytest_sessionfinish(session: pytest.Session) -> None:
    if _figures:
        REPORT.parent.mkdir(exist_ok=True)
        REPORT.write_text(json.dumps(_figures, indent=2, sort_keys=True) + "\n")


@pytest.fixture(scope="session", params=BOTH_DATABASES)
def stack(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    """One stack for the session's attacks that leave it running (fuzzing, authorization)."""
    with running_stack(request, tmp_path_factory.mktemp(f"fault-{request.param}")) as running:
        yield running


@pytest.fixture(scope="module", params=BOTH_DATABASES)
def own_stack(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    """A stack for one module's tests that kill and stop its processes, with the module's ``STACK_ENV``
    settings (e.g. a short retry interval) if it has any."""
    env = dict(getattr(request.module, "STACK_ENV", {}))
    with running_stack(request, tmp_path_factory.mktemp(f"own-{request.param}"), extra_env=env) as running:
        yield running
