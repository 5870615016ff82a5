"""Oracle tests for course_lib.ar (AR(p) time series): statsmodels, closed forms, linear filters.
Float64 (jax.enable_x64) unless a test says so."""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.linalg
import scipy.signal
from hypothesis import given, settings, strategies as st
from statsmodels.regression.linear_model import yule_walker
from statsmodels.tsa.ar_model import AutoReg, ar_select_order
from statsmodels.tsa.stattools import acf as sm_acf, acovf as sm_acovf, pacf as sm_pacf

from course_lib import ar, data

TOL = 1e-8  # float64 agreement with statsmodels
HYP = settings(max_examples=25, deadline=None)


@pytest.fixture(autouse=True)
def x64():
    with jax.enable_x64(True):
        yield


@pytest.fixture(scope="module")
def sunspots():
    return data.load_series("sunspots").values


def simulated(coeffs, n=600, c=0.3, seed=0):
    rng = np.random.default_rng(seed)
    e = rng.normal(size=n + 200)
    return scipy.signal.lfilter([1.0], np.r_[1.0, -np.asarray(coeffs)], c + e)[200:]


def params(fit):
    return np.r_[float(fit.intercept), np.asarray(fit.coeffs)]


# =========================================================================== AR fits


@pytest.mark.parametrize("p", [1, 2, 9])
def test_least_squares_matches_autoreg_on_sunspots(sunspots, p):
    fit = ar.fit_ar_ls(sunspots, p)
    ref = AutoReg(sunspots, lags=p, trend="c").fit()
    np.testing.assert_allclose(params(fit), ref.params, rtol=TOL, atol=TOL)
    np.testing.assert_allclose(float(fit.sigma2), ref.sigma2, rtol=TOL)
    assert fit.nobs == ref.nobs and fit.order == p


def test_least_squares_with_hold_back_matches_autoreg():
    y = simulated([0.6, -0.2, 0.1])
    fit = ar.fit_ar_ls(y, 2, hold_back=7)
    ref = AutoReg(y, lags=2, trend="c", hold_back=7).fit()
    np.testing.assert_allclose(params(fit), ref.params, rtol=TOL, atol=TOL)
    np.testing.assert_allclose(float(fit.sigma2), ref.sigma2, rtol=TOL)


def test_least_squares_float32_within_stated_tolerance(sunspots):
    """Without x64 the result is float32: the float64 fit rounded once (1e-6 relative)."""
    ref = AutoReg(sunspots, lags=9, trend="c").fit()
    with jax.enable_x64(False):
        fit = ar.fit_ar_ls(sunspots, 9)
        assert fit.coeffs.dtype == jnp.float32
        got = params(fit)
    np.testing.assert_allclose(got, ref.params, rtol=1e-6, atol=1e-6 * np.abs(ref.params).max())


def test_least_squares_recovers_true_coefficients_of_long_series():
    true = np.array([0.5, -0.3, 0.2])
    y = simulated(true, n=200_000, c=1.0, seed=3)
    fit = ar.fit_ar_ls(y, 3)
    np.testing.assert_allclose(np.asarray(fit.coeffs), true, atol=0.01)
    np.testing.assert_allclose(float(fit.intercept), 1.0, atol=0.03)
    np.testing.assert_allclose(float(fit.sigma2), 1.0, atol=0.01)


@pytest.mark.parametrize("method", ["adjusted", "mle"])
@pytest.mark.parametrize("p", [1, 4, 10])
def test_yule_walker_matches_statsmodels(sunspots, method, p):
    fit = ar.fit_ar_yw(sunspots, p, method=method)
    rho, sigma = yule_walker(sunspots, order=p, method=method, result_object=False)
    np.testing.assert_allclose(np.asarray(fit.coeffs), rho, rtol=TOL, atol=TOL)
    np.testing.assert_allclose(float(fit.sigma2), sigma ** 2, rtol=TOL)
    np.testing.assert_allclose(float(fit.intercept), sunspots.mean() * (1 - rho.sum()), rtol=TOL)
    np.testing.assert_allclose(float(fit.mean), sunspots.mean(), rtol=TOL)


