"""AR(p) models of real-valued time series: fit, diagnose, forecast, simulate.

An autoregression predicts each value from the ones before it (the chain rule of probability
with a linear-Gaussian conditional):
:math:`y_t = c + \\sum_{i=1}^{p} \\varphi_i y_{t-i} + \\varepsilon_t`,
:math:`\\varepsilon_t \\sim \\mathcal N(0, \\sigma^2)` i.i.d.

* :func:`lag_matrix`, :func:`fit_ar_ls` - conditional least squares (what ``statsmodels``
  ``AutoReg`` fits), solved by a Householder QR factorisation in float64 on the host;
* :func:`fit_ar_yw` - Yule-Walker: solve the Toeplitz system of autocovariances by the
  Levinson-Durbin recursion (:func:`levinson_durbin`, what ``yule_walker`` solves);
* :func:`autocovariance`, :func:`acf`, :func:`pacf` - by FFT and Levinson-Durbin;
* :func:`characteristic_roots`, :func:`is_stationary` - the process is stationary iff every
  root of :math:`1 - \\varphi_1 z - \\dots - \\varphi_p z^p` lies outside the unit circle;
* :func:`forecast` - h-step means and normal prediction intervals (MA(inf) weights);
* :func:`simulate_ar`, :func:`sample_ar` - the recursion as a ``lax.scan``;
* :func:`information_criteria`, :func:`select_order` - AIC / BIC on a common sample.

Character n-grams and the neural bigram (the same chain rule on symbols) live in
:mod:`course_lib.ngram`.

Argument checks run first, in Python, and raise :class:`ValueError` naming the argument
(NaN in a series, a constant series, an order the data cannot support...). Results are
returned in JAX's default dtype: enable ``jax_enable_x64`` (or use
``with jax.enable_x64(True):``) for float64, which the tests use to agree with statsmodels to
1e-8. The least-squares fits compute in float64 whatever that setting, so float32 results
are float64 ones rounded once.
"""
from __future__ import annotations

import math
import statistics
from functools import partial
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import scipy.linalg

from course_lib import _validate

__all__ = [
    "ARFit", "Forecast", "InformationCriteria",
    "lag_matrix", "fit_ar_ls", "fit_ar_yw", "autocovariance", "acf", "pacf",
    "levinson_durbin", "characteristic_roots", "is_stationary", "forecast",
    "simulate_ar", "sample_ar", "information_criteria", "select_order",
]


# =========================================================================== validation


def _as_series(y, p: int | None = None, *, min_length: int | None = None, name: str = "y"):
    """Check a 1-D finite real series (on the host) and return it as a float64 NumPy array."""
    _validate.real_array(y, name, ndim=1, dtype=jnp.result_type(float))  # dtype, shape, NaN
    arr = np.asarray(y, dtype=np.float64)
    if min_length is not None and arr.shape[0] < min_length:
        raise ValueError(
            f"{name} has {arr.shape[0]} values; an AR({p}) fit needs at least {min_length}"
        )
    return arr


def _check_not_constant(arr: np.ndarray, name: str = "y") -> None:
    if arr.size and np.all(arr == arr[0]):
        raise ValueError(
            f"{name} is constant (zero variance): autocorrelations and AR coefficients are "
            "undefined for it")


def _out(x):
    """Host float64 -> JAX's default float dtype (float32 unless x64 is enabled)."""
    return jnp.asarray(x, dtype=jnp.result_type(float))


# =========================================================================== AR(p) fitting


