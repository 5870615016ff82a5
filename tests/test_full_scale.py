"""Every notebook runs at ``COURSE_SCALE=full`` on a CPU without a crash (issue 7).

CI has no GPU, so the full scale is executed here with its step, iteration and sample
counts capped through ``COURSE_OVERRIDES`` (see ``course_lib.runtime``), while every other
full-scale setting (data sets, model widths, sequence lengths, orders) is kept: the test
proves that the full configuration loads its data, builds its models and takes its first
training steps. The widths stay full size, so a shape or memory problem that only the full
scale has shows up here.

Errors are collected from every cell (``allow_errors=True``) and judged afterwards:

* an ``AssertionError`` passes only when its cell is listed in the run's ``may_fail`` with
  a pattern matching the failing ``assert`` line: the teaching claims that a capped run
  cannot meet (an accuracy threshold after five steps);
* anything else (another exception type, another assertion, another cell) fails the test,
  naming the cell and the end of its traceback.

The runtime cell must print ``scale=full`` and the overrides. Notebook 05 also runs as a
learner offline would: full MNIST is not present and cannot be downloaded (no network:
the kernel's HTTP(S) proxy is a closed local port, and its data folder is empty), so the
runtime cell must print the one-line fallback, and the notebook must go on at the small
scale (executed through its data loading; from there on it is the small scale that nbval
runs). Its second run keeps the full-size CNN but trains it on ``mnist_small``
(``COURSE_OVERRIDES`` replaces the dataset the full scale needs), with nothing to download.

Environment: ``COURSE_FULLSCALE_NOTEBOOKS`` reads the notebooks from another folder (to
try edits on copies); ``COURSE_FULLSCALE_SAVE`` writes the executed notebooks into a folder;
``COURSE_FULLSCALE_JOBS`` sets how many kernels run at once (default 2). Each notebook executes in a temporary working directory, so nothing
is written into ``notebooks/``. Marked ``slow``: ``make test`` runs it, ``make test-fast``
does not.
"""
from __future__ import annotations

import asyncio
import json
import os
import re
import time
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient
from nbformat.v4 import new_code_cell

from conftest import NOTEBOOKS

NOTEBOOK_DIR = Path(os.environ.get("COURSE_FULLSCALE_NOTEBOOKS") or NOTEBOOKS)
SAVE_DIR = Path(os.environ["COURSE_FULLSCALE_SAVE"]) if os.environ.get("COURSE_FULLSCALE_SAVE") else None
# Seconds for one cell, a hang guard: a capped cell takes seconds to ~2 minutes, longer while
# make test runs both nbval passes beside it.
CELL_TIMEOUT = 600
NO_NETWORK = "http://127.0.0.1:9"   # the discard port on loopback: every connection is refused
ANSI = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")
CPU_PROBE = ("import resource as _r\n_u = _r.getrusage(_r.RUSAGE_SELF)\n"
             "print(f'kernel CPU seconds: {_u.ru_utime + _u.ru_stime:.1f}')")


@dataclass(frozen=True)
class Run:
    """One execution of a notebook at full scale."""

    notebook: str                       # file name stem, e.g. "05_deep_learning_cnn"
    overrides: dict                     # COURSE_OVERRIDES
    may_fail: dict = field(default_factory=dict)   # cell id -> regex of the assert line
    banner: tuple = (r"scale=full \(env\)",)       # regexes the runtime cell must print
    empty_data_dir: bool = False        # COURSE_DATA_DIR = an empty folder (nothing fetched)
    stop_after: str = ""                # a cell id: execute the notebook only up to this cell
    label: str = ""

    @property
    def id(self) -> str:
        return self.notebook[:2] + (f"-{self.label}" if self.label else "")


FALLBACK_LINE = (r"full scale needs mnist, which could not be fetched \(are you offline\?\); "
                 r"falling back to the small scale")