@given(seed=st.integers(0, 2 ** 31 - 1), p=st.integers(1, 6))
@HYP
def test_levinson_durbin_solves_the_toeplitz_system(seed, p):
    """Property: for any (positive definite) autocovariance sequence, the recursion gives
    the solution of the dense Toeplitz system, and v_p = gamma_0 - phi . gamma_{1:p}."""
    x = np.random.default_rng(seed).normal(size=40)
    gamma = np.array([np.dot(x[: 40 - k] - x.mean(), x[k:] - x.mean()) / 40 for k in range(7)])
    coeffs, kappas, v = ar.levinson_durbin(jnp.asarray(gamma), p)
    expected = np.linalg.solve(scipy.linalg.toeplitz(gamma[:p]), gamma[1: p + 1])
    np.testing.assert_allclose(np.asarray(coeffs), expected, rtol=1e-9, atol=1e-9)
    np.testing.assert_allclose(float(v), gamma[0] - expected @ gamma[1: p + 1], rtol=1e-9)
    assert float(kappas[-1]) == pytest.approx(float(coeffs[-1]), abs=1e-12)
    assert np.all(np.abs(np.asarray(kappas)) < 1)  # biased acov is PD: |pacf| < 1


# =========================================================================== ACF / PACF


def test_acf_and_autocovariance_match_statsmodels(sunspots):
    np.testing.assert_allclose(np.asarray(ar.acf(sunspots, 20)), sm_acf(sunspots, nlags=20),
                               rtol=TOL, atol=TOL)
    for adjusted in (False, True):
        for nlags in (10, 60):  # direct sums and the FFT path
            got = ar.autocovariance(sunspots, nlags, adjusted=adjusted)
            ref = sm_acovf(sunspots, adjusted=adjusted, nlag=nlags)
            np.testing.assert_allclose(np.asarray(got), ref, rtol=TOL, atol=TOL)


@pytest.mark.parametrize("method,sm_method", [("adjusted", "ywadjusted"), ("mle", "ywmle")])
def test_pacf_matches_statsmodels(sunspots, method, sm_method):
    got = ar.pacf(sunspots, 15, method=method)
    ref = sm_pacf(sunspots, nlags=15, method=sm_method)
    np.testing.assert_allclose(np.asarray(got), ref, rtol=TOL, atol=TOL)


def test_pacf_of_ar2_cuts_off_after_lag_2():
    y = simulated([0.6, -0.3], n=50_000, seed=5)
    pacf = np.asarray(ar.pacf(y, 8))
    assert abs(pacf[2] - (-0.3)) < 0.02
    assert np.all(np.abs(pacf[3:]) < 4 / np.sqrt(len(y)))


# =========================================================================== stationarity


@pytest.mark.parametrize("p", [1, 3, 9])
def test_characteristic_roots_match_autoreg(sunspots, p):
    ref = AutoReg(sunspots, lags=p, trend="c").fit()
    got = ar.characteristic_roots(ar.fit_ar_ls(sunspots, p).coeffs)
    np.testing.assert_allclose(np.sort_complex(got), np.sort_complex(ref.roots), rtol=1e-8)
    assert ar.is_stationary(ar.fit_ar_ls(sunspots, p).coeffs)


@given(phi1=st.floats(-2.5, 2.5), phi2=st.floats(-1.5, 1.5))
@HYP
def test_ar2_stationarity_is_the_triangle(phi1, phi2):
    """Closed form: AR(2) is stationary iff phi1 + phi2 < 1, phi2 - phi1 < 1, |phi2| < 1."""
    margin = min(abs(1 - phi1 - phi2), abs(1 - phi2 + phi1), abs(1 - abs(phi2)))
    if margin < 1e-6:  # on the boundary numerical roots can go either way
        return
    triangle = phi1 + phi2 < 1 and phi2 - phi1 < 1 and abs(phi2) < 1
    assert ar.is_stationary([phi1, phi2]) == triangle


def test_stationarity_not_a_matter_of_autocorrelation_size():
    """Erratum 8: a weakly autocorrelated AR(1) (rho_1 = 0.2 < 0.5) is a fine AR model;
    phi = 1.02 (rho_1 near 1) is not stationary."""
    assert ar.is_stationary([0.2]) and not ar.is_stationary([1.02]) and not ar.is_stationary([1.0])
    y = simulated([0.2], n=20_000, seed=2)
    assert abs(float(ar.acf(y, 1)[1]) - 0.2) < 0.03
    assert abs(float(ar.fit_ar_ls(y, 1).coeffs[0]) - 0.2) < 0.03