class ARFit(NamedTuple):
    """A fitted AR(p): :math:`y_t = c + \\sum_i \\varphi_i y_{t-i} + \\varepsilon_t`.

    Attributes:
      intercept: () the constant :math:`c`.
      coeffs: (p,) :math:`\\varphi_1, \\dots, \\varphi_p`.
      sigma2: () innovation variance :math:`\\sigma^2` (maximum-likelihood scaling:
        residual sum of squares / nobs for least squares).
      nobs: number of observations the fit used (regression targets for least squares,
        the series length for Yule-Walker).
    """

    intercept: jax.Array
    coeffs: jax.Array
    sigma2: jax.Array
    nobs: int

    @property
    def order(self) -> int:
        return int(self.coeffs.shape[0])

    @property
    def mean(self) -> jax.Array:
        """Stationary mean :math:`c / (1 - \\sum_i \\varphi_i)`."""
        return self.intercept / (1.0 - jnp.sum(self.coeffs))


@partial(jax.jit, static_argnames=("p", "hold_back"))
def _lag_matrix_kernel(y, p, hold_back):
    n = y.shape[0]
    columns = [y[hold_back - 1 - i: n - 1 - i] for i in range(p)]  # static slices, no gather
    return jnp.stack(columns, axis=1), y[hold_back:]


def _check_hold_back(p: int, hold_back) -> int:
    hold_back = p if hold_back is None else _validate.count(hold_back, "hold_back", minimum=0)
    if hold_back < p:
        raise ValueError(
            f"hold_back must be >= p = {p} (the first target needs p earlier values), "
            f"got {hold_back}")
    return hold_back


def lag_matrix(y, p: int, *, hold_back: int | None = None) -> tuple[jax.Array, jax.Array]:
    """Regressors and targets of the conditional AR(p) regression.

    Args:
      y: (T,) real series.
      p: number of lags, ``>= 1``.
      hold_back: first target index, ``p <= hold_back < T`` (default p); the targets are
        ``y[hold_back:]``.

    Returns:
      ``(X, target)``: X (T - hold_back, p) with ``X[t, i] = y[hold_back + t - 1 - i]``
      (lag i + 1), target (T - hold_back,).
    """
    p = _validate.count(p, "p")
    hold_back = _check_hold_back(p, hold_back)
    arr = _as_series(y, p, min_length=hold_back + 1)
    return _lag_matrix_kernel(_out(arr), p, hold_back)


def _qr_least_squares(y: np.ndarray, p: int, hold_back: int, orders) -> list:
    """Least squares of AR(k), k in ``orders`` (each <= p), on the targets ``y[hold_back:]``.

    Float64 on the host. The design ``[1, y_{t-1}, ..., y_{t-p}]`` of the centred series is
    factorised once, ``X = Q R`` (Householder, LAPACK ``geqrf``); the first k + 1 columns of X
    are ``Q[:, :k+1] R[:k+1, :k+1]``, so every order k shares the factorisation:
    :math:`\\hat\\beta_k = R_{:k+1,:k+1}^{-1} (Q^\\top y)_{:k+1}` and
    :math:`\\mathrm{RSS}_k = \\mathrm{RSS}_p + \\sum_{j > k} (Q^\\top y)_j^2` (a sum of
    non-negative terms: no cancellation). QR works on X itself, not on the normal equations
    :math:`X^\\top X`, whose condition number is the square of X's.

    Returns a list of ``(intercept, coeffs (k,), rss)`` as float64.
    """
    shift = float(np.mean(y))                  # LS with an intercept is shift-invariant
    x = y - shift
    n = x.shape[0]
    lags = np.lib.stride_tricks.sliding_window_view(x[:-1], p)[hold_back - p:]  # oldest first
    design = np.empty((n - hold_back, p + 1))
    design[:, 0] = 1.0
    design[:, 1:] = lags[:, ::-1]             # column i + 1 = lag i + 1
    target = x[hold_back:]
    q, r = np.linalg.qr(design)
    qty = q.T @ target
    rss_full = float(np.sum((target - q @ qty) ** 2))
    out = []
    for k in orders:
        rk = r[: k + 1, : k + 1]
        sv = np.linalg.svd(rk, compute_uv=False)
        if not sv[-1] > sv[0] * max(design.shape) * np.finfo(np.float64).eps:
            raise ValueError(
                f"y: the AR({k}) regressors (a constant and {k} lags) are exactly collinear "
                "(e.g. a constant or periodic stretch); the least-squares fit is not unique")
        beta = scipy.linalg.solve_triangular(rk, qty[: k + 1])
        rss = rss_full + math.fsum(qty[k + 1:] ** 2)
        coeffs = beta[1:]
        out.append((beta[0] + shift * (1.0 - math.fsum(coeffs)), coeffs, rss))
    return out


