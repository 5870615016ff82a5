"""Autoregressive models: AR(p) time series and autoregressive generation of characters.

Two faces of one idea, the chain rule of probability

.. math::  p(x_1, \\dots, x_T) = \\prod_{t=1}^{T} p(x_t \\mid x_{<t}),

where each factor looks only at the past.

**AR(p) time series.** :math:`y_t = c + \\sum_{i=1}^{p} \\varphi_i y_{t-i} + \\varepsilon_t`,
:math:`\\varepsilon_t \\sim \\mathcal N(0, \\sigma^2)` i.i.d.

* :func:`fit_ar_ls` - conditional least squares (what ``statsmodels`` ``AutoReg`` fits);
* :func:`fit_ar_yw` - Yule-Walker: solve the Toeplitz system of autocovariances by the
  Levinson-Durbin recursion (:func:`levinson_durbin`, what ``yule_walker`` solves);
* :func:`autocovariance`, :func:`acf`, :func:`pacf` - by FFT and Levinson-Durbin;
* :func:`characteristic_roots`, :func:`is_stationary` - the process is stationary iff every
  root of :math:`1 - \\varphi_1 z - \\dots - \\varphi_p z^p` lies outside the unit circle;
* :func:`forecast` - h-step means and normal prediction intervals (MA(inf) weights);
* :func:`simulate_ar`, :func:`sample_ar` - the recursion as a ``lax.scan``;
* :func:`information_criteria`, :func:`select_order` - AIC / BIC on a common sample.

**Autoregressive generation of discrete sequences** (characters of names or Shakespeare):

* :func:`name_windows`, :func:`text_windows` - every (context, next symbol) as an
  ``(N, n)`` window of ids;
* :func:`ngram_counts`, :func:`fit_ngram` (add-k / Laplace smoothing),
  :func:`fit_interpolated_ngram` (a mixture of orders 1..n);
* :func:`log_likelihood`, :func:`perplexity`;
* :func:`sample_ngram` - temperature sampling with ``jax.random.categorical`` in a ``lax.scan``;
* :func:`bigram_loss`, :func:`train_neural_bigram` - a logits table trained by gradient
  descent (optax); its optimum is the count-based bigram (:func:`bigram_mle_loss`).

Kernels are jit-compiled with static shapes; argument checks run before, in Python, and
raise :class:`ValueError` naming the argument. Arrays follow JAX's default dtype: enable
``jax_enable_x64`` (or use ``with jax.enable_x64(True):``) for float64, which the tests use
to agree with statsmodels to 1e-8.
"""
from __future__ import annotations

import statistics
from functools import partial
from typing import NamedTuple, Sequence

import jax
import jax.numpy as jnp
import numpy as np
import optax

__all__ = [
    "ARFit", "Forecast", "InformationCriteria", "NGramModel", "BOUNDARY", "MAX_TABLE_SIZE",
    "lag_matrix", "fit_ar_ls", "fit_ar_yw", "autocovariance", "acf", "pacf",
    "levinson_durbin", "characteristic_roots", "is_stationary", "forecast",
    "simulate_ar", "sample_ar", "information_criteria", "select_order",
    "name_windows", "text_windows", "context_index", "ngram_counts", "fit_ngram",
    "fit_interpolated_ngram", "log_likelihood", "perplexity", "sample_ngram",
    "decode_names", "bigram_loss", "bigram_mle_loss", "train_neural_bigram",
]

BOUNDARY = "."
"""The symbol that starts and ends every name (id 0 in a vocabulary built with it)."""

MAX_TABLE_SIZE = 2 ** 26
"""Largest dense n-gram table, ``vocab_size ** order`` entries (256 MiB of float32)."""


# =========================================================================== validation


