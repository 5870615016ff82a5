r"""Gaussian mixture models fitted by expectation-maximisation (EM).

A mixture of :math:`K` Gaussians in :math:`D` dimensions has the density

.. math::  p(x) = \sum_{k=1}^K \pi_k \, \mathcal N(x \mid \mu_k, \Sigma_k),

with weights :math:`\pi_k \ge 0`, :math:`\sum_k \pi_k = 1`. Three covariance shapes:

==============  ======================  ==========================================
``full``        ``covariances`` (K,D,D)  any symmetric positive-definite matrix
``diag``        ``covariances`` (K,D)    a diagonal matrix (axis-aligned ellipses)
``spherical``   ``covariances`` (K,)     :math:`\sigma_k^2 I` (circles)
==============  ======================  ==========================================

The covariance type of a :class:`GMMParams` is read off the number of dimensions of its
``covariances``, so only :func:`init_params` and :func:`fit` take ``covariance_type``.

Argument order (the course's convention): the parameters first, then the data, so
``log_likelihood(params, x)``, ``em(params, x)``; ``key`` first for anything random:
``fit(key, x, n_components)``, ``sample(key, params, n)``. Every option is keyword-only.

How :func:`fit` starts (as scikit-learn's default ``init_params="kmeans"``): k-means++ seeds,
then Lloyd's k-means iterations to convergence, then one M-step from the hard assignment
(weights = cluster fractions, cluster means and covariances + ``reg_covar``). Several restarts
run at once (``vmap``); the best is the one with the highest final log-likelihood among the
restarts without a *degenerate* component: one holding fewer than ``min_points`` effective
points :math:`N\pi_k` (default :math:`D+1` for full covariances, 2 otherwise; fewer points
than that cannot determine the covariance, which then sits on the ``reg_covar`` floor while
the likelihood grows without bound). Degenerate restarts are reported
(:attr:`FitResult.degenerate`), never chosen; if every restart is degenerate :func:`fit`
raises, unless ``min_points=0`` asks for them.

How EM is computed here (the kernel behind :func:`em`). Every step works with the
*whitened residuals* :math:`y_{nk} = L_k^{-1}(x_n - \mu_k)`, where :math:`\Sigma_k = L_k
L_k^\top` is the Cholesky factorisation:

* E-step: :math:`\log\pi_k + \log\mathcal N(x_n\mid\mu_k,\Sigma_k) = \log\pi_k
  - \tfrac12\lVert y_{nk}\rVert^2 - \sum_i \log L_{k,ii} - \tfrac D2\log 2\pi`; the
  responsibilities :math:`r_{nk}` are its softmax over k (log space, ``logsumexp``). For
  full covariances one matrix product ``x @ [L_1^{-T} ... L_K^{-T}]`` whitens a block of
  points for every component at once.
* M-step: from :math:`N_k = \sum_n r_{nk}`, :math:`e_k = \sum_n r_{nk} y_{nk}/N_k` and
  :math:`C_k = \sum_n r_{nk} y_{nk} y_{nk}^\top / N_k`, the textbook updates
  :math:`\pi_k = N_k/N`, :math:`\mu_k = \sum_n r_{nk}x_n/N_k`,
  :math:`\Sigma_k = \sum_n r_{nk}(x_n-\mu_k)(x_n-\mu_k)^\top/N_k + \epsilon I` read
  :math:`\mu_k \leftarrow \mu_k + L_k e_k`, :math:`\Sigma_k \leftarrow L_k(C_k - e_k e_k^\top)
  L_k^\top + \epsilon I` (:math:`\epsilon` = ``reg_covar``).

The data are centred and cut into blocks; one ``lax.scan`` over the blocks does the E-step
and accumulates the M-step's sums, so no (N, K, D) array is ever stored. Sums of whitened
numbers keep float32 accurate even for thin components (expanding
:math:`x^\top\Lambda x - 2\mu^\top\Lambda x + \mu^\top\Lambda\mu` into sufficient
statistics of x is faster still, but loses digits to cancellation there). The loop is a
``lax.while_loop`` (tolerance and iteration cap) that records the log-likelihood of every
iteration.

Breakdowns are reported, never returned as NaN: a Cholesky factorisation that fails in the
working precision (a covariance positive definite only to within rounding, e.g. with
``reg_covar=0`` in float32) raises an error that names ``covariances`` or ``reg_covar``.

Everything is dtype-generic: float32 inputs give float32 results, float64 inputs (under
``jax.enable_x64(True)``) give float64 results.
"""
from __future__ import annotations

import math
from functools import partial
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax.scipy.linalg import solve_triangular
from jax.scipy.special import logsumexp

from course_lib import _validate

__all__ = [
    "COVARIANCE_TYPES", "INITS", "GMMParams", "EMResult", "FitResult",
    "covariance_type_of", "component_log_prob", "log_density", "log_likelihood",
    "responsibilities", "predict", "em", "kmeans_plus_plus", "kmeans", "init_params", "fit",
    "sample", "n_parameters", "bic", "aic",
]

