"""Generative adversarial networks: the minimax game, its losses, WGAN, mode coverage, DCGAN.

The game (Goodfellow et al. 2014, as the syllabus's notes write it)::

    min_G max_D V(D, G) = E_{x ~ p_data}[log D(x)] + E_{z ~ p_z}[log(1 - D(G(z)))]

For a fixed generator the best discriminator is ``D*(x) = p_data(x) / (p_data(x) + p_g(x))``
and ``V(D*, G) = -log 4 + 2 JS(p_data || p_g)`` (:func:`optimal_discriminator`,
:func:`minimax_value`, :func:`js_divergence`): the generator's best reply to a perfect
discriminator minimises a Jensen-Shannon divergence, and ``p_g = p_data`` is the minimum.

A GAN is adversarial (a zero-sum game, not a cooperative one), and in a DCGAN the *generator*
upsamples with transposed convolutions while the *discriminator* is an ordinary downsampling
CNN (the notes have these backwards: syllabus erratum 3).

Conventions:

* Discriminators return **logits** ``a`` of shape ``(B,)``; ``D(x) = sigmoid(a)``. Every loss
  is written on logits with ``softplus`` (``-log sigmoid(a) = softplus(-a)``,
  ``-log(1 - sigmoid(a)) = softplus(a)``), which never takes the log of 0.
* A WGAN critic returns an unbounded score of shape ``(B,)`` (the same modules serve).
* Generators map latents ``z (B, latent_dim)`` (and, when class-conditional, integer
  ``labels (B,)``) to samples ``(B, *out_shape)``; images are channels-last ``(B, H, W, C)``
  with values in ``[-1, 1]`` (``tanh`` output): scale data as ``2 x - 1``.
* Training steps (:func:`discriminator_step`, :func:`critic_step`, :func:`generator_step`,
  :func:`gan_step`) take ``(models..., optimizers..., x, *, key)`` and return a dict of scalar
  metrics; they are compiled (``nnx.jit``) and update the models and ``nnx.Optimizer`` objects
  in place, so they plug into ``course_lib.train.loop`` as
  ``update = lambda s, batch, key, t: gan.gan_step(s["g"], s["d"], s["g_opt"], s["d_opt"],
  batch[0], key=key)``.
"""
from __future__ import annotations

import math
from functools import partial
from typing import NamedTuple, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from course_lib import _validate

Array = jax.Array

__all__ = [
    # closed forms
    "optimal_discriminator", "minimax_value", "js_divergence",
    # losses
    "discriminator_loss", "generator_loss", "generator_gradient_magnitude",
    "critic_loss", "wasserstein_generator_loss", "critic_gradient_norm", "gradient_penalty",
    "clip_weights",
    # 2-D mixtures and mode coverage
    "Mixture", "ring_mixture", "grid_mixture", "ModeCoverage", "mode_coverage",
    # models
    "MLPGenerator", "MLPDiscriminator", "DCGANGenerator", "DCGANDiscriminator",
    "conv_transpose_output_size", "check_pair",
    # training steps
    "discriminator_step", "critic_step", "generator_step", "gan_step",
    "gan_state", "gan_update", "train_gan", "train_dcgan_mnist",
    # sampling
    "sample", "latent_interpolation", "image_grid", "sample_grid",
]

LOG4 = math.log(4.0)


# ------------------------------------------------------------------------ checks
def _option(value, name: str, choices: Sequence[str]) -> str:
    if value not in choices:
        raise ValueError(f"{name} must be one of {', '.join(map(repr, choices))}, got {value!r}")
    return value


def _same_shape(a: Array, b: Array, name_a: str, name_b: str) -> None:
    if a.shape != b.shape:
        raise ValueError(f"{name_a} and {name_b} must have the same shape, got "
                         f"{tuple(a.shape)} and {tuple(b.shape)}")


# ------------------------------------------------------------------- closed forms
def optimal_discriminator(p_data, p_g) -> Array:
    """The best discriminator for a fixed generator: ``D*(x) = p_data(x) / (p_data(x) + p_g(x))``.

    ``p_data``, ``p_g``: non-negative probabilities (or densities) of the same shape, one per
    point ``x``. Where both are 0 no sample ever lands and ``D*`` is arbitrary: 1/2 is returned.
    """
    p_data = _validate.real_array(p_data, "p_data")
    p_g = _validate.real_array(p_g, "p_g")
    _same_shape(p_data, p_g, "p_data", "p_g")
    for p, name in ((p_data, "p_data"), (p_g, "p_g")):
        if _validate.is_concrete(p) and bool(jnp.any(p < 0)):
            raise ValueError(f"{name} must be non-negative (probabilities or densities)")
    total = p_data + p_g
    return jnp.where(total > 0, p_data / jnp.where(total > 0, total, 1.0), 0.5)


def minimax_value(d, p_data, p_g) -> Array:
    """``V(D, G) = sum_x p_data(x) log D(x) + sum_x p_g(x) log(1 - D(x))`` on a discrete space.

    ``d``: the discriminator's probabilities ``D(x)`` in ``[0, 1]``; ``p_data``, ``p_g``: two
    distributions over the same points (each sums to 1; all three arrays of one shape). A 1-D
    density is used by discretising it on a grid (``p * dx``, renormalised). ``0 log 0 = 0``,
    so ``D* = 1`` where ``p_g = 0`` is allowed. In nats; at ``D*`` it equals
    ``-log 4 + 2 JS(p_data || p_g)``.
    """
    d = _validate.real_array(d, "d")
    p_data = _validate.probabilities(p_data, "p_data", axis=None)
    p_g = _validate.probabilities(p_g, "p_g", axis=None)
    _same_shape(p_data, p_g, "p_data", "p_g")
    _same_shape(d, p_data, "d", "p_data")
    if _validate.is_concrete(d) and bool(jnp.any((d < 0) | (d > 1))):
        raise ValueError("d must hold probabilities D(x) in [0, 1]")
    return (jnp.sum(jax.scipy.special.xlogy(p_data, d))
            + jnp.sum(jax.scipy.special.xlogy(p_g, 1.0 - d)))


def js_divergence(p, q) -> Array:
    """Jensen-Shannon divergence in nats: ``JS = KL(p || m) / 2 + KL(q || m) / 2``, ``m = (p + q) / 2``.

    ``p``, ``q``: distributions of the same shape (each sums to 1). ``0 <= JS <= log 2``, 0
    only for ``p = q``, ``log 2`` for disjoint supports.
    """
    p = _validate.probabilities(p, "p", axis=None)
    q = _validate.probabilities(q, "q", axis=None)
    _same_shape(p, q, "p", "q")
    m = 0.5 * (p + q)
    safe_m = jnp.where(m > 0, m, 1.0)
    kl_pm = jnp.sum(jax.scipy.special.xlogy(p, p) - jax.scipy.special.xlogy(p, safe_m))
    kl_qm = jnp.sum(jax.scipy.special.xlogy(q, q) - jax.scipy.special.xlogy(q, safe_m))
    return jnp.maximum(0.5 * (kl_pm + kl_qm), 0.0)


# ------------------------------------------------------------------------- losses
def _logits(a, name: str) -> Array:
    a = _validate.real_array(a, name)
    if a.ndim < 1:
        raise ValueError(f"{name} must hold one logit or score per example (B,), got a scalar")
    return a


