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

    @property
    def ratio(self) -> float:
        return self.peer_s / self.ours_s


def block(x):
    """Wait for every array in a pytree (JAX dispatch is asynchronous)."""
    return jax.block_until_ready(x)


def best_time(fn: Callable[[], object], repeats: int = 5, min_total_s: float = 0.0) -> float:
    """Best wall time of ``fn()`` over ``repeats`` calls (results are blocked on)."""
    times = []
    gc.collect()
    start_all = time.perf_counter()
    while len(times) < repeats or time.perf_counter() - start_all < min_total_s:
        t0 = time.perf_counter()
        block(fn())
        times.append(time.perf_counter() - t0)
        if len(times) >= 100:
            break
    return min(times)


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
        "| topic | case | course_lib (s) | peer (s) | peer | speed-up | target | compile (s) | note |",
        "|---|---|---:|---:|---|---:|---:|---:|---|",
    ]
    for r in rows:
        target = f"{r.target:g}x" if r.target else ""
        lines.append(
            f"| {r.topic} | {r.case} | {r.ours_s:.4g} | {r.peer_s:.4g} | {r.peer} | "
            f"{r.ratio:.2f}x | {target} | {r.compile_s:.3g} | {_cell(r.note)} |"
        )
    return "\n".join(lines)
