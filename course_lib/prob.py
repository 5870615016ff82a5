"""Probability kernels for notebook 01: Gaussians, maximum likelihood, entropy and KL, a
generative classifier, and discrete Bayesian networks.

Shapes: ``N`` points, ``D`` dimensions, ``C`` classes, ``K`` categories, ``V`` nodes of a
Bayesian network. Every function is pure, works under ``jit`` (with the structural arguments
static) and takes an explicit PRNG key where it samples. Argument order (the course's
convention): ``key`` first, then the distribution's parameters (``mean, cov``, ``model``,
``net``), then the data (``x``), then sizes (``n``); options are keyword-only. So
``gaussian_logpdf(mean, cov, x)``, ``sample_gaussian(key, mean, cov, n)``.

Values are checked when they are concrete (under ``jit`` only shapes are): covariances must be
symmetric positive definite (and factorisable in the working precision), data finite,
probabilities non-negative and summing to 1, labels, node ids and states in range. Each error
is a ``ValueError`` that names the argument.
"""
from __future__ import annotations

import math
import numbers
from dataclasses import dataclass
from functools import partial
from typing import Mapping, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax.scipy.special import logsumexp, xlogy

from course_lib import _validate

__all__ = [
    "LOG_2PI", "gaussian_logpdf", "sample_gaussian", "GaussianFit", "gaussian_mle", "kl_gaussians",
    "kl_monte_carlo", "GaussianClassifier", "fit_gaussian_classifier", "class_log_joint",
    "class_posterior", "sample_labelled", "entropy", "cross_entropy", "kl_categorical", "BayesNet",
    "bayes_net", "topological_order", "bn_joint", "bn_sample", "bn_query", "bn_likelihood_weighting",
    "d_separated", "conditional_mutual_information",
]

# A Python float: no array is built at import (which would start a JAX backend), and it keeps
# double precision until it meets an array of the working dtype.
LOG_2PI = math.log(2.0 * math.pi)


def _cholesky(cov, name: str) -> jax.Array:
    """The Cholesky factor of ``cov``, refused (naming ``name``) when it is not finite: a
    matrix positive definite in float64 can still fail in float32, and ``jnp.linalg.cholesky``
    then returns NaN without a word."""
    chol = jnp.linalg.cholesky(cov)
    if _validate.is_concrete(chol) and not bool(jnp.all(jnp.isfinite(chol))):
        raise ValueError(f"{name} is not positive definite in {cov.dtype} (its Cholesky factor is "
                         f"not finite: singular to within rounding); add to its diagonal or use float64")
    return chol


def _gaussian(mean, cov, names=("mean", "cov")) -> tuple[jax.Array, jax.Array]:
    """A (D,) mean and a (D, D) symmetric positive definite covariance, in one float dtype."""
    mean = _validate.real_array(mean, names[0], ndim=1)
    if mean.shape[0] < 1:
        raise ValueError(f"{names[0]} must have at least one dimension, got shape {mean.shape}")
    d = mean.shape[0]
    cov = _validate.real_array(cov, names[1], ndim=2)
    if cov.shape != (d, d):
        raise ValueError(f"{names[1]} must have shape ({d}, {d}) to match {names[0]}, got {cov.shape}")
    cov = _validate.positive_definite(cov, names[1])
    dtype = jnp.result_type(mean.dtype, cov.dtype)
    return mean.astype(dtype), cov.astype(dtype)


def _points(x, d: int, name: str = "x") -> jax.Array:
    x = _validate.real_array(x, name)
    if x.ndim < 1 or x.shape[-1] != d:
        raise ValueError(f"{name} must end in D={d} (the mean's size), got shape {x.shape}")
    return x


