r"""Hidden Markov models: sampling, forward, backward, smoothing, Viterbi and Baum-Welch.

A discrete-time HMM with ``K`` hidden states has three parameters:

* ``initial`` (K,):   π_i = P(z_0 = i)
* ``transition`` (K, K), **row-stochastic**:  A[i, j] = P(z_{t+1} = j | z_t = i), rows sum to 1
* an emission model, p(x_t | z_t = k):
  :class:`CategoricalHMM` (``emission`` (K, M), B[k, m] = P(x_t = m | z_t = k)) or
  :class:`GaussianHMM` (``means`` (K, D), diagonal ``variances`` (K, D)).

Every inference kernel works on the matrix of **emission log-likelihoods**
``log_lik[t, k] = log p(x_t | z_t = k)`` (T, K), so the same code serves both emission
models. Each is a ``jax.lax.scan`` over time, O(T K²) work:

forward (filtering)
    α_t(j) = p(z_t = j | x_{0:t}).  Predict with A, condition on x_t, normalise:
    α_t ∝ (α_{t-1} A) ⊙ b_t,  c_t = Σ_j (α_{t-1} A)_j b_t(j),  log p(x_{0:T-1}) = Σ_t log c_t.
    This is the *scaled* forward algorithm: α stays a probability vector, so nothing
    underflows however long the sequence (T = 10⁶ is fine), and b_t is taken as
    exp(log_lik[t] - max_k log_lik[t, k]) so huge Gaussian log-densities do not overflow.
    The T terms log c_t are added by a pairwise (tree) sum, so the float32 total keeps
    about 6 significant digits at T = 10⁶.
backward
    β_t(i) ∝ Σ_j A[i, j] b_{t+1}(j) β_{t+1}(j), β_{T-1} = 1, rescaled every step.
smoothing (forward-backward)
    γ_t(k) = p(z_t = k | x_{0:T-1}) ∝ α_t(k) β_t(k), and the expected transition counts
    Σ_t ξ_t(i, j) with ξ_t(i, j) ∝ α_t(i) A[i, j] b_{t+1}(j) β_{t+1}(j).
Viterbi
    δ_t(j) = max_i [δ_{t-1}(i) + log A[i, j]] + log b_t(j) in log space (max-plus), with the
    arg-max kept as a backpointer and the path read back from the end. δ is shifted by its
    maximum every step, so its entries stay near 0 and float32 still tells close paths apart
    at T = 10⁶. The returned ``log_prob`` is the log joint log p(path, x) of the decoded path,
    its T terms added by a pairwise sum (not a running total of the shifts, which drifts).

**Impossible observations.** A symbol with probability 0 in every state (an all-zero column
of B, e.g. a symbol absent from the data Baum-Welch was fitted on) gives log p(x) = -inf,
not NaN; the filtered and smoothed marginals are then undefined (0 or NaN from that step on)
and Baum-Welch refuses such data.

**Variable lengths without recompiling.** Sequences of different lengths are padded at the
end to one shape (N, T_max) and described by ``lengths`` (N,), a traced array, so a new
length never triggers a new compilation. Padded observations are replaced by 0 before any
arithmetic (so NaN is a valid padding value: it reaches neither the M-step nor gradients),
and a padded step gets log_lik = 0 (b = 1): the forward pass then only predicts
(c_t = Σ_j (α A)_j = 1, so the log-likelihood is unchanged) and the backward message stays
1; Viterbi uses identity backpointers there, and Baum-Welch's statistics are masked.
Outputs at padded steps carry no meaning.

**Parallel in time.** The forward recursion is a product of matrices, α_T ∝ π̃ M_1 M_2 ⋯ M_T
with M_t = A diag(b_t), and matrix multiplication is associative, so
``jax.lax.associative_scan`` computes all prefixes in O(log T) sequential depth at the price
of O(T K³) work instead of O(T K²) (:func:`forward_filter_parallel`). Viterbi is the same
with (max, +) in place of (+, ×) (:func:`viterbi_parallel`): the prefix scan gives every
δ_t, the backpointers argmax_i δ_{t-1}(i) + log A[i, j] are then computed for all t at
once, and the path is read back by a second associative scan that composes the backpointer
maps. Every state of the path is chosen by following backpointers from the end, so ties
are broken consistently and the result is a true most probable path. This pays on
accelerators, where the sequential scan's T tiny steps leave the device idle; on a CPU the
sequential scan is faster.

Public names are listed in ``__all__``: the model-level API (:func:`log_likelihood`,
:func:`forward`, :func:`posterior`, :func:`viterbi`, :func:`sample`, :func:`baum_welch`,
:func:`em_step`, :func:`stationary_distribution`, :func:`validate`) and the low-level kernels
on a (T, K) matrix of emission log-likelihoods (:func:`forward_log_likelihood`,
:func:`forward_filter`, :func:`backward_messages`, :func:`smooth`, :func:`viterbi_path`,
:func:`forward_filter_parallel`, :func:`viterbi_parallel`). Every one checks its arguments'
values when they are concrete and raises ``ValueError`` naming the argument.

Shapes: ``T`` time steps, ``K`` states, ``M`` symbols, ``D`` observation dimensions,
``N`` sequences. Kernels follow the dtype of the parameters (float32 or float64).
"""
from __future__ import annotations

from functools import partial
from typing import NamedTuple, Union

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from course_lib import _validate

__all__ = [
    "CategoricalHMM", "GaussianHMM", "HMM",
    "Sample", "Filtered", "Posterior", "ViterbiPath", "EMResult",
    "validate", "emission_log_likelihoods",
    "log_likelihood", "forward", "posterior", "viterbi", "sample", "stationary_distribution",
    "em_step", "baum_welch",
    "forward_log_likelihood", "forward_filter", "backward_messages", "smooth", "viterbi_path",
    "forward_filter_parallel", "viterbi_parallel",
]

# --------------------------------------------------------------------------- parameters


class CategoricalHMM(NamedTuple):
    """HMM with discrete observations in {0, ..., M-1}.

    ``initial`` (K,) π;  ``transition`` (K, K) A, rows sum to 1;
    ``emission`` (K, M) B[k, m] = P(x = m | z = k), rows sum to 1.
    """

    initial: jax.Array
    transition: jax.Array
    emission: jax.Array


class GaussianHMM(NamedTuple):
    """HMM with real observations x_t ∈ R^D, x_t | z_t = k ~ N(means[k], diag(variances[k])).

    ``initial`` (K,);  ``transition`` (K, K) rows sum to 1;  ``means`` (K, D) finite;
    ``variances`` (K, D) > 0, finite.
    """

    initial: jax.Array
    transition: jax.Array
    means: jax.Array
    variances: jax.Array