# The caps: every count of steps, iterations, restarts and samples made small; the data
# and the model sizes of the full scale are kept unless named here.
RUNS = [
    Run("01_probability",
        {"mc_max_samples": 20_000, "mle_steps": 20, "logreg_steps": 50, "new_points": 300,
         "bn_samples": 200_000, "n_splits": 10},
        may_fail={
            # 20 steps of gradient ascent do not reach the closed-form MLE to 1e-3
            "6134c60a": r"assert abs\(float\(params\[0\] - mu_hat\)\) < 1e-3",
        }),
    Run("02_gmm",
        {"restarts": 4, "max_k": 4, "digit_components": 6, "n_digits": 6}),
    Run("03_hmm",
        {"num_seqs": 6, "max_len": 120, "em_iters": 4, "restarts": 2},
        may_fail={
            # 4 Baum-Welch iterations on 6 sequences do not explain the data as well as the
            # true model does ...
            "7eca2994": r"assert best\.log_likelihoods\[-1\] >= ll_truth",
            # ... and recover the 2-state parameters only roughly (0.11 off here, 0.12 allowed)
            "51080029": r"assert np\.allclose\(learned2\.(transition|emission), two_state\.",
            # ... and 2 restarts of 4 iterations need not trace the flat ridge the notebook shows
            "9559ed6f": r"assert (min\(walk\)|abs\(walk\[-1\] - walk\[0\]\))",
        }),
    Run("04_autoregressive",
        {"stationary_check_steps": 50_000, "shakespeare_chars": 200_000, "sample_chars": 40,
         "n_names": 6, "bigram_steps": 20},
        may_fail={
            # 20 Adam steps do not reach the counting solution of the neural bigram
            "9a125cae": r"assert 0 <= gap < 1e-3",
        }),
    Run("05_deep_learning_cnn",
        {"steps": 5, "eval_every": 5, "overfit_steps": 50},
        banner=(FALLBACK_LINE, r"scale=small \(fallback: mnist unavailable\)"),
        # after the fallback the notebook is at the small scale, which nbval runs in full:
        # what is new here ends with the data loading cell
        empty_data_dir=True, stop_after="ab733d9b", label="offline"),
    Run("05_deep_learning_cnn",
        {"dataset": "mnist_small", "steps": 5, "eval_every": 5, "overfit_steps": 50},
        may_fail={
            # 50 steps do not memorise the 300 training digits
            "9fe6a7d4": r"assert plain\[\"(train_ce|eval_ce)\"\]\[-1\]|assert overfit_runs\[name\]",
            # 5 steps of CNN training do not reach the accuracy the notebook claims
            "25fe49d3": r"assert test_accuracy >= CFG\.min_accuracy",
        },
        label="mnist_small"),
    Run("06_rnn_lstm_gru",
        {"steps": 3, "eval_every": 3, "batch_size": 8, "val_chars": 5_000, "sample_len": 40,
         "sens_windows": 1},
        may_fail={
            # 3 steps: no model beats the bigram yet, and LSTM/GRU need not beat the RNN
            "d4f37473": r"assert (loss < bigram_xent|min\(final_val)",
            # ... and 3 steps do not change how far back the gradients reach as 8000 do
            "cc0c0047": r"assert all\(claims\.values\(\)\)",
        }),
    Run("07_gan",
        {"dataset": "mnist_small", "d_steps": 20, "ring_steps": 20, "ring_samples": 2000,
         "eval_every": 10, "score_samples": 1000, "dcgan_steps": 20, "snapshots": [1, 10, 20]},
        may_fail={
            # 20 steps: the 1-D discriminator is not yet close to D*
            "87f0f308": r"assert (gap < 0\.1|v_trained <= v_star)",
            # 20 steps: no early win of D followed by a draw near log 4
            "794cf8cd": r"assert (acc\.max\(\)|np\.abs\(d_loss)",
            # 20 steps: coverage of the ring is not yet what the comparison claims ...
            "c12ac876": r"assert cov\[",
            # ... nor is the clipped WGAN's high-quality fraction below half WGAN-GP's
            "fa58f095": r"assert clip_cov\.",
            # 20 steps: conditional samples are not yet the asked digit
            "ce5d766e": r"assert real_acc > 0\.7 and cond_acc >= CFG\.min_cond_accuracy",
        },
        label="mnist_small"),
    Run("08_vae",
        {"source": "mnist_small", "steps": 20, "ae_steps": 20, "sweep_steps": 20, "grid_steps": 20,
         "anomaly_steps": 20, "cvae_steps": 20, "eval_every": 10, "iwae_ks": [1, 10, 100, 1000],
         "iwae_images": 100},
        may_fail={
            # 20 steps: the codes are not yet shaped like the prior, the test -ELBO is not yet
            # under its bar, and neither the 2-D codes, the anomaly scores nor the conditional
            # samples carry the class yet
            "15e1f09b": r'assert (off\["vae"\] < 0\.5|H\["AE, prior draws"\])',
            "f3798066": r"assert -float\(test_elbo\.elbo\) < CFG\.max_test_nelbo",
            "6742f5a2": r"assert nelbo2 > -float\(test_elbo\.elbo\) and code_accuracy > 0\.4",
            "c969a017": r"assert abs\(auc - roc_auc_score",
            "78f8fcb4": r"assert gen_accuracy >= CFG\.min_cvae_accuracy",
        },
        label="mnist_small"),
    Run("09_gpt",
        {"steps": 2, "warmup": 1, "batch_size": 4, "eval_every": 1,
         "eval_windows": 8, "pos_steps": 3, "resume_steps": 1, "ft_steps": 10, "ft_eval_every": 5,
         "sample_len": 20, "kv_len": 20},
        may_fail={
            # 2 steps at width 384: not yet below the bigram, nor under the full-scale bar ...
            "e383e21d": r"assert gpt_nats < bigram_nats - 0\.3 and val_bpc < CFG\.max_val_bpc",
            # ... nor near the LSTM (which need not beat the bigram either)
            "9ffca35c": r"assert max\(gpt_nats, lstm_nats\) < bigram_nats and close",
            # 3 steps: neither position table has been learned yet
            "a5cf6009": r"assert all\(claims\.values\(\)\)",
            # 2 steps: the first block's attention is still nearly uniform
            "9108f400": r"assert all\(claims\.values\(\)\)",
            # 10 steps of fine-tuning: no clear gap to training from scratch yet
            "59d050e6": r"assert ft_val\[\"pretrained\"\] < zero_shot and gain > 0\.2",
        }),
    Run("08_vae",
        {"steps": 20},
        banner=(FALLBACK_LINE, r"scale=small \(fallback: mnist unavailable\)"),
        empty_data_dir=True, stop_after="302619bf", label="offline"),
    Run("10_evaluation",
        {"dataset": "mnist_small", "feature_steps": 20, "vae_steps": 20, "iwae_k": 10,
         "cvae_steps": 20, "dcgan_steps": 20, "wgan_steps": 5, "wgan_batch": 40,
         "n_chars": 200_000, "val_chars": 5_000, "lm_steps": 5, "lm_batch": 8, "n_eval": 500,
         "bias_sizes": [50, 100], "bias_repeats": 1, "kid_subsets": 5, "ring_steps": 20,
         "ring_samples": 2000, "ring_eval": 1000, "ppl_n": 256},
        may_fail={
            # 5 steps: neither network beats the trigram yet
            "a3eeb4ad": r"assert (bpc\[|max\(bpc)",
            # 20 steps: the feature network is not yet at its accuracy bar
            "4a3a27cd": r"assert fnet\.test_accuracy >= CFG\.min_feature_accuracy",
            # untrained features and generators: the bias claims, the ring GANs' coverage and
            # the leaderboard's margins do not hold yet
            "262cb235": r"assert (fid_at|abs\(k_small|all\(abs\(kid_at|floor <)",
            "3a1ef147": r"assert (modes2|pr2|pr256|dc2)",
            "d106956a": r"assert (real_row|all\(cvae_row|cvae_row)",
        },
        label="mnist_small"),
]