def gaussian_logpdf(mean: jax.Array, cov: jax.Array, x: jax.Array) -> jax.Array:
    """log N(x | mean, cov) for x (..., D), via the Cholesky factor L (cov = L L^T).

    log N = -1/2 [ D log 2π + log|Σ| + (x-μ)^T Σ^{-1} (x-μ) ],  with
    log|Σ| = 2 Σ_i log L_ii and (x-μ)^T Σ^{-1} (x-μ) = |L^{-1}(x-μ)|².
    ``mean`` (D,), ``cov`` (D, D) symmetric positive definite. Returns shape (...,).
    """
    mean, cov = _gaussian(mean, cov)
    x = _points(x, mean.shape[0])
    dtype = jnp.result_type(x.dtype, mean.dtype)
    mean, cov, x = mean.astype(dtype), cov.astype(dtype), x.astype(dtype)
    chol = _cholesky(cov, "cov")
    diff = (x - mean).reshape(-1, mean.shape[0])
    z = jax.scipy.linalg.solve_triangular(chol, diff.T, lower=True)  # (D, M)
    maha = jnp.sum(z * z, axis=0)
    log_det = 2.0 * jnp.sum(jnp.log(jnp.diag(chol)))
    out = -0.5 * (mean.shape[0] * LOG_2PI + log_det + maha)
    return out.reshape(x.shape[:-1])


def sample_gaussian(key: jax.Array, mean: jax.Array, cov: jax.Array, n: int) -> jax.Array:
    """n draws x = μ + L ε with ε ~ N(0, I) and cov = L L^T. Returns (n, D)."""
    mean, cov = _gaussian(mean, cov)
    n = _validate.count(n, "n")
    eps = jax.random.normal(key, (n, mean.shape[0]), dtype=mean.dtype)
    return mean + eps @ _cholesky(cov, "cov").T


class GaussianFit(NamedTuple):
    """Maximum-likelihood Gaussian: ``mean`` (D,), ``cov`` (D, D)."""

    mean: jax.Array
    cov: jax.Array


def gaussian_mle(x: jax.Array) -> GaussianFit:
    """Closed-form MLE: μ̂ = (1/N) Σ x_n, Σ̂ = (1/N) Σ (x_n - μ̂)(x_n - μ̂)^T (biased, 1/N).

    ``x`` (N, D) finite, N >= 1. With N <= D points Σ̂ is singular (not a density's
    covariance): add to its diagonal before using it.
    """
    x = _validate.real_array(x, "x", ndim=2)
    if x.shape[0] < 1 or x.shape[1] < 1:
        raise ValueError(f"x must have shape (N, D) with N >= 1 and D >= 1, got {x.shape}")
    mean = x.mean(axis=0)
    diff = x - mean
    return GaussianFit(mean, diff.T @ diff / x.shape[0])


def kl_gaussians(mean0, cov0, mean1, cov1) -> jax.Array:
    """KL(N0 ‖ N1) in closed form.

    KL = 1/2 [ tr(Σ1^{-1} Σ0) + (μ1-μ0)^T Σ1^{-1} (μ1-μ0) - D + log|Σ1| - log|Σ0| ].
    """
    mean0, cov0 = _gaussian(mean0, cov0, ("mean0", "cov0"))
    mean1, cov1 = _gaussian(mean1, cov1, ("mean1", "cov1"))
    if mean0.shape != mean1.shape:
        raise ValueError(f"mean0 and mean1 must have the same shape, got {mean0.shape} and {mean1.shape}")
    dtype = jnp.result_type(mean0.dtype, mean1.dtype)
    mean0, cov0, mean1, cov1 = (a.astype(dtype) for a in (mean0, cov0, mean1, cov1))
    chol1 = _cholesky(cov1, "cov1")
    solve = lambda b: jax.scipy.linalg.cho_solve((chol1, True), b)
    d = mean0.shape[0]
    diff = mean1 - mean0
    log_det0 = 2.0 * jnp.sum(jnp.log(jnp.diag(_cholesky(cov0, "cov0"))))
    log_det1 = 2.0 * jnp.sum(jnp.log(jnp.diag(chol1)))
    return 0.5 * (jnp.trace(solve(cov0)) + diff @ solve(diff) - d + log_det1 - log_det0)


