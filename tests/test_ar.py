"""Oracle tests for course_lib.ar: statsmodels for AR(p), brute force and closed forms for
n-grams, check_grads for the neural bigram. Float64 (jax.enable_x64) unless a test says so."""
from __future__ import annotations

import itertools
import math
from collections import Counter

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.linalg
import scipy.signal
from hypothesis import given, settings, strategies as st
from jax.test_util import check_grads
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
    """Without x64 the fit runs in float32; centring keeps it within 1e-5 relative."""
    ref = AutoReg(sunspots, lags=9, trend="c").fit()
    with jax.enable_x64(False):
        fit = ar.fit_ar_ls(sunspots, 9)
        assert fit.coeffs.dtype == jnp.float32
        got = params(fit)
    np.testing.assert_allclose(got, ref.params, rtol=1e-5, atol=1e-5 * np.abs(ref.params).max())


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
    np.testing.assert_allclose(np.asarray(ar.simulate_ar(coeffs, c, e, init)), hist[2:], rtol=1e-12)


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
    y = np.asarray(ar.simulate_ar([1.1], 0.0, np.zeros(50), [1.0]))
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


# =========================================================================== n-grams


def brute_counts(text: str, order: int, vocab: str) -> Counter:
    return Counter(text[i: i + order] for i in range(len(text) - order + 1))


@given(text=st.text(alphabet="abcd", min_size=48, max_size=48), order=st.integers(1, 4))
@HYP
def test_ngram_counts_match_brute_force_counting(text, order):
    vocab = data.CharVocab("abcd")
    counts = np.asarray(ar.ngram_counts(ar.text_windows(vocab.encode(text), order), 4))
    brute = brute_counts(text, order, "abcd")
    for gram in map("".join, itertools.product("abcd", repeat=order)):
        row = sum(vocab.chars.index(ch) * 4 ** (order - 2 - i) for i, ch in enumerate(gram[:-1]))
        assert counts[row, vocab.chars.index(gram[-1])] == brute[gram]
    assert counts.sum() == len(text) - order + 1


@given(text=st.text(alphabet="abc", min_size=30, max_size=30), k=st.sampled_from([0.01, 0.5, 1.0, 3.0]))
@HYP
def test_add_k_probabilities_match_the_formula_and_normalise(text, k):
    vocab = data.CharVocab("abc")
    model = ar.fit_ngram(ar.text_windows(vocab.encode(text), 2), 3, k=k)
    probs = np.exp(np.asarray(model.log_probs))
    np.testing.assert_allclose(probs.sum(axis=1), 1.0, rtol=1e-12)
    pairs = brute_counts(text, 2, "abc")
    for a, b in itertools.product("abc", repeat=2):
        total = sum(pairs[a + c] for c in "abc")
        expected = (pairs[a + b] + k) / (total + 3 * k)
        assert probs["abc".index(a), "abc".index(b)] == pytest.approx(expected, rel=1e-12)


def test_log_likelihood_is_the_chain_rule_sum():
    text = "abacabad" * 3 + "dcba"
    vocab = data.CharVocab("abcd")
    windows = ar.text_windows(vocab.encode(text), 3)
    model = ar.fit_ngram(windows, 4, k=0.5)
    lp = np.asarray(model.log_probs)
    by_hand = sum(lp[vocab.chars.index(text[i]) * 4 + vocab.chars.index(text[i + 1]),
                     vocab.chars.index(text[i + 2])] for i in range(len(text) - 2))
    assert float(ar.log_likelihood(model, windows)) == pytest.approx(by_hand, rel=1e-12)
    assert float(ar.perplexity(model, windows)) == pytest.approx(math.exp(-by_hand / (len(text) - 2)))


def test_chain_rule_sums_to_one_over_all_sequences():
    """Brute force: with a fixed start context, sum over all V^L strings of prod p = 1."""
    windows = ar.text_windows(jnp.asarray([0, 1, 2, 1, 0, 0, 2, 2, 1]), 3)
    model = ar.fit_ngram(windows, 3, k=0.3)
    lp = np.asarray(model.log_probs)
    total = 0.0
    for seq in itertools.product(range(3), repeat=5):
        full = (0, 0) + seq
        total += math.exp(sum(lp[full[t] * 3 + full[t + 1], full[t + 2]] for t in range(5)))
    assert total == pytest.approx(1.0, rel=1e-12)


