"""Shared timing helpers for the benchmarks: best-of-N wall time, compile time apart.

Each ``bench/bench_<topic>.py`` exposes ``run(quick: bool) -> list[Row]``; ``bench/run.py``
runs them all in one process (same machine, same load) and writes ``bench/README.md``.
"""
from __future__ import annotations

import gc
import time
from dataclasses import dataclass
from typing import Callable, Sequence

import jax


@dataclass
class Row:
    """One comparison: our time against the peer library's, same inputs, same run."""

    topic: str
    case: str          # e.g. "EM iteration, N=1e6, D=2, K=16, full"
    ours_s: float      # seconds per call, steady state (after compilation)
    peer_s: float      # seconds per call of the peer library
    peer: str          # e.g. "scikit-learn 1.9.1"
    compile_s: float = float("nan")  # first call minus a steady-state call
    target: float | None = None      # the speed-up the issue asks for, if any
    note: str = ""
    repeats: int = 0                 # calls timed on each side (the same number for both)

    @property
    def ratio(self) -> float:
        return self.peer_s / self.ours_s


def block(x):
    """Wait for every array in a pytree (JAX dispatch is asynchronous)."""
    return jax.block_until_ready(x)


def best_time(fn: Callable[[], object], repeats: int = 5) -> float:
    """Best wall time of ``fn()`` over exactly ``repeats`` calls (results are blocked on)."""
    if repeats < 1:
        raise ValueError(f"repeats must be >= 1, got {repeats}")
    gc.collect()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        block(fn())
        times.append(time.perf_counter() - t0)
    return min(times)


def time_pair(ours: Callable[[], object], peer: Callable[[], object], repeats: int) -> tuple[float, float]:
    """Best-of-``repeats`` wall times of ``ours()`` and ``peer()``: the same number of calls
    each, alternated call by call so that both see the same machine load. Warm both first
    (compile, caches) with :func:`first_call_time`."""
    if repeats < 1:
        raise ValueError(f"repeats must be >= 1, got {repeats}")
    gc.collect()
    best = [float("inf"), float("inf")]
    for _ in range(repeats):
        for i, fn in enumerate((ours, peer)):
            t0 = time.perf_counter()
            block(fn())
            best[i] = min(best[i], time.perf_counter() - t0)
    return best[0], best[1]


def first_call_time(fn: Callable[[], object]) -> float:
    """Wall time of the first call (compilation included)."""
    t0 = time.perf_counter()
    block(fn())
    return time.perf_counter() - t0


def _cell(text: str) -> str:
    """Text safe inside a markdown table cell (a bare | would end the cell)."""
    return text.replace("|", "\\|")


def markdown_table(rows: Sequence[Row]) -> str:
    lines = [
        "| topic | case | course_lib (s) | peer (s) | peer | speed-up | target | repeats | compile (s) | note |",
        "|---|---|---:|---:|---|---:|---:|---:|---:|---|",
    ]
    for r in rows:
        target = f"{r.target:g}x" if r.target else ""
        lines.append(
            f"| {r.topic} | {r.case} | {r.ours_s:.4g} | {r.peer_s:.4g} | {r.peer} | "
            f"{r.ratio:.2f}x | {target} | {r.repeats or ''} | {r.compile_s:.3g} | {_cell(r.note)} |"
        )
    return "\n".join(lines)


def summary(rows: Sequence[Row]) -> str:
    """The numbers the README's reading quotes, computed from this run's rows (never typed
    by hand, so prose and table cannot disagree): per topic and peer, the range of speed-ups,
    and every row with a target, met or missed."""
    out = []
    groups: dict[tuple[str, str], list[Row]] = {}
    for r in rows:
        groups.setdefault((r.topic, r.peer), []).append(r)
    for (topic, peer), group in groups.items():
        ratios = [r.ratio for r in group]
        out.append(f"- {topic} against {peer}: {min(ratios):.2f}x to {max(ratios):.2f}x "
                   f"over {len(group)} cases.")
    targeted = [r for r in rows if r.target]
    met = [r for r in targeted if r.ratio >= r.target]
    missed = [r for r in targeted if r.ratio < r.target]
    for title, chosen in (("Targets met", met), ("Targets missed", missed)):
        if chosen:
            out.append(f"- {title} ({len(chosen)} of {len(targeted)}): " + "; ".join(
                f"{r.topic} {r.case} {r.ratio:.2f}x (target {r.target:g}x)" for r in chosen) + ".")
    return "\n".join(out)
