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
iteration; :func:`fit` runs several k-means++ restarts at once with ``vmap``.

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

COVARIANCE_TYPES = ("full", "diag", "spherical")


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
      best: the :class:`EMResult` of the restart with the highest final log-likelihood.
      restarts: every restart's :class:`EMResult`, stacked on a leading axis (R, ...).
      best_index: () index of ``best`` in ``restarts``.
      init: the R initial parameters (stacked), from k-means++.
    """

    best: EMResult
    restarts: EMResult
    best_index: jax.Array
    init: GMMParams


# --------------------------------------------------------------------------- validation


def _is_concrete(*arrays) -> bool:
    return not any(isinstance(a, jax.core.Tracer) for a in arrays)


def _float_array(x, name: str):
    x = jnp.asarray(x)
    if not jnp.issubdtype(x.dtype, jnp.floating):
        x = x.astype(jnp.result_type(float))
    return x


def _check_data(x, name: str = "x") -> jax.Array:
    x = _float_array(x, name)
    if x.ndim != 2:
        raise ValueError(f"{name} must be a 2-D array (N points, D features), got shape {x.shape}")
    if x.shape[0] < 1 or x.shape[1] < 1:
        raise ValueError(f"{name} must have at least one point and one feature, got shape {x.shape}")
    if _is_concrete(x) and not bool(jnp.all(jnp.isfinite(x))):
        raise ValueError(f"{name} contains NaN or infinite values")
    return x


def covariance_type_of(params: GMMParams) -> str:
    """``"full"``, ``"diag"`` or ``"spherical"``, from the number of dimensions of covariances."""
    return {3: "full", 2: "diag", 1: "spherical"}.get(jnp.ndim(params.covariances), "unknown")


def _check_params(params: GMMParams, d: int | None = None) -> GMMParams:
    """Shapes always; values (weights sum to 1, positive definite, finite) when concrete."""
    if not isinstance(params, tuple) or len(params) != 3:
        raise ValueError("params must be a GMMParams(weights, means, covariances)")
    weights, means, covs = (_float_array(a, n) for a, n in zip(params, GMMParams._fields))
    if weights.ndim != 1:
        raise ValueError(f"weights must have shape (K,), got {weights.shape}")
    k = weights.shape[0]
    if means.ndim != 2 or means.shape[0] != k:
        raise ValueError(f"means must have shape (K={k}, D), got {means.shape}")
    dim = means.shape[1]
    if d is not None and dim != d:
        raise ValueError(f"means must have D={d} columns to match x, got {means.shape}")
    expected = {3: (k, dim, dim), 2: (k, dim), 1: (k,)}.get(covs.ndim)
    if expected is None or covs.shape != expected:
        raise ValueError(
            f"covariances must have shape (K, D, D) full, (K, D) diag or (K,) spherical with "
            f"K={k}, D={dim}; got {covs.shape}"
        )
    if _is_concrete(weights, means, covs):
        for name, a in (("weights", weights), ("means", means), ("covariances", covs)):
            if not bool(jnp.all(jnp.isfinite(a))):
                raise ValueError(f"{name} contains NaN or infinite values")
        w = np.asarray(weights, np.float64)
        if np.any(w < 0) or abs(w.sum() - 1.0) > 1e-4:
            raise ValueError(f"weights must be non-negative and sum to 1, got sum {w.sum():.6g}")
        c = np.asarray(covs, np.float64)
        if covs.ndim == 3:
            if not np.allclose(c, np.swapaxes(c, 1, 2), rtol=1e-5, atol=1e-8 * np.abs(c).max()):
                raise ValueError("covariances must be symmetric")
            if np.any(np.linalg.eigvalsh(c) <= 0):
                raise ValueError("covariances must be positive definite")
        elif np.any(c <= 0):
            raise ValueError("covariances (variances) must be positive")
    return GMMParams(weights, means, covs)


def _check_n_components(n_components, n_points: int) -> int:
    if not isinstance(n_components, (int, np.integer)) or n_components < 1:
        raise ValueError(f"n_components must be a positive integer, got {n_components!r}")
    if n_components > n_points:
        raise ValueError(f"n_components={n_components} exceeds the number of points N={n_points}")
    return int(n_components)


def _check_covariance_type(covariance_type: str) -> str:
    if covariance_type not in COVARIANCE_TYPES:
        raise ValueError(f"covariance_type must be one of {COVARIANCE_TYPES}, got {covariance_type!r}")
    return covariance_type


def _check_em_options(max_iter, tol, reg_covar) -> None:
    if not isinstance(max_iter, (int, np.integer)) or max_iter < 1:
        raise ValueError(f"max_iter must be a positive integer, got {max_iter!r}")
    if not tol >= 0:
        raise ValueError(f"tol must be >= 0 (0 runs exactly max_iter iterations), got {tol!r}")
    if not reg_covar >= 0:
        raise ValueError(f"reg_covar must be >= 0, got {reg_covar!r}")


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


def component_log_prob(x: jax.Array, params: GMMParams) -> jax.Array:
    r"""(N, K) log-joint :math:`\log\pi_k + \log\mathcal N(x_n\mid\mu_k,\Sigma_k)`, via Cholesky.

    :math:`\log\mathcal N = -\tfrac12\lVert L_k^{-1}(x-\mu_k)\rVert^2 - \sum_i\log L_{k,ii}
    - \tfrac D2\log 2\pi` where :math:`\Sigma_k = L_k L_k^\top`.
    """
    x = _check_data(x)
    params = _check_params(params, x.shape[1])
    return _component_log_prob(x, params)


@jax.jit
def _component_log_prob(x, params: GMMParams):
    params = jax.tree.map(lambda a: a.astype(x.dtype), params)
    wh = _whitening(params)
    return _log_joint(_whiten(x.T, wh), wh).T


def log_density(x: jax.Array, params: GMMParams) -> jax.Array:
    """(N,) log p(x_n) = logsumexp_k [log π_k + log N(x_n | μ_k, Σ_k)]."""
    return logsumexp(component_log_prob(x, params), axis=1)


def log_likelihood(x: jax.Array, params: GMMParams) -> jax.Array:
    """() mean log-likelihood per point, (1/N) Σ_n log p(x_n) (scikit-learn's ``score``)."""
    return jnp.mean(log_density(x, params))


def responsibilities(x: jax.Array, params: GMMParams) -> jax.Array:
    """(N, K) soft assignment r_nk = p(z = k | x_n), each row summing to 1."""
    log_joint = component_log_prob(x, params)
    return jnp.exp(log_joint - logsumexp(log_joint, axis=1, keepdims=True))


def predict(x: jax.Array, params: GMMParams) -> jax.Array:
    """(N,) hard assignment argmax_k p(z = k | x_n), int32."""
    return jnp.argmax(component_log_prob(x, params), axis=1).astype(jnp.int32)


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
    x: jax.Array,
    init: GMMParams,
    *,
    max_iter: int = 100,
    tol: float = 1e-3,
    reg_covar: float = 1e-6,
    block_size: int = 1024,
) -> EMResult:
    """Run EM from ``init`` until the mean log-likelihood changes by less than ``tol``.

    Args:
      x: (N, D) data.
      init: starting parameters (their covariance type is kept).
      max_iter: iteration cap (static: changing it recompiles; ``tol`` and ``reg_covar`` do not).
      tol: stop when ``|ll_t - ll_{t-1}| < tol`` (mean per point, as scikit-learn); 0 runs
        exactly ``max_iter`` iterations.
      reg_covar: added to the diagonal of every covariance in the M-step.
      block_size: points per block of the fused E+M pass (memory, not results).

    Returns:
      :class:`EMResult`.
    """
    x = _check_data(x)
    init = _check_params(init, x.shape[1])
    _check_n_components(init.weights.shape[0], x.shape[0])
    _check_em_options(max_iter, tol, reg_covar)
    _check_block_size(block_size)
    res = _em_kernel(x, init, tol, reg_covar, max_iter=int(max_iter), block_size=int(block_size))
    _check_em_result(res, reg_covar)
    return res


