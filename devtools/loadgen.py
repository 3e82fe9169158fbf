"""A small ghz-compatible load generator on grpc.aio, for `make bench` and tests.

``run_load`` runs ``total`` calls (or calls for ``duration`` seconds, whichever ends first) with
``concurrency`` workers that share whatever channel the caller's ``call`` uses, and reports like ghz:
``rps = count / total wall time``, percentiles over OK calls (nearest rank, as ghz), status codes by
name. ``call`` should carry its own gRPC deadline; calls still in flight ``grace`` seconds after
``duration`` are cancelled and counted as CANCELLED, so a run always ends by itself.
"""

from __future__ import annotations

import asyncio
import math
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import grpc

PERCENTILES = (50, 90, 95, 99)


@dataclass
class Report:
    name: str
    concurrency: int
    count: int
    total_seconds: float
    rps: float
    end_reason: str  # "normal" (all calls made) or "timeout" (duration reached), as ghz
    # Milliseconds, over OK calls (0 when there were none).
    average: float
    fastest: float
    slowest: float
    p50: float
    p90: float
    p95: float
    p99: float
    status_code_distribution: dict[str, int] = field(default_factory=dict)
    error_distribution: dict[str, int] = field(default_factory=dict)
    date: str = field(default_factory=lambda: datetime.now(UTC).isoformat(timespec="seconds"))

    @property
    def ok(self) -> int:
        return self.status_code_distribution.get("OK", 0)

    @property
    def failure_rate(self) -> float:
        return (self.count - self.ok) / self.count if self.count else 0.0

    def to_ghz_json(self) -> dict[str, Any]:
        """ghz's JSON report shape; durations are integer nanoseconds."""
        ns = lambda ms: round(ms * 1e6)  # noqa: E731
        return {
            "name": self.name,
            "endReason": self.end_reason,
            "date": self.date,
            "options": {"concurrency": self.concurrency},
            "count": self.count,
            "total": ns(self.total_seconds * 1e3),
            "average": ns(self.average),
            "fastest": ns(self.fastest),
            "slowest": ns(self.slowest),
            "rps": self.rps,
            "latencyDistribution": [{"percentage": p, "latency": ns(getattr(self, f"p{p}"))} for p in PERCENTILES],
            "statusCodeDistribution": dict(self.status_code_distribution),
            "errorDistribution": dict(self.error_distribution),
        }

    def summary(self) -> str:
        lines = [
            "", "Summary:",
            *([f"  Name:\t\t{self.name}"] if self.name else []),
            f"  Count:\t{self.count}",
            f"  Total:\t{_fmt_ms(self.total_seconds * 1e3)}",
            f"  Slowest:\t{_fmt_ms(self.slowest)}",
            f"  Fastest:\t{_fmt_ms(self.fastest)}",
            f"  Average:\t{_fmt_ms(self.average)}",
            f"  Requests/sec:\t{self.rps:.2f}",
            "", "Latency distribution:",
            *(f"  {p} % in {_fmt_ms(getattr(self, f'p{p}'))}" for p in PERCENTILES),
            "", "Status code distribution:",
            *(f"  [{code}]\t{n} responses" for code, n in self.status_code_distribution.items()),
        ]
        if self.error_distribution:
            lines += ["", "Error distribution:", *(f"  [{n}]\t{e}" for e, n in self.error_distribution.items())]
        return "\n".join(lines)


def _fmt_ms(ms: float) -> str:
    return f"{ms / 1e3:.2f} s" if ms >= 1e3 else f"{ms:.2f} ms"


def _percentile(ordered: list[float], p: int) -> float:
    """ghz's nearest rank: the value at rank ceil(p% of n), 1-based."""
    if not ordered:
        return 0.0
    return ordered[max(0, math.ceil(p / 100 * len(ordered)) - 1)]


async def run_load(
    call: Callable[[], Awaitable[object]],
    *,
    concurrency: int,
    total: int | None = None,
    duration: float | None = None,
    warmup: int = 0,
    name: str = "",
    grace: float = 5.0,
) -> Report:
    """Runs `warmup` unrecorded calls, then `total` calls or `duration` seconds of calls (or both:
    whichever ends first) with `concurrency` workers, and reports them as ghz would."""
    if total is None and duration is None:
        raise ValueError("give total, duration or both: the run must end by itself")
    if concurrency < 1 or (total is not None and total < 0) or (duration is not None and duration <= 0):
        raise ValueError("concurrency must be >= 1, total >= 0 and duration > 0")
    if warmup:
        await _run(call, concurrency, warmup, None, grace)
    return _report(name, concurrency, *(await _run(call, concurrency, total, duration, grace)))


async def _run(
    call: Callable[[], Awaitable[object]], concurrency: int, total: int | None, duration: float | None,
    grace: float,
) -> tuple[list[float], Counter[str], Counter[str], float, str]:
    latencies: list[float] = []  # seconds, OK calls only
    codes: Counter[str] = Counter()
    errors: Counter[str] = Counter()
    started = 0
    start = time.perf_counter()
    deadline = start + duration if duration is not None else math.inf

    async def worker() -> None:
        nonlocal started
        while (total is None or started < total) and time.perf_counter() < deadline:
            started += 1
            t0 = time.perf_counter()
            try:
                await call()
            except grpc.aio.AioRpcError as error:
                codes[error.code().name] += 1
                errors[f"{error.code().name}: {error.details() or ''}"] += 1
            except asyncio.CancelledError:  # still in flight at the hard stop
                codes["CANCELLED"] += 1
                errors["CANCELLED: still in flight when the run's time was up"] += 1
                raise
            else:
                latencies.append(time.perf_counter() - t0)
                codes["OK"] += 1

    workers = [asyncio.create_task(worker()) for _ in range(concurrency)]
    try:
        # A worker's own exception (a bug in `call`, not a gRPC error) propagates from here.
        done, pending = await asyncio.wait(workers, timeout=None if duration is None else duration + grace,
                                           return_when=asyncio.FIRST_EXCEPTION)
        for task in done:
            task.result()
    finally:
        for task in workers:
            task.cancel()
        await asyncio.gather(*workers, return_exceptions=True)
    elapsed = time.perf_counter() - start
    reason = "normal" if total is not None and started >= total else "timeout"
    return latencies, codes, errors, elapsed, reason


def _report(name: str, concurrency: int, latencies: list[float], codes: Counter[str], errors: Counter[str],
            elapsed: float, reason: str) -> Report:
    ordered = sorted(seconds * 1e3 for seconds in latencies)
    count = sum(codes.values())
    return Report(
        name=name, concurrency=concurrency, count=count, total_seconds=elapsed,
        rps=count / elapsed if elapsed > 0 else 0.0, end_reason=reason,
        average=sum(ordered) / len(ordered) if ordered else 0.0,
        fastest=ordered[0] if ordered else 0.0, slowest=ordered[-1] if ordered else 0.0,
        p50=_percentile(ordered, 50), p90=_percentile(ordered, 90),
        p95=_percentile(ordered, 95), p99=_percentile(ordered, 99),
        status_code_distribution=dict(codes.most_common()), error_distribution=dict(errors.most_common()),
    )