def fit_ar_ls(y, p: int, *, hold_back: int | None = None) -> ARFit:
    """Conditional least squares AR(p) with a constant (statsmodels ``AutoReg(y, p).fit()``).

    Minimises :math:`\\sum_{t \\ge h} (y_t - c - \\sum_i \\varphi_i y_{t-i})^2` over
    :math:`(c, \\varphi)`, with :math:`h` = ``hold_back`` (default ``p``). Solved in float64 on
    the host by a Householder QR factorisation of the lag matrix of the centred series (not by
    the normal equations, which square its condition number: on a near-unit-root series they
    lose every digit in float32). ``sigma2`` = RSS / nobs. statsmodels solves the same
    problem with a pseudo-inverse (SVD).

    Args:
      y: (T,) real series without NaNs, not constant.
      p: order, ``>= 1``.
      hold_back: first target index, ``p <= hold_back``; use a common value to compare
        orders on the same sample (as :func:`select_order` does).

    Raises ValueError for a constant series or exactly collinear lags.
    """
    p = _validate.count(p, "p")
    hold_back = _check_hold_back(p, hold_back)
    y = _as_series(y, p, min_length=hold_back + p + 1)
    _check_not_constant(y)
    [(intercept, coeffs, rss)] = _qr_least_squares(y, p, hold_back, [p])
    nobs = int(y.shape[0] - hold_back)
    return ARFit(_out(intercept), _out(coeffs), _out(rss / nobs), nobs)


_DIRECT_MAX_LAGS = 32


@partial(jax.jit, static_argnames=("nlags", "adjusted"))
def _autocovariance_kernel(y, nlags, adjusted):
    n = y.shape[0]
    x = y - jnp.mean(y)
    denom = (n - jnp.arange(nlags + 1)) if adjusted else n
    if nlags < _DIRECT_MAX_LAGS:  # a few fused dot products beat an FFT of length 2T
        return jnp.stack([jnp.dot(x[: n - k], x[k:]) for k in range(nlags + 1)]) / denom
    size = 1 << int(np.ceil(np.log2(2 * n - 1))) if n > 1 else 1
    spectrum = jnp.fft.rfft(x, n=size)
    full = jnp.fft.irfft(spectrum * jnp.conj(spectrum), n=size)[: nlags + 1]
    return full / denom


def autocovariance(y, nlags: int, *, adjusted: bool = False) -> jax.Array:
    """Sample autocovariances :math:`\\gamma_0..\\gamma_{nlags}`.

    Up to 31 lags as direct dot products (O(T nlags)), beyond by FFT (O(T log T)).

    :math:`\\hat\\gamma_k = \\frac{1}{d_k} \\sum_{t=0}^{T-k-1} (y_t - \\bar y)(y_{t+k} - \\bar y)`
    with :math:`d_k = T` (default, a positive semi-definite sequence) or :math:`T - k`
    (``adjusted``). Matches ``statsmodels.tsa.stattools.acovf``.

    Args: y (T,) real series; nlags in [0, T - 1]. Returns: (nlags + 1,)
    """
    nlags = _validate.count(nlags, "nlags", minimum=0)
    y = _as_series(y, nlags, min_length=nlags + 1)
    return _autocovariance_kernel(_out(y), nlags, bool(adjusted))