# =========================================================================== forecasts


@pytest.mark.parametrize("p,alpha", [(2, 0.05), (9, 0.2)])
def test_forecast_matches_autoreg_prediction(sunspots, p, alpha):
    fit = ar.fit_ar_ls(sunspots, p)
    fc = ar.forecast(fit, sunspots, 12, alpha=alpha)
    ref = AutoReg(sunspots, lags=p, trend="c").fit()
    frame = ref.get_prediction(start=len(sunspots), end=len(sunspots) + 11).summary_frame(alpha=alpha)
    for ours, col in [(fc.mean, "mean"), (fc.se, "mean_se"), (fc.lower, "mean_ci_lower"),
                      (fc.upper, "mean_ci_upper")]:
        np.testing.assert_allclose(np.asarray(ours), frame[col].to_numpy(), rtol=TOL, atol=1e-7)


def test_forecast_of_ar1_closed_form():
    """AR(1): mean mu + phi^h (y_T - mu), variance sigma^2 (1 - phi^2h) / (1 - phi^2)."""
    fit = ar.ARFit(jnp.asarray(2.0), jnp.asarray([0.8]), jnp.asarray(1.5), 100)
    fc = ar.forecast(fit, np.array([1.0, 7.0]), 6)
    h = np.arange(1, 7)
    mu = 2.0 / 0.2
    np.testing.assert_allclose(np.asarray(fc.mean), mu + 0.8 ** h * (7.0 - mu), rtol=1e-12)
    np.testing.assert_allclose(np.asarray(fc.se) ** 2, 1.5 * (1 - 0.64 ** h) / 0.36, rtol=1e-12)


# =========================================================================== simulation


def test_simulate_matches_linear_filter():
    rng = np.random.default_rng(1)
    coeffs, c, e = np.array([0.5, -0.2, 0.1]), 0.7, rng.normal(size=500)
    got = ar.simulate_ar(coeffs, c, e)
    ref = scipy.signal.lfilter([1.0], np.r_[1.0, -coeffs], c + e)
    np.testing.assert_allclose(np.asarray(got), ref, rtol=1e-12, atol=1e-12)


def test_simulate_with_initial_values_matches_python_loop():
    coeffs, c, init = [0.9, -0.4], -1.0, [3.0, 5.0]  # init oldest first
    e = np.random.default_rng(2).normal(size=50)
    hist = list(init)
    for eps in e:
        hist.append(c + coeffs[0] * hist[-1] + coeffs[1] * hist[-2] + eps)
    np.testing.assert_allclose(np.asarray(ar.simulate_ar(coeffs, c, e, init=init)), hist[2:], rtol=1e-12)


def test_sample_ar_has_the_stationary_variance_and_is_reproducible():
    phi, sigma = 0.7, 2.0
    key = jax.random.key(0)
    y = np.asarray(ar.sample_ar(key, [phi], 0.0, sigma, 100_000))
    var = sigma ** 2 / (1 - phi ** 2)
    assert abs(y.var() / var - 1) < 0.05
    assert abs(y.mean()) < 5 * np.sqrt(var * (1 + phi) / (1 - phi) / len(y))
    np.testing.assert_array_equal(y, np.asarray(ar.sample_ar(key, [phi], 0.0, sigma, 100_000)))
    assert not np.allclose(y[:10], np.asarray(ar.sample_ar(jax.random.key(1), [phi], 0.0, sigma, 10)))


def test_explosive_ar1_grows_geometrically():
    y = np.asarray(ar.simulate_ar([1.1], 0.0, np.zeros(50), init=[1.0]))
    np.testing.assert_allclose(y, 1.1 ** np.arange(1, 51), rtol=1e-12)


# =========================================================================== order selection


