"""Sample-based metrics of course_lib.metrics against the NumPy/SciPy/scikit-learn recipes people use.

Feature sets of N = M = 10^4 rows, width D = 64 and 2048 (the width of Inception's pool
features), float32 as a feature network returns them. Each row checks first that both sides
give the same value (to the stated tolerance, on the very inputs that are then timed), then
times both the same number of times, alternated call by call (``time_pair``); best call counts.

Peers, written here from the published algorithms (not imported: pytorch-fid needs torch, and
prdc / clean-fid are thin NumPy files; each is re-implemented in NumPy/SciPy, nothing copied):

* **FID**: pytorch-fid's ``calculate_activation_statistics`` + ``calculate_frechet_distance``:
  ``np.mean`` and ``np.cov(rowvar=False)`` (float64, as NumPy promotes float32 there), then
  ``scipy.linalg.sqrtm`` of the product ``sigma1 @ sigma2`` (Schur method), retried on
  ``(sigma1 + eps I)(sigma2 + eps I)`` with ``eps = 1e-6`` when the root is not finite, the
  real part kept (an imaginary diagonal above 1e-3 is an error), then
  ``|mu1 - mu2|^2 + Tr sigma1 + Tr sigma2 - 2 Tr sqrt``. Ours: ``metrics.fid`` (float32
  statistics, symmetric eigendecompositions, no complex arithmetic).
* **KID**: the unbiased MMD^2 with the kernel ``(x.y / D + 1)^3`` over ``n_subsets = 100``
  subsets of ``subset_size = 1000`` rows drawn without replacement from each set
  (``np.random.choice(n, m, replace=False)``), the loop of clean-fid's ``kernel_distance``
  and StyleGAN2-ADA's ``compute_kid`` (per-subset values kept for the spread, as Bińkowski
  et al.'s ``polynomial_mmd_averages``), in the features' float32. Ours: ``metrics.kid``.
  The value check gives the peer the subsets ours draws (``jax.random`` indices, replicated
  here) so both compute the same numbers.
* **precision/recall** (Kynkäänniemi et al., 2019) and **density/coverage** (Naeem et al.,
  2020): the approach of Naeem et al.'s ``prdc`` package: full distance matrices with
  ``sklearn.metrics.pairwise_distances`` (Euclidean; scikit-learn upcasts float32 to float64
  in chunks for accuracy; ``n_jobs=8`` as prdc passes), k-NN radii by ``np.partition``, then
  the boolean reductions. prdc's balls are open (``<``), ours closed (``<=``): on continuous
  features no sample lies on a boundary, so the two agree; float rounding can still move a
  sample that sits within rounding of a radius, hence the tolerance of a few samples. Each
  row does only its pair's work on both sides (P/R: both self-distance matrices and the cross
  matrix; D/C: the real one and the cross one); ours is ``metrics.precision_recall(k=3)`` and
  ``metrics.density_coverage(k=5)``, the peers use the same ``k``.

Repeats: 3 at D = 64; at D = 2048 one timed call per side (a SciPy ``sqrtm`` of a 2048 x 2048
product takes minutes on 2 busy cores), after the value-check calls.

What was tried (2 shared cores, load 5-8; same-run timings):
* FID, D = 2048: the trace of the square root was the sum of the singular values of
  ``s1 s2`` (float32 SVD, ~30 s of a ~85 s call under load; eigh ~13 s). Now the singular
  values of ``g = f1^T f2`` come as ``|g^T u_i|`` from one ``eigh`` of ``g g^T``: ~85 ->
  ~62-76 s under load, 28 s in the table's run; floors and API unchanged, error against the
  closed form 1.2e-6 (was 3.8e-7) on a singular D = 64 case, 7e-7 (was 2.3e-6) on a full-rank
  D = 2048 one. Tried and dropped: a QDWH polar factor (3x slower at D = 512).
  Not gained: SciPy 1.17's ``sqrtm`` of the product takes ~29 s, not the ~97 s measured
  before, so the ratio is ~1x; three ``eigh`` of 2048 x 2048 in float32 are the floor of
  this formulation. At D = 64 our ~10 ms are two (10^4, 64) covariance products through
  XLA:CPU (~3 ms each, no faster with ``dot_general`` on the rows) and dispatch.
* FID values: float32 statistics against pytorch-fid's float64 ``np.cov`` differ by ~4e-4
  relative (the traces cancel: FID 3.2 from traces of ~64), within the stated 1e-3.
* KID: both sides do the same 300 (1000 x 1000 x D) products; at D = 2048 these are BLAS
  bound on both sides (~1x). Not tried: symmetric halves of k(x, x), k(y, y) (at most 1.5x).

    python bench/bench_metrics.py [--quick]     # quick: N = M = 2000, D = 64 and 256
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import scipy
import scipy.linalg
import sklearn
from sklearn.metrics import pairwise_distances

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from common import Row, block, markdown_table, time_pair  # noqa: E402

from course_lib import metrics  # noqa: E402

NUMPY = f"NumPy {np.__version__} + SciPy {scipy.__version__}"
SKLEARN = f"scikit-learn {sklearn.__version__} + NumPy {np.__version__}"
TARGET = 5.0
N_SUBSETS, SUBSET_SIZE = 100, 1000
K_PR, K_DC = 3, 5


# ============================================================================== the peers
def peer_fid(real: np.ndarray, fake: np.ndarray, eps: float = 1e-6) -> float:
    """pytorch-fid's recipe in NumPy/SciPy (statistics, then the Fréchet distance)."""
    mu1, sigma1 = np.mean(real, axis=0), np.cov(real, rowvar=False)
    mu2, sigma2 = np.mean(fake, axis=0), np.cov(fake, rowvar=False)
    diff = mu1 - mu2
    root = scipy.linalg.sqrtm(sigma1 @ sigma2)
    if not np.all(np.isfinite(root)):                      # singular product: shift both
        shift = eps * np.eye(sigma1.shape[0])
        root = scipy.linalg.sqrtm((sigma1 + shift) @ (sigma2 + shift))
    if np.iscomplexobj(root):
        if not np.allclose(np.diagonal(root).imag, 0.0, atol=1e-3):
            raise ValueError(f"imaginary component {np.max(np.abs(root.imag)):.3g}")
        root = root.real
    return float(diff @ diff + np.trace(sigma1) + np.trace(sigma2) - 2.0 * np.trace(root))


