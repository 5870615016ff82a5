"""Variational autoencoders in Flax NNX: the ELBO, its pieces, its bounds and its oracles.

A VAE models an image ``x`` (``P`` pixels, binarised) through a latent ``z`` (``D`` numbers):

* prior ``p(z) = N(0, I)``; decoder ``p(x|z) = prod_i Bernoulli(x_i; sigmoid(logits_i(z)))``;
* encoder ``q(z|x) = N(mu(x), diag(exp(log_var(x))))``, the approximate posterior;
* ``log p(x) = ELBO(q) + KL(q(z|x) || p(z|x)) >= ELBO(q)``, with
  ``ELBO(q) = E_q[log p(x|z)] - KL(q(z|x) || p(z))``: :func:`elbo` (reconstruction by
  reparameterised sampling, KL in closed form: :func:`gaussian_kl`);
* ``log p(x) >= IWAE_k = E log (1/k) sum_j p(x, z_j) / q(z_j|x)``, ``z_j ~ q``; it rises with
  ``k`` and reaches ``log p(x)`` as ``k -> infinity``: :func:`iwae_bound`.

The bounds are written once, for any model given as a log-joint ``z -> log p(x, z)`` and any
Gaussian ``q`` (:class:`DiagonalGaussian`, :class:`FullGaussian`): :func:`elbo_estimate`,
:func:`iwae_estimate`, :func:`log_importance_weights`. The tests check them on a linear-Gaussian
model whose ``log p(x)`` and posterior are known in closed form (:class:`LinearGaussian`,
:func:`linear_gaussian_log_marginal`, :func:`linear_gaussian_posterior`,
:func:`linear_gaussian_elbo`); the notebook uses the same functions on the MNIST VAE
(:func:`log_joint`, :func:`posterior`).

Models: :class:`VAE`, :class:`ConditionalVAE` (a one-hot label joins the encoder's input and
the decoder's latent), :class:`Autoencoder` (the same MLP body, a deterministic code). Images
arrive as ``(B, H, W)`` or flattened ``(B, H*W)`` with values in ``[0, 1]``; the Bernoulli
likelihood is a normalised density only for binary pixels (:func:`binarize`; the protocol of
the course's binarised MNIST is ``course_lib.data.BINARIZED_MNIST_PROTOCOL``).

Training: :func:`vae_step` and :func:`autoencoder_step` are compiled steps that update a model
in place and return a dict of scalar metrics; :func:`make_vae_update` and
:func:`make_vae_eval` wrap them as ``update(state, batch, key, step)`` and
``eval_fn(state, batch, key)`` for ``course_lib.train.loop`` (state ``{"model": m,
"optimizer": nnx.Optimizer(m, tx, wrt=nnx.Param)}``).

Shapes: ``B`` batch, ``P`` pixels, ``D`` latent size, ``k`` samples per example, ``C``
classes. Logarithms are natural: log-likelihoods are in nats per image.
"""
from __future__ import annotations

import math
from typing import Callable, NamedTuple, Sequence

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

from course_lib import _validate

Array = jax.Array
LogJoint = Callable[[Array], Array]

__all__ = [
    "IMAGE_SHAPE", "ELBO", "Gradients", "EstimatorComparison", "DiagonalGaussian",
    "FullGaussian", "LinearGaussian", "Encoder", "Decoder", "VAE", "ConditionalVAE",
    "Autoencoder", "gaussian_kl", "standard_normal_log_density", "reparameterize",
    "bernoulli_log_likelihood", "binarize", "elbo", "log_joint", "posterior", "iwae_bound",
    "log_importance_weights", "elbo_estimate", "iwae_estimate", "linear_gaussian_log_marginal",
    "linear_gaussian_posterior", "linear_gaussian_log_joint", "linear_gaussian_elbo",
    "score_function_gradient", "reparameterized_gradient", "compare_gradient_estimators",
    "vae_step", "autoencoder_loss", "autoencoder_step", "make_vae_update",
    "make_vae_eval", "generate", "reconstruct", "anomaly_score", "roc_auc",
]

IMAGE_SHAPE = (28, 28)
"""MNIST's image shape, the default of every model here (784 pixels)."""

_LOG_2PI = math.log(2.0 * math.pi)


# ------------------------------------------------------------------------------ results
class ELBO(NamedTuple):
    """What :func:`elbo` returns, per example ``(B,)`` or averaged over the batch (scalars).

    ``elbo = reconstruction - beta * kl``: the evidence lower bound when ``beta = 1`` (then
    ``elbo <= log p(x)``), the beta-VAE objective otherwise. ``reconstruction`` is the
    Monte Carlo estimate of ``E_q[log p(x|z)]`` (nats), ``kl`` is ``KL(q(z|x) || N(0, I))``
    in closed form (nats).
    """

    elbo: Array
    reconstruction: Array
    kl: Array


class Gradients(NamedTuple):
    """Gradients (or their means or variances) with respect to a Gaussian's parameters."""

    mean: Array
    log_var: Array


class EstimatorComparison(NamedTuple):
    """Two Monte Carlo estimators of the same gradient, from the same noise draws.

    Each field is a :class:`Gradients`: the estimators' sample means and their per-sample
    variances (divide by ``n`` for the variance of the averaged estimate).
    """

    score_function_mean: Gradients
    score_function_variance: Gradients
    reparameterized_mean: Gradients
    reparameterized_variance: Gradients


