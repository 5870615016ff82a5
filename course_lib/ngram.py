"""Character language models by counting: n-grams, and the neural bigram that learns the same table.

The chain rule of probability holds for any sequence,

.. math::  p(x_1, \\dots, x_T) = \\prod_{t=1}^{T} p(x_t \\mid x_{<t}),

so a model of the next symbol given the past is a generative model. An **n-gram** keeps only
the last n - 1 symbols, :math:`p(x_t \\mid x_{t-n+1..t-1})`, and estimates each conditional by
counting; the table has :math:`V^{n-1}` rows (contexts) and V columns (next symbols).

* :func:`name_windows`, :func:`text_windows` - every (context, next symbol) as an
  ``(N, n)`` window of ids (names are padded with :data:`BOUNDARY`);
* :func:`context_index` - the table row of a context (a base-V number);
* :func:`ngram_counts`, :func:`fit_ngram` (add-k / Laplace smoothing),
  :func:`fit_interpolated_ngram` (a mixture of orders 1..n);
* :func:`log_likelihood`, :func:`perplexity` (summed in float64 on the host);
* :func:`sample_ngram` - temperature sampling with ``jax.random.categorical`` in a ``lax.scan``;
  :func:`decode_names` cuts sampled rows at the boundary;
* :func:`bigram_loss`, :func:`bigram_mle_loss`, :func:`train_neural_bigram` - a (V, V) logits
  table trained by gradient descent (optax) on the cross-entropy. Its loss approaches the
  count-based bigram's (:func:`bigram_mle_loss`) from above; it reaches it only when every
  pair was observed, since an unseen pair needs a logit of minus infinity.

The AR(p) models of real-valued series live in :mod:`course_lib.ar`.

Argument checks run in Python before anything is traced and raise :class:`ValueError` naming
the argument (ids outside the vocabulary, ``True`` or ``2.7`` as a count, a model whose rows
are not distributions...). Kernels are jit-compiled with static shapes.
"""
from __future__ import annotations

import math
from functools import partial
from typing import NamedTuple, Sequence

import jax
import jax.numpy as jnp
import numpy as np
import optax

from course_lib import _validate

__all__ = [
    "NGramModel", "BOUNDARY", "MAX_TABLE_SIZE",
    "name_windows", "text_windows", "context_index", "ngram_counts", "fit_ngram",
    "fit_interpolated_ngram", "log_likelihood", "perplexity", "sample_ngram",
    "decode_names", "bigram_loss", "bigram_mle_loss", "train_neural_bigram",
]

BOUNDARY = "."
"""The symbol that starts and ends every name (id 0 in a vocabulary built with it)."""

MAX_TABLE_SIZE = 2 ** 26
"""Largest dense n-gram table, ``vocab_size ** order`` entries (256 MiB of float32)."""

_MAX_ID = 2 ** 31 - 1


class NGramModel(NamedTuple):
    """A character n-gram model: :math:`p(x_t \\mid x_{t-n+1..t-1})` in one dense table.

    Attributes:
      log_probs: (V ** (n - 1), V) log-probabilities; row ``context_index(ctx)``; every row
        is a distribution (``logsumexp`` 0; ``-inf`` marks a probability of zero).
      order: n (1 = unigram, 2 = bigram, ...).
      vocab_size: V.
    """

    log_probs: jax.Array
    order: int
    vocab_size: int


# =========================================================================== checks


def _check_table_size(order: int, vocab_size: int, name: str = "order") -> None:
    if vocab_size ** order > MAX_TABLE_SIZE:
        raise ValueError(
            f"{name} {order} is too large for a dense table over {vocab_size} symbols "
            f"({vocab_size}**{order} entries > {MAX_TABLE_SIZE}); use a lower order")


def _check_windows(windows, vocab_size: int, name: str = "windows") -> jax.Array:
    """(N, n) integer ids in [0, V), N >= 1, with a table of V ** n entries that fits."""
    w = _validate.ids(windows, name, vocab_size, ndim=2)
    if w.shape[0] == 0 or w.shape[1] == 0:
        raise ValueError(f"{name} must be a non-empty (N, order) array of ids, got shape {w.shape}")
    _check_table_size(int(w.shape[1]), vocab_size, f"{name} of order")
    return w.astype(jnp.int32)