# Relative cost of each notebook's run, to start the longest first.
COST = {"10_evaluation": 3, "09_gpt": 3, "06_rnn_lstm_gru": 3, "05_deep_learning_cnn": 2, "02_gmm": 2, "08_vae": 2, "07_gan": 2}


@dataclass
class Outcome:
    nb: nbformat.NotebookNode
    seconds: float          # wall-clock, kernel start to shutdown
    cpu_line: str           # the kernel's own CPU seconds (less sensitive to a busy machine)
    slowest: str            # the three slowest cells


def _client(run: Run, workdir: Path) -> tuple[NotebookClient, dict]:
    path = NOTEBOOK_DIR / f"{run.notebook}.ipynb"
    nb = nbformat.read(path, as_version=4)
    if run.stop_after:
        ids = [c.get("id") for c in nb.cells]
        assert run.stop_after in ids, f"{run.notebook}: no cell with id {run.stop_after}"
        nb.cells = nb.cells[: ids.index(run.stop_after) + 1]
    nb.cells.append(new_code_cell(CPU_PROBE))
    env = {k: v for k, v in os.environ.items()
           if k.lower() not in ("no_proxy", "all_proxy", "pythonpath")}
    env.update(COURSE_SCALE="full", COURSE_OVERRIDES=json.dumps(run.overrides),
               http_proxy=NO_NETWORK, https_proxy=NO_NETWORK,
               HTTP_PROXY=NO_NETWORK, HTTPS_PROXY=NO_NETWORK)
    if run.empty_data_dir:
        (workdir / "data").mkdir()
        env["COURSE_DATA_DIR"] = str(workdir / "data")
    client = NotebookClient(nb, timeout=CELL_TIMEOUT, kernel_name="python3", allow_errors=True,
                            resources={"metadata": {"path": str(workdir)}})
    return client, env