def _as_series(y, p: int | None = None, *, min_length: int | None = None, name: str = "y"):
    """Check a 1-D finite series (on the host) and return it as a JAX array."""
    arr = np.asarray(y)
    if arr.ndim != 1:
        raise ValueError(f"{name} must be a 1-D series, got shape {arr.shape}")
    if not np.issubdtype(arr.dtype, np.number) or np.iscomplexobj(arr):
        raise ValueError(f"{name} must hold real numbers, got dtype {arr.dtype}")
    if not np.all(np.isfinite(arr)):
        raise ValueError(f"{name} contains NaN or infinite values; drop or fill them first")
    if min_length is not None and arr.shape[0] < min_length:
        raise ValueError(
            f"{name} has {arr.shape[0]} values; an AR({p}) fit needs at least {min_length}"
        )
    return jnp.asarray(y, dtype=jnp.result_type(float))


def _check_order(p, name: str = "p") -> int:
    if isinstance(p, bool) or not isinstance(p, (int, np.integer)) or p < 1:
        what = " (the AR order)" if name == "p" else ""
        raise ValueError(f"{name}{what} must be an integer >= 1, got {p!r}")
    return int(p)


def _check_temperature(temperature) -> float:
    t = float(temperature)
    if not np.isfinite(t) or t <= 0:
        raise ValueError(f"temperature must be a finite number > 0, got {temperature!r}")
    return t


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
def lag_matrix(y: jax.Array, p: int, hold_back: int) -> tuple[jax.Array, jax.Array]:
    """Regressors and targets of the conditional AR(p) regression.

    Args:
      y: (T,) series.
      p: number of lags.
      hold_back: first target index (``>= p``); the targets are ``y[hold_back:]``.

    Returns:
      ``(X, target)``: X (T - hold_back, p) with ``X[t, i] = y[hold_back + t - 1 - i]``
      (lag i + 1), target (T - hold_back,).
    """
    n = y.shape[0]
    columns = [y[hold_back - 1 - i: n - 1 - i] for i in range(p)]  # static slices, no gather
    return jnp.stack(columns, axis=1), y[hold_back:]


def _masked_least_squares(y, p, hold_back, n_active):
    """Least squares on the first ``n_active`` of p lag columns (the rest held at zero).

    Masked columns are zeroed and their Gram rows/columns replaced by the identity, so
    their coefficients solve to exactly 0: every order up to p shares one compiled shape.
    """
    # Centre first: least squares with an intercept is shift-invariant, and the centred
    # normal equations are far better conditioned (it matters in float32).
    shift = jnp.mean(y)
    x, target = lag_matrix(y - shift, p, hold_back)
    keep = jnp.arange(p + 1) <= n_active                       # intercept + active lags
    design = jnp.concatenate([jnp.ones((x.shape[0], 1), x.dtype), x], axis=1) * keep
    gram = design.T @ design + jnp.diag(jnp.where(keep, 0.0, 1.0).astype(x.dtype))
    beta = jax.scipy.linalg.solve(gram, design.T @ target, assume_a="pos")
    # One step of iterative refinement recovers the digits the Gram matrix squares away.
    resid = target - design @ beta
    beta = beta + jax.scipy.linalg.solve(gram, design.T @ resid, assume_a="pos")
    resid = target - design @ beta
    coeffs = beta[1:]
    intercept = beta[0] + shift * (1.0 - jnp.sum(coeffs))
    return intercept, coeffs, jnp.mean(resid ** 2)


@partial(jax.jit, static_argnames=("p", "hold_back"))
def _ls_kernel(y, p, hold_back):
    return _masked_least_squares(y, p, hold_back, p)


@partial(jax.jit, static_argnames=("max_p",))
def _ls_all_orders_kernel(y, max_p):
    """AR(1)..AR(max_p) on the common targets y[max_p:], vmapped over the order."""
    orders = jnp.arange(1, max_p + 1)
    return jax.vmap(lambda n: _masked_least_squares(y, max_p, max_p, n))(orders)