COVARIANCE_TYPES = ("full", "diag", "spherical")
INITS = ("kmeans", "kmeans++")
_KMEANS_MAX_ITER = 300   # scikit-learn's KMeans defaults
_KMEANS_TOL = 1e-4


class GMMParams(NamedTuple):
    """Parameters of a Gaussian mixture.

    Attributes:
      weights: (K,) mixing weights :math:`\\pi_k`, non-negative, summing to 1.
      means: (K, D) component means :math:`\\mu_k`.
      covariances: ``full`` (K, D, D), ``diag`` (K, D) variances, ``spherical`` (K,) variances.
    """

    weights: jax.Array
    means: jax.Array
    covariances: jax.Array


class EMResult(NamedTuple):
    """What :func:`em` returns (under :func:`fit`'s ``restarts``, each field has a leading axis R).

    Attributes:
      params: the parameters after the last M-step.
      log_likelihood: () mean log-likelihood per point, :math:`\\frac1N\\sum_n\\log p(x_n)`,
        of ``params``.
      history: (max_iter,) mean log-likelihood at the start of each iteration (the
        E-step's value, before that iteration's M-step); NaN after the loop stopped.
      n_iter: () number of iterations run.
      converged: () whether the change of the log-likelihood fell below ``tol``.
    """

    params: GMMParams
    log_likelihood: jax.Array
    history: jax.Array
    n_iter: jax.Array
    converged: jax.Array


class FitResult(NamedTuple):
    """What :func:`fit` returns: the best restart and all of them.

    Attributes:
      best: the :class:`EMResult` of the restart with the highest final log-likelihood among
        the restarts that are neither degenerate nor broken down (NaN).
      restarts: every restart's :class:`EMResult`, stacked on a leading axis (R, ...).
      best_index: () index of ``best`` in ``restarts``.
      init: the R initial parameters (stacked), from k-means (or k-means++ seeds).
      degenerate: (R,) whether a restart ended with a component of fewer than ``min_points``
        effective points :math:`N\\pi_k` (its covariance is held up by ``reg_covar`` alone).
    """

    best: EMResult
    restarts: EMResult
    best_index: jax.Array
    init: GMMParams
    degenerate: jax.Array


# --------------------------------------------------------------------------- validation


def _check_data(x, name: str = "x") -> jax.Array:
    """(N, D) real data, N >= 1 and D >= 1, finite (when concrete)."""
    if isinstance(x, GMMParams):
        raise ValueError(f"{name} must be the data (N, D), got a GMMParams: the argument order "
                         f"is (params, x), parameters first")
    x = _validate.real_array(x, name, ndim=2)
    if x.shape[0] < 1 or x.shape[1] < 1:
        raise ValueError(f"{name} must have at least one point and one feature (N, D), got shape {x.shape}")
    return x


def covariance_type_of(params: GMMParams) -> str:
    """``"full"``, ``"diag"`` or ``"spherical"``, from the number of dimensions of covariances."""
    return {3: "full", 2: "diag", 1: "spherical"}.get(jnp.ndim(params.covariances), "unknown")


def _check_params(params: GMMParams, d: int | None = None, dtype=None) -> GMMParams:
    """Shapes always; values when concrete: weights are probabilities, means finite,
    covariances symmetric positive definite (variances positive) and, in the precision the
    kernels will use (``dtype``, default the covariances' own), with a finite Cholesky factor."""
    if not isinstance(params, tuple) or len(params) != 3:
        raise ValueError(f"params must be a GMMParams(weights, means, covariances), "
                         f"got {type(params).__name__}")
    weights = _validate.real_array(params[0], "weights", ndim=1)
    means = _validate.real_array(params[1], "means", ndim=2)
    covs = _validate.real_array(params[2], "covariances", ndim=(1, 2, 3))
    k = weights.shape[0]
    if k < 1:
        raise ValueError("weights must hold at least one component, got shape (0,)")
    if means.shape[0] != k:
        raise ValueError(f"means must have shape (K={k}, D), got {means.shape}")
    dim = means.shape[1]
    if d is not None and dim != d:
        raise ValueError(f"means must have D={d} columns to match x, got {means.shape}")
    expected = {3: (k, dim, dim), 2: (k, dim), 1: (k,)}[covs.ndim]
    if covs.shape != expected:
        raise ValueError(
            f"covariances must have shape (K, D, D) full, (K, D) diag or (K,) spherical with "
            f"K={k}, D={dim}; got {covs.shape}")
    if _validate.is_concrete(weights, means, covs):
        _validate.probabilities(weights, "weights")
        if covs.ndim == 3:
            _validate.positive_definite(covs, "covariances")
        elif np.any(np.asarray(covs) <= 0):
            raise ValueError(f"covariances (variances) must be positive, got {float(jnp.min(covs)):.3g}")
        _check_factor(covs, "covariances", dtype or covs.dtype)
    return GMMParams(weights, means, covs)