def _d_loss(real_logits: Array, fake_logits: Array) -> Array:
    return jnp.mean(jax.nn.softplus(-real_logits)) + jnp.mean(jax.nn.softplus(fake_logits))


def _g_loss(fake_logits: Array, saturating: bool) -> Array:
    if saturating:
        return -jnp.mean(jax.nn.softplus(fake_logits))       # mean log(1 - D(G(z)))
    return jnp.mean(jax.nn.softplus(-fake_logits))           # mean -log D(G(z))


def discriminator_loss(real_logits, fake_logits) -> Array:
    """Binary cross-entropy of the discriminator, on logits (real labelled 1, fake 0).

    ``L_D = -E[log D(x)] - E[log(1 - D(G(z)))] = mean softplus(-a_real) + mean softplus(a_fake)``
    with ``D = sigmoid(a)``; ``real_logits (B,)``, ``fake_logits (B',)``. ``L_D = -V(D, G)``:
    minimising it is the discriminator's half of the minimax game. A discriminator that cannot
    tell (``a = 0``) scores ``2 log 2 = log 4``.
    """
    return _d_loss(_logits(real_logits, "real_logits"), _logits(fake_logits, "fake_logits"))


def generator_loss(fake_logits, *, saturating: bool = False) -> Array:
    """The generator's loss on the discriminator's logits ``fake_logits (B,)`` of its samples.

    * ``saturating=True``: the minimax game's own term, ``E[log(1 - D(G(z)))] =
      -mean softplus(a)``, minimised by G. Its gradient vanishes when D confidently rejects
      the fakes (``D(G(z)) -> 0``), which is the situation early in training.
    * ``saturating=False`` (default, used in practice): ``-E[log D(G(z))] = mean softplus(-a)``;
      the same fixed point, strong gradients where the generator is bad.
    """
    return _g_loss(_logits(fake_logits, "fake_logits"), bool(saturating))


def generator_gradient_magnitude(d_fake, *, saturating: bool, wrt: str = "logit") -> Array:
    """``|dL_G / da|`` (``wrt="logit"``) or ``|dL_G / dD|`` (``wrt="probability"``) at ``D = d_fake``.

    ``d_fake``: values of ``D(G(z))`` in ``(0, 1)``, any shape. With ``D = sigmoid(a)``:

    ============  =====================  ==========================
    loss           ``|dL/da|``            ``|dL/dD|``
    ============  =====================  ==========================
    saturating     ``D``                 ``1 / (1 - D)``
    non-sat.       ``1 - D``             ``1 / D``
    ============  =====================  ==========================

    The logit column is what reaches the generator through the discriminator's last layer:
    the saturating loss gives almost no gradient where ``D(G(z)) ~ 0`` (a bad generator that
    the discriminator rejects), the non-saturating one its largest.
    """
    d = _validate.real_array(d_fake, "d_fake")
    if _validate.is_concrete(d) and bool(jnp.any((d <= 0) | (d >= 1))):
        raise ValueError("d_fake must hold probabilities D(G(z)) strictly inside (0, 1)")
    wrt = _option(wrt, "wrt", ("logit", "probability"))
    if wrt == "logit":
        return d if saturating else 1.0 - d
    return 1.0 / (1.0 - d) if saturating else 1.0 / d


def critic_loss(real_scores, fake_scores) -> Array:
    """The WGAN critic's loss ``mean f(G(z)) - mean f(x)`` (``real_scores (B,)``, ``fake_scores (B',)``).

    Minimising it maximises ``E[f(x)] - E[f(G(z))]``, which for a 1-Lipschitz ``f`` at its best
    is the Wasserstein-1 (earth mover's) distance between ``p_data`` and ``p_g``. The
    Lipschitz constraint is enforced by :func:`gradient_penalty` or :func:`clip_weights`.
    """
    return (jnp.mean(_logits(fake_scores, "fake_scores"))
            - jnp.mean(_logits(real_scores, "real_scores")))


def wasserstein_generator_loss(fake_scores) -> Array:
    """The WGAN generator's loss ``-mean f(G(z))`` (``fake_scores (B,)``)."""
    return -jnp.mean(_logits(fake_scores, "fake_scores"))


def _gradient_norms(critic, x: Array, labels) -> Array:
    """``||grad_x f(x_i)||_2`` for each example, ``(B,)`` (the sum over the batch separates)."""
    grads = jax.grad(lambda v: jnp.sum(critic(v, labels)))(x)
    flat = grads.reshape(grads.shape[0], -1)
    return jnp.sqrt(jnp.sum(flat * flat, axis=1) + 1e-12)   # smooth at a zero gradient


def _interpolates(key: Array, x_real: Array, x_fake: Array) -> Array:
    eps = jax.random.uniform(key, (x_real.shape[0],) + (1,) * (x_real.ndim - 1), x_real.dtype)
    return eps * x_real + (1.0 - eps) * x_fake


def critic_gradient_norm(critic, x, *, labels=None) -> Array:
    """Per-example gradient norms ``||grad_x f(x_i)||_2 (B,)`` of a critic at the points ``x``.

    ``critic``: a module mapping ``(x (B, ...), labels)`` to scores ``(B,)``, without batch
    norm (one example's score must not depend on the others'). ``x``: points ``(B, *in_shape)``.
    """
    _check_no_batch_norm(critic, "critic")
    x = _model_input(critic, x, "x", "critic")
    labels = _labels(critic, labels, x.shape[0], "critic")
    return _gradient_norms(critic, x, labels)


def gradient_penalty(key, critic, x_real, x_fake, *, labels=None) -> Array:
    """WGAN-GP's penalty ``mean_i (||grad f(x_hat_i)||_2 - 1)^2`` (Gulrajani et al. 2017).

    ``x_hat_i = e_i x_real_i + (1 - e_i) x_fake_i`` with ``e_i ~ U(0, 1)`` drawn from ``key``:
    random points on the segments between real and generated samples, where the optimal
    critic has gradient norm 1. ``x_real``, ``x_fake``: ``(B, *in_shape)``. Added to
    :func:`critic_loss` with a weight (10 in the paper). The critic must not use batch norm.
    """
    key = _validate.key(key)
    _check_no_batch_norm(critic, "critic")
    x_real = _model_input(critic, x_real, "x_real", "critic")
    x_fake = _model_input(critic, x_fake, "x_fake", "critic")
    _same_shape(x_real, x_fake, "x_real", "x_fake")
    labels = _labels(critic, labels, x_real.shape[0], "critic")
    norms = _gradient_norms(critic, _interpolates(key, x_real, x_fake), labels)
    return jnp.mean((norms - 1.0) ** 2)


def clip_weights(critic: nnx.Module, clip_value: float) -> None:
    """Clip every parameter of ``critic`` to ``[-clip_value, clip_value]``, in place (WGAN, 2017).

    The original WGAN's way to keep the critic Lipschitz (0.01 in the paper). It works, but
    badly: the clipped critic uses few, extreme weights and learns slowly or not at all if
    ``clip_value`` is off by a factor of a few; the gradient penalty replaced it.
    """
    if not isinstance(critic, nnx.Module):
        raise ValueError(f"critic must be an nnx.Module, got {type(critic).__name__}")
    clip_value = _validate.real(clip_value, "clip_value", low=0.0, low_open=True)
    params = nnx.state(critic, nnx.Param)
    nnx.update(critic, jax.tree.map(lambda p: jnp.clip(p, -clip_value, clip_value), params))