def kl_monte_carlo(key, mean0, cov0, mean1, cov1, n: int) -> jax.Array:
    """Monte Carlo KL(N0 ‖ N1) ≈ (1/n) Σ [log N0(x_i) - log N1(x_i)], x_i ~ N0."""
    mean0, cov0 = _gaussian(mean0, cov0, ("mean0", "cov0"))
    mean1, cov1 = _gaussian(mean1, cov1, ("mean1", "cov1"))
    if mean0.shape != mean1.shape:
        raise ValueError(f"mean0 and mean1 must have the same shape, got {mean0.shape} and {mean1.shape}")
    x = sample_gaussian(key, mean0, cov0, n)
    return jnp.mean(gaussian_logpdf(mean0, cov0, x) - gaussian_logpdf(mean1, cov1, x))


# --------------------------------------------------------------------------- classifier


class GaussianClassifier(NamedTuple):
    """A generative classifier p(x, y) = p(y) N(x | μ_y, Σ_y).

    ``log_prior`` (C,), ``means`` (C, D), ``covs`` (C, D, D).
    """

    log_prior: jax.Array
    means: jax.Array
    covs: jax.Array


def fit_gaussian_classifier(x, y, num_classes: int, *, reg: float = 1e-6) -> GaussianClassifier:
    """Maximum likelihood for p(y) (class frequencies) and each class's Gaussian.

    ``x`` (N, D) finite features, ``y`` (N,) integer labels in ``[0, num_classes)`` (a label
    outside is an error, never dropped), every class with at least one point. ``reg`` >= 0 is
    added to each covariance's diagonal so that a class with few points (N_c <= D) still has
    an invertible covariance; a covariance that cannot be factorised is an error naming ``reg``.
    """
    x = _validate.real_array(x, "x", ndim=2)
    num_classes = _validate.count(num_classes, "num_classes")
    y = _validate.ids(y, "y", num_classes, ndim=1, what="classes")
    reg = _validate.real(reg, "reg", low=0.0)
    if y.shape != (x.shape[0],):
        raise ValueError(f"y must have shape ({x.shape[0]},) to match x, got {y.shape}")
    onehot = jax.nn.one_hot(y, num_classes, dtype=x.dtype)  # (N, C)
    counts = onehot.sum(axis=0)
    if _validate.is_concrete(counts) and bool(jnp.any(counts == 0)):
        raise ValueError(f"y: every class in [0, {num_classes}) needs at least one point; "
                         f"counts {np.asarray(counts).astype(int).tolist()}")
    means = (onehot.T @ x) / counts[:, None]
    diff = x[None, :, :] - means[:, None, :]                     # (C, N, D)
    covs = jnp.einsum("cn,cnd,cne->cde", onehot.T, diff, diff) / counts[:, None, None]
    covs = covs + reg * jnp.eye(x.shape[1], dtype=x.dtype)
    if _validate.is_concrete(covs) and not bool(jnp.all(jnp.isfinite(jnp.linalg.cholesky(covs)))):
        raise ValueError(f"reg={reg:g} leaves a class covariance singular (a class with no more points "
                         f"than dimensions, or constant features): use reg > 0")
    return GaussianClassifier(jnp.log(counts / counts.sum()), means, covs)


def _check_classifier(model) -> GaussianClassifier:
    """Shapes always; values when concrete: exp(log_prior) a distribution, covariances SPD."""
    if not isinstance(model, tuple) or len(model) != 3:
        raise ValueError(f"model must be a GaussianClassifier(log_prior, means, covs), got {type(model).__name__}")
    log_prior = _validate.real_array(model[0], "log_prior", ndim=1, finite=False)
    means = _validate.real_array(model[1], "means", ndim=2)
    covs = _validate.real_array(model[2], "covs", ndim=3)
    c = log_prior.shape[0]
    if c < 1 or means.shape[0] != c or covs.shape != (c, means.shape[1], means.shape[1]):
        raise ValueError(f"model: log_prior (C,), means (C, D) and covs (C, D, D) must agree, got "
                         f"{log_prior.shape}, {means.shape}, {covs.shape}")
    if _validate.is_concrete(log_prior):
        if bool(jnp.any(jnp.isnan(log_prior) | (log_prior == jnp.inf))):
            raise ValueError("log_prior must hold log-probabilities (no NaN, no +inf)")
        _validate.probabilities(jnp.exp(log_prior), "log_prior (as probabilities)")
    covs = _validate.positive_definite(covs, "covs")
    _cholesky(covs, "covs")
    return GaussianClassifier(log_prior, means, covs)


