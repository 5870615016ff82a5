"""Neural networks of the course, written in Flax NNX: MLP, a small CNN and recurrent cells.

Every module takes ``rngs: nnx.Rngs`` (only its ``params`` stream is used, at construction).
Dropout draws its randomness from a key passed at call time (``model(x, rngs=key)``), so a
training loop controls every random number explicitly (see :func:`course_lib.train.fit`).

Shapes: ``B`` batch, ``T`` time, ``H`` hidden width, ``V`` vocabulary size. Images are
channels-last, ``(B, H, W, C)`` (NHWC, the layout XLA's CPU convolutions prefer).

Recurrent cells are written gate by gate, as the syllabus describes them. For speed the
input part of every gate is one matrix product of the whole sequence, done before the time
loop (:meth:`LSTMCell.project_inputs`); only the recurrent product ``h @ W_h`` remains
inside the ``lax.scan`` over time (:meth:`LSTMCell.step`). The weights are laid out so that
:func:`to_flax_cell` can copy them into Flax's own ``nnx.LSTMCell`` / ``nnx.GRUCell`` /
``nnx.SimpleCell``, which the tests use as the oracle.
"""
from __future__ import annotations

from functools import partial
from typing import Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from course_lib import _validate

Array = jax.Array

__all__ = [
    "MLP", "CNN", "conv_output_size", "max_pool_2x2", "RNNCell", "LSTMCell", "GRUCell", "run_cell",
    "CharLM", "count_params", "to_flax_cell",
]


def _check_positive_int(name: str, value) -> int:
    return _validate.count(value, name)


def _check_rate(rate) -> float:
    return _validate.real(rate, "dropout_rate", low=0.0, high=1.0, high_open=True)


def _check_input(x, name: str) -> Array:
    """A real array (integers are converted to floats): strings, objects and bools are refused
    with the argument named; NaN/inf are refused when the values are concrete (not under jit).

    (The finite check is written here, not left to ``_validate.real_array``: inside a ``jit``
    trace a closed-over constant is concrete but ``jnp.isfinite`` of it is a tracer.)
    """
    x = _validate.real_array(x, name, finite=False)
    bad = jnp.any(~jnp.isfinite(x))
    if _validate.is_concrete(bad) and bool(bad):
        raise ValueError(f"{name} contains NaN or infinite values")
    return x


def count_params(module: nnx.Module) -> int:
    """Number of trainable scalars (``nnx.Param`` entries) in ``module``."""
    return int(sum(int(np.prod(x.shape)) for x in jax.tree.leaves(nnx.state(module, nnx.Param))))


# --------------------------------------------------------------------------------- MLP
class MLP(nnx.Module):
    """Multi-layer perceptron: ``[Linear -> activation -> dropout] * len(hidden) -> Linear``.

    ``__call__(x (B, in_features)) -> (B, out_features)``.
    """

    def __init__(self, in_features: int, hidden: Sequence[int], out_features: int, *,
                 activation: Callable[[Array], Array] = nnx.relu, dropout_rate: float = 0.0,
                 rngs: nnx.Rngs):
        widths = [_check_positive_int("in_features", in_features)]
        widths += [_check_positive_int("hidden[i]", h) for h in hidden]
        _check_positive_int("out_features", out_features)
        self.in_features = widths[0]
        self.hidden_layers = nnx.List(
            [nnx.Linear(a, b, rngs=rngs) for a, b in zip(widths[:-1], widths[1:])])
        self.out = nnx.Linear(widths[-1], out_features, rngs=rngs)
        self.activation = activation
        self.dropout = nnx.Dropout(_check_rate(dropout_rate))

    def __call__(self, x: Array, *, rngs=None) -> Array:
        x = _check_input(x, "x")
        if x.ndim != 2 or x.shape[-1] != self.in_features:
            raise ValueError(f"MLP expects x of shape (B, {self.in_features}), got {x.shape}")
        for layer in self.hidden_layers:
            x = self.dropout(self.activation(layer(x)), rngs=rngs)
        return self.out(x)