def fit_ar_ls(y, p: int, *, hold_back: int | None = None) -> ARFit:
    """Conditional least squares AR(p) with a constant (statsmodels ``AutoReg(y, p).fit()``).

    Minimises :math:`\\sum_{t \\ge h} (y_t - c - \\sum_i \\varphi_i y_{t-i})^2` over
    :math:`(c, \\varphi)`, with :math:`h` = ``hold_back`` (default ``p``); solved by the normal
    equations of the centred series plus one refinement step. ``sigma2`` = RSS / nobs.

    Args:
      y: (T,) real series without NaNs.
      p: order, ``>= 1``.
      hold_back: first target index, ``p <= hold_back``; use a common value to compare
        orders on the same sample (as :func:`select_order` does).
    """
    p = _check_order(p)
    hold_back = p if hold_back is None else int(hold_back)
    if hold_back < p:
        raise ValueError(f"hold_back must be >= p = {p}, got {hold_back}")
    y = _as_series(y, p, min_length=hold_back + p + 1)
    intercept, coeffs, sigma2 = _ls_kernel(y, p, hold_back)
    return ARFit(intercept, coeffs, sigma2, int(y.shape[0] - hold_back))


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

    Returns: (nlags + 1,)
    """
    nlags = _check_order(nlags, "nlags") if nlags != 0 else 0
    y = _as_series(y, nlags, min_length=nlags + 1)
    return _autocovariance_kernel(y, nlags, bool(adjusted))


def acf(y, nlags: int) -> jax.Array:
    """Autocorrelations :math:`\\rho_k = \\hat\\gamma_k / \\hat\\gamma_0`, k = 0..nlags.

    Matches ``statsmodels.tsa.stattools.acf(y, nlags=nlags)`` (denominator T). Returns
    (nlags + 1,) with ``acf[0] == 1``.
    """
    gamma = autocovariance(y, nlags)
    return gamma / gamma[0]


@partial(jax.jit, static_argnames=("p",))
def levinson_durbin(acov: jax.Array, p: int) -> tuple[jax.Array, jax.Array, jax.Array]:
    """Solve the Yule-Walker equations :math:`\\Gamma_p \\varphi = \\gamma_{1:p}` in O(p^2).

    :math:`\\Gamma_p` is the Toeplitz matrix of :math:`\\gamma_0..\\gamma_{p-1}`. The recursion
    goes up one order at a time; the last coefficient of order k is the partial
    autocorrelation at lag k:

    .. math::  \\kappa_k = \\frac{\\gamma_k - \\sum_{j<k} \\varphi_{k-1,j}\\gamma_{k-j}}{v_{k-1}},
       \\quad \\varphi_{k,j} = \\varphi_{k-1,j} - \\kappa_k \\varphi_{k-1,k-j},
       \\quad v_k = v_{k-1}(1 - \\kappa_k^2).

    The coefficient vector lives in a fixed (p,) buffer (entries past the current order are
    zero), so the whole recursion is one ``lax.scan`` with static shapes.

    Args:
      acov: (>= p + 1,) autocovariances :math:`\\gamma_0, \\gamma_1, \\dots`.
      p: order.

    Returns:
      ``(coeffs (p,), pacf (p,) for lags 1..p, sigma2 ())`` where sigma2 = :math:`v_p`.
    """
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


_YW_METHODS = ("adjusted", "mle")


@partial(jax.jit, static_argnames=("p", "adjusted"))
def _yule_walker_kernel(y, p, adjusted):
    gamma = _autocovariance_kernel(y, p, adjusted)
    gamma = gamma.at[0].set(jnp.mean((y - jnp.mean(y)) ** 2))  # lag 0 always divides by T
    coeffs, kappas, sigma2 = levinson_durbin(gamma, p)
    return jnp.mean(y) * (1.0 - jnp.sum(coeffs)), coeffs, sigma2, kappas


def fit_ar_yw(y, p: int, *, method: str = "adjusted") -> ARFit:
    """Yule-Walker AR(p) (statsmodels ``yule_walker(y, order=p, method=method)``).

    Plug sample autocovariances of the demeaned series into the Yule-Walker equations and
    solve them with :func:`levinson_durbin`. ``method="adjusted"`` divides lag k by T - k,
    ``"mle"`` by T (guaranteeing a stationary fit). The intercept is
    :math:`\\bar y (1 - \\sum_i \\varphi_i)`; ``sigma2`` is :math:`\\gamma_0 - \\varphi^\\top \\gamma_{1:p}`.
    """
    p = _check_order(p)
    if method not in _YW_METHODS:
        raise ValueError(f"method must be one of {_YW_METHODS}, got {method!r}")
    y = _as_series(y, p, min_length=p + 1)
    intercept, coeffs, sigma2, _ = _yule_walker_kernel(y, p, method == "adjusted")
    return ARFit(intercept, coeffs, sigma2, int(y.shape[0]))


def pacf(y, nlags: int, *, method: str = "adjusted") -> jax.Array:
    """Partial autocorrelations at lags 0..nlags (lag 0 is 1) by Levinson-Durbin.

    The PACF at lag k is the last coefficient of the Yule-Walker AR(k) fit: the correlation
    of :math:`y_t` and :math:`y_{t-k}` once the lags in between are regressed out. An AR(p)
    has PACF zero beyond lag p. Matches ``statsmodels.tsa.stattools.pacf`` with method
    ``"ywadjusted"`` (``method="adjusted"``) or ``"ywmle"`` (``method="mle"``).
    """
    nlags = _check_order(nlags, "nlags")
    if method not in _YW_METHODS:
        raise ValueError(f"method must be one of {_YW_METHODS}, got {method!r}")
    y = _as_series(y, nlags, min_length=nlags + 1)
    kappas = _yule_walker_kernel(y, nlags, method == "adjusted")[3]
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
    phi = np.asarray(coeffs, dtype=float).reshape(-1)
    if phi.size == 0:
        raise ValueError("coeffs must hold at least one AR coefficient")
    if not np.all(np.isfinite(phi)):
        raise ValueError("coeffs contains NaN or infinite values")
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
    steps = _check_order(steps, "steps")
    if not 0.0 < float(alpha) < 1.0:
        raise ValueError(f"alpha must be in (0, 1), got {alpha!r}")
    p = fit.order
    series = np.asarray(y)
    if series.ndim != 1 or series.shape[0] < p:
        raise ValueError(f"y must be a 1-D series of at least p = {p} values, got shape {series.shape}")
    last = _as_series(series[-p:][::-1], p, name="y (its last p values)")  # most recent first
    z = statistics.NormalDist().inv_cdf(1.0 - float(alpha) / 2.0)
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


def simulate_ar(coeffs, intercept, shocks, init=None) -> jax.Array:
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
    coeffs = jnp.atleast_1d(jnp.asarray(coeffs, dtype=jnp.result_type(float)))
    if coeffs.ndim != 1:
        raise ValueError(f"coeffs must be 1-D (p,), got shape {coeffs.shape}")
    p = coeffs.shape[0]
    shocks = jnp.asarray(shocks, dtype=coeffs.dtype)
    if shocks.ndim != 1:
        raise ValueError(f"shocks must be 1-D (n,), got shape {shocks.shape}")
    init = jnp.zeros(p, coeffs.dtype) if init is None else jnp.asarray(init, coeffs.dtype)
    if init.shape != (p,):
        raise ValueError(f"init must have shape ({p},) (one value per lag), got {init.shape}")
    return _simulate_kernel(coeffs, jnp.asarray(intercept, coeffs.dtype), shocks, init)


def sample_ar(key: jax.Array, coeffs, intercept, sigma, n: int, *, burn_in: int = 200) -> jax.Array:
    """Draw one path of n values of a Gaussian AR(p), discarding ``burn_in`` steps first.

    Starts from zeros; the burn-in lets a stationary process forget that start. ``vmap``
    over keys for many paths.
    """
    n = _check_order(n, "n")
    if int(burn_in) < 0:
        raise ValueError(f"burn_in must be >= 0, got {burn_in!r}")
    if not float(sigma) >= 0:
        raise ValueError(f"sigma must be >= 0, got {sigma!r}")
    coeffs = jnp.atleast_1d(jnp.asarray(coeffs, dtype=jnp.result_type(float)))
    if coeffs.ndim != 1:
        raise ValueError(f"coeffs must be 1-D (p,), got shape {coeffs.shape}")
    return _sample_ar_kernel(key, coeffs, jnp.asarray(intercept, coeffs.dtype),
                             jnp.asarray(sigma, coeffs.dtype), n, int(burn_in))


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
    AIC = :math:`-2\\ell + 2k`, BIC = :math:`-2\\ell + k \\log n`.
    """

    loglik: jax.Array
    aic: jax.Array
    bic: jax.Array


