"""A small GPT, written as pure functions over a parameter pytree: tokenisers, attention,
the decoder-only transformer, its training step, sampling, a KV cache and data parallelism.

GPT is a *decoder-only* transformer trained by *causal* language modelling: position ``t``
predicts token ``t + 1`` and attends only to positions ``<= t`` (a causal mask). Nothing is
masked out of the input as in BERT's masked language modelling. The attention weights are
computed from the input (a softmax of query-key products), so they differ for every
sentence: a transformer does not pay "equal attention" to all elements.

Shapes: ``B`` batch, ``T`` time (tokens), ``V`` vocabulary size, ``W`` width (model
dimension), ``H`` heads, ``D = W / H`` head width, ``L`` layers.

The pieces, each one job:

* tokenisers: :func:`train_bpe`, :func:`bpe_encode`, :func:`bpe_decode` (characters:
  :class:`course_lib.data.CharVocab`);
* attention: :func:`causal_mask`, :func:`attention_weights`, :func:`attention`,
  :func:`split_heads`, :func:`merge_heads`; positions: :func:`sinusoidal_positions`;
* the model: :class:`Config`, :func:`init`, :func:`param_count`, :func:`layer_norm`,
  :func:`linear`, :func:`mlp`, :func:`transformer_block`, :func:`hidden_states`,
  :func:`logits`, :func:`loss`, :func:`bits_per_char`;
* training: :func:`make_optimizer`, :func:`make_train_step`, :func:`windows`,
  :func:`window_starts`, :func:`sample_windows`, :func:`train_state`, :func:`make_update`,
  :func:`make_eval_fn` (the last three plug into :func:`course_lib.train.loop`);
* sampling: :func:`filter_logits`, :func:`sample_token`, :func:`generate` (naive: the
  whole context recomputed for every token), :func:`generate_cached` (a KV cache);
* data parallelism: :func:`make_mesh`, :func:`shard_batch`, :func:`replicate`,
  :func:`make_data_parallel_step`, :func:`describe_layout`.

Speed on the CPU. The training step is one ``jax.jit`` function over the parameter pytree
and the optax state (both donated). Two layers carry a hand-written backward pass
(``jax.custom_vjp``): :func:`layer_norm` keeps the normalised input and ``1/sigma`` for
its gradient, and :func:`linear` computes its weight gradient as one 2-D matrix product
``x.reshape(-1, n_in).T @ g.reshape(-1, n_out)`` (the stock gradient of ``x @ w`` on a
3-D ``x`` builds a strided, transposed copy of ``g`` on XLA:CPU). The exact GELU is
``x (1 + erf(x / sqrt 2)) / 2`` with its derivative written out (``jax.nn.gelu`` goes
through ``erfc``, a slower branchy kernel on XLA:CPU; the two agree to float32 rounding).
Building a training step (:func:`make_train_step`, :func:`make_update`,
:func:`make_data_parallel_step`) also asks glibc to keep freed memory for reuse (see
``_retain_freed_memory``): otherwise XLA:CPU's per-call scratch space, too large for
malloc's automatic reuse, is mapped afresh and page-faulted in at every step.
"""
from __future__ import annotations

import ctypes
import dataclasses
import math
import sys
from functools import partial
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from course_lib import _validate

Array = jax.Array

__all__ = [
    # tokenisers
    "BPE", "train_bpe", "bpe_encode", "bpe_decode", "bpe_pieces",
    # attention and positions
    "causal_mask", "attention_weights", "attention", "split_heads", "merge_heads",
    "sinusoidal_positions",
    # the model
    "Config", "Params", "init", "param_count", "layer_norm", "linear", "mlp",
    "transformer_block", "hidden_states", "logits", "loss", "bits_per_char",
    # training
    "make_optimizer", "make_train_step", "windows", "window_starts", "sample_windows",
    "TrainState", "train_state", "make_update", "make_eval_fn",
    # sampling
    "filter_logits", "sample_token", "generate", "generate_cached",
    # data parallelism
    "make_mesh", "shard_batch", "replicate", "make_data_parallel_step", "describe_layout",
]

_LN_EPS = 1e-5


# =============================================================================== tokenisers
class BPE(NamedTuple):
    """A byte-pair encoding over characters.

    Attributes:
      chars: the base alphabet; ``chars[i]`` has id ``i`` (sorted, as ``CharVocab``).
      merges: ``merges[j] = (a, b)``: the pair of ids that became id ``len(chars) + j``.
    """

    chars: str
    merges: tuple[tuple[int, int], ...]

    @property
    def vocab_size(self) -> int:
        return len(self.chars) + len(self.merges)


def _char_ids(chars: str, text: str, name: str) -> np.ndarray:
    lookup = {c: i for i, c in enumerate(chars)}
    try:
        return np.fromiter((lookup[c] for c in text), dtype=np.int64, count=len(text))
    except KeyError as exc:
        raise ValueError(f"{name} contains {exc.args[0]!r}, which is not in the "
                         f"tokeniser's alphabet") from None


def _pair_counts(ids: np.ndarray, size: int) -> np.ndarray:
    """Counts of every adjacent pair ``(a, b)`` (overlapping occurrences all counted), as a
    flat array indexed by ``a * size + b``."""
    return np.bincount(ids[:-1] * size + ids[1:], minlength=size * size)


def _merge(ids: np.ndarray, a: int, b: int, new: int) -> np.ndarray:
    """Replace every occurrence of the pair ``(a, b)``, scanning left to right and never
    reusing a token (``a a a`` with the pair ``(a, a)`` becomes ``new a``)."""
    hit = np.flatnonzero((ids[:-1] == a) & (ids[1:] == b))
    if hit.size == 0:
        return ids
    if a == b:        # runs of overlapping hits: keep the 1st, 3rd, 5th... of each run
        run_start = np.ones(hit.size, bool)
        run_start[1:] = hit[1:] != hit[:-1] + 1
        first = np.maximum.accumulate(np.where(run_start, np.arange(hit.size), 0))
        hit = hit[(np.arange(hit.size) - first) % 2 == 0]
    out = ids.copy()
    out[hit] = new
    return np.delete(out, hit + 1)