# --------------------------------------------------------------------------------- CNN
def conv_output_size(size: int, kernel: int, stride: int = 1, padding: int = 0) -> int:
    """Output length of a convolution (or pooling) along one axis.

    ``floor((size + 2 * padding - kernel) / stride) + 1``; e.g. a 32x32 image, 5x5 kernel,
    stride 1, no padding gives 28x28.
    """
    size = _check_positive_int("size", size)
    kernel = _check_positive_int("kernel", kernel)
    stride = _check_positive_int("stride", stride)
    padding = _validate.count(padding, "padding", minimum=0)
    if kernel > size + 2 * padding:
        raise ValueError(
            f"kernel ({kernel}) is larger than the padded input (size {size} + 2*padding "
            f"{padding} = {size + 2 * padding}): no output position fits")
    return (size + 2 * padding - kernel) // stride + 1


def max_pool_2x2(x: Array) -> Array:
    """2x2 max-pooling with stride 2 of ``x (B, H, W, C) -> (B, H // 2, W // 2, C)``.

    Equal to ``nnx.max_pool(x, (2, 2), strides=(2, 2))`` (an odd last row or column is
    dropped, as there), written as a reshape and a max: its gradient is an elementwise mask
    instead of XLA's ``select_and_scatter``, which on the CPU cost more than the whole rest
    of the CNN's backward pass (measured in bench/bench_nets.py's notes). Where a window
    holds equal maxima the gradient is shared between them.
    """
    x = _check_input(x, "x")
    if x.ndim != 4 or x.shape[1] < 2 or x.shape[2] < 2:
        raise ValueError(f"x must be (B, H, W, C) images with H, W >= 2, got shape {tuple(x.shape)}")
    b, h, w, c = x.shape
    x = x[:, : h // 2 * 2, : w // 2 * 2]
    return x.reshape(b, h // 2, 2, w // 2, 2, c).max(axis=(2, 4))


class CNN(nnx.Module):
    """A small image classifier: ``[conv -> relu -> 2x2 max-pool] per entry of channels``,
    flatten, ``dense(hidden) -> relu -> dropout``, ``dense(num_classes)``.

    Convolutions use stride 1 and symmetric zero padding ``(kernel_size - 1) // 2`` ("same"
    size for odd kernels), so with the defaults a 28x28 image becomes 28 -> 14 -> 7.

    ``__call__(x) -> logits (B, num_classes)`` for ``x`` of shape ``(B, H, W)`` (a channel
    axis is added) or ``(B, H, W, C)``; ``embed(x) -> (B, hidden)`` the penultimate
    features; ``feature_maps(x)`` the ``(B, H', W', C')`` output of every conv block.
    """

    def __init__(self, in_shape: Sequence[int] = (28, 28, 1), channels: Sequence[int] = (16, 32),
                 hidden: int = 128, num_classes: int = 10, *, kernel_size: int = 3,
                 dropout_rate: float = 0.0, rngs: nnx.Rngs):
        if isinstance(in_shape, (str, bytes)) or len(in_shape) != 3:
            raise ValueError(f"in_shape must be (H, W, C), got {in_shape!r}")
        height, width, chans = (_check_positive_int("in_shape[i]", s) for s in in_shape)
        if isinstance(channels, (str, bytes, int, np.integer)) or not len(channels):
            raise ValueError(f"channels must list at least one conv block's width, got {channels!r}")
        kernel_size = _check_positive_int("kernel_size", kernel_size)
        self.in_shape = (height, width, chans)
        self.padding = (kernel_size - 1) // 2
        convs = []
        for c_out in channels:
            c_out = _check_positive_int("channels[i]", c_out)
            try:
                height = conv_output_size(height, kernel_size, 1, self.padding)
                width = conv_output_size(width, kernel_size, 1, self.padding)
            except ValueError:
                height = width = 0
            if height < 2 or width < 2:
                raise ValueError(
                    f"in_shape {tuple(in_shape)} is too small for {len(channels)} conv blocks: "
                    "every conv output must be at least 2x2 for the 2x2 max-pool")
            height, width = conv_output_size(height, 2, 2), conv_output_size(width, 2, 2)
            pad = ((self.padding, self.padding),) * 2
            convs.append(nnx.Conv(chans, c_out, (kernel_size, kernel_size), padding=pad, rngs=rngs))
            chans = c_out
        self.convs = nnx.List(convs)
        self.flat_features = height * width * chans
        self.dense = nnx.Linear(self.flat_features, _check_positive_int("hidden", hidden), rngs=rngs)
        self.dropout = nnx.Dropout(_check_rate(dropout_rate))
        self.head = nnx.Linear(hidden, _check_positive_int("num_classes", num_classes), rngs=rngs)

    def _as_nhwc(self, x: Array) -> Array:
        x = _check_input(x, "x")
        if x.ndim == 3:
            x = x[..., None]
        if x.ndim != 4 or tuple(x.shape[1:]) != self.in_shape:
            raise ValueError(
                f"CNN expects images of shape (B, {self.in_shape[0]}, {self.in_shape[1]}) or "
                f"(B, {', '.join(map(str, self.in_shape))}), got {tuple(x.shape)}")
        return x

    def feature_maps(self, x: Array) -> list[Array]:
        """The output of every conv block (after pooling): a list of ``(B, H', W', C')``."""
        x = self._as_nhwc(x)
        maps = []
        for conv in self.convs:
            x = max_pool_2x2(nnx.relu(conv(x)))
            maps.append(x)
        return maps

    def embed(self, x: Array) -> Array:
        """Penultimate features ``(B, hidden)`` (after the hidden dense layer and relu)."""
        flat = self.feature_maps(x)[-1]
        return nnx.relu(self.dense(flat.reshape(flat.shape[0], -1)))

    def __call__(self, x: Array, *, rngs=None) -> Array:
        return self.head(self.dropout(self.embed(x), rngs=rngs))


# ----------------------------------------------------------------------- recurrent cells
def _recurrent_init(key: Array, hidden: int, gates: int) -> Array:
    """``(H, gates*H)``: an orthogonal ``H x H`` block per gate (as Flax initialises them)."""
    keys = jax.random.split(key, gates)
    blocks = [jax.nn.initializers.orthogonal()(k, (hidden, hidden)) for k in keys]
    return jnp.concatenate(blocks, axis=1)


class _Cell(nnx.Module):
    """Shared parts: ``kernel_x (in, G*H)``, ``bias (G*H,)``, ``kernel_h (H, G*H)``."""

    gates: int = 1

    def __init__(self, in_features: int, hidden_features: int, *, rngs: nnx.Rngs):
        self.in_features = _check_positive_int("in_features", in_features)
        self.hidden_features = h = _check_positive_int("hidden_features", hidden_features)
        g = self.gates
        self.kernel_x = nnx.Param(
            jax.nn.initializers.lecun_normal()(rngs.params(), (self.in_features, g * h)))
        self.kernel_h = nnx.Param(_recurrent_init(rngs.params(), h, g))
        self.bias = nnx.Param(self._initial_bias())

    def _initial_bias(self) -> Array:
        return jnp.zeros((self.gates * self.hidden_features,), jnp.float32)

    def project_inputs(self, x: Array) -> Array:
        """The input half of every gate, ``x @ kernel_x + bias``: ``(..., in) -> (..., G*H)``.

        Works on a whole sequence at once, which is how :func:`run_cell` calls it.
        """
        x = _check_input(x, "x")
        if x.shape[-1] != self.in_features:
            raise ValueError(
                f"{type(self).__name__} expects inputs with {self.in_features} features "
                f"in the last axis, got shape {tuple(x.shape)}")
        return x @ self.kernel_x[...] + self.bias[...]

    def initialize_carry(self, batch_size: int) -> Array:
        """Zero hidden state ``h`` of shape ``(batch_size, H)``."""
        return jnp.zeros((_check_positive_int("batch_size", batch_size), self.hidden_features))

    def __call__(self, carry, x: Array):
        """One time step: ``(carry, x (B, in)) -> (new_carry, h (B, H))``."""
        return self.step(carry, self.project_inputs(x))


class RNNCell(_Cell):
    """Elman cell: ``h' = tanh(x W_x + b + h W_h)``. Carry: ``h (B, H)``."""

    gates = 1

    def step(self, h: Array, xw: Array):
        """One time step given the projected input ``xw = x W_x + b`` (B, H)."""
        new_h = jnp.tanh(xw + h @ self.kernel_h[...])
        return new_h, new_h


class LSTMCell(_Cell):
    """Long short-term memory cell, gates in the order (input, forget, candidate, output)::

        i = sigmoid(x W_xi + h W_hi + b_i)     input gate: how much new content to write
        f = sigmoid(x W_xf + h W_hf + b_f)     forget gate: how much of the cell state to keep
        g = tanh   (x W_xg + h W_hg + b_g)     candidate content
        o = sigmoid(x W_xo + h W_ho + b_o)     output gate: how much of the cell to expose
        c' = f * c + i * g                     cell state (the long-term memory)
        h' = o * tanh(c')                      hidden state (the output)

    The four ``W_x*`` are the column blocks of ``kernel_x (in, 4H)``, the ``W_h*`` those of
    ``kernel_h (H, 4H)``. The forget-gate bias starts at 1 (remember by default). Carry:
    the tuple ``(c, h)``, each ``(B, H)``.
    """

    gates = 4

    def _initial_bias(self) -> Array:
        h = self.hidden_features
        return jnp.zeros((4 * h,), jnp.float32).at[h:2 * h].set(1.0)

    def initialize_carry(self, batch_size: int) -> tuple[Array, Array]:
        h = super().initialize_carry(batch_size)
        return (h, h)

    def step(self, carry: tuple[Array, Array], xw: Array):
        """One time step given the projected input ``xw = x W_x + b`` (B, 4H)."""
        c, h = carry
        z = xw + h @ self.kernel_h[...]
        zi, zf, zg, zo = jnp.split(z, 4, axis=-1)
        input_gate, forget_gate = jax.nn.sigmoid(zi), jax.nn.sigmoid(zf)
        candidate, output_gate = jnp.tanh(zg), jax.nn.sigmoid(zo)
        new_c = forget_gate * c + input_gate * candidate
        new_h = output_gate * jnp.tanh(new_c)
        return (new_c, new_h), new_h


    def scan(self, carry: tuple[Array, Array], xw: Array):
        """All time steps at once: ``xw (T, B, 4H)`` projected inputs -> ``(carry, hs (T, B, H))``.

        Same numbers as ``lax.scan(self.step, carry, xw)``, with a hand-written backward
        pass (:func:`_lstm_scan`) that stores the gate activations and computes the
        recurrent weight gradient as one ``(H, T*B) @ (T*B, 4H)`` product after the loop,
        instead of ``T`` small accumulations inside it.
        """
        c, h = carry
        c, h, hs = _lstm_scan(self.kernel_h[...], xw, c, h)
        return (c, h), hs


def _lstm_forward(kernel_h, xw, c0, h0):
    """The gates of :meth:`LSTMCell.step`, with every nonlinearity from ONE ``tanh`` over the
    ``(B, 4H)`` pre-activations: ``sigmoid(z) = (1 + tanh(z / 2)) / 2``. Same maths; on the
    CPU it is about 1.6x faster than three sigmoids and a tanh on separate slices."""
    hidden = kernel_h.shape[0]
    half, one = jnp.full((hidden,), 0.5, xw.dtype), jnp.ones((hidden,), xw.dtype)
    # gate = tanh(z * scale) * scale + offset: sigmoid for i, f, o; plain tanh for g
    scale = jnp.concatenate([half, half, one, half])
    offset = jnp.concatenate([half, half, 0 * one, half])

    def one_step(carry, xw_t):
        c, h = carry
        t = jnp.tanh((xw_t + h @ kernel_h) * scale)
        i, f, g, o = jnp.split(t * scale + offset, 4, axis=-1)
        new_c = f * c + i * g
        new_h = o * jnp.tanh(new_c)
        return (new_c, new_h), (new_h, new_c, jnp.concatenate([i, f, g, o], axis=-1))

    (c, h), (hs, cs, gates) = jax.lax.scan(one_step, (c0, h0), xw)
    return c, h, hs, cs, gates


@jax.custom_vjp
def _lstm_scan(kernel_h, xw, c0, h0):
    """LSTM over time from projected inputs ``xw (T, B, 4H)``: ``(c_T, h_T, hs (T, B, H))``."""
    c, h, hs, _, _ = _lstm_forward(kernel_h, xw, c0, h0)
    return c, h, hs


def _lstm_scan_fwd(kernel_h, xw, c0, h0):
    c, h, hs, cs, gates = _lstm_forward(kernel_h, xw, c0, h0)
    return (c, h, hs), (kernel_h, hs, cs, gates, c0, h0)


def _lstm_scan_bwd(residuals, cotangents):
    kernel_h, hs, cs, gates, c0, h0 = residuals
    dc_last, dh_last, dhs = cotangents
    cs_prev = jnp.concatenate([c0[None], cs[:-1]])
    hs_prev = jnp.concatenate([h0[None], hs[:-1]])
    kernel_h_t = jnp.transpose(kernel_h)  # once, not in every step of the loop

    def one_step_back(carry, inputs):
        dh_next, dc_next = carry
        dh_out, c, c_prev, gate = inputs
        i, f, g, o = jnp.split(gate, 4, axis=-1)
        dh = dh_out + dh_next
        tanh_c = jnp.tanh(c)
        dc = dc_next + dh * o * (1 - tanh_c ** 2)
        dz = jnp.concatenate([dc * g * i * (1 - i),          # input gate
                              dc * c_prev * f * (1 - f),     # forget gate
                              dc * i * (1 - g ** 2),         # candidate
                              dh * tanh_c * o * (1 - o)],    # output gate
                             axis=-1)
        return (dz @ kernel_h_t, dc * f), dz

    (dh0, dc0), dz = jax.lax.scan(one_step_back, (dh_last, dc_last),
                                  (dhs, cs, cs_prev, gates), reverse=True)
    d_kernel_h = jnp.einsum("tbh,tbg->hg", hs_prev, dz)
    return d_kernel_h, dz, dc0, dh0


_lstm_scan.defvjp(_lstm_scan_fwd, _lstm_scan_bwd)


class GRUCell(_Cell):
    """Gated recurrent unit, gates in the order (reset, update, candidate)::

        r = sigmoid(x W_xr + b_r + h W_hr)     reset gate: how much of h the candidate sees
        z = sigmoid(x W_xz + b_z + h W_hz)     update gate: how much of h to keep
        n = tanh(x W_xn + b_n + r * (h W_hn))  candidate state
        h' = (1 - z) * n + z * h

    (Some texts swap the roles of ``z`` and ``1 - z``; the two forms are the same model with
    the update gate's sign flipped.) Carry: ``h (B, H)``.
    """

    gates = 3

    def step(self, h: Array, xw: Array):
        """One time step given the projected input ``xw = x W_x + b`` (B, 3H)."""
        xr, xz, xn = jnp.split(xw, 3, axis=-1)
        hr, hz, hn = jnp.split(h @ self.kernel_h[...], 3, axis=-1)
        reset_gate = jax.nn.sigmoid(xr + hr)
        update_gate = jax.nn.sigmoid(xz + hz)
        candidate = jnp.tanh(xn + reset_gate * hn)
        new_h = (1.0 - update_gate) * candidate + update_gate * h
        return new_h, new_h


def run_cell(cell: _Cell, xs: Array, carry=None):
    """Run ``cell`` over a sequence with ``lax.scan``: ``xs (B, T, in) -> (final_carry, hs (B, T, H))``.

    The input projection of all ``T`` steps is one matrix product before the loop; the scan
    carries the state and does the recurrent product. ``carry=None`` starts from zeros.
    """
    if not isinstance(cell, _Cell):
        raise ValueError(f"cell must be an RNNCell, LSTMCell or GRUCell, got {type(cell).__name__}")
    xs = _check_input(xs, "xs")
    if xs.ndim != 3:
        raise ValueError(f"xs must have shape (B, T, in_features), got {tuple(xs.shape)}")
    if carry is None:
        carry = cell.initialize_carry(xs.shape[0])
    else:
        expected = jax.tree.map(jnp.shape, cell.initialize_carry(xs.shape[0]))
        got = jax.tree.map(jnp.shape, carry)
        if jax.tree.structure(got) != jax.tree.structure(expected) or got != expected:
            raise ValueError(f"carry must match {type(cell).__name__}.initialize_carry("
                             f"{xs.shape[0]}): shapes {expected}, got {got}")
    xw = cell.project_inputs(jnp.swapaxes(xs, 0, 1))          # (T, B, G*H), time-major
    if hasattr(cell, "scan"):
        carry, hs = cell.scan(carry, xw)
    else:
        carry, hs = jax.lax.scan(cell.step, carry, xw)
    return carry, jnp.swapaxes(hs, 0, 1)


def to_flax_cell(cell: _Cell) -> nnx.Module:
    """A Flax built-in cell (``nnx.LSTMCell``, ``nnx.GRUCell`` or ``nnx.SimpleCell``) holding
    exactly ``cell``'s weights, for checking our gate-by-gate code against Flax's."""
    d, h = cell.in_features, cell.hidden_features
    kx, kh, b = cell.kernel_x[...], cell.kernel_h[...], cell.bias[...]
    rngs = nnx.Rngs(0)
    if isinstance(cell, LSTMCell):
        ref = nnx.LSTMCell(d, h, rngs=rngs)
        for j, g in enumerate("ifgo"):
            cols = slice(j * h, (j + 1) * h)
            getattr(ref, "if_" if g == "f" else "i" + g).kernel[...] = kx[:, cols]
            dense_h = getattr(ref, "h" + g)
            dense_h.kernel[...] = kh[:, cols]
            dense_h.bias[...] = b[cols]
        return ref
    if isinstance(cell, GRUCell):
        ref = nnx.GRUCell(d, h, rngs=rngs)
    elif isinstance(cell, RNNCell):
        ref = nnx.SimpleCell(d, h, rngs=rngs)
    else:
        raise ValueError(f"no Flax counterpart for {type(cell).__name__}")
    ref.dense_i.kernel[...] = kx
    ref.dense_i.bias[...] = b
    ref.dense_h.kernel[...] = kh
    return ref


# ------------------------------------------------------------------- character language model
_CELLS = {"rnn": RNNCell, "lstm": LSTMCell, "gru": GRUCell}


class CharLM(nnx.Module):
    """Character-level language model: embedding -> recurrent cell over time -> linear head.

    ``__call__(tokens (B, T) int) -> logits (B, T, V)``, where ``logits[:, t]`` scores the
    token at ``t + 1`` given tokens ``0..t``.
    """

    def __init__(self, vocab_size: int, embed_features: int, hidden_features: int, *,
                 cell: str = "lstm", rngs: nnx.Rngs):
        if not isinstance(cell, str) or cell not in _CELLS:
            raise ValueError(f"cell must be one of {sorted(_CELLS)}, got {cell!r}")
        self.vocab_size = _check_positive_int("vocab_size", vocab_size)
        self.cell_kind = cell
        self.embed = nnx.Embed(vocab_size, _check_positive_int("embed_features", embed_features),
                               rngs=rngs)
        self.cell = _CELLS[cell](embed_features, hidden_features, rngs=rngs)
        self.head = nnx.Linear(hidden_features, vocab_size, rngs=rngs)

    def _check_tokens(self, tokens, ndim: int, name: str) -> Array:
        """Integer ids of the given rank, each in [0, vocab_size) when concrete: an id of -1
        would silently read the last embedding row, one >= V a row of NaN."""
        return _validate.ids(tokens, name, self.vocab_size, ndim=ndim, what="token ids")

    def __call__(self, tokens: Array, carry=None) -> Array:
        """``tokens (B, T)`` integer ids in ``[0, vocab_size)`` (checked when concrete) ->
        logits ``(B, T, V)``; ``carry`` the cell's initial state (default zeros)."""
        tokens = self._check_tokens(tokens, 2, "tokens")
        _, hs = run_cell(self.cell, self.embed(tokens), carry)
        return self.head(hs)

    def generate(self, key: Array, prompt_ids: Array, length: int, *,
                 temperature: float = 1.0) -> Array:
        """Sample ``length`` tokens after ``prompt_ids (T0,)``; returns ``(T0 + length,)`` ids.

        Compiled once per (prompt length, length): the prompt is read with :func:`run_cell`,
        then a ``lax.scan`` draws each token from ``softmax(logits / temperature)``.
        """
        prompt_ids = self._check_tokens(prompt_ids, 1, "prompt_ids")
        if prompt_ids.shape[0] < 1:
            raise ValueError("prompt_ids must hold at least one token")
        length = _check_positive_int("length", length)
        temperature = _validate.real(temperature, "temperature", low=0.0, low_open=True)
        key = _validate.key(key)
        graphdef, state = nnx.split(self)
        return _generate(graphdef, state, prompt_ids.astype(jnp.int32), key, length,
                         jnp.float32(temperature))


@partial(jax.jit, static_argnums=(0, 4))
def _generate(graphdef, state, prompt_ids, key, steps, temperature):
    model = nnx.merge(graphdef, state)
    carry, hs = run_cell(model.cell, model.embed(prompt_ids[None]))
    logits = model.head(hs[:, -1])                                 # (1, V)

    def sample(state, step_key):
        carry, logits = state
        token = jax.random.categorical(step_key, logits / temperature, axis=-1)  # (1,)
        carry, h = model.cell(carry, model.embed(token))
        return (carry, model.head(h)), token[0]

    _, tokens = jax.lax.scan(sample, (carry, logits), jax.random.split(key, steps))
    return jnp.concatenate([prompt_ids, tokens.astype(jnp.int32)])