def class_log_joint(model: GaussianClassifier, x: jax.Array) -> jax.Array:
    """log p(x, y=c) for every class: (N, C), for ``x`` (N, D)."""
    model = _check_classifier(model)
    x = _validate.real_array(x, "x", ndim=2)
    if x.shape[1] != model.means.shape[1]:
        raise ValueError(f"x must have D={model.means.shape[1]} columns (the model's), got shape {x.shape}")
    per_class = jax.vmap(lambda m, s: _logpdf(m, s, x))(model.means, model.covs)  # (C, N)
    return per_class.T + model.log_prior


def _logpdf(mean, cov, x):
    """gaussian_logpdf without the checks (its arguments are checked, or traced under vmap)."""
    chol = jnp.linalg.cholesky(cov)
    z = jax.scipy.linalg.solve_triangular(chol, (x - mean).T, lower=True)
    return -0.5 * (mean.shape[0] * LOG_2PI + 2.0 * jnp.sum(jnp.log(jnp.diag(chol))) + jnp.sum(z * z, axis=0))


def class_posterior(model: GaussianClassifier, x: jax.Array) -> jax.Array:
    """p(y | x) by Bayes' theorem: p(x, y) / Σ_c p(x, c). Returns (N, C), rows sum to 1."""
    log_joint = class_log_joint(model, x)
    return jnp.exp(log_joint - logsumexp(log_joint, axis=1, keepdims=True))


def sample_labelled(key, model: GaussianClassifier, n: int):
    """Draw n brand-new pairs (x, y): y ~ p(y), then x ~ N(μ_y, Σ_y). Returns x (n, D), y (n,)."""
    model = _check_classifier(model)
    n = _validate.count(n, "n")
    k_y, k_x = jax.random.split(key)
    y = jax.random.categorical(k_y, model.log_prior, shape=(n,))
    chol = jnp.linalg.cholesky(model.covs)                       # (C, D, D)
    eps = jax.random.normal(k_x, (n, model.means.shape[1]), dtype=model.means.dtype)
    x = model.means[y] + jnp.einsum("nde,ne->nd", chol[y], eps)
    return x, y


# --------------------------------------------------------------------------- validation


def _index(value, name: str, size: int, what: str = "a node index") -> int:
    """A Python/NumPy integer in [0, size); bools and floats are refused (True is not node 1)."""
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, numbers.Integral) or not 0 <= value < size:
        raise ValueError(f"{name} must be {what} in [0, {size}), got {value!r}")
    return int(value)


def _check_distribution(name: str, p, axis: int = -1) -> jax.Array:
    """``p`` as a float array whose slices along ``axis`` are probability vectors (values
    checked by ``_validate.probabilities`` when concrete)."""
    p = _validate.real_array(p, name)
    if isinstance(axis, (bool, np.bool_)) or not isinstance(axis, numbers.Integral):
        raise ValueError(f"axis must be an integer, got {axis!r}")
    if p.ndim == 0 or not -p.ndim <= axis < p.ndim or p.shape[axis] < 1:
        raise ValueError(f"{name} must have at least one category along axis {axis}, got shape {p.shape}")
    return _validate.probabilities(p, name, axis=axis)


# --------------------------------------------------------------------------- entropy and KL


def entropy(p: jax.Array, *, axis: int = -1) -> jax.Array:
    """Shannon entropy in nats, H(p) = -Σ_k p_k log p_k, with 0 log 0 = 0.

    ``p`` (..., K) probability vectors along ``axis``; returns (...). Divide by log 2 for
    bits. 0 <= H(p) <= log K, with 0 for a certain outcome and log K for the uniform one.
    """
    p = _check_distribution("p", p, axis)
    return 0.0 - jnp.sum(xlogy(p, p), axis=axis)     # 0 - 0 = +0: a certain outcome prints 0, not -0