@pytest.mark.parametrize("criterion", ["aic", "bic"])
def test_select_order_matches_ar_select_order(sunspots, criterion):
    best, scores = ar.select_order(sunspots, 12, criterion=criterion)
    ref = ar_select_order(sunspots, 12, ic=criterion, trend="c", glob=False)
    table = getattr(ref, criterion)
    # statsmodels' selection table counts p + 1 parameters (not sigma2): a constant offset
    # of one parameter's penalty, which leaves the ranking unchanged.
    offset = 2.0 if criterion == "aic" else np.log(len(sunspots) - 12)
    for p in range(1, 13):
        np.testing.assert_allclose(scores[p - 1] - offset, table[tuple(range(1, p + 1))], rtol=TOL)
    assert best == len(ref.ar_lags)


def test_information_criteria_match_autoreg(sunspots):
    ref = AutoReg(sunspots, lags=4, trend="c").fit()
    ic = ar.information_criteria(ar.fit_ar_ls(sunspots, 4))
    np.testing.assert_allclose([float(ic.loglik), float(ic.aic), float(ic.bic)],
                               [ref.llf, ref.aic, ref.bic], rtol=TOL)


# =========================================================================== bad input


@pytest.mark.parametrize("call,argument", [
    (lambda y: ar.fit_ar_ls(y, 0), "p"),
    (lambda y: ar.fit_ar_ls(y, -2), "p"),
    (lambda y: ar.fit_ar_ls(y, 2.5), "p"),
    (lambda y: ar.fit_ar_yw(y, 0), "p"),
    (lambda y: ar.fit_ar_yw(y[:3], 3), "y"),      # shorter than p + 1
    (lambda y: ar.fit_ar_ls(y[:5], 3), "y"),      # too few regression rows
    (lambda y: ar.fit_ar_ls(np.r_[y[:20], np.nan, y[20:]], 2), "y"),
    (lambda y: ar.fit_ar_yw(np.r_[np.inf, y], 2), "y"),
    (lambda y: ar.fit_ar_ls(y.reshape(-1, 1), 2), "y"),
    (lambda y: ar.fit_ar_ls(y, 3, hold_back=1), "hold_back"),
    (lambda y: ar.fit_ar_yw(y, 2, method="burg"), "method"),
    (lambda y: ar.pacf(y, 0), "nlags"),
    (lambda y: ar.forecast(ar.fit_ar_ls(y, 2), y, 0), "steps"),
    (lambda y: ar.forecast(ar.fit_ar_ls(y, 2), y, 3, alpha=1.5), "alpha"),
    (lambda y: ar.select_order(y, 4, criterion="hqic"), "criterion"),
    (lambda y: ar.simulate_ar([0.5, 0.1], 0.0, np.zeros(5), init=[1.0]), "init"),
    (lambda y: ar.characteristic_roots([np.nan]), "coeffs"),
])
def test_bad_time_series_input_raises_value_error_naming_the_argument(sunspots, call, argument):
    with pytest.raises(ValueError, match=rf"\b{argument}\b"):
        call(sunspots)