def _check_model(model) -> NGramModel:
    """An NGramModel whose table has the right shape, no NaN, and rows that normalise."""
    if not isinstance(model, NGramModel):
        raise ValueError(f"model must be an NGramModel, got {type(model).__name__}")
    order = _validate.count(model.order, "model.order")
    v = _validate.count(model.vocab_size, "model.vocab_size")
    _check_table_size(order, v, "model.order")
    lp = _validate.real_array(model.log_probs, "model.log_probs", ndim=2, finite=False)
    if lp.shape != (v ** (order - 1), v):
        raise ValueError(f"model.log_probs must have shape ({v ** (order - 1)}, {v}) for order "
                         f"{order} over {v} symbols, got {tuple(lp.shape)}")
    bad = jnp.any(jnp.isnan(lp) | (lp == jnp.inf))
    off = jnp.max(jnp.abs(jax.scipy.special.logsumexp(lp, axis=1)))
    if _validate.is_concrete(bad, off):        # not under jit, where these are tracers
        if bool(bad):
            raise ValueError("model.log_probs contains NaN or +inf")
        off = float(off)
        if not off < (1e-6 if lp.dtype == jnp.float64 else 1e-4):
            raise ValueError("model.log_probs rows must be log-distributions (logsumexp 0); "
                             f"a row is off by {off:.3g}")
    return NGramModel(lp, order, v)


# =========================================================================== windows


def name_windows(names: Sequence[str], vocab, order: int) -> np.ndarray:
    """Every n-gram of every name, with boundary padding: ``(N, order)`` int32 ids.

    Each name becomes ``"." * (order - 1) + name + "."``, so the first letter is predicted
    from "start" and the model learns when to stop; windows never straddle two names.
    ``vocab`` is a :class:`course_lib.data.CharVocab` that contains :data:`BOUNDARY`.
    """
    order = _validate.count(order, "order")
    if BOUNDARY not in vocab.chars:
        raise ValueError(f"vocab must contain the boundary symbol {BOUNDARY!r}")
    _check_table_size(order, vocab.size)
    if isinstance(names, str) or not all(isinstance(n, str) for n in names):
        raise ValueError("names must be a list of strings (one name each), "
                         f"got {type(names).__name__}")
    if not len(names):
        raise ValueError("names must not be empty")
    rows = []
    for name in names:
        if BOUNDARY in name:
            raise ValueError(f"names must not contain the boundary symbol {BOUNDARY!r}, got {name!r}")
        ids = vocab.encode(BOUNDARY * (order - 1) + name + BOUNDARY)
        rows.append(np.lib.stride_tricks.sliding_window_view(ids, order))
    return np.concatenate(rows).astype(np.int32)


def text_windows(ids, order: int) -> jax.Array:
    """Sliding windows over one long id sequence: (len(ids) - order + 1, order)."""
    ids = _validate.ids(ids, "ids", _MAX_ID, ndim=1).astype(jnp.int32)
    order = _validate.count(order, "order")
    if ids.shape[0] < order:
        raise ValueError(f"ids has {ids.shape[0]} symbols; order {order} needs at least {order}")
    n = ids.shape[0] - order + 1
    return jnp.stack([ids[i: i + n] for i in range(order)], axis=1)


def _context_index(contexts, vocab_size: int):
    width = contexts.shape[-1]
    weights = jnp.asarray(vocab_size ** np.arange(width - 1, -1, -1), jnp.int32)
    return jnp.sum(contexts * weights, axis=-1).astype(jnp.int32)


def context_index(contexts, vocab_size: int) -> jax.Array:
    """Row of a context in an n-gram table: base-V number, oldest symbol most significant.

    Args: contexts (..., n - 1) int ids in [0, V). Returns (...,) int32 in [0, V ** (n - 1)).
    """
    vocab_size = _validate.count(vocab_size, "vocab_size")
    contexts = _validate.ids(contexts, "contexts", vocab_size).astype(jnp.int32)
    if contexts.ndim == 0:
        raise ValueError("contexts must have a last axis of n - 1 ids, got a scalar")
    _check_table_size(int(contexts.shape[-1]), vocab_size, "contexts of width")
    return _context_index(contexts, vocab_size)


# =========================================================================== fitting