def acf(y, nlags: int) -> jax.Array:
    """Autocorrelations :math:`\\rho_k = \\hat\\gamma_k / \\hat\\gamma_0`, k = 0..nlags.

    Matches ``statsmodels.tsa.stattools.acf(y, nlags=nlags)`` (denominator T). Returns
    (nlags + 1,) with ``acf[0] == 1``. Raises ValueError for a constant series
    (:math:`\\hat\\gamma_0 = 0`).
    """
    nlags = _validate.count(nlags, "nlags", minimum=0)
    series = _as_series(y, nlags, min_length=nlags + 1)
    _check_not_constant(series)
    gamma = _autocovariance_kernel(_out(series), nlags, False)
    return gamma / gamma[0]


@partial(jax.jit, static_argnames=("p",))
def _levinson_durbin_kernel(acov, p):
    gamma = acov[: p + 1]
    lags = jnp.arange(p)

    def step(carry, k):  # k = 1..p, the order being reached
        phi, v = carry
        # sum_{j<k} phi_j * gamma_{k-j}, with phi_j = phi[j-1]; masked beyond order k-1
        back = jnp.where(lags < k - 1, gamma[jnp.clip(k - 1 - lags, 0, p)], 0.0)
        kappa = (gamma[k] - jnp.dot(phi, back)) / v
        # phi_new[j-1] = phi[j-1] - kappa * phi[k-j-1] for j < k; phi_new[k-1] = kappa
        reflected = jnp.where(lags < k - 1, phi[jnp.clip(k - 2 - lags, 0, p - 1)], 0.0)
        phi = jnp.where(lags < k - 1, phi - kappa * reflected, phi)
        phi = jnp.where(lags == k - 1, kappa, phi)
        return (phi, v * (1.0 - kappa ** 2)), kappa

    init = (jnp.zeros(p, gamma.dtype), gamma[0])
    (phi, v), kappas = jax.lax.scan(step, init, jnp.arange(1, p + 1))
    return phi, kappas, v


def levinson_durbin(acov, p: int) -> tuple[jax.Array, jax.Array, jax.Array]:
    """Solve the Yule-Walker equations :math:`\\Gamma_p \\varphi = \\gamma_{1:p}` in O(p^2).

    :math:`\\Gamma_p` is the Toeplitz matrix of :math:`\\gamma_0..\\gamma_{p-1}`. The recursion
    goes up one order at a time; the last coefficient of order k is the partial
    autocorrelation at lag k:

    .. math::  \\kappa_k = \\frac{\\gamma_k - \\sum_{j<k} \\varphi_{k-1,j}\\gamma_{k-j}}{v_{k-1}},
       \\quad \\varphi_{k,j} = \\varphi_{k-1,j} - \\kappa_k \\varphi_{k-1,k-j},
       \\quad v_k = v_{k-1}(1 - \\kappa_k^2).

    The coefficient vector lives in a fixed (p,) buffer (entries past the current order are
    zero), so the whole recursion is one ``lax.scan`` with static shapes (jit-compiled).

    Args:
      acov: (>= p + 1,) real autocovariances :math:`\\gamma_0 > 0, \\gamma_1, \\dots`;
        checked when concrete (finite, :math:`\\gamma_0 > 0`, and every
        :math:`|\\kappa_k| < 1`, i.e. :math:`\\Gamma_{p+1}` positive definite).
      p: order, ``>= 1``.

    Returns:
      ``(coeffs (p,), pacf (p,) for lags 1..p, sigma2 ())`` where sigma2 = :math:`v_p`.
    """
    p = _validate.count(p, "p")
    acov = _validate.real_array(acov, "acov", ndim=1, finite=False)
    if acov.shape[0] < p + 1:
        raise ValueError(f"acov must hold at least p + 1 = {p + 1} autocovariances "
                         f"(gamma_0..gamma_{p}), got {acov.shape[0]}")
    # Value checks on the host, and only on concrete values (not under jit or grad).
    if _validate.is_concrete(acov):
        host = np.asarray(acov)[: p + 1]
        if not np.all(np.isfinite(host)):
            raise ValueError("acov contains NaN or infinite values")
        if not host[0] > 0:
            raise ValueError(f"acov[0] (the variance gamma_0) must be > 0, got {float(host[0])!r}")
    coeffs, kappas, v = _levinson_durbin_kernel(acov, p)
    if _validate.is_concrete(kappas) and not np.all(np.abs(np.asarray(kappas)) < 1):
        worst = float(np.max(np.abs(np.asarray(kappas))))
        raise ValueError("acov is not a positive-definite autocovariance sequence: the "
                         f"Toeplitz system of order {p} is singular or indefinite "
                         f"(a partial autocorrelation of size {worst:.3g} >= 1)")
    return coeffs, kappas, v