@pytest.mark.parametrize("call,argument", [
    (lambda y: ar.fit_ar_ls(y, True), "p"),                       # a bool is not an order
    (lambda y: ar.fit_ar_ls(y.astype(str), 2), "y"),               # strings name the argument
    (lambda y: ar.fit_ar_ls(y, 2, hold_back=2.5), "hold_back"),
    (lambda y: ar.acf(y, -1), "nlags"),
    (lambda y: ar.acf(y, 1.5), "nlags"),
    (lambda y: ar.autocovariance(y, True), "nlags"),
    (lambda y: ar.autocovariance(y[:5], 5), "y"),                  # lag 5 needs 6 values
    (lambda y: ar.pacf(y, 3, method="burg"), "method"),
    (lambda y: ar.forecast(ar.fit_ar_ls(y, 2), y, 3, alpha=0.0), "alpha"),
    (lambda y: ar.forecast(ar.fit_ar_ls(y, 2), y, 2.7), "steps"),
    (lambda y: ar.forecast(ar.fit_ar_ls(y, 2), y[:1], 3), "y"),    # fewer than p values
    (lambda y: ar.forecast(ar.fit_ar_ls(y, 2), np.r_[y, np.nan], 3), "y"),
    (lambda y: ar.forecast((0.0, [0.5], 1.0, 10), y, 3), "fit"),   # not an ARFit
    (lambda y: ar.forecast(ar.ARFit(0.0, jnp.asarray([0.5]), -1.0, 10), y, 3), "fit.sigma2"),
    (lambda y: ar.forecast(ar.ARFit(0.0, jnp.asarray([np.nan]), 1.0, 10), y, 3), "fit.coeffs"),
    (lambda y: ar.information_criteria(ar.ARFit(0.0, jnp.asarray([0.5]), 0.0, 10)), "fit.sigma2"),
    (lambda y: ar.select_order(y, 0), "max_p"),
    (lambda y: ar.select_order(y[:10], 5), "y"),
    (lambda y: ar.simulate_ar([np.nan], 0.0, np.zeros(5)), "coeffs"),
    (lambda y: ar.simulate_ar([0.5], 0.0, np.r_[0.0, np.inf]), "shocks"),
    (lambda y: ar.simulate_ar([0.5], "c", np.zeros(5)), "intercept"),
    (lambda y: ar.simulate_ar(np.zeros((2, 2)), 0.0, np.zeros(5)), "coeffs"),
    (lambda y: ar.sample_ar(jax.random.key(0), [0.5], 0.0, -1.0, 10), "sigma"),
    (lambda y: ar.sample_ar(jax.random.key(0), [0.5], 0.0, 1.0, 2.7), "n"),
    (lambda y: ar.sample_ar(jax.random.key(0), [0.5], 0.0, 1.0, 10, burn_in=-1), "burn_in"),
    (lambda y: ar.sample_ar(0, [0.5], 0.0, 1.0, 10), "key"),
    (lambda y: ar.characteristic_roots([]), "coeffs"),
    (lambda y: ar.is_stationary(["a"]), "coeffs"),
])
def test_more_bad_time_series_input_names_the_argument(sunspots, call, argument):
    with pytest.raises(ValueError, match=rf"\b{argument}\b"):
        call(sunspots)


# =========================================================================== issue 9: bad input


@pytest.mark.parametrize("length", [0, 1, 2, 3])
def test_levinson_durbin_refuses_too_few_autocovariances(length):
    """Issue 9: gamma_0..gamma_{p-1} (p values for order p) used to be read past the end,
    where JAX clamps the index and silently reuses the last value."""
    gamma = jnp.asarray([2.0, 1.0, 0.5, 0.2][:length])
    with pytest.raises(ValueError, match=r"\bacov\b.*at least p \+ 1 = 4"):
        ar.levinson_durbin(gamma, 3)


def test_levinson_durbin_refuses_a_non_positive_definite_sequence():
    with pytest.raises(ValueError, match=r"acov\[0\]"):
        ar.levinson_durbin(jnp.asarray([0.0, 0.0, 0.0]), 2)
    with pytest.raises(ValueError, match="positive-definite"):   # |rho_1| > 1
        ar.levinson_durbin(jnp.asarray([1.0, 1.5, 0.2]), 2)
    with pytest.raises(ValueError, match=r"\bp\b"):
        ar.levinson_durbin(jnp.asarray([1.0, 0.5]), 0)
    with pytest.raises(ValueError, match=r"\bacov\b"):
        ar.levinson_durbin(jnp.asarray([1.0, np.nan, 0.1]), 2)


def test_levinson_durbin_still_traces_under_jit():
    gamma = jnp.asarray([2.0, 1.0, 0.3, 0.1])
    eager = ar.levinson_durbin(gamma, 3)
    jitted = jax.jit(ar.levinson_durbin, static_argnums=1)(gamma, 3)
    for a, b in zip(eager, jitted):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-12)


@pytest.mark.parametrize("hold_back", [0, 1, 2])
def test_lag_matrix_refuses_hold_back_below_the_order(sunspots, hold_back):
    """Issue 9: hold_back < p sliced from a negative index (rows from the END of the series)."""
    with pytest.raises(ValueError, match=r"hold_back must be >= p = 3"):
        ar.lag_matrix(sunspots, 3, hold_back=hold_back)