def cross_entropy(p: jax.Array, q: jax.Array, *, axis: int = -1) -> jax.Array:
    """Cross-entropy in nats, H(p, q) = -Σ_k p_k log q_k = H(p) + KL(p ‖ q) >= H(p).

    The average surprise -log q(x) of outcomes drawn from p. Infinite where q_k = 0 < p_k.
    ``p`` and ``q`` broadcast; (..., K) -> (...).
    """
    p, q = _pair(p, q, axis)
    return 0.0 - jnp.sum(xlogy(p, q), axis=axis)


def kl_categorical(p: jax.Array, q: jax.Array, *, axis: int = -1) -> jax.Array:
    """KL(p ‖ q) = Σ_k p_k log(p_k / q_k) >= 0 in nats, with 0 log 0 = 0. (..., K) -> (...)."""
    p, q = _pair(p, q, axis)
    return jnp.sum(xlogy(p, p) - xlogy(p, q), axis=axis)


def _pair(p, q, axis):
    """Two distributions over the same categories (shapes that broadcast)."""
    p, q = _check_distribution("p", p, axis), _check_distribution("q", q, axis)
    try:
        jnp.broadcast_shapes(p.shape, q.shape)
    except ValueError:
        raise ValueError(f"p and q must have shapes that broadcast (the same categories), got "
                         f"{p.shape} and {q.shape}") from None
    if p.shape[axis] != q.shape[axis]:
        raise ValueError(f"p and q must have the same number of categories along axis {axis}, got "
                         f"{p.shape[axis]} and {q.shape[axis]}")
    return p, q


# --------------------------------------------------------------------------- Bayesian networks


@partial(jax.tree_util.register_dataclass, data_fields=["cpts"], meta_fields=["parents", "names"])
@dataclass(frozen=True, eq=False)
class BayesNet:
    """A discrete Bayesian network: a DAG and one conditional probability table per node.

    ``parents[i]`` is the tuple of node i's parents (indices into the nodes, any order of
    nodes as long as the graph is acyclic). ``cpts[i]`` has shape
    ``(card[parents[i][0]], ..., card[parents[i][-1]], card[i])`` and holds
    ``P(x_i = s | x_parents = (a, ..., z)) = cpts[i][a, ..., z, s]``: each slice along the
    last axis sums to 1. ``card[i] = cpts[i].shape[-1]``. ``names`` labels the nodes (for
    printing). A pytree whose leaves are the tables, so it passes through ``jit``.
    Build it with :func:`bayes_net`, which checks all of this.
    """

    parents: tuple
    cpts: tuple
    names: tuple = ()

    @property
    def cards(self) -> tuple:
        """Number of states of every node, (V,)."""
        return tuple(int(c.shape[-1]) for c in self.cpts)


def topological_order(parents) -> tuple:
    """An order of the nodes with every parent before its children (Kahn's algorithm).

    Ties are broken by the smallest index, so the order is deterministic. Raises
    ValueError naming ``parents`` when the graph has a cycle (a Bayesian network is a DAG).
    """
    parents = _check_parents(parents)
    n = len(parents)
    waiting = [len(set(p)) for p in parents]
    children = [[] for _ in range(n)]
    for child, ps in enumerate(parents):
        for p in set(ps):
            children[p].append(child)
    ready, order = sorted(i for i in range(n) if waiting[i] == 0), []
    while ready:
        node = ready.pop(0)
        order.append(node)
        for c in children[node]:
            waiting[c] -= 1
            if waiting[c] == 0:
                ready.append(c)
        ready.sort()
    if len(order) < n:
        stuck = sorted(set(range(n)) - set(order))
        raise ValueError(f"parents: the graph has a directed cycle through nodes {stuck}; "
                         "a Bayesian network must be acyclic")
    return tuple(order)