@partial(jax.jit, static_argnames=("vocab_size",))
def _counts_kernel(windows, vocab_size):
    order = windows.shape[1]
    rows = _context_index(windows[:, :-1], vocab_size)
    flat = rows * vocab_size + windows[:, -1]
    counts = jnp.zeros(vocab_size ** order, jnp.result_type(float)).at[flat].add(1.0)
    return counts.reshape(vocab_size ** (order - 1), vocab_size)


def ngram_counts(windows, vocab_size: int) -> jax.Array:
    """Count table ``C[ctx, x]`` = number of windows with context ctx and next symbol x.

    Args: windows (N, n) ids in [0, V). Returns (V ** (n - 1), V) float counts (a
    scatter-add, one pass over the data).
    """
    vocab_size = _validate.count(vocab_size, "vocab_size")
    return _counts_kernel(_check_windows(windows, vocab_size), vocab_size)


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
    probability for every unseen n-gram, so infinite perplexity on text containing one). A
    context never seen with ``k = 0`` gets the uniform distribution.
    """
    k = _validate.real(k, "k", low=0.0)
    vocab_size = _validate.count(vocab_size, "vocab_size")
    windows = _check_windows(windows, vocab_size)
    counts = _counts_kernel(windows, vocab_size)
    return NGramModel(_add_k_log_probs(counts, jnp.asarray(k, counts.dtype)),
                      int(windows.shape[1]), vocab_size)


def fit_interpolated_ngram(windows, vocab_size: int, *, lambdas, k: float = 0.01) -> NGramModel:
    """Linear interpolation of add-k models of orders 1..n (Jelinek-Mercer).

    :math:`p(x \\mid h) = \\sum_{j=1}^{n} \\lambda_j\\, p_j(x \\mid \\text{last } j-1 \\text{ symbols of } h)`,
    with :math:`\\lambda \\ge 0, \\sum_j \\lambda_j = 1`. Each lower order is counted from the
    tails of the same windows; its table row for a full context h is ``h mod V ** (j - 1)``.

    Args:
      windows: (N, n) ids in [0, V).
      vocab_size: V.
      lambdas: (n,) weights, ``lambdas[j - 1]`` for order j (keyword-only).
      k: add-k smoothing of every order.
    """
    vocab_size = _validate.count(vocab_size, "vocab_size")
    windows = _check_windows(windows, vocab_size)
    k = _validate.real(k, "k", low=0.0)
    order = int(windows.shape[1])
    lam = _validate.probabilities(lambdas, "lambdas", atol=1e-6)
    if lam.shape != (order,):
        raise ValueError(f"lambdas must hold {order} weights (one per order 1..{order}), "
                         f"got shape {tuple(lam.shape)}")
    lam = np.asarray(lam, np.float64)
    v = vocab_size
    rows = np.arange(v ** (order - 1))
    mixed = 0.0
    for j in range(1, order + 1):
        counts = _counts_kernel(windows[:, order - j:], v)
        probs = jnp.exp(_add_k_log_probs(counts, jnp.asarray(k, counts.dtype)))  # (V^(j-1), V)
        mixed = mixed + lam[j - 1] * probs[rows % (v ** (j - 1))]
    return NGramModel(jnp.log(mixed), order, v)


# =========================================================================== scoring


@jax.jit
def _window_log_probs(log_probs, windows):
    v = log_probs.shape[1]
    rows = _context_index(windows[:, :-1], v)
    return log_probs[rows, windows[:, -1]]


def _total_log_prob(model, windows) -> tuple[float, int]:
    model = _check_model(model)
    windows = _check_windows(windows, model.vocab_size)
    if windows.shape[1] != model.order:
        raise ValueError(f"windows have order {windows.shape[1]}, the model has order {model.order}")
    terms = np.asarray(_window_log_probs(model.log_probs, windows), np.float64)
    return math.fsum(terms), int(windows.shape[0])   # exactly rounded, whatever N


def log_likelihood(model: NGramModel, windows) -> jax.Array:
    """Chain-rule log-likelihood :math:`\\sum_t \\log p(x_t \\mid x_{t-n+1..t-1})` (scalar, nats).

    The per-window terms are looked up on the device and summed on the host in float64 with
    ``math.fsum`` (exactly rounded, so no accumulation error however many windows); the result
    is returned in the table's dtype. ``-inf`` when a window has probability zero.
    """
    total, _ = _total_log_prob(model, windows)
    return jnp.asarray(total, dtype=jnp.asarray(model.log_probs).dtype)


def perplexity(model: NGramModel, windows) -> jax.Array:
    """:math:`\\exp(-\\frac1N \\sum_t \\log p(x_t \\mid \\cdot))`: the effective number of
    equally likely choices per symbol (a uniform model over V symbols scores exactly V).

    Computed from the float64 total of :func:`log_likelihood`; ``inf`` when a window has
    probability zero.
    """
    total, n = _total_log_prob(model, windows)
    return jnp.asarray(math.exp(-total / n), dtype=jnp.asarray(model.log_probs).dtype)


# =========================================================================== sampling


@partial(jax.jit, static_argnames=("order", "n", "length"))
def _sample_kernel(key, log_probs, start, order, n, length, temperature):
    v = log_probs.shape[1]
    n_rows = v ** (order - 1)
    keys = jax.random.split(key, length)

    def step(ctx, step_key):  # ctx: (n,) context rows
        logits = log_probs[ctx] / temperature
        nxt = jax.random.categorical(step_key, logits, axis=-1).astype(jnp.int32)
        ctx = (ctx * v + nxt) % n_rows if order > 1 else ctx
        return ctx, nxt

    ctx0 = jnp.full((n,), start, jnp.int32)
    _, ids = jax.lax.scan(step, ctx0, keys)
    return ids.T


def sample_ngram(key: jax.Array, model: NGramModel, n: int, length: int, *,
                 temperature: float = 1.0, context=None) -> jax.Array:
    """Sample ``n`` sequences of ``length`` symbols, one symbol per scan step.

    Each step draws :math:`x_t \\sim \\mathrm{softmax}(\\log p(\\cdot \\mid h_t) / \\tau)` with
    ``jax.random.categorical``, :math:`\\tau` = ``temperature``. :math:`\\tau = 1` samples the
    model; :math:`\\tau < 1` sharpens it (:math:`\\tau \\to 0` is greedy), :math:`\\tau > 1`
    flattens it toward uniform over the symbols of nonzero probability.

    Args:
      key: a PRNG key.
      model: an :class:`NGramModel`.
      n: number of sequences.
      length: symbols per sequence.
      temperature: :math:`\\tau > 0`.
      context: the first n - 1 ids (default: all boundary, id 0, the start of a name).

    Returns: (n, length) int32 ids (for names, cut each at its first boundary with
    :func:`decode_names`).
    """
    key = _validate.key(key)
    model = _check_model(model)
    n = _validate.count(n, "n")
    length = _validate.count(length, "length")
    temperature = _validate.real(temperature, "temperature", low=0.0, low_open=True)
    v, order = model.vocab_size, model.order
    if context is None:
        ctx = np.zeros(order - 1, np.int32)
    else:
        ctx = np.asarray(_validate.ids(context, "context", v, ndim=1))
        if ctx.shape != (order - 1,):
            raise ValueError(f"context must hold order - 1 = {order - 1} ids, got {ctx.shape[0]}")
    start = int(_context_index(jnp.asarray(ctx, jnp.int32), v)) if order > 1 else 0
    return _sample_kernel(key, model.log_probs, start, order, n, length,
                          jnp.asarray(temperature, model.log_probs.dtype))


def decode_names(ids, vocab) -> list[str]:
    """Turn sampled rows of ids ``(n, length)`` into names: each row up to (not including) its
    first boundary."""
    rows = np.asarray(_validate.ids(ids, "ids", vocab.size, ndim=2))
    return [vocab.decode(row).split(BOUNDARY, 1)[0] for row in rows]


# =========================================================================== neural bigram


@jax.jit
def _bigram_loss(logits_table, inputs, targets):
    logits = logits_table[inputs]
    return jnp.mean(optax.softmax_cross_entropy_with_integer_labels(logits, targets))


def bigram_loss(logits_table: jax.Array, inputs, targets) -> jax.Array:
    """Mean negative log-likelihood of a "neural" bigram: :math:`p(y \\mid x) = \\mathrm{softmax}(W_x)_y`.

    :math:`L(W) = -\\frac1N \\sum_n \\log \\mathrm{softmax}(W_{x_n})_{y_n}`. With C the bigram
    count table (:math:`C_x = \\sum_y C_{xy}`) its gradient is

    .. math::  \\frac{\\partial L}{\\partial W_{xy}} = \\frac{C_x\\, \\mathrm{softmax}(W_x)_y - C_{xy}}{N}.

    It would vanish where :math:`\\mathrm{softmax}(W_x) = C_x / C_x`, the count-based bigram,
    but a softmax at finite logits puts probability > 0 on every symbol: when a row has an
    unseen pair (:math:`C_{xy} = 0`) that gradient entry stays > 0, there is no stationary
    point, and the infimum :func:`bigram_mle_loss` is approached only as those logits go to
    :math:`-\\infty`. (A context never seen, :math:`C_x = 0`, leaves its row untouched.)

    Args: logits_table (V, V) real; inputs, targets (N,) ids in [0, V).
    Returns: scalar loss (nats). Works under ``jax.grad``; ids are checked when concrete.
    """
    table = _validate.real_array(logits_table, "logits_table", ndim=2, finite=False)
    bad = jnp.any(~jnp.isfinite(table))
    if _validate.is_concrete(bad) and bool(bad):              # skipped under jit and grad
        raise ValueError("logits_table contains NaN or infinite values")
    v = int(table.shape[1])
    if table.shape[0] != v:
        raise ValueError(f"logits_table must be square (V, V), got shape {tuple(table.shape)}")
    inputs = _validate.ids(inputs, "inputs", v, ndim=1)
    targets = _validate.ids(targets, "targets", v, ndim=1)
    if inputs.shape != targets.shape or inputs.shape[0] == 0:
        raise ValueError(f"inputs and targets must be non-empty and of equal length, got "
                         f"{inputs.shape[0]} and {targets.shape[0]}")
    return _bigram_loss(table, inputs, targets)


def bigram_mle_loss(counts) -> jax.Array:
    """Infimum of :func:`bigram_loss` over all logits tables:
    :math:`-\\frac1N\\sum_{x,y} C_{xy}\\log(C_{xy}/C_x)`, with :math:`0 \\log 0 = 0`.

    It is the loss of the count-based (maximum-likelihood) bigram, the minimum over all
    conditional distributions. A finite logits table attains it only if every context that
    occurs is followed by every symbol at least once; otherwise the neural bigram's loss stays
    strictly above it and only tends to it as the logits of the unseen pairs go to
    :math:`-\\infty`.

    Args: counts (V, V) non-negative, finite, not all zero (e.g. :func:`ngram_counts` of bigram
    windows).
    """
    counts = _validate.real_array(counts, "counts", ndim=2)
    if _validate.is_concrete(counts):
        c = np.asarray(counts)
        if np.any(c < 0):
            raise ValueError(f"counts must be non-negative, got {c.min():.6g}")
        if not c.sum() > 0:
            raise ValueError("counts must not all be zero")
    totals = counts.sum(axis=1, keepdims=True)
    safe = jnp.where(counts > 0, counts / jnp.where(totals > 0, totals, 1.0), 1.0)
    return -jnp.sum(counts * jnp.log(safe)) / jnp.sum(counts)


@partial(jax.jit, static_argnames=("vocab_size", "steps"))
def _train_bigram_kernel(key, inputs, targets, vocab_size, steps, learning_rate, init_scale):
    optimizer = optax.adam(learning_rate)
    w = init_scale * jax.random.normal(key, (vocab_size, vocab_size), jnp.result_type(float))
    state = optimizer.init(w)
    loss_and_grad = jax.value_and_grad(_bigram_loss)

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
    (steps,))``; ``losses[t]`` is the loss before update t. The loss decreases toward
    :func:`bigram_mle_loss` but stays above it while some observed context has an unseen
    successor (see :func:`bigram_loss`).
    """
    key = _validate.key(key)
    v = _validate.count(vocab_size, "vocab_size")
    inputs = _validate.ids(inputs, "inputs", v, ndim=1).astype(jnp.int32)
    targets = _validate.ids(targets, "targets", v, ndim=1).astype(jnp.int32)
    if inputs.shape != targets.shape or inputs.shape[0] == 0:
        raise ValueError(f"inputs and targets must be non-empty and of equal length, got "
                         f"{inputs.shape[0]} and {targets.shape[0]}")
    steps = _validate.count(steps, "steps")
    learning_rate = _validate.real(learning_rate, "learning_rate", low=0.0, low_open=True)
    init_scale = _validate.real(init_scale, "init_scale", low=0.0)
    return _train_bigram_kernel(key, inputs, targets, v, steps, learning_rate, init_scale)