_YW_METHODS = ("adjusted", "mle")


@partial(jax.jit, static_argnames=("p", "adjusted"))
def _yule_walker_kernel(y, p, adjusted):
    gamma = _autocovariance_kernel(y, p, adjusted)
    gamma = gamma.at[0].set(jnp.mean((y - jnp.mean(y)) ** 2))  # lag 0 always divides by T
    coeffs, kappas, sigma2 = _levinson_durbin_kernel(gamma, p)
    return jnp.mean(y) * (1.0 - jnp.sum(coeffs)), coeffs, sigma2, kappas


def _check_method(method) -> str:
    if method not in _YW_METHODS:
        raise ValueError(f"method must be one of {_YW_METHODS}, got {method!r}")
    return method


def fit_ar_yw(y, p: int, *, method: str = "adjusted") -> ARFit:
    """Yule-Walker AR(p) (statsmodels ``yule_walker(y, order=p, method=method)``).

    Plug sample autocovariances of the demeaned series into the Yule-Walker equations and
    solve them with :func:`levinson_durbin`. ``method="adjusted"`` divides lag k by T - k,
    ``"mle"`` by T (guaranteeing a stationary fit). The intercept is
    :math:`\\bar y (1 - \\sum_i \\varphi_i)`; ``sigma2`` is :math:`\\gamma_0 - \\varphi^\\top \\gamma_{1:p}`.
    Raises ValueError for a constant series.
    """
    p = _validate.count(p, "p")
    method = _check_method(method)
    y = _as_series(y, p, min_length=p + 1)
    _check_not_constant(y)
    intercept, coeffs, sigma2, _ = _yule_walker_kernel(_out(y), p, method == "adjusted")
    return ARFit(intercept, coeffs, sigma2, int(y.shape[0]))


def pacf(y, nlags: int, *, method: str = "adjusted") -> jax.Array:
    """Partial autocorrelations at lags 0..nlags (lag 0 is 1) by Levinson-Durbin.

    The PACF at lag k is the last coefficient of the Yule-Walker AR(k) fit: the correlation
    of :math:`y_t` and :math:`y_{t-k}` once the lags in between are regressed out. An AR(p)
    has PACF zero beyond lag p. Matches ``statsmodels.tsa.stattools.pacf`` with method
    ``"ywadjusted"`` (``method="adjusted"``) or ``"ywmle"`` (``method="mle"``).

    ``nlags`` must be below T // 2 (statsmodels' limit): the autocovariances at lags near T
    rest on a handful of products, and with ``"adjusted"`` (divided by T - k) the recursion
    then returns "correlations" far outside [-1, 1]. Raises ValueError for a constant series.
    """
    nlags = _validate.count(nlags, "nlags")
    method = _check_method(method)
    y = _as_series(y, nlags, min_length=nlags + 1)
    if nlags >= y.shape[0] // 2:
        raise ValueError(f"nlags must be < T // 2 = {y.shape[0] // 2} for a series of "
                         f"T = {y.shape[0]} values (statsmodels' limit), got {nlags}")
    _check_not_constant(y)
    kappas = _yule_walker_kernel(_out(y), nlags, method == "adjusted")[3]
    return jnp.concatenate([jnp.ones(1, kappas.dtype), kappas])


