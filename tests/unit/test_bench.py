"""make bench's verdicts: each goal's figure from the runs it names, against its target, PASS or FAIL (or not
measured), and its report files named per database."""

from __future__ import annotations

import argparse

import pytest

from devtools import bench
from devtools.loadgen import Report, ResultDetail, RunOptions, _report

ARGS = argparse.Namespace(concurrency=50, launches=100_000, listing_others=1_000_000)


def run(name: str, calls: int, seconds: float, latency_ms: float, failed: int = 0) -> Report:
    results = [ResultDetail(0, int(latency_ms * 1e6), "boom" if n < failed else "", "Unknown" if n < failed else "OK")
               for n in range(calls)]
    return _report(RunOptions(name=name), results, int(seconds * 1e9), "normal")


def measured() -> bench.Measured:
    m = bench.Measured("sqlite")
    m.reports = [
        run("echo c=50", 5000, 1.0, 10), run("RunInstances c=50", 1000, 1.0, 50),
        run("RunInstances c=1", 100, 1.0, 2.5),
        run("QuoteRunInstances c=50", 2000, 1.0, 20), run("GetImage c=50", 1500, 1.0, 30),
        run("ListImages first page small c=1", 100, 1.0, 4), run("ListImages first page large c=1", 100, 1.0, 8),
    ]
    m.cpu_ms = {"RunInstances c=50": 4.0, "RunInstances-100 c=50": 5.0}
    m.figures = {"startup_seconds_catalog": 0.5, "startup_seconds_gateway": 3.5, "rss_idle_mib_catalog": 70.0,
                 "rss_after_tenth_mib_catalog": 70.0, "rss_after_all_mib_catalog": 75.0}
    return m


def verdicts() -> dict[str, tuple[float | None, bool | None]]:
    return {goal.what: (goal.figure, goal.passed) for goal in bench.goals(measured(), ARGS)}


def test_each_goal_is_its_figure_against_its_target() -> None:
    found = verdicts()
    assert found["RunInstances rps / echo rps at c=50"] == (0.2, True)
    assert found["RunInstances p50 at c=1 (ms)"] == (2.5, True)
    assert found["QuoteRunInstances rps / echo rps at c=50"] == (0.4, True)
    assert found["GetImage rps / echo rps at c=50"] == (0.3, False)
    assert found["CPU of RunInstances x100 / CPU of x1"] == (1.25, True)
    assert found["ListImages first page p50: 1,000,000 others / 1,000"] == (2.0, False)
    assert found["slowest service SERVING after start (s)"] == (3.5, False)
    figure, passed = found["RSS after 100,000 launches / after 10,000 (max)"]
    assert figure is not None
    assert round(figure, 3) == 1.071
    assert passed is True


def test_a_goal_without_its_runs_is_not_measured_rather_than_passed() -> None:
    found = verdicts()
    assert found["ListImages page 20 p50: 1,000,000 others / 1,000"] == (None, None)
    assert found["GetImage own p50: 1,000,000 others / 1,000"] == (None, None)


def test_failed_launches_fail_the_error_goal() -> None:
    m = measured()
    m.reports.append(run("launches-all", 100, 1.0, 5, failed=2))
    (errors,) = [g for g in bench.goals(m, ARGS) if g.what == "RunInstances errors"]
    assert (errors.figure, errors.passed) == (2.0, False)
    assert "FAIL" in errors.row()


def test_report_files_are_named_per_database_and_run() -> None:
    assert bench.report_file("postgres", "ListImages page 20 large c=1") == "postgres-ListImages-page-20-large-c1.json"


def test_repeated_listing_runs_are_compared_by_their_medians() -> None:
    m = measured()
    m.reports = [r for r in m.reports if not r.name.startswith("ListImages")] + [
        run(f"ListImages first page {phase} c=1 #{n}", 100, 1.0, latency)
        for phase, latencies in (("small", (4, 9, 5)), ("large", (6, 5, 20))) for n, latency in enumerate(latencies, 1)]
    found = {goal.what: goal for goal in bench.goals(m, ARGS)}
    listing = found["ListImages first page p50: 1,000,000 others / 1,000"]
    assert listing.figure == pytest.approx(6 / 5, rel=0.01)  # median 6 ms against median 5 ms: one slow run each
    assert listing.passed


def test_p2_compares_the_median_cpu_of_the_launches_repeated_in_turn() -> None:
    m = measured()
    m.cpu_ms.update({"RunInstances c=50 #1": 3.0, "RunInstances c=50 #2": 4.5, "RunInstances c=50 #3": 3.5,
                     "RunInstances-100 c=50 #1": 6.0, "RunInstances-100 c=50 #2": 5.5, "RunInstances-100 c=50 #3": 9.0})
    found = {goal.what: (goal.figure, goal.passed) for goal in bench.goals(m, ARGS)}
    # medians: 3.75 (3.0, 3.5, 4.0, 4.5) and 5.75 (5.0, 5.5, 6.0, 9.0)
    figure, passed = found["CPU of RunInstances x100 / CPU of x1"]
    assert figure == pytest.approx(5.75 / 3.75)
    assert passed is False
