"""Probability kernels for notebook 01: Gaussians, maximum likelihood, KL, a generative classifier.

Shapes: ``N`` points, ``D`` dimensions, ``C`` classes. Every function is pure, works under
``jit``/``vmap``/``grad``, and takes an explicit PRNG key where it samples.
"""
from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
from jax.scipy.special import logsumexp

LOG_2PI = jnp.log(2.0 * jnp.pi)


def _check_gaussian(mean, cov) -> None:
    if mean.ndim != 1:
        raise ValueError(f"mean must have shape (D,), got {mean.shape}")
    d = mean.shape[0]
    if cov.shape != (d, d):
        raise ValueError(f"cov must have shape ({d}, {d}) to match mean, got {cov.shape}")


def gaussian_logpdf(x: jax.Array, mean: jax.Array, cov: jax.Array) -> jax.Array:
    """log N(x | mean, cov) for x (..., D), via the Cholesky factor L (cov = L L^T).

    log N = -1/2 [ D log 2π + log|Σ| + (x-μ)^T Σ^{-1} (x-μ) ],  with
    log|Σ| = 2 Σ_i log L_ii and (x-μ)^T Σ^{-1} (x-μ) = |L^{-1}(x-μ)|².
    Returns shape (...,).
    """
    mean, cov = jnp.asarray(mean), jnp.asarray(cov)
    _check_gaussian(mean, cov)
    x = jnp.asarray(x)
    if x.shape[-1] != mean.shape[0]:
        raise ValueError(f"x must end in D={mean.shape[0]} (the mean's size), got shape {x.shape}")
    chol = jnp.linalg.cholesky(cov)
    diff = (x - mean).reshape(-1, mean.shape[0])
    z = jax.scipy.linalg.solve_triangular(chol, diff.T, lower=True)  # (D, M)
    maha = jnp.sum(z * z, axis=0)
    log_det = 2.0 * jnp.sum(jnp.log(jnp.diag(chol)))
    out = -0.5 * (mean.shape[0] * LOG_2PI + log_det + maha)
    return out.reshape(x.shape[:-1])


def sample_gaussian(key: jax.Array, mean: jax.Array, cov: jax.Array, n: int) -> jax.Array:
    """n draws x = μ + L ε with ε ~ N(0, I) and cov = L L^T. Returns (n, D)."""
    mean, cov = jnp.asarray(mean), jnp.asarray(cov)
    _check_gaussian(mean, cov)
    eps = jax.random.normal(key, (n, mean.shape[0]), dtype=mean.dtype)
    return mean + eps @ jnp.linalg.cholesky(cov).T


class GaussianFit(NamedTuple):
    """Maximum-likelihood Gaussian: ``mean`` (D,), ``cov`` (D, D)."""

    mean: jax.Array
    cov: jax.Array


def gaussian_mle(x: jax.Array) -> GaussianFit:
    """Closed-form MLE: μ̂ = (1/N) Σ x_n, Σ̂ = (1/N) Σ (x_n - μ̂)(x_n - μ̂)^T (biased, 1/N)."""
    x = jnp.asarray(x)
    if x.ndim != 2 or x.shape[0] < 1:
        raise ValueError(f"x must have shape (N, D) with N >= 1, got {x.shape}")
    mean = x.mean(axis=0)
    diff = x - mean
    return GaussianFit(mean, diff.T @ diff / x.shape[0])


def kl_gaussians(mean0, cov0, mean1, cov1) -> jax.Array:
    """KL(N0 ‖ N1) in closed form.

    KL = 1/2 [ tr(Σ1^{-1} Σ0) + (μ1-μ0)^T Σ1^{-1} (μ1-μ0) - D + log|Σ1| - log|Σ0| ].
    """
    mean0, cov0, mean1, cov1 = map(jnp.asarray, (mean0, cov0, mean1, cov1))
    _check_gaussian(mean0, cov0)
    _check_gaussian(mean1, cov1)
    if mean0.shape != mean1.shape:
        raise ValueError(f"mean0 and mean1 must have the same shape, got {mean0.shape} and {mean1.shape}")
    chol1 = jnp.linalg.cholesky(cov1)
    solve = lambda b: jax.scipy.linalg.cho_solve((chol1, True), b)
    d = mean0.shape[0]
    diff = mean1 - mean0
    log_det0 = 2.0 * jnp.sum(jnp.log(jnp.diag(jnp.linalg.cholesky(cov0))))
    log_det1 = 2.0 * jnp.sum(jnp.log(jnp.diag(chol1)))
    return 0.5 * (jnp.trace(solve(cov0)) + diff @ solve(diff) - d + log_det1 - log_det0)