def _cell_seconds(cell) -> float:
    timing = cell.get("metadata", {}).get("execution", {})
    try:
        start = datetime.fromisoformat(timing["iopub.execute_input"].replace("Z", "+00:00"))
        end = datetime.fromisoformat(timing["shell.execute_reply"].replace("Z", "+00:00"))
    except (KeyError, ValueError):
        return 0.0
    return (end - start).total_seconds()


async def _execute(run: Run, workdir: Path, slots: asyncio.Semaphore) -> Outcome:
    client, env = _client(run, workdir)
    async with slots:
        start = time.perf_counter()
        await client.async_execute(env=env)
        seconds = time.perf_counter() - start
    nb = client.nb
    probe = "".join(o.get("text", "") for o in nb.cells[-1].outputs).strip()
    nb.cells.pop()
    if SAVE_DIR:
        SAVE_DIR.mkdir(parents=True, exist_ok=True)
        nbformat.write(nb, SAVE_DIR / f"{run.notebook}-{run.id}.ipynb")
    cells = sorted(((_cell_seconds(c), i) for i, c in enumerate(nb.cells) if c.cell_type == "code"),
                   reverse=True)[:3]
    slowest = ", ".join(f"cell {i} {t:.0f} s" for t, i in cells)
    return Outcome(nb, seconds, probe, slowest)


@pytest.fixture(scope="session")
def full_scale_runs(request, tmp_path_factory) -> dict[str, Outcome | BaseException]:
    """Execute every selected run once, ``COURSE_FULLSCALE_JOBS`` kernels at a time (2)."""
    selected = [item.callspec.params["run"] for item in request.session.items
                if getattr(item, "callspec", None) and isinstance(item.callspec.params.get("run"), Run)]
    jobs = int(os.environ.get("COURSE_FULLSCALE_JOBS") or 2)

    async def main():
        slots = asyncio.Semaphore(jobs)
        # the slowest first, so that two kernels stay busy until the end
        order = sorted(selected, key=lambda r: -COST.get(r.notebook, 1))
        outcomes = await asyncio.gather(*(   # a timeout or a dead kernel fails its own test
            _execute(r, tmp_path_factory.mktemp(f"full{r.id}"), slots) for r in order),
            return_exceptions=True)
        return {r.id: o for r, o in zip(order, outcomes)}

    start = time.perf_counter()
    results = asyncio.run(main())
    print(f"\nfull scale: {len(results)} notebook runs, {jobs} at a time: "
          f"{time.perf_counter() - start:.0f} s")
    return results


def stream_text(cell) -> str:
    return "".join(o.get("text", "") for o in cell.get("outputs", []) if o.output_type == "stream")


def failing_line(traceback: str) -> str:
    """The source line the IPython traceback points at (``--->``), innermost frame last."""
    arrows = [line for line in traceback.splitlines() if re.match(r"\s*-{2,}>", line)]
    return re.sub(r"^\s*-{2,}>\s*\d*\s*", "", arrows[-1]) if arrows else ""


def judge(run: Run, nb) -> tuple[list[str], list[str]]:
    """(unexpected errors, tolerated assertion failures), one line or block each."""
    bad, tolerated = [], []
    for index, cell in enumerate(nb.cells):
        if cell.cell_type != "code":
            continue
        for out in cell.get("outputs", []):
            if out.output_type != "error":
                continue
            tb = ANSI.sub("", "\n".join(out.get("traceback", [])))
            line = failing_line(tb)
            cell_id = cell.get("id", "?")
            where = f"cell {index} (id {cell_id})"
            pattern = run.may_fail.get(cell_id)
            if out.ename == "AssertionError" and pattern and re.search(pattern, line):
                tolerated.append(f"{where}: {line}")
            else:
                tail = "\n".join(tb.strip().splitlines()[-12:])
                bad.append(f"{where}: {out.ename}: {out.evalue}\n{tail}")
    return bad, tolerated