def information_criteria(fit: ARFit) -> InformationCriteria:
    n = fit.nobs
    k = fit.order + 2
    loglik = -0.5 * n * (jnp.log(2 * jnp.pi) + jnp.log(fit.sigma2) + 1.0)
    return InformationCriteria(loglik, -2 * loglik + 2 * k, -2 * loglik + k * np.log(n))


def select_order(y, max_p: int, *, criterion: str = "bic") -> tuple[int, np.ndarray]:
    """The order in 1..max_p minimising AIC or BIC, all fits on the same targets ``y[max_p:]``.

    Returns ``(best_p, scores (max_p,))`` with ``scores[p - 1]`` the criterion of AR(p).
    (statsmodels ``ar_select_order(y, max_p, ic=criterion, glob=False)`` agrees, except that
    it also considers p = 0.)
    """
    max_p = _check_order(max_p, "max_p")
    if criterion not in ("aic", "bic"):
        raise ValueError(f"criterion must be 'aic' or 'bic', got {criterion!r}")
    y = _as_series(y, max_p, min_length=2 * max_p + 1)
    intercepts, coeffs, sigma2 = _ls_all_orders_kernel(y, max_p)  # one compile for all p
    scores = np.array([
        float(getattr(information_criteria(
            ARFit(intercepts[p - 1], coeffs[p - 1, :p], sigma2[p - 1], int(y.shape[0] - max_p))
        ), criterion))
        for p in range(1, max_p + 1)
    ])
    return int(np.argmin(scores)) + 1, scores