def _check_parents(parents) -> tuple:
    """``parents`` as a tuple of tuples of node indices in [0, V), no self-loop, no repeat."""
    if isinstance(parents, (str, bytes)) or not hasattr(parents, "__len__"):
        raise ValueError(f"parents must be a sequence of V tuples of node indices, got {parents!r}")
    n = len(parents)
    out = []
    for i, ps in enumerate(parents):
        if not isinstance(ps, (tuple, list)):
            raise ValueError(f"parents[{i}] must be a tuple of node indices (() for a root), got {ps!r}")
        for p in ps:
            if isinstance(p, (bool, np.bool_)) or not isinstance(p, numbers.Integral) or not 0 <= p < n:
                raise ValueError(f"parents[{i}] names {p!r}, not a node index in [0, {n})")
            if p == i:
                raise ValueError(f"parents[{i}] lists node {i} itself: a self-loop is a cycle")
        if len(set(ps)) != len(ps):
            raise ValueError(f"parents[{i}] = {tuple(ps)} lists a parent twice")
        out.append(tuple(int(p) for p in ps))
    return tuple(out)


def _check_structure(parents, cpts) -> None:
    """Shapes and graph of a network (static: works under jit)."""
    n = len(parents)
    if len(cpts) != n:
        raise ValueError(f"cpts must hold one table per node: {n} nodes in parents, {len(cpts)} tables")
    topological_order(parents)
    cards = [c.shape[-1] if c.ndim else 0 for c in cpts]
    for i, (ps, table) in enumerate(zip(parents, cpts)):
        want = tuple(cards[p] for p in ps)
        if table.ndim != len(ps) + 1 or table.shape[:-1] != want or table.shape[-1] < 1:
            raise ValueError(f"cpts[{i}] must have shape (parents' states..., own states) = "
                             f"{want + ('card',)} for parents {tuple(ps)}, got {table.shape}")


def _checked(net: BayesNet) -> BayesNet:
    """The network with jnp tables, after structural and (when concrete) value checks."""
    if not isinstance(net, BayesNet):
        raise ValueError(f"net must be a BayesNet (see prob.bayes_net), got {type(net).__name__}")
    cpts = tuple(jnp.asarray(c) for c in net.cpts)
    _check_structure(net.parents, cpts)
    for i, table in enumerate(cpts):
        _check_distribution(f"cpts[{i}]", table)
    return BayesNet(net.parents, cpts, net.names)


def bayes_net(parents, cpts, *, names=None) -> BayesNet:
    """Build and validate a :class:`BayesNet`.

    ``parents``: a sequence of V sequences of node indices; ``cpts``: V arrays (see
    :class:`BayesNet` for their shapes); ``names``: V labels (default ``X0, X1, ...``).
    Raises ValueError naming the argument for a cycle, a shape that does not match the
    parents' numbers of states, or a table with NaN, negative or unnormalised rows.
    """
    parents = _check_parents(parents)
    cpts = tuple(_validate.real_array(c, f"cpts[{i}]") for i, c in enumerate(cpts))
    names = tuple(names) if names is not None else tuple(f"X{i}" for i in range(len(parents)))
    if len(names) != len(parents):
        raise ValueError(f"names must label the {len(parents)} nodes, got {len(names)} names")
    return _checked(BayesNet(parents, cpts, names))


def _broadcast_cpt(table: jax.Array, axes: tuple, n: int) -> jax.Array:
    """A table over the nodes ``axes`` reshaped to broadcast against the (card_0, ..., card_{n-1}) joint."""
    order = sorted(range(len(axes)), key=lambda k: axes[k])
    table = jnp.transpose(table, order)
    shape = [1] * n
    for axis, size in zip(sorted(axes), table.shape):
        shape[axis] = size
    return table.reshape(shape)


def bn_joint(net: BayesNet) -> jax.Array:
    """The full joint table by the network's factorisation, P(x) = Π_i P(x_i | x_parents(i)).

    Returns shape (card_0, ..., card_{V-1}); it sums to 1. Its size is Π_i card_i, so this
    is for small networks (exact inference by enumeration).
    """
    net = _checked(net)
    n = len(net.parents)
    joint = jnp.ones((), dtype=net.cpts[0].dtype if n else jnp.float32)
    for i, table in enumerate(net.cpts):
        joint = joint * _broadcast_cpt(table, net.parents[i] + (i,), n)
    return joint


