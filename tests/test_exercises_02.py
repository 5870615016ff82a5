"""Notebook 02's exercise checkers pass the right answers and reject the obvious wrong ones.

The checkers come from the notebook itself (``tests/exercises.py`` loads its imports and
``check_*`` functions without running it). The right answers here are computed another
way than the notebook's solutions: SciPy densities and scikit-learn fits in float64.
"""
from __future__ import annotations

import warnings

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy.stats import multivariate_normal
from sklearn.exceptions import ConvergenceWarning
from sklearn.mixture import GaussianMixture

from course_lib import gmm
from exercises import checkers

ck = checkers("02")

# The notebook's running example (its setup cell) and the data every section samples from it.
TRUE = gmm.GMMParams(
    weights=jnp.array([0.5, 0.3, 0.2]),
    means=jnp.array([[0.0, 0.0], [4.0, 3.0], [-3.0, 4.0]]),
    covariances=jnp.array([[[2.0, 1.2], [1.2, 1.5]], [[0.6, -0.3], [-0.3, 0.8]], [[1.0, 0.0], [0.0, 0.3]]]),
)
X_TRAIN, _ = gmm.sample(jax.random.key(1), TRUE, 600)
X_TEST, _ = gmm.sample(jax.random.key(2), TRUE, 600)


# --------------------------------------------------------------------------- exercise 1: BIC by hand


def scipy_loglik(x, params):
    x = np.asarray(x, np.float64)
    dens = sum(float(w) * multivariate_normal(np.asarray(m, np.float64), np.asarray(c, np.float64)).pdf(x)
               for w, m, c in zip(*params))
    return float(np.sum(np.log(dens)))


