"""Evaluating generative models: likelihoods, IS, FID, KID, precision/recall, density/coverage, PPL.

Three families of numbers, each with what it can and cannot say:

* **Likelihood-based** (models that have one: GMM, HMM, AR, n-gram, RNN, GPT; a VAE's ELBO or
  IWAE bound is a lower bound): :func:`bits_per_dim`, :func:`bits_per_char`,
  :func:`perplexity` convert a negative log-likelihood in nats to the units people report.
* **Sample-based, on the features of a stated network**: :func:`inception_score` (on the
  class probabilities), :func:`fid` / :func:`frechet_distance` / :func:`gaussian_stats`,
  :func:`kid`, :func:`precision_recall` (k-NN manifolds, with F1), :func:`density_coverage`,
  :func:`nearest_neighbours` (memorisation), :func:`perceptual_path_length` (smoothness of a
  latent space).
* **The feature network**: the course uses its own MNIST classifier (notebook 05's CNN,
  ``course_lib.nets.CNN``, passed in by the caller: topic modules never import each other),
  trained and cached by :func:`train_feature_net`; :func:`features` reads its penultimate
  layer, :func:`class_probs` its softmax. These are **MNIST features, not Inception**:
  numbers computed with them compare models with each other, never with published
  ImageNet/Inception FIDs.

Shapes: ``N`` real and ``M`` generated samples, ``D`` feature width, ``C`` classes. Every
kernel is jit-compiled and works in the inputs' floating dtype: float32 by default, float64
when ``jax_enable_x64`` is on and float64 arrays are given.

Distances for k-NN metrics are squared Euclidean, computed ``block_size`` query rows at a
time against the whole other set (a ``10^4 x 10^4`` problem never holds more than
``block_size x 10^4`` distances at once) by the matrix-product expansion
``|a'|^2 + |b'|^2 - 2 a'.b'`` of ``a' = a - c``, ``b' = b - c``. Its rounding error grows with
``|a'|^2 + |b'|^2``, not with the distance: in float32, points 10^4 from ``c`` and 1 apart
would get errors of several units. Hence, wherever the data lie: the query rows are put in a
spatial order (recursive bisection along principal axes), so that a block is compact, and
each block is centred on one of its own rows (or on the reference's mean when that is as
near), ``b - c`` computed explicitly; every computed distance carries a rounding bound
``gamma (|a'|^2 + |b'|^2)``, ``gamma = (8 sqrt(D) + 16) u`` (``u`` the unit roundoff; measured
errors stay below 1/8 of it). The k nearest neighbours are picked among candidates ranked by
lower bounds, recomputed directly as ``sum((a - b)^2)`` (an exact copy is at distance exactly
0; among equal distances the lower index comes first) and certified by the bound; a ball test
is taken as computed when its bound is at most ``4 gamma`` times the radius^2. Query rows that
the bound leaves in doubt are redone in small chunks, each centred on one of its rows, and if
still in doubt from direct differences. The results thus equal an exact computation's except
for pairs within ``4 gamma`` (relative: 1e-5 at ``D = 8``, 1e-4 at ``D = 2048`` in float32) of
a ball's boundary; far-apart clusters cost time (more rows redone), not accuracy. Balls are
closed (``d <= radius``): a generated sample on a ball's boundary, or a duplicate of a point
whose k-th neighbour is itself a duplicate, is inside; on coarse-grid data (small integers)
every distance is exact, so boundary ties are exact too.
"""
from __future__ import annotations

import hashlib
import json
import math
from functools import partial
from pathlib import Path
from typing import Callable, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from course_lib import _validate, data, train

Array = jax.Array

__all__ = [
    # likelihoods
    "bits_per_dim", "bits_per_char", "perplexity",
    # Gaussian feature statistics
    "GaussianStats", "gaussian_stats", "frechet_distance", "fid",
    # scores with a spread
    "MeanStd", "inception_score", "kid",
    # k-NN manifolds
    "PrecisionRecall", "precision_recall", "DensityCoverage", "density_coverage",
    "Neighbours", "nearest_neighbours",
    # latent spaces
    "PathLength", "perceptual_path_length",
    # the feature network
    "FeatureNet", "train_feature_net", "mnist_feature_net", "features", "class_probs",
]

LN2 = math.log(2.0)
# Full float32 products on every backend: a GPU's default (TF32 on recent NVIDIA cards) would
# round the covariances, square roots and distances to ~1e-3, moving FID and k-NN ball tests.
_dot = partial(jnp.matmul, precision=jax.lax.Precision.HIGHEST)


# ================================================================================ checks
def _feature_set(x, name: str, *, min_rows: int = 1) -> Array:
    """A finite ``(rows, D)`` float array with at least ``min_rows`` rows and ``D >= 1``."""
    x = _validate.real_array(x, name, ndim=2)
    if x.shape[1] < 1:
        raise ValueError(f"{name} must have at least one feature column, got shape {tuple(x.shape)}")
    if x.shape[0] < min_rows:
        raise ValueError(f"{name} must hold at least {min_rows} samples (rows), got {x.shape[0]}")
    return x


def _same_width(a: Array, b: Array, name_a: str, name_b: str) -> tuple[Array, Array]:
    """Both sets with one width and one dtype (the wider of the two)."""
    if a.shape[-1] != b.shape[-1]:
        raise ValueError(f"{name_b} has feature width {b.shape[-1]} but {name_a} has "
                         f"{a.shape[-1]}: both must come from the same feature network layer")
    dtype = jnp.result_type(a.dtype, b.dtype)
    return a.astype(dtype), b.astype(dtype)


def _nats(x, name: str, *, nonnegative: bool) -> Array:
    x = _validate.real_array(x, name)
    if nonnegative and _validate.is_concrete(x) and bool(np.any(np.asarray(x) < 0)):
        raise ValueError(f"{name} must be >= 0 (a cross-entropy in nats), got "
                         f"{float(np.min(np.asarray(x))):.6g}")
    return x


# ============================================================================ likelihoods
def bits_per_dim(nll_nats, n_dims: int) -> Array:
    """Negative log-likelihood of one example in **bits per dimension**.

    ``bpd = nll_nats / (n_dims * ln 2)``: ``nll_nats`` is ``-log p(x)`` of a whole example
    (e.g. a 784-pixel image, summed over its pixels), in nats, scalar or array (one per
    example); ``n_dims`` the example's number of dimensions (784 for MNIST). For a discrete
    model this is the number of bits an entropy coder would spend per pixel. For a density
    on continuous values it can be negative, and it is only comparable with other models under
    the same data protocol (binarisation, dequantisation, scaling).
    """
    nll = _nats(nll_nats, "nll_nats", nonnegative=False)
    n_dims = _validate.count(n_dims, "n_dims")
    return nll / (n_dims * LN2)


def bits_per_char(mean_cross_entropy_nats) -> Array:
    """Mean cross-entropy per character in **bits**: ``bpc = CE_nats / ln 2``.

    ``mean_cross_entropy_nats``: ``-(1/T) sum_t log p(x_t | x_<t)`` in nats (scalar or
    array), as ``train.cross_entropy`` returns it for a character model. Uniform guessing over
    ``V`` symbols scores ``log2 V`` bits (6.39 for 84 Shakespeare symbols).
    """
    return _nats(mean_cross_entropy_nats, "mean_cross_entropy_nats", nonnegative=True) / LN2


def perplexity(mean_cross_entropy_nats) -> Array:
    """Perplexity ``exp(CE_nats) = 2^bpc``: the effective number of equally likely next symbols.

    ``mean_cross_entropy_nats``: the mean per-token cross-entropy in nats (scalar or array).
    A model that spreads its guess evenly over ``V`` symbols has perplexity ``V``.
    """
    return jnp.exp(_nats(mean_cross_entropy_nats, "mean_cross_entropy_nats", nonnegative=True))