HMM = Union[CategoricalHMM, GaussianHMM]

# --------------------------------------------------------------------------- results


class Sample(NamedTuple):
    """``states`` (T,) int32 and ``observations`` (T,) int32 or (T, D) float."""

    states: jax.Array
    observations: jax.Array


class Filtered(NamedTuple):
    """Forward pass: ``log_likelihood`` log p(x_{0:T-1}) (scalar) and ``filtered``
    (T, K) p(z_t | x_{0:t})."""

    log_likelihood: jax.Array
    filtered: jax.Array


class Posterior(NamedTuple):
    """Forward-backward: ``log_likelihood`` (scalar), ``filtered`` (T, K),
    ``smoothed`` (T, K) p(z_t | x_{0:T-1}), ``transition_counts`` (K, K)
    Σ_t p(z_t = i, z_{t+1} = j | x) over valid steps."""

    log_likelihood: jax.Array
    filtered: jax.Array
    smoothed: jax.Array
    transition_counts: jax.Array


class ViterbiPath(NamedTuple):
    """``path`` (T,) int32, a most probable state sequence, and ``log_prob``,
    log p(path, x) (scalar), the log joint of that path summed pairwise over its T terms."""

    path: jax.Array
    log_prob: jax.Array


class EMResult(NamedTuple):
    """Baum-Welch: fitted ``params`` and ``log_likelihoods`` (iterations run,), the total
    log-likelihood of the data under the parameters *entering* each iteration."""

    params: HMM
    log_likelihoods: np.ndarray


# --------------------------------------------------------------------------- validation


def _distribution(value, name: str, shape: tuple, what: str) -> jax.Array:
    """A probability vector or row-stochastic matrix of the given shape (values via _validate)."""
    value = _validate.real_array(value, name)
    if value.shape != shape:
        raise ValueError(f"{name} must have shape {shape} ({what}), got {tuple(value.shape)}")
    return _validate.probabilities(value, name)


def validate(params: HMM) -> HMM:
    """Check shapes and values of ``params``; return them as JAX arrays or raise ValueError.

    Value checks (finite, non-negative, rows summing to 1, positive variances) run when the
    parameters are concrete; under ``jit`` only the shapes are checked.
    """
    if not isinstance(params, (CategoricalHMM, GaussianHMM)):
        raise ValueError(f"params must be a CategoricalHMM or GaussianHMM, got {type(params).__name__}")
    initial = _validate.real_array(params.initial, "initial")
    if initial.ndim != 1 or initial.shape[0] < 1:
        raise ValueError(f"initial must have shape (K,) with K >= 1, got {tuple(initial.shape)}")
    k = initial.shape[0]
    initial = _distribution(initial, "initial", (k,), "π_i = P(z_0 = i)")
    transition = _distribution(params.transition, "transition", (k, k),
                               "row-stochastic A[i, j] = P(z_{t+1} = j | z_t = i)")
    if isinstance(params, CategoricalHMM):
        e = _validate.real_array(params.emission, "emission")
        if e.ndim != 2 or e.shape[0] != k or e.shape[1] < 1:
            raise ValueError(f"emission must have shape (K, M) = ({k}, M), got {tuple(e.shape)}")
        return CategoricalHMM(initial, transition,
                              _distribution(e, "emission", e.shape, "B[k, m] = P(x = m | z = k)"))
    m = _validate.real_array(params.means, "means")
    v = _validate.real_array(params.variances, "variances")
    if m.ndim != 2 or m.shape[0] != k or m.shape[1] < 1:
        raise ValueError(f"means must have shape (K, D) = ({k}, D), got {tuple(m.shape)}")
    if v.shape != m.shape:
        raise ValueError(f"variances must have the shape of means {tuple(m.shape)}, got {tuple(v.shape)}")
    if _validate.is_concrete(v) and not np.all(np.asarray(v) > 0):
        raise ValueError(f"variances must be positive, got {float(np.min(np.asarray(v))):.6g}")
    return GaussianHMM(initial, transition, m, v)


def _valid_mask(t_max: int, lengths, batched: bool):
    steps = np.arange(t_max) if isinstance(lengths, np.ndarray) else jnp.arange(t_max)
    return (steps[None] < lengths[:, None]) if batched else (steps < lengths)


def _check_lengths(lengths, num_seqs: int | None, t_max: int) -> jax.Array:
    if not isinstance(lengths, jax.Array):
        lengths = np.asarray(lengths)
    want = () if num_seqs is None else (num_seqs,)
    if lengths.shape != want:
        raise ValueError(f"lengths must have shape {want}, got {tuple(lengths.shape)}")
    if lengths.dtype == np.bool_ or not np.issubdtype(lengths.dtype, np.integer):
        raise ValueError(f"lengths must be integers, got dtype {lengths.dtype}")
    if _validate.is_concrete(lengths):
        n = np.asarray(lengths)
        if np.any(n < 1) or np.any(n > t_max):
            bad = int(n.min()) if np.any(n < 1) else int(n.max())
            raise ValueError(f"lengths must lie in [1, {t_max}] (the padded length), got {bad}")
    return jnp.asarray(lengths, jnp.int32)


def _check_observations(params: HMM, obs, lengths):
    """obs as a JAX array (values checked at the valid, unpadded steps), lengths, batched."""
    categorical = isinstance(params, CategoricalHMM)
    if not isinstance(obs, jax.Array):
        try:
            obs = np.asarray(obs)
        except (TypeError, ValueError) as err:
            raise ValueError(f"obs must be an array of observations: {err}") from None
    seq_ndim = 1 if categorical else 2
    if obs.ndim not in (seq_ndim, seq_ndim + 1):
        shape = "(T,) or (N, T) of symbols" if categorical else "(T, D) or (N, T, D)"
        raise ValueError(f"obs must have shape {shape}, got {tuple(obs.shape)}")
    batched = obs.ndim == seq_ndim + 1
    lead = "(N, T" if batched else "(T"
    if categorical:
        if obs.dtype == np.bool_ or not np.issubdtype(obs.dtype, np.integer):
            raise ValueError(f"obs must hold integer symbols, got dtype {obs.dtype}")
    else:
        d = params.means.shape[1]
        obs = _validate.real_array(obs, "obs", finite=False, dtype=params.means.dtype)
        if obs.shape[-1] != d:
            raise ValueError(f"obs must have shape {lead}, D={d}), got {tuple(obs.shape)}")
    t_max = obs.shape[1] if batched else obs.shape[0]
    if t_max < 1:
        raise ValueError("obs must contain at least one time step")
    if lengths is None:
        lengths = np.full(obs.shape[:1], t_max, np.int32) if batched else np.int32(t_max)
    lengths = _check_lengths(lengths, obs.shape[0] if batched else None, t_max)
    if _validate.is_concrete(obs, lengths):
        x = np.asarray(obs)
        n = np.asarray(lengths)
        seen = x if np.all(n == t_max) else x[_valid_mask(t_max, n, batched)]
        if categorical:
            m = params.emission.shape[1]
            _validate.ids(seen, "obs", m, what=f"symbols: emission has M={m} columns")
        elif not np.all(np.isfinite(seen)):
            raise ValueError("obs contains NaN or infinite values at valid (unpadded) steps")
    return jnp.asarray(obs), lengths, batched