# =========================================================================== stationarity


def _companion(coeffs: np.ndarray) -> np.ndarray:
    p = coeffs.shape[0]
    top = coeffs[None, :]
    shift = np.eye(p - 1, p) if p > 1 else np.zeros((0, p))
    return np.concatenate([top, shift], axis=0)


def characteristic_roots(coeffs) -> np.ndarray:
    """Roots z of :math:`1 - \\varphi_1 z - \\dots - \\varphi_p z^p` (complex (p',), p' <= p).

    Computed as reciprocals of the eigenvalues of the companion matrix (eigenvalues at zero,
    from trailing zero coefficients, have no finite root and are dropped). Tiny (p x p), so
    it runs in NumPy on the host. Same roots as statsmodels' ``AutoRegResults.roots``.
    """
    _validate.real_array(coeffs, "coeffs", ndim=(0, 1), dtype=jnp.result_type(float))
    phi = np.asarray(coeffs, dtype=np.float64).reshape(-1)
    if phi.size == 0:
        raise ValueError("coeffs must hold at least one AR coefficient")
    eig = np.linalg.eigvals(_companion(phi))
    eig = eig[np.abs(eig) > 1e-300]
    return 1.0 / eig


def is_stationary(coeffs) -> bool:
    """True iff every characteristic root lies strictly outside the unit circle.

    Equivalently, every eigenvalue of the companion matrix has modulus < 1: shocks die out
    geometrically and the process has a finite, time-invariant mean and variance. (The size
    of the lag-1 autocorrelation is not the criterion.)
    """
    return bool(np.all(np.abs(characteristic_roots(coeffs)) > 1.0))


# =========================================================================== forecasts


class Forecast(NamedTuple):
    """h-step forecasts: each field (h,). ``lower``/``upper`` bound the central interval."""

    mean: jax.Array
    se: jax.Array
    lower: jax.Array
    upper: jax.Array


@partial(jax.jit, static_argnames=("steps",))
def _forecast_kernel(intercept, coeffs, sigma2, last, steps, z):
    p = coeffs.shape[0]

    def mean_step(window, _):  # window: (p,) most recent first
        nxt = intercept + jnp.dot(coeffs, window)
        return jnp.concatenate([nxt[None], window[:-1]]), nxt

    _, mean = jax.lax.scan(mean_step, last, None, length=steps)

    # MA(inf) weights: psi_0 = 1, psi_j = sum_i phi_i psi_{j-i}
    def psi_step(window, _):
        psi = jnp.dot(coeffs, window)
        return jnp.concatenate([psi[None], window[:-1]]), psi

    first = jnp.zeros(p, coeffs.dtype).at[0].set(1.0)
    _, later = jax.lax.scan(psi_step, first, None, length=steps - 1)
    psi = jnp.concatenate([jnp.ones(1, coeffs.dtype), later])
    se = jnp.sqrt(sigma2 * jnp.cumsum(psi ** 2))
    return Forecast(mean, se, mean - z * se, mean + z * se)


def _check_fit(fit) -> ARFit:
    if not isinstance(fit, ARFit):
        raise ValueError(f"fit must be an ARFit (from fit_ar_ls or fit_ar_yw), got {type(fit).__name__}")
    coeffs = _validate.real_array(fit.coeffs, "fit.coeffs", ndim=1)
    if coeffs.shape[0] < 1:
        raise ValueError("fit.coeffs must hold at least one coefficient")
    intercept = _validate.real(fit.intercept, "fit.intercept")
    sigma2 = _validate.real(fit.sigma2, "fit.sigma2", low=0.0)
    nobs = _validate.count(fit.nobs, "fit.nobs")
    return ARFit(intercept, coeffs, sigma2, nobs)


