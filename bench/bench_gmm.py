"""EM for Gaussian mixtures (full covariance): course_lib.gmm against scikit-learn, per iteration.

Same work on both sides: one EM iteration (an E-step over all N points, then an M-step) from
the same start (``gmm.init_params``: k-means++ seeds, k-means, one M-step), on the same float32
data, with the tolerance disabled, timed the same number of times (``time_pair`` alternates the
two call by call):

* course_lib: ``gmm.em(init, x, max_iter=1 + n, tol=0)`` minus ``max_iter=1`` (also best of the
  same repeats), divided by n: the set-up, centring and the final log-likelihood cancel out.
  Algorithm: whitened residuals through one Cholesky factor per component, E-step and the
  M-step's sums fused in one blocked pass.
* scikit-learn: n iterations of the body of ``GaussianMixture.fit``'s loop, ``_e_step`` then
  ``_m_step``, divided by n, on a model set up by ``fit(max_iter=1, tol=0, weights_init=...,
  means_init=..., precisions_init=...)``. Algorithm: Cholesky factors of the precisions,
  log-responsibilities (N, K), then weighted covariances per component.

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
from common import Row, best_time, block, first_call_time, markdown_table, time_pair  # noqa: E402

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


def sklearn_iterations(x: np.ndarray, init: gmm.GMMParams):
    """A function running n iterations of scikit-learn's EM loop body from ``init``."""
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

    def iterations(n):
        for _ in range(n):
            _, log_resp = sk._e_step(x)
            sk._m_step(x, log_resp)

    return iterations


def per_iteration(x: jax.Array, x_np: np.ndarray, init: gmm.GMMParams, n_iter: int,
                  repeats: int) -> tuple[float, float, float]:
    """Seconds per EM iteration, ours and scikit-learn's (same repeats), and our compile time."""
    def ours(m):
        return lambda: gmm.em(init, x, max_iter=m, tol=0.0)

    peer = sklearn_iterations(x_np, init)
    first = first_call_time(ours(1 + n_iter))
    first_call_time(ours(1))
    peer(1)                                   # warm-up, as ours gets its compilation call
    long, peer_s = time_pair(ours(1 + n_iter), lambda: peer(n_iter), repeats)
    short = best_time(ours(1), repeats=repeats)
    return (long - short) / n_iter, peer_s / n_iter, first - long


def run(quick: bool) -> list[Row]:
    sizes = [10**4, 10**5] if quick else [10**4, 10**5, 10**6]
    peak = matmul_peak_gflops()
    rows = []
    for n in sizes:
        for d in (2, 16):
            for k in (4, 16):
                x_np = mixture_data(n, d, k)
                x = jnp.asarray(x_np)
                init = gmm.init_params(jax.random.key(0), x, k, covariance_type="full")
                repeats = 2 if n >= 10**6 else 3
                ours, peer, compile_s = per_iteration(x, x_np, init, n_iter=4 if n >= 10**6 else 10,
                                                      repeats=repeats)
                gflops = 4 * n * k * d * d / ours / 1e9
                rows.append(Row(
                    topic="gmm",
                    case=(f"EM iteration (E+M step, same k-means start; ours: whitened fused pass, "
                          f"sklearn: _e_step + _m_step), N=1e{len(str(n)) - 1}, D={d}, K={k}, full, float32"),
                    ours_s=ours, peer_s=peer, peer=PEER, compile_s=compile_s,
                    target=TARGETS.get((n, d, k)), repeats=repeats,
                    note=f"{gflops:.1f} GFLOP/s = {100 * gflops / peak:.0f}% of {peak:.0f} GFLOP/s matmul peak",
                ))
                print(markdown_table(rows[-1:]).splitlines()[-1], file=sys.stderr, flush=True)
    return rows


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="N up to 1e5 only")
    args = parser.parse_args()
    print(markdown_table(run(args.quick)))