# =========================================================================== n-gram models


class NGramModel(NamedTuple):
    """A character n-gram model: :math:`p(x_t \\mid x_{t-n+1..t-1})` in one dense table.

    Attributes:
      log_probs: (V ** (n - 1), V) log-probabilities; row ``context_index(ctx)``.
      order: n (1 = unigram, 2 = bigram, ...).
      vocab_size: V.
    """

    log_probs: jax.Array
    order: int
    vocab_size: int


def _check_ngram_order(order, vocab_size: int) -> int:
    if isinstance(order, bool) or not isinstance(order, (int, np.integer)) or order < 1:
        raise ValueError(f"order must be an integer >= 1, got {order!r}")
    if int(vocab_size) < 1:
        raise ValueError(f"vocab_size must be >= 1, got {vocab_size!r}")
    if int(vocab_size) ** int(order) > MAX_TABLE_SIZE:
        raise ValueError(
            f"order {order} is too large for a dense table over {vocab_size} symbols "
            f"({vocab_size}**{order} entries > {MAX_TABLE_SIZE}); use a lower order"
        )
    return int(order)


def name_windows(names: Sequence[str], vocab, order: int) -> np.ndarray:
    """Every n-gram of every name, with boundary padding: ``(N, order)`` int32 ids.

    Each name becomes ``"." * (order - 1) + name + "."``, so the first letter is predicted
    from "start" and the model learns when to stop; windows never straddle two names.
    ``vocab`` is a :class:`course_lib.data.CharVocab` that contains :data:`BOUNDARY`.
    """
    order = _check_ngram_order(order, vocab.size)
    if BOUNDARY not in vocab.chars:
        raise ValueError(f"vocab must contain the boundary symbol {BOUNDARY!r}")
    if not len(names):
        raise ValueError("names must not be empty")
    rows = []
    for name in names:
        ids = vocab.encode(BOUNDARY * (order - 1) + name + BOUNDARY)
        rows.append(np.lib.stride_tricks.sliding_window_view(ids, order))
    return np.concatenate(rows).astype(np.int32)