# ----------------------------------------------------------- 2-D mixtures, coverage
class Mixture(NamedTuple):
    """Samples of a 2-D Gaussian mixture with equal weights and isotropic components."""

    x: Array          # (n, 2) the samples
    modes: Array      # (n,) index of the component each sample came from
    centres: Array    # (K, 2) the component means
    std: float        # the components' common standard deviation


def _mixture(key, centres: Array, n, std, name_n: str = "n") -> Mixture:
    key = _validate.key(key)
    n = _validate.count(n, name_n)
    std = _validate.real(std, "std", low=0.0, low_open=True)
    k_mode, k_noise = jax.random.split(key)
    modes = jax.random.randint(k_mode, (n,), 0, centres.shape[0])
    x = centres[modes] + std * jax.random.normal(k_noise, (n, 2))
    return Mixture(x, modes, centres, std)


def ring_mixture(key, n, *, n_modes: int = 8, radius: float = 2.0, std: float = 0.02) -> Mixture:
    """``n`` samples of ``n_modes`` equal Gaussians (std ``std``) evenly spaced on a circle.

    Centre ``k`` is ``radius (cos 2 pi k / K, sin 2 pi k / K)``. The defaults (8 modes,
    radius 2, std 0.02) are the benchmark of the mode-collapse literature (unrolled GANs,
    VEEGAN).
    """
    n_modes = _validate.count(n_modes, "n_modes")
    radius = _validate.real(radius, "radius", low=0.0, low_open=True)
    angles = 2 * jnp.pi * jnp.arange(n_modes) / n_modes
    centres = radius * jnp.stack([jnp.cos(angles), jnp.sin(angles)], axis=1)
    return _mixture(key, centres, n, std)


def grid_mixture(key, n, *, side: int = 5, spacing: float = 2.0, std: float = 0.05) -> Mixture:
    """``n`` samples of ``side x side`` equal Gaussians on a square grid centred at 0.

    Centres at ``spacing * (i - (side - 1) / 2, j - (side - 1) / 2)``: the defaults give the
    5x5 grid on ``{-4, -2, 0, 2, 4}^2`` with std 0.05.
    """
    side = _validate.count(side, "side")
    spacing = _validate.real(spacing, "spacing", low=0.0, low_open=True)
    ticks = spacing * (jnp.arange(side) - (side - 1) / 2)
    gx, gy = jnp.meshgrid(ticks, ticks, indexing="ij")
    centres = jnp.stack([gx.ravel(), gy.ravel()], axis=1)
    return _mixture(key, centres, n, std)


class ModeCoverage(NamedTuple):
    """Result of :func:`mode_coverage`."""

    modes_covered: int              # number of modes with >= min_count high-quality samples
    high_quality_fraction: float    # fraction of all samples within 3 std of their nearest mode
    counts: np.ndarray              # (K,) high-quality samples per mode
    min_count: int                  # the threshold used


def mode_coverage(x, centres, std, *, min_count: int | None = None) -> ModeCoverage:
    """How many modes of a mixture a set of samples covers, and how many samples are good.

    Rule (that of the unrolled-GAN and VEEGAN papers, with a threshold that scales with ``n``):

    * a sample is **high quality** when its distance to the *nearest* centre is at most
      ``3 std`` (each coordinate of a true sample is within 3 std 99.7 % of the time; the
      2-D distance is, for 98.9 % of true samples);
    * a mode is **covered** when at least ``min_count`` high-quality samples sit at it;
      by default ``min_count = max(1, ceil(n / (10 K)))``, a tenth of a fair share (32 of
      2500 samples for 8 modes): a few stray samples do not cover a mode.

    ``x (n, D)`` samples, ``centres (K, D)``, ``std`` the components' standard deviation.
    """
    x = np.asarray(_validate.real_array(x, "x", ndim=2), np.float64)
    centres = np.asarray(_validate.real_array(centres, "centres", ndim=2), np.float64)
    if x.shape[1] != centres.shape[1]:
        raise ValueError(f"x and centres must have the same dimension, got x {x.shape} and "
                         f"centres {centres.shape}")
    if x.shape[0] == 0 or centres.shape[0] == 0:
        raise ValueError(f"x and centres must be non-empty, got x {x.shape}, centres "
                         f"{centres.shape}")
    std = _validate.real(std, "std", low=0.0, low_open=True)
    n, k = x.shape[0], centres.shape[0]
    if min_count is None:
        min_count = max(1, math.ceil(n / (10 * k)))
    min_count = _validate.count(min_count, "min_count")
    dist = np.linalg.norm(x[:, None, :] - centres[None, :, :], axis=-1)
    nearest = dist.argmin(axis=1)
    good = dist[np.arange(n), nearest] <= 3.0 * std
    counts = np.bincount(nearest[good], minlength=k)
    return ModeCoverage(int((counts >= min_count).sum()), float(good.mean()), counts, min_count)


# ------------------------------------------------------------------------- models
def _positive(value, name: str) -> int:
    return _validate.count(value, name)


def _n_classes(value) -> int | None:
    return None if value is None else _validate.count(value, "n_classes")


def _one_hot(labels, n_classes: int | None, dtype) -> Array | None:
    return None if n_classes is None else jax.nn.one_hot(labels, n_classes, dtype=dtype)


class MLPGenerator(nnx.Module):
    """``z (B, latent_dim)`` [+ one-hot label] ``-> [Linear -> ReLU] * len(hidden) -> Linear -> (B, out_features)``.

    The small generator of the 2-D experiments (no output non-linearity: the data are
    unbounded points). ``n_classes`` makes it class-conditional (``labels`` concatenated as
    one-hot vectors to ``z``).
    """

    def __init__(self, latent_dim: int = 2, hidden: Sequence[int] = (128, 128),
                 out_features: int = 2, *, n_classes: int | None = None, rngs: nnx.Rngs):
        self.latent_dim = _positive(latent_dim, "latent_dim")
        self.n_classes = _n_classes(n_classes)
        self.out_shape = (_positive(out_features, "out_features"),)
        widths = [self.latent_dim + (self.n_classes or 0)]
        widths += [_positive(h, "hidden[i]") for h in hidden]
        self.layers = nnx.List([nnx.Linear(a, b, rngs=rngs) for a, b in zip(widths[:-1], widths[1:])])
        self.out = nnx.Linear(widths[-1], self.out_shape[0], rngs=rngs)

    def __call__(self, z: Array, labels: Array | None = None) -> Array:
        h = _latent_input(self, z, labels)
        for layer in self.layers:
            h = nnx.relu(layer(h))
        return self.out(h)