# ------------------------------------------------------------------------------ Gaussians
class DiagonalGaussian(NamedTuple):
    """``N(mean, diag(exp(log_var)))``: ``mean`` and ``log_var`` of shape ``(..., D)``."""

    mean: Array
    log_var: Array

    def sample(self, key: Array, k: int) -> Array:
        """``k`` draws ``mean + exp(log_var / 2) * eps``, ``eps ~ N(0, I)``: ``(k, ..., D)``."""
        return _reparameterize(key, self.mean, self.log_var, k)

    def log_prob(self, z: Array) -> Array:
        """``log N(z; mean, diag(exp(log_var)))`` summed over ``D``: ``(..., D) -> (...)``."""
        sq = jnp.square(z - self.mean) * jnp.exp(-self.log_var)
        return -0.5 * jnp.sum(_LOG_2PI + self.log_var + sq, axis=-1)


class FullGaussian(NamedTuple):
    """``N(mean, L L^T)``: ``mean (..., D)``, lower-triangular ``scale_tril (..., D, D)``."""

    mean: Array
    scale_tril: Array

    def sample(self, key: Array, k: int) -> Array:
        """``k`` draws ``mean + L eps``, ``eps ~ N(0, I)``: ``(k, ..., D)``."""
        eps = jax.random.normal(key, (k,) + self.mean.shape, self.mean.dtype)
        return self.mean + jnp.einsum("...ij,k...j->k...i", self.scale_tril, eps)

    def log_prob(self, z: Array) -> Array:
        """``log N(z; mean, L L^T)``: ``(k, ..., D) -> (k, ...)`` (the leading axis is k)."""
        diff = jnp.moveaxis(z - self.mean, 0, -1)                     # (..., D, k)
        tril = jnp.broadcast_to(self.scale_tril, diff.shape[:-1] + diff.shape[-2:-1])
        white = jax.scipy.linalg.solve_triangular(tril, diff, lower=True)
        maha = jnp.moveaxis(jnp.sum(jnp.square(white), axis=-2), -1, 0)   # (k, ...)
        log_det = jnp.sum(jnp.log(jnp.abs(jnp.diagonal(self.scale_tril, axis1=-2, axis2=-1))),
                          axis=-1)
        d = self.mean.shape[-1]
        return -0.5 * (d * _LOG_2PI + maha) - log_det


def _gaussian_kl(mean: Array, log_var: Array) -> Array:
    # sigma^2 - 1 - log sigma^2 = expm1(v) - v >= 0: written so that rounding (at v near 0)
    # cannot make it negative.
    spread = jnp.maximum(jnp.expm1(log_var) - log_var, 0.0)
    return 0.5 * jnp.sum(jnp.square(mean) + spread, axis=-1)


def gaussian_kl(mean, log_var) -> Array:
    """``KL(N(mean, diag(exp(log_var))) || N(0, I))`` in closed form, per example.

    ``KL = 1/2 sum_d (mu_d^2 + sigma_d^2 - 1 - log sigma_d^2)``, in nats; ``>= 0``, and ``0``
    only at ``mu = 0, log_var = 0``. mean, log_var: ``(..., D)``. Returns ``(...)``.
    """
    mean = _validate.real_array(mean, "mean")
    log_var = _validate.real_array(log_var, "log_var")
    _same_shape(log_var, mean, "log_var", "mean")
    return _gaussian_kl(mean, log_var)


def standard_normal_log_density(z) -> Array:
    """``log N(z; 0, I)`` summed over the last axis (the prior ``p(z)``): ``(..., D) -> (...)``."""
    z = _validate.real_array(z, "z")
    return _std_normal_logpdf(z)


def _std_normal_logpdf(z: Array) -> Array:
    return -0.5 * jnp.sum(_LOG_2PI + jnp.square(z), axis=-1)


def _reparameterize(key: Array, mean: Array, log_var: Array, n: int | None) -> Array:
    shape = mean.shape if n is None else (n,) + mean.shape
    eps = jax.random.normal(key, shape, mean.dtype)
    return mean + jnp.exp(0.5 * log_var) * eps


def reparameterize(key, mean, log_var, *, n: int | None = None) -> Array:
    """``z = mean + exp(log_var / 2) * eps`` with ``eps ~ N(0, I)``: a draw from ``q`` that
    is a differentiable function of ``(mean, log_var)`` (the reparameterisation trick).

    mean, log_var: ``(..., D)``. Returns ``(..., D)``, or ``(n, ..., D)`` with ``n`` draws.
    """
    key = _validate.key(key)
    mean = _validate.real_array(mean, "mean")
    log_var = _validate.real_array(log_var, "log_var")
    _same_shape(log_var, mean, "log_var", "mean")
    n = None if n is None else _validate.count(n, "n")
    return _reparameterize(key, mean, log_var, n)


# ------------------------------------------------------------------------------ Bernoulli
def _bernoulli_ll(logits: Array, x: Array) -> Array:
    # log p = x log sigmoid(l) + (1 - x) log sigmoid(-l) = x l - softplus(l); never log(0).
    return jnp.sum(x * logits - jax.nn.softplus(logits), axis=-1)


def bernoulli_log_likelihood(logits, x) -> Array:
    """``sum_i [x_i log sigmoid(l_i) + (1 - x_i) log(1 - sigmoid(l_i))]`` over the last axis.

    Computed as ``sum_i x_i l_i - softplus(l_i)``: finite for any finite logits. logits:
    ``(..., P)``; x: ``(..., P)`` (broadcast against logits) with values in ``[0, 1]`` (a
    normalised log-likelihood only for binary x). Returns ``(...)``, in nats.
    """
    logits = _validate.real_array(logits, "logits")
    x = _unit_interval(_validate.real_array(x, "x"), "x")
    try:
        jnp.broadcast_shapes(logits.shape, x.shape)
    except ValueError:
        raise ValueError(f"x of shape {x.shape} does not broadcast against logits of shape "
                         f"{logits.shape}") from None
    return _bernoulli_ll(logits, x)