def _check_factor(covs, name: str, dtype, hint: str = "") -> None:
    """Raise when the covariances cannot be factorised in ``dtype`` (concrete values only).

    A matrix positive definite in float64 can fail Cholesky in float32 (its smallest
    eigenvalue below float32's rounding of the largest): ``jnp.linalg.cholesky`` then returns
    NaN without a word, and every density after it would be NaN.
    """
    if not _validate.is_concrete(covs):
        return
    c = jnp.asarray(covs, dtype)
    ok = jnp.all(jnp.isfinite(jnp.linalg.cholesky(c))) if c.ndim == 3 else jnp.all(c > 0)
    if not bool(ok):
        raise ValueError(
            f"{name}: a covariance is not positive definite in {jnp.dtype(dtype).name} (its Cholesky "
            f"factor is not finite: the matrix is singular to within rounding){hint}; add to the "
            f"diagonal (reg_covar), drop a component, or compute in float64")


def _check_n_components(n_components, n_points: int) -> int:
    k = _validate.count(n_components, "n_components")
    if k > n_points:
        raise ValueError(f"n_components={k} exceeds the number of points N={n_points}")
    return k


def _check_covariance_type(covariance_type) -> str:
    if not isinstance(covariance_type, str) or covariance_type not in COVARIANCE_TYPES:
        raise ValueError(f"covariance_type must be one of {COVARIANCE_TYPES}, got {covariance_type!r}")
    return covariance_type


def _check_em_options(max_iter, tol, reg_covar) -> tuple[int, float, float]:
    return (_validate.count(max_iter, "max_iter"), _validate.real(tol, "tol", low=0.0),
            _validate.real(reg_covar, "reg_covar", low=0.0))


# --------------------------------------------------------------------------- whitened residuals


class _Whitening(NamedTuple):
    """Per-component maps x -> y = L_k⁻¹ (x - μ_k), with Σ_k = L_k L_kᵀ.

    full: ``proj`` (K·D, D) holds the L_k⁻¹ stacked, so that one matrix product
    ``proj @ xᵀ - shift`` whitens a block of points for all K components at once.
    diag/spherical: ``proj`` (K, D) holds 1/σ_kd and the map is elementwise.
    ``log_norm`` (K,) is log π_k - log|L_k| - (D/2) log 2π.
    """

    chol: jax.Array
    proj: jax.Array
    shift: jax.Array
    log_norm: jax.Array


def _whitening(params: GMMParams) -> _Whitening:
    k, d = params.means.shape
    covs = params.covariances
    if covs.ndim == 3:
        chol = jnp.linalg.cholesky(covs)
        eye = jnp.broadcast_to(jnp.eye(d, dtype=covs.dtype), chol.shape)
        chol_inv = solve_triangular(chol, eye, lower=True)  # L⁻¹ (K, D, D)
        proj = chol_inv.reshape(k * d, d)  # [L_1⁻¹; ...; L_K⁻¹]
        shift = jnp.einsum("kij,kj->ki", chol_inv, params.means)
        half_logdet = jnp.sum(jnp.log(jnp.diagonal(chol, axis1=1, axis2=2)), axis=1)
    else:
        std = jnp.sqrt(covs)
        chol = std if covs.ndim == 2 else jnp.broadcast_to(std[:, None], (k, d))
        proj = 1.0 / chol
        shift = params.means * proj
        half_logdet = jnp.sum(jnp.log(chol), axis=1)
    log_norm = jnp.log(params.weights) - half_logdet - 0.5 * d * math.log(2 * math.pi)
    return _Whitening(chol, proj, shift, log_norm)


def _whiten(xt, wh: _Whitening):
    """(K, D, N) whitened residuals y_kn = L_k⁻¹ (x_n - μ_k), from points as columns xt (D, N).

    Points run along the last (fastest) axis, so the sums over components and over
    dimensions below are vectorised along the points.
    """
    k, d = wh.shift.shape
    if wh.chol.ndim == 3:
        return (wh.proj @ xt).reshape(k, d, xt.shape[1]) - wh.shift[:, :, None]
    return xt[None] * wh.proj[:, :, None] - wh.shift[:, :, None]


def _log_joint(y, wh: _Whitening):
    """(K, N) log π_k + log N(x_n | μ_k, Σ_k) = log_norm_k - ‖y_kn‖² / 2."""
    return wh.log_norm[:, None] - 0.5 * jnp.sum(y * y, axis=1)


def _normalise(log_joint):
    """log p(x_n) = logsumexp_k (N,), and the responsibilities r_kn (K, N), with one exp."""
    top = jnp.max(log_joint, axis=0)
    unnorm = jnp.exp(log_joint - top)
    total = jnp.sum(unnorm, axis=0)
    return top + jnp.log(total), unnorm / total


# --------------------------------------------------------------------------- densities


def component_log_prob(params: GMMParams, x: jax.Array) -> jax.Array:
    r"""(N, K) log-joint :math:`\log\pi_k + \log\mathcal N(x_n\mid\mu_k,\Sigma_k)`, via Cholesky.

    :math:`\log\mathcal N = -\tfrac12\lVert L_k^{-1}(x-\mu_k)\rVert^2 - \sum_i\log L_{k,ii}
    - \tfrac D2\log 2\pi` where :math:`\Sigma_k = L_k L_k^\top`. ``params`` first, then the
    data ``x`` (N, D).
    """
    x = _check_data(x)
    params = _check_params(params, x.shape[1], x.dtype)
    return _component_log_prob(x, params)