class MLPDiscriminator(nnx.Module):
    """``x (B, in_features)`` [+ one-hot label] ``-> [Linear -> LeakyReLU(0.2)] * len(hidden) -> Linear -> logits (B,)``.

    Serves as a GAN discriminator (logits) and as a WGAN critic (scores): it has no batch norm.
    """

    def __init__(self, in_features: int = 2, hidden: Sequence[int] = (128, 128), *,
                 n_classes: int | None = None, rngs: nnx.Rngs):
        self.in_shape = (_positive(in_features, "in_features"),)
        self.n_classes = _n_classes(n_classes)
        self.batch_norm = False
        widths = [self.in_shape[0] + (self.n_classes or 0)]
        widths += [_positive(h, "hidden[i]") for h in hidden]
        self.layers = nnx.List([nnx.Linear(a, b, rngs=rngs) for a, b in zip(widths[:-1], widths[1:])])
        self.out = nnx.Linear(widths[-1], 1, rngs=rngs)

    def __call__(self, x: Array, labels: Array | None = None) -> Array:
        _check_input_shape(self, x)
        h = x if self.n_classes is None else jnp.concatenate(
            [x, _one_hot(_require_labels(self, labels, x.shape[0]), self.n_classes, x.dtype)], -1)
        for layer in self.layers:
            h = nnx.leaky_relu(layer(h), 0.2)
        return self.out(h)[:, 0]


def conv_transpose_output_size(size: int, kernel: int, stride: int = 1, padding: int = 0) -> int:
    """Output length of a transposed convolution along one axis: ``(size - 1) stride - 2 padding + kernel``.

    The inverse of a convolution's ``floor((size + 2 padding - kernel) / stride) + 1``: each
    input position scatters a ``kernel``-wide copy of the kernel, ``stride`` apart, and
    ``padding`` is cropped from each end (PyTorch's ``ConvTranspose2d`` convention). The DCGAN
    generator's 7 -> 14 -> 28 uses kernel 4, stride 2, padding 1.
    """
    size = _positive(size, "size")
    kernel = _positive(kernel, "kernel")
    stride = _positive(stride, "stride")
    padding = _validate.count(padding, "padding", minimum=0)
    out = (size - 1) * stride - 2 * padding + kernel
    if out < 1:
        raise ValueError(f"padding {padding} crops the whole output ((size - 1) * stride + "
                         f"kernel = {(size - 1) * stride + kernel})")
    return out


def _lax_padding(kernel: int, padding: int) -> tuple[tuple[int, int], tuple[int, int]]:
    """Cropping ``padding`` from a transposed convolution's output, as ``lax.conv_transpose``
    pads the stride-dilated input: ``kernel - 1 - padding`` on each side."""
    p = kernel - 1 - padding
    return ((p, p), (p, p))


def _conv_padding(kernel: Sequence[int], lax_padding) -> list[tuple[int, int]]:
    """The padding of the strided convolution whose adjoint (input gradient) is the
    transposed convolution padded by ``lax_padding`` (``lax.conv_transpose``'s convention)."""
    return [(k - 1 - lo, k - 1 - hi) for k, (lo, hi) in zip(kernel, lax_padding)]


@partial(jax.custom_vjp, nondiff_argnums=(2, 3))
def _upsample(x: Array, kernel: Array, strides: tuple, lax_padding: tuple) -> Array:
    """``nnx.ConvTranspose(transpose_kernel=True)``'s convolution (no bias), the same XLA op.

    Its forward pass is ``lax.conv_transpose`` exactly as the layer calls it; only the
    backward pass is written by hand, because JAX's gradient of the kernel of a transposed
    convolution is a convolution with a dilated input, which XLA's CPU backend runs on a slow
    generic path (380 ms against 14 ms for the notebook's full-scale 64 -> 32 layer at batch
    128). A transposed convolution is the input gradient (adjoint) of the strided convolution
    ``conv(y, kernel)`` (``y`` the upsampled side), so with ``dy = dL/d(output)``:
    ``dL/dx = conv(dy, kernel)`` (the op JAX itself emits: bit-identical) and
    ``dL/dkernel`` = the kernel gradient of that strided convolution at ``(dy, x)`` (the same
    sum in another order: equal up to float rounding, ~1e-6 relative).
    """
    return jax.lax.conv_transpose(x, kernel, strides, lax_padding, rhs_dilation=(1,) * len(strides),
                                  transpose_kernel=True)


def _strided_conv(y: Array, kernel: Array, strides: tuple, lax_padding: tuple) -> Array:
    return jax.lax.conv_general_dilated(
        y, kernel, strides, _conv_padding(kernel.shape[:-2], lax_padding),
        dimension_numbers=("NHWC", "HWIO", "NHWC"))


def _upsample_fwd(x, kernel, strides, lax_padding):
    return _upsample(x, kernel, strides, lax_padding), (x, kernel)


def _upsample_bwd(strides, lax_padding, residuals, dy):
    x, kernel = residuals
    dx = _strided_conv(dy, kernel, strides, lax_padding)
    _, kernel_vjp = jax.vjp(lambda k: _strided_conv(dy, k, strides, lax_padding), kernel)
    return dx, kernel_vjp(x)[0]


_upsample.defvjp(_upsample_fwd, _upsample_bwd)


def _conv_transpose(layer: nnx.ConvTranspose, x: Array) -> Array:
    """``layer(x)`` for the generator's ``nnx.ConvTranspose`` layers (same forward values),
    with the fast backward pass of :func:`_upsample`."""
    y = _upsample(x, layer.kernel[...], tuple(layer.strides), tuple(layer.padding))
    return y + jnp.reshape(layer.bias[...], (1,) * (y.ndim - 1) + (-1,))


class DCGANGenerator(nnx.Module):
    """DCGAN generator for 28x28 images: upsampling by transposed convolutions, 7 -> 14 -> 28.

    ``z (B, latent_dim)`` [+ one-hot label] ``-> Linear -> (7, 7, 2F) -> BatchNorm -> ReLU
    -> ConvT(4x4, stride 2) -> (14, 14, F) -> BatchNorm -> ReLU -> ConvT(4x4, stride 2)
    -> (28, 28, channels) -> tanh``, ``F = features``. Batch norm in the generator's hidden
    layers (not at its output) is what made DCGANs train (Radford et al. 2016); it keeps
    running statistics (momentum 0.9) used in eval mode. Transposed convolutions use the
    textbook (scatter, PyTorch) convention: ``nnx.ConvTranspose(transpose_kernel=True)``.
    """

    def __init__(self, latent_dim: int = 64, *, features: int = 32, channels: int = 1,
                 n_classes: int | None = None, rngs: nnx.Rngs):
        self.latent_dim = _positive(latent_dim, "latent_dim")
        self.n_classes = _n_classes(n_classes)
        f = self.features = _positive(features, "features")
        channels = _positive(channels, "channels")
        self.out_shape = (28, 28, channels)
        self.project = nnx.Linear(self.latent_dim + (self.n_classes or 0), 7 * 7 * 2 * f, rngs=rngs)
        self.bn0 = nnx.BatchNorm(2 * f, momentum=0.9, rngs=rngs)
        self.up1 = nnx.ConvTranspose(2 * f, f, (4, 4), (2, 2), padding=_lax_padding(4, 1),
                                     transpose_kernel=True, rngs=rngs)
        self.bn1 = nnx.BatchNorm(f, momentum=0.9, rngs=rngs)
        self.up2 = nnx.ConvTranspose(f, channels, (4, 4), (2, 2), padding=_lax_padding(4, 1),
                                     transpose_kernel=True, rngs=rngs)

    def __call__(self, z: Array, labels: Array | None = None) -> Array:
        h = self.project(_latent_input(self, z, labels))
        h = nnx.relu(self.bn0(h.reshape(h.shape[0], 7, 7, 2 * self.features)))
        h = nnx.relu(self.bn1(_conv_transpose(self.up1, h)))   # (B, 14, 14, F)
        return jnp.tanh(_conv_transpose(self.up2, h))          # (B, 28, 28, channels)