def binarize(key, images) -> Array:
    """Dynamic binarisation: each pixel becomes 1 with probability its intensity.

    images: any shape, values in ``[0, 1]``. Returns float32 of the same shape, in ``{0, 1}``;
    a new key gives a new draw (for training batches; the fixed test set is
    ``course_lib.data.binarize_fixed``).
    """
    key = _validate.key(key)
    images = _unit_interval(_validate.real_array(images, "images"), "images")
    return jax.random.bernoulli(key, images).astype(jnp.float32)


# ------------------------------------------------------------------------------ argument checks
def _same_shape(a: Array, b: Array, name_a: str, name_b: str) -> None:
    if a.shape != b.shape:
        raise ValueError(f"{name_a} must have the shape of {name_b} {b.shape}, got {a.shape}")


def _unit_interval(x: Array, name: str) -> Array:
    if _validate.is_concrete(x) and x.size:
        values = np.asarray(x)       # on the host, as real_array's finiteness check: no dispatch
        lo, hi = float(values.min()), float(values.max())
        if lo < 0.0 or hi > 1.0:
            raise ValueError(f"{name} must lie in [0, 1] (pixel intensities or bits), got "
                             f"values in [{lo:.4g}, {hi:.4g}]")
    return x


def _beta(beta) -> float | Array:
    if isinstance(beta, jax.core.Tracer):
        return beta
    return _validate.real(beta, "beta", low=0.0)


def _hidden(hidden) -> tuple[int, ...]:
    if isinstance(hidden, (int, np.integer)) or not isinstance(hidden, Sequence):
        raise ValueError(f"hidden must be a sequence of layer widths, e.g. (512,), got {hidden!r}")
    return tuple(_validate.count(h, f"hidden[{i}]") for i, h in enumerate(hidden))


def _image_shape(image_shape) -> tuple[int, ...]:
    if not isinstance(image_shape, Sequence) or not image_shape:
        raise ValueError(f"image_shape must be a non-empty tuple such as (28, 28), got "
                         f"{image_shape!r}")
    return tuple(_validate.count(s, f"image_shape[{i}]") for i, s in enumerate(image_shape))


def _images(model, x, name: str = "x") -> Array:
    """``x`` as ``(B, P)`` float, checked against the model's image shape and ``[0, 1]``."""
    x = _validate.real_array(x, name)
    shape, pixels = model.image_shape, model.n_pixels
    if x.ndim >= 2 and x.shape[1:] == shape:
        x = x.reshape(x.shape[0], pixels)
    elif not (x.ndim == 2 and x.shape[1] == pixels):
        raise ValueError(f"{name} must be a batch of images of shape (B, {', '.join(map(str, shape))}) "
                         f"or (B, {pixels}), got shape {tuple(x.shape)}")
    if x.shape[0] == 0:
        raise ValueError(f"{name} must hold at least one image, got shape {tuple(x.shape)}")
    return _unit_interval(x, name)


def _labels(model, labels, batch: int) -> Array | None:
    return _validate.class_labels(labels, getattr(model, "n_classes", 0), batch,
                                  type(model).__name__)


def _check_model(model, name: str = "model", *, kind=None) -> None:
    kind = kind or (VAE,)
    if not isinstance(model, kind):
        want = " or ".join(k.__name__ for k in kind)
        raise ValueError(f"{name} must be a course_lib.vae.{want}, got {type(model).__name__}")


# ------------------------------------------------------------------------------ models
class _Body(nnx.Module):
    """``[Linear -> relu] * len(hidden)``: ``(..., in_features) -> (..., hidden[-1])``."""

    def __init__(self, in_features: int, hidden: Sequence[int], *, rngs: nnx.Rngs):
        widths = (in_features, *hidden)
        self.layers = nnx.List([nnx.Linear(a, b, rngs=rngs) for a, b in zip(widths[:-1], widths[1:])])
        self.out_features = widths[-1]

    def __call__(self, x: Array) -> Array:
        for layer in self.layers:
            x = nnx.relu(layer(x))
        return x


class Encoder(nnx.Module):
    """Gaussian encoder ``q(z|x)``: an MLP body, then two linear heads.

    ``__call__(x (..., in_features)) -> (mean (..., D), log_var (..., D))``.
    """

    def __init__(self, in_features: int, hidden: Sequence[int], latent_size: int, *,
                 rngs: nnx.Rngs):
        in_features = _validate.count(in_features, "in_features")
        latent_size = _validate.count(latent_size, "latent_size")
        self.body = _Body(in_features, _hidden(hidden), rngs=rngs)
        self.mean_head = nnx.Linear(self.body.out_features, latent_size, rngs=rngs)
        self.log_var_head = nnx.Linear(self.body.out_features, latent_size, rngs=rngs)

    def __call__(self, x: Array) -> tuple[Array, Array]:
        h = self.body(x)
        return self.mean_head(h), self.log_var_head(h)


class Decoder(nnx.Module):
    """Bernoulli decoder ``p(x|z)``: an MLP from ``z`` to one logit per pixel.

    ``__call__(z (..., latent_size)) -> logits (..., out_features)``.
    """

    def __init__(self, latent_size: int, hidden: Sequence[int], out_features: int, *,
                 rngs: nnx.Rngs):
        latent_size = _validate.count(latent_size, "latent_size")
        out_features = _validate.count(out_features, "out_features")
        self.body = _Body(latent_size, _hidden(hidden), rngs=rngs)
        self.logits_head = nnx.Linear(self.body.out_features, out_features, rngs=rngs)

    def __call__(self, z: Array) -> Array:
        return self.logits_head(self.body(z))


def _set_sizes(model, latent_size, image_shape, hidden) -> tuple[int, ...]:
    """Checks and stores ``latent_size``, ``image_shape`` and ``n_pixels``; returns ``hidden``."""
    model.latent_size = _validate.count(latent_size, "latent_size")
    model.image_shape = _image_shape(image_shape)
    model.n_pixels = int(np.prod(model.image_shape))
    return _hidden(hidden)


