"""Shared helpers for the benchmarks: repo-root import path, timing, peak memory, plain-text tables.

Every benchmark measures its baseline in the same run and prints ratios against it (team rule: speed and
memory targets are checked here, not by timed tests).
"""

from __future__ import annotations

import os
import platform
import resource
import sys
import time
import tracemalloc
from contextlib import contextmanager
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
SHARED_DATA = REPO.parent / "shared" / "data"
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


class Timer:
    def __init__(self) -> None:
        self.seconds = 0.0

    def __enter__(self) -> "Timer":
        self._t0 = time.perf_counter()
        return self

    def __exit__(self, *exc: object) -> None:
        self.seconds = time.perf_counter() - self._t0


def best_of(fn, repeat: int = 1):
    """(best seconds, last result) over ``repeat`` calls."""
    best, result = float("inf"), None
    for _ in range(max(1, repeat)):
        t0 = time.perf_counter()
        result = fn()
        best = min(best, time.perf_counter() - t0)
    return best, result


@contextmanager
def traced_peak():
    """Peak Python/numpy heap (tracemalloc) above the level at entry, in bytes: ``with traced_peak() as p: ...;
    p["peak"]``. numpy reports its buffers to tracemalloc; BLAS scratch and TF allocations are not seen."""
    out = {"peak": 0}
    tracemalloc.start()
    tracemalloc.reset_peak()
    base, _ = tracemalloc.get_traced_memory()
    try:
        yield out
    finally:
        _, peak = tracemalloc.get_traced_memory()
        tracemalloc.stop()
        out["peak"] = peak - base


def maxrss_mb() -> float:
    """Process high-water mark RSS (Linux: ru_maxrss in KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def fmt(value, digits: int = 3) -> str:
    if isinstance(value, str):
        return value
    if value is None:
        return "-"
    if isinstance(value, int):
        return f"{value:,}"
    if abs(value) >= 1000:
        return f"{value:,.0f}"
    if abs(value) >= 100:
        return f"{value:.1f}"
    if abs(value) >= 1:
        return f"{value:.2f}"
    return f"{value:.{digits}f}"


def ratio(baseline_s: float, seconds: float) -> str:
    """Speed-up vs the baseline (baseline seconds / these seconds), e.g. '12.3x'."""
    if not seconds:
        return "-"
    r = baseline_s / seconds
    if r < 1:
        return f"{r:.2f}x"
    return f"{r:.1f}x" if r < 100 else f"{r:,.0f}x"


def print_table(title: str, headers: list[str], rows: list[list], notes: list[str] = ()) -> str:
    cells = [[fmt(c) for c in row] for row in rows]
    widths = [max(len(h), *(len(r[i]) for r in cells)) if cells else len(h) for i, h in enumerate(headers)]
    line = "  ".join(h.ljust(w) for h, w in zip(headers, widths))
    out = [title, line, "  ".join("-" * w for w in widths)]
    for r in cells:
        out.append("  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(r, widths))))
    for n in notes:
        out.append(f"  note: {n}")
    text = "\n".join(out)
    print(text, flush=True)
    print(flush=True)
    return text


def machine_line() -> str:
    return f"machine: {platform.machine()}, {os.cpu_count()} CPUs visible, python {platform.python_version()}"