def train_bpe(text: str, vocab_size: int) -> BPE:
    """Learn a byte-pair encoding of ``text`` with ``vocab_size`` ids, greedily.

    Start from the characters of ``text`` (sorted; each one id). Then repeat: count every
    adjacent pair of ids in the current sequence (overlapping pairs all count, so ``aaa``
    holds ``(a, a)`` twice), give the most frequent pair a new id and replace its occurrences
    left to right. **Ties**: among pairs with the same count, the smallest ``(a, b)``
    (compared as a tuple of ids) wins. Training stops at ``vocab_size`` ids, or earlier when
    no pair occurs twice (a merge that saves one token is no merge worth learning).

    No pre-tokenisation: merges may cross spaces and newlines (GPT-2 splits words first).
    """
    if not isinstance(text, str) or not text:
        raise ValueError("text must be a non-empty string")
    chars = "".join(sorted(set(text)))
    vocab_size = _validate.count(vocab_size, "vocab_size", minimum=len(chars))
    ids = _char_ids(chars, text, "text")
    merges: list[tuple[int, int]] = []
    size = vocab_size        # ids stay below vocab_size, so a * size + b is a unique code
    while len(chars) + len(merges) < vocab_size and ids.size >= 2:
        counts = _pair_counts(ids, size)
        best = int(np.argmax(counts))            # the first maximum: the smallest (a, b)
        if counts[best] < 2:
            break
        a, b = divmod(best, size)
        merges.append((a, b))
        ids = _merge(ids, a, b, len(chars) + len(merges) - 1)
    return BPE(chars, tuple(merges))


def _check_bpe(bpe) -> BPE:
    if not isinstance(bpe, BPE):
        raise ValueError(f"bpe must be a BPE from train_bpe, got {type(bpe).__name__}")
    return bpe


def bpe_encode(bpe: BPE, text: str) -> np.ndarray:
    """``text`` -> ids ``(n,)`` int32: the characters, then every merge in the order it was
    learned (the same steps as training, so the training text encodes as training left it).

    Raises ValueError if ``text`` holds a character outside ``bpe.chars``."""
    bpe = _check_bpe(bpe)
    if not isinstance(text, str):
        raise ValueError(f"text must be a string, got {type(text).__name__}")
    ids = _char_ids(bpe.chars, text, "text")
    for j, (a, b) in enumerate(bpe.merges):
        if ids.size < 2:
            break
        ids = _merge(ids, a, b, len(bpe.chars) + j)
    return ids.astype(np.int32)


def bpe_pieces(bpe: BPE) -> list[str]:
    """The string of every id: ``pieces[i]`` for ``i < len(chars)`` is a character, then
    ``pieces[len(chars) + j] = pieces[a] + pieces[b]`` for merge ``j = (a, b)``."""
    bpe = _check_bpe(bpe)
    pieces = list(bpe.chars)
    for a, b in bpe.merges:
        pieces.append(pieces[a] + pieces[b])
    return pieces


def bpe_decode(bpe: BPE, ids) -> str:
    """Ids -> text (the concatenated pieces); ids outside ``[0, vocab_size)`` raise."""
    ids = np.asarray(_validate.ids(ids, "ids", _check_bpe(bpe).vocab_size, what="tokens"))
    pieces = bpe_pieces(bpe)
    return "".join(pieces[int(i)] for i in ids.reshape(-1))


# =============================================================================== attention
def causal_mask(length: int) -> Array:
    """Boolean ``(length, length)`` mask: ``mask[i, j]`` is True when query ``i`` may attend
    to key ``j``, i.e. ``j <= i`` (lower triangle, diagonal included)."""
    length = _validate.count(length, "length")
    return jnp.tril(jnp.ones((length, length), bool))


def _check_qkv(q, k, v=None):
    q = _validate.real_array(q, "q")
    k = _validate.real_array(k, "k")
    if q.ndim < 3 or k.ndim != q.ndim or q.shape[-1] != k.shape[-1] or q.shape[:-3] != k.shape[:-3] \
            or q.shape[-2] != k.shape[-2]:
        raise ValueError(f"q (..., Tq, H, D) and k (..., Tk, H, D) must agree in batch, heads "
                         f"and D, got {tuple(q.shape)} and {tuple(k.shape)}")
    if v is not None:
        v = _validate.real_array(v, "v")
        if v.shape[:-1] != k.shape[:-1]:
            raise ValueError(f"v must have shape (..., Tk, H, Dv) with k's (..., Tk, H), got "
                             f"{tuple(v.shape)} and k {tuple(k.shape)}")
    return q, k, v


def _scores(q: Array, k: Array, mask) -> Array:
    """Masked, scaled scores ``q . k / sqrt(D)``: ``(..., Tq, H, D), (..., Tk, H, D) ->
    (..., H, Tq, Tk)``; masked entries are ``-inf``."""
    s = jnp.einsum("...qhd,...khd->...hqk", q, k) * (1.0 / math.sqrt(q.shape[-1]))
    return s if mask is None else jnp.where(mask, s, -jnp.inf)


def _attend(q: Array, k: Array, v: Array, mask) -> Array:
    w = jax.nn.softmax(_scores(q, k, mask), axis=-1)
    return jnp.einsum("...hqk,...khd->...qhd", w, v)


def attention_weights(q, k, *, causal: bool = True, scale: bool = True) -> Array:
    """Attention weights ``softmax(q k^T / sqrt(D))`` per head.

    ``q (..., Tq, H, D)``, ``k (..., Tk, H, D)`` -> ``(..., H, Tq, Tk)``; each row sums to 1.
    ``causal`` (needs ``Tq == Tk``) zeroes the weights of keys after the query.
    ``scale=False`` drops the ``1/sqrt(D)``: with ``D``-dimensional unit-variance ``q`` and
    ``k`` the scores then have variance ``D`` and the softmax saturates (one-hot rows).
    """
    q, k, _ = _check_qkv(q, k)
    mask = _mask_for(q, k, causal)
    if not scale:
        q = q * math.sqrt(q.shape[-1])
    return jax.nn.softmax(_scores(q, k, mask), axis=-1)


def _mask_for(q, k, causal: bool):
    if not causal:
        return None
    if q.shape[-3] != k.shape[-3]:
        raise ValueError(f"causal attention needs as many queries as keys, got "
                         f"{q.shape[-3]} and {k.shape[-3]}")
    return causal_mask(q.shape[-3])


def attention(q, k, v, *, causal: bool = True) -> Array:
    """Scaled dot-product attention, from scratch.

    ``out[..., i, h, :] = sum_j a[..., h, i, j] v[..., j, h, :]`` with
    ``a = softmax_j(q_i . k_j / sqrt(D))`` (over ``j <= i`` when ``causal``).

    Shapes (the layout of ``jax.nn.dot_product_attention``): ``q (..., Tq, H, D)``,
    ``k (..., Tk, H, D)``, ``v (..., Tk, H, Dv)`` -> ``(..., Tq, H, Dv)``.
    """
    q, k, v = _check_qkv(q, k, v)
    return _attend(q, k, v, _mask_for(q, k, causal))