def _cpt_rows(table: jax.Array, parent_values: tuple) -> jax.Array:
    """The CPT rows selected by each sample's parent values: (n, card_child)."""
    if not parent_values:
        return table[None, :]
    return table[parent_values]


def bn_sample(key: jax.Array, net: BayesNet, n: int) -> jax.Array:
    """n ancestral samples: visit the nodes parents-first and draw x_i ~ P(x_i | sampled parents).

    Vectorised over the n samples (one ``jax.random.categorical`` per node). Returns (n, V)
    int32, column i holding node i's state.
    """
    net = _checked(net)
    n = _validate.count(n, "n")
    order = topological_order(net.parents)
    keys = jax.random.split(key, max(len(order), 1))
    columns = {}
    for k, i in zip(keys, order):
        rows = _cpt_rows(net.cpts[i], tuple(columns[p] for p in net.parents[i]))
        columns[i] = jax.random.categorical(k, jnp.log(rows), axis=-1, shape=(n,)).astype(jnp.int32)
    return jnp.stack([columns[i] for i in range(len(order))], axis=1)


def _check_evidence(net: BayesNet, evidence, target=None) -> dict:
    evidence = dict(evidence or {})
    cards, n = net.cards, len(net.parents)
    for node, value in evidence.items():
        if isinstance(node, (bool, np.bool_)) or not isinstance(node, numbers.Integral) or not 0 <= node < n:
            raise ValueError(f"evidence names node {node!r}, not a node index in [0, {n})")
        if node == target:
            raise ValueError(f"evidence fixes the target node {target}; query another node")
        if (isinstance(value, (bool, np.bool_)) or not isinstance(value, numbers.Integral)
                or not 0 <= value < cards[node]):
            raise ValueError(f"evidence sets node {node} to {value!r}, outside its states "
                             f"0..{cards[node] - 1}")
    return {int(k): int(v) for k, v in evidence.items()}


def bn_query(net: BayesNet, target: int, evidence: Mapping[int, int] | None = None) -> jax.Array:
    """P(x_target | evidence) by enumeration: sum the joint over every other node.

    P(t | e) = Σ_h P(t, h, e) / Σ_{t', h} P(t', h, e), with h the hidden nodes. ``target``
    an int, ``evidence`` {node: state} (static Python ints). Returns (card_target,).
    Raises ValueError when the evidence has probability 0.
    """
    net = _checked(net)
    n = len(net.parents)
    target = _index(target, "target", n)
    evidence = _check_evidence(net, evidence, target)
    joint = bn_joint(net)
    index = tuple(evidence.get(i, slice(None)) for i in range(n))
    restricted = joint[index]                      # axes: the nodes not in evidence, in order
    free = [i for i in range(n) if i not in evidence]
    unnormalised = jnp.sum(restricted, axis=tuple(k for k, i in enumerate(free) if i != target))
    total = unnormalised.sum()
    if _validate.is_concrete(total) and not float(total) > 0:
        raise ValueError(f"evidence {evidence} has probability 0 under this network")
    return unnormalised / total


def bn_likelihood_weighting(key: jax.Array, net: BayesNet, evidence: Mapping[int, int], n: int):
    """n samples with the evidence nodes clamped, and their importance weights.

    Non-evidence nodes are drawn ancestrally given the (sampled or clamped) parents; each
    sample's weight is w = Π_{e in evidence} P(x_e = e | its parents). Then
    P(t | e) ≈ Σ_s w_s [x_t^s = t] / Σ_s w_s. Returns samples (n, V) int32, weights (n,).
    """
    net = _checked(net)
    evidence = _check_evidence(net, evidence)
    n = _validate.count(n, "n")
    order = topological_order(net.parents)
    keys = jax.random.split(key, max(len(order), 1))
    columns, weights = {}, jnp.ones((n,), dtype=net.cpts[0].dtype)
    for k, i in zip(keys, order):
        rows = _cpt_rows(net.cpts[i], tuple(columns[p] for p in net.parents[i]))
        if i in evidence:
            columns[i] = jnp.full((n,), evidence[i], dtype=jnp.int32)
            weights = weights * jnp.broadcast_to(rows[:, evidence[i]], (n,))
        else:
            columns[i] = jax.random.categorical(k, jnp.log(rows), axis=-1, shape=(n,)).astype(jnp.int32)
    return jnp.stack([columns[i] for i in range(len(order))], axis=1), weights