def test_uniform_model_has_perplexity_equal_to_vocab_size():
    v = 7
    uniform = ar.NGramModel(jnp.full((v, v), -np.log(v)), 2, v)
    windows = jax.random.randint(jax.random.key(0), (300, 2), 0, v)
    assert float(ar.perplexity(uniform, windows)) == pytest.approx(v, rel=1e-12)
    # add-k with overwhelming k tends to the uniform model
    heavy = ar.fit_ngram(windows, v, k=1e9)
    assert float(ar.perplexity(heavy, windows)) == pytest.approx(v, rel=1e-6)


def test_deterministic_text_has_perplexity_one_and_mle_unseen_is_infinite():
    vocab = data.CharVocab("abc")
    windows = ar.text_windows(vocab.encode("abc" * 30), 2)
    mle = ar.fit_ngram(windows, 3, k=0.0)
    assert float(ar.perplexity(mle, windows)) == pytest.approx(1.0, abs=1e-12)
    unseen = ar.text_windows(vocab.encode("acb"), 2)
    assert np.isinf(float(ar.perplexity(mle, unseen)))
    assert np.isfinite(float(ar.perplexity(ar.fit_ngram(windows, 3, k=1.0), unseen)))


def test_name_windows_pad_with_the_boundary():
    vocab = data.CharVocab.from_text(["ab", ar.BOUNDARY])
    got = [vocab.decode(w) for w in ar.name_windows(["ab", "b"], vocab, 3)]
    assert got == ["..a", ".ab", "ab.", "..b", ".b."]


def test_interpolated_model_is_the_mixture_of_orders():
    vocab = data.CharVocab("abcd")
    text = "abcabdacbdcadbbacd" * 2
    w3 = ar.text_windows(vocab.encode(text), 3)
    lam = np.array([0.2, 0.3, 0.5])
    mixed = np.exp(np.asarray(ar.fit_interpolated_ngram(w3, 4, lam, k=0.1).log_probs))
    p1 = np.exp(np.asarray(ar.fit_ngram(w3[:, 2:], 4, k=0.1).log_probs))[0]
    p2 = np.exp(np.asarray(ar.fit_ngram(w3[:, 1:], 4, k=0.1).log_probs))
    p3 = np.exp(np.asarray(ar.fit_ngram(w3, 4, k=0.1).log_probs))
    for a, b in itertools.product(range(4), repeat=2):
        expected = lam[0] * p1 + lam[1] * p2[b] + lam[2] * p3[a * 4 + b]
        np.testing.assert_allclose(mixed[a * 4 + b], expected, rtol=1e-12)
    top_only = ar.fit_interpolated_ngram(w3, 4, [0, 0, 1], k=0.1).log_probs
    np.testing.assert_allclose(np.asarray(top_only), np.log(p3), rtol=1e-12)


# =========================================================================== sampling


def test_sampling_follows_the_tempered_distribution():
    """First symbol after the start context: frequencies match softmax(log p / T)."""
    log_p = np.log(np.array([0.5, 0.3, 0.15, 0.05]))
    model = ar.NGramModel(jnp.asarray(np.tile(log_p, (4, 1))), 2, 4)
    for temp in (1.0, 0.5, 2.0):
        ids = np.asarray(ar.sample_ngram(jax.random.key(3), model, 20_000, 1, temperature=temp))
        freq = np.bincount(ids[:, 0], minlength=4) / ids.shape[0]
        target = np.exp(log_p / temp) / np.exp(log_p / temp).sum()
        assert np.all(np.abs(freq - target) < 4 * np.sqrt(target * (1 - target) / ids.shape[0]) + 1e-3)


def test_sampling_is_reproducible_and_tiny_temperature_is_greedy():
    vocab = data.CharVocab("abc")
    model = ar.fit_ngram(ar.text_windows(vocab.encode("abcabcaabbcc" * 5), 3), 3, k=0.5)
    a = ar.sample_ngram(jax.random.key(0), model, 4, 30, context=[0, 1])
    np.testing.assert_array_equal(np.asarray(a), np.asarray(ar.sample_ngram(jax.random.key(0), model, 4, 30, context=[0, 1])))
    greedy = np.asarray(ar.sample_ngram(jax.random.key(1), model, 3, 12, temperature=1e-4, context=[0, 1]))
    lp, ctx = np.asarray(model.log_probs), [0, 1]
    for t in range(12):
        nxt = int(np.argmax(lp[ctx[-2] * 3 + ctx[-1]]))
        assert np.all(greedy[:, t] == nxt)
        ctx.append(nxt)