class DCGANDiscriminator(nnx.Module):
    """DCGAN discriminator (or critic): an ordinary downsampling CNN, 28 -> 14 -> 7 -> logit.

    ``x (B, 28, 28, channels)`` (or ``(B, 28, 28)``) [+ one-hot label planes] ``-> Conv(4x4,
    stride 2) -> LeakyReLU(0.2) -> Conv(4x4, stride 2) [-> BatchNorm] -> LeakyReLU(0.2) ->
    Linear -> logits (B,)``. A class-conditional one (``n_classes``) sees its label as
    ``n_classes`` constant one-hot channels concatenated to the image. ``batch_norm=False``
    (default) keeps it usable as a WGAN-GP critic, whose penalty needs per-example gradients.
    """

    def __init__(self, *, features: int = 32, channels: int = 1, n_classes: int | None = None,
                 batch_norm: bool = False, rngs: nnx.Rngs):
        f = _positive(features, "features")
        channels = _positive(channels, "channels")
        self.in_shape = (28, 28, channels)
        self.n_classes = _n_classes(n_classes)
        self.batch_norm = bool(batch_norm)
        pad = ((1, 1), (1, 1))
        self.down1 = nnx.Conv(channels + (self.n_classes or 0), f, (4, 4), (2, 2), padding=pad, rngs=rngs)
        self.down2 = nnx.Conv(f, 2 * f, (4, 4), (2, 2), padding=pad, rngs=rngs)
        self.bn = nnx.BatchNorm(2 * f, momentum=0.9, rngs=rngs) if self.batch_norm else None
        self.out = nnx.Linear(7 * 7 * 2 * f, 1, rngs=rngs)

    def __call__(self, x: Array, labels: Array | None = None) -> Array:
        if x.ndim == 3 and self.in_shape[2] == 1:
            x = x[..., None]
        _check_input_shape(self, x)
        if self.n_classes is not None:
            planes = _one_hot(_require_labels(self, labels, x.shape[0]), self.n_classes, x.dtype)
            planes = jnp.broadcast_to(planes[:, None, None, :], x.shape[:3] + (self.n_classes,))
            x = jnp.concatenate([x, planes], axis=-1)
        h = nnx.leaky_relu(self.down1(x), 0.2)     # (B, 14, 14, F)
        h = self.down2(h)                          # (B, 7, 7, 2F)
        if self.bn is not None:
            h = self.bn(h)
        h = nnx.leaky_relu(h, 0.2)
        return self.out(h.reshape(h.shape[0], -1))[:, 0]


def _latent_input(gen, z: Array, labels) -> Array:
    if z.ndim != 2 or z.shape[1] != gen.latent_dim:
        raise ValueError(f"z must have shape (B, latent_dim={gen.latent_dim}), got {tuple(z.shape)}")
    if gen.n_classes is None:
        if labels is not None:
            raise ValueError("labels given to an unconditional generator (n_classes=None)")
        return z
    return jnp.concatenate([z, _one_hot(_require_labels(gen, labels, z.shape[0]),
                                        gen.n_classes, z.dtype)], axis=1)


def _require_labels(model, labels, batch: int) -> Array:
    if labels is None:
        raise ValueError(f"labels are required: this {type(model).__name__} is class-conditional "
                         f"(n_classes={model.n_classes})")
    if jnp.shape(labels) != (batch,):
        raise ValueError(f"labels must have shape ({batch},), one per example, got "
                         f"{tuple(jnp.shape(labels))}")
    return labels


def _check_input_shape(disc, x: Array) -> None:
    if x.ndim != 1 + len(disc.in_shape) or tuple(x.shape[1:]) != disc.in_shape:
        raise ValueError(f"x must have shape (B, {', '.join(map(str, disc.in_shape))}), got "
                         f"{tuple(x.shape)}")


def _check_no_batch_norm(critic, name: str) -> None:
    if not isinstance(critic, nnx.Module):
        raise ValueError(f"{name} must be an nnx.Module, got {type(critic).__name__}")
    if getattr(critic, "batch_norm", False) or any(
            isinstance(m, nnx.BatchNorm) for _, m in nnx.iter_graph(critic)):
        raise ValueError(f"{name} must not use batch norm: the gradient penalty needs each "
                         "example's score to depend on that example only")


def _model_input(disc, x, name: str, disc_name: str) -> Array:
    x = _validate.real_array(x, name)
    in_shape = getattr(disc, "in_shape", None)
    if in_shape is None:
        raise ValueError(f"{disc_name} must have an in_shape attribute (a course_lib.gan "
                         f"discriminator), got {type(disc).__name__}")
    if x.ndim == len(in_shape) and len(in_shape) == 3 and in_shape[2] == 1:
        x = x[..., None]                                        # (B, 28, 28) -> (B, 28, 28, 1)
    if x.ndim != 1 + len(in_shape) or tuple(x.shape[1:]) != tuple(in_shape):
        raise ValueError(f"{name} must have shape (B, {', '.join(map(str, in_shape))}) to match "
                         f"{disc_name}.in_shape, got {tuple(x.shape)}")
    if x.shape[0] < 1:
        raise ValueError(f"{name} must hold at least one example, got shape {tuple(x.shape)}")
    return x


def _labels(model, labels, batch: int, model_name: str) -> Array | None:
    return _validate.class_labels(labels, getattr(model, "n_classes", None), batch, model_name)


def check_pair(generator, discriminator) -> None:
    """Raise ``ValueError`` naming the argument when a generator and a discriminator do not fit.

    They fit when ``generator.out_shape == discriminator.in_shape`` (the discriminator reads
    what the generator writes) and both have the same ``n_classes`` (both unconditional, or
    conditional on the same classes).
    """
    for model, name in ((generator, "generator"), (discriminator, "discriminator")):
        if not isinstance(model, nnx.Module):
            raise ValueError(f"{name} must be an nnx.Module, got {type(model).__name__}")
    if not hasattr(generator, "out_shape") or not hasattr(generator, "latent_dim"):
        raise ValueError("generator must have latent_dim and out_shape attributes (a "
                         f"course_lib.gan generator), got {type(generator).__name__}")
    if not hasattr(discriminator, "in_shape"):
        raise ValueError("discriminator must have an in_shape attribute (a course_lib.gan "
                         f"discriminator), got {type(discriminator).__name__}")
    if tuple(generator.out_shape) != tuple(discriminator.in_shape):
        raise ValueError(f"discriminator expects inputs of shape {tuple(discriminator.in_shape)} "
                         f"but generator produces {tuple(generator.out_shape)}")
    if getattr(generator, "n_classes", None) != getattr(discriminator, "n_classes", None):
        raise ValueError(f"discriminator has n_classes={discriminator.n_classes} but generator "
                         f"has n_classes={generator.n_classes}: both must be conditional on "
                         "the same classes, or both unconditional")