def _check_em_result(res: EMResult, reg_covar) -> None:
    """Raise instead of returning NaN when EM broke down (a component collapsed).

    Without enough regularisation a component can shrink onto a few points: its covariance
    becomes singular, the likelihood is unbounded, and the next E-step divides 0 by 0.
    """
    if not _is_concrete(res.log_likelihood):   # traced inside a caller's jit: nothing to check
        return
    n_iter = int(res.n_iter)
    finite = bool(jnp.isfinite(res.log_likelihood)) and bool(jnp.all(jnp.isfinite(res.history[:n_iter])))
    if not finite:
        raise FloatingPointError(
            f"EM broke down within {n_iter} iterations: a component collapsed onto too few points "
            f"and its covariance became singular (log-likelihood not finite); increase reg_covar "
            f"(now {float(reg_covar):g}) or use fewer components")


def _check_block_size(block_size) -> None:
    if not isinstance(block_size, (int, np.integer)) or block_size < 1:
        raise ValueError(f"block_size must be a positive integer, got {block_size!r}")


# --------------------------------------------------------------------------- initialisation


def kmeans_plus_plus(key: jax.Array, x: jax.Array, n_components: int) -> jax.Array:
    """(K, D) k-means++ seeds: the first a uniformly random point, each next one drawn with
    probability proportional to its squared distance to the nearest seed chosen so far."""
    x = _check_data(x)
    k = _check_n_components(n_components, x.shape[0])
    return _kmeans_plus_plus(key, x, n_components=k)