def forecast(fit: ARFit, y, steps: int, *, alpha: float = 0.05) -> Forecast:
    """Forecast ``steps`` values past the end of ``y`` with ``1 - alpha`` intervals.

    Means follow the recursion with future shocks set to zero; the h-step error is
    :math:`\\sum_{j<h} \\psi_j \\varepsilon_{T+h-j}`, so its variance is
    :math:`\\sigma^2 \\sum_{j<h} \\psi_j^2` with the MA(inf) weights
    :math:`\\psi_0 = 1, \\psi_j = \\sum_i \\varphi_i \\psi_{j-i}`. Intervals are
    mean :math:`\\pm z_{1-\\alpha/2}` se (parameter uncertainty ignored, as in statsmodels
    ``AutoRegResults.get_prediction``).

    Args:
      fit: an :class:`ARFit`.
      y: (T,) the observed series, T >= p; its last p values start the recursion.
      steps: horizon h >= 1.
      alpha: in (0, 1).
    """
    fit = _check_fit(fit)
    steps = _validate.count(steps, "steps")
    alpha = _validate.real(alpha, "alpha", low=0.0, high=1.0, low_open=True, high_open=True)
    p = fit.order
    series = _as_series(y, p, min_length=p)
    last = _out(series[-p:][::-1].copy())                 # most recent first
    z = statistics.NormalDist().inv_cdf(1.0 - alpha / 2.0)
    dtype = last.dtype
    return _forecast_kernel(jnp.asarray(fit.intercept, dtype), jnp.asarray(fit.coeffs, dtype),
                            jnp.asarray(fit.sigma2, dtype), last, steps, jnp.asarray(z, dtype))


# =========================================================================== simulation


@jax.jit
def _simulate_kernel(coeffs, intercept, shocks, init):
    def step(window, eps):  # window (p,), most recent first
        nxt = intercept + jnp.dot(coeffs, window) + eps
        return jnp.concatenate([nxt[None], window[:-1]]), nxt

    _, path = jax.lax.scan(step, init[::-1], shocks)
    return path


def _check_coeffs(coeffs) -> jax.Array:
    coeffs = _validate.real_array(coeffs, "coeffs", ndim=(0, 1), dtype=jnp.result_type(float))
    coeffs = jnp.atleast_1d(coeffs)
    if coeffs.shape[0] < 1:
        raise ValueError("coeffs must hold at least one AR coefficient")
    return coeffs


def simulate_ar(coeffs, intercept, shocks, *, init=None) -> jax.Array:
    """Run the AR recursion :math:`y_t = c + \\sum_i \\varphi_i y_{t-i} + e_t` on given shocks.

    Deterministic (the shocks carry the randomness), so it can be checked exactly against a
    linear filter. A ``lax.scan`` whose carry is the last p values.

    Args:
      coeffs: (p,) :math:`\\varphi`.
      intercept: scalar :math:`c`.
      shocks: (n,) innovations :math:`e_t` (already scaled by sigma).
      init: (p,) the values before the first step, oldest first (default zeros).

    Returns: (n,) the path.
    """
    coeffs = _check_coeffs(coeffs)
    p = coeffs.shape[0]
    intercept = _validate.real(intercept, "intercept")
    shocks = _validate.real_array(shocks, "shocks", ndim=1, dtype=coeffs.dtype)
    if init is None:
        init = jnp.zeros(p, coeffs.dtype)
    else:
        init = _validate.real_array(init, "init", dtype=coeffs.dtype)
        if init.shape != (p,):
            raise ValueError(f"init must have shape ({p},) (one value per lag), got {tuple(init.shape)}")
    return _simulate_kernel(coeffs, jnp.asarray(intercept, coeffs.dtype), shocks, init)


