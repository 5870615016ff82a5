"""Oracles for course_lib.prob: scipy densities, closed forms against Monte Carlo, sklearn QDA."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings, strategies as st
from scipy import stats

from course_lib import prob


def random_spd(rng, d):
    a = rng.normal(size=(d, d))
    return a @ a.T + d * np.eye(d)


@given(d=st.integers(1, 5), seed=st.integers(0, 10_000))
@settings(max_examples=25, deadline=None)
def test_logpdf_matches_scipy(d, seed):
    rng = np.random.default_rng(seed)
    mean, cov = rng.normal(size=d), random_spd(rng, d)
    x = rng.normal(size=(7, d)) * 3
    ours = prob.gaussian_logpdf(jnp.asarray(x, jnp.float32), jnp.asarray(mean, jnp.float32),
                                jnp.asarray(cov, jnp.float32))
    np.testing.assert_allclose(ours, stats.multivariate_normal(mean, cov).logpdf(x).reshape(7),
                               rtol=1e-4, atol=1e-4)


def test_logpdf_gradient_is_score():
    # d/dx log N(x | μ, Σ) = -Σ^{-1} (x - μ): a closed form for the gradient.
    mean = jnp.array([0.5, -1.0])
    cov = jnp.array([[2.0, 0.3], [0.3, 1.0]])
    x = jnp.array([1.0, 2.0])
    grad = jax.grad(lambda v: prob.gaussian_logpdf(v, mean, cov))(x)
    np.testing.assert_allclose(grad, -jnp.linalg.solve(cov, x - mean), rtol=1e-5)


def test_sampling_moments_and_mle():
    mean = jnp.array([1.0, -2.0, 0.5])
    cov = jnp.asarray(random_spd(np.random.default_rng(1), 3), jnp.float32)
    x = prob.sample_gaussian(jax.random.key(0), mean, cov, 200_000)
    fit = prob.gaussian_mle(x)
    np.testing.assert_allclose(fit.mean, mean, atol=0.03)
    np.testing.assert_allclose(fit.cov, cov, rtol=0.03, atol=0.05)
    np.testing.assert_allclose(fit.cov, np.cov(np.asarray(x).T, bias=True), rtol=1e-3, atol=1e-3)


def test_kl_closed_form_against_monte_carlo_and_zero_for_equal():
    m0, m1 = jnp.array([0.0, 0.0]), jnp.array([1.0, -1.0])
    s0 = jnp.array([[1.0, 0.2], [0.2, 0.5]])
    s1 = jnp.array([[2.0, 0.0], [0.0, 1.0]])
    exact = prob.kl_gaussians(m0, s0, m1, s1)
    mc = prob.kl_monte_carlo(jax.random.key(3), m0, s0, m1, s1, 400_000)
    assert abs(float(exact) - float(mc)) < 0.01
    assert abs(float(prob.kl_gaussians(m0, s0, m0, s0))) < 1e-6
    # 1-D closed form: log(σ1/σ0) + (σ0² + (μ0-μ1)²)/(2σ1²) - 1/2
    one_d = prob.kl_gaussians(jnp.array([0.3]), jnp.array([[0.25]]), jnp.array([-1.0]), jnp.array([[4.0]]))
    expected = np.log(2.0 / 0.5) + (0.25 + 1.3**2) / (2 * 4.0) - 0.5
    np.testing.assert_allclose(one_d, expected, rtol=1e-5)


def test_classifier_matches_sklearn_qda():
    from sklearn.datasets import load_iris
    from sklearn.discriminant_analysis import QuadraticDiscriminantAnalysis

    x, y = load_iris(return_X_y=True)
    model = prob.fit_gaussian_classifier(jnp.asarray(x, jnp.float32), jnp.asarray(y), 3, reg=0.0)
    qda = QuadraticDiscriminantAnalysis(store_covariance=True).fit(x, y)
    post = prob.class_posterior(model, jnp.asarray(x, jnp.float32))
    np.testing.assert_allclose(post.sum(axis=1), 1.0, rtol=1e-5)
    np.testing.assert_array_equal(np.asarray(post.argmax(1)), qda.predict(x))
    # Ours are the maximum-likelihood covariances (1/n), numpy's bias=True.
    for c in range(3):
        np.testing.assert_allclose(model.covs[c], np.cov(x[y == c].T, bias=True), rtol=1e-4, atol=1e-5)


def test_sample_labelled_follows_the_model():
    model = prob.GaussianClassifier(
        jnp.log(jnp.array([0.2, 0.8])), jnp.array([[-3.0, 0.0], [3.0, 1.0]]),
        jnp.stack([jnp.eye(2), 0.5 * jnp.eye(2)]))
    x, y = prob.sample_labelled(jax.random.key(0), model, 200_000)
    assert abs(float(y.mean()) - 0.8) < 0.01
    np.testing.assert_allclose(x[y == 1].mean(0), [3.0, 1.0], atol=0.02)
    np.testing.assert_allclose(jnp.var(x[y == 0], axis=0), [1.0, 1.0], rtol=0.04)


@pytest.mark.parametrize("call, match", [
    (lambda: prob.gaussian_logpdf(jnp.zeros((3, 2)), jnp.zeros(2), jnp.eye(3)), "cov must have shape"),
    (lambda: prob.gaussian_logpdf(jnp.zeros((3, 4)), jnp.zeros(2), jnp.eye(2)), "x must end in D=2"),
    (lambda: prob.gaussian_mle(jnp.zeros(5)), "x must have shape"),
    (lambda: prob.fit_gaussian_classifier(jnp.zeros((4, 2)), jnp.array([0, 0, 1, 1]), 3), "every class"),
    (lambda: prob.fit_gaussian_classifier(jnp.zeros((4, 2)), jnp.array([0, 1]), 2), "y must have shape"),
])
def test_bad_input_is_named(call, match):
    with pytest.raises(ValueError, match=match):
        call()