def text_windows(ids, order: int) -> jax.Array:
    """Sliding windows over one long id sequence: (len(ids) - order + 1, order)."""
    ids = jnp.asarray(ids, dtype=jnp.int32)
    if ids.ndim != 1:
        raise ValueError(f"ids must be 1-D, got shape {ids.shape}")
    if isinstance(order, bool) or not isinstance(order, (int, np.integer)) or order < 1:
        raise ValueError(f"order must be an integer >= 1, got {order!r}")
    if ids.shape[0] < order:
        raise ValueError(f"ids has {ids.shape[0]} symbols; order {order} needs at least {order}")
    n = ids.shape[0] - order + 1
    return jnp.stack([ids[i: i + n] for i in range(order)], axis=1)


def context_index(contexts: jax.Array, vocab_size: int) -> jax.Array:
    """Row of a context in an n-gram table: base-V number, oldest symbol most significant.

    Args: contexts (..., n - 1) int ids. Returns (...,) int32 in [0, V ** (n - 1)).
    """
    contexts = jnp.asarray(contexts, jnp.int32)
    width = contexts.shape[-1]
    weights = jnp.asarray(vocab_size ** np.arange(width - 1, -1, -1), jnp.int32)
    return jnp.sum(contexts * weights, axis=-1).astype(jnp.int32)


def _check_windows(windows, vocab_size: int) -> jax.Array:
    w = np.asarray(windows)
    if w.ndim != 2 or w.shape[0] == 0:
        raise ValueError(f"windows must be a non-empty (N, order) array of ids, got shape {w.shape}")
    if not np.issubdtype(w.dtype, np.integer):
        raise ValueError(f"windows must hold integer ids, got dtype {w.dtype}")
    if w.min() < 0 or w.max() >= vocab_size:
        raise ValueError(f"windows holds ids outside [0, {vocab_size}) (vocab_size={vocab_size})")
    return jnp.asarray(w, jnp.int32)


@partial(jax.jit, static_argnames=("vocab_size",))
def _counts_kernel(windows, vocab_size):
    order = windows.shape[1]
    rows = context_index(windows[:, :-1], vocab_size)
    flat = rows * vocab_size + windows[:, -1]
    counts = jnp.zeros(vocab_size ** order, jnp.result_type(float)).at[flat].add(1.0)
    return counts.reshape(vocab_size ** (order - 1), vocab_size)


def ngram_counts(windows, vocab_size: int) -> jax.Array:
    """Count table ``C[ctx, x]`` = number of windows with context ctx and next symbol x.

    Args: windows (N, n) ids in [0, V). Returns (V ** (n - 1), V) float counts (a
    scatter-add, one pass over the data).
    """
    vocab_size = int(vocab_size)
    windows = _check_windows(windows, vocab_size)
    _check_ngram_order(windows.shape[1], vocab_size)
    return _counts_kernel(windows, vocab_size)


def _check_smoothing(k) -> float:
    k = float(k)
    if not np.isfinite(k) or k < 0:
        raise ValueError(f"k (add-k smoothing) must be a finite number >= 0, got {k!r}")
    return k


@jax.jit
def _add_k_log_probs(counts, k):
    v = counts.shape[1]
    totals = counts.sum(axis=1, keepdims=True)
    smoothed = (counts + k) / (totals + k * v)
    # an unseen context with k = 0 has no data at all: fall back to uniform
    smoothed = jnp.where(totals + k * v > 0, smoothed, 1.0 / v)
    return jnp.log(smoothed)


def fit_ngram(windows, vocab_size: int, *, k: float = 1.0) -> NGramModel:
    """Add-k smoothed n-gram: :math:`p(x \\mid h) = \\frac{C(h, x) + k}{C(h) + kV}`.

    ``k = 1`` is Laplace smoothing; ``k = 0`` is the maximum-likelihood estimate (zero
    probability for every unseen n-gram, so infinite perplexity on text containing one).
    """
    k = _check_smoothing(k)
    counts = ngram_counts(windows, vocab_size)
    order = int(np.asarray(windows).shape[1])
    return NGramModel(_add_k_log_probs(counts, jnp.asarray(k, counts.dtype)), order, int(vocab_size))