def test_lag_matrix_rows_are_the_lags_and_checks_its_input(sunspots):
    x, target = ar.lag_matrix(sunspots, 3, hold_back=5)
    t = np.arange(5, len(sunspots))
    np.testing.assert_array_equal(np.asarray(target), sunspots[5:])
    for i in range(3):
        np.testing.assert_array_equal(np.asarray(x[:, i]), sunspots[t - 1 - i])
    x, target = ar.lag_matrix(sunspots, 2)                    # default hold_back = p
    assert x.shape == (len(sunspots) - 2, 2) and float(target[0]) == sunspots[2]
    with pytest.raises(ValueError, match=r"\by\b"):
        ar.lag_matrix(sunspots[:4], 3, hold_back=4)           # no target left
    with pytest.raises(ValueError, match=r"\bp\b"):
        ar.lag_matrix(sunspots, 0)


@pytest.mark.parametrize("call", [
    lambda y: ar.fit_ar_ls(y, 2),
    lambda y: ar.fit_ar_yw(y, 2),
    lambda y: ar.acf(y, 3),
    lambda y: ar.pacf(y, 3),
    lambda y: ar.select_order(y, 3),
], ids=["fit_ar_ls", "fit_ar_yw", "acf", "pacf", "select_order"])
def test_constant_series_is_refused_instead_of_nan(call):
    """Issue 9: fit_ar_ls and acf on a constant series returned NaN without a word."""
    with pytest.raises(ValueError, match=r"\by is constant \(zero variance\)"):
        call(np.full(50, 3.25))


def test_autocovariance_of_a_constant_series_is_zero_not_an_error():
    np.testing.assert_array_equal(np.asarray(ar.autocovariance(np.full(20, 2.0), 3)), 0.0)


def test_exactly_collinear_lags_are_refused():
    """A series that repeats with period 2 makes lag 2 equal to the constant minus lag 1...:
    the least-squares solution is not unique (statsmodels silently returns the min-norm one)."""
    y = np.tile([1.0, 3.0], 30)
    with pytest.raises(ValueError, match="collinear"):
        ar.fit_ar_ls(y, 2)


@pytest.mark.parametrize("nlags", [45, 50, 98, 99])
def test_pacf_refuses_lags_beyond_half_the_series(nlags):
    """Issue 9: at nlags near T the adjusted PACF returned values above 100."""
    y = simulated([0.5], n=100, seed=4)
    with pytest.raises(ValueError, match=r"nlags must be < T // 2 = 50"):
        ar.pacf(y, max(nlags, 50))
    pac = np.asarray(ar.pacf(y, 49))                           # the largest allowed
    np.testing.assert_allclose(pac, sm_pacf(y, nlags=49, method="ywadjusted"), rtol=1e-8, atol=1e-8)


def test_sample_ar_accepts_old_style_uint32_keys():
    old = jax.random.PRNGKey(0)
    assert ar.sample_ar(old, [0.5], 0.0, 1.0, 5).shape == (5,)


# =========================================================================== issue 9: numerics


def _near_unit_root_series(roots, n, seed):
    phi = -np.real(np.poly(1 / np.asarray(roots)))[1:]      # 1 - phi_1 z - ... has these roots
    e = np.random.default_rng(seed).normal(size=n + 20_000)
    return phi, scipy.signal.lfilter([1.0], np.r_[1.0, -phi], 1.0 + e)[20_000:]


NEAR_UNIT = {
    # one real root at 1.001 among nine others (std of y ~ 70)
    "root 1.001": [1.001, 1.5, -1.6, 2.0, 1.3 * np.exp(1j), 1.3 * np.exp(-1j),
                   1.2 * np.exp(2j), 1.2 * np.exp(-2j), 1.8, -2.5],
    # two real roots near 1 (std of y ~ 5e4): float32 normal equations gave NaN
    "roots 1.0005, 1.002": [1.0005, 1.002, 1.3 * np.exp(1j), 1.3 * np.exp(-1j),
                            1.5, -1.5, 2, -2, 3, -3],
}