class VAE(nnx.Module):
    """MLP VAE for binarised images: Gaussian encoder, ``N(0, I)`` prior, Bernoulli decoder.

    latent_size: ``D`` (2 for a plotted latent space, 16-32 otherwise); hidden: the encoder's
    layer widths (the decoder mirrors them); image_shape: ``(H, W)`` (``P = H * W`` pixels).
    ``encode(x (B, P)) -> (mean, log_var)`` each ``(B, D)``; ``decode(z (..., D)) -> logits
    (..., P)``. Use :func:`elbo`, :func:`iwae_bound`, :func:`generate` rather than calling
    the networks on raw arrays: they check the inputs.
    """

    n_classes = 0

    def __init__(self, latent_size: int = 16, *, hidden: Sequence[int] = (512,),
                 image_shape: Sequence[int] = IMAGE_SHAPE, rngs: nnx.Rngs):
        hidden = _set_sizes(self, latent_size, image_shape, hidden)
        c = self.n_classes
        self.encoder = Encoder(self.n_pixels + c, hidden, self.latent_size, rngs=rngs)
        self.decoder = Decoder(self.latent_size + c, hidden[::-1], self.n_pixels, rngs=rngs)

    def _with_label(self, h: Array, labels: Array | None) -> Array:
        if self.n_classes == 0:
            return h
        onehot = jax.nn.one_hot(labels, self.n_classes, dtype=h.dtype)
        return jnp.concatenate([h, jnp.broadcast_to(onehot, h.shape[:-1] + onehot.shape[-1:])],
                               axis=-1)

    def encode(self, x: Array, labels: Array | None = None) -> tuple[Array, Array]:
        """``q(z|x)``'s ``(mean, log_var)``, each ``(B, D)``, for flattened ``x (B, P)``."""
        return self.encoder(self._with_label(x, labels))

    def decode(self, z: Array, labels: Array | None = None) -> Array:
        """Bernoulli logits ``(..., B, P)`` of ``p(x|z)`` for ``z (..., B, D)``."""
        return self.decoder(self._with_label(z, labels))


class ConditionalVAE(VAE):
    """A VAE conditioned on a class label: ``q(z|x, y)``, ``p(x|z, y)``, prior ``N(0, I)``.

    The label's one-hot vector (``C`` entries) is concatenated to the encoder's input and to
    the decoder's latent. Every function that takes a model then needs ``labels (B,)``.
    """

    def __init__(self, latent_size: int = 16, *, n_classes: int = 10,
                 hidden: Sequence[int] = (512,), image_shape: Sequence[int] = IMAGE_SHAPE,
                 rngs: nnx.Rngs):
        self.n_classes = _validate.count(n_classes, "n_classes")
        super().__init__(latent_size, hidden=hidden, image_shape=image_shape, rngs=rngs)


class Autoencoder(nnx.Module):
    """Deterministic autoencoder: the VAE's encoder body, one linear code head, the decoder.

    ``encode(x (B, P)) -> code (B, D)``; ``decode(code (..., D)) -> logits (..., P)``. Trained
    by reconstruction alone (:func:`autoencoder_step`), nothing shapes its code space.
    """

    n_classes = 0

    def __init__(self, latent_size: int = 16, *, hidden: Sequence[int] = (512,),
                 image_shape: Sequence[int] = IMAGE_SHAPE, rngs: nnx.Rngs):
        hidden = _set_sizes(self, latent_size, image_shape, hidden)
        self.body = _Body(self.n_pixels, hidden, rngs=rngs)
        self.code_head = nnx.Linear(self.body.out_features, self.latent_size, rngs=rngs)
        self.decoder = Decoder(self.latent_size, hidden[::-1], self.n_pixels, rngs=rngs)

    def encode(self, x: Array, labels: Array | None = None) -> Array:
        """The code ``(B, D)`` of flattened images ``x (B, P)``."""
        return self.code_head(self.body(x))

    def decode(self, z: Array, labels: Array | None = None) -> Array:
        """Bernoulli logits ``(..., P)`` for codes ``z (..., D)``."""
        return self.decoder(z)


# ------------------------------------------------------------------------------ the ELBO
def _elbo(key: Array, model: VAE, x: Array, labels, beta, n: int) -> ELBO:
    mean, log_var = model.encode(x, labels)
    z = _reparameterize(key, mean, log_var, n)                       # (n, B, D)
    reconstruction = jnp.mean(_bernoulli_ll(model.decode(z, labels), x), axis=0)
    kl = _gaussian_kl(mean, log_var)
    return ELBO(reconstruction - beta * kl, reconstruction, kl)


def _reduce(out, per_example: bool):
    return out if per_example else jax.tree.map(jnp.mean, out)


@nnx.jit(static_argnames=("n", "per_example"))
def _elbo_jit(key, model, x, labels, beta, n, per_example):
    return _reduce(_elbo(key, model, x, labels, beta, n), per_example)


def elbo(key, model: VAE, x, *, labels=None, beta: float = 1.0, n: int = 1,
         per_example: bool = False) -> ELBO:
    """The (beta-)ELBO of images ``x`` under a :class:`VAE`: :class:`ELBO` in nats.

    ``ELBO(x) = E_{q(z|x)}[log p(x|z)] - beta KL(q(z|x) || N(0, I))`` (``beta = 1``: the
    evidence lower bound, ``<= log p(x)``). The expectation is the mean over ``n``
    reparameterised draws ``z = mu + sigma * eps`` (unbiased; differentiable in the model's
    parameters), the KL is exact (:func:`gaussian_kl`).

    x: ``(B, H, W)`` or ``(B, P)`` in ``[0, 1]``; labels: ``(B,)`` class ids, for a
    :class:`ConditionalVAE` only; beta ``>= 0``. Returns ``(B,)`` fields with
    ``per_example=True``, else their batch means.
    """
    _check_model(model)
    key, x = _validate.key(key), _images(model, x)
    labels = _labels(model, labels, x.shape[0])
    beta, n = _beta(beta), _validate.count(n, "n")
    return _elbo_jit(key, model, x, labels, jnp.asarray(beta, x.dtype), n, bool(per_example))