@jax.jit
def _component_log_prob(x, params: GMMParams):
    params = jax.tree.map(lambda a: a.astype(x.dtype), params)
    wh = _whitening(params)
    return _log_joint(_whiten(x.T, wh), wh).T


def log_density(params: GMMParams, x: jax.Array) -> jax.Array:
    """(N,) log p(x_n) = logsumexp_k [log π_k + log N(x_n | μ_k, Σ_k)]."""
    return logsumexp(component_log_prob(params, x), axis=1)


def log_likelihood(params: GMMParams, x: jax.Array) -> jax.Array:
    """() mean log-likelihood per point, (1/N) Σ_n log p(x_n) (scikit-learn's ``score``)."""
    return jnp.mean(log_density(params, x))


def responsibilities(params: GMMParams, x: jax.Array) -> jax.Array:
    """(N, K) soft assignment r_nk = p(z = k | x_n), each row summing to 1."""
    log_joint = component_log_prob(params, x)
    return jnp.exp(log_joint - logsumexp(log_joint, axis=1, keepdims=True))


def predict(params: GMMParams, x: jax.Array) -> jax.Array:
    """(N,) hard assignment argmax_k p(z = k | x_n), int32."""
    return jnp.argmax(component_log_prob(params, x), axis=1).astype(jnp.int32)


# --------------------------------------------------------------------------- EM


class _Blocks(NamedTuple):
    """Centred data cut into equal blocks (padded with zero rows that carry mask 0)."""

    xt: jax.Array  # (n_blocks, D, B): points as columns
    mask: jax.Array  # (n_blocks, B)
    center: jax.Array  # (D,)
    n: int