# ------------------------------------------------------------------ training steps
def _fakes(generator, key: Array, n: int, labels) -> Array:
    z = jax.random.normal(key, (n, generator.latent_dim))
    return generator(z, labels)


def _d_update(generator, discriminator, optimizer, x, labels, key) -> dict:
    fake = jax.lax.stop_gradient(_fakes(generator, key, x.shape[0], labels))

    def objective(d):
        real_logits, fake_logits = d(x, labels), d(fake, labels)
        return _d_loss(real_logits, fake_logits), (real_logits, fake_logits)

    (loss, (real, fake_l)), grads = nnx.value_and_grad(objective, has_aux=True)(discriminator)
    optimizer.update(discriminator, grads)
    accuracy = 0.5 * (jnp.mean(real > 0) + jnp.mean(fake_l < 0))
    return {"d_loss": loss, "d_accuracy": accuracy, "d_real": jnp.mean(jax.nn.sigmoid(real)),
            "d_fake": jnp.mean(jax.nn.sigmoid(fake_l))}


def _c_update(generator, critic, optimizer, x, labels, key, gp_weight: float,
              clip_value: float | None) -> dict:
    k_fake, k_gp = jax.random.split(key)
    fake = jax.lax.stop_gradient(_fakes(generator, k_fake, x.shape[0], labels))

    def objective(c):
        real_s, fake_s = c(x, labels), c(fake, labels)
        gap = jnp.mean(real_s) - jnp.mean(fake_s)
        penalty = (jnp.mean((_gradient_norms(c, _interpolates(k_gp, x, fake), labels) - 1.0) ** 2)
                   if gp_weight > 0 else jnp.zeros(()))
        return -gap + gp_weight * penalty, (gap, penalty)

    (loss, (gap, penalty)), grads = nnx.value_and_grad(objective, has_aux=True)(critic)
    optimizer.update(critic, grads)
    if clip_value is not None:
        params = nnx.state(critic, nnx.Param)
        nnx.update(critic, jax.tree.map(lambda p: jnp.clip(p, -clip_value, clip_value), params))
    return {"d_loss": loss, "wasserstein_estimate": gap, "gradient_penalty": penalty}


def _g_update(generator, discriminator, optimizer, n: int, labels, key, loss: str) -> dict:
    z = jax.random.normal(key, (n, generator.latent_dim))

    def objective(g, d):
        scores = d(g(z, labels), labels)
        if loss == "wasserstein":
            return -jnp.mean(scores)
        return _g_loss(scores, loss == "saturating")

    value, grads = nnx.value_and_grad(objective)(generator, discriminator)
    optimizer.update(generator, grads)
    return {"g_loss": value}


_d_update_jit = nnx.jit(_d_update, graph=False)
_c_update_jit = nnx.jit(_c_update, static_argnames=("gp_weight", "clip_value"), graph=False)
_g_update_jit = nnx.jit(_g_update, static_argnames=("n", "loss"), graph=False)

_G_LOSSES = ("non_saturating", "saturating", "wasserstein")
_GAN_LOSSES = ("non_saturating", "saturating", "wgan_gp", "wgan_clip")


def _check_optimizer(optimizer, name: str) -> None:
    if not isinstance(optimizer, nnx.Optimizer):
        raise ValueError(f"{name} must be an nnx.Optimizer, got {type(optimizer).__name__}")


def _step_inputs(generator, discriminator, x, labels, key, disc_name: str):
    check_pair(generator, discriminator)
    x = _model_input(discriminator, x, "x", disc_name)
    return x, _labels(discriminator, labels, x.shape[0], disc_name), _validate.key(key)


def discriminator_step(generator, discriminator, d_optimizer, x, *, key, labels=None) -> dict:
    """One optimiser step of the discriminator on real ``x`` and as many fresh fakes (compiled).

    Minimises :func:`discriminator_loss` with ``fakes = G(z)``, ``z ~ N(0, I)`` drawn from
    ``key`` (no gradient reaches the generator). ``x (B, *in_shape)``; ``labels (B,)`` for
    conditional models (the fakes get the same labels). Returns ``{"d_loss", "d_accuracy"
    (fraction classified correctly, real and fake weighted equally), "d_real" (mean D(x)),
    "d_fake" (mean D(G(z)))}``. A discriminator with batch norm normalises the real and
    the fake batches separately (as DCGAN does).
    """
    _check_optimizer(d_optimizer, "d_optimizer")
    x, labels, key = _step_inputs(generator, discriminator, x, labels, key, "discriminator")
    return _d_update_jit(generator, discriminator, d_optimizer, x, labels, key)


def critic_step(generator, critic, c_optimizer, x, *, key, labels=None,
                gp_weight: float = 10.0, clip_value: float | None = None) -> dict:
    """One optimiser step of a WGAN critic (compiled): WGAN-GP by default, WGAN with clipping.

    Minimises ``mean f(G(z)) - mean f(x) + gp_weight * gradient_penalty`` (see
    :func:`gradient_penalty`), then, if ``clip_value`` is given, clips every weight to
    ``[-clip_value, clip_value]`` (the original WGAN: ``gp_weight=0, clip_value=0.01``).
    Returns ``{"d_loss", "wasserstein_estimate" (mean f(x) - mean f(G(z))),
    "gradient_penalty"}``. The critic must not use batch norm.
    """
    _check_optimizer(c_optimizer, "c_optimizer")
    _check_no_batch_norm(critic, "critic")
    gp_weight = _validate.real(gp_weight, "gp_weight", low=0.0)
    if clip_value is not None:
        clip_value = _validate.real(clip_value, "clip_value", low=0.0, low_open=True)
    x, labels, key = _step_inputs(generator, critic, x, labels, key, "critic")
    return _c_update_jit(generator, critic, c_optimizer, x, labels, key,
                         gp_weight=gp_weight, clip_value=clip_value)


def generator_step(generator, discriminator, g_optimizer, x, *, key, labels=None,
                   loss: str = "non_saturating") -> dict:
    """One optimiser step of the generator against a fixed discriminator (compiled).

    Draws ``B = len(x)`` latents from ``key`` (``x`` gives only the batch size, and its
    ``labels`` the classes to generate) and minimises, on the discriminator's outputs ``a``
    of the fakes: ``loss="non_saturating"`` ``mean softplus(-a) = -E log D(G(z))``;
    ``"saturating"`` ``E log(1 - D(G(z)))``; ``"wasserstein"`` ``-mean f(G(z))`` (WGAN).
    Only the generator's parameters change. Returns ``{"g_loss"}``.
    """
    _check_optimizer(g_optimizer, "g_optimizer")
    loss = _option(loss, "loss", _G_LOSSES)
    x, labels, key = _step_inputs(generator, discriminator, x, labels, key, "discriminator")
    return _g_update_jit(generator, discriminator, g_optimizer, n=x.shape[0], labels=labels,
                         key=key, loss=loss)