# ================================================================= Gaussian statistics, FID
class GaussianStats(NamedTuple):
    """Mean ``(D,)`` and covariance ``(D, D)`` (unbiased, ``1/(n - 1)``) of a feature set."""

    mean: Array
    cov: Array


@jax.jit
def _gaussian_stats(x: Array) -> GaussianStats:
    mean = jnp.mean(x, axis=0)
    xc = x - mean
    cov = _dot(xc.T, xc) / (x.shape[0] - 1)
    return GaussianStats(mean, 0.5 * (cov + cov.T))


def gaussian_stats(features) -> GaussianStats:
    """Mean and covariance of ``features (n, D)``: the Gaussian that FID fits to a feature set.

    ``mean = (1/n) sum_i f_i``, ``cov = (1/(n-1)) sum_i (f_i - mean)(f_i - mean)^T`` (as
    ``numpy.cov``), computed on centred features. ``n >= 2``. With ``n <= D`` the covariance
    is singular (rank ``n - 1``): :func:`frechet_distance` handles that (see there).
    """
    return _gaussian_stats(_feature_set(features, "features", min_rows=2))


def _psd_factor(c: Array, rtol: Array) -> tuple[Array, Array, Array]:
    """``F = V sqrt(W)`` with ``c = V W V^T`` by ``eigh`` (so ``F F^T`` is ``c`` floored:
    eigenvalues ``<= rtol * max`` -> 0), the trace of the floored matrix, and the smallest
    eigenvalue relative to the largest (to refuse indefinite input)."""
    w, v = jnp.linalg.eigh(0.5 * (c + c.T))
    top = jnp.max(jnp.abs(w))
    safe_top = jnp.where(top > 0, top, 1.0)
    kept = jnp.where(w > rtol * top, w, 0.0)
    return v * jnp.sqrt(kept), jnp.sum(kept), jnp.min(w) / safe_top


@jax.jit
def _frechet(mean1, cov1, mean2, cov2, rtol):
    f1, trace1, low1 = _psd_factor(cov1, rtol)
    f2, trace2, low2 = _psd_factor(cov2, rtol)
    # Tr (cov1 cov2)^(1/2) = sum of the singular values of g = f1^T f2 (g g^T = f1^T cov2 f1 is
    # similar to cov1 cov2). Each singular value is |g^T u_i| for the eigenvectors u_i of g g^T:
    # found to ~eps |g| like an SVD's, where sqrt of g g^T's eigenvalues (their squares) would
    # lose half the digits; a symmetric eigh costs a fraction of an SVD on the CPU.
    g = _dot(f1.T, f2)
    _, u = jnp.linalg.eigh(_dot(g, g.T))
    trace_sqrt = jnp.sum(jnp.linalg.norm(_dot(u.T, g), axis=1))
    diff = mean1 - mean2
    value = jnp.sum(diff * diff) + trace1 + trace2 - 2.0 * trace_sqrt
    return jnp.maximum(value, 0.0), low1, low2


def _covariance(cov, name: str, width: int) -> Array:
    cov = _validate.real_array(cov, name, ndim=2)
    if cov.shape != (width, width):
        raise ValueError(f"{name} must be ({width}, {width}) to match the means' width {width}, "
                         f"got shape {tuple(cov.shape)}")
    if _validate.is_concrete(cov):
        c = np.asarray(cov, np.float64)
        scale = max(float(np.abs(c).max()), 1e-300)
        if not np.allclose(c, c.T, rtol=1e-5, atol=1e-6 * scale):
            raise ValueError(f"{name} must be symmetric (a covariance matrix)")
    return cov


def frechet_distance(mean1, cov1, mean2, cov2, *, eps: float | None = None) -> Array:
    """Fréchet (2-Wasserstein squared) distance between ``N(mean1, cov1)`` and ``N(mean2, cov2)``.

    ``d^2 = |mean1 - mean2|^2 + Tr(cov1) + Tr(cov2) - 2 Tr((cov1 cov2)^(1/2))``. Means ``(D,)``,
    covariances ``(D, D)`` symmetric positive **semi**-definite. Returns a scalar ``>= 0``.

    The matrix square root, stably and in real arithmetic: factors ``f1 = V1 W1^(1/2)`` and
    ``f2 = V2 W2^(1/2)`` (``cov = V W V^T``) by symmetric eigendecompositions, then
    ``Tr((cov1 cov2)^(1/2))`` = the sum of the singular values ``sigma_i`` of ``g = f1^T f2``
    (``g g^T = f1^T cov2 f1`` is symmetric PSD, similar to ``cov1 cov2``), each computed as
    ``sigma_i = |g^T u_i|`` from the eigenvectors ``u_i`` of ``g g^T`` (accurate to
    ``~eps |g|`` as an SVD's, unlike ``sqrt`` of ``g g^T``'s eigenvalues, which loses half the
    digits of the small ones). No complex numbers, no Newton iteration, no ``sqrtm`` of a
    non-symmetric product.

    **Singular covariances** (fewer samples than features, dead units, features confined to a
    subspace) are allowed. Regulariser: in each covariance the eigenvalues at or below
    ``eps * lambda_max`` are set to exactly 0 (they are rounding noise, possibly negative,
    whose square roots would otherwise add ``sqrt(noise)`` to the trace), and the result is
    the exact Fréchet distance of the Gaussians with those floored covariances.
    ``eps=None`` uses ``D * machine epsilon`` of the dtype, NumPy's ``matrix_rank`` tolerance.
    Unlike adding ``eps * I`` to both covariances (pytorch-fid's fallback), this leaves every
    resolvable eigenvalue untouched: the distance stays finite and equals the Fréchet distance
    of the degenerate Gaussians, up to eigenvalues below the floor. Matrices with an
    eigenvalue below ``-10 * D * machine epsilon * lambda_max`` are refused as not PSD.
    """
    mean1 = _validate.real_array(mean1, "mean1", ndim=1)
    mean2 = _validate.real_array(mean2, "mean2", ndim=1)
    if mean2.shape != mean1.shape:
        raise ValueError(f"mean2 has width {mean2.shape[0]} but mean1 has {mean1.shape[0]}")
    width = mean1.shape[0]
    if width < 1:
        raise ValueError("mean1 must hold at least one feature")
    cov1 = _covariance(cov1, "cov1", width)
    cov2 = _covariance(cov2, "cov2", width)
    dtype = jnp.result_type(mean1.dtype, mean2.dtype, cov1.dtype, cov2.dtype)
    machine = float(jnp.finfo(dtype).eps)
    rtol = width * machine if eps is None else _validate.real(eps, "eps", low=0.0, high=1.0)
    value, low1, low2 = _frechet(*(a.astype(dtype) for a in (mean1, cov1, mean2, cov2)),
                                 jnp.asarray(rtol, dtype))
    for low, name in ((low1, "cov1"), (low2, "cov2")):
        if _validate.is_concrete(low) and float(low) < -10 * width * machine:
            raise ValueError(f"{name} must be positive semi-definite; its smallest eigenvalue is "
                             f"{float(low):.3g} times its largest")
    return value


def fid(features_real, features_fake, *, eps: float | None = None) -> Array:
    """Fréchet distance between Gaussians fitted to two feature sets (FID on Inception features).

    ``features_real (N, D)``, ``features_fake (M, D)``, ``N, M >= 2``: :func:`gaussian_stats`
    of each, then :func:`frechet_distance` (``eps``: its eigenvalue floor). 0 for identical
    sets; invariant to a rotation or translation applied to both. Biased upwards at small
    sample sizes (it falls as ``N, M`` grow), so compare FIDs only at equal sizes.
    """
    real = _feature_set(features_real, "features_real", min_rows=2)
    fake = _feature_set(features_fake, "features_fake", min_rows=2)
    real, fake = _same_width(real, fake, "features_real", "features_fake")
    return frechet_distance(*_gaussian_stats(real), *_gaussian_stats(fake), eps=eps)


