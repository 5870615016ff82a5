"""Shared timing helpers for the benchmarks: best-of-N wall time, compile time apart.

Each ``bench/bench_<topic>.py`` exposes ``run(quick: bool) -> list[Row]``; ``bench/run.py``
runs them all in one process (same machine, same load) and writes ``bench/README.md``.
"""
from __future__ import annotations

import gc
import json
import os
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
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


TORCH_PY = Path(__file__).resolve().parents[1] / ".venv-torch" / "bin" / "python"


class TorchWorker:
    """A PyTorch twin running as a worker under ``.venv-torch`` (PyTorch lives in its own
    venv), one JSON object per line each way: the first message (``cfg`` plus ``threads``)
    builds and warms the model and is answered by ``ready`` (with ``"torch"``, the version);
    ``{"time": k}`` runs k steps and answers ``seconds_per_step``; ``{"quit": true}`` ends it.
    The worker's OpenMP threads are ours: ``threads``."""

    def __init__(self, script: str, cfg: dict, threads: int):
        if not TORCH_PY.exists():
            raise RuntimeError("PyTorch venv missing: run `make .venv-torch/.installed`")
        env = dict(os.environ, OMP_NUM_THREADS=str(threads))
        self.proc = subprocess.Popen([str(TORCH_PY), str(Path(__file__).parent / script)],
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
                                     env=env)
        self.ready = self._ask(dict(cfg, threads=threads))
        self.version = self.ready["torch"]

    def _ask(self, msg: dict) -> dict:
        self.proc.stdin.write(json.dumps(msg) + "\n")
        self.proc.stdin.flush()
        line = self.proc.stdout.readline()
        if not line:
            raise RuntimeError("PyTorch worker died (see its stderr above)")
        return json.loads(line)

    def time(self, k: int) -> float:
        """Seconds per step over ``k`` steps."""
        return self._ask({"time": k})["seconds_per_step"]

    def close(self) -> None:
        try:
            self._ask({"quit": True})
        except (RuntimeError, BrokenPipeError, json.JSONDecodeError):
            pass
        self.proc.wait(timeout=30)


def alternate_rounds(ours: Callable[[int], float], peer: Callable[[int], float], *,
                     rounds: int, k: int, warm: int = 2) -> tuple[float, float]:
    """Best seconds per step of ``ours(k)`` and ``peer(k)`` (each runs k steps and returns
    seconds per step) over ``rounds`` rounds, the two alternated round by round so that both
    see the same machine load; each side is warmed first (``warm`` steps of ours, one of the
    peer's)."""
    if rounds < 1 or k < 1:
        raise ValueError(f"rounds and k must be >= 1, got {rounds}, {k}")
    ours(warm)
    peer(1)
    best = [float("inf"), float("inf")]
    for _ in range(rounds):
        best[0] = min(best[0], ours(k))
        best[1] = min(best[1], peer(k))
    return best[0], best[1]