@partial(jax.jit, static_argnames="n_components")
def _kmeans_plus_plus(key, x, *, n_components):
    n = x.shape[0]
    keys = jax.random.split(key, n_components)
    first = jax.random.randint(keys[0], (), 0, n)
    d2 = jnp.sum((x - x[first]) ** 2, axis=1)
    centers = jnp.zeros((n_components, x.shape[1]), x.dtype).at[0].set(x[first])

    def step(carry, k):
        centers, d2 = carry
        # Points already chosen have d2 = 0 (log 0 = -inf), so they are never drawn again.
        idx = jax.random.categorical(keys[k], jnp.log(d2))
        centers = centers.at[k].set(x[idx])
        d2 = jnp.minimum(d2, jnp.sum((x - x[idx]) ** 2, axis=1))
        return (centers, d2), None

    (centers, _), _ = jax.lax.scan(step, (centers, d2), jnp.arange(1, n_components))
    return centers


def init_params(
    key: jax.Array, x: jax.Array, n_components: int, covariance_type: str = "full", *, reg_covar: float = 1e-6
) -> GMMParams:
    """k-means++ seeds, every point assigned to its nearest seed, then the M-step of that
    hard assignment: weights = cluster fractions, cluster means, cluster covariances + reg_covar·I."""
    x = _check_data(x)
    k = _check_n_components(n_components, x.shape[0])
    _check_covariance_type(covariance_type)
    _check_em_options(1, 0.0, reg_covar)
    return _init_params(key, x, reg_covar, n_components=k, covariance_type=covariance_type)


@partial(jax.jit, static_argnames=("n_components", "covariance_type"))
def _init_params(key, x, reg_covar, *, n_components, covariance_type):
    seeds = _kmeans_plus_plus(key, x, n_components=n_components)
    d = x.shape[1]
    # ‖x - c‖² = ‖x‖² - 2 x·c + ‖c‖²; the first term is the same for every seed.
    labels = jnp.argmin(jnp.sum(seeds**2, axis=1)[None] - 2 * x @ seeds.T, axis=1)
    hard = jax.nn.one_hot(labels, n_components, dtype=x.dtype)  # (N, K)
    nk = jnp.sum(hard, axis=0) + 10 * jnp.finfo(x.dtype).eps
    means = (hard.T @ x) / nk[:, None]
    diff = x[:, None, :] - means[None]  # (N, K, D)
    if covariance_type == "full":
        covs = jnp.einsum("nk,nkd,nke->kde", hard, diff, diff) / nk[:, None, None]
        covs = covs + reg_covar * jnp.eye(d, dtype=x.dtype)
    else:
        var = jnp.einsum("nk,nkd->kd", hard, diff**2) / nk[:, None]
        covs = var + reg_covar if covariance_type == "diag" else jnp.mean(var, axis=1) + reg_covar
    return GMMParams(nk / jnp.sum(nk), means, covs)