def kl_monte_carlo(key, mean0, cov0, mean1, cov1, n: int) -> jax.Array:
    """Monte Carlo KL(N0 ‖ N1) ≈ (1/n) Σ [log N0(x_i) - log N1(x_i)], x_i ~ N0."""
    x = sample_gaussian(key, mean0, cov0, n)
    return jnp.mean(gaussian_logpdf(x, mean0, cov0) - gaussian_logpdf(x, mean1, cov1))


# --------------------------------------------------------------------------- classifier


class GaussianClassifier(NamedTuple):
    """A generative classifier p(x, y) = p(y) N(x | μ_y, Σ_y).

    ``log_prior`` (C,), ``means`` (C, D), ``covs`` (C, D, D).
    """

    log_prior: jax.Array
    means: jax.Array
    covs: jax.Array


def fit_gaussian_classifier(x, y, num_classes: int, reg: float = 1e-6) -> GaussianClassifier:
    """Maximum likelihood for p(y) (class frequencies) and each class's Gaussian.

    ``reg`` is added to each covariance's diagonal so that a class with few points still
    has an invertible covariance. Labels must be ints in [0, num_classes).
    """
    x, y = jnp.asarray(x), jnp.asarray(y)
    if x.ndim != 2:
        raise ValueError(f"x must have shape (N, D), got {x.shape}")
    if y.shape != (x.shape[0],):
        raise ValueError(f"y must have shape ({x.shape[0]},) to match x, got {y.shape}")
    onehot = jax.nn.one_hot(y, num_classes, dtype=x.dtype)  # (N, C)
    counts = onehot.sum(axis=0)
    if bool(jnp.any(counts == 0)):
        raise ValueError(f"every class in [0, {num_classes}) needs at least one point; counts {counts}")
    means = (onehot.T @ x) / counts[:, None]
    diff = x[None, :, :] - means[:, None, :]                     # (C, N, D)
    covs = jnp.einsum("cn,cnd,cne->cde", onehot.T, diff, diff) / counts[:, None, None]
    covs = covs + reg * jnp.eye(x.shape[1], dtype=x.dtype)
    return GaussianClassifier(jnp.log(counts / counts.sum()), means, covs)


def class_log_joint(model: GaussianClassifier, x: jax.Array) -> jax.Array:
    """log p(x, y=c) for every class: (N, C)."""
    per_class = jax.vmap(lambda m, s: gaussian_logpdf(x, m, s))(model.means, model.covs)  # (C, N)
    return per_class.T + model.log_prior


def class_posterior(model: GaussianClassifier, x: jax.Array) -> jax.Array:
    """p(y | x) by Bayes' theorem: p(x, y) / Σ_c p(x, c). Returns (N, C), rows sum to 1."""
    log_joint = class_log_joint(model, x)
    return jnp.exp(log_joint - logsumexp(log_joint, axis=1, keepdims=True))


def sample_labelled(key, model: GaussianClassifier, n: int):
    """Draw n brand-new pairs (x, y): y ~ p(y), then x ~ N(μ_y, Σ_y). Returns x (n, D), y (n,)."""
    k_y, k_x = jax.random.split(key)
    y = jax.random.categorical(k_y, model.log_prior, shape=(n,))
    chol = jnp.linalg.cholesky(model.covs)                       # (C, D, D)
    eps = jax.random.normal(k_x, (n, model.means.shape[1]), dtype=model.means.dtype)
    x = model.means[y] + jnp.einsum("nde,ne->nd", chol[y], eps)
    return x, y