def peer_kid(real: np.ndarray, fake: np.ndarray, subsets=None) -> tuple[float, float]:
    """Unbiased polynomial-kernel MMD^2 over random subsets; ``subsets``: optional
    ``[(real_rows, fake_rows), ...]`` to use instead of fresh draws."""
    d, m = real.shape[1], SUBSET_SIZE
    values = []
    for s in range(N_SUBSETS):
        if subsets is None:
            x = real[np.random.choice(real.shape[0], m, replace=False)]
            y = fake[np.random.choice(fake.shape[0], m, replace=False)]
        else:
            x, y = real[subsets[s][0]], fake[subsets[s][1]]
        kxx = (x @ x.T / d + 1) ** 3
        kyy = (y @ y.T / d + 1) ** 3
        kxy = (x @ y.T / d + 1) ** 3
        within = (kxx.sum() - np.trace(kxx) + kyy.sum() - np.trace(kyy)) / (m * (m - 1))
        values.append(within - 2 * kxy.sum() / (m * m))
    return float(np.mean(values)), float(np.std(values))


def _distances(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return pairwise_distances(a, b, metric="euclidean", n_jobs=8)


def _radii(x: np.ndarray, k: int) -> np.ndarray:
    """Distance to the k-th nearest other row (the row itself is the 0-th)."""
    return np.partition(_distances(x, x), k, axis=1)[:, k]


def peer_precision_recall(real: np.ndarray, fake: np.ndarray, k: int) -> tuple[float, float]:
    real_r, fake_r = _radii(real, k), _radii(fake, k)
    d = _distances(real, fake)                                   # (N, M)
    precision = (d < real_r[:, None]).any(axis=0).mean()
    recall = (d < fake_r[None, :]).any(axis=1).mean()
    return float(precision), float(recall)


def peer_density_coverage(real: np.ndarray, fake: np.ndarray, k: int) -> tuple[float, float]:
    real_r = _radii(real, k)
    d = _distances(real, fake)
    density = (d < real_r[:, None]).sum(axis=0).mean() / k
    coverage = (d.min(axis=1) < real_r).mean()
    return float(density), float(coverage)


# ========================================================================== helpers
def feature_sets(n: int, d: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Correlated 'real' features and a shifted, re-mixed 'generated' set, float32."""
    rng = np.random.default_rng(seed)
    mix = rng.normal(size=(d, d)) / np.sqrt(d)
    other = mix + 0.3 * rng.normal(size=(d, d)) / np.sqrt(d)
    real = rng.normal(size=(n, d)) @ mix
    fake = rng.normal(size=(n, d)) @ other + 0.05
    return real.astype(np.float32), fake.astype(np.float32)


def our_kid_subsets(key, n_real: int, n_fake: int) -> list[tuple[np.ndarray, np.ndarray]]:
    """The rows ``metrics.kid`` draws for each subset (the same jax.random calls)."""
    out = []
    for k in jax.random.split(key, N_SUBSETS):
        k_real, k_fake = jax.random.split(k)
        out.append((np.asarray(jax.random.choice(k_real, n_real, (SUBSET_SIZE,), replace=False)),
                    np.asarray(jax.random.choice(k_fake, n_fake, (SUBSET_SIZE,), replace=False))))
    return out


def _floats(x) -> tuple[float, ...]:
    return tuple(float(v) for v in (x if isinstance(x, tuple) else (x,)))


def compare(case: str, ours, peer, ours_check, peer_check, agree, repeats: int, peer_name: str,
            note: str) -> Row:
    """Values first (``agree(ours_values, peer_values) -> (ok, text)``), then the timing."""
    t0 = time.perf_counter()
    ours_value = _floats(block(ours_check()))
    first = time.perf_counter() - t0
    peer_value = _floats(peer_check())
    ok, text = agree(ours_value, peer_value)
    if not ok:
        raise AssertionError(f"{case}: values disagree: {text}")
    ours_s, peer_s = time_pair(ours, peer, repeats)
    row = Row(topic="metrics", case=case, ours_s=ours_s, peer_s=peer_s, peer=peer_name,
              compile_s=max(first - ours_s, 0.0), target=TARGET, repeats=repeats,
              note=f"{text}; {note}" if note else text)
    print(markdown_table([row]).splitlines()[-1], file=sys.stderr, flush=True)
    return row


def rel_agree(tol: float, names: tuple[str, ...]):
    def agree(ours, peer):
        errs = [abs(a - b) / max(abs(b), 1e-30) for a, b in zip(ours, peer)]
        text = ", ".join(f"{n} {a:.6g} vs {b:.6g}" for n, a, b in zip(names, ours, peer))
        return max(errs) <= tol, f"{text} (max rel diff {max(errs):.1e}, tol {tol:g})"
    return agree


def count_agree(n: int, tol_samples: int, names: tuple[str, ...]):
    def agree(ours, peer):
        diff = max(abs(a - b) for a, b in zip(ours, peer))
        text = ", ".join(f"{nm} {a:.4f} vs {b:.4f}" for nm, a, b in zip(names, ours, peer))
        return diff <= tol_samples / n, (f"{text} (max diff {diff * n:.3g} / {n}, tol "
                                         f"{tol_samples} / {n})")
    return agree


# ============================================================================== the rows
def run(quick: bool) -> list[Row]:
    n = 2000 if quick else 10**4
    rows = []
    for d in ((64, 256) if quick else (64, 2048)):
        real, fake = feature_sets(n, d)
        rj, fj = jnp.asarray(real), jnp.asarray(fake)
        repeats = 3 if d <= 256 else 1
        size = f"N=M={n:.0e}".replace("e+0", "e") + f", D={d}, float32"

        rows.append(compare(
            f"FID (ours: float32 stats, eigh floors; peer: pytorch-fid recipe, np.cov float64 + "
            f"scipy sqrtm), {size}",
            lambda: metrics.fid(rj, fj), lambda: peer_fid(real, fake),
            lambda: metrics.fid(rj, fj), lambda: peer_fid(real, fake),
            rel_agree(1e-3, ("FID",)), repeats, NUMPY, ""))

        key = jax.random.key(0)
        subsets = our_kid_subsets(key, n, n)
        rows.append(compare(
            f"KID ({N_SUBSETS} subsets of {SUBSET_SIZE}, unbiased MMD^2, cubic kernel; peer: "
            f"clean-fid/StyleGAN2-ADA loop), {size}",
            lambda: metrics.kid(key, rj, fj, n_subsets=N_SUBSETS, subset_size=SUBSET_SIZE),
            lambda: peer_kid(real, fake),
            lambda: tuple(metrics.kid(key, rj, fj, n_subsets=N_SUBSETS, subset_size=SUBSET_SIZE)),
            lambda: peer_kid(real, fake, subsets),
            rel_agree(1e-3, ("mean", "std")), repeats, NUMPY, "check on the same subsets"))

        rows.append(compare(
            f"precision/recall k={K_PR} (peer: prdc approach, pairwise_distances + np.partition), "
            f"{size}",
            lambda: metrics.precision_recall(rj, fj, k=K_PR)[:2],
            lambda: peer_precision_recall(real, fake, K_PR),
            lambda: tuple(metrics.precision_recall(rj, fj, k=K_PR)[:2]),
            lambda: peer_precision_recall(real, fake, K_PR),
            count_agree(n, 5, ("P", "R")), repeats, SKLEARN, "ours closed balls, prdc open"))

        rows.append(compare(
            f"density/coverage k={K_DC} (peer: prdc approach, pairwise_distances + np.partition), "
            f"{size}",
            lambda: metrics.density_coverage(rj, fj, k=K_DC),
            lambda: peer_density_coverage(real, fake, K_DC),
            lambda: tuple(metrics.density_coverage(rj, fj, k=K_DC)),
            lambda: peer_density_coverage(real, fake, K_DC),
            count_agree(n, 5, ("density", "coverage")), repeats, SKLEARN,
            "ours closed balls, prdc open"))
    return rows


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="N = M = 2000, D = 64 and 256")
    args = parser.parse_args()
    print(markdown_table(run(args.quick)))