def _split_batch(model, batch) -> tuple[Array, Array | None]:
    if not isinstance(batch, (tuple, list)) or len(batch) not in (1, 2):
        raise ValueError(f"batch must be (x,) or (x, labels), got {type(batch).__name__}")
    x = _images(model, batch[0])
    labels = _labels(model, batch[1] if len(batch) == 2 else None, x.shape[0])
    return x, labels


# ------------------------------------------------------------------------------ generic bounds
def log_importance_weights(key, log_joint: LogJoint, q, *, k: int) -> Array:
    """``log w_j = log p(x, z_j) - log q(z_j)`` for ``k`` draws ``z_j ~ q``: ``(k, ...)``.

    log_joint: ``z (k, ..., D) -> log p(x, z) (k, ...)`` for the data ``x`` it closes over;
    q: a :class:`DiagonalGaussian` or :class:`FullGaussian` with batch shape ``(...)``.
    ``E_q[w] = p(x)``; when ``q`` is the exact posterior every ``log w_j`` equals
    ``log p(x)``.
    """
    z = q.sample(key, k)
    return log_joint(z) - q.log_prob(z)


def elbo_estimate(key, log_joint: LogJoint, q, *, k: int = 1) -> Array:
    """Monte Carlo ELBO ``(1/k) sum_j log w_j`` (:func:`log_importance_weights`): ``(...)``.

    Unbiased for ``ELBO(q) = log p(x) - KL(q || p(z|x))``, for any model given by its
    log-joint; with the exact posterior as ``q`` it is ``log p(x)`` with no variance.
    """
    k = _validate.count(k, "k")
    return jnp.mean(log_importance_weights(_validate.key(key), log_joint, q, k=k), axis=0)


def iwae_estimate(key, log_joint: LogJoint, q, *, k: int, chunk_size: int = 256) -> Array:
    """Importance-weighted bound ``log (1/k) sum_j w_j``, ``z_j ~ q``: ``(...)``, in nats.

    ``E[IWAE_k] <= E[IWAE_{k+1}] <= log p(x)`` (Burda et al., 2016), ``IWAE_1`` is the ELBO
    estimate and ``IWAE_k -> log p(x)`` as ``k`` grows. The ``k`` draws are made
    ``chunk_size`` at a time (chunk ``i`` from ``fold_in(key, i)``) with a running
    log-sum-exp, so memory grows with ``chunk_size``, not ``k`` (``k = 5000`` fits).
    """
    key = _validate.key(key)
    k = _validate.count(k, "k")
    chunk = min(_validate.count(chunk_size, "chunk_size"), k)
    return _iwae_scan(key, log_joint, q, k, chunk)


