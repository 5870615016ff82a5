"""Run every benchmark in one process and write the table into bench/README.md.

    python bench/run.py            # full sizes (minutes)
    python bench/run.py --quick    # small sizes, a smoke run

Each bench_<topic>.py module exposes run(quick) -> list[Row]. Ratios are peer time over
course_lib time, measured in the same run on the same machine; compile time is reported apart.
"""
from __future__ import annotations

import argparse
import importlib
import os
import platform
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent))

from common import markdown_table, summary  # noqa: E402

TOPICS = ["gmm", "hmm", "ar", "nets", "gen", "gpt", "metrics"]
BEGIN, END = "<!-- results:begin -->", "<!-- results:end -->"


def machine() -> str:
    import jax

    load = ", load average %.1f at the start (other work running: ratios are same-run, but "
    load = (load % os.getloadavg()[0] + "absolute times are inflated)") if os.getloadavg()[0] > 1.5 else ""
    usable = len(os.sched_getaffinity(0))
    cores = (f"{os.cpu_count()} cores" if usable == os.cpu_count() else
             f"{os.cpu_count()} cores of which {usable} usable (pinned with taskset: every "
             f"library, ours and the peers, ran on {usable} thread{'s' if usable > 1 else ''})")
    return (f"{platform.processor() or platform.machine()}, {cores}, "
            f"Python {platform.python_version()}, jax {jax.__version__}, backend {jax.default_backend()}"
            f"{load}")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--only", nargs="*", default=TOPICS)
    args = parser.parse_args(argv)
    rows = []
    for topic in args.only:
        path = HERE / f"bench_{topic}.py"
        if not path.exists():
            print(f"skip {topic}: {path.name} not written yet")
            continue
        t0 = time.perf_counter()
        rows += importlib.import_module(f"bench_{topic}").run(quick=args.quick)
        print(f"{topic}: {time.perf_counter() - t0:.0f} s")
    table = markdown_table(rows)
    print(table)
    if not args.quick:
        readme = HERE / "README.md"
        text = readme.read_text()
        stamp = time.strftime("%Y-%m-%d")
        block = (f"{BEGIN}\nMeasured {stamp} on {machine()}.\n\n{table}\n\n"
                 f"In this run:\n\n{summary(rows)}\n{END}")
        head, _, rest = text.partition(BEGIN)
        _, _, tail = rest.partition(END)
        readme.write_text(head + block + tail)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