@pytest.mark.parametrize("case", NEAR_UNIT, ids=NEAR_UNIT.keys())
def test_least_squares_is_stable_near_a_unit_root_in_float32_and_float64(case):
    """Issue 9: the float32 normal equations lost 3 digits (root 1.001: |dphi| 9e-4) or
    returned NaN (two roots near 1) at T = 2e5, p = 10. The QR solve in float64 agrees with
    statsmodels (pinv) to 1e-8 in float64 and to float32 rounding without x64."""
    phi, y = _near_unit_root_series(NEAR_UNIT[case], 200_000, seed=0)
    p = len(phi)
    ref = AutoReg(y, lags=p, trend="c").fit()
    fit = ar.fit_ar_ls(y, p)
    # The intercept c = mean (1 - sum phi) is itself ill-conditioned near a unit root (1 - sum
    # phi ~ 1e-5 here): both float64 solvers agree on it to 1e-7 relative, not better.
    np.testing.assert_allclose(np.asarray(fit.coeffs), ref.params[1:], rtol=0, atol=1e-8)
    np.testing.assert_allclose(float(fit.intercept), ref.params[0], rtol=1e-7)
    np.testing.assert_allclose(float(fit.sigma2), ref.sigma2, rtol=1e-6)
    # Which solver is closer to the least-squares optimum? Residual sums in extended precision:
    # ours is never larger than statsmodels' (on "roots 1.0005, 1.002" it is smaller by 8e-8
    # relative), and our sigma2 is the RSS of our own coefficients.
    yl = y.astype(np.longdouble)
    design = np.column_stack([np.ones(len(y) - p)] + [yl[p - i: len(y) - i] for i in range(1, p + 1)])

    def rss(beta):
        r = yl[p:] - design @ np.asarray(beta, np.longdouble)
        return float(np.sum(r * r))

    assert rss(params(fit)) <= rss(ref.params) * (1 + 1e-13)
    np.testing.assert_allclose(float(fit.sigma2) * fit.nobs, rss(params(fit)), rtol=1e-11)
    with jax.enable_x64(False):
        fit32 = ar.fit_ar_ls(y, p)
        assert fit32.coeffs.dtype == jnp.float32
        got32 = params(fit32)
        sigma32 = float(fit32.sigma2)
    np.testing.assert_allclose(got32[1:], ref.params[1:], rtol=0, atol=2e-7 * np.abs(ref.params).max())
    np.testing.assert_allclose(got32[0], ref.params[0], rtol=2e-7)
    assert abs(sigma32 / float(fit.sigma2) - 1) < 1e-7          # the float64 value, rounded
    ic = ar.information_criteria(fit)
    np.testing.assert_allclose([ic.loglik, ic.aic, ic.bic], [ref.llf, ref.aic, ref.bic], rtol=1e-7)


def test_select_order_near_a_unit_root_matches_statsmodels_in_float32():
    """Issue 9: the criteria come from float64 residual sums whatever the JAX dtype."""
    _, y = _near_unit_root_series(NEAR_UNIT["roots 1.0005, 1.002"], 50_000, seed=1)
    ref = ar_select_order(y, 12, ic="bic", trend="c", glob=False)
    with jax.enable_x64(False):
        best, scores = ar.select_order(y, 12)
    table = np.array([ref.bic[tuple(range(1, p + 1))] for p in range(1, 13)])
    # float32 normal equations gave NaN scores and picked p = 4 here; ours agree with
    # statsmodels to 1e-7 (and are lower: smaller residual sums, as in the test above).
    np.testing.assert_allclose(scores - np.log(len(y) - 12), table, rtol=2e-7)
    assert best == len(ref.ar_lags) == 8


def test_information_criteria_sum_is_float64_even_without_x64(sunspots):
    ref = AutoReg(sunspots, lags=3, trend="c").fit()
    with jax.enable_x64(False):
        ic = ar.information_criteria(ar.fit_ar_ls(sunspots, 3))
    assert isinstance(ic.loglik, float)
    np.testing.assert_allclose(ic.loglik, ref.llf, rtol=1e-6)   # sigma2 stored in float32


def test_levinson_durbin_works_inside_jit_on_a_closed_over_constant():
    """Under jit a captured constant is concrete, but operations on it are staged: the value
    checks must not turn a tracer into a bool."""
    gamma = jnp.asarray([2.0, 1.0, 0.3, 0.1])
    coeffs = jax.jit(lambda: ar.levinson_durbin(gamma, 3)[0])()
    np.testing.assert_allclose(np.asarray(coeffs), np.asarray(ar.levinson_durbin(gamma, 3)[0]), rtol=1e-12)