def _iwae_scan(key, log_joint, q, k: int, chunk: int) -> Array:
    n_chunks = -(-k // chunk)
    batch_shape = q.mean.shape[:-1]

    def body(total, i):
        lw = log_importance_weights(jax.random.fold_in(key, i), log_joint, q, k=chunk)
        valid = (i * chunk + jnp.arange(chunk)) < k                      # last chunk: mask
        lw = jnp.where(valid.reshape((chunk,) + (1,) * len(batch_shape)), lw, -jnp.inf)
        return jnp.logaddexp(total, jax.nn.logsumexp(lw, axis=0)), None

    start = jnp.full(batch_shape, -jnp.inf, q.mean.dtype)
    total, _ = jax.lax.scan(body, start, jnp.arange(n_chunks))
    return total - math.log(k)


# ------------------------------------------------------------------------------ the VAE's log-joint
def _log_joint(model: VAE, x: Array, labels) -> LogJoint:
    def fn(z: Array) -> Array:
        return _bernoulli_ll(model.decode(z, labels), x) + _std_normal_logpdf(z)
    return fn


def log_joint(model: VAE, x, *, labels=None) -> LogJoint:
    """``z (k, B, D) -> log p(x|z) + log p(z)  (k, B)`` for the images ``x`` (checked).

    The model's log-joint, for :func:`elbo_estimate` and :func:`iwae_estimate`.
    """
    _check_model(model)
    x = _images(model, x)
    return _log_joint(model, x, _labels(model, labels, x.shape[0]))


def posterior(model: VAE, x, *, labels=None) -> DiagonalGaussian:
    """The encoder's ``q(z|x)`` for images ``x``: a :class:`DiagonalGaussian`, ``(B, D)``."""
    _check_model(model)
    x = _images(model, x)
    return DiagonalGaussian(*model.encode(x, _labels(model, labels, x.shape[0])))


@nnx.jit(static_argnames=("k", "chunk", "per_example"))
def _iwae_jit(key, model, x, labels, k, chunk, per_example):
    q = DiagonalGaussian(*model.encode(x, labels))
    out = _iwae_scan(key, _log_joint(model, x, labels), q, k, chunk)
    return out if per_example else jnp.mean(out)


def iwae_bound(key, model: VAE, x, *, k: int, labels=None, chunk_size: int = 256,
               per_example: bool = False) -> Array:
    """Importance-weighted estimate of ``log p(x)`` under a :class:`VAE`, with ``k`` samples.

    ``log (1/k) sum_j p(x|z_j) p(z_j) / q(z_j|x)``, ``z_j ~ q(z|x)`` (:func:`iwae_estimate`):
    a lower bound on ``log p(x)`` in expectation, tighter as ``k`` grows (``k = 1``: the
    ELBO's estimate). ``(B,)`` with ``per_example=True``, else the batch mean, in nats.
    Memory: ``B * chunk_size * P`` decoder outputs at a time.
    """
    _check_model(model)
    key, x = _validate.key(key), _images(model, x)
    labels = _labels(model, labels, x.shape[0])
    k = _validate.count(k, "k")
    chunk = min(_validate.count(chunk_size, "chunk_size"), k)
    return _iwae_jit(key, model, x, labels, k, chunk, bool(per_example))


# ------------------------------------------------------------------------------ linear-Gaussian oracle
class LinearGaussian(NamedTuple):
    """``p(z) = N(0, I_D)``, ``p(x|z) = N(W z + b, s^2 I_X)``: weight ``(X, D)``, bias
    ``(X,)``, noise_std ``s > 0``. Its marginal and posterior are Gaussian, in closed form."""

    weight: Array
    bias: Array
    noise_std: Array


def _lg(params: LinearGaussian) -> LinearGaussian:
    if not isinstance(params, LinearGaussian):
        raise ValueError(f"params must be a LinearGaussian, got {type(params).__name__}")
    w = _validate.real_array(params.weight, "params.weight", ndim=2)
    b = _validate.real_array(params.bias, "params.bias", ndim=1)
    if b.shape[0] != w.shape[0]:
        raise ValueError(f"params.bias must have {w.shape[0]} entries (rows of weight), got "
                         f"{b.shape[0]}")
    s = _validate.real(params.noise_std, "params.noise_std", low=0.0, low_open=True)
    return LinearGaussian(w, b, jnp.asarray(s, w.dtype))


def _lg_data(params: LinearGaussian, x) -> Array:
    x = _validate.real_array(x, "x", ndim=2)
    if x.shape[1] != params.weight.shape[0]:
        raise ValueError(f"x must be (B, {params.weight.shape[0]}), got {tuple(x.shape)}")
    return x


def linear_gaussian_log_marginal(params: LinearGaussian, x) -> Array:
    """Exact ``log p(x) = log N(x; b, W W^T + s^2 I)``: x ``(B, X)`` -> ``(B,)``."""
    params = _lg(params)
    x = _lg_data(params, x)
    w, b, s = params
    cov = w @ w.T + s ** 2 * jnp.eye(w.shape[0], dtype=w.dtype)
    chol = jnp.linalg.cholesky(cov)
    return FullGaussian(b, chol).log_prob(x[None])[0]


def linear_gaussian_posterior(params: LinearGaussian, x) -> FullGaussian:
    """Exact ``p(z|x) = N(S W^T (x - b) / s^2, S)``, ``S = (I + W^T W / s^2)^{-1}``.

    Returns a :class:`FullGaussian` with mean ``(B, D)`` and scale_tril ``(B, D, D)``.
    """
    params = _lg(params)
    x = _lg_data(params, x)
    w, b, s = params
    d = w.shape[1]
    cov = jnp.linalg.inv(jnp.eye(d, dtype=w.dtype) + w.T @ w / s ** 2)
    cov = 0.5 * (cov + cov.T)
    mean = (x - b) @ w @ cov / s ** 2                           # cov is symmetric
    chol = jnp.broadcast_to(jnp.linalg.cholesky(cov), (x.shape[0], d, d))
    return FullGaussian(mean, chol)


def linear_gaussian_log_joint(params: LinearGaussian, x) -> LogJoint:
    """``z (k, B, D) -> log N(x; W z + b, s^2 I) + log N(z; 0, I)  (k, B)`` for x ``(B, X)``."""
    params = _lg(params)
    x = _lg_data(params, x)
    w, b, s = params

    def fn(z: Array) -> Array:
        resid = x - (z @ w.T + b)
        log_lik = -0.5 * jnp.sum(_LOG_2PI + 2 * jnp.log(s) + jnp.square(resid) / s ** 2, axis=-1)
        return log_lik + _std_normal_logpdf(z)
    return fn


def linear_gaussian_elbo(params: LinearGaussian, x, q) -> Array:
    """``ELBO(q) = E_q[log p(x, z)] + H(q)`` in closed form, for a Gaussian ``q``: ``(B,)``.

    With ``q = N(m, S)``: ``E_q log p(x|z) = -X/2 log(2 pi s^2) - (|x - W m - b|^2 +
    tr(W S W^T)) / (2 s^2)``, ``E_q log p(z) = -D/2 log(2 pi) - (|m|^2 + tr S) / 2``,
    ``H(q) = D/2 log(2 pi e) + 1/2 log det S``. Equals ``log p(x)`` iff q is the posterior.
    """
    params = _lg(params)
    x = _lg_data(params, x)
    w, b, s = params
    if isinstance(q, DiagonalGaussian):
        scale = jnp.exp(0.5 * q.log_var)
        q = FullGaussian(q.mean, scale[..., None] * jnp.eye(scale.shape[-1], dtype=scale.dtype))
    if not isinstance(q, FullGaussian):
        raise ValueError(f"q must be a DiagonalGaussian or FullGaussian, got {type(q).__name__}")
    m, tril = q.mean, q.scale_tril
    cov = tril @ jnp.swapaxes(tril, -1, -2)
    n_x, d = w.shape
    resid = x - (m @ w.T + b)
    trace_wsw = jnp.einsum("ij,...jk,ik->...", w, cov, w)
    expected_lik = (-0.5 * n_x * (_LOG_2PI + 2 * jnp.log(s))
                    - 0.5 * (jnp.sum(jnp.square(resid), -1) + trace_wsw) / s ** 2)
    expected_prior = -0.5 * d * _LOG_2PI - 0.5 * (jnp.sum(jnp.square(m), -1)
                                                  + jnp.trace(cov, axis1=-2, axis2=-1))
    log_det = 2 * jnp.sum(jnp.log(jnp.abs(jnp.diagonal(tril, axis1=-2, axis2=-1))), -1)
    entropy = 0.5 * d * (_LOG_2PI + 1.0) + 0.5 * log_det
    return expected_lik + expected_prior + entropy


# ------------------------------------------------------------------------------ gradient estimators
def _check_toy(key, f, mean, log_var, n):
    if not callable(f):
        raise ValueError(f"f must be callable as f(z (D,)) -> scalar, got {type(f).__name__}")
    key = _validate.key(key)
    mean = _validate.real_array(mean, "mean", ndim=1)
    log_var = _validate.real_array(log_var, "log_var", ndim=1)
    _same_shape(log_var, mean, "log_var", "mean")
    return key, mean, log_var, _validate.count(n, "n", minimum=2)


def _score_function(f, mean, log_var, eps) -> Gradients:
    def one(e):
        z = mean + jnp.exp(0.5 * log_var) * e
        score = jax.grad(lambda m, lv: DiagonalGaussian(m, lv).log_prob(jax.lax.stop_gradient(z)),
                         argnums=(0, 1))(mean, log_var)
        return Gradients(*(f(z) * g for g in score))
    return jax.vmap(one)(eps)


def _reparameterized(f, mean, log_var, eps) -> Gradients:
    def one(e):
        return Gradients(*jax.grad(lambda m, lv: f(m + jnp.exp(0.5 * lv) * e),
                                   argnums=(0, 1))(mean, log_var))
    return jax.vmap(one)(eps)


def score_function_gradient(key, f: Callable[[Array], Array], mean, log_var, *,
                            n: int) -> Gradients:
    """``n`` single-draw score-function (REINFORCE) estimates of ``grad E_q[f(z)]``.

    ``grad_theta E_q[f] = E_q[f(z) grad_theta log q(z)]`` with ``q = N(mean,
    diag(exp(log_var)))``: needs only values of ``f``, but its variance grows with ``f``'s
    size. f: ``(D,) -> scalar``; mean, log_var ``(D,)``. Returns :class:`Gradients` of
    ``(n, D)`` arrays (the draws use the same noise as :func:`reparameterized_gradient`).
    """
    key, mean, log_var, n = _check_toy(key, f, mean, log_var, n)
    eps = jax.random.normal(key, (n,) + mean.shape, mean.dtype)
    return _score_function(f, mean, log_var, eps)


def reparameterized_gradient(key, f: Callable[[Array], Array], mean, log_var, *,
                             n: int) -> Gradients:
    """``n`` single-draw reparameterised (pathwise) estimates of ``grad E_q[f(z)]``.

    ``E_q[f(z)] = E_eps[f(mean + exp(log_var / 2) eps)]``, differentiated inside the
    expectation: needs ``f``'s gradient, usually far lower variance. Shapes as in
    :func:`score_function_gradient`.
    """
    key, mean, log_var, n = _check_toy(key, f, mean, log_var, n)
    eps = jax.random.normal(key, (n,) + mean.shape, mean.dtype)
    return _reparameterized(f, mean, log_var, eps)


def compare_gradient_estimators(key, f: Callable[[Array], Array], mean, log_var, *,
                                n: int) -> EstimatorComparison:
    """Both estimators of ``grad E_q[f(z)]`` on the same ``n`` draws: their means and
    per-draw variances (:class:`EstimatorComparison`, each field ``(D,)`` per parameter)."""
    key, mean, log_var, n = _check_toy(key, f, mean, log_var, n)
    eps = jax.random.normal(key, (n,) + mean.shape, mean.dtype)
    sf, rp = _score_function(f, mean, log_var, eps), _reparameterized(f, mean, log_var, eps)

    def stats(g: Gradients):
        return (Gradients(*(jnp.mean(a, 0) for a in g)),
                Gradients(*(jnp.var(a, 0, ddof=1) for a in g)))
    return EstimatorComparison(*stats(sf), *stats(rp))


# ------------------------------------------------------------------------------ training steps
def _vae_step_body(key, model, optimizer, x, labels, beta):
    def loss_fn(m):
        out = _reduce(_elbo(key, m, x, labels, beta, 1), False)
        return -out.elbo, out

    (loss, out), grads = nnx.value_and_grad(loss_fn, has_aux=True)(model)
    optimizer.update(model, grads)
    return {"loss": loss, "elbo": out.reconstruction - out.kl,
            "reconstruction": out.reconstruction, "kl": out.kl}


def _vae_update(key, model, optimizer, x, labels, beta, binarize: bool):
    bits_key, step_key = jax.random.split(key)
    if binarize:
        x = jax.random.bernoulli(bits_key, x).astype(x.dtype)
    return _vae_step_body(step_key, model, optimizer, x, labels, beta)


# graph=False (modules passed as pytrees): the same computation with less Python work per
# call than the default graph mode (about 5 ms of a 20 ms step at notebook 08's full scale)
_vae_step = nnx.jit(_vae_step_body, graph=False)
_vae_update_jit = nnx.jit(_vae_update, static_argnames=("binarize",), graph=False)


def vae_step(key, model: VAE, optimizer: nnx.Optimizer, x, *, labels=None,
             beta: float = 1.0) -> dict[str, Array]:
    """One compiled optimizer step on ``-(E_q log p(x|z) - beta KL)``, in place.

    x: a batch ``(B, H, W)`` or ``(B, P)`` in ``[0, 1]`` (already binarised); labels for a
    :class:`ConditionalVAE`; ``key`` draws the reparameterisation noise; beta ``>= 0``
    (traced: a sweep over beta compiles once). Returns batch means ``{"loss", "elbo"
    (beta = 1), "reconstruction", "kl"}``. Callable inside ``nnx.jit`` (shape checks only).
    """
    _check_model(model)
    key, x = _validate.key(key), _images(model, x)
    labels = _labels(model, labels, x.shape[0])
    beta = _beta(beta)
    return _vae_step(key, model, optimizer, x, labels, jnp.asarray(beta, x.dtype))


def _autoencoder_loss(model: Autoencoder, x: Array) -> Array:
    return -jnp.mean(_bernoulli_ll(model.decode(model.encode(x)), x))


def autoencoder_loss(model: Autoencoder, x) -> Array:
    """Mean reconstruction loss ``-log p(x | decode(encode(x)))`` (Bernoulli), in nats."""
    _check_model(model, kind=(Autoencoder,))
    return _autoencoder_loss(model, _images(model, x))


@nnx.jit
def _autoencoder_step(model, optimizer, x):
    loss, grads = nnx.value_and_grad(_autoencoder_loss)(model, x)
    optimizer.update(model, grads)
    return {"loss": loss}


def autoencoder_step(model: Autoencoder, optimizer: nnx.Optimizer, x) -> dict[str, Array]:
    """One compiled optimizer step on :func:`autoencoder_loss`, in place: ``{"loss"}``."""
    _check_model(model, kind=(Autoencoder,))
    return _autoencoder_step(model, optimizer, _images(model, x))


def make_vae_update(*, beta: float = 1.0, dynamic_binarization: bool = True):
    """``update(state, batch, key, step) -> metrics`` for ``course_lib.train.loop``.

    state: ``{"model": VAE, "optimizer": nnx.Optimizer}``; batch: ``(x,)`` or ``(x,
    labels)`` with ``x`` intensities in ``[0, 1]``, binarised afresh from ``key`` when
    ``dynamic_binarization`` (the training half of the binarised-MNIST protocol); the rest of
    ``key`` drives :func:`vae_step`.
    """
    beta = _beta(beta)
    dynamic_binarization = bool(dynamic_binarization)

    def update(state, batch, key, step=None):
        model = state["model"]
        _check_model(model)
        x, labels = _split_batch(model, batch)
        # key split, binarisation and vae_step in one compiled call (the same numbers as
        # binarize(bits_key, x) then vae_step(step_key, ...), with one dispatch per step)
        return _vae_update_jit(_validate.key(key), model, state["optimizer"], x, labels,
                               jnp.asarray(beta, x.dtype), binarize=dynamic_binarization)
    return update


def make_vae_eval(*, n: int = 1):
    """``eval_fn(state, batch, key) -> {"loss" (-ELBO), "reconstruction", "kl"}`` batch
    means for ``course_lib.train.loop`` (state as in :func:`make_vae_update`; the batch is
    scored as given, e.g. the fixed binarised test set; ``n`` draws per image)."""
    n = _validate.count(n, "n")

    def eval_fn(state, batch, key):
        model = state["model"]
        x, labels = _split_batch(model, batch)
        out = elbo(key, model, x, labels=labels, n=n)
        return {"loss": -out.elbo, "reconstruction": out.reconstruction, "kl": out.kl}
    return eval_fn


# ------------------------------------------------------------------------------ using a trained model
def generate(key, model: VAE, n: int, *, labels=None) -> Array:
    """``n`` images from the model: ``z ~ N(0, I)``, pixel probabilities ``sigmoid(decode(z))``.

    Returns ``(n, H, W)`` Bernoulli means in ``[0, 1]`` (the usual way to show VAE samples;
    ``binarize`` them for binary draws). labels ``(n,)`` for a :class:`ConditionalVAE`.
    """
    _check_model(model)
    key, n = _validate.key(key), _validate.count(n, "n")
    labels = _labels(model, labels, n)
    z = jax.random.normal(key, (n, model.latent_size))
    return jax.nn.sigmoid(model.decode(z, labels)).reshape((n,) + model.image_shape)


def reconstruct(model, x, *, labels=None) -> Array:
    """Decode the encoder's mean code: ``sigmoid(decode(mu(x)))`` ``(B, H, W)`` in ``[0, 1]``
    (for an :class:`Autoencoder`, its code)."""
    _check_model(model, kind=(VAE, Autoencoder))
    x = _images(model, x)
    labels = _labels(model, labels, x.shape[0])
    code = model.encode(x, labels)
    code = code[0] if isinstance(code, tuple) else code
    return jax.nn.sigmoid(model.decode(code, labels)).reshape((x.shape[0],) + model.image_shape)


def anomaly_score(key, model: VAE, x, *, labels=None, n: int = 1) -> Array:
    """Negative ELBO per image ``(B,)``, in nats: higher means less like the training data."""
    return -elbo(key, model, x, labels=labels, n=n, per_example=True).elbo


def roc_auc(scores, labels) -> float:
    """Area under the ROC curve: ``P(s+ > s-) + P(s+ = s-) / 2`` over positive/negative pairs.

    scores: ``(N,)`` real (higher = more positive); labels: ``(N,)`` in ``{0, 1}`` (1 =
    positive), both classes present. Ties count one half (the Mann-Whitney statistic, as
    ``sklearn.metrics.roc_auc_score``). O(N log N).
    """
    scores = np.asarray(_validate.real_array(scores, "scores", ndim=1), np.float64)
    labels = np.asarray(_validate.ids(labels, "labels", 2, ndim=1, what="binary labels"))
    if labels.shape != scores.shape:
        raise ValueError(f"labels must have the shape of scores {scores.shape}, got {labels.shape}")
    pos, neg = scores[labels == 1], np.sort(scores[labels == 0])
    if pos.size == 0 or neg.size == 0:
        raise ValueError("labels must contain both classes (0 and 1) to define a ROC curve")
    below = np.searchsorted(neg, pos, side="left")
    ties = np.searchsorted(neg, pos, side="right") - below
    return float((below.sum() + 0.5 * ties.sum()) / (pos.size * neg.size))