def _gan_update(generator, discriminator, g_optimizer, d_optimizer, x, labels, key, *,
                n_critic: int, loss: str, gp_weight: float, clip_value) -> dict:
    m = x.shape[0] // n_critic
    keys = jax.random.split(key, n_critic + 1)
    for i in range(n_critic):
        xi = x[i * m:(i + 1) * m]
        li = None if labels is None else labels[i * m:(i + 1) * m]
        if loss in ("wgan_gp", "wgan_clip"):
            metrics = _c_update(generator, discriminator, d_optimizer, xi, li, keys[i],
                                gp_weight, clip_value)
        else:
            metrics = _d_update(generator, discriminator, d_optimizer, xi, li, keys[i])
    g_loss = "wasserstein" if loss in ("wgan_gp", "wgan_clip") else loss
    return metrics | _g_update(generator, discriminator, g_optimizer, m, li, keys[-1], g_loss)


_gan_update_jit = nnx.jit(_gan_update, static_argnames=("n_critic", "loss", "gp_weight", "clip_value"),
                          graph=False)


def gan_step(generator, discriminator, g_optimizer, d_optimizer, x, *, key, labels=None,
             n_critic: int = 1, loss: str = "non_saturating", gp_weight: float = 10.0,
             clip_value: float = 0.01) -> dict:
    """``n_critic`` discriminator (critic) steps, then one generator step: one compiled call.

    ``x (n_critic * m, *in_shape)`` holds ``n_critic`` mini-batches of ``m`` real examples,
    one per discriminator step (fresh real data each time, as in WGAN-GP's algorithm); the
    generator step uses ``m`` latents (and the last mini-batch's labels). ``loss``:

    * ``"non_saturating"`` / ``"saturating"``: :func:`discriminator_step` then
      :func:`generator_step` with that generator loss;
    * ``"wgan_gp"``: :func:`critic_step` with ``gp_weight``, then the Wasserstein generator
      loss; ``"wgan_clip"``: the same with weight clipping at ``clip_value`` and no penalty.

    Returns the last discriminator step's metrics and ``"g_loss"``.

    Measured on the 8-mode ring (``ring_mixture(std=0.1)``, MLPs 128x128, 1000 generator
    steps, seeds 0-3; tests/test_gan.py): ``"wgan_gp"`` with ``n_critic=5``, ``gp_weight=0.1``
    (the WGAN-GP authors' value for their 2-D toys), Adam(5e-4, 0.5, 0.9), batch 64, latent 2
    covers all 8 modes (3 of 3 seeds); ``gp_weight=10`` (the paper's value for images) gave
    no stable coverage in 2000 steps. ``"non_saturating"`` (Adam 1e-3, b1 0.5, batch 256)
    with a 256-d latent covers 0-2 modes at a time (4 of 4 seeds) but with a 2-d latent it
    covers all 8 too (3 of 3), and WGAN-GP with a 256-d latent covered none: the contrast
    depends on the latent size, it is not a same-architecture comparison.
    """
    _check_optimizer(g_optimizer, "g_optimizer")
    _check_optimizer(d_optimizer, "d_optimizer")
    loss = _option(loss, "loss", _GAN_LOSSES)
    n_critic = _validate.count(n_critic, "n_critic")
    disc_name = "critic" if loss.startswith("wgan") else "discriminator"
    x, labels, key = _step_inputs(generator, discriminator, x, labels, key, disc_name)
    if x.shape[0] % n_critic:
        raise ValueError(f"x must hold n_critic={n_critic} equal mini-batches: its "
                         f"{x.shape[0]} examples are not a multiple of {n_critic}")
    if loss == "wgan_gp":
        gp_weight, clip_value = _validate.real(gp_weight, "gp_weight", low=0.0), None
    elif loss == "wgan_clip":
        gp_weight = 0.0
        clip_value = _validate.real(clip_value, "clip_value", low=0.0, low_open=True)
    else:
        gp_weight, clip_value = 0.0, None
    if loss.startswith("wgan"):
        _check_no_batch_norm(discriminator, "critic")
    return _gan_update_jit(generator, discriminator, g_optimizer, d_optimizer, x, labels, key,
                           n_critic=n_critic, loss=loss, gp_weight=gp_weight,
                           clip_value=clip_value)


# ------------------------------------------------------------------ the training loop
def gan_state(generator, discriminator, g_tx, d_tx) -> dict:
    """The state :func:`course_lib.train.loop` trains: ``{"g", "d", "g_opt", "d_opt"}``.

    ``g_tx``, ``d_tx``: optax transformations of the two players (``nnx.Optimizer`` of each
    module's ``nnx.Param``). Checks that the pair fits (:func:`check_pair`).
    """
    check_pair(generator, discriminator)
    return {"g": generator, "d": discriminator,
            "g_opt": nnx.Optimizer(generator, g_tx, wrt=nnx.Param),
            "d_opt": nnx.Optimizer(discriminator, d_tx, wrt=nnx.Param)}


def gan_update(*, n_critic: int = 1, loss: str = "non_saturating", gp_weight: float = 10.0,
               clip_value: float = 0.01):
    """``update(state, batch, key, t) -> metrics`` for :func:`course_lib.train.loop`: one
    :func:`gan_step` on ``state = gan_state(...)``.

    ``batch`` is ``(x,)`` or, for class-conditional players, ``(x, labels)``; its
    ``n_critic * m`` examples feed the ``n_critic`` discriminator steps (``batch_size`` of the
    loop must be a multiple of ``n_critic``). One loop step is one generator step.
    """
    n_critic = _validate.count(n_critic, "n_critic")
    loss = _option(loss, "loss", _GAN_LOSSES)

    def update(state, batch, key, t):
        labels = batch[1] if len(batch) > 1 else None
        return gan_step(state["g"], state["d"], state["g_opt"], state["d_opt"], batch[0],
                        key=key, labels=labels, n_critic=n_critic, loss=loss,
                        gp_weight=gp_weight, clip_value=clip_value)

    return update


def train_gan(generator, discriminator, data: tuple, *, steps: int, batch_size: int, key,
              g_tx, d_tx=None, n_critic: int = 1, loss: str = "non_saturating",
              gp_weight: float = 10.0, clip_value: float = 0.01, **loop_kwargs):
    """Train a generator and a discriminator in place with ``course_lib.train.loop``.

    ``data``: ``(x,)`` or ``(x, labels)`` (class-conditional players); ``steps`` generator
    steps, each after ``n_critic`` discriminator steps on ``batch_size // n_critic`` real
    examples apiece (``batch_size`` a multiple of ``n_critic``). ``d_tx`` defaults to
    ``g_tx``. The same ``key``, settings and initial players give the same trained players
    (on the same machine), so a run is re-created from its seed. Other keywords
    (``eval_every``, ``callback``, ``progress``, ``desc``, ``checkpoint_dir``, ``resume``...)
    go to :func:`course_lib.train.loop`. Returns its ``FitResult``; ``history`` holds the
    metrics of :func:`gan_step` averaged over each period.
    """
    from course_lib import train           # imported here: train does not need gan

    if _validate.count(batch_size, "batch_size") % _validate.count(n_critic, "n_critic"):
        raise ValueError(f"batch_size={batch_size} must be a multiple of n_critic={n_critic}")
    state = gan_state(generator, discriminator, g_tx, g_tx if d_tx is None else d_tx)
    update = gan_update(n_critic=n_critic, loss=loss, gp_weight=gp_weight, clip_value=clip_value)
    return train.loop(state, update, tuple(data), steps=steps, batch_size=batch_size, key=key,
                      **loop_kwargs)