def bic_right(x, params):
    k, d = np.shape(params.means)
    n = np.shape(x)[0]
    parts = {"weights": k - 1, "means": k * d, "covariances": k * d * (d + 1) // 2}
    loglik = scipy_loglik(x, params)
    return dict(parts, loglik=loglik, bic=-2 * loglik + sum(parts.values()) * np.log(n))


def with_change(**change):
    """bic_right with some pieces computed wrongly; ``change`` maps a key to f(x, params, right)."""
    def answer(x, params):
        right = bic_right(x, params)
        return {**right, **{key: f(x, params, right) for key, f in change.items()}}
    return answer


def penalty(right):
    return right["weights"] + right["means"] + right["covariances"]


TYPED_IN = bic_right(X_TRAIN, TRUE)

BIC_WRONG = {
    "trivial zeros": lambda x, p: dict(weights=0, means=0, covariances=0, loglik=0.0, bic=0.0),
    "typed-in numbers of the notebook's data": lambda x, p: dict(TYPED_IN),
    "K weights, not K - 1": with_change(
        weights=lambda x, p, r: r["weights"] + 1,
        bic=lambda x, p, r: -2 * r["loglik"] + (penalty(r) + 1) * np.log(len(x))),
    "D*D covariance entries": with_change(
        covariances=lambda x, p, r: np.shape(p.means)[0] * np.shape(p.means)[1] ** 2),
    "D(D+1)/2 entries once, not per component": with_change(
        covariances=lambda x, p, r: r["covariances"] // np.shape(p.means)[0]),
    "mean log-likelihood instead of the sum": with_change(
        loglik=lambda x, p, r: r["loglik"] / len(x),
        bic=lambda x, p, r: -2 * r["loglik"] / len(x) + penalty(r) * np.log(len(x))),
    "AIC's penalty 2p": with_change(bic=lambda x, p, r: -2 * r["loglik"] + 2 * penalty(r)),
    "log10 N": with_change(bic=lambda x, p, r: -2 * r["loglik"] + penalty(r) * np.log10(len(x))),
    "sign of the log-likelihood": with_change(bic=lambda x, p, r: 2 * r["loglik"] + penalty(r) * np.log(len(x))),
    "log K instead of log N": with_change(
        bic=lambda x, p, r: -2 * r["loglik"] + penalty(r) * np.log(np.shape(p.means)[0])),
    "library BIC, parameter counts left out": lambda x, p: {"bic": float(gmm.bic(p, x))},
    "library AIC with the right pieces": with_change(bic=lambda x, p, r: float(gmm.aic(p, x))),
}


def test_bic_checker_accepts_the_right_answer():
    ck.check_bic_by_hand(bic_right, X_TRAIN, TRUE)


@pytest.mark.parametrize("name", list(BIC_WRONG))
def test_bic_checker_rejects(name):
    with pytest.raises(AssertionError):
        ck.check_bic_by_hand(BIC_WRONG[name], X_TRAIN, TRUE)


# --------------------------------------------------------------------------- exercise 2: diagonal versus full


def sk_fit(x, covariance_type, k=3, **options):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        settings = dict(tol=1e-8, max_iter=1000, n_init=3, random_state=0) | options
        return GaussianMixture(k, covariance_type=covariance_type, **settings).fit(np.asarray(x, np.float64))


def params_of(model):
    return gmm.GMMParams(model.weights_, model.means_, model.covariances_)


@pytest.fixture(scope="module")
def fits():
    xtr, xte = np.asarray(X_TRAIN, np.float64), np.asarray(X_TEST, np.float64)
    diag, full = sk_fit(xtr, "diag"), sk_fit(xtr, "full")
    return dict(diag=diag, full=full, xtr=xtr, xte=xte,
                ll_diag=diag.score(xte), ll_full=full.score(xte))


def test_diag_checker_accepts_the_right_answer(fits):
    ck.check_diag_vs_full(params_of(fits["diag"]), fits["ll_diag"], fits["ll_full"], params_of(fits["full"]),
                          X_TRAIN, X_TEST)


def test_diag_checker_accepts_diagonal_matrices(fits):
    p = params_of(fits["diag"])
    as_matrices = p._replace(covariances=np.stack([np.diag(v) for v in p.covariances]))
    ck.check_diag_vs_full(as_matrices, fits["ll_diag"], fits["ll_full"], params_of(fits["full"]), X_TRAIN, X_TEST)


def diag_wrong(fits, name):
    """(diag_params, ll_diag, ll_full) for each obvious wrong answer."""
    diag, full, xtr, xte = params_of(fits["diag"]), params_of(fits["full"]), fits["xtr"], fits["xte"]
    ll_diag, ll_full = fits["ll_diag"], fits["ll_full"]
    if name == "trivial zeros":
        return diag, 0.0, 0.0
    if name == "typed-in numbers":
        return diag, round(ll_diag, 2), round(ll_full, 2)
    if name == "swapped log-likelihoods":
        return diag, ll_full, ll_diag
    if name == "training instead of held-out scores":
        return diag, fits["diag"].score(xtr), fits["full"].score(xtr)
    if name == "the full fit passed as the diagonal one":
        return full, ll_full, ll_full
    if name == "no EM: the k-means++ start":
        start = gmm.init_params(jax.random.key(4), X_TRAIN, 3, covariance_type="diag")
        return start, float(gmm.log_likelihood(start, X_TEST)), ll_full
    if name == "one EM step from scikit-learn's k-means start":
        start = sk_fit(xtr, "diag", max_iter=1, n_init=1)
        return params_of(start), start.score(xte), ll_full
    if name == "fitted on the test set":
        on_test = sk_fit(xte, "diag")
        return params_of(on_test), on_test.score(xte), ll_full
    if name == "two components":
        two = sk_fit(xtr, "diag", k=2)
        return params_of(two), two.score(xte), ll_full
    raise KeyError(name)


DIAG_WRONG = ["trivial zeros", "typed-in numbers", "swapped log-likelihoods", "training instead of held-out scores",
              "the full fit passed as the diagonal one", "no EM: the k-means++ start",
              "one EM step from scikit-learn's k-means start", "fitted on the test set",
              "two components"]


@pytest.mark.parametrize("name", DIAG_WRONG)
def test_diag_checker_rejects(fits, name):
    diag_params, ll_diag, ll_full = diag_wrong(fits, name)
    with pytest.raises(AssertionError):
        ck.check_diag_vs_full(diag_params, ll_diag, ll_full, params_of(fits["full"]), X_TRAIN, X_TEST)