def test_decode_names_cuts_at_the_boundary():
    vocab = data.CharVocab.from_text(["abc", ar.BOUNDARY])
    ids = np.array([vocab.encode("ab.ca"), vocab.encode("...ab")])
    assert ar.decode_names(ids, vocab) == ["ab", ""]


@pytest.mark.parametrize("call,argument", [
    (lambda m: ar.sample_ngram(jax.random.key(0), m, 2, 5, temperature=0.0), "temperature"),
    (lambda m: ar.sample_ngram(jax.random.key(0), m, 2, 5, temperature=-1.0), "temperature"),
    (lambda m: ar.sample_ngram(jax.random.key(0), m, 0, 5), "n_samples"),
    (lambda m: ar.sample_ngram(jax.random.key(0), m, 2, 5, context=[0, 1, 2]), "context"),
    (lambda m: ar.fit_ngram(np.zeros((3, 2), np.int32), 3, k=-1.0), "k"),
    (lambda m: ar.fit_ngram(np.zeros((3, 30), np.int32), 3), "order"),
    (lambda m: ar.fit_ngram(np.full((3, 2), 5), 3), "windows"),
    (lambda m: ar.name_windows(["ab"], data.CharVocab(".ab"), 0), "order"),
    (lambda m: ar.text_windows([0, 1], 3), "ids"),
    (lambda m: ar.fit_interpolated_ngram(np.zeros((3, 2), np.int32), 3, [0.5, 0.6]), "lambdas"),
    (lambda m: ar.train_neural_bigram(jax.random.key(0), [0, 1], [1, 0], 2, steps=0), "steps"),
])
def test_bad_ngram_input_raises_value_error_naming_the_argument(call, argument):
    model = ar.NGramModel(jnp.zeros((3, 3)) - np.log(3), 2, 3)
    with pytest.raises(ValueError, match=rf"\b{argument}\b"):
        call(model)


# =========================================================================== neural bigram


def test_bigram_loss_gradients_check_and_match_closed_form():
    key_w, key_x, key_y = jax.random.split(jax.random.key(0), 3)
    v = 5
    w = jax.random.normal(key_w, (v, v))
    x = jax.random.randint(key_x, (40,), 0, v)
    y = jax.random.randint(key_y, (40,), 0, v)
    check_grads(lambda w: ar.bigram_loss(w, x, y), (w,), order=2, modes=["rev"])
    counts = np.zeros((v, v))
    np.add.at(counts, (np.asarray(x), np.asarray(y)), 1.0)
    closed = (counts.sum(1, keepdims=True) * np.asarray(jax.nn.softmax(w)) - counts) / 40
    np.testing.assert_allclose(np.asarray(jax.grad(ar.bigram_loss)(w, x, y)), closed, atol=1e-12)


def test_neural_bigram_converges_to_the_count_based_bigram():
    names = data.load_names()[:1500]
    vocab = data.CharVocab.from_text(names + [ar.BOUNDARY])
    windows = ar.name_windows(names, vocab, 2)
    w, losses = ar.train_neural_bigram(jax.random.key(0), windows[:, 0], windows[:, 1],
                                       vocab.size, steps=400, learning_rate=0.5)
    counts = ar.ngram_counts(windows, vocab.size)
    best = float(ar.bigram_mle_loss(counts))
    assert float(losses[0]) > best + 0.5          # it started far away
    assert float(losses[-1]) - best < 1e-4        # ... and reached the closed-form optimum
    assert best <= float(ar.bigram_loss(w, windows[:, 0], windows[:, 1])) + 1e-12
    mle = np.asarray(counts / counts.sum(axis=1, keepdims=True))
    np.testing.assert_allclose(np.asarray(jax.nn.softmax(w)), mle, atol=2e-3)
    # the count model with k = 0 scores the same per-symbol loss
    model = ar.fit_ngram(windows, vocab.size, k=0.0)
    assert float(jnp.log(ar.perplexity(model, windows))) == pytest.approx(best, rel=1e-10)