def _prepare(params: HMM, obs, lengths):
    params = validate(params)
    obs, lengths, batched = _check_observations(params, obs, lengths)
    return params, obs, lengths, batched


def _clean(obs, lengths, batched: bool):
    """Padded observations replaced by 0 before any arithmetic (NaN padding stays harmless)."""
    t_max = obs.shape[1] if batched else obs.shape[0]
    valid = _valid_mask(t_max, lengths, batched)
    return jnp.where(valid.reshape(valid.shape + (1,) * (obs.ndim - valid.ndim)), obs,
                     jnp.zeros((), obs.dtype))


def _check_log_lik(log_lik, *, batch: bool = True) -> jax.Array:
    log_lik = _validate.real_array(log_lik, "log_lik", ndim=(2, 3) if batch else 2, finite=False)
    if log_lik.shape[0] < 1 or log_lik.shape[1] < 1:
        raise ValueError(f"log_lik must have at least one time step and one state, got shape "
                         f"{tuple(log_lik.shape)}")
    if _validate.is_concrete(log_lik):
        v = np.asarray(log_lik)
        if np.isnan(v).any() or np.isposinf(v).any():
            raise ValueError("log_lik must hold log-densities log p(x_t | z_t = k): NaN and +inf "
                             "are refused (-inf, probability 0, is allowed)")
    return log_lik


def _check_kernel(initial, transition, log_lik, *, batch: bool = True):
    """initial (K,) or None, transition (K, K), log_lik (T, K[, N]) checked against each other."""
    log_lik = _check_log_lik(log_lik, batch=batch)
    k = log_lik.shape[1]
    transition = _distribution(transition, "transition", (k, k),
                               f"row-stochastic, K = {k} states as in log_lik (T, K)")
    if initial is not None:
        initial = _distribution(initial, "initial", (k,), f"K = {k} states as in log_lik (T, K)")
    return initial, transition, log_lik


def _check_length(length, t_max: int, batch_shape: tuple):
    if length is None:
        return None
    if not isinstance(length, jax.Array):
        length = np.asarray(length)
    if length.shape not in ((), batch_shape):
        raise ValueError(f"length must be a scalar or have shape {batch_shape}, got {tuple(length.shape)}")
    if length.dtype == np.bool_ or not np.issubdtype(length.dtype, np.integer):
        raise ValueError(f"length must be an integer, got dtype {length.dtype}")
    if _validate.is_concrete(length):
        n = np.asarray(length)
        if np.any(n < 1) or np.any(n > t_max):
            raise ValueError(f"length must lie in [1, {t_max}] (log_lik's T), got {n.min() if np.any(n < 1) else n.max()}")
    return jnp.asarray(length, jnp.int32)


# --------------------------------------------------------------------------- numerics


