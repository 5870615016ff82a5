"""EM for Gaussian mixtures (full covariance): course_lib.gmm against scikit-learn, per iteration.

Both sides start from the same parameters (k-means++ + one M-step from course_lib), get the
same float32 data, and run with the tolerance disabled:

* course_lib: ``gmm.em(x, init, max_iter=1 + n, tol=0)`` minus ``max_iter=1``, divided by n
  (the set-up, centring and the final log-likelihood cancel out).
* scikit-learn: the body of ``GaussianMixture.fit``'s loop, ``_e_step`` then ``_m_step``, on a
  model set up by ``fit(max_iter=1, tol=0, weights_init=..., means_init=...,
  precisions_init=...)``; best of a few calls.

The note reports the throughput of our iteration counted as 4·N·K·D² FLOPs (whitening
matrix product + weighted outer products) and its fraction of a float32 matmul peak measured
in the same run (a 2048² product).

    python bench/bench_gmm.py [--quick]
"""
from __future__ import annotations

import argparse
import sys
import time
import warnings
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import sklearn
from sklearn.mixture import GaussianMixture

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from common import Row, best_time, block, first_call_time, markdown_table  # noqa: E402

from course_lib import gmm  # noqa: E402

PEER = f"scikit-learn {sklearn.__version__}"
TARGETS = {(10**6, 2, 16): 15.0, (10**6, 16, 16): 10.0}


def matmul_peak_gflops() -> float:
    a = jax.random.normal(jax.random.key(0), (2048, 2048), jnp.float32)
    f = jax.jit(lambda a: a @ a)
    block(f(a))
    return 2 * 2048**3 / best_time(lambda: f(a), repeats=5) / 1e9


def mixture_data(n: int, d: int, k: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    centers = 4.0 * rng.normal(size=(k, d))
    scales = rng.uniform(0.5, 1.5, size=(k, d))
    z = rng.integers(0, k, n)
    return (centers[z] + scales[z] * rng.normal(size=(n, d))).astype(np.float32)


def sklearn_per_iteration(x: np.ndarray, init: gmm.GMMParams, repeats: int) -> float:
    weights = np.asarray(init.weights, np.float64)
    sk = GaussianMixture(
        len(init.weights), covariance_type="full", max_iter=1, tol=0.0,
        weights_init=weights / weights.sum(), means_init=np.asarray(init.means, np.float64),
        precisions_init=np.linalg.inv(np.asarray(init.covariances, np.float64)),
        init_params="random_from_data", random_state=0,
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        sk.fit(x)

    def one_iteration():
        _, log_resp = sk._e_step(x)
        sk._m_step(x, log_resp)

    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        one_iteration()
        times.append(time.perf_counter() - t0)
    return min(times)


def ours_per_iteration(x: jax.Array, init: gmm.GMMParams, n_iter: int, repeats: int) -> tuple[float, float]:
    def run(m):
        return lambda: gmm.em(x, init, max_iter=m, tol=0.0)

    first = first_call_time(run(1 + n_iter))
    first_call_time(run(1))
    long = best_time(run(1 + n_iter), repeats=repeats)
    short = best_time(run(1), repeats=repeats)
    return (long - short) / n_iter, first - long


def run(quick: bool) -> list[Row]:
    sizes = [10**4, 10**5] if quick else [10**4, 10**5, 10**6]
    peak = matmul_peak_gflops()
    rows = []
    for n in sizes:
        for d in (2, 16):
            for k in (4, 16):
                x_np = mixture_data(n, d, k)
                x = jnp.asarray(x_np)
                init = gmm.init_params(jax.random.key(0), x, k, "full")
                repeats = 2 if n >= 10**6 else 3
                ours, compile_s = ours_per_iteration(x, init, n_iter=4 if n >= 10**6 else 10, repeats=repeats)
                peer = sklearn_per_iteration(x_np, init, repeats=repeats)
                gflops = 4 * n * k * d * d / ours / 1e9
                rows.append(Row(
                    topic="gmm",
                    case=f"EM iteration, N=1e{len(str(n)) - 1}, D={d}, K={k}, full, float32",
                    ours_s=ours, peer_s=peer, peer=PEER, compile_s=compile_s,
                    target=TARGETS.get((n, d, k)),
                    note=f"{gflops:.1f} GFLOP/s = {100 * gflops / peak:.0f}% of {peak:.0f} GFLOP/s matmul peak",
                ))
                print(markdown_table(rows[-1:]).splitlines()[-1], file=sys.stderr, flush=True)
    return rows


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="N up to 1e5 only")
    args = parser.parse_args()
    print(markdown_table(run(args.quick)))