def _blocks(x, block_size: int) -> _Blocks:
    n, d = x.shape
    b = min(block_size, n)
    n_blocks = -(-n // b)
    pad = n_blocks * b - n
    center = jnp.mean(x, axis=0)
    xc = jnp.pad(x - center, ((0, pad), (0, 0))).reshape(n_blocks, b, d).transpose(0, 2, 1)
    mask = (jnp.arange(n_blocks * b) < n).astype(x.dtype).reshape(n_blocks, b)
    return _Blocks(xc, mask, center, n)


def _em_pass(blocks: _Blocks, params: GMMParams, *, statistics: bool = True):
    """One pass over the data at ``params``: the E-step and the M-step's statistics.

    Returns ``(sum_n log p(x_n), N_k (K,), Σ_n r_nk y_nk (K, D), Σ_n r_nk y_nk y_nkᵀ)``
    with the last one (K, D, D) for full covariances and the diagonal (K, D) otherwise.
    """
    k, d = params.means.shape
    wh = _whitening(params)
    full = params.covariances.ndim == 3
    dtype = blocks.xt.dtype
    zeros = (
        jnp.zeros((), dtype),
        jnp.zeros((k,), dtype),
        jnp.zeros((k, d), dtype),
        jnp.zeros((k, d, d) if full else (k, d), dtype),
    )

    def block(acc, xm):
        xb, mb = xm
        y = _whiten(xb, wh)  # (K, D, B)
        log_px, r = _normalise(_log_joint(y, wh))
        ll = acc[0] + jnp.sum(log_px * mb)
        if not statistics:
            return (ll,) + acc[1:], None
        r = r * mb  # responsibilities (K, B); padding rows weigh 0
        ry = r[:, None, :] * y
        if full:
            second = jnp.einsum("kdb,keb->kde", ry, y)  # K small (D, B) @ (B, D) products
        else:
            second = jnp.sum(ry * y, axis=2)
        return (ll, acc[1] + jnp.sum(r, axis=1), acc[2] + jnp.sum(ry, axis=2), acc[3] + second), None

    acc, _ = jax.lax.scan(block, zeros, (blocks.xt, blocks.mask))
    return acc


def _m_step(params: GMMParams, nk, sum_y, sum_yy, reg_covar) -> GMMParams:
    r"""New parameters from whitened statistics (y = L⁻¹(x - μ_old), weights r).

    With :math:`e_k = \sum_n r_{nk} y_{nk} / N_k` and :math:`C_k = \sum_n r_{nk} y_{nk}
    y_{nk}^\top / N_k`: :math:`\mu_k \leftarrow \mu_k + L_k e_k`,
    :math:`\Sigma_k \leftarrow L_k (C_k - e_k e_k^\top) L_k^\top + \epsilon I`,
    :math:`\pi_k \leftarrow N_k / N` — algebraically the textbook M-step
    (:math:`\mu_k = \sum_n r_{nk} x_n / N_k`, :math:`\Sigma_k = \sum_n r_{nk} (x_n-\mu_k)(x_n-\mu_k)^\top / N_k`),
    but the sums are of well-scaled numbers, so float32 keeps its precision. As in
    scikit-learn, N_k gets 10 machine epsilons: an empty component stays finite
    (its mean stays put and its covariance becomes ``reg_covar``·I).
    """
    k, d = params.means.shape
    nk = nk + 10 * jnp.finfo(nk.dtype).eps
    weights = nk / jnp.sum(nk)
    e = sum_y / nk[:, None]
    wh_chol = _whitening(params).chol
    if params.covariances.ndim == 3:
        c = sum_yy / nk[:, None, None] - e[:, :, None] * e[:, None, :]
        covs = wh_chol @ c @ jnp.swapaxes(wh_chol, 1, 2)
        covs = 0.5 * (covs + jnp.swapaxes(covs, 1, 2)) + reg_covar * jnp.eye(d, dtype=covs.dtype)
        means = params.means + jnp.einsum("kij,kj->ki", wh_chol, e)
    else:
        c = sum_yy / nk[:, None] - e**2
        means = params.means + wh_chol * e
        if params.covariances.ndim == 2:
            covs = params.covariances * c + reg_covar
        else:
            covs = params.covariances * jnp.mean(c, axis=1) + reg_covar
    return GMMParams(weights, means, covs)


def _em_loop(blocks: _Blocks, init: GMMParams, tol, reg_covar, *, max_iter: int) -> EMResult:
    """The compiled EM loop on centred, blocked data (``init`` in centred coordinates)."""
    dtype = blocks.xt.dtype

    def body(state):
        params, prev_ll, it, history, _ = state
        sum_ll, nk, sum_y, sum_yy = _em_pass(blocks, params)
        ll = sum_ll / blocks.n
        history = history.at[it].set(ll)
        new_params = _m_step(params, nk, sum_y, sum_yy, reg_covar)
        return new_params, ll, it + 1, history, jnp.abs(ll - prev_ll) < tol

    def cond(state):
        _, _, it, _, converged = state
        return (it < max_iter) & ~converged

    state = (
        init,
        jnp.asarray(-jnp.inf, dtype),
        jnp.asarray(0, jnp.int32),
        jnp.full((max_iter,), jnp.nan, dtype),
        jnp.asarray(False),
    )
    params, _, n_iter, history, converged = jax.lax.while_loop(cond, body, state)
    final_ll = _em_pass(blocks, params, statistics=False)[0] / blocks.n
    return EMResult(params, final_ll, history, n_iter, converged)


def _shift(params: GMMParams, offset) -> GMMParams:
    return params._replace(means=params.means + offset)


@partial(jax.jit, static_argnames=("max_iter", "block_size"))
def _em_kernel(x, init, tol, reg_covar, *, max_iter, block_size):
    blocks = _blocks(x, block_size)
    init = jax.tree.map(lambda a: a.astype(x.dtype), init)
    tol, reg_covar = jnp.asarray(tol, x.dtype), jnp.asarray(reg_covar, x.dtype)
    res = _em_loop(blocks, _shift(init, -blocks.center), tol, reg_covar, max_iter=max_iter)
    return res._replace(params=_shift(res.params, blocks.center))


def em(
    params: GMMParams,
    x: jax.Array,
    *,
    max_iter: int = 100,
    tol: float = 1e-3,
    reg_covar: float = 1e-6,
    block_size: int = 1024,
) -> EMResult:
    """Run EM from ``params`` until the mean log-likelihood per point changes by less than ``tol``.

    Args:
      params: starting parameters (their covariance type is kept).
      x: (N, D) data.
      max_iter: iteration cap (static: changing it recompiles; ``tol`` and ``reg_covar`` do not).
      tol: stop when ``|ll_t - ll_{t-1}| < tol``, ``ll`` the mean log-likelihood per point
        (as scikit-learn); 0 runs exactly ``max_iter`` iterations.
      reg_covar: added to the diagonal of every covariance in the M-step.
      block_size: points per block of the fused E+M pass (memory, not results).

    Returns:
      :class:`EMResult`.

    Raises:
      FloatingPointError: naming ``reg_covar``, when a component collapsed and its
        covariance could no longer be factorised (the log-likelihood is not finite).
    """
    x = _check_data(x)
    params = _check_params(params, x.shape[1], x.dtype)
    _check_n_components(params.weights.shape[0], x.shape[0])
    max_iter, tol, reg_covar = _check_em_options(max_iter, tol, reg_covar)
    block_size = _validate.count(block_size, "block_size")
    res = _em_kernel(x, params, tol, reg_covar, max_iter=max_iter, block_size=block_size)
    _check_em_result(res, reg_covar)
    return res


def _check_em_result(res: EMResult, reg_covar) -> None:
    """Raise instead of returning NaN when EM broke down (a component collapsed).

    Without enough regularisation a component can shrink onto a few points: its covariance
    becomes singular, the likelihood is unbounded, and the next E-step divides 0 by 0 (or the
    Cholesky factorisation of the covariance fails and returns NaN).
    """
    if not _validate.is_concrete(res.log_likelihood):   # traced inside a caller's jit
        return
    n_iter = int(res.n_iter)
    finite = bool(jnp.isfinite(res.log_likelihood)) and bool(jnp.all(jnp.isfinite(res.history[:n_iter])))
    if not finite:
        raise FloatingPointError(
            f"EM broke down within {n_iter} iterations: a component collapsed onto too few points "
            f"and its covariance became singular (log-likelihood not finite); increase reg_covar "
            f"(now {float(reg_covar):g}) or use fewer components")


# --------------------------------------------------------------------------- initialisation


def kmeans_plus_plus(key: jax.Array, x: jax.Array, n_components: int, *,
                     n_local_trials: int | None = None) -> jax.Array:
    r"""(K, D) k-means++ seeds: the first a uniformly random point, each next one drawn with
    probability proportional to its squared distance to the nearest seed chosen so far.

    ``n_local_trials`` candidates are drawn for each next seed, and the one that lowers the
    k-means potential :math:`\sum_n \min_k \lVert x_n - c_k\rVert^2` most is kept
    ("greedy k-means++", scikit-learn's seeding). ``None`` (default): scikit-learn's
    ``2 + int(log K)``; ``1``: the classic k-means++ of Arthur and Vassilvitskii.
    """
    x = _check_data(x)
    k = _check_n_components(n_components, x.shape[0])
    trials = 2 + int(math.log(k)) if n_local_trials is None else _validate.count(n_local_trials, "n_local_trials")
    return _kmeans_plus_plus(key, x, n_components=k, n_local_trials=trials)


@partial(jax.jit, static_argnames=("n_components", "n_local_trials"))
def _kmeans_plus_plus(key, x, *, n_components, n_local_trials=1):
    n = x.shape[0]
    keys = jax.random.split(key, n_components)
    first = jax.random.randint(keys[0], (), 0, n)
    d2 = jnp.sum((x - x[first]) ** 2, axis=1)
    centers = jnp.zeros((n_components, x.shape[1]), x.dtype).at[0].set(x[first])

    def step(carry, k):
        centers, d2 = carry
        # Points already chosen have d2 = 0 (log 0 = -inf), so they are never drawn again.
        idx = jax.random.categorical(keys[k], jnp.log(d2), shape=(n_local_trials,))
        cand = jnp.minimum(d2[None], jnp.sum((x[None] - x[idx][:, None]) ** 2, axis=2))  # (T, N)
        best = jnp.argmin(jnp.sum(cand, axis=1))   # the candidate with the lowest potential
        centers = centers.at[k].set(x[idx[best]])
        return (centers, cand[best]), None

    (centers, _), _ = jax.lax.scan(step, (centers, d2), jnp.arange(1, n_components))
    return centers


def kmeans(x: jax.Array, centers: jax.Array, *, max_iter: int = _KMEANS_MAX_ITER,
           tol: float = _KMEANS_TOL) -> tuple[jax.Array, jax.Array]:
    r"""Lloyd's k-means from ``centers`` (K, D): assign every point to its nearest centre, move
    each centre to the mean of its points, repeat.

    Stops when no assignment changes, when the centres move by less than ``tol`` times the
    data's mean variance in total (:math:`\sum_k\lVert c_k^{new} - c_k\rVert^2`, scikit-learn's
    rule), or after ``max_iter`` iterations. A centre left without points moves to the point
    farthest from its own centre (as scikit-learn does). Returns ``(centers (K, D), labels (N,)
    int32)`` with the labels those of the returned centres.
    """
    x = _check_data(x)
    centers = _validate.real_array(centers, "centers", ndim=2, dtype=x.dtype)
    if centers.shape[1] != x.shape[1]:
        raise ValueError(f"centers must have D={x.shape[1]} columns to match x, got {centers.shape}")
    _check_n_components(centers.shape[0], x.shape[0])
    max_iter = _validate.count(max_iter, "max_iter")
    tol = _validate.real(tol, "tol", low=0.0)
    center = jnp.mean(x, axis=0)
    out, labels = _kmeans(x - center, centers - center, tol, max_iter=max_iter)
    return out + center, labels


def _assign(x, centers):
    """Nearest centre of each point, and the squared distance to it (N,)."""
    # ‖x - c‖² = ‖x‖² - 2 x·c + ‖c‖² (x centred, so the expansion loses little in float32)
    d2 = jnp.sum(x * x, axis=1)[:, None] - 2 * x @ centers.T + jnp.sum(centers**2, axis=1)[None]
    labels = jnp.argmin(d2, axis=1)
    return labels, jnp.maximum(jnp.take_along_axis(d2, labels[:, None], axis=1)[:, 0], 0.0)


@partial(jax.jit, static_argnames="max_iter")
def _kmeans(x, centers, tol, *, max_iter):
    """Lloyd iterations on centred data; see :func:`kmeans`."""
    k = centers.shape[0]
    tol = tol * jnp.mean(jnp.var(x, axis=0))

    def body(state):
        centers, labels_prev, it, _ = state
        labels, d2 = _assign(x, centers)
        labels = labels.astype(jnp.int32)
        onehot = jax.nn.one_hot(labels, k, dtype=x.dtype)
        counts = jnp.sum(onehot, axis=0)
        new = (onehot.T @ x) / jnp.maximum(counts, 1.0)[:, None]
        empty = counts == 0   # the j-th empty centre takes the j-th farthest point
        farthest = jax.lax.top_k(d2, k)[1]
        new = jnp.where(empty[:, None], x[farthest[jnp.maximum(jnp.cumsum(empty) - 1, 0)]], new)
        shift = jnp.sum((new - centers) ** 2)
        done = (shift <= tol) | jnp.all(labels == labels_prev)
        return new, labels, it + 1, done

    state = (centers, jnp.full((x.shape[0],), -1, jnp.int32), jnp.asarray(0, jnp.int32), jnp.asarray(False))
    centers = jax.lax.while_loop(lambda s: (s[2] < max_iter) & ~s[3], body, state)[0]
    return centers, _assign(x, centers)[0].astype(jnp.int32)


def init_params(
    key: jax.Array, x: jax.Array, n_components: int, *, covariance_type: str = "full",
    init: str = "kmeans", reg_covar: float = 1e-6,
) -> GMMParams:
    """A starting point for EM, as scikit-learn's ``GaussianMixture`` makes it.

    ``init="kmeans"`` (default): k-means++ seeds, then Lloyd's k-means to convergence
    (:func:`kmeans`), then the M-step of that hard assignment: weights = cluster fractions,
    cluster means, cluster covariances + ``reg_covar``·I. The seeds are greedy k-means++
    (:func:`kmeans_plus_plus` with its default ``n_local_trials``), as scikit-learn's.
    ``init="kmeans++"``: classic k-means++ seeds (one trial) and the same M-step from the
    seeds' own assignment (every point to its nearest seed, no k-means iterations): a faster,
    rougher start, more often in a poor or degenerate optimum.

    Raises ValueError naming ``reg_covar`` when a cluster's covariance cannot be factorised
    (e.g. a cluster of fewer than D+1 points with ``reg_covar=0``).
    """
    x = _check_data(x)
    k = _check_n_components(n_components, x.shape[0])
    _check_covariance_type(covariance_type)
    _check_init(init)
    reg_covar = _validate.real(reg_covar, "reg_covar", low=0.0)
    out = _init_params(key, x, reg_covar, n_components=k, covariance_type=covariance_type, init=init)
    _check_factor(out.covariances, "reg_covar", x.dtype,
                  f" (reg_covar={reg_covar:g} leaves a cluster of fewer than D+1 points singular)")
    return out


def _check_init(init) -> str:
    if not isinstance(init, str) or init not in INITS:
        raise ValueError(f"init must be one of {INITS}, got {init!r}")
    return init


@partial(jax.jit, static_argnames=("n_components", "covariance_type", "init"))
def _init_params(key, x, reg_covar, *, n_components, covariance_type, init):
    center = jnp.mean(x, axis=0)
    xc = x - center
    # "kmeans": scikit-learn's greedy seeding then Lloyd; "kmeans++": classic seeds, one step
    trials = 2 + int(math.log(n_components)) if init == "kmeans" else 1
    seeds = _kmeans_plus_plus(key, xc, n_components=n_components, n_local_trials=trials)
    if init == "kmeans":
        _, labels = _kmeans(xc, seeds, jnp.asarray(_KMEANS_TOL, x.dtype), max_iter=_KMEANS_MAX_ITER)
    else:
        labels = _assign(xc, seeds)[0]
    d = x.shape[1]
    hard = jax.nn.one_hot(labels, n_components, dtype=x.dtype)  # (N, K)
    nk = jnp.sum(hard, axis=0) + 10 * jnp.finfo(x.dtype).eps
    means = (hard.T @ xc) / nk[:, None]
    diff = xc - means[labels]  # (N, D): each point minus its own cluster's mean
    if covariance_type == "full":
        covs = jax.lax.map(lambda h: (diff * h[:, None]).T @ diff, hard.T) / nk[:, None, None]
        covs = covs + reg_covar * jnp.eye(d, dtype=x.dtype)
    else:
        var = (hard.T @ diff**2) / nk[:, None]
        covs = var + reg_covar if covariance_type == "diag" else jnp.mean(var, axis=1) + reg_covar
    return GMMParams(nk / jnp.sum(nk), means + center, covs)


def fit(
    key: jax.Array,
    x: jax.Array,
    n_components: int,
    *,
    covariance_type: str = "full",
    n_restarts: int = 4,
    init: str = "kmeans",
    max_iter: int = 100,
    tol: float = 1e-3,
    reg_covar: float = 1e-6,
    min_points: float | None = None,
    block_size: int = 1024,
) -> FitResult:
    """``n_restarts`` starts from :func:`init_params` (k-means by default), EM from each (all at
    once with ``vmap``), and the best restart.

    The best restart has the highest final mean log-likelihood among the restarts whose
    log-likelihood is finite and whose every component holds at least ``min_points``
    effective points :math:`N\\pi_k` (default ``None``: D+1 for ``full``, 2 for ``diag`` and
    ``spherical``; fewer points cannot determine a covariance, which then sits on the
    ``reg_covar`` floor). ``min_points=0`` accepts degenerate components.

    Raises:
      FloatingPointError: naming ``reg_covar``, when every restart broke down (NaN).
      ValueError: naming ``min_points``, when every restart ended degenerate.
    """
    x = _check_data(x)
    k = _check_n_components(n_components, x.shape[0])
    _check_covariance_type(covariance_type)
    _check_init(init)
    max_iter, tol, reg_covar = _check_em_options(max_iter, tol, reg_covar)
    block_size = _validate.count(block_size, "block_size")
    n_restarts = _validate.count(n_restarts, "n_restarts")
    if min_points is None:
        min_points = x.shape[1] + 1.0 if covariance_type == "full" else 2.0
    min_points = _validate.real(min_points, "min_points", low=0.0)
    res = _fit_kernel(
        key, x, tol, reg_covar, min_points, n_components=k, covariance_type=covariance_type, init=init,
        n_restarts=n_restarts, max_iter=max_iter, block_size=block_size,
    )
    if _validate.is_concrete(res.restarts.log_likelihood):
        lls = np.asarray(res.restarts.log_likelihood)
        if not np.any(np.isfinite(lls)):
            raise FloatingPointError(
                f"EM broke down in every one of the {n_restarts} restarts (log-likelihood not finite: "
                f"a component collapsed and its covariance could not be factorised); increase "
                f"reg_covar (now {reg_covar:g}) or use fewer components")
        if not np.any(np.isfinite(lls) & ~np.asarray(res.degenerate)):
            fewest = float(np.min(np.asarray(res.restarts.params.weights) * x.shape[0]))
            raise ValueError(
                f"every one of the {n_restarts} restarts ended with a degenerate component (fewer than "
                f"min_points={min_points:g} effective points, as few as {fewest:.1f}; its covariance "
                f"rests on reg_covar alone): use fewer components, covariance_type='diag', more "
                f"restarts, or min_points=0 to accept it")
    return res


@partial(jax.jit, static_argnames=("n_components", "covariance_type", "init", "n_restarts", "max_iter",
                                   "block_size"))
def _fit_kernel(key, x, tol, reg_covar, min_points, *, n_components, covariance_type, init, n_restarts,
                max_iter, block_size):
    tol, reg_covar = jnp.asarray(tol, x.dtype), jnp.asarray(reg_covar, x.dtype)
    keys = jax.random.split(key, n_restarts)
    inits = jax.vmap(lambda k: _init_params(
        k, x, reg_covar, n_components=n_components, covariance_type=covariance_type, init=init))(keys)
    blocks = _blocks(x, block_size)  # shared by every restart
    run = partial(_em_loop, max_iter=max_iter)
    restarts = jax.vmap(run, in_axes=(None, 0, None, None))(blocks, _shift(inits, -blocks.center), tol, reg_covar)
    restarts = restarts._replace(params=_shift(restarts.params, blocks.center))
    degenerate = jnp.min(restarts.params.weights, axis=1) * x.shape[0] < min_points
    # A restart whose likelihood is NaN, or that is degenerate, never wins.
    ll = restarts.log_likelihood
    best = jnp.argmax(jnp.where(jnp.isfinite(ll) & ~degenerate, ll, -jnp.inf))
    return FitResult(jax.tree.map(lambda a: a[best], restarts), restarts, best, inits, degenerate)


# --------------------------------------------------------------------------- sampling, model choice


def sample(key: jax.Array, params: GMMParams, n: int) -> tuple[jax.Array, jax.Array]:
    """Draw ``n`` points: z ~ Categorical(π), then x = μ_z + L_z ε with ε ~ N(0, I).

    Returns ``(x (n, D), z (n,) int32)``.
    """
    params = _check_params(params)
    n = _validate.count(n, "n")
    return _sample(key, params, n=n)


@partial(jax.jit, static_argnames="n")
def _sample(key, params, *, n):
    key_z, key_eps = jax.random.split(key)
    z = jax.random.categorical(key_z, jnp.log(params.weights), shape=(n,))
    eps = jax.random.normal(key_eps, (n, params.means.shape[1]), params.means.dtype)
    chol = _whitening(params).chol  # (K, D, D), or (K, D) standard deviations
    if chol.ndim == 3:
        noise = jnp.einsum("nij,nj->ni", chol[z], eps)
    else:
        noise = chol[z] * eps
    return params.means[z] + noise, z.astype(jnp.int32)


def n_parameters(n_components: int, dim: int, covariance_type: str) -> int:
    """Free parameters: K-1 weights, K·D means, and K·D(D+1)/2 (full), K·D (diag) or K (spherical)."""
    n_components = _validate.count(n_components, "n_components")
    dim = _validate.count(dim, "dim")
    _check_covariance_type(covariance_type)
    cov = {"full": dim * (dim + 1) // 2, "diag": dim, "spherical": 1}[covariance_type]
    return int(n_components - 1 + n_components * dim + n_components * cov)


def _criterion(params, x, penalty) -> jax.Array:
    x = _check_data(x)
    params = _check_params(params, x.shape[1], x.dtype)
    k, d = params.means.shape
    p = n_parameters(k, d, covariance_type_of(params))
    return -2.0 * x.shape[0] * log_likelihood(params, x) + p * penalty(x.shape[0])


def bic(params: GMMParams, x: jax.Array) -> jax.Array:
    """Bayesian information criterion, -2 log L + p log N (lower is better)."""
    return _criterion(params, x, math.log)


def aic(params: GMMParams, x: jax.Array) -> jax.Array:
    """Akaike information criterion, -2 log L + 2p (lower is better)."""
    return _criterion(params, x, lambda n: 2.0)