def train_dcgan_mnist(images, labels=None, *, steps: int, seed: int, latent_dim: int = 32,
                      features: int = 8, batch_size: int = 64, lr: float = 2e-4, callback=None,
                      **loop_kwargs):
    """Notebook 07's DCGAN on MNIST, as one call (the evaluation notebook re-creates its generators so).

    ``images (N, 28, 28)`` in ``[0, 1]`` (scaled here to ``2 x - 1``); ``labels (N,)`` make
    both players class-conditional on 10 digits. Players :class:`DCGANGenerator` and
    :class:`DCGANDiscriminator` (no batch norm) of ``features`` channels built from
    ``nnx.Rngs(seed)``; Adam(``lr``, b1 0.5) for both (Radford et al. 2016); non-saturating
    loss, one discriminator step per generator step, ``steps`` steps of ``batch_size``,
    key ``jax.random.key(seed)``. The same arguments give the same generator on the same
    machine. ``callback(steps_completed, generator)``, if given, runs after each step (the
    generator is in train mode: switch it to eval mode to sample). Other keywords go to
    :func:`course_lib.train.loop`. Returns
    ``(generator, discriminator, result)``; the players end in eval mode.
    """
    import optax

    images = _validate.real_array(images, "images", ndim=3)
    if tuple(images.shape[1:]) != (28, 28):
        raise ValueError(f"images must have shape (N, 28, 28), got {tuple(images.shape)}")
    seed = _validate.count(seed, "seed", minimum=0)
    n_classes = None if labels is None else 10
    rngs = nnx.Rngs(seed)
    generator = DCGANGenerator(latent_dim, features=features, n_classes=n_classes, rngs=rngs)
    discriminator = DCGANDiscriminator(features=features, n_classes=n_classes, rngs=rngs)
    data = (2.0 * images[..., None] - 1.0,) + (() if labels is None else (labels,))
    result = train_gan(generator, discriminator, data, steps=steps, batch_size=batch_size,
                       key=jax.random.key(seed), g_tx=optax.adam(lr, b1=0.5),
                       callback=None if callback is None else (lambda t: callback(t, generator)),
                       **loop_kwargs)
    return generator, discriminator, result


# ------------------------------------------------------------------------ sampling
def sample(key, generator, n, *, labels=None) -> Array:
    """``n`` samples ``G(z) (n, *out_shape)`` with ``z ~ N(0, I)`` drawn from ``key``.

    The generator runs in its current mode (``course_lib.train.loop`` leaves it in eval mode:
    batch norm then uses its running statistics). ``labels (n,)`` for a conditional generator.
    """
    key = _validate.key(key)
    n = _validate.count(n, "n")
    if not hasattr(generator, "latent_dim"):
        raise ValueError(f"generator must have a latent_dim attribute (a course_lib.gan "
                         f"generator), got {type(generator).__name__}")
    labels = _labels(generator, labels, n, "generator")
    return _fakes(generator, key, n, labels)


def latent_interpolation(z0, z1, n, *, spherical: bool = False) -> Array:
    """``n`` latents ``(n, d)`` from ``z0`` to ``z1`` (both ``(d,)``), endpoints included.

    Linear: ``(1 - t) z0 + t z1``. Spherical (``spherical=True``, "slerp"):
    ``sin((1 - t) w) / sin w * z0 + sin(t w) / sin w * z1`` with ``w`` the angle between them;
    it keeps the norm near that of Gaussian latents (``~sqrt(d)``) where the straight line
    passes through the improbable region near 0. Falls back to linear for parallel latents.
    """
    z0 = _validate.real_array(z0, "z0", ndim=1)
    z1 = _validate.real_array(z1, "z1", ndim=1)
    _same_shape(z0, z1, "z0", "z1")
    n = _validate.count(n, "n", minimum=2)
    t = jnp.linspace(0.0, 1.0, n, dtype=z0.dtype)[:, None]
    linear = (1 - t) * z0 + t * z1
    if not spherical:
        return linear
    cos = jnp.dot(z0, z1) / jnp.maximum(jnp.linalg.norm(z0) * jnp.linalg.norm(z1), 1e-30)
    omega = jnp.arccos(jnp.clip(cos, -1.0, 1.0))
    sin = jnp.sin(omega)
    safe = jnp.where(sin > 1e-6, sin, 1.0)
    slerp = (jnp.sin((1 - t) * omega) * z0 + jnp.sin(t * omega) * z1) / safe
    return jnp.where(sin > 1e-6, slerp, linear)


def image_grid(images, *, n_cols: int | None = None, pad: int = 1,
               value_range: tuple[float, float] = (-1.0, 1.0)) -> np.ndarray:
    """Tile ``images (N, H, W)`` or ``(N, H, W, C)`` into one image, values mapped to ``[0, 1]``.

    ``n_cols`` per row (default ``ceil(sqrt(N))``), ``pad`` pixels of white (1.0) between and
    around them; values are mapped from ``value_range`` to ``[0, 1]`` and clipped. Returns a
    NumPy array ``(rows (H + pad) + pad, n_cols (W + pad) + pad)`` (a channel axis only for
    ``C > 1``), ready for ``plt.imshow(grid, cmap="gray", vmin=0, vmax=1)``.
    """
    images = np.asarray(_validate.real_array(images, "images", ndim=(3, 4)))
    if images.ndim == 4 and images.shape[-1] == 1:
        images = images[..., 0]
    n = images.shape[0]
    if n == 0:
        raise ValueError("images must hold at least one image")
    n_cols = math.ceil(math.sqrt(n)) if n_cols is None else _validate.count(n_cols, "n_cols")
    pad = _validate.count(pad, "pad", minimum=0)
    lo, hi = (_validate.real(v, "value_range") for v in value_range)
    if hi <= lo:
        raise ValueError(f"value_range must be (low, high) with low < high, got {value_range!r}")
    rows = math.ceil(n / n_cols)
    h, w = images.shape[1:3]
    grid = np.ones((rows * (h + pad) + pad, n_cols * (w + pad) + pad) + images.shape[3:],
                   np.float32)
    scaled = np.clip((images - lo) / (hi - lo), 0.0, 1.0)
    for i in range(n):
        r, c = divmod(i, n_cols)
        top, left = pad + r * (h + pad), pad + c * (w + pad)
        grid[top:top + h, left:left + w] = scaled[i]
    return grid


def sample_grid(key, generator, n, *, labels=None, n_cols: int | None = None,
                pad: int = 1) -> np.ndarray:
    """``n`` generated images tiled by :func:`image_grid` (the generator's ``tanh`` range ``[-1, 1]``
    mapped to ``[0, 1]``). ``labels (n,)`` for a conditional generator, e.g.
    ``np.repeat(np.arange(10), 8)`` with ``n_cols=8`` for one row per digit."""
    images = sample(key, generator, n, labels=labels)
    return image_grid(images, n_cols=n_cols, pad=pad, value_range=(-1.0, 1.0))