# The first test's setup executes every run (the session fixture): ~20-25 minutes of wall
# time on two shared cores while make test runs both nbval passes, hence the long guard.
@pytest.mark.slow
@pytest.mark.timeout(3600)
@pytest.mark.parametrize("run", RUNS, ids=[r.id for r in RUNS])
def test_notebook_runs_at_full_scale(run, full_scale_runs):
    outcome = full_scale_runs[run.id]
    if isinstance(outcome, BaseException):
        pytest.fail(f"{run.notebook} at full scale did not finish: "
                    f"{type(outcome).__name__}: {str(outcome)[-3000:]}")
    nb = outcome.nb
    bad, tolerated = judge(run, nb)
    print(f"\n{run.notebook} [{run.id}] full scale, COURSE_OVERRIDES={json.dumps(run.overrides)}: "
          f"{outcome.seconds:.1f} s wall, {outcome.cpu_line}; slowest: {outcome.slowest}; "
          f"{len(tolerated)} capped teaching assert(s) tolerated")
    for line in tolerated:
        print("  tolerated:", line)

    setup_cells = [c for c in nb.cells if c.cell_type == "code" and "runtime.setup(" in c.source]
    assert len(setup_cells) == 1, "expected exactly one runtime cell"
    printed = stream_text(setup_cells[0])
    for pattern in run.banner:
        assert re.search(pattern, printed), f"the runtime cell did not print /{pattern}/:\n{printed}"
    assert "COURSE_OVERRIDES: " in printed, f"the banner does not show the caps:\n{printed}"
    if run.empty_data_dir:   # one line says why, then the banner; nothing else
        lines = [line for line in printed.splitlines() if line.strip()]
        assert len(lines) == 2 and lines[1].startswith("course_lib |"), printed

    assert not bad, (f"{run.notebook} at full scale (capped by {json.dumps(run.overrides)}): "
                     f"{len(bad)} unexpected error(s)\n\n" + "\n\n".join(bad))


def test_every_notebook_has_a_full_scale_run():
    ran = {r.notebook for r in RUNS}
    present = {p.stem for p in NOTEBOOK_DIR.glob("[0-9][0-9]_*.ipynb")}
    assert present <= ran, f"no full-scale run for {sorted(present - ran)}: add it to RUNS"


def test_caps_name_real_settings():
    """Every capped name is a setting of its notebook's rt.pick (a typo would fail late)."""
    for run in RUNS:
        nb = nbformat.read(NOTEBOOK_DIR / f"{run.notebook}.ipynb", as_version=4)
        source = next(c.source for c in nb.cells if c.cell_type == "code" and "rt.pick(" in c.source)
        full = source[source.index("full=dict("):]
        for name in list(run.overrides) + []:
            assert re.search(rf"\b{name}=", full), f"{run.notebook}: no full-scale setting {name!r}"
        for cell_id in run.may_fail:
            assert any(c.get("id") == cell_id for c in nb.cells), \
                f"{run.notebook}: may_fail names cell id {cell_id}, which is not in the notebook"


def test_only_listed_assertions_are_tolerated():
    """The judge itself: the listed assert passes; any other error, or that cell failing
    another way, is reported with its cell index."""
    def error_cell(cell_id, ename, line):
        tb = ["\x1b[0;31m----------\x1b[0m", f"\x1b[0;32mCell In[3], line 2\x1b[0m",
              "      1 x = 1", f"\x1b[0;32m----> 2\x1b[0m {line}", "", f"{ename}: "]
        cell = nbformat.v4.new_code_cell(line, outputs=[
            nbformat.v4.new_output("error", ename=ename, evalue="", traceback=tb)])
        cell["id"] = cell_id   # repeated on purpose: several failures in one listed cell
        return cell

    run = Run("xx", {}, may_fail={"aaaa": r"assert acc >= CFG\.min_accuracy"})
    nb = nbformat.from_dict({"cells": [
        nbformat.v4.new_markdown_cell("# title"),
        error_cell("aaaa", "AssertionError", "assert acc >= CFG.min_accuracy"),
        error_cell("aaaa", "AssertionError", "assert acc >= 0.5 and loss < 1"),   # not the listed line
        error_cell("aaaa", "NameError", "assert acc >= CFG.min_accuracy"),       # not an assertion
        error_cell("bbbb", "AssertionError", "assert acc >= CFG.min_accuracy"),  # not the listed cell
    ]})
    bad, tolerated = judge(run, nb)
    assert tolerated == ["cell 1 (id aaaa): assert acc >= CFG.min_accuracy"]
    assert [b.split(":")[0] for b in bad] == ["cell 2 (id aaaa)", "cell 3 (id aaaa)", "cell 4 (id bbbb)"]
    assert "NameError" in bad[1] and "----> 2" in bad[1]