def fit(
    key: jax.Array,
    x: jax.Array,
    n_components: int,
    covariance_type: str = "full",
    *,
    n_restarts: int = 4,
    max_iter: int = 100,
    tol: float = 1e-3,
    reg_covar: float = 1e-6,
    block_size: int = 1024,
) -> FitResult:
    """``n_restarts`` k-means++ initialisations, EM from each (all at once with ``vmap``),
    and the restart with the highest final mean log-likelihood."""
    x = _check_data(x)
    k = _check_n_components(n_components, x.shape[0])
    _check_covariance_type(covariance_type)
    _check_em_options(max_iter, tol, reg_covar)
    _check_block_size(block_size)
    if not isinstance(n_restarts, (int, np.integer)) or n_restarts < 1:
        raise ValueError(f"n_restarts must be a positive integer, got {n_restarts!r}")
    return _fit_kernel(
        key, x, tol, reg_covar, n_components=k, covariance_type=covariance_type,
        n_restarts=int(n_restarts), max_iter=int(max_iter), block_size=int(block_size),
    )


@partial(jax.jit, static_argnames=("n_components", "covariance_type", "n_restarts", "max_iter", "block_size"))
def _fit_kernel(key, x, tol, reg_covar, *, n_components, covariance_type, n_restarts, max_iter, block_size):
    tol, reg_covar = jnp.asarray(tol, x.dtype), jnp.asarray(reg_covar, x.dtype)
    keys = jax.random.split(key, n_restarts)
    inits = jax.vmap(
        lambda k: _init_params(k, x, reg_covar, n_components=n_components, covariance_type=covariance_type)
    )(keys)
    blocks = _blocks(x, block_size)  # shared by every restart
    run = partial(_em_loop, max_iter=max_iter)
    restarts = jax.vmap(run, in_axes=(None, 0, None, None))(blocks, _shift(inits, -blocks.center), tol, reg_covar)
    restarts = restarts._replace(params=_shift(restarts.params, blocks.center))
    # A restart whose likelihood is NaN never wins.
    best = jnp.argmax(jnp.where(jnp.isnan(restarts.log_likelihood), -jnp.inf, restarts.log_likelihood))
    return FitResult(jax.tree.map(lambda a: a[best], restarts), restarts, best, inits)


# --------------------------------------------------------------------------- sampling, model choice


def sample(key: jax.Array, params: GMMParams, n: int) -> tuple[jax.Array, jax.Array]:
    """Draw ``n`` points: z ~ Categorical(π), then x = μ_z + L_z ε with ε ~ N(0, I).

    Returns ``(x (n, D), z (n,) int32)``.
    """
    params = _check_params(params)
    if not isinstance(n, (int, np.integer)) or n < 1:
        raise ValueError(f"n must be a positive integer, got {n!r}")
    return _sample(key, params, n=int(n))


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
    _check_covariance_type(covariance_type)
    cov = {"full": dim * (dim + 1) // 2, "diag": dim, "spherical": 1}[covariance_type]
    return int(n_components - 1 + n_components * dim + n_components * cov)


def bic(x: jax.Array, params: GMMParams) -> jax.Array:
    """Bayesian information criterion, -2 log L + p log N (lower is better)."""
    x = _check_data(x)
    p = n_parameters(params.means.shape[0], params.means.shape[1], covariance_type_of(params))
    return -2.0 * x.shape[0] * log_likelihood(x, params) + p * math.log(x.shape[0])


def aic(x: jax.Array, params: GMMParams) -> jax.Array:
    """Akaike information criterion, -2 log L + 2p (lower is better)."""
    x = _check_data(x)
    p = n_parameters(params.means.shape[0], params.means.shape[1], covariance_type_of(params))
    return -2.0 * x.shape[0] * log_likelihood(x, params) + 2.0 * p