def fit_interpolated_ngram(windows, vocab_size: int, lambdas, *, k: float = 0.01) -> NGramModel:
    """Linear interpolation of add-k models of orders 1..n (Jelinek-Mercer).

    :math:`p(x \\mid h) = \\sum_{j=1}^{n} \\lambda_j\\, p_j(x \\mid \\text{last } j-1 \\text{ symbols of } h)`,
    with :math:`\\lambda \\ge 0, \\sum_j \\lambda_j = 1`. Each lower order is counted from the
    tails of the same windows; its table row for a full context h is ``h mod V ** (j - 1)``.

    Args:
      windows: (N, n) ids; lambdas: (n,) weights, lambdas[j - 1] for order j.
    """
    windows = _check_windows(windows, int(vocab_size))
    order = int(windows.shape[1])
    lam = np.asarray(lambdas, dtype=float).reshape(-1)
    if lam.shape != (order,) or np.any(lam < 0) or not np.isclose(lam.sum(), 1.0):
        raise ValueError(
            f"lambdas must be {order} non-negative weights summing to 1 (one per order 1..{order}), "
            f"got {lambdas!r}"
        )
    v = int(vocab_size)
    rows = np.arange(v ** (order - 1))
    mixed = 0.0
    for j in range(1, order + 1):
        probs = jnp.exp(fit_ngram(windows[:, order - j:], v, k=k).log_probs)  # (V^(j-1), V)
        mixed = mixed + lam[j - 1] * probs[rows % (v ** (j - 1))]
    return NGramModel(jnp.log(mixed), order, v)


@jax.jit
def _window_log_probs(log_probs, windows):
    v = log_probs.shape[1]
    rows = context_index(windows[:, :-1], v)
    return log_probs[rows, windows[:, -1]]


def log_likelihood(model: NGramModel, windows) -> jax.Array:
    """Chain-rule log-likelihood :math:`\\sum_t \\log p(x_t \\mid x_{t-n+1..t-1})` (scalar, nats)."""
    windows = _check_windows(windows, model.vocab_size)
    if windows.shape[1] != model.order:
        raise ValueError(f"windows have order {windows.shape[1]}, the model has order {model.order}")
    return jnp.sum(_window_log_probs(model.log_probs, windows))


def perplexity(model: NGramModel, windows) -> jax.Array:
    """:math:`\\exp(-\\frac1N \\sum_t \\log p(x_t \\mid \\cdot))`: the effective number of
    equally likely choices per symbol (a uniform model over V symbols scores exactly V)."""
    total = log_likelihood(model, windows)  # validates windows
    return jnp.exp(-total / np.shape(windows)[0])


@partial(jax.jit, static_argnames=("order", "n_samples", "length"))
def _sample_kernel(key, log_probs, start, order, n_samples, length, temperature):
    v = log_probs.shape[1]
    n_rows = v ** (order - 1)
    keys = jax.random.split(key, length)

    def step(ctx, step_key):  # ctx: (n_samples,) context rows
        logits = log_probs[ctx] / temperature
        nxt = jax.random.categorical(step_key, logits, axis=-1).astype(jnp.int32)
        ctx = (ctx * v + nxt) % n_rows if order > 1 else ctx
        return ctx, nxt

    ctx0 = jnp.full((n_samples,), start, jnp.int32)
    _, ids = jax.lax.scan(step, ctx0, keys)
    return ids.T


def sample_ngram(key: jax.Array, model: NGramModel, n_samples: int, length: int, *,
                 temperature: float = 1.0, context=None) -> jax.Array:
    """Sample ``n_samples`` sequences of ``length`` symbols, one symbol per scan step.

    Each step draws :math:`x_t \\sim \\mathrm{softmax}(\\log p(\\cdot \\mid h_t) / T)` with
    ``jax.random.categorical``. T = 1 samples the model; T < 1 sharpens it (T -> 0 is
    greedy), T > 1 flattens it toward uniform.

    Args:
      key: a PRNG key.
      context: the first n - 1 ids (default: all boundary, id 0, the start of a name).

    Returns: (n_samples, length) int32 ids (for names, cut each at its first boundary with
    :func:`decode_names`).
    """
    temperature = _check_temperature(temperature)
    for name, val in (("n_samples", n_samples), ("length", length)):
        if isinstance(val, bool) or not isinstance(val, (int, np.integer)) or val < 1:
            raise ValueError(f"{name} must be an integer >= 1, got {val!r}")
    v, order = model.vocab_size, model.order
    ctx = np.zeros(order - 1, np.int32) if context is None else np.asarray(context, np.int32)
    if ctx.shape != (order - 1,) or (ctx.size and (ctx.min() < 0 or ctx.max() >= v)):
        raise ValueError(f"context must be {order - 1} ids in [0, {v}), got {context!r}")
    start = int(context_index(ctx, v)) if order > 1 else 0
    return _sample_kernel(key, model.log_probs, start, order, int(n_samples), int(length),
                          jnp.asarray(temperature, model.log_probs.dtype))