# ================================================================== IS and KID (mean, std)
class MeanStd(NamedTuple):
    """A score averaged over splits or subsets, and its standard deviation across them."""

    mean: Array
    std: Array


@partial(jax.jit, static_argnames="n_splits")
def _inception_score(probs: Array, segment: Array, n_splits: int) -> MeanStd:
    counts = jax.ops.segment_sum(jnp.ones_like(probs[:, 0]), segment, n_splits)
    marginal = jax.ops.segment_sum(probs, segment, n_splits) / counts[:, None]
    xlogy = jax.scipy.special.xlogy
    kl = jnp.sum(xlogy(probs, probs) - xlogy(probs, marginal[segment]), axis=1)
    scores = jnp.exp(jax.ops.segment_sum(kl, segment, n_splits) / counts)
    return MeanStd(jnp.mean(scores), jnp.std(scores))


def inception_score(probs, *, n_splits: int = 10) -> MeanStd:
    """Inception score ``IS = exp(E_x KL(p(y|x) || p(y)))`` over splits (syllabus erratum 10).

    ``probs (n, C)``: a classifier's class probabilities ``p(y|x)`` for ``n`` generated
    samples (rows sum to 1; here :func:`class_probs` of the course's MNIST classifier). The
    samples are cut into ``n_splits`` consecutive parts (part ``s`` holds rows
    ``s n // n_splits`` to ``(s + 1) n // n_splits``, as in the original code); in each,
    ``p(y)`` is the mean of its rows and the score ``exp(mean_x KL(p(y|x) || p(y)))``
    (``0 log 0 = 0``). Returns the mean and the (population, ``ddof=0``) standard deviation of
    the ``n_splits`` scores. ``1 <= IS <= C``: 1 when every sample gets the same prediction,
    ``C`` when predictions are confident (one-hot) and spread evenly over the ``C`` classes.
    Needs ``1 <= n_splits <= n``. Splits are consecutive, so shuffle samples that come ordered
    (e.g. by class, as generated per label or as the test split): sorted by class, each split
    holds one class and scores about 1. Like FID it depends on ``n`` (more samples per split,
    higher score): compare scores at one ``n`` and ``n_splits``.
    """
    probs = _validate.probabilities(probs, "probs")
    if probs.ndim != 2 or probs.shape[0] < 1 or probs.shape[1] < 1:
        raise ValueError(f"probs must be (n, C) class probabilities, got shape {tuple(probs.shape)}")
    n = probs.shape[0]
    n_splits = _validate.count(n_splits, "n_splits")
    if n_splits > n:
        raise ValueError(f"n_splits ({n_splits}) is larger than the sample: probs holds {n} rows")
    segment = (np.arange(n)[:, None] >= (np.arange(1, n_splits) * n // n_splits)[None]).sum(1)
    return _inception_score(probs, jnp.asarray(segment, jnp.int32), n_splits)


def _polynomial_kernel(a: Array, b: Array) -> Array:
    return (_dot(a, b.T) / a.shape[1] + 1.0) ** 3


@partial(jax.jit, static_argnames="subset_size")
def _kid(keys: Array, real: Array, fake: Array, subset_size: int) -> MeanStd:
    m = subset_size

    def one(key):
        k_real, k_fake = jax.random.split(key)
        x = real[jax.random.choice(k_real, real.shape[0], (m,), replace=False)]
        y = fake[jax.random.choice(k_fake, fake.shape[0], (m,), replace=False)]
        kxx, kyy, kxy = _polynomial_kernel(x, x), _polynomial_kernel(y, y), _polynomial_kernel(x, y)
        within = (jnp.sum(kxx) - jnp.trace(kxx) + jnp.sum(kyy) - jnp.trace(kyy)) / (m * (m - 1))
        return within - 2.0 * jnp.sum(kxy) / (m * m)

    values = jax.lax.map(one, keys)
    return MeanStd(jnp.mean(values), jnp.std(values))


def kid(key, features_real, features_fake, *, n_subsets: int = 100,
        subset_size: int = 1000) -> MeanStd:
    """Kernel inception distance: the unbiased MMD^2 with the cubic polynomial kernel.

    ``k(x, y) = (x.y / D + 1)^3``. On each of ``n_subsets`` subsets, ``subset_size = m`` rows
    drawn without replacement from each set (``key`` draws them)::

        MMD^2_u = sum_{i != j} k(x_i, x_j) / (m (m-1)) + sum_{i != j} k(y_i, y_j) / (m (m-1))
                  - 2 sum_{i, j} k(x_i, y_j) / m^2

    Returns the mean over subsets and their (``ddof=0``) standard deviation. Unbiased: its
    expectation is 0 when both sets come from one distribution (single values can be < 0),
    and it does not drift with the sample size the way FID does. ``subset_size`` must be
    ``>= 2`` and at most the size of either set; ``subset_size`` equal to both sizes gives the
    estimator on the whole sets (the same for every subset). The kernel is not scale-free: KID
    grows with the features' scale (up to its sixth power), so compare KIDs on one network.
    """
    key = _validate.key(key)
    real = _feature_set(features_real, "features_real", min_rows=2)
    fake = _feature_set(features_fake, "features_fake", min_rows=2)
    real, fake = _same_width(real, fake, "features_real", "features_fake")
    n_subsets = _validate.count(n_subsets, "n_subsets")
    subset_size = _validate.count(subset_size, "subset_size", minimum=2)
    smaller = min(real.shape[0], fake.shape[0])
    if subset_size > smaller:
        raise ValueError(f"subset_size ({subset_size}) is larger than the sample: features_real "
                         f"has {real.shape[0]} rows, features_fake {fake.shape[0]}")
    return _kid(jax.random.split(key, n_subsets), real, fake, subset_size)


# ==================================================================== blocked k-NN kernels
# Squared distances, in the working dtype, as |a'|^2 + |b'|^2 - 2 a'.b' with a' = a - c and
# b' = b - c for a centre c near a: the matrix product makes this fast, but its rounding error
# grows with |a'|^2 + |b'|^2, not with the distance. Hence (module docstring): query rows in a
# spatial order, so that a block holds near rows and one of them is a good centre; rounding
# bounds on every value; direct recomputation (sum((a - b)^2)) of the k-NN candidates, and of
# any query row whose result the bound leaves in doubt.
_LEAF = 16            # rows per leaf of the spatial order
_SKETCH = 32          # wider data are ordered by their projection on this many directions
_POWER_STEPS = 3      # power-iteration steps for each group's principal axis
_EXTRA = 4            # candidates beyond k that _knn recomputes exactly
_CHUNK = 32           # query rows per chunk of the second pass
_TRUSTED = 4.0        # a ball test is taken as computed when |a'|^2 + |b'|^2 <= _TRUSTED r^2


def _rounding_bound(dtype, width: int) -> float:
    """``gamma`` with ``|d2_computed - d2| <= gamma (|a'|^2 + |b'|^2)`` for the expansion.

    Each length-``D`` sum (the two squared norms, the product ``a'.b'``) is off by at most
    ``lambda sqrt(D) u`` times the sum of its terms' magnitudes with high probability
    (Higham & Mary's probabilistic bound, ``lambda = 4``; ``u`` the unit roundoff), which gives
    ``8 sqrt(D) u (|a'|^2 + |b'|^2)`` with ``2 |a'||b'| <= |a'|^2 + |b'|^2``; the centring
    ``a - c`` and the three additions add ``16 u (...)`` at most.
    """
    return (8.0 * math.sqrt(width) + 16.0) * float(jnp.finfo(dtype).eps) / 2


def _spatial_order(x: Array) -> Array:
    """A permutation of the rows of ``x (n, D)`` in which neighbouring rows are close in space.

    Recursive bisection: each group of rows is sorted along its own principal axis (a few
    power-iteration steps from the coordinate of largest spread) and halved, down to groups
    of about ``_LEAF`` rows; shapes are static (rows padded to a multiple of the number of
    leaves, padding sorted last). Wider data than ``_SKETCH`` are ordered by their projection
    on an approximate top-``_SKETCH`` principal subspace (one power step of a fixed Gaussian
    sketch), which keeps far-apart clusters apart. Only speed depends on this order, never a
    result.
    """
    n, width = x.shape
    if n <= _LEAF:
        return jnp.arange(n)
    z = x - jnp.mean(x, axis=0)
    z = z / jnp.maximum(jnp.max(jnp.abs(z)), jnp.finfo(x.dtype).tiny)
    if width > _SKETCH:
        omega = jax.random.normal(jax.random.key(0), (width, _SKETCH), x.dtype)
        basis, _ = jnp.linalg.qr(z.T @ (z @ omega))
        z = z @ basis
    levels = math.ceil(math.log2(n / _LEAF))
    n_pad = -(-n // 2 ** levels) * 2 ** levels
    z = jnp.pad(z, ((0, n_pad - n), (0, 0)))
    real = jnp.arange(n_pad) < n
    order = jnp.arange(n_pad)
    for level in range(levels):
        groups = 2 ** level
        zs = z[order].reshape(groups, -1, z.shape[1])
        ok = real[order].reshape(groups, -1)
        w = ok[..., None].astype(z.dtype)
        count = jnp.maximum(jnp.sum(w, axis=1, keepdims=True), 1)
        zc = (zs - jnp.sum(zs * w, axis=1, keepdims=True) / count) * w
        widest = jnp.argmax(jnp.sum(zc * zc, axis=1), axis=-1)
        axis = jax.nn.one_hot(widest, z.shape[1], dtype=z.dtype)
        for _ in range(_POWER_STEPS):
            axis = jnp.einsum("gsp,gs->gp", zc, jnp.einsum("gsp,gp->gs", zc, axis))
            axis = axis / jnp.maximum(jnp.linalg.norm(axis, axis=1, keepdims=True),
                                      jnp.finfo(z.dtype).tiny)
        key = jnp.where(ok, jnp.einsum("gsp,gp->gs", zc, axis), jnp.inf)
        order = jnp.take_along_axis(order.reshape(groups, -1),
                                    jnp.argsort(key, axis=1, stable=True), axis=1).reshape(-1)
    return order[jnp.argsort(~real[order], stable=True)][:n]


def _blocks(x: Array, block: int) -> tuple[Array, Array]:
    """``x (n, ...)`` padded with zero rows to whole blocks: ``(n_blocks, block, ...)``, and a
    ``(n_blocks, block)`` mask of the real rows."""
    n = x.shape[0]
    n_blocks = -(-n // block)
    pad = n_blocks * block - n
    xp = jnp.pad(x, ((0, pad),) + ((0, 0),) * (x.ndim - 1))
    valid = jnp.arange(n_blocks * block) < n
    return xp.reshape(n_blocks, block, *x.shape[1:]), valid.reshape(n_blocks, block)


def _round_centre(c: Array, x: Array, ok: Array) -> Array:
    """``c`` rounded to a multiple of a power of two near 1/16 of the spread ``max |x - c|``
    of the rows ``ok`` (a move of at most 1/32 of it): on coarse-grid data (small integers,
    ...) the centred values, their squares and products are then exact, so ties at a ball's
    boundary stay exact ties."""
    spread = jnp.max(jnp.where(ok[:, None], jnp.abs(x - c), 0))
    grid = jnp.exp2(jnp.floor(jnp.log2(jnp.maximum(spread, jnp.finfo(x.dtype).tiny))) - 4)
    return jnp.where((spread > 0) & (jnp.abs(c) < 2.0 ** 22 * grid), jnp.round(c / grid) * grid, c)


def _frame(reference: Array) -> tuple[Array, Array, Array]:
    """The reference's own (rounded) mean ``g``, ``reference - g`` and its squared norms:
    computed once per pass, shared by the blocks that lie near ``g``."""
    g = _round_centre(jnp.mean(reference, axis=0), reference, jnp.ones(reference.shape[0], bool))
    moved = reference - g
    return g, moved, jnp.sum(moved * moved, axis=1)


def _in_frame(q: Array, ok: Array, reference: Array, frame, fn):
    """``fn(q - c, reference - c, |q - c|^2, |reference - c|^2)`` for a centre ``c`` near the
    block ``q`` (rows ``ok``), ``reference - c`` computed explicitly (never as
    ``|b|^2 - 2 b.c + |c|^2``).

    ``c`` is the block's middle row (its rows are in spatial order; a data point, so a block
    that straddles far-apart clusters is centred on one of them, not between them), rounded
    by :func:`_round_centre`. When the shared centre ``g`` of ``frame`` is about as near
    (``|q - g|^2 <= 2 |q - c|^2`` for at least half of the rows), ``g`` is used instead, with
    the precomputed ``reference - g``: no ``(R, D)`` array is written for the block."""
    n_ok = jnp.sum(ok)
    middle = jnp.argmax(ok & (jnp.cumsum(ok) - 1 == n_ok // 2))
    c = _round_centre(q[middle], q, ok)
    g, moved, norms = frame
    as_near = jnp.sum((q - g) ** 2, axis=1) <= 2 * jnp.sum((q - c) ** 2, axis=1)
    shared = 2 * jnp.sum(ok & as_near) >= n_ok

    def at(centre, rc, rn):
        qc = q - centre
        return fn(qc, rc, jnp.sum(qc * qc, axis=1), rn)

    def own(_):
        rc = reference - c
        return at(c, rc, jnp.sum(rc * rc, axis=1))

    return jax.lax.cond(shared, lambda _: at(g, moved, norms), own, None)


def _exact_sq(a: Array, b: Array) -> Array:
    """``sum((a - b)^2)`` over the last axis: each difference rounded once, so accurate to
    ``~sqrt(D) u`` relative and exactly 0 for equal rows."""
    diff = a - b
    return jnp.sum(diff * diff, axis=-1)


def _exact_rows(q: Array, reference: Array) -> Array:
    """``(len(q), R)`` squared distances by :func:`_exact_sq`, one query row at a time."""
    return jax.lax.map(lambda row: _exact_sq(row, reference), q)


def _second_pass(done: Array, process, state, chunk: int):
    """``state = process(state, rows, live)`` on consecutive chunks of the positions where
    ``done`` is False (``rows (chunk,)``; ``live`` marks the real ones in the last chunk).
    A ``while_loop``: nothing runs when every row is done."""
    n = done.shape[0]
    todo = jnp.sum(~done)
    positions = jnp.concatenate([jnp.nonzero(~done, size=n, fill_value=0)[0],
                                 jnp.zeros(chunk, jnp.int32)])

    def body(carry):
        i, state = carry
        rows = jax.lax.dynamic_slice(positions, (i * chunk,), (chunk,))
        return i + 1, process(state, rows, i * chunk + jnp.arange(chunk) < todo)

    return jax.lax.while_loop(lambda carry: carry[0] * chunk < todo, body, (0, state))[1]


def _knn_block(q: Array, ok: Array, reference: Array, frame, k: int, gamma: float):
    """The ``k`` nearest reference rows of a block of query rows: squared distances (exact,
    ascending, ties by lower index), indices, and whether the result is certified.

    Lower bounds ``L = d2_computed - gamma (|a'|^2 + |b'|^2)`` rank the reference; the
    ``m = k + _EXTRA`` lowest are recomputed exactly and sorted by ``(d2, index)``. Certified
    when the ``(m + 1)``-th lowest bound exceeds the exact k-th distance: then no other row can
    be nearer (or tie). Rows that are not ``ok`` (padding) count as certified.
    """
    n_ref = reference.shape[0]
    m = min(k + _EXTRA, n_ref)

    def candidates(qc, rc, qn, rn):
        lower = ((1 - gamma) * qn)[:, None] + ((1 - gamma) * rn)[None, :] - 2.0 * _dot(qc, rc.T)
        return jax.lax.top_k(-lower, min(m + 1, n_ref))

    # the barrier keeps XLA:CPU from fusing the top_k's producers into the gather (50x slower)
    neg, cand = jax.lax.optimization_barrier(_in_frame(q, ok, reference, frame, candidates))
    exact = _exact_sq(q[:, None, :], reference[cand[:, :m]])
    d2, idx = jax.lax.sort((exact, cand[:, :m]), dimension=1, num_keys=2)
    d2, idx = d2[:, :k], idx[:, :k]
    if m == n_ref:                       # every row was recomputed
        return d2, idx, jnp.ones(q.shape[0], bool)
    return d2, idx, (-neg[:, m] > d2[:, -1]) | ~ok


def _knn_ordered(qs: Array, reference: Array, k: int, block: int, gamma: float):
    """:func:`_knn_block` over ``block``-row blocks of ``qs`` (already in spatial order); rows
    not certified go again in ``_CHUNK``-row chunks (each centred by :func:`_in_frame`); rows
    still not certified there are computed in full by :func:`_exact_rows`."""
    n = qs.shape[0]
    block = min(block, n)
    blocks, valid = _blocks(qs, block)
    frame = _frame(reference)
    d2, idx, done = jax.lax.map(lambda b: _knn_block(b[0], b[1], reference, frame, k, gamma),
                                (blocks, valid))
    d2, idx, done = d2.reshape(-1, k)[:n], idx.reshape(-1, k)[:n], done.reshape(-1)[:n]

    def process(state, rows, live):
        q = qs[rows]
        cd2, cidx, cert = _knn_block(q, live, reference, frame, k, gamma)

        def full(_):
            neg, fidx = jax.lax.top_k(-_exact_rows(q, reference), k)   # ties: lower index first
            return jnp.where(cert[:, None], cd2, -neg), jnp.where(cert[:, None], cidx, fidx)

        cd2, cidx = jax.lax.cond(jnp.any(~cert), full, lambda _: (cd2, cidx), None)
        target = jnp.where(live, rows, n)                               # n: dropped
        return state[0].at[target].set(cd2, mode="drop"), state[1].at[target].set(cidx, mode="drop")

    return _second_pass(done, process, (d2, idx), min(_CHUNK, n))


def _unpermute(values: Array, order: Array) -> Array:
    """``out[order[i]] = values[i]``."""
    return jnp.zeros_like(values).at[order].set(values)


@partial(jax.jit, static_argnames=("k", "block"))
def _knn(query: Array, reference: Array, k: int, block: int) -> tuple[Array, Array]:
    """The ``k`` smallest squared distances from each query row to ``reference``, and indices."""
    gamma = _rounding_bound(query.dtype, query.shape[1])
    order = _spatial_order(query)
    d2, idx = _knn_ordered(query[order], reference, k, block, gamma)
    return _unpermute(d2, order), _unpermute(idx, order)


def _radii_sq(x: Array, order: Array, k: int, block: int, gamma: float) -> Array:
    """Squared distance of each row to its k-th nearest other row (the row itself, at
    distance 0, is the first of the ``k + 1`` nearest); ``order``: ``_spatial_order(x)``."""
    return _unpermute(_knn_ordered(x[order], x, k + 1, block, gamma)[0][:, -1], order)


def _ball_tests(d2: Array, qn: Array, rn: Array, r2: Array, gamma: float):
    """``d2 <= r2`` as computed, and where that is in doubt: the rounding bound
    ``gamma (|a'|^2 + |b'|^2)`` reaches past the boundary and exceeds ``_TRUSTED gamma r2``
    (below that it is within a small factor of a direct computation's bound, ~``4 sqrt(D) u
    r2``, so redoing the test directly would not make it much more certain). ``qn (B, 1)``,
    ``rn (1, R)``: squared norms of the centred rows; ``r2``: radii^2, ``(1, R)`` or
    ``(B, 1)``. Written without ``qn + rn`` so that XLA does not store that ``(B, R)`` sum."""
    doubt = (qn > _TRUSTED * r2 - rn) & (jnp.abs(d2 - r2) < gamma * qn + gamma * rn)
    return d2 <= r2, doubt


def _cross_block(q, ok, q_r2, reference, reference_r2, frame, gamma, exact: bool):
    """Ball tests of a block of query rows against all of ``reference``: per query row the
    number of reference balls holding it (``counts``); per reference row whether a query row
    lies in its ball (``in_ref``) or it lies in a query row's ball (``in_query``), from the
    pairs of ``ok`` rows whose test is certain (so never wrongly True); and which rows have
    every test certain (padding counts as certain).
    ``exact``: distances by :func:`_exact_rows`, all certain."""
    no = jnp.zeros((q.shape[0], reference.shape[0]), bool)
    ok_col = ok[:, None]

    def reduce(d2, tests):
        inside_ref, doubt_ref = (no, no) if reference_r2 is None else tests(reference_r2[None, :])
        inside_query, doubt_query = (no, no) if q_r2 is None else tests(q_r2[:, None])
        certain = ~jnp.any(doubt_ref | doubt_query, axis=1)
        return (jnp.sum(inside_ref, axis=1), jnp.any(inside_ref & ~doubt_ref & ok_col, axis=0),
                jnp.any(inside_query & ~doubt_query & ok_col, axis=0), certain | ~ok)

    if exact:
        d2 = _exact_rows(q, reference)
        return reduce(d2, lambda r2: (d2 <= r2, no))

    def approximate(qc, rc, qn, rn):
        qn, rn = qn[:, None], rn[None, :]
        d2 = qn + rn - 2.0 * _dot(qc, rc.T)
        return reduce(d2, lambda r2: _ball_tests(d2, qn, rn, r2, gamma))

    return _in_frame(q, ok, reference, frame, approximate)


def _cross(query: Array, order: Array, query_r2, reference: Array, reference_r2, block: int,
           gamma: float):
    """One blocked pass over ``query`` rows (in ``order``, :func:`_spatial_order`) against all
    of ``reference``; balls are closed, radii^2 ``query_r2 (Q,)`` and ``reference_r2 (R,)``
    (``None``: not tested). Returns, in the callers' row order:

    * ``counts (Q,)``: for each query row, how many reference balls contain it;
    * ``in_ref (R,)``: for each reference row, whether some query row lies in its ball;
    * ``in_query (R,)``: for each reference row, whether it lies in some query row's ball.

    Pairs whose test the rounding bound leaves in doubt contribute nothing; their query rows
    are redone in ``_CHUNK``-row chunks (each centred by :func:`_in_frame`), then, if still in
    doubt, from direct differences (:func:`_exact_rows`).
    """
    n, n_ref = query.shape[0], reference.shape[0]
    block = min(block, n)
    qs = query[order]
    qs_r2 = None if query_r2 is None else query_r2[order]
    blocks, valid = _blocks(qs, block)
    r2_blocks = None if qs_r2 is None else _blocks(qs_r2, block)[0]
    frame = _frame(reference)

    def step(carry, inputs):
        in_ref, in_query = carry
        q, ok, q_r2 = inputs
        counts, ref_part, query_part, done = _cross_block(q, ok, q_r2, reference, reference_r2,
                                                          frame, gamma, exact=False)
        return (in_ref | ref_part, in_query | query_part), (counts, done)

    init = (jnp.zeros(n_ref, bool), jnp.zeros(n_ref, bool))
    (in_ref, in_query), (counts, done) = jax.lax.scan(step, init, (blocks, valid, r2_blocks))
    counts, done = counts.reshape(-1)[:n], done.reshape(-1)[:n]

    def process(state, rows, live):
        counts, in_ref, in_query = state
        q = qs[rows]
        q_r2 = None if qs_r2 is None else qs_r2[rows]
        c_counts, c_ref, c_query, cert = _cross_block(q, live, q_r2, reference, reference_r2,
                                                      frame, gamma, exact=False)

        def full(_):
            e_counts, e_ref, e_query, _ = _cross_block(q, live & ~cert, q_r2, reference,
                                                       reference_r2, frame, gamma, exact=True)
            return jnp.where(cert, c_counts, e_counts), c_ref | e_ref, c_query | e_query

        c_counts, c_ref, c_query = jax.lax.cond(jnp.any(~cert), full,
                                                lambda _: (c_counts, c_ref, c_query), None)
        target = jnp.where(live, rows, n)
        return counts.at[target].set(c_counts, mode="drop"), in_ref | c_ref, in_query | c_query

    counts, in_ref, in_query = _second_pass(done, process, (counts, in_ref, in_query),
                                            min(_CHUNK, n))
    return _unpermute(counts, order), in_ref, in_query


@partial(jax.jit, static_argnames=("k", "block"))
def _precision_recall(real: Array, fake: Array, k: int, block: int):
    gamma = _rounding_bound(real.dtype, real.shape[1])
    real_order, fake_order = _spatial_order(real), _spatial_order(fake)
    real_r2 = _radii_sq(real, real_order, k, block, gamma)
    fake_r2 = _radii_sq(fake, fake_order, k, block, gamma)
    counts, _, covered = _cross(fake, fake_order, fake_r2, real, real_r2, block, gamma)
    precision = jnp.mean((counts > 0).astype(real.dtype))
    recall = jnp.mean(covered.astype(real.dtype))
    total = precision + recall
    f1 = jnp.where(total > 0, 2 * precision * recall / jnp.where(total > 0, total, 1.0), 0.0)
    return precision, recall, f1


@partial(jax.jit, static_argnames=("k", "block"))
def _density_coverage(real: Array, fake: Array, k: int, block: int):
    gamma = _rounding_bound(real.dtype, real.shape[1])
    real_r2 = _radii_sq(real, _spatial_order(real), k, block, gamma)
    counts, covered, _ = _cross(fake, _spatial_order(fake), None, real, real_r2, block, gamma)
    density = jnp.sum(counts).astype(real.dtype) / (k * fake.shape[0])
    coverage = jnp.mean(covered.astype(real.dtype))
    return density, coverage


class PrecisionRecall(NamedTuple):
    """Improved precision and recall (fractions in [0, 1]) and their harmonic mean F1."""

    precision: Array
    recall: Array
    f1: Array


class DensityCoverage(NamedTuple):
    """Density (mean number of real k-NN balls around a sample, over k; ~1 when the two
    distributions agree, can exceed 1) and coverage (fraction in [0, 1])."""

    density: Array
    coverage: Array


def _knn_sets(real, fake, k, block_size, *, fake_needs_k: bool):
    real = _feature_set(real, "real")
    fake = _feature_set(fake, "fake")
    real, fake = _same_width(real, fake, "real", "fake")
    k = _validate.count(k, "k")
    if k >= real.shape[0]:
        raise ValueError(f"k ({k}) must be smaller than the number of samples in real "
                         f"({real.shape[0]}): each needs k other samples")
    if fake_needs_k and k >= fake.shape[0]:
        raise ValueError(f"k ({k}) must be smaller than the number of samples in fake "
                         f"({fake.shape[0]}): each needs k other samples")
    return real, fake, k, _validate.count(block_size, "block_size")


def precision_recall(real, fake, *, k: int = 3, block_size: int = 512) -> PrecisionRecall:
    """Improved precision and recall by k-NN manifolds (Kynkäänniemi et al., 2019), and F1.

    ``real (N, D)``, ``fake (M, D)``: features of real and generated samples. Around every real
    feature a ball reaching its k-th nearest real neighbour approximates the real manifold;
    likewise for the generated set. **Precision** = fraction of generated samples inside at
    least one real ball (quality: how many samples look real); **recall** = fraction of real
    samples inside at least one generated ball (diversity: how much of the data the model
    covers). ``F1 = 2 P R / (P + R)`` (0 when both are 0). Needs ``k < N`` and ``k < M``.
    Balls are closed; distances are computed ``block_size`` rows at a time (module docstring).
    A real outlier inflates its ball, so precision can be fooled: see :func:`density_coverage`.
    """
    real, fake, k, block = _knn_sets(real, fake, k, block_size, fake_needs_k=True)
    return PrecisionRecall(*_precision_recall(real, fake, k, block))


def density_coverage(real, fake, *, k: int = 5, block_size: int = 512) -> DensityCoverage:
    """Density and coverage (Naeem et al., 2020): precision and recall made robust to outliers.

    With ``B_i`` the ball around real feature ``i`` reaching its k-th nearest real neighbour::

        density  = 1 / (k M) sum_j sum_i 1[fake_j in B_i]
        coverage = 1 / N sum_i 1[the nearest fake sample to real_i lies in B_i]

    Density counts how many real balls hold each generated sample (a sample in a dense real
    region counts more; one stray real outlier's huge ball counts once, not decisively);
    coverage uses only real balls, so generated outliers cannot fake diversity. Needs
    ``k < N``; ``fake (M, D)`` may be any size ``>= 1``. Balls are closed; distances in blocks.
    """
    real, fake, k, block = _knn_sets(real, fake, k, block_size, fake_needs_k=False)
    return DensityCoverage(*_density_coverage(real, fake, k, block))


class Neighbours(NamedTuple):
    """``distances (Q, k)`` (Euclidean, ascending) and ``indices (Q, k)`` into the reference."""

    distances: Array
    indices: Array


def nearest_neighbours(query, reference, *, k: int = 1, block_size: int = 512) -> Neighbours:
    """The ``k`` nearest ``reference`` rows of every ``query`` row (e.g. memorisation checks).

    ``query (Q, D)``, ``reference (R, D)``, ``1 <= k <= R``. Euclidean distances, ascending;
    among equal distances the lower reference index comes first. Computed ``block_size`` query
    rows at a time against the whole reference, so memory is ``block_size x R``; the returned
    distances are recomputed directly from the differences (module docstring), so an exact
    copy of a reference row is at distance exactly 0, wherever the data lie. To find generated
    samples that copy training data, compare each sample's distance to its nearest training
    image with the distances between training images themselves
    (``nearest_neighbours(train, train, k=2)``: the second column).
    """
    query = _feature_set(query, "query")
    reference = _feature_set(reference, "reference")
    reference, query = _same_width(reference, query, "reference", "query")
    k = _validate.count(k, "k", maximum=reference.shape[0])
    block = _validate.count(block_size, "block_size")
    d2, idx = _knn(query, reference, k, block)
    return Neighbours(jnp.sqrt(d2), idx)


# ===================================================================== perceptual path length
class PathLength(NamedTuple):
    """``mean`` of the kept ``distances``; ``distances (n,)`` every sample's
    ``d(f(G(z_t)), f(G(z_{t+eps}))) / eps^2``; ``kept (n,)`` which entered the mean."""

    mean: float
    distances: np.ndarray
    kept: np.ndarray


@partial(jax.jit, static_argnames=("spherical",))
def _interpolate(z0: Array, z1: Array, t: Array, spherical: bool) -> Array:
    """Rows of ``z0 + t (z1 - z0)``, or Shoemake's slerp
    ``sin((1 - t) w) / sin w z0 + sin(t w) / sin w z1`` (``w`` the angle between the rows)."""
    t = t[:, None]
    linear = z0 + t * (z1 - z0)
    if not spherical:
        return linear
    norms = jnp.linalg.norm(z0, axis=1) * jnp.linalg.norm(z1, axis=1)
    cos = jnp.sum(z0 * z1, axis=1) / jnp.maximum(norms, 1e-30)
    omega = jnp.arccos(jnp.clip(cos, -1.0, 1.0))[:, None]
    sin = jnp.sin(omega)
    ok = sin > 1e-6
    safe = jnp.where(ok, sin, 1.0)
    slerp = (jnp.sin((1 - t) * omega) * z0 + jnp.sin(t * omega) * z1) / safe
    return jnp.where(ok, slerp, linear)


def _latents(sampler, key: Array, batch: int) -> Array:
    z = jnp.asarray(sampler(key, batch))
    if z.ndim != 2 or z.shape[0] != batch:
        raise ValueError(f"latent_dim_or_sampler(key, {batch}) must return latents ({batch}, d), "
                         f"got shape {tuple(z.shape)}")
    return z


def perceptual_path_length(key, decode_fn: Callable, feature_fn: Callable,
                           latent_dim_or_sampler, *, n: int, epsilon: float = 1e-4,
                           interpolation: str = "slerp", batch_size: int = 256,
                           percentiles: tuple[float, float] | None = (1.0, 99.0)) -> PathLength:
    """Perceptual path length (Karras et al., 2019): how abruptly outputs change along latent paths.

    For ``n`` pairs of latents ``z0, z1`` and ``t ~ U(0, 1)``::

        d = |f(G(z(t))) - f(G(z(t + epsilon)))|^2 / epsilon^2,   PPL = mean of d

    ``G = decode_fn`` (a VAE's decoder, a GAN's generator: latents ``(B, d)`` -> outputs),
    ``f = feature_fn`` (outputs -> features ``(B, ...)``, flattened; e.g. :func:`features` of
    the MNIST classifier, so the distance is the **squared Euclidean distance between
    classifier features**, standing in for the paper's LPIPS). ``d`` is a finite difference of
    the squared speed ``|d f(G(z(t))) / dt|^2``: a smooth latent space has small, even values.

    ``latent_dim_or_sampler``: an int ``d`` draws ``z ~ N(0, I_d)``; or a callable
    ``sampler(key, batch) -> (batch, d)`` for another prior. ``interpolation="slerp"``
    (default, Shoemake's spherical interpolation, right for Gaussian latents: it keeps the norm
    near ``sqrt(d)`` where the straight line cuts through the improbable region near 0; as
    ``gan.latent_interpolation(..., spherical=True)``) or ``"lerp"`` (straight line, right for
    latents that are not Gaussian, such as StyleGAN's W space).

    Filtering, as the paper's code: samples below the ``percentiles[0]``-th percentile (taken
    at or below it) or above the ``percentiles[1]``-th (at or above) are dropped before the mean
    (``(1, 99)`` by default; ``None`` keeps all). Pure: ``decode_fn`` and ``feature_fn`` are
    called on batches of exactly ``batch_size`` latents (the last batch padded), first at the
    points ``t`` then at ``t + epsilon`` in the same order, so a wrapper can attach the same
    labels to both calls of a batch (class-conditional models). In float32, ``epsilon=1e-4``
    leaves about ``1e-3`` relative rounding in ``d``; pass float64 models for more.
    """
    key = _validate.key(key)
    if not callable(decode_fn):
        raise ValueError(f"decode_fn must be callable (latents -> outputs), got {decode_fn!r:.60}")
    if not callable(feature_fn):
        raise ValueError(f"feature_fn must be callable (outputs -> features), got {feature_fn!r:.60}")
    if callable(latent_dim_or_sampler):
        sampler = latent_dim_or_sampler
    else:
        dim = _validate.count(latent_dim_or_sampler, "latent_dim_or_sampler")
        sampler = lambda k, b: jax.random.normal(k, (b, dim))  # noqa: E731
    n = _validate.count(n, "n")
    epsilon = _validate.real(epsilon, "epsilon", low=0.0, low_open=True)
    if interpolation not in ("slerp", "lerp"):
        raise ValueError(f"interpolation must be 'slerp' or 'lerp', got {interpolation!r}")
    batch = _validate.count(batch_size, "batch_size")
    if percentiles is not None:
        if len(percentiles) != 2:
            raise ValueError(f"percentiles must be (low, high) or None, got {percentiles!r}")
        lo = _validate.real(percentiles[0], "percentiles[0]", low=0.0, high=100.0)
        hi = _validate.real(percentiles[1], "percentiles[1]", low=lo, high=100.0)

    def embed(z):
        f = jnp.asarray(feature_fn(decode_fn(z)))
        if f.ndim < 1 or f.shape[0] != z.shape[0]:
            raise ValueError(f"feature_fn(decode_fn(z)) must return one feature row per latent "
                             f"({z.shape[0]}), got shape {tuple(f.shape)}")
        return f.reshape(f.shape[0], -1)

    out = []
    for b in range(-(-n // batch)):
        k0, k1, kt = jax.random.split(jax.random.fold_in(key, b), 3)
        z0, z1 = _latents(sampler, k0, batch), _latents(sampler, k1, batch)
        if z1.shape != z0.shape:
            raise ValueError("latent_dim_or_sampler returned latents of different shapes")
        t = jax.random.uniform(kt, (batch,), z0.dtype)
        spherical = interpolation == "slerp"
        fa = embed(_interpolate(z0, z1, t, spherical))
        fb = embed(_interpolate(z0, z1, t + epsilon, spherical))
        out.append(np.asarray(jnp.sum((fb - fa) ** 2, axis=1) / epsilon ** 2))
    distances = np.concatenate(out)[:n]
    if not np.all(np.isfinite(distances)):
        raise ValueError("decode_fn or feature_fn produced NaN or infinite features")
    if percentiles is None:
        kept = np.ones(n, bool)
    else:
        low = np.percentile(distances, lo, method="lower")
        high = np.percentile(distances, hi, method="higher")
        kept = (distances >= low) & (distances <= high)
    return PathLength(float(np.mean(distances[kept])), distances, kept)


# ======================================================================== the feature network
class FeatureNet(NamedTuple):
    """The trained classifier, the sha256 of its weights, whether it came from the cache, and
    (from :func:`mnist_feature_net`) its accuracy on the dataset's test split."""

    model: nnx.Module
    sha256: str
    from_cache: bool
    test_accuracy: float | None = None


_CACHE_FORMAT = "course_lib.metrics.train_feature_net/1"


def _digest(tree, *extra: bytes) -> str:
    h = hashlib.sha256()
    for part in extra:
        h.update(part)
    for path, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]:
        if isinstance(leaf, jax.Array) and jnp.issubdtype(leaf.dtype, jax.dtypes.prng_key):
            leaf = jax.random.key_data(leaf)
        a = np.ascontiguousarray(np.asarray(leaf))
        h.update(f"{jax.tree_util.keystr(path)}|{a.dtype}|{a.shape}".encode())
        h.update(a.tobytes())
    return h.hexdigest()


def _classifier_loss(model, batch, key):
    images, labels = batch
    logits = model(images)
    return train.cross_entropy(logits, labels), {"accuracy": train.accuracy(logits, labels)}


def _check_classifier(net, name: str) -> None:
    if not isinstance(net, nnx.Module) or not callable(getattr(net, "embed", None)):
        raise ValueError(f"{name} must be an nnx.Module classifier with an embed(images) method "
                         f"for its penultimate features (e.g. course_lib.nets.CNN), got "
                         f"{type(net).__name__}")


def train_feature_net(key, model: nnx.Module, images, labels, *, steps: int = 600,
                      batch_size: int = 64, lr: float = 1e-3, cache_dir=None,
                      progress: bool = False) -> FeatureNet:
    """Train (or load from ``cache_dir``) the classifier whose features score the models.

    ``model``: a fresh classifier, e.g. notebook 05's ``nets.CNN(rngs=nnx.Rngs(0))`` (the
    caller builds it: topic modules never import each other); it needs ``model(images) ->
    logits (B, C)`` and ``model.embed(images) -> (B, H)``. ``images (N, 28, 28)`` in [0, 1],
    ``labels (N,)``. Recipe (notebook 05's): Adam with a cosine-decayed step from ``lr``,
    cross-entropy, ``steps`` steps of ``batch_size`` drawn by :func:`course_lib.train.fit`
    with ``key``: the same arguments give the same weights on the same machine.

    Cache: ``cache_dir/weights`` (``train.save_model``) and ``cache_dir/feature_net.json``
    holding the sha256 of the trained weights and a fingerprint of everything that determines
    them (the model's initial weights and structure, the data, ``key``, ``steps``,
    ``batch_size``, ``lr``). The cache is used only when the fingerprint matches and the
    loaded weights hash to the recorded sha256; otherwise (missing, damaged, stale) the model
    is retrained and the cache rewritten. ``model`` is updated in place and returned, in
    eval mode, inside a :class:`FeatureNet`.
    """
    import optax

    key = _validate.key(key)
    _check_classifier(model, "model")
    images = _validate.real_array(images, "images", ndim=(3, 4))
    labels = _validate.ids(labels, "labels", np.iinfo(np.int32).max, ndim=1, what="labels")
    if labels.shape[0] != images.shape[0]:
        raise ValueError(f"labels must hold one label per image ({images.shape[0]}), "
                         f"got {labels.shape[0]}")
    steps = _validate.count(steps, "steps")
    batch_size = _validate.count(batch_size, "batch_size", maximum=images.shape[0])
    lr = _validate.real(lr, "lr", low=0.0, low_open=True)
    recipe = json.dumps({"format": _CACHE_FORMAT, "kind": type(model).__name__, "steps": steps,
                         "batch_size": batch_size, "lr": lr}, sort_keys=True)
    fingerprint = _digest((nnx.state(model), images, labels, key), recipe.encode())

    cache = None if cache_dir is None else Path(cache_dir)
    if cache is not None:
        if cache.exists() and not cache.is_dir():
            raise ValueError(f"cache_dir {cache} is a file: it must be a folder (or not exist)")
        record = cache / "feature_net.json"
        try:
            saved = json.loads(record.read_text())
        except (OSError, ValueError):
            saved = {}
        if saved.get("fingerprint") == fingerprint:
            initial = nnx.clone(model)       # nnx.state holds live Variables: copy
            try:
                train.load_model(model, cache / "weights")
                digest = _digest(nnx.state(model))
            except train.CheckpointError:
                digest = None
            if digest is not None and digest == saved.get("sha256"):
                model.eval()
                return FeatureNet(model, digest, True)
            nnx.update(model, nnx.state(initial))    # damaged cache: train from the same start

    schedule = optax.cosine_decay_schedule(lr, steps)
    train.fit(model, optax.adam(schedule), _classifier_loss, (images, labels), steps=steps,
              batch_size=batch_size, key=key, progress=progress, desc="feature net")
    model.eval()
    digest = _digest(nnx.state(model))
    if cache is not None:
        cache.mkdir(parents=True, exist_ok=True)
        train.save_model(model, cache / "weights")
        (cache / "feature_net.json").write_text(json.dumps(
            {"fingerprint": fingerprint, "sha256": digest, "recipe": json.loads(recipe),
             "note": "MNIST features, not Inception"}, indent=1))
    return FeatureNet(model, digest, False)


MNIST_DATASETS = ("mnist_small", "mnist")


def mnist_feature_net(key, model: nnx.Module, *, dataset: str = "mnist_small", steps: int = 600,
                      batch_size: int = 64, lr: float = 1e-3, cache_dir="default",
                      progress: bool = False) -> FeatureNet:
    """The course's feature network: ``model`` trained on ``dataset``'s training split, cached.

    :func:`train_feature_net` on ``data.load(dataset)`` (``"mnist_small"``, offline, 4,000
    training images; or ``"mnist"`` once fetched), then its accuracy on the test split.
    ``model``: notebook 05's CNN, ``nets.CNN(rngs=nnx.Rngs(0))``. ``cache_dir="default"`` is
    ``models/feature_net_<dataset>`` under the working directory (the notebooks' ``models/``,
    as notebook 05 saves its CNN); ``None`` trains without caching. At the defaults on
    ``mnist_small`` (600 steps of 64) the CNN reaches about 97.5 % test accuracy.
    """
    if dataset not in MNIST_DATASETS:
        raise ValueError(f"dataset must be one of {MNIST_DATASETS}, got {dataset!r}")
    if isinstance(cache_dir, str) and cache_dir == "default":
        cache_dir = Path("models") / f"feature_net_{dataset}"
    split = data.load(dataset)
    net = train_feature_net(key, model, split.x_train, split.y_train, steps=steps,
                            batch_size=batch_size, lr=lr, cache_dir=cache_dir, progress=progress)
    predicted = np.argmax(np.asarray(_run(net.model, split.x_test, "logits", 500)), axis=1)
    return net._replace(test_accuracy=float(np.mean(predicted == split.y_test)))


@partial(jax.jit, static_argnames=("graphdef", "method"))
def _apply_blocks(graphdef, state, blocks: Array, method: str) -> Array:
    net = nnx.merge(graphdef, state)
    net.eval()                       # a copy inside the trace: the caller's model is untouched
    fn = net.embed if method == "embed" else net
    return jax.lax.map(fn, blocks)


def _run(net, images, method: str, batch_size: int) -> Array:
    _check_classifier(net, "net")
    images = _validate.real_array(images, "images", ndim=(3, 4))
    if images.shape[0] < 1:
        raise ValueError("images must hold at least one image")
    block = _validate.count(batch_size, "batch_size")
    n = images.shape[0]
    block = min(block, n)
    n_blocks = -(-n // block)
    padded = jnp.pad(images, ((0, n_blocks * block - n),) + ((0, 0),) * (images.ndim - 1))
    graphdef, state = nnx.split(net)
    out = _apply_blocks(graphdef, state, padded.reshape(n_blocks, block, *images.shape[1:]), method)
    return out.reshape(n_blocks * block, -1)[:n]


def features(net: nnx.Module, images, *, batch_size: int = 500) -> Array:
    """Penultimate-layer features ``net.embed(images)``: ``(N, H)`` (128 for notebook 05's CNN).

    ``net``: the classifier from :func:`train_feature_net`; ``images (N, 28, 28)`` in [0, 1]
    (the net's input range: map a GAN's ``[-1, 1]`` outputs with ``(x + 1) / 2``). Evaluated
    in eval mode, ``batch_size`` images at a time, jit-compiled; ``net`` is not modified.
    MNIST features, not Inception: scores on them compare the course's models with each other.
    """
    return _run(net, images, "embed", batch_size)


def class_probs(net: nnx.Module, images, *, batch_size: int = 500) -> Array:
    """Class probabilities ``softmax(net(images))``: ``(N, C)``, the ``p(y|x)`` of the IS.

    Same inputs and evaluation as :func:`features`.
    """
    return jax.nn.softmax(_run(net, images, "logits", batch_size), axis=-1)