def split_heads(x, n_head: int) -> Array:
    """``(..., T, W) -> (..., T, H, W / H)``: each head reads its own slice of the width."""
    x = _validate.real_array(x, "x")
    n_head = _validate.count(n_head, "n_head")
    if x.ndim < 2 or x.shape[-1] % n_head:
        raise ValueError(f"n_head ({n_head}) must divide x's last axis, got shape {x.shape}")
    return x.reshape(*x.shape[:-1], n_head, x.shape[-1] // n_head)


def merge_heads(x) -> Array:
    """``(..., T, H, D) -> (..., T, H * D)``: the inverse of :func:`split_heads`."""
    x = _validate.real_array(x, "x")
    if x.ndim < 3:
        raise ValueError(f"x must be (..., T, H, D), got shape {x.shape}")
    return x.reshape(*x.shape[:-2], x.shape[-2] * x.shape[-1])


def sinusoidal_positions(length: int, width: int) -> Array:
    """The fixed positional encoding of "Attention is all you need", ``(length, width)``:

    ``P[t, 2i] = sin(t / 10000^(2i/W))``, ``P[t, 2i+1] = cos(t / 10000^(2i/W))``.
    Each pair of columns is a rotation at its own frequency, so ``P[t + s]`` is a fixed
    linear function of ``P[t]`` for every offset ``s``. ``width`` must be even.
    """
    length = _validate.count(length, "length")
    width = _validate.count(width, "width", minimum=2)
    if width % 2:
        raise ValueError(f"width must be even for sinusoidal positions, got {width}")
    return _sinusoidal(length, width)


def _sinusoidal(length: int, width: int) -> Array:
    t = np.arange(length)[:, None]
    freq = 1.0 / 10000.0 ** (np.arange(0, width, 2) / width)
    p = np.zeros((length, width), np.float32)
    p[:, 0::2] = np.sin(t * freq)
    p[:, 1::2] = np.cos(t * freq)
    return jnp.asarray(p)


# =============================================================================== the model
@dataclasses.dataclass(frozen=True)
class Config:
    """A GPT's sizes (checked when made; frozen, so it can be a static part of the params).

    Attributes:
      vocab_size: ``V`` token ids.
      block_size: the context: the most tokens the model reads at once (learned positions).
      n_layer, n_head, width: ``L`` blocks, ``H`` heads, ``W`` model width (``H`` divides
        ``W``; the MLP is ``4 W`` wide).
      positions: ``"learned"`` (a trained ``(block_size, W)`` table) or ``"sinusoidal"``.

    nanoGPT's CPU configuration on characters: ``Config(65, 64, 4, 4, 128)``.
    """

    vocab_size: int
    block_size: int
    n_layer: int
    n_head: int
    width: int
    positions: str = "learned"

    def __post_init__(self):
        for name in ("vocab_size", "block_size", "n_layer", "n_head", "width"):
            object.__setattr__(self, name, _validate.count(getattr(self, name), name))
        if self.width % self.n_head:
            raise ValueError(f"n_head ({self.n_head}) must divide width ({self.width})")
        if self.positions not in ("learned", "sinusoidal"):
            raise ValueError(f"positions must be 'learned' or 'sinusoidal', got "
                             f"{self.positions!r}")
        if self.positions == "sinusoidal" and self.width % 2:
            raise ValueError(f"width must be even for sinusoidal positions, got {self.width}")

    @property
    def head_width(self) -> int:
        return self.width // self.n_head


@partial(jax.tree_util.register_dataclass, data_fields=["tok", "pos", "blocks", "ln_f"],
         meta_fields=["config"])
@dataclasses.dataclass
class Params:
    """A GPT's parameters: a pytree (optax, ``jax.grad`` and checkpoints see the arrays;
    ``config`` rides along as static data).

    Attributes:
      tok: ``(V, W)`` token embedding, also the output layer (weight tying:
        ``logits = h @ tok.T``).
      pos: ``(block_size, W)`` learned positions, or None for sinusoidal ones.
      blocks: one dict per layer: ``ln1``/``ln2`` (dicts of ``scale``, ``bias`` ``(W,)``),
        ``qkv (W, 3W)``, ``proj (W, W)``, ``fc (W, 4W)``, ``fc_proj (4W, W)``.
      ln_f: the final layer norm (``scale``, ``bias``).
      config: the :class:`Config`.
    """

    tok: Array
    pos: Array | None
    blocks: list
    ln_f: dict
    config: Config


def _check_config(config) -> Config:
    if not isinstance(config, Config):
        raise ValueError(f"config must be a gpt.Config, got {type(config).__name__}")
    return config


def _check_params(params) -> Params:
    if not isinstance(params, Params):
        raise ValueError(f"params must be gpt.Params (from gpt.init), got {type(params).__name__}")
    return params


@partial(jax.jit, static_argnums=1)
def _init(key, config: Config) -> Params:
    V, W, L = config.vocab_size, config.width, config.n_layer
    std, std_res = 0.02, 0.02 / math.sqrt(2 * L)
    keys = jax.random.split(key, 2 + L)

    def normal(k, shape, s):
        return s * jax.random.normal(k, shape, jnp.float32)

    def ln():
        return {"scale": jnp.ones((W,), jnp.float32), "bias": jnp.zeros((W,), jnp.float32)}

    blocks = []
    for i in range(L):
        kq, kp, kf, kfp = jax.random.split(keys[2 + i], 4)
        blocks.append({"ln1": ln(), "qkv": normal(kq, (W, 3 * W), std),
                       "proj": normal(kp, (W, W), std_res), "ln2": ln(),
                       "fc": normal(kf, (W, 4 * W), std), "fc_proj": normal(kfp, (4 * W, W), std_res)})
    pos = normal(keys[1], (config.block_size, W), std) if config.positions == "learned" else None
    return Params(tok=normal(keys[0], (V, W), std), pos=pos, blocks=blocks, ln_f=ln(),
                  config=config)


def init(key, config: Config) -> Params:
    """nanoGPT's initialisation: every matrix and embedding ``N(0, 0.02^2)``, except the two
    residual projections of each block (``proj``, ``fc_proj``), drawn with std
    ``0.02 / sqrt(2 L)`` so that the residual stream's variance does not grow with depth
    (``2 L`` additions); layer norms start at ``scale = 1``, ``bias = 0``. No biases in the
    linear layers."""
    key = _validate.key(key)
    return _init(key, _check_config(config))


def param_count(config: Config) -> int:
    """Trainable scalars: ``V W`` (tied embedding and output) ``+ block_size W`` (learned
    positions only) ``+ L (12 W^2 + 4 W) + 2 W``.

    Per block: ``3 W^2`` (q, k, v) ``+ W^2`` (output projection) ``+ 8 W^2`` (MLP, ``W -> 4W
    -> W``) ``+ 4 W`` (two layer norms' scales and biases); ``2 W`` for the final layer norm.
    """
    c = _check_config(config)
    W = c.width
    pos = c.block_size * W if c.positions == "learned" else 0
    return c.vocab_size * W + pos + c.n_layer * (12 * W * W + 4 * W) + 2 * W


# ------------------------------------------------------------------ layers with own gradients
@jax.custom_vjp
def _layer_norm(x, scale, bias):
    mu = x.mean(-1, keepdims=True)
    xc = x - mu
    rstd = jax.lax.rsqrt((xc * xc).mean(-1, keepdims=True) + _LN_EPS)
    return xc * rstd * scale + bias


def _layer_norm_fwd(x, scale, bias):
    mu = x.mean(-1, keepdims=True)
    xc = x - mu
    rstd = jax.lax.rsqrt((xc * xc).mean(-1, keepdims=True) + _LN_EPS)
    xhat = xc * rstd
    return xhat * scale + bias, (xhat, rstd, scale)


def _layer_norm_bwd(res, g):
    xhat, rstd, scale = res
    axes = tuple(range(g.ndim - 1))
    dscale = (g * xhat).sum(axes)
    dbias = g.sum(axes)
    gx = g * scale
    dx = rstd * (gx - gx.mean(-1, keepdims=True) - xhat * (gx * xhat).mean(-1, keepdims=True))
    return dx, dscale, dbias


_layer_norm.defvjp(_layer_norm_fwd, _layer_norm_bwd)


def layer_norm(x, scale, bias) -> Array:
    """``(x - mean) / sqrt(var + 1e-5) * scale + bias`` over the last axis (width ``W``).

    Its backward pass is written by hand (``jax.custom_vjp``): with ``xhat`` the normalised
    input and ``g' = g * scale``, ``dx = (g' - mean(g') - xhat mean(g' xhat)) / sigma``.
    """
    return _layer_norm(x, scale, bias)


@jax.custom_vjp
def _linear(x, w):
    return x @ w


def _linear_fwd(x, w):
    return x @ w, (x, w)


def _linear_bwd(res, g):
    x, w = res
    dw = x.reshape(-1, x.shape[-1]).T @ g.reshape(-1, g.shape[-1])
    return g @ w.T, dw


_linear.defvjp(_linear_fwd, _linear_bwd)


@jax.custom_vjp
def _linear_t(x, w):
    """``x @ w.T`` (the tied output layer, ``w`` the ``(V, W)`` embedding)."""
    return x @ w.T


def _linear_t_fwd(x, w):
    return x @ w.T, (x, w)


def _linear_t_bwd(res, g):
    x, w = res
    dw = g.reshape(-1, g.shape[-1]).T @ x.reshape(-1, x.shape[-1])
    return g @ w, dw


_linear_t.defvjp(_linear_t_fwd, _linear_t_bwd)


def linear(x, w) -> Array:
    """``x @ w`` for ``x (..., n_in)``, ``w (n_in, n_out)``, with a hand-written backward:
    ``dx = g @ w.T`` and ``dw = x2.T @ g2`` with ``x2``, ``g2`` flattened to 2-D."""
    return _linear(x, w)


def _attention_heads(layer: dict, h: Array, n_head: int):
    """``h (B, T, W)`` -> q, k, v, each ``(B, T, H, D)`` (one fused ``W x 3W`` product)."""
    qkv = _linear(h, layer["qkv"])
    B, T, W3 = qkv.shape
    qkv = qkv.reshape(B, T, 3, n_head, W3 // (3 * n_head))
    return qkv[:, :, 0], qkv[:, :, 1], qkv[:, :, 2]


_SQRT_HALF = 1.0 / math.sqrt(2.0)
_INV_SQRT_2PI = 1.0 / math.sqrt(2.0 * math.pi)


@jax.custom_vjp
def _gelu(x):
    """Exact GELU ``x Phi(x) = x (1 + erf(x / sqrt 2)) / 2``."""
    return 0.5 * x * (1.0 + jax.lax.erf(x * _SQRT_HALF))


def _gelu_fwd(x):
    return _gelu(x), x


def _gelu_bwd(x, g):
    # d/dx [x Phi(x)] = Phi(x) + x phi(x), phi the standard normal density
    cdf = 0.5 * (1.0 + jax.lax.erf(x * _SQRT_HALF))
    return (g * (cdf + x * jnp.exp(-0.5 * x * x) * _INV_SQRT_2PI),)


_gelu.defvjp(_gelu_fwd, _gelu_bwd)


def _mlp(layer: dict, h: Array) -> Array:
    return _linear(_gelu(_linear(h, layer["fc"])), layer["fc_proj"])


def mlp(layer: dict, h) -> Array:
    """The block's MLP: ``GELU(h @ fc) @ fc_proj``, ``W -> 4W -> W`` (exact, erf GELU)."""
    return _mlp(layer, _validate.real_array(h, "h"))


def _block(layer: dict, x: Array, n_head: int, mask) -> Array:
    h = _layer_norm(x, layer["ln1"]["scale"], layer["ln1"]["bias"])
    q, k, v = _attention_heads(layer, h, n_head)
    a = _attend(q, k, v, mask)
    x = x + _linear(a.reshape(x.shape), layer["proj"])
    h = _layer_norm(x, layer["ln2"]["scale"], layer["ln2"]["bias"])
    return x + _mlp(layer, h)


def transformer_block(layer: dict, x, *, n_head: int) -> Array:
    """One pre-LN block on the residual stream ``x (B, T, W)``::

        x = x + proj(causal multi-head attention(layer_norm(x)))
        x = x + mlp(layer_norm(x))

    Normalising *before* each sub-layer (pre-LN, GPT-2) leaves an identity path from input to
    output, which keeps deep stacks trainable without a learning-rate warm-up trick.
    """
    x = _validate.real_array(x, "x", ndim=3)
    n_head = _validate.count(n_head, "n_head")
    return _block(layer, x, n_head, causal_mask(x.shape[1]))


def _embed(params: Params, tokens: Array, offset=0) -> Array:
    c = params.config
    T = tokens.shape[-1]
    if c.positions == "learned":
        pos = jax.lax.dynamic_slice_in_dim(params.pos, offset, T) if T != c.block_size else params.pos
    else:
        table = _sinusoidal(c.block_size, c.width)
        pos = jax.lax.dynamic_slice_in_dim(table, offset, T) if T != c.block_size else table
    return params.tok[tokens] + pos


def _hidden(params: Params, tokens: Array) -> Array:
    x = _embed(params, tokens)
    mask = jnp.tril(jnp.ones((tokens.shape[-1],) * 2, bool))
    for layer in params.blocks:
        x = _block(layer, x, params.config.n_head, mask)
    return _layer_norm(x, params.ln_f["scale"], params.ln_f["bias"])


def _logits(params: Params, tokens: Array) -> Array:
    return _linear_t(_hidden(params, tokens), params.tok)


def _check_tokens(params: Params, tokens, name: str = "tokens") -> Array:
    c = params.config
    tokens = _validate.ids(tokens, name, c.vocab_size, ndim=2, what="tokens")
    if not 1 <= tokens.shape[1] <= c.block_size:
        raise ValueError(f"{name} must hold 1 to block_size = {c.block_size} tokens per row, "
                         f"got {tokens.shape[1]}")
    return tokens


_hidden_jit = jax.jit(_hidden)
_logits_jit = jax.jit(_logits)


def hidden_states(params: Params, tokens) -> Array:
    """The final (layer-normed) residual stream ``(B, T, W)`` for ``tokens (B, T)``."""
    params = _check_params(params)
    return _hidden_jit(params, _check_tokens(params, tokens))


def logits(params: Params, tokens) -> Array:
    """Next-token logits ``(B, T, V)`` for ``tokens (B, T)``, ``T <= block_size``: token and
    position embeddings, ``L`` pre-LN blocks, a final layer norm, and the tied output layer
    ``h @ tok.T``. ``logits[:, t]`` depends on ``tokens[:, :t + 1]`` only (causal)."""
    params = _check_params(params)
    return _logits_jit(params, _check_tokens(params, tokens))


def _loss(params: Params, tokens: Array, targets: Array) -> Array:
    z = _logits(params, tokens)
    lse = jax.nn.logsumexp(z, axis=-1)
    picked = jnp.take_along_axis(z, targets[..., None], axis=-1)[..., 0]
    return jnp.mean(lse - picked)


_loss_jit = jax.jit(_loss)


def loss(params: Params, tokens, targets) -> Array:
    """Mean cross-entropy of next-token prediction in nats per token:
    ``-mean_{b,t} log softmax(logits(tokens))[b, t, targets[b, t]]``, where usually
    ``targets[:, t] = tokens[:, t + 1]`` (see :func:`windows`)."""
    params = _check_params(params)
    tokens = _check_tokens(params, tokens)
    targets = _validate.ids(targets, "targets", params.config.vocab_size, what="tokens")
    if targets.shape != tokens.shape:
        raise ValueError(f"targets must have tokens' shape {tokens.shape}, got {targets.shape}")
    return _loss_jit(params, tokens, targets)


def bits_per_char(loss_nats, *, chars_per_token: float = 1.0) -> float:
    """A loss in nats per token as bits per character: ``loss / ln 2 / chars_per_token``.

    Tokenisers cut text differently (a BPE token covers several characters), so losses per
    token are not comparable across tokenisers; per character they are. For a tokenised
    text, ``chars_per_token = len(text) / len(ids)``."""
    value = _validate.real(loss_nats, "loss_nats", low=0.0)
    cpt = _validate.real(chars_per_token, "chars_per_token", low=0.0, low_open=True)
    return value / math.log(2.0) / cpt


# =============================================================================== training
def make_optimizer(*, learning_rate: float = 1e-3, steps: int = 5000, warmup_steps: int = 100,
                   weight_decay: float = 0.1, clip_norm: float = 1.0, b1: float = 0.9,
                   b2: float = 0.99, min_lr_ratio: float = 0.1) -> optax.GradientTransformation:
    """AdamW with a linear warm-up then cosine decay, after global-norm gradient clipping.

    The learning rate rises from 0 to ``learning_rate`` over ``warmup_steps``, then follows a
    cosine down to ``min_lr_ratio * learning_rate`` at ``steps``. Gradients are first scaled
    so that their global norm is at most ``clip_norm``. Weight decay (decoupled, AdamW)
    applies to matrices and embeddings only, not to layer-norm scales and biases (nanoGPT's
    rule: parameters with 2 or more axes)."""
    learning_rate = _validate.real(learning_rate, "learning_rate", low=0.0, low_open=True)
    steps = _validate.count(steps, "steps")
    warmup_steps = _validate.count(warmup_steps, "warmup_steps", minimum=0, maximum=steps)
    weight_decay = _validate.real(weight_decay, "weight_decay", low=0.0)
    clip_norm = _validate.real(clip_norm, "clip_norm", low=0.0, low_open=True)
    b1 = _validate.real(b1, "b1", low=0.0, high=1.0, high_open=True)
    b2 = _validate.real(b2, "b2", low=0.0, high=1.0, high_open=True)
    min_lr_ratio = _validate.real(min_lr_ratio, "min_lr_ratio", low=0.0, high=1.0)
    schedule = optax.warmup_cosine_decay_schedule(
        init_value=0.0, peak_value=learning_rate, warmup_steps=warmup_steps,
        decay_steps=steps, end_value=learning_rate * min_lr_ratio)
    return optax.chain(
        optax.clip_by_global_norm(clip_norm),
        optax.adamw(schedule, b1=b1, b2=b2, weight_decay=weight_decay,
                    mask=lambda p: jax.tree.map(lambda a: a.ndim >= 2, p)))


_MALLOC_TUNED = False


def _retain_freed_memory() -> None:
    """Let glibc's malloc keep and reuse freed memory, once per process (Linux only).

    XLA:CPU allocates a compiled call's scratch space (tens of MB for a training step) with
    ``malloc`` and frees it after the call. Above glibc's largest automatic mmap threshold
    (32 MB) each such block is a fresh ``mmap``, so every step page-faults its whole scratch
    space in again: measured 20 ms of kernel time in a 70 ms step at nanoGPT's CPU size.
    Raising the mmap and trim thresholds to 1 GiB makes those blocks come from, and return
    to, the heap. Numbers are unchanged; the process just keeps its peak heap.
    """
    global _MALLOC_TUNED
    if _MALLOC_TUNED:
        return
    _MALLOC_TUNED = True
    if not sys.platform.startswith("linux"):
        return
    try:
        libc = ctypes.CDLL("libc.so.6")
        libc.mallopt(-3, 1 << 30)        # M_MMAP_THRESHOLD
        libc.mallopt(-1, 1 << 30)        # M_TRIM_THRESHOLD
    except (OSError, AttributeError):    # not glibc: nothing to tune
        pass


def _step(tx, params, opt_state, tokens, targets):
    value, grads = jax.value_and_grad(_loss)(params, tokens, targets)
    updates, opt_state = tx.update(grads, opt_state, params)
    return optax.apply_updates(params, updates), opt_state, value


def make_train_step(tx: optax.GradientTransformation):
    """The compiled training step for the optimizer ``tx``:
    ``step(params, opt_state, tokens, targets) -> (params, opt_state, loss)``.

    ``tokens``, ``targets`` are ``(B, T)`` ids (unchecked: check them once, outside the loop);
    ``loss`` is the mean cross-entropy before the update. ``params`` and ``opt_state`` are
    donated: their buffers are reused for the results, so do not read the old ones again.
    """
    if not isinstance(tx, optax.GradientTransformation):
        raise ValueError(f"tx must be an optax transformation, got {type(tx).__name__}")
    _retain_freed_memory()
    return partial(_step_jit, tx)


# compiled once per optimizer object and shapes (tx is static: hashed by identity)
_step_jit = jax.jit(_step, static_argnums=0, donate_argnums=(1, 2))


@partial(jax.jit, static_argnums=0, donate_argnums=(1, 2))
def _window_step(tx, params, opt_state, tokens, starts):
    x, y = _windows(tokens, starts, params.config.block_size)
    return _step(tx, params, opt_state, x, y)


@jax.jit
def _window_loss(params, tokens, starts):
    x, y = _windows(tokens, starts, params.config.block_size)
    return _loss(params, x, y)


def _windows(tokens: Array, starts: Array, block_size: int):
    idx = starts[:, None] + jnp.arange(block_size + 1)
    w = tokens[idx]
    return w[:, :-1], w[:, 1:]


def windows(tokens, starts, block_size: int) -> tuple[Array, Array]:
    """The training pairs at ``starts (B,)``: ``inputs[b] = tokens[s_b : s_b + T]`` and
    ``targets[b] = tokens[s_b + 1 : s_b + T + 1]``, ``T = block_size``; each ``(B, T)``."""
    tokens = _validate.ids(tokens, "tokens", np.iinfo(np.int32).max, ndim=1, what="tokens")
    block_size = _validate.count(block_size, "block_size")
    starts = _validate.ids(starts, "starts", max(tokens.shape[0] - block_size, 0), ndim=1,
                           what="window starts")
    return _windows(tokens, starts, block_size)


def window_starts(tokens, block_size: int) -> np.ndarray:
    """Every start ``s`` of a full training window, ``0 <= s < len(tokens) - block_size``:
    the ``data`` to give :func:`course_lib.train.loop` (its batches are random subsets)."""
    n = np.shape(tokens)[0] if np.ndim(tokens) == 1 else -1
    if n < 0:
        raise ValueError(f"tokens must be 1-D, got shape {np.shape(tokens)}")
    block_size = _validate.count(block_size, "block_size")
    if n <= block_size:
        raise ValueError(f"tokens must be longer than block_size ({block_size}), got {n}")
    return np.arange(n - block_size, dtype=np.int32)


def sample_windows(key, tokens, batch_size: int, block_size: int) -> tuple[Array, Array]:
    """``batch_size`` windows at uniformly random starts (with replacement): ``(inputs,
    targets)``, each ``(batch_size, block_size)``, as in :func:`windows`."""
    key = _validate.key(key)
    batch_size = _validate.count(batch_size, "batch_size")
    n_starts = window_starts(tokens, block_size).shape[0]
    starts = jax.random.randint(key, (batch_size,), 0, n_starts)
    return windows(tokens, starts, block_size)


class TrainState(nnx.Module):
    """The parameters and the optimizer state, held for :func:`course_lib.train.loop` (which
    checkpoints, restores and watches NNX objects). ``state.params.get_value()`` is the
    :class:`Params` pytree."""

    def __init__(self, params: Params, opt_state):
        self.params = nnx.Variable(params)
        self.opt_state = nnx.Variable(opt_state)


def train_state(params: Params, tx: optax.GradientTransformation) -> TrainState:
    """A fresh :class:`TrainState`: ``params`` (copied) and ``tx.init(params)``."""
    params = jax.tree.map(jnp.array, _check_params(params))      # the step donates its input
    return TrainState(params, tx.init(params))


def make_update(tx: optax.GradientTransformation, tokens):
    """``update(state, batch, key, step) -> {"loss": ...}`` for :func:`course_lib.train.loop`.

    ``state`` is a :class:`TrainState`; ``batch = (starts,)``, a batch of
    :func:`window_starts`; the windows are cut from ``tokens`` inside the compiled step. So::

        state = gpt.train_state(params, tx)
        train.loop(state, gpt.make_update(tx, ids), (gpt.window_starts(ids, T),), steps=...,
                   batch_size=12, key=key, eval_fn=gpt.make_eval_fn(val_ids), ...)
    """
    tokens = _validate.ids(tokens, "tokens", np.iinfo(np.int32).max, ndim=1, what="tokens")
    tokens = tokens.astype(jnp.int32)
    if not isinstance(tx, optax.GradientTransformation):
        raise ValueError(f"tx must be an optax transformation, got {type(tx).__name__}")
    largest = int(jnp.max(tokens))
    _retain_freed_memory()

    def update(state, batch, key, t):
        params = state.params.get_value()
        if largest >= params.config.vocab_size:
            raise ValueError(f"tokens must lie in [0, {params.config.vocab_size}) (the model's "
                             f"vocabulary), got {largest}")
        p, o, value = _window_step(tx, params, state.opt_state.get_value(), tokens, batch[0])
        state.params.set_value(p)
        state.opt_state.set_value(o)
        return {"loss": value}

    return update


def make_eval_fn(tokens):
    """``eval_fn(state, batch, key) -> {"loss": ...}`` for :func:`course_lib.train.loop`:
    the mean loss of the windows at ``batch = (starts,)`` of ``tokens`` (validation text)."""
    tokens = _validate.ids(tokens, "tokens", np.iinfo(np.int32).max, ndim=1, what="tokens")
    tokens = tokens.astype(jnp.int32)

    def eval_fn(state, batch, key):
        return {"loss": _window_loss(state.params.get_value(), tokens, batch[0])}

    return eval_fn


# =============================================================================== sampling
def _filter(logits: Array, temperature, top_k, top_p) -> Array:
    if isinstance(temperature, float) and temperature == 0.0:        # greedy: only the first maximum survives
        best = jnp.argmax(logits, axis=-1)
        return jnp.where(jnp.arange(logits.shape[-1]) == best[..., None], 0.0, -jnp.inf)
    z = logits / temperature
    if top_k is None and top_p is None:
        return z
    V = z.shape[-1]
    order = jnp.argsort(-z, axis=-1, stable=True)           # descending, ties: lower id first
    rank = jnp.argsort(order, axis=-1)                       # rank of every id
    keep = jnp.ones(z.shape, bool)
    if top_k is not None:
        keep = rank < min(top_k, V)
    if top_p is not None and top_p < 1.0:
        zs = jnp.where(jnp.take_along_axis(keep, order, -1), jnp.take_along_axis(z, order, -1),
                       -jnp.inf)
        p = jax.nn.softmax(zs, axis=-1)
        before = jnp.cumsum(p, axis=-1) - p                   # mass of the better-ranked ids
        keep_sorted = before < top_p
        keep = keep & jnp.take_along_axis(keep_sorted, rank, -1)
    return jnp.where(keep, z, -jnp.inf)


def _sampling_options(temperature, top_k, top_p):
    temperature = _validate.real(temperature, "temperature", low=0.0)
    if top_k is not None:
        top_k = _validate.count(top_k, "top_k")
    if top_p is not None:
        top_p = _validate.real(top_p, "top_p", low=0.0, low_open=True, high=1.0)
    return temperature, top_k, top_p


def filter_logits(logits, *, temperature: float = 1.0, top_k: int | None = None,
                  top_p: float | None = None) -> Array:
    """The logits to sample the next token from, ``(..., V) -> (..., V)``; removed ids get
    ``-inf`` (``softmax`` of the result is the sampling distribution). In order:

    1. temperature: ``logits / temperature`` (``< 1`` sharpens, ``> 1`` flattens);
       ``temperature = 0`` is greedy: only the argmax survives (its logit becomes 0), and
       ``top_k``, ``top_p`` have no effect;
    2. top-k: keep exactly the ``k`` highest (``k >= V`` keeps all);
    3. nucleus (top-p): of what is left, keep the smallest set of highest-probability ids
       whose probability (renormalised after top-k) reaches ``p``: an id is kept when the mass
       of the ids ranked before it is ``< p`` (``p = 1`` keeps all).

    **Ties**: ids are ranked by logit, equal logits by lower id first, so top-k keeps exactly
    ``k`` ids even among ties, and greedy picks the lowest id among equal maxima.
    """
    logits = _validate.real_array(logits, "logits", finite=False)
    if logits.ndim < 1 or logits.shape[-1] < 1:
        raise ValueError(f"logits must be (..., V), got shape {tuple(logits.shape)}")
    if _validate.is_concrete(logits) and bool(jnp.any(jnp.isnan(logits))):
        raise ValueError("logits contains NaN")
    temperature, top_k, top_p = _sampling_options(temperature, top_k, top_p)
    return _filter(logits, temperature, top_k, top_p)


def _sample(key, logits, greedy: bool, temperature, top_k, top_p):
    """One draw; ``greedy`` (static) is the argmax, else ``temperature`` may be traced (so
    generation compiles once for all temperatures)."""
    if greedy:
        return jnp.argmax(logits, axis=-1).astype(jnp.int32)
    z = _filter(logits, temperature, top_k, top_p)
    return jax.random.categorical(key, z, axis=-1).astype(jnp.int32)


def sample_token(key, logits, *, temperature: float = 1.0, top_k: int | None = None,
                 top_p: float | None = None) -> Array:
    """One id per row of ``logits (..., V)``, drawn from ``softmax(filter_logits(...))``
    (``temperature = 0``: the argmax, the key unused)."""
    key = _validate.key(key)
    logits = _validate.real_array(logits, "logits", finite=False)
    if logits.ndim < 1 or logits.shape[-1] < 1:
        raise ValueError(f"logits must be (..., V), got shape {tuple(logits.shape)}")
    temperature, top_k, top_p = _sampling_options(temperature, top_k, top_p)
    return _sample(key, logits, temperature == 0.0, temperature, top_k, top_p)


def _check_generation(params, prompt_ids, length, temperature, top_k, top_p, key):
    key = _validate.key(key)
    params = _check_params(params)
    c = params.config
    prompt_ids = _validate.ids(prompt_ids, "prompt_ids", c.vocab_size, ndim=1, what="tokens")
    if not 1 <= prompt_ids.shape[0] <= c.block_size:
        raise ValueError(f"prompt_ids must hold 1 to block_size = {c.block_size} tokens (the "
                         f"context), got {prompt_ids.shape[0]}")
    length = _validate.count(length, "length")
    return (key, params, prompt_ids.astype(jnp.int32), length,
            *_sampling_options(temperature, top_k, top_p))


def generate(key, params: Params, prompt_ids, length: int, *, temperature: float = 1.0,
             top_k: int | None = None, top_p: float | None = None) -> Array:
    """Sample ``length`` tokens after ``prompt_ids (T0,)`` the naive way; returns
    ``(T0 + length,)`` ids.

    Token ``t`` is drawn from the logits at position ``t - 1`` of a full forward pass over
    the context, with key ``fold_in(key, t)`` (so :func:`generate_cached` draws the same).
    The context is the last ``block_size`` tokens: past the model's context the window
    slides (nanoGPT's crop), so any ``length`` works; :func:`generate_cached` does not slide.
    ``temperature``, ``top_k``, ``top_p``: see :func:`filter_logits` (``temperature = 0``:
    greedy). Each step recomputes every position: ``O(T^2)`` work per token.
    """
    key, params, prompt_ids, length, temperature, top_k, top_p = _check_generation(
        params, prompt_ids, length, temperature, top_k, top_p, key)
    return _generate_naive(key, params, prompt_ids, length, temperature == 0.0,
                           jnp.float32(temperature or 1.0), top_k, top_p)


@partial(jax.jit, static_argnums=(3, 4, 6, 7))
def _generate_naive(key, params, prompt_ids, length, greedy, temperature, top_k, top_p):
    T = params.config.block_size
    T0 = prompt_ids.shape[0]
    total = T0 + length
    size = max(total, T)                  # room for one full window at the start
    buf = jnp.zeros((size,), jnp.int32).at[:T0].set(prompt_ids)

    def body(t, buf):
        start = jnp.maximum(t - T, 0)
        window = jax.lax.dynamic_slice_in_dim(buf, start, T)
        z = _logits(params, window[None])[0]                     # (T, V)
        last = jax.lax.dynamic_index_in_dim(z, t - 1 - start, keepdims=False)
        token = _sample(jax.random.fold_in(key, t), last, greedy, temperature, top_k, top_p)
        return buf.at[t].set(token)

    return jax.lax.fori_loop(T0, total, body, buf)[:total]


def generate_cached(key, params: Params, prompt_ids, length: int, *, temperature: float = 1.0,
                    top_k: int | None = None, top_p: float | None = None) -> Array:
    """:func:`generate` with a KV cache: the same tokens (same key, same options), much less
    work. Returns ``(T0 + length,)`` ids.

    The prompt is read once (a full forward pass that fills, per layer, a key and a value
    cache ``(block_size, H, D)``); then each new token runs the model on that one position:
    its query attends to the cached keys and values of positions ``<= t``, and its own key
    and value are written into the cache at ``t``. Work per token: ``O(T)`` instead of
    ``O(T^2)``.

    No sliding window: ``T0 + length <= block_size`` (positions beyond the context would
    need the cache re-computed from a shifted window). Compiled once per model, ``top_k``,
    ``top_p`` and greedy-or-not: the prompt is padded to ``block_size``, the loop runs over
    a fixed-size cache (``lax.fori_loop``), and the temperature is traced, so prompt length,
    ``length`` and ``temperature`` do not recompile it.
    """
    key, params, prompt_ids, length, temperature, top_k, top_p = _check_generation(
        params, prompt_ids, length, temperature, top_k, top_p, key)
    T = params.config.block_size
    T0 = prompt_ids.shape[0]
    if T0 + length > T:
        raise ValueError(f"length must be <= block_size - len(prompt_ids) = {T - T0} for the "
                         f"KV cache (no sliding window), got {length}")
    padded = jnp.zeros((T,), jnp.int32).at[:T0].set(prompt_ids)
    out = _generate_kv(key, params, padded, jnp.int32(T0), jnp.int32(T0 + length),
                       temperature == 0.0, jnp.float32(temperature or 1.0), top_k, top_p)
    return out[:T0 + length]


@partial(jax.jit, static_argnums=(5, 7, 8))
def _generate_kv(key, params, padded, T0, total, greedy, temperature, top_k, top_p):
    c = params.config
    T, H = c.block_size, c.n_head
    # prefill: the whole padded context once; keep every layer's keys and values
    x = _embed(params, padded[None])
    mask = causal_mask(T)
    ks, vs = [], []
    for layer in params.blocks:
        h = _layer_norm(x, layer["ln1"]["scale"], layer["ln1"]["bias"])
        q, k, v = _attention_heads(layer, h, H)
        ks.append(k[0])
        vs.append(v[0])
        x = x + _linear(_attend(q, k, v, mask).reshape(x.shape), layer["proj"])
        h = _layer_norm(x, layer["ln2"]["scale"], layer["ln2"]["bias"])
        x = x + _mlp(layer, h)
    x = _layer_norm(x, params.ln_f["scale"], params.ln_f["bias"])
    z = _linear_t(x, params.tok)[0]                             # (T, V)
    last = jax.lax.dynamic_index_in_dim(z, T0 - 1, keepdims=False)
    cache = (jnp.stack(ks), jnp.stack(vs))                       # each (L, T, H, D)

    def body(t, carry):
        buf, last, (kc, vc) = carry
        token = _sample(jax.random.fold_in(key, t), last, greedy, temperature, top_k, top_p)
        buf = buf.at[t].set(token)
        x = _embed(params, token[None, None], offset=t)           # (1, 1, W)
        allowed = (jnp.arange(T) <= t)[None, :]                   # (1 query, T keys)
        new_k, new_v = [], []
        for i, layer in enumerate(params.blocks):
            h = _layer_norm(x, layer["ln1"]["scale"], layer["ln1"]["bias"])
            q, k, v = _attention_heads(layer, h, H)               # (1, 1, H, D)
            ki = jax.lax.dynamic_update_slice_in_dim(kc[i], k[0], t, axis=0)
            vi = jax.lax.dynamic_update_slice_in_dim(vc[i], v[0], t, axis=0)
            new_k.append(ki)
            new_v.append(vi)
            a = _attend(q[0], ki, vi, allowed)                    # (1, H, D)
            x = x + _linear(a.reshape(x.shape), layer["proj"])
            h = _layer_norm(x, layer["ln2"]["scale"], layer["ln2"]["bias"])
            x = x + _mlp(layer, h)
        x = _layer_norm(x, params.ln_f["scale"], params.ln_f["bias"])
        last = _linear_t(x, params.tok)[0, 0]
        return buf, last, (jnp.stack(new_k), jnp.stack(new_v))

    buf, _, _ = jax.lax.fori_loop(T0, total, body, (padded, last, cache))
    return buf


# =============================================================================== data parallel
def make_mesh(devices=None) -> Mesh:
    """A 1-D device mesh with the axis ``"data"`` over ``devices`` (default: all of them)."""
    devices = jax.devices() if devices is None else list(devices)
    if not devices:
        raise ValueError("devices must hold at least one device")
    return Mesh(np.array(devices), ("data",))


def _check_mesh(mesh) -> Mesh:
    if not isinstance(mesh, Mesh) or "data" not in mesh.axis_names:
        raise ValueError("mesh must be a jax.sharding.Mesh with a 'data' axis (gpt.make_mesh)")
    return mesh


def replicate(mesh: Mesh, tree):
    """Every array of ``tree`` copied whole onto every device of ``mesh`` (parameters,
    optimizer state)."""
    mesh = _check_mesh(mesh)
    return jax.device_put(tree, NamedSharding(mesh, PartitionSpec()))


def shard_batch(mesh: Mesh, *arrays):
    """Each ``(B, ...)`` array split along its first axis over the mesh's ``"data"`` axis:
    device ``i`` holds rows ``i B/n ... (i + 1) B/n - 1``. ``B`` must divide evenly."""
    mesh = _check_mesh(mesh)
    n = mesh.shape["data"]
    out = []
    for i, a in enumerate(arrays):
        if np.ndim(a) < 1 or np.shape(a)[0] % n:
            raise ValueError(f"arrays[{i}]'s batch size ({np.shape(a)[:1]}) must be a multiple "
                             f"of the {n} devices")
        out.append(jax.device_put(a, NamedSharding(mesh, PartitionSpec("data"))))
    return tuple(out)


def make_data_parallel_step(tx: optax.GradientTransformation, mesh: Mesh):
    """:func:`make_train_step`'s step, compiled for ``mesh``: parameters and optimizer state
    replicated, ``tokens``/``targets`` split by rows over the ``"data"`` axis.

    Each device computes the loss and gradient of its rows; because the loss is a mean over
    the whole batch, XLA's partitioner adds the all-reduce (a sum over devices) of the
    gradients, and every device applies the same update to its copy of the parameters.
    Same signature and results as the single-device step (up to float rounding)."""
    if not isinstance(tx, optax.GradientTransformation):
        raise ValueError(f"tx must be an optax transformation, got {type(tx).__name__}")
    mesh = _check_mesh(mesh)
    _retain_freed_memory()
    rep = NamedSharding(mesh, PartitionSpec())
    rows = NamedSharding(mesh, PartitionSpec("data"))
    return jax.jit(partial(_step, tx), in_shardings=(rep, rep, rows, rows),
                   out_shardings=(rep, rep, rep), donate_argnums=(0, 1))


def describe_layout(mesh: Mesh, params, tokens) -> str:
    """A printable account of where things live: the mesh, how ``tokens`` is split (rows per
    device) and that the parameters are replicated (their count and size per device)."""
    mesh = _check_mesh(mesh)
    leaves = jax.tree.leaves(params)
    n_params = sum(int(np.size(a)) for a in leaves)
    lines = [f"mesh: {mesh.shape['data']} device(s) on axis 'data': "
             + ", ".join(f"{d.platform}:{d.id}" for d in mesh.devices.flat)]
    sharding = getattr(tokens, "sharding", None)
    if sharding is not None and hasattr(sharding, "devices_indices_map"):
        for dev, idx in sharding.devices_indices_map(tokens.shape).items():
            rows = idx[0]
            lo = rows.start or 0
            hi = tokens.shape[0] if rows.stop is None else rows.stop
            lines.append(f"  tokens {tuple(tokens.shape)}: rows {lo}:{hi} on {dev.platform}:{dev.id}")
    else:
        lines.append(f"  tokens {tuple(np.shape(tokens))}: not placed on the mesh yet")
    specs = {str(getattr(getattr(a, "sharding", None), "spec", None)) for a in leaves}
    lines.append(f"  params: {len(leaves)} arrays, {n_params:,} scalars "
                 f"({4 * n_params / 2**20:.2f} MiB in float32) on every device; "
                 f"partition spec(s): {', '.join(sorted(specs))}")
    return "\n".join(lines)