def d_separated(parents, x: int, y: int, given=()) -> bool:
    """Whether the graph alone guarantees x ⟂ y | given (d-separation; pure Python).

    A path between x and y is blocked by a chain (a -> m -> b) or a fork (a <- m -> b) whose
    middle m is observed, or by a collider (a -> m <- b) when neither m nor any descendant of
    m is observed. Found by a reachability search over (node, direction of arrival).
    """
    parents = _check_parents(parents)
    n = len(parents)
    given = set(_index(g, "given", n) for g in given)
    for name, node in (("x", x), ("y", y)):
        _index(node, name, n)
        if node in given:
            raise ValueError(f"{name} = {node} is in given; ask about unobserved nodes")
    if x == y:
        raise ValueError(f"x and y must differ, got {x} twice")
    topological_order(parents)
    children = [[] for _ in range(n)]
    for c, ps in enumerate(parents):
        for p in ps:
            children[p].append(c)
    has_observed_descendant, stack = set(), list(given)   # the observed nodes and their ancestors
    while stack:
        node = stack.pop()
        if node not in has_observed_descendant:
            has_observed_descendant.add(node)
            stack.extend(parents[node])
    # "up": arrived from a child (or the start); "down": arrived from a parent
    seen, stack = set(), [(x, "up")]
    while stack:
        node, came = stack.pop()
        if (node, came) in seen:
            continue
        seen.add((node, came))
        if node == y:
            return False
        if came == "up" and node not in given:
            stack += [(p, "up") for p in parents[node]] + [(c, "down") for c in children[node]]
        elif came == "down":
            if node not in given:                       # chain onwards through an unobserved node
                stack += [(c, "down") for c in children[node]]
            if node in has_observed_descendant:         # an open collider: back up to its parents
                stack += [(p, "up") for p in parents[node]]
    return True


def _marginal_entropy(joint: jax.Array, keep: tuple) -> jax.Array:
    """H of the marginal of ``joint`` over the axes ``keep`` (nats)."""
    drop = tuple(a for a in range(joint.ndim) if a not in keep)
    marginal = jnp.sum(joint, axis=drop) if drop else joint
    return -jnp.sum(xlogy(marginal, marginal))


def conditional_mutual_information(joint: jax.Array, a: int, b: int, given=()) -> jax.Array:
    """I(A; B | C) in nats from a joint table over all variables (one axis per variable).

    I(A; B | C) = H(A, C) + H(B, C) - H(A, B, C) - H(C) = KL(p(a, b, c) ‖ p(a|c) p(b|c) p(c)),
    zero exactly when A ⟂ B | C. Clipped at 0 against rounding; in float32 an independence
    shows as a value of about 1e-7.
    """
    joint = _validate.real_array(joint, "joint")
    joint = _check_distribution("joint", jnp.ravel(joint)).reshape(joint.shape)
    given = tuple(given)
    axes = (a, b) + given
    for v in axes:
        _index(v, "a, b and given", joint.ndim, "an axis of the joint")
    if len(set(axes)) != len(axes):
        raise ValueError(f"a, b and given must be distinct axes of the {joint.ndim}-d joint, "
                         f"got a={a}, b={b}, given={given}")
    h = lambda *keep: _marginal_entropy(joint, keep)
    value = h(a, *given) + h(b, *given) - h(a, b, *given) - (h(*given) if given else 0.0)
    return jnp.maximum(value, 0.0)
