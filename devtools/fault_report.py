"""The README's reliability table, from the figures of the fault suite: ``python -m devtools.fault_report``.

Each test in tests/fault records what it did (calls made, processes killed or signalled, anything lost)
and the suite writes them to build/fault-report.json. This rewrites the part of README.md between the
lines ``<!-- fault-report:start -->`` and ``<!-- fault-report:end -->`` with a table of them: each test,
what it attacks, its figures, and the date and the totals. Nothing else in the README changes; without
the markers it says so and exits 1.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from pathlib import Path

START, END = "<!-- fault-report:start -->", "<!-- fault-report:end -->"
_ROOT = Path(__file__).resolve().parent.parent

# What each test of the suite attacks, in one line, under the name it records its figures by.
ATTACKS: dict[str, str] = {
    "test_a_restarted_dependency_is_served_at_once_and_no_call_fails_once_it_is_serving":
        "sharing and billing SIGKILLed and restarted 20 times under load: no call fails once it is SERVING again",
    "test_sigterm_lets_every_call_in_flight_finish_then_exits_cleanly":
        "each of the four services SIGTERMed with 50 calls in flight: every call finishes, it exits with 0",
    "test_a_catalog_killed_mid_import_and_mid_sync_finishes_both_jobs":
        "the catalog SIGKILLed in the middle of an import and of a sync: both jobs finish, with the right bytes",
    "test_calls_that_fail_while_billing_is_killed_are_never_charged":
        "billing SIGKILLed again and again under a load of launches: no failed launch is charged",
    "test_launches_and_resets_survive_billing_and_the_gateway_killed_at_random":
        "billing and the gateway SIGKILLed at random during 100 launches and 40 resets: each launch has its "
        "instances and one charge, each reset is done once",
    "test_fuzzed_calls_to_every_public_rpc_get_a_clean_rich_error_or_an_answer":
        "every public RPC fuzzed (fields from the descriptors, hostile values, garbage bodies, bad metadata): no "
        "UNKNOWN, no INTERNAL, no exception or SQL text, no service exit",
    "test_a_strangers_id_is_answered_as_a_missing_one":
        "every public RPC taking an id, called with another account's id: the same bytes as for a missing id",
    "test_a_stranger_replaying_the_owners_request_id_is_answered_as_without_it":
        "another account's request ids replayed by a stranger: answered as if they were new",
    "test_the_matrix_covers_every_id_taking_rpc":
        "the authorization matrix covers every id field of the public API (a new one fails until it is added)",
}
# Figures that count the faults a test put the stack through, and those that count something lost.
FAULTS = ("kills", "restarts", "signals")
LOSSES = ("lost", "duplicate_charges", "stray_charges", "stray_instances", "failed_while_serving", "failed")
_SHOWN = ("calls", *FAULTS, *LOSSES)

Figures = Mapping[str, Mapping[str, float]]


class ReportError(Exception):
    """Why the README cannot be rewritten; said to the user as it is."""


def _number(value: float) -> str:
    return f"{int(value):,}" if float(value).is_integer() else f"{value:,.3f}"


def _sum(numbers: Mapping[str, float], keys: Sequence[str]) -> float:
    return sum(numbers.get(key, 0) for key in keys)


def table(figures: Figures, day: str) -> list[str]:
    """The lines of the section: a summary with the date, then one row per test and the totals."""
    names = [name for name in ATTACKS if name in figures] + sorted(set(figures) - set(ATTACKS))
    rows, totals = [], {"calls": 0.0, "faults": 0.0, "lost": 0.0}
    for name in names:
        numbers = figures[name]
        counted = {"calls": numbers.get("calls", 0), "faults": _sum(numbers, FAULTS), "lost": _sum(numbers, LOSSES)}
        for key, value in counted.items():
            totals[key] += value
        others = ", ".join(f"{key.replace('_', ' ')} {_number(value)}" for key, value in sorted(numbers.items())
                           if key not in _SHOWN)
        calls = _number(counted["calls"]) if "calls" in numbers else "—"
        rows.append(f"| `{name}` | {ATTACKS.get(name, '(not described yet)')} | {calls} | "
                    f"{_number(counted['faults'])} | {_number(counted['lost'])} | {others} |")
    return [
        f"The fault suite's figures of {day} (`make fault-report`): {len(names)} tests, "
        f"{_number(totals['calls'])} calls, {_number(totals['faults'])} faults survived "
        f"(kills, restarts, signals), {_number(totals['lost'])} lost.",
        "Figures are summed over the runs on SQLite and on PostgreSQL (RPCs covered: the most in one run).",
        "",
        "| Test | What it attacks | Calls | Faults survived | Lost | Other figures |",
        "|---|---|---:|---:|---:|---|",
        *rows,
        f"| **Total** | | {_number(totals['calls'])} | {_number(totals['faults'])} | {_number(totals['lost'])} | |",
    ]


def rewritten(readme: str, section: Sequence[str]) -> str:
    """The README with the lines between its markers replaced by ``section``; the rest as it was."""
    lines = readme.splitlines(keepends=True)
    stripped = [line.strip() for line in lines]
    if START not in stripped or END not in stripped or stripped.index(END) < stripped.index(START):
        raise ReportError(f"README has no '{START}' line followed by an '{END}' line: add them where the "
                          "fault report belongs")
    start, end = stripped.index(START), stripped.index(END)
    newline = "\r\n" if lines[start].endswith("\r\n") else "\n"
    return "".join(lines[:start + 1]) + "".join(line + newline for line in section) + "".join(lines[end:])


def read_figures(report: Path) -> tuple[Figures, str]:
    """The figures of the suite and the day (UTC) they were written."""
    try:
        figures = json.loads(report.read_text())
    except FileNotFoundError:
        raise ReportError(f"no {report}: run the fault suite first (pytest tests/fault)") from None
    except json.JSONDecodeError as exc:
        raise ReportError(f"{report} is not JSON: {exc}") from None
    if not isinstance(figures, dict) or not all(isinstance(v, dict) for v in figures.values()):
        raise ReportError(f"{report} does not hold figures per test")
    day = datetime.fromtimestamp(report.stat().st_mtime, UTC).strftime("%Y-%m-%d")
    return figures, day


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m devtools.fault_report",
                                     description="Writes the fault suite's figures into the README's table.")
    parser.add_argument("--report", type=Path, default=_ROOT / "build" / "fault-report.json")
    parser.add_argument("--readme", type=Path, default=_ROOT / "README.md")
    args = parser.parse_args(argv)
    try:
        figures, day = read_figures(args.report)
        with args.readme.open(newline="") as file:  # as it is: its line endings too
            readme = file.read()
        args.readme.write_text(rewritten(readme, table(figures, day)), newline="")
    except (ReportError, FileNotFoundError) as exc:
        print(f"fault-report: {exc}", file=sys.stderr)
        return 1
    print(f"fault-report: {len(figures)} tests written to {args.readme}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