def decode_names(ids, vocab) -> list[str]:
    """Turn sampled rows of ids into names: each row up to (not including) its first boundary."""
    out = []
    for row in np.asarray(ids):
        text = vocab.decode(row)
        out.append(text.split(BOUNDARY, 1)[0])
    return out


# =========================================================================== neural bigram


@jax.jit
def bigram_loss(logits_table: jax.Array, inputs: jax.Array, targets: jax.Array) -> jax.Array:
    """Mean negative log-likelihood of a "neural" bigram: :math:`p(y \\mid x) = \\mathrm{softmax}(W_x)_y`.

    :math:`L(W) = -\\frac1N \\sum_n \\log \\mathrm{softmax}(W_{x_n})_{y_n}`. Its gradient is
    :math:`\\partial L / \\partial W = (\\mathrm{diag}(C\\mathbf 1) \\mathrm{softmax}(W) - C) / N`
    with C the bigram count table, so it vanishes exactly where
    :math:`\\mathrm{softmax}(W_x) = C_x / C_x\\mathbf 1`: the count-based bigram.

    Args: logits_table (V, V); inputs, targets (N,) ids.
    """
    logits = logits_table[inputs]
    return jnp.mean(optax.softmax_cross_entropy_with_integer_labels(logits, targets))


def bigram_mle_loss(counts) -> jax.Array:
    """The smallest achievable :func:`bigram_loss`: :math:`-\\frac1N\\sum_{x,y} C_{xy}\\log(C_{xy}/C_x)`."""
    counts = jnp.asarray(counts)
    totals = counts.sum(axis=1, keepdims=True)
    safe = jnp.where(counts > 0, counts / jnp.where(totals > 0, totals, 1.0), 1.0)
    return -jnp.sum(counts * jnp.log(safe)) / jnp.sum(counts)


@partial(jax.jit, static_argnames=("vocab_size", "steps"))
def _train_bigram_kernel(key, inputs, targets, vocab_size, steps, learning_rate, init_scale):
    optimizer = optax.adam(learning_rate)
    w = init_scale * jax.random.normal(key, (vocab_size, vocab_size), jnp.result_type(float))
    state = optimizer.init(w)
    loss_and_grad = jax.value_and_grad(bigram_loss)

    def step(carry, _):
        w, state = carry
        loss, grad = loss_and_grad(w, inputs, targets)
        updates, state = optimizer.update(grad, state, w)
        return (optax.apply_updates(w, updates), state), loss

    (w, _), losses = jax.lax.scan(step, (w, state), None, length=steps)
    return w, losses


def train_neural_bigram(key: jax.Array, inputs, targets, vocab_size: int, *, steps: int = 500,
                        learning_rate: float = 0.5, init_scale: float = 0.01):
    """Fit a (V, V) logits table by full-batch Adam on :func:`bigram_loss`.

    The whole loop is one ``lax.scan`` (jit-compiled once). Returns ``(W (V, V), losses
    (steps,))``; ``losses[t]`` is the loss before update t.
    """
    v = int(vocab_size)
    inputs = _check_windows(np.stack([np.asarray(inputs), np.asarray(targets)], axis=1), v)
    steps = _check_order(steps, "steps")
    if not float(learning_rate) > 0:
        raise ValueError(f"learning_rate must be > 0, got {learning_rate!r}")
    return _train_bigram_kernel(key, inputs[:, 0], inputs[:, 1], v, steps,
                                float(learning_rate), float(init_scale))