def sample_ar(key: jax.Array, coeffs, intercept, sigma, n: int, *, burn_in: int = 200) -> jax.Array:
    """Draw one path of n values of a Gaussian AR(p), discarding ``burn_in`` steps first.

    Starts from zeros; the burn-in lets a stationary process forget that start. ``vmap``
    over keys for many paths (call the function once per key outside ``vmap`` if you want the
    argument checks).
    """
    key = _validate.key(key)
    coeffs = _check_coeffs(coeffs)
    intercept = _validate.real(intercept, "intercept")
    sigma = _validate.real(sigma, "sigma", low=0.0)
    n = _validate.count(n, "n")
    burn_in = _validate.count(burn_in, "burn_in", minimum=0)
    return _sample_ar_kernel(key, coeffs, jnp.asarray(intercept, coeffs.dtype),
                             jnp.asarray(sigma, coeffs.dtype), n, burn_in)


@partial(jax.jit, static_argnames=("n", "burn_in"))
def _sample_ar_kernel(key, coeffs, intercept, sigma, n, burn_in):
    shocks = sigma * jax.random.normal(key, (burn_in + n,), coeffs.dtype)
    init = jnp.zeros(coeffs.shape[0], coeffs.dtype)
    return _simulate_kernel(coeffs, intercept, shocks, init)[burn_in:]


# =========================================================================== order selection


class InformationCriteria(NamedTuple):
    """Gaussian log-likelihood and criteria of a least-squares fit (statsmodels' definitions).

    ``k = p + 2`` free parameters (constant, p coefficients, sigma2):
    :math:`\\ell = -\\frac{n}{2}(\\log 2\\pi + \\log \\hat\\sigma^2 + 1)`,
    AIC = :math:`-2\\ell + 2k`, BIC = :math:`-2\\ell + k \\log n`. Python floats (float64).
    """

    loglik: float
    aic: float
    bic: float


def _criteria(nobs: int, order: int, sigma2: float) -> InformationCriteria:
    k = order + 2
    loglik = -0.5 * nobs * (math.log(2 * math.pi) + math.log(sigma2) + 1.0)
    return InformationCriteria(loglik, -2 * loglik + 2 * k, -2 * loglik + k * math.log(nobs))


def information_criteria(fit: ARFit) -> InformationCriteria:
    """Log-likelihood, AIC and BIC of a least-squares :class:`ARFit` (see the class).

    Computed in float64 on the host from ``fit.sigma2`` and ``fit.nobs``.
    """
    fit = _check_fit(fit)
    if not fit.sigma2 > 0:
        raise ValueError("fit.sigma2 must be > 0 for a log-likelihood (a perfect fit has none)")
    return _criteria(fit.nobs, fit.order, float(fit.sigma2))


def select_order(y, max_p: int, *, criterion: str = "bic") -> tuple[int, np.ndarray]:
    """The order in 1..max_p minimising AIC or BIC, all fits on the same targets ``y[max_p:]``.

    One float64 QR factorisation of the ``max_p``-lag design serves every order (the first
    k + 1 columns of :math:`QR` are the AR(k) design; see :func:`fit_ar_ls`).

    Returns ``(best_p, scores (max_p,))`` with ``scores[p - 1]`` the criterion of AR(p)
    (float64). (statsmodels ``ar_select_order(y, max_p, ic=criterion, glob=False)`` agrees,
    except that it also considers p = 0.)
    """
    max_p = _validate.count(max_p, "max_p")
    if criterion not in ("aic", "bic"):
        raise ValueError(f"criterion must be 'aic' or 'bic', got {criterion!r}")
    y = _as_series(y, max_p, min_length=2 * max_p + 1)
    _check_not_constant(y)
    nobs = int(y.shape[0] - max_p)
    fits = _qr_least_squares(y, max_p, max_p, range(1, max_p + 1))
    scores = np.array([getattr(_criteria(nobs, p, rss / nobs), criterion)
                       for p, (_, _, rss) in zip(range(1, max_p + 1), fits)])
    return int(np.argmin(scores)) + 1, scores
