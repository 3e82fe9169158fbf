"""devtools.fault_report: the README's section between the markers becomes the fault suite's table, and
nothing else in the README changes."""

from __future__ import annotations

import json
import os
from datetime import UTC, datetime
from pathlib import Path

import pytest

from devtools import fault_report
from devtools.fault_report import END, START

BEFORE = "# cloudimg\n\nIntro.\n\n## Reliability\n\n"
AFTER = "\nMore text, with a table of its own:\n\n| a | b |\n|---|---|\n"
LAUNCH_KILLS = "test_launches_and_resets_survive_billing_and_the_gateway_killed_at_random"
FIGURES = {
    LAUNCH_KILLS: {"calls": 1093, "kills": 12, "launches": 200, "resets": 60, "lost": 0, "duplicate_charges": 0},
    "test_sigterm_lets_every_call_in_flight_finish_then_exits_cleanly": {"calls": 2500, "signals": 8, "failed": 0},
    "test_somebody_elses_attack": {"calls": 7, "leaks": 0, "seconds": 1.25},
    "test_a_catalog_killed_mid_import_and_mid_sync_finishes_both_jobs": {"kills": 4, "jobs": 4, "lost": 0},
}


@pytest.fixture
def files(tmp_path: Path) -> tuple[Path, Path]:
    report = tmp_path / "fault-report.json"
    report.write_text(json.dumps(FIGURES))
    moment = datetime(2025, 3, 4, 12, tzinfo=UTC).timestamp()
    os.utime(report, (moment, moment))
    readme = tmp_path / "README.md"
    readme.write_text(f"{BEFORE}{START}\nan old table\n{END}\n{AFTER}")
    return report, readme


def run(report: Path, readme: Path) -> int:
    return fault_report.main(["--report", str(report), "--readme", str(readme)])


def section(readme: Path) -> list[str]:
    text = readme.read_text()
    return text[text.index(START) + len(START):text.index(END)].strip().splitlines()


def test_the_section_between_the_markers_becomes_the_table_and_the_rest_stays(files: tuple[Path, Path]) -> None:
    report, readme = files
    assert run(report, readme) == 0
    text = readme.read_text()
    assert text.startswith(BEFORE + START + "\n")
    assert text.endswith(END + "\n" + AFTER)
    lines = section(readme)
    assert "an old table" not in text
    assert lines[0].startswith("The fault suite's figures of 2025-03-04")
    assert "4 tests, 3,600 calls, 24 faults survived" in lines[0]
    assert lines[0].endswith(", 0 lost.")
    rows = {line.split(" | ")[0].strip("| `"): line for line in lines if line.startswith("| `")}
    assert list(rows) == [  # the known tests in the suite's order, then the others by name
        "test_sigterm_lets_every_call_in_flight_finish_then_exits_cleanly",
        "test_a_catalog_killed_mid_import_and_mid_sync_finishes_both_jobs", LAUNCH_KILLS, "test_somebody_elses_attack"]
    assert rows[LAUNCH_KILLS] == (f"| `{LAUNCH_KILLS}` | {fault_report.ATTACKS[LAUNCH_KILLS]} | 1,093 | 12 | 0 | "
                                  "launches 200, resets 60 |")
    assert "(not described yet) | 7 | 0 | 0 | leaks 0, seconds 1.250 |" in rows["test_somebody_elses_attack"]
    assert rows["test_a_catalog_killed_mid_import_and_mid_sync_finishes_both_jobs"].endswith(
        "| — | 4 | 0 | jobs 4 |")  # no calls recorded: none shown
    assert lines[-1] == "| **Total** | | 3,600 | 24 | 0 | |"


def test_anything_lost_shows_in_its_row_and_the_total(files: tuple[Path, Path]) -> None:
    report, readme = files
    report.write_text(json.dumps({LAUNCH_KILLS: {"calls": 10, "kills": 2, "lost": 1, "duplicate_charges": 2}}))
    assert run(report, readme) == 0
    lines = section(readme)
    assert lines[0].endswith("3 lost.")
    assert lines[-2].endswith("| 10 | 2 | 3 |  |")
    assert lines[-1] == "| **Total** | | 10 | 2 | 3 | |"


def test_a_second_run_changes_nothing(files: tuple[Path, Path]) -> None:
    report, readme = files
    assert run(report, readme) == 0
    first = readme.read_bytes()
    assert run(report, readme) == 0
    assert readme.read_bytes() == first


def test_line_endings_outside_the_section_are_kept(files: tuple[Path, Path]) -> None:
    report, readme = files
    readme.write_bytes(f"{BEFORE}{START}\n{END}\n{AFTER}".replace("\n", "\r\n").encode())
    assert run(report, readme) == 0
    written = readme.read_bytes()
    assert written.startswith(BEFORE.replace("\n", "\r\n").encode())
    assert b"\n" not in written.replace(b"\r\n", b"")


@pytest.mark.parametrize("text", ["no markers at all\n", f"only the start\n{START}\n", f"{END}\nreversed\n{START}\n"])
def test_without_both_markers_in_order_it_says_so_exits_1_and_changes_nothing(
        files: tuple[Path, Path], capsys: pytest.CaptureFixture[str], text: str) -> None:
    report, readme = files
    readme.write_text(text)
    assert run(report, readme) == 1
    assert readme.read_text() == text
    assert START in capsys.readouterr().err


def test_without_the_suites_figures_it_says_so_and_exits_1(
        files: tuple[Path, Path], capsys: pytest.CaptureFixture[str]) -> None:
    report, readme = files
    before = readme.read_text()
    report.unlink()
    assert run(report, readme) == 1
    assert "run the fault suite first" in capsys.readouterr().err
    assert readme.read_text() == before