def _pairwise_sum(x: jax.Array) -> jax.Array:
    """Σ over axis 0 as a balanced tree of additions: rounding error O(eps log T), not O(eps T)."""
    n = x.shape[0]
    if n == 0:
        return jnp.zeros(x.shape[1:], x.dtype)
    size = 1 << (n - 1).bit_length()
    if size != n:
        x = jnp.concatenate([x, jnp.zeros((size - n,) + x.shape[1:], x.dtype)])
    while x.shape[0] > 1:
        x = x.reshape((x.shape[0] // 2, 2) + x.shape[1:]).sum(axis=1)
    return x[0]


def _finite_max(x, axis):
    """max along ``axis``, or 0 where every entry is -inf (a shift that keeps -inf, not NaN)."""
    top = jnp.max(x, axis=axis, keepdims=True)
    return jnp.where(jnp.isfinite(top), top, jnp.zeros((), x.dtype))


def _safe_divide(x, total):
    return x / jnp.where(total > 0, total, jnp.ones((), total.dtype))


# --------------------------------------------------------------------------- emissions


def _emission_log_lik(params: HMM, obs: jax.Array) -> jax.Array:
    if isinstance(params, CategoricalHMM):
        return jnp.log(params.emission).T[obs]
    diff = obs[:, None, :] - params.means[None]                       # (T, K, D)
    quad = jnp.sum(diff * diff / params.variances[None], axis=-1)
    log_norm = jnp.sum(jnp.log(2 * jnp.pi * params.variances), axis=-1)
    return -0.5 * (quad + log_norm[None])


def emission_log_likelihoods(params: HMM, obs) -> jax.Array:
    """log p(x_t | z_t = k) for one sequence: obs (T,) symbols or (T, D) values -> (T, K).

    Categorical: log B[k, x_t] (-inf for a symbol state k never emits). Gaussian diagonal:
    -½ Σ_d [(x_td - μ_kd)² / σ²_kd + log 2π σ²_kd].
    """
    params, obs, _, batched = _prepare(params, obs, None)
    if batched:
        raise ValueError(f"obs must be one sequence, (T,) or (T, D), got shape {tuple(obs.shape)}")
    return _emission_log_lik(params, obs)


def _masked(log_lik: jax.Array, length) -> jax.Array:
    """Zero the log-likelihoods at padded steps t >= length (b_t = 1: no evidence)."""
    if length is None:
        return log_lik
    valid = jnp.arange(log_lik.shape[0]) < length
    return jnp.where(valid[:, None], log_lik, 0.0)


def _scaled_emissions(params: HMM, obs, lengths, batched: bool):
    """Emissions for :func:`_scaled_forward`: (xs, lookup) with lookup(xs[t]) = (b_t, s_t),
    b_t[k] = p(x_t | z_t = k) / max_k p(x_t | z_t = k) and s_t the log of that max.
    Batches are laid out time-major with sequences last (b_t is (K, N)). Padded steps get
    b = 1, s = 0. A symbol no state emits (an all-zero column of B) gets b = 0, s = -inf.

    Categorical: b_t is a column gather B̃[:, x_t] from the column-rescaled B̃, done inside
    the loop (no exp, no (T, K, N) array). Gaussian: b is precomputed with one exp.
    """
    t_max = obs.shape[1] if batched else obs.shape[0]
    steps = jnp.arange(t_max)
    valid = (steps[:, None] < lengths[None]) if batched else (steps < lengths)   # (T[, N])
    if isinstance(params, CategoricalHMM):
        col_max = jnp.max(params.emission, axis=0)                       # (M,)
        scaled, log_col_max = _safe_divide(params.emission, col_max), jnp.log(col_max)

        if not batched:   # one sequence: a contiguous row gather up front is cheapest
            b = jnp.where(valid[:, None], scaled.T[obs], 1.0)
            return (b, jnp.where(valid, log_col_max[obs], 0.0)), _identity

        def lookup(x_t):
            sym, ok = x_t
            return jnp.where(ok, scaled[:, sym], 1.0), jnp.where(ok, log_col_max[sym], 0.0)
        return (obs.T, valid), lookup
    ll = _time_major_log_lik(params, obs) if batched else _emission_log_lik(params, obs)
    return _scaled_likelihoods(jnp.where(jnp.expand_dims(valid, 1), ll, 0.0)), _identity


# --------------------------------------------------------------------------- sequential kernels


def _scaled_likelihoods(log_lik):
    """b = exp(log_lik - shift) with shift = max over states (axis 1), and the shift.

    Works for log_lik (T, K) or, batched along a trailing axis, (T, K, N). A step where
    every state has log_lik = -inf gets b = 0 and shift = -inf (probability 0, not NaN)."""
    shift = _finite_max(log_lik, axis=1)
    return jnp.exp(log_lik - shift), jnp.max(log_lik, axis=1)


def _identity(x):
    return x


def _scaled_forward(initial, transition, xs, keep_filtered: bool, unroll: int, lookup=_identity):
    """The scaled forward recursion; ``lookup(xs[t])`` gives (b_t (K[, N]), s_t ([N])) with
    p(x_t | z_t = k) = b_t[k] exp(s_t).

    ``xs`` is either precomputed (b (T, K[, N]), s (T[, N])) with ``lookup`` the identity,
    or whatever ``lookup`` turns into them, e.g. symbols: a categorical model then gathers
    B[:, x_t] inside the loop instead of materialising a (T, K, N) array first, which on a
    CPU costs more than the recursion itself.

    The loop body is one small matrix product, a multiply, a sum, a divide and one log.
    log p = Σ_t (log c_t + s_t): for one sequence the terms are emitted and added after the
    loop by a pairwise sum; for a batch they are accumulated in the carry with Kahan
    (compensated) summation. Either way float32 keeps ~6 digits at T = 10^6. A trailing
    batch axis N makes the matvec a (K, K) x (K, N) matmul, the cheap way to run many
    sequences. An observation with probability 0 makes c_t = 0: the total is then -inf and
    α is 0 from that step on. Returns (log-likelihood (scalar or (N,)), filtered
    (T, K[, N]) or None).
    """
    b0, s0 = lookup(jax.tree.map(lambda x: x[0], xs))
    first = jnp.expand_dims(initial, tuple(range(1, b0.ndim))) * b0
    c0 = jnp.sum(first, axis=0)
    alpha0 = _safe_divide(first, c0)

    single = b0.ndim == 1

    def step(carry, x_t):
        alpha, total, comp = carry
        b_t, s_t = lookup(x_t)
        if single:   # Σ_i α(i) A[i, j] as one fused multiply-reduce (faster than a tiny dot)
            joint = jnp.sum(alpha[:, None] * transition, axis=0) * b_t
        else:        # (K, K) x (K, N): a real matmul
            joint = jnp.tensordot(transition, alpha, axes=(0, 0)) * b_t
        c = jnp.sum(joint, axis=0)
        alpha = _safe_divide(joint, c)
        if single:   # emit log c_t + s_t; summed after the loop (a scalar carry is slow on CPU)
            out = jnp.log(c) + s_t
        else:        # Kahan-compensated running sum in the carry (no (T, N) array)
            term = jnp.log(c) + s_t - comp
            new_total = total + term
            comp = jnp.where(jnp.isfinite(new_total), (new_total - total) - term, 0.0)
            total, out = new_total, None
        return (alpha, total, comp), ((alpha, out) if keep_filtered else out)

    init = (alpha0, jnp.log(c0) + s0, jnp.zeros_like(c0))
    (_, total, _), outs = lax.scan(step, init, jax.tree.map(lambda x: x[1:], xs), unroll=unroll)
    rest, terms = outs if keep_filtered else (None, outs)
    if single:
        total = total + _pairwise_sum(terms)
    filtered = jnp.concatenate([alpha0[None], rest]) if keep_filtered else None
    return total, filtered


@partial(jax.jit, static_argnames=("unroll",))
def _forward_log_likelihood(initial, transition, log_lik, unroll: int = 1):
    total, _ = _scaled_forward(initial, transition, _scaled_likelihoods(log_lik), False, unroll)
    return total


def forward_log_likelihood(initial, transition, log_lik, *, unroll: int = 1) -> jax.Array:
    """log p(x_{0:T-1}) only (no (T, K) output): the lean scaled forward pass.

    initial (K,), transition (K, K), log_lik (T, K) -> scalar, or log_lik (T, K, N)
    (N sequences along a trailing axis) -> (N,). -inf where the data are impossible.
    """
    initial, transition, log_lik = _check_kernel(initial, transition, log_lik)
    return _forward_log_likelihood(initial, transition, log_lik, unroll=_validate.count(unroll, "unroll"))


@partial(jax.jit, static_argnames=("unroll",))
def _forward_filter(initial, transition, log_lik, unroll: int = 1) -> Filtered:
    total, filtered = _scaled_forward(initial, transition, _scaled_likelihoods(log_lik), True, unroll)
    return Filtered(total, filtered)


def forward_filter(initial, transition, log_lik, *, unroll: int = 1) -> Filtered:
    """Scaled forward pass: filtered marginals and log-likelihood.

    initial (K,), transition (K, K), log_lik (T, K) -> Filtered(scalar, (T, K)); a trailing
    batch axis (T, K, N) gives Filtered((N,), (T, K, N)).
    """
    initial, transition, log_lik = _check_kernel(initial, transition, log_lik)
    return _forward_filter(initial, transition, log_lik, unroll=_validate.count(unroll, "unroll"))


@partial(jax.jit, static_argnames=("unroll",))
def _backward_messages(transition, log_lik, unroll: int = 1) -> jax.Array:
    k = log_lik.shape[1]
    last = jnp.full((k,), 1.0 / k, dtype=transition.dtype)

    def step(beta_next, ll_next):
        weighted = beta_next * jnp.exp(ll_next - _finite_max(ll_next, axis=0))
        beta = transition @ weighted
        beta = _safe_divide(beta, jnp.sum(beta))
        return beta, beta

    _, rest = lax.scan(step, last, log_lik[1:], reverse=True, unroll=unroll)
    return jnp.concatenate([rest, last[None]])


def backward_messages(transition, log_lik, *, unroll: int = 1) -> jax.Array:
    """Scaled backward messages β (T, K), each row normalised to sum 1 (β_{T-1} = 1/K).

    transition (K, K), log_lik (T, K). β_t(i) ∝ Σ_j A[i, j] b_{t+1}(j) β_{t+1}(j).
    """
    _, transition, log_lik = _check_kernel(None, transition, log_lik, batch=False)
    return _backward_messages(transition, log_lik, unroll=_validate.count(unroll, "unroll"))


@partial(jax.jit, static_argnames=("unroll",))
def _smooth(initial, transition, log_lik, valid_transitions=None, unroll: int = 1) -> Posterior:
    filt = _forward_filter(initial, transition, log_lik, unroll=unroll)
    beta = _backward_messages(transition, log_lik, unroll=unroll)
    gamma = filt.filtered * beta
    gamma = gamma / jnp.sum(gamma, axis=1, keepdims=True)
    # ξ_t(i, j) ∝ α_t(i) A[i, j] b_{t+1}(j) β_{t+1}(j), normalised per t, summed over t.
    b_next = jnp.exp(log_lik[1:] - _finite_max(log_lik[1:], axis=1))
    right = b_next * beta[1:]                                            # (T-1, K)
    xi = filt.filtered[:-1, :, None] * transition[None] * right[:, None, :]
    xi = xi / jnp.sum(xi, axis=(1, 2), keepdims=True)
    if valid_transitions is not None:
        xi = jnp.where(valid_transitions[:, None, None], xi, 0.0)
    return Posterior(filt.log_likelihood, filt.filtered, gamma, jnp.sum(xi, axis=0))


def smooth(initial, transition, log_lik, valid_transitions=None, *, unroll: int = 1) -> Posterior:
    """Forward-backward: smoothed marginals γ (T, K) and expected transition counts (K, K).

    initial (K,), transition (K, K), log_lik (T, K). ``valid_transitions`` (T-1,) bool,
    optional: which steps t -> t+1 count in the transition counts (False where t+1 is
    padding).
    """
    initial, transition, log_lik = _check_kernel(initial, transition, log_lik, batch=False)
    if valid_transitions is not None:
        if not isinstance(valid_transitions, jax.Array):
            valid_transitions = np.asarray(valid_transitions)
        if valid_transitions.dtype != np.bool_:
            raise ValueError(f"valid_transitions must be booleans, got dtype {valid_transitions.dtype}")
        want = (log_lik.shape[0] - 1,)
        if valid_transitions.shape != want:
            raise ValueError(f"valid_transitions must have shape {want} (T-1 for log_lik's T = "
                             f"{log_lik.shape[0]}), got {tuple(valid_transitions.shape)}")
        valid_transitions = jnp.asarray(valid_transitions)
    return _smooth(initial, transition, log_lik, valid_transitions,
                   unroll=_validate.count(unroll, "unroll"))


@partial(jax.jit, static_argnames=("unroll",))
def _viterbi_path(initial, transition, log_lik, length=None, unroll: int = 1) -> ViterbiPath:
    t_max = log_lik.shape[0]
    steps = jnp.arange(t_max).reshape((t_max,) + (1,) * (log_lik.ndim - 2))
    valid = jnp.broadcast_to(steps < (t_max if length is None else length),
                             (t_max,) + log_lik.shape[2:])
    return _viterbi_core(initial, transition, log_lik, valid, _identity, unroll)


def viterbi_path(initial, transition, log_lik, length=None, *, unroll: int = 1) -> ViterbiPath:
    """Most probable state path by max-plus dynamic programming in log space.

    initial (K,), transition (K, K), log_lik (T, K) -> path (T,); or, N sequences along a
    trailing axis, log_lik (T, K, N) -> path (T, N). ``length`` (scalar or (N,), traced)
    marks steps t >= length as padding (identity backpointers: the path repeats its last
    valid state there). Backpointers are stored as int8 when K <= 127 (int16 otherwise):
    the (T, K[, N]) backpointer array is the kernel's main memory traffic. Ties go to the
    lowest state index. ``log_prob`` is log p(path, x), summed pairwise over the T terms.
    """
    initial, transition, log_lik = _check_kernel(initial, transition, log_lik)
    length = _check_length(length, log_lik.shape[0], log_lik.shape[2:])
    return _viterbi_path(initial, transition, log_lik, length, unroll=_validate.count(unroll, "unroll"))


def _gather_state(values, state):
    """values (K[, N]) at state ([N]): values[state] per sequence."""
    return jnp.take_along_axis(values, jnp.expand_dims(state, 0), axis=0)[0]


def _viterbi_core(initial, transition, xs, valid, lookup, unroll):
    """Viterbi on ``lookup(xs[t])`` = log p(x_t | z_t) (K[, N]); ``valid`` (T[, N])."""
    ll0 = lookup(jax.tree.map(lambda x: x[0], xs))
    k, batch = ll0.shape[0], ll0.shape[1:]
    log_a2 = jnp.log(transition)
    log_a = log_a2.reshape((k, k) + (1,) * len(batch))
    log_pi = jnp.log(initial)
    bp_dtype = jnp.int8 if k <= 127 else jnp.int16
    delta0 = jnp.expand_dims(log_pi, tuple(range(1, 1 + len(batch)))) + ll0
    identity = jnp.arange(k, dtype=bp_dtype).reshape((k,) + (1,) * len(batch))

    def step(delta, inp):
        x_t, ok = inp
        ll_t = lookup(x_t)
        scores = delta[:, None] + log_a                     # (K_from, K_to[, N])
        best = jnp.max(scores, axis=0) + ll_t
        arg = jnp.argmax(scores, axis=0).astype(bp_dtype)
        delta = jnp.where(ok, best - _finite_max(best, axis=0), delta)
        return delta, jnp.where(ok, arg, identity)

    rest = jax.tree.map(lambda x: x[1:], xs)
    delta, backptr = lax.scan(step, delta0 - _finite_max(delta0, axis=0), (rest, valid[1:]),
                              unroll=unroll)
    last = jnp.argmax(delta, axis=0).astype(jnp.int32)

    def back(state, inp):
        # state: z_{t+1}; emit z_t and the term log A[z_t, z_{t+1}] + log b_{t+1}(z_{t+1}).
        bp_t, x_next, ok = inp
        prev = _gather_state(bp_t, state).astype(jnp.int32)
        term = log_a2[prev, state] + _gather_state(lookup(x_next), state)
        return prev, (prev, jnp.where(ok, term, 0.0))

    _, (earlier, terms) = lax.scan(back, last, (backptr, rest, valid[1:]), reverse=True,
                                   unroll=unroll)
    path = jnp.concatenate([earlier, last[None]])
    first = log_pi[path[0]] + _gather_state(ll0, path[0])
    return ViterbiPath(path, first + _pairwise_sum(terms))


# --------------------------------------------------------------------------- parallel kernels


def _normalised_matmul(a, b):
    """Associative combine for the forward pass: (M, log s) pairs, batched over axis 0."""
    mat_a, log_a = a
    mat_b, log_b = b
    prod = mat_a @ mat_b
    norm = jnp.sum(prod, axis=(-2, -1), keepdims=True)
    return _safe_divide(prod, norm), log_a + log_b + jnp.log(norm[..., 0, 0])


@jax.jit
def _forward_filter_parallel(initial, transition, log_lik) -> Filtered:
    t_max, k = log_lik.shape
    b, shift = _scaled_likelihoods(log_lik)                              # (T, K), (T,)
    mats = transition[None] * b[:, None, :]                              # (T, K, K)
    mats = mats.at[0].set(jnp.broadcast_to(initial * b[0], (k, k)))
    norms = jnp.sum(mats, axis=(1, 2))
    mats = _safe_divide(mats, norms[:, None, None])
    prefix, log_scale = lax.associative_scan(_normalised_matmul, (mats, jnp.log(norms) + shift))
    rows = prefix[:, 0, :]
    row_sum = jnp.sum(rows, axis=1)
    # Each prefix matrix has K identical rows, so one row holds 1/K of its total mass.
    log_likelihood = log_scale[-1] + jnp.log(row_sum[-1])
    return Filtered(log_likelihood, _safe_divide(rows, row_sum[:, None]))


def forward_filter_parallel(initial, transition, log_lik) -> Filtered:
    """Forward pass by ``lax.associative_scan``: O(log T) depth, O(T K³) work.

    initial (K,), transition (K, K), log_lik (T, K) -> Filtered(scalar, (T, K)).
    Element 0 is the K×K matrix whose every row is π ⊙ b_0; element t ≥ 1 is
    M_t = A diag(b_t). Their prefix products E_0 M_1 ⋯ M_t have every row ∝ α_t. Each
    product is rescaled to sum 1 and the log of the scale is carried alongside, so
    nothing underflows. Same results as :func:`forward_filter` up to rounding.
    """
    initial, transition, log_lik = _check_kernel(initial, transition, log_lik, batch=False)
    return _forward_filter_parallel(initial, transition, log_lik)


def _maxplus_matmul(a, b):
    """(a ⊗ b)[..., i, j] = max_k a[..., i, k] + b[..., k, j], O(K²) memory per pair."""
    def body(kk, acc):
        return jnp.maximum(acc, a[..., :, kk, None] + b[..., None, kk, :])

    init = jnp.full(a.shape[:-1] + (b.shape[-1],), -jnp.inf, a.dtype)
    return lax.fori_loop(0, a.shape[-1], body, init)


def _maxplus_combine(a, b):
    prod = _maxplus_matmul(a, b)
    return prod - _finite_max(prod, axis=(-2, -1))


def _compose(earlier, later):
    """Associative combine of backpointer maps read from the end: apply ``earlier`` first.

    Each map sends a state at one step to the state before it; (earlier ∘ later)[j] =
    later[earlier[j]], batched over axis 0."""
    k = later.shape[-1]
    pick = earlier[..., :, None] == jnp.arange(k, dtype=earlier.dtype)   # one-hot, no gather:
    return jnp.sum(jnp.where(pick, later[..., None, :], 0), axis=-1).astype(later.dtype)  # (a gather makes
    #                                                  XLA's compile time grow with T)


@jax.jit
def _viterbi_parallel(initial, transition, log_lik, length=None) -> ViterbiPath:
    t_max, k = log_lik.shape
    log_a = jnp.log(transition)
    log_pi = jnp.log(initial)
    if t_max == 1:
        path = jnp.argmax(log_pi + log_lik[0])[None].astype(jnp.int32)
        return ViterbiPath(path, log_pi[path[0]] + log_lik[0, path[0]])
    valid = jnp.ones(t_max, bool) if length is None else jnp.arange(t_max) < length
    eye = jnp.where(jnp.eye(k, dtype=bool), 0.0, -jnp.inf).astype(log_lik.dtype)
    mats = log_a[None] + log_lik[:, None, :]
    mats = jnp.where(valid[:, None, None], mats, eye)
    first = jnp.broadcast_to(log_pi + log_lik[0], (k, k))
    # 1. δ_t up to a constant per t: row 0 of the max-plus prefix products (all rows equal).
    delta = lax.associative_scan(_maxplus_combine, mats.at[0].set(first))[:, 0, :]   # (T, K)
    # 2. Backpointers for every step at once: bp[t-1, j] = argmax_i δ_{t-1}(i) + log A[i, j]
    #    (lowest index on ties, as the sequential kernel); identity at padded steps.
    bp = jnp.argmax(delta[:-1, :, None] + log_a[None], axis=1).astype(jnp.int32)    # (T-1, K)
    bp = jnp.where(valid[1:, None], bp, jnp.arange(k, dtype=jnp.int32))
    # 3. Read the path back from z_{T-1}: the maps composed from the end, by a second scan.
    #    Every z_t follows the backpointers of z_{t+1}, so the path is one optimal path,
    #    never two tied ones spliced together.
    last = jnp.argmax(delta[-1]).astype(jnp.int32)
    maps = lax.associative_scan(_compose, bp[::-1])                      # (T-1, K)
    path = jnp.concatenate([maps[::-1, last], last[None]])
    terms = log_a[path[:-1], path[1:]] + log_lik[jnp.arange(1, t_max), path[1:]]
    log_prob = log_pi[path[0]] + log_lik[0, path[0]] + _pairwise_sum(jnp.where(valid[1:], terms, 0.0))
    return ViterbiPath(path, log_prob)


def viterbi_parallel(initial, transition, log_lik, length=None) -> ViterbiPath:
    """Viterbi in O(log T) depth: a max-plus ``lax.associative_scan``, then the path.

    initial (K,), transition (K, K), log_lik (T, K) -> ViterbiPath(path (T,), log_prob).
    With S_t[i, j] = log A[i, j] + log b_t(j), the prefix products give δ_t(j) (the best
    log-score of a path ending in j at t) up to a constant; the backpointers
    argmax_i δ_{t-1}(i) + log A[i, j] are computed for all t at once, and the path is read
    back by a second associative scan that composes them. The result is a true most
    probable path; with ties it is the one the lowest-index backpointers lead to, which can
    differ from :func:`viterbi_path`'s where rounding splits a tie the other way (the two
    scores then agree to rounding). ``length`` (scalar) marks steps t >= length as padding.
    """
    initial, transition, log_lik = _check_kernel(initial, transition, log_lik, batch=False)
    length = _check_length(length, log_lik.shape[0], ())
    return _viterbi_parallel(initial, transition, log_lik, length)


# --------------------------------------------------------------------------- model-level API


def _batch(fn, batched):
    return jax.vmap(fn, in_axes=(None, 0, 0)) if batched else fn


def _time_major_log_lik(params: HMM, obs) -> jax.Array:
    """Emission log-likelihoods of a batch (N, T[, D]) laid out time-major, (T, K, N)."""
    if isinstance(params, CategoricalHMM):
        return jnp.moveaxis(jnp.log(params.emission)[:, obs.T], 0, 1)
    return jax.vmap(_emission_log_lik, in_axes=(None, 0), out_axes=2)(params, obs)


@partial(jax.jit, static_argnames=("batched",))
def _log_likelihood(params, obs, lengths, batched):
    obs = _clean(obs, lengths, batched)
    xs, lookup = _scaled_emissions(params, obs, lengths, batched)
    total, _ = _scaled_forward(params.initial, params.transition, xs, False, 1, lookup)
    return total


def log_likelihood(params: HMM, obs, lengths=None) -> jax.Array:
    """log p(x) by the scaled forward pass (-inf when x is impossible under ``params``).

    obs: (T,) symbols / (T, D) values for one sequence (-> scalar), or (N, T) / (N, T, D)
    for a padded batch (-> (N,)); ``lengths`` scalar or (N,) (default: no padding). Padding
    may hold anything, NaN included.
    """
    params, obs, lengths, batched = _prepare(params, obs, lengths)
    return _log_likelihood(params, obs, lengths, batched)


@partial(jax.jit, static_argnames=("batched", "parallel"))
def _forward(params, obs, lengths, batched, parallel):
    kernel = _forward_filter_parallel if parallel else _forward_filter
    obs = _clean(obs, lengths, batched)

    def one(p, x, n):
        ll = _masked(_emission_log_lik(p, x), n)
        return kernel(p.initial, p.transition, ll)
    return _batch(one, batched)(params, obs, lengths)


def forward(params: HMM, obs, lengths=None, *, parallel: bool = False) -> Filtered:
    """Forward pass: :class:`Filtered` (log-likelihood and p(z_t | x_{0:t})). Shapes as
    :func:`log_likelihood`, with a leading N on every field for a batch;
    ``parallel=True`` uses the associative-scan version (for accelerators)."""
    params, obs, lengths, batched = _prepare(params, obs, lengths)
    return _forward(params, obs, lengths, batched, _flag(parallel, "parallel"))


def _flag(value, name: str) -> bool:
    if not isinstance(value, (bool, np.bool_)):
        raise ValueError(f"{name} must be True or False, got {value!r}")
    return bool(value)


def _posterior_one(p, x, n):
    ll = _masked(_emission_log_lik(p, x), n)
    valid_next = jnp.arange(1, ll.shape[0]) < n
    return _smooth(p.initial, p.transition, ll, valid_next)


@partial(jax.jit, static_argnames=("batched",))
def _posterior(params, obs, lengths, batched):
    return _batch(_posterior_one, batched)(params, _clean(obs, lengths, batched), lengths)


def posterior(params: HMM, obs, lengths=None) -> Posterior:
    """Forward-backward: :class:`Posterior` with smoothed marginals p(z_t | x)."""
    params, obs, lengths, batched = _prepare(params, obs, lengths)
    return _posterior(params, obs, lengths, batched)


@partial(jax.jit, static_argnames=("batched", "parallel"))
def _viterbi(params, obs, lengths, batched, parallel):
    obs = _clean(obs, lengths, batched)
    if parallel:
        def one(p, x, n):
            return _viterbi_parallel(p.initial, p.transition, _emission_log_lik(p, x), n)
        return _batch(one, batched)(params, obs, lengths)
    if isinstance(params, CategoricalHMM):   # gather log B[:, x_t] inside the loop
        log_b = jnp.log(params.emission)
        xs, lookup = (obs.T if batched else obs), (lambda sym: log_b[:, sym])
    else:
        xs = _time_major_log_lik(params, obs) if batched else _emission_log_lik(params, obs)
        lookup = _identity
    t_max = obs.shape[1] if batched else obs.shape[0]
    steps = jnp.arange(t_max)
    valid = (steps[:, None] < lengths[None]) if batched else (steps < lengths)
    out = _viterbi_core(params.initial, params.transition, xs, valid, lookup, 1)
    return ViterbiPath(out.path.T, out.log_prob) if batched else out


def viterbi(params: HMM, obs, lengths=None, *, parallel: bool = False) -> ViterbiPath:
    """A most probable state path (:class:`ViterbiPath`) and its log joint log p(path, x).

    Shapes as :func:`log_likelihood`. ``parallel=True`` uses the associative-scan version
    (for accelerators); both return a maximum-a-posteriori path, and where several paths
    tie they may return different ones with the same score (to rounding)."""
    params, obs, lengths, batched = _prepare(params, obs, lengths)
    return _viterbi(params, obs, lengths, batched, _flag(parallel, "parallel"))


@partial(jax.jit, static_argnames=("length",))
def _sample(key, params, length):
    key_z0, key_z, key_x = jax.random.split(key, 3)
    log_a = jnp.log(params.transition)
    z0 = jax.random.categorical(key_z0, jnp.log(params.initial))

    def step(z, key_t):
        z_next = jax.random.categorical(key_t, log_a[z])
        return z_next, z_next

    _, rest = lax.scan(step, z0, jax.random.split(key_z, length - 1))
    states = jnp.concatenate([z0[None], rest]).astype(jnp.int32)
    if isinstance(params, CategoricalHMM):
        obs = jax.random.categorical(key_x, jnp.log(params.emission)[states]).astype(jnp.int32)
    else:
        noise = jax.random.normal(key_x, (length, params.means.shape[1]), params.means.dtype)
        obs = params.means[states] + jnp.sqrt(params.variances[states]) * noise
    return Sample(states, obs)


def sample(key: jax.Array, params: HMM, length: int) -> Sample:
    """Draw z_0 ~ π, z_{t+1} ~ A[z_t], x_t ~ p(x | z_t) for t < ``length`` (an integer >= 1)."""
    key = _validate.key(key)
    length = _validate.count(length, "length")
    return _sample(key, validate(params), length)


def stationary_distribution(transition) -> np.ndarray:
    """π with π A = π and Σ π = 1 for a row-stochastic A (the left eigenvector for 1).

    Solved as the least-squares system [Aᵀ - I; 1ᵀ] π = [0; 1] in NumPy (float64).
    """
    a = np.asarray(_validate.real_array(transition, "transition", ndim=2), dtype=np.float64)
    a = np.asarray(_distribution(a, "transition", (a.shape[0], a.shape[0]),
                                 "row-stochastic A[i, j] = P(z_{t+1} = j | z_t = i)"), np.float64)
    k = a.shape[0]
    lhs = np.vstack([a.T - np.eye(k), np.ones((1, k))])
    rhs = np.concatenate([np.zeros(k), [1.0]])
    return np.linalg.lstsq(lhs, rhs, rcond=None)[0]


# --------------------------------------------------------------------------- Baum-Welch


def _m_step(params: HMM, obs, lengths, post: Posterior) -> HMM:
    valid = jnp.arange(obs.shape[1]) < lengths[:, None]                                 # (N, T)
    gamma = jnp.where(valid[..., None], post.smoothed, 0.0)                             # (N, T, K)
    initial = jnp.mean(post.smoothed[:, 0], axis=0)
    counts = jnp.sum(post.transition_counts, axis=0)
    row = jnp.sum(counts, axis=1, keepdims=True)
    transition = jnp.where(row > 0, counts / jnp.where(row > 0, row, 1.0), params.transition)
    weight = jnp.sum(gamma, axis=(0, 1))[:, None]                                       # (K, 1)
    has_mass = weight > 0
    safe = jnp.where(has_mass, weight, 1.0)
    if isinstance(params, CategoricalHMM):
        one_hot = jax.nn.one_hot(obs, params.emission.shape[1], dtype=gamma.dtype)     # (N, T, M)
        emit = jnp.einsum("ntk,ntm->km", gamma, one_hot)
        return CategoricalHMM(initial, transition, jnp.where(has_mass, emit / safe, params.emission))
    sums = jnp.einsum("ntk,ntd->kd", gamma, obs)
    means = jnp.where(has_mass, sums / safe, params.means)
    sq = jnp.einsum("ntk,ntkd->kd", gamma, (obs[:, :, None, :] - means[None, None]) ** 2)
    variances = jnp.where(has_mass, sq / safe, params.variances)
    return GaussianHMM(initial, transition, means, variances)


@jax.jit
def _em_step(params: HMM, obs: jax.Array, lengths: jax.Array, min_variance):
    obs = _clean(obs, lengths, True)
    post = jax.vmap(_posterior_one, in_axes=(None, 0, 0))(params, obs, lengths)
    new = _m_step(params, obs, lengths, post)
    if isinstance(new, GaussianHMM):
        new = new._replace(variances=jnp.maximum(new.variances, min_variance))
    return new, jnp.sum(post.log_likelihood)


def _impossible(total) -> None:
    if _validate.is_concrete(total) and not np.isfinite(float(total)):
        raise ValueError("obs are impossible under params (log-likelihood -inf): some symbol "
                         "has probability 0 in every state that can emit it; Baum-Welch cannot "
                         "update from there (start from an emission matrix without zeros)")


def em_step(params: HMM, obs, lengths=None, *, min_variance: float = 1e-6):
    """One Baum-Welch iteration: returns (new params, Σ_n log p(x_n | old params)).

    obs: a padded batch (N, T) / (N, T, D) with ``lengths`` (N,), or one sequence (T,) /
    (T, D). E-step: forward-backward per sequence (vmapped). M-step: π = mean γ_0;
    A ∝ expected transition counts; B ∝ Σ_t γ_t(k) 1[x_t = m] (categorical) or weighted
    means and variances (Gaussian, variances floored at ``min_variance`` > 0). A state with
    no responsibility keeps its old row. Raises ValueError when the data are impossible
    under ``params`` (log-likelihood -inf).
    """
    params, obs, lengths, batched = _prepare(params, obs, lengths)
    min_variance = _validate.real(min_variance, "min_variance", low=0.0, low_open=True)
    if not batched:
        obs, lengths = obs[None], lengths[None]
    new, total = _em_step(params, obs, lengths, min_variance)
    _impossible(total)
    return new, total


def baum_welch(params: HMM, obs, lengths=None, *, max_iter: int = 50, tol: float = 1e-6,
               min_variance: float = 1e-6, progress: bool = False) -> EMResult:
    """Fit by expectation-maximisation from ``params`` (the initial guess).

    obs: a padded batch (N, T) / (N, T, D), or one sequence (T,) / (T, D); ``lengths`` (N,)
    gives each sequence's true length (the shape, and hence the compiled code, never
    depends on it). Runs at most ``max_iter`` iterations and stops when the mean
    log-likelihood per time step, Σ_n log p(x_n) / Σ_n lengths_n, changes by less than
    ``tol`` between two iterations; ``tol=0`` runs exactly ``max_iter``. The
    log-likelihood never decreases (EM's guarantee, up to rounding).
    """
    params, obs, lengths, batched = _prepare(params, obs, lengths)
    if not batched:
        obs, lengths = obs[None], lengths[None]
    max_iter = _validate.count(max_iter, "max_iter")
    tol = _validate.real(tol, "tol", low=0.0)
    min_variance = _validate.real(min_variance, "min_variance", low=0.0, low_open=True)
    progress = _flag(progress, "progress")
    steps = float(np.sum(np.asarray(lengths)))
    history = []
    iters = range(max_iter)
    if progress:
        from tqdm.auto import tqdm
        iters = tqdm(iters, desc="Baum-Welch", leave=False)
    for _ in iters:
        new, total = _em_step(params, obs, lengths, min_variance)
        _impossible(total)
        history.append(float(total))
        params = new
        if len(history) > 1 and abs(history[-1] - history[-2]) / steps < tol:
            break
    return EMResult(params, np.asarray(history))
