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
backward
    β_t(i) ∝ Σ_j A[i, j] b_{t+1}(j) β_{t+1}(j), β_{T-1} = 1, rescaled every step.
smoothing (forward-backward)
    γ_t(k) = p(z_t = k | x_{0:T-1}) ∝ α_t(k) β_t(k), and the expected transition counts
    Σ_t ξ_t(i, j) with ξ_t(i, j) ∝ α_t(i) A[i, j] b_{t+1}(j) β_{t+1}(j).
Viterbi
    δ_t(j) = max_i [δ_{t-1}(i) + log A[i, j]] + log b_t(j) in log space (max-plus), with the
    arg-max kept as a backpointer and the path read back from the end. δ is shifted by its
    maximum every step (the shift is added to a separate total), so its entries stay near 0
    and float32 still tells close paths apart at T = 10⁶.

**Variable lengths without recompiling.** Sequences of different lengths are padded at the
end to one shape (N, T_max) and described by ``lengths`` (N,), a traced array, so a new
length never triggers a new compilation. A padded step gets log_lik = 0 (b = 1): the forward
pass then only predicts (c_t = Σ_j (α A)_j = 1, so the log-likelihood is unchanged) and the
backward message stays 1; Viterbi uses identity backpointers there, and Baum-Welch's
statistics are masked. Outputs at padded steps carry no meaning.

**Parallel in time.** The forward recursion is a product of matrices, α_T ∝ π̃ M_1 M_2 ⋯ M_T
with M_t = A diag(b_t), and matrix multiplication is associative, so
``jax.lax.associative_scan`` computes all prefixes in O(log T) sequential depth at the price
of O(T K³) work instead of O(T K²) (:func:`forward_filter_parallel`). Viterbi is the same
with (max, +) in place of (+, ×) (:func:`viterbi_parallel`). This pays on accelerators,
where the sequential scan's T tiny steps leave the device idle; on a CPU the sequential scan
is faster.

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

    ``initial`` (K,);  ``transition`` (K, K) rows sum to 1;  ``means`` (K, D);
    ``variances`` (K, D) > 0.
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
    """``path`` (T,) int32, the most probable state sequence, and ``log_prob``,
    log p(path, x) (scalar)."""

    path: jax.Array
    log_prob: jax.Array


class EMResult(NamedTuple):
    """Baum-Welch: fitted ``params`` and ``log_likelihoods`` (num_iters,), the total
    log-likelihood of the data under the parameters *entering* each iteration."""

    params: HMM
    log_likelihoods: np.ndarray


# --------------------------------------------------------------------------- validation


def _is_concrete(x) -> bool:
    return not isinstance(x, jax.core.Tracer)


def _tolerance(x) -> float:
    return 1e-6 if jnp.asarray(x).dtype == jnp.float64 else 1e-4


def _check_distribution(name: str, value, shape: tuple, what: str) -> None:
    value = jnp.asarray(value)
    if value.shape != shape:
        raise ValueError(f"{name} must have shape {shape} ({what}), got {value.shape}")
    if not jnp.issubdtype(value.dtype, jnp.floating):
        raise ValueError(f"{name} must be a floating-point array, got dtype {value.dtype}")
    if not _is_concrete(value):
        return
    v = np.asarray(value)
    if not np.all(np.isfinite(v)) or np.any(v < 0):
        raise ValueError(f"{name} must have finite, non-negative entries (probabilities)")
    sums = v.sum(axis=-1)
    bad = np.flatnonzero(np.abs(sums - 1.0).reshape(-1) > _tolerance(value))
    if bad.size:
        where = "" if v.ndim == 1 else f" (row {int(bad[0])} sums to {float(sums.reshape(-1)[bad[0]]):.6g})"
        raise ValueError(f"{name} must sum to 1 along its last axis{where}; {what}")


def validate(params: HMM) -> HMM:
    """Check shapes and values of ``params``; return them as JAX arrays or raise ValueError.

    Value checks (non-negative, rows summing to 1, positive variances) run when the
    parameters are concrete; under ``jit`` only the shapes are checked.
    """
    if not isinstance(params, (CategoricalHMM, GaussianHMM)):
        raise ValueError(f"params must be a CategoricalHMM or GaussianHMM, got {type(params).__name__}")
    params = type(params)(*(jnp.asarray(p) for p in params))
    initial = params.initial
    if initial.ndim != 1 or initial.shape[0] < 1:
        raise ValueError(f"initial must have shape (K,) with K >= 1, got {initial.shape}")
    k = initial.shape[0]
    _check_distribution("initial", initial, (k,), "π_i = P(z_0 = i)")
    _check_distribution("transition", params.transition, (k, k),
                        "row-stochastic A[i, j] = P(z_{t+1} = j | z_t = i)")
    if isinstance(params, CategoricalHMM):
        e = params.emission
        if e.ndim != 2 or e.shape[0] != k:
            raise ValueError(f"emission must have shape (K, M) = ({k}, M), got {e.shape}")
        _check_distribution("emission", e, e.shape, "B[k, m] = P(x = m | z = k)")
    else:
        m, v = params.means, params.variances
        if m.ndim != 2 or m.shape[0] != k:
            raise ValueError(f"means must have shape (K, D) = ({k}, D), got {m.shape}")
        if v.shape != m.shape:
            raise ValueError(f"variances must have the shape of means {m.shape}, got {v.shape}")
        if _is_concrete(v) and not np.all(np.asarray(v) > 0):
            raise ValueError("variances must be positive")
    return params


def _check_observations(params: HMM, obs, batched: bool) -> jax.Array:
    obs = jnp.asarray(obs)
    lead = "(N, T" if batched else "(T"
    if isinstance(params, CategoricalHMM):
        want_ndim = 2 if batched else 1
        if obs.ndim != want_ndim:
            raise ValueError(f"observations must have shape {lead}) of symbols, got {obs.shape}")
        if not jnp.issubdtype(obs.dtype, jnp.integer):
            raise ValueError(f"observations must be integer symbols, got dtype {obs.dtype}")
    else:
        d = params.means.shape[1]
        want_ndim = 3 if batched else 2
        if obs.ndim != want_ndim or obs.shape[-1] != d:
            raise ValueError(f"observations must have shape {lead}, D={d}), got {obs.shape}")
    if obs.shape[-2 if isinstance(params, GaussianHMM) else -1] < 1:
        raise ValueError("observations must contain at least one time step")
    return obs


def _check_lengths(lengths, num_seqs: int | None, t_max: int) -> jax.Array:
    lengths = jnp.asarray(lengths)
    want = () if num_seqs is None else (num_seqs,)
    if lengths.shape != want:
        raise ValueError(f"lengths must have shape {want}, got {lengths.shape}")
    if not jnp.issubdtype(lengths.dtype, jnp.integer):
        raise ValueError(f"lengths must be integers, got dtype {lengths.dtype}")
    if _is_concrete(lengths) and (np.any(np.asarray(lengths) < 1) or np.any(np.asarray(lengths) > t_max)):
        raise ValueError(f"lengths must lie in [1, {t_max}] (the padded length), got {np.asarray(lengths)}")
    return lengths


# --------------------------------------------------------------------------- emissions


def emission_log_likelihoods(params: HMM, obs: jax.Array) -> jax.Array:
    """log p(x_t | z_t = k) for one sequence: obs (T,) or (T, D) -> (T, K)."""
    if isinstance(params, CategoricalHMM):
        return jnp.log(params.emission).T[obs]
    diff = obs[:, None, :] - params.means[None]                       # (T, K, D)
    quad = jnp.sum(diff * diff / params.variances[None], axis=-1)
    log_norm = jnp.sum(jnp.log(2 * jnp.pi * params.variances), axis=-1)
    return -0.5 * (quad + log_norm[None])


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
    b = 1, s = 0.

    Categorical: b_t is a column gather B̃[:, x_t] from the column-rescaled B̃, done inside
    the loop (no exp, no (T, K, N) array). Gaussian: b is precomputed with one exp.
    """
    t_max = obs.shape[1] if batched else obs.shape[0]
    steps = jnp.arange(t_max)
    valid = (steps[:, None] < lengths[None]) if batched else (steps < lengths)   # (T[, N])
    if isinstance(params, CategoricalHMM):
        col_max = jnp.max(params.emission, axis=0)                       # (M,)
        scaled, log_col_max = params.emission / col_max, jnp.log(col_max)

        if not batched:   # one sequence: a contiguous row gather up front is cheapest
            b = jnp.where(valid[:, None], scaled.T[obs], 1.0)
            return (b, jnp.where(valid, log_col_max[obs], 0.0)), _identity

        def lookup(x_t):
            sym, ok = x_t
            return jnp.where(ok, scaled[:, sym], 1.0), jnp.where(ok, log_col_max[sym], 0.0)
        return (obs.T, valid), lookup
    ll = _time_major_log_lik(params, obs) if batched else emission_log_likelihoods(params, obs)
    return _scaled_likelihoods(jnp.where(jnp.expand_dims(valid, 1), ll, 0.0)), _identity


# --------------------------------------------------------------------------- sequential kernels


def _scaled_likelihoods(log_lik):
    """b = exp(log_lik - shift) with shift = max over states (axis 1), and the shift.

    Works for log_lik (T, K) or, batched along a trailing axis, (T, K, N)."""
    shift = jnp.max(log_lik, axis=1)
    return jnp.exp(log_lik - jnp.expand_dims(shift, 1)), shift


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
    log p = Σ_t (log c_t + s_t): for one sequence the terms are emitted and summed after
    the loop (XLA's tree reduction); for a batch they are accumulated in the carry with
    Kahan (compensated) summation. Either way float32 keeps ~6-7 digits at T = 10^6.
    A trailing batch axis N makes the matvec a (K, K) x (K, N) matmul, the cheap way to
    run many sequences. Returns (log-likelihood (scalar or (N,)), filtered (T, K[, N]) or
    None).
    """
    b0, s0 = lookup(jax.tree.map(lambda x: x[0], xs))
    first = jnp.expand_dims(initial, tuple(range(1, b0.ndim))) * b0
    c0 = jnp.sum(first, axis=0)
    alpha0 = first / c0

    single = b0.ndim == 1

    def step(carry, x_t):
        alpha, total, comp = carry
        b_t, s_t = lookup(x_t)
        if single:   # Σ_i α(i) A[i, j] as one fused multiply-reduce (faster than a tiny dot)
            joint = jnp.sum(alpha[:, None] * transition, axis=0) * b_t
        else:        # (K, K) x (K, N): a real matmul
            joint = jnp.tensordot(transition, alpha, axes=(0, 0)) * b_t
        c = jnp.sum(joint, axis=0)
        alpha = joint / c
        if single:   # emit log c_t + s_t; summed after the loop (a scalar carry is slow on CPU)
            out = jnp.log(c) + s_t
        else:        # Kahan-compensated running sum in the carry (no (T, N) array)
            term = jnp.log(c) + s_t - comp
            new_total = total + term
            comp = (new_total - total) - term
            total, out = new_total, None
        return (alpha, total, comp), ((alpha, out) if keep_filtered else out)

    init = (alpha0, jnp.log(c0) + s0, jnp.zeros_like(c0))
    (_, total, _), outs = lax.scan(step, init, jax.tree.map(lambda x: x[1:], xs), unroll=unroll)
    rest, terms = outs if keep_filtered else (None, outs)
    if single:
        total = total + jnp.sum(terms)
    filtered = jnp.concatenate([alpha0[None], rest]) if keep_filtered else None
    return total, filtered


@partial(jax.jit, static_argnames=("unroll",))
def forward_log_likelihood(initial, transition, log_lik, unroll: int = 1):
    """log p(x_{0:T-1}) only (no (T, K) output): the lean scaled forward pass.

    initial (K,), transition (K, K), log_lik (T, K) -> scalar, or log_lik (T, K, N)
    (N sequences along a trailing axis) -> (N,).
    """
    total, _ = _scaled_forward(initial, transition, _scaled_likelihoods(log_lik), False, unroll)
    return total


@partial(jax.jit, static_argnames=("unroll",))
def forward_filter(initial, transition, log_lik, unroll: int = 1) -> Filtered:
    """Scaled forward pass: filtered marginals and log-likelihood.

    initial (K,), transition (K, K), log_lik (T, K) -> Filtered(scalar, (T, K)); a trailing
    batch axis (T, K, N) gives Filtered((N,), (T, K, N)).
    """
    total, filtered = _scaled_forward(initial, transition, _scaled_likelihoods(log_lik), True, unroll)
    return Filtered(total, filtered)


@partial(jax.jit, static_argnames=("unroll",))
def backward_messages(transition, log_lik, unroll: int = 1) -> jax.Array:
    """Scaled backward messages β (T, K), each row normalised to sum 1 (β_{T-1} = 1/K).

    β_t(i) ∝ Σ_j A[i, j] b_{t+1}(j) β_{t+1}(j).
    """
    k = log_lik.shape[1]
    last = jnp.full((k,), 1.0 / k, dtype=transition.dtype)

    def step(beta_next, ll_next):
        weighted = beta_next * jnp.exp(ll_next - jnp.max(ll_next))
        beta = transition @ weighted
        beta = beta / jnp.sum(beta)
        return beta, beta

    _, rest = lax.scan(step, last, log_lik[1:], reverse=True, unroll=unroll)
    return jnp.concatenate([rest, last[None]])


@partial(jax.jit, static_argnames=("unroll",))
def smooth(initial, transition, log_lik, valid_transitions=None, unroll: int = 1) -> Posterior:
    """Forward-backward: smoothed marginals γ (T, K) and expected transition counts (K, K).

    ``valid_transitions`` (T-1,) bool, optional: which steps t -> t+1 count in the
    transition counts (False where t+1 is padding).
    """
    filt = forward_filter(initial, transition, log_lik, unroll=unroll)
    beta = backward_messages(transition, log_lik, unroll=unroll)
    gamma = filt.filtered * beta
    gamma = gamma / jnp.sum(gamma, axis=1, keepdims=True)
    # ξ_t(i, j) ∝ α_t(i) A[i, j] b_{t+1}(j) β_{t+1}(j), normalised per t, summed over t.
    b_next = jnp.exp(log_lik[1:] - jnp.max(log_lik[1:], axis=1, keepdims=True))
    right = b_next * beta[1:]                                            # (T-1, K)
    xi = filt.filtered[:-1, :, None] * transition[None] * right[:, None, :]
    xi = xi / jnp.sum(xi, axis=(1, 2), keepdims=True)
    if valid_transitions is not None:
        xi = xi * valid_transitions[:, None, None]
    return Posterior(filt.log_likelihood, filt.filtered, gamma, jnp.sum(xi, axis=0))


@partial(jax.jit, static_argnames=("unroll",))
def viterbi_path(initial, transition, log_lik, length=None, unroll: int = 1) -> ViterbiPath:
    """Most probable state path by max-plus dynamic programming in log space.

    initial (K,), transition (K, K), log_lik (T, K) -> path (T,); or, N sequences along a
    trailing axis, log_lik (T, K, N) -> path (T, N). ``length`` (scalar or (N,), traced)
    marks steps t >= length as padding (identity backpointers: the path repeats its last
    valid state there). Backpointers are stored as int8 when K <= 127 (int16 otherwise):
    the (T, K[, N]) backpointer array is the kernel's main memory traffic.
    """
    t_max = log_lik.shape[0]
    steps = jnp.arange(t_max).reshape((t_max,) + (1,) * (log_lik.ndim - 2))
    valid = jnp.broadcast_to(steps < (t_max if length is None else length),
                             (t_max,) + log_lik.shape[2:])
    return _viterbi_core(initial, transition, log_lik, valid, _identity, unroll)


def _viterbi_core(initial, transition, xs, valid, lookup, unroll):
    """Viterbi on ``lookup(xs[t])`` = log p(x_t | z_t) (K[, N]); ``valid`` (T[, N])."""
    ll0 = lookup(jax.tree.map(lambda x: x[0], xs))
    k, batch = ll0.shape[0], ll0.shape[1:]
    log_a = jnp.log(transition).reshape((k, k) + (1,) * len(batch))
    bp_dtype = jnp.int8 if k <= 127 else jnp.int16
    delta0 = jnp.expand_dims(jnp.log(initial), tuple(range(1, 1 + len(batch)))) + ll0
    shift0 = jnp.max(delta0, axis=0)
    identity = jnp.arange(k, dtype=bp_dtype).reshape((k,) + (1,) * len(batch))

    def step(carry, inp):
        delta, offset = carry
        x_t, ok = inp
        ll_t = lookup(x_t)
        scores = delta[:, None] + log_a                     # (K_from, K_to[, N])
        best = jnp.max(scores, axis=0) + ll_t
        arg = jnp.argmax(scores, axis=0).astype(bp_dtype)
        shift = jnp.max(best, axis=0)
        delta = jnp.where(ok, best - shift, delta)
        return (delta, jnp.where(ok, offset + shift, offset)), jnp.where(ok, arg, identity)

    rest = jax.tree.map(lambda x: x[1:], xs)
    (delta, offset), backptr = lax.scan(step, (delta0 - shift0, shift0), (rest, valid[1:]),
                                        unroll=unroll)
    last = jnp.argmax(delta, axis=0).astype(jnp.int32)

    def back(state, bp_t):
        prev = jnp.take_along_axis(bp_t, state[None], axis=0)[0].astype(jnp.int32)
        return prev, prev

    _, earlier = lax.scan(back, last, backptr, reverse=True, unroll=unroll)
    path = jnp.concatenate([earlier, last[None]])
    best_final = jnp.take_along_axis(delta, last[None], axis=0)[0]
    return ViterbiPath(path, best_final + offset)


# --------------------------------------------------------------------------- parallel kernels


def _normalised_matmul(a, b):
    """Associative combine for the forward pass: (M, log s) pairs, batched over axis 0."""
    mat_a, log_a = a
    mat_b, log_b = b
    prod = mat_a @ mat_b
    norm = jnp.sum(prod, axis=(-2, -1), keepdims=True)
    return prod / norm, log_a + log_b + jnp.log(norm[..., 0, 0])


@jax.jit
def forward_filter_parallel(initial, transition, log_lik) -> Filtered:
    """Forward pass by ``lax.associative_scan``: O(log T) depth, O(T K³) work.

    Element 0 is the K×K matrix whose every row is π ⊙ b_0; element t ≥ 1 is
    M_t = A diag(b_t). Their prefix products E_0 M_1 ⋯ M_t have every row ∝ α_t. Each
    product is rescaled to sum 1 and the log of the scale is carried alongside, so
    nothing underflows. Same results as :func:`forward_filter` up to rounding.
    """
    t_max, k = log_lik.shape
    shift = jnp.max(log_lik, axis=1)                                     # (T,)
    b = jnp.exp(log_lik - shift[:, None])
    mats = transition[None] * b[:, None, :]                              # (T, K, K)
    mats = mats.at[0].set(jnp.broadcast_to(initial * b[0], (k, k)))
    norms = jnp.sum(mats, axis=(1, 2))
    mats = mats / norms[:, None, None]
    prefix, log_scale = lax.associative_scan(_normalised_matmul, (mats, jnp.log(norms) + shift))
    rows = prefix[:, 0, :]
    row_sum = jnp.sum(rows, axis=1)
    # Each prefix matrix has K identical rows, so one row holds 1/K of its total mass.
    log_likelihood = log_scale[-1] + jnp.log(row_sum[-1])
    return Filtered(log_likelihood, rows / row_sum[:, None])


def _maxplus_matmul(a, b):
    """(a ⊗ b)[..., i, j] = max_k a[..., i, k] + b[..., k, j], O(K²) memory per pair."""
    def body(kk, acc):
        return jnp.maximum(acc, a[..., :, kk, None] + b[..., None, kk, :])

    init = jnp.full(a.shape[:-1] + (b.shape[-1],), -jnp.inf, a.dtype)
    return lax.fori_loop(0, a.shape[-1], body, init)


def _maxplus_combine(a, b):
    prod = _maxplus_matmul(a, b)
    top = jnp.max(prod, axis=(-2, -1), keepdims=True)
    return prod - top


@jax.jit
def viterbi_parallel(initial, transition, log_lik, length=None) -> ViterbiPath:
    """Viterbi by two max-plus ``lax.associative_scan`` passes (forward and backward).

    With S_t[i, j] = log A[i, j] + log b_t(j), the forward prefixes give
    V_t(j) = best log-score of a path ending in j at t, the backward suffixes give
    W_t(i) = best log-score of the continuation from i at t, and the MAP path is
    z_t = argmax_j V_t(j) + W_t(j). This agrees with :func:`viterbi_path` when the best
    path is unique (ties may be broken differently, even inconsistently along the path).
    Padded steps (t >= length) become the max-plus identity.
    """
    t_max, k = log_lik.shape
    log_a = jnp.log(transition)
    valid = jnp.ones(t_max, bool) if length is None else jnp.arange(t_max) < length
    eye = jnp.where(jnp.eye(k, dtype=bool), 0.0, -jnp.inf).astype(log_lik.dtype)
    mats = log_a[None] + log_lik[:, None, :]
    mats = jnp.where(valid[:, None, None], mats, eye)
    first = jnp.broadcast_to(jnp.log(initial) + log_lik[0], (k, k))
    fwd_elems = mats.at[0].set(first)
    fwd = lax.associative_scan(_maxplus_combine, fwd_elems)[:, 0, :]      # (T, K) up to shifts
    # reverse=True scans the flipped sequence, so it combines as fn(later, earlier): swap the
    # arguments to keep the (non-commutative) product in time order M_{t+1} ⊗ ... ⊗ M_{T-1}.
    bwd = lax.associative_scan(lambda later, earlier: _maxplus_combine(earlier, later),
                               mats[1:], reverse=True)                  # suffixes from t+1
    future = jnp.concatenate([jnp.max(bwd, axis=2), jnp.zeros((1, k), log_lik.dtype)])
    path = jnp.argmax(fwd + future, axis=1).astype(jnp.int32)
    # Score of the decoded path, evaluated directly (exact, no shifts involved).
    steps = log_a[path[:-1], path[1:]] + log_lik[jnp.arange(1, t_max), path[1:]]
    log_prob = jnp.log(initial[path[0]]) + log_lik[0, path[0]] + jnp.sum(jnp.where(valid[1:], steps, 0.0))
    # Padded steps are max-plus identities, so the path repeats its last valid state there.
    return ViterbiPath(path, log_prob)


# --------------------------------------------------------------------------- model-level API


def _prepare(params: HMM, obs, lengths):
    params = validate(params)
    obs = jnp.asarray(obs)
    seq_ndim = 1 if isinstance(params, CategoricalHMM) else 2
    batched = obs.ndim == seq_ndim + 1
    obs = _check_observations(params, obs, batched)
    t_max = obs.shape[1] if batched else obs.shape[0]
    if lengths is None:
        lengths = jnp.full(obs.shape[:1], t_max, jnp.int32) if batched else jnp.asarray(t_max, jnp.int32)
    lengths = _check_lengths(lengths, obs.shape[0] if batched else None, t_max)
    if isinstance(params, CategoricalHMM) and _is_concrete(obs) and _is_concrete(lengths):
        m = params.emission.shape[1]
        x, n = np.asarray(obs).reshape(-1, t_max), np.asarray(lengths).reshape(-1, 1)
        if np.all(n == t_max):   # no padding: a plain min/max (cheap, no mask)
            lo, hi = int(x.min()), int(x.max())
        else:
            valid = np.arange(t_max)[None] < n
            lo, hi = int(x[valid].min()), int(x[valid].max())
        if lo < 0 or hi >= m:
            raise ValueError(
                f"observations must be symbols in [0, {m}) (emission has M={m} columns), "
                f"got values in [{lo}, {hi}]")
    return params, obs, lengths, batched


def _batch(fn, batched):
    return jax.vmap(fn, in_axes=(None, 0, 0)) if batched else fn


def _time_major_log_lik(params: HMM, obs) -> jax.Array:
    """Emission log-likelihoods of a batch (N, T[, D]) laid out time-major, (T, K, N)."""
    if isinstance(params, CategoricalHMM):
        return jnp.moveaxis(jnp.log(params.emission)[:, obs.T], 0, 1)
    return jax.vmap(emission_log_likelihoods, in_axes=(None, 0), out_axes=2)(params, obs)


@partial(jax.jit, static_argnames=("batched",))
def _log_likelihood(params, obs, lengths, batched):
    xs, lookup = _scaled_emissions(params, obs, lengths, batched)
    total, _ = _scaled_forward(params.initial, params.transition, xs, False, 1, lookup)
    return total


def log_likelihood(params: HMM, obs, lengths=None) -> jax.Array:
    """log p(x) by the scaled forward pass.

    obs: (T,) symbols / (T, D) values for one sequence (-> scalar), or (N, T) / (N, T, D)
    for a padded batch (-> (N,)); ``lengths`` scalar or (N,) (default: no padding).
    """
    params, obs, lengths, batched = _prepare(params, obs, lengths)
    return _log_likelihood(params, obs, lengths, batched)


@partial(jax.jit, static_argnames=("batched", "parallel"))
def _forward(params, obs, lengths, batched, parallel):
    kernel = forward_filter_parallel if parallel else forward_filter

    def one(p, x, n):
        ll = _masked(emission_log_likelihoods(p, x), n)
        return kernel(p.initial, p.transition, ll)
    return _batch(one, batched)(params, obs, lengths)


def forward(params: HMM, obs, lengths=None, *, parallel: bool = False) -> Filtered:
    """Forward pass: :class:`Filtered` (log-likelihood and p(z_t | x_{0:t})). Shapes as
    :func:`log_likelihood`, with a leading N on every field for a batch;
    ``parallel=True`` uses the associative-scan version (for accelerators)."""
    params, obs, lengths, batched = _prepare(params, obs, lengths)
    return _forward(params, obs, lengths, batched, parallel)


def _posterior_one(p, x, n):
    ll = _masked(emission_log_likelihoods(p, x), n)
    valid_next = jnp.arange(1, ll.shape[0]) < n
    return smooth(p.initial, p.transition, ll, valid_next)


@partial(jax.jit, static_argnames=("batched",))
def _posterior(params, obs, lengths, batched):
    return _batch(_posterior_one, batched)(params, obs, lengths)


def posterior(params: HMM, obs, lengths=None) -> Posterior:
    """Forward-backward: :class:`Posterior` with smoothed marginals p(z_t | x)."""
    params, obs, lengths, batched = _prepare(params, obs, lengths)
    return _posterior(params, obs, lengths, batched)


@partial(jax.jit, static_argnames=("batched", "parallel"))
def _viterbi(params, obs, lengths, batched, parallel):
    if parallel:
        def one(p, x, n):
            return viterbi_parallel(p.initial, p.transition, emission_log_likelihoods(p, x), n)
        return _batch(one, batched)(params, obs, lengths)
    if isinstance(params, CategoricalHMM):   # gather log B[:, x_t] inside the loop
        log_b = jnp.log(params.emission)
        xs, lookup = (obs.T if batched else obs), (lambda sym: log_b[:, sym])
    else:
        xs = _time_major_log_lik(params, obs) if batched else emission_log_likelihoods(params, obs)
        lookup = _identity
    t_max = obs.shape[1] if batched else obs.shape[0]
    steps = jnp.arange(t_max)
    valid = (steps[:, None] < lengths[None]) if batched else (steps < lengths)
    out = _viterbi_core(params.initial, params.transition, xs, valid, lookup, 1)
    return ViterbiPath(out.path.T, out.log_prob) if batched else out


def viterbi(params: HMM, obs, lengths=None, *, parallel: bool = False) -> ViterbiPath:
    """Most probable state path (:class:`ViterbiPath`); ``parallel=True`` uses the
    associative-scan version (for accelerators)."""
    params, obs, lengths, batched = _prepare(params, obs, lengths)
    return _viterbi(params, obs, lengths, batched, parallel)


@partial(jax.jit, static_argnames=("num_steps",))
def _sample(key, params, num_steps):
    k = params.initial.shape[0]
    key_z0, key_z, key_x = jax.random.split(key, 3)
    log_a = jnp.log(params.transition)
    z0 = jax.random.categorical(key_z0, jnp.log(params.initial))

    def step(z, key_t):
        z_next = jax.random.categorical(key_t, log_a[z])
        return z_next, z_next

    _, rest = lax.scan(step, z0, jax.random.split(key_z, num_steps - 1))
    states = jnp.concatenate([z0[None], rest]).astype(jnp.int32)
    if isinstance(params, CategoricalHMM):
        obs = jax.random.categorical(key_x, jnp.log(params.emission)[states]).astype(jnp.int32)
    else:
        noise = jax.random.normal(key_x, (num_steps, params.means.shape[1]), params.means.dtype)
        obs = params.means[states] + jnp.sqrt(params.variances[states]) * noise
    del k
    return Sample(states, obs)


def sample(key: jax.Array, params: HMM, num_steps: int) -> Sample:
    """Draw z_0 ~ π, z_{t+1} ~ A[z_t], x_t ~ p(x | z_t) for t < num_steps."""
    if int(num_steps) < 1:
        raise ValueError(f"num_steps must be >= 1, got {num_steps}")
    return _sample(key, validate(params), int(num_steps))


def stationary_distribution(transition) -> np.ndarray:
    """π with π A = π and Σ π = 1 for a row-stochastic A (the left eigenvector for 1).

    Solved as the least-squares system [Aᵀ - I; 1ᵀ] π = [0; 1] in NumPy (float64).
    """
    a = np.asarray(transition, dtype=np.float64)
    _check_distribution("transition", a, (a.shape[0], a.shape[0]),
                        "row-stochastic A[i, j] = P(z_{t+1} = j | z_t = i)")
    k = a.shape[0]
    lhs = np.vstack([a.T - np.eye(k), np.ones((1, k))])
    rhs = np.concatenate([np.zeros(k), [1.0]])
    return np.linalg.lstsq(lhs, rhs, rcond=None)[0]


# --------------------------------------------------------------------------- Baum-Welch


def _m_step(params: HMM, obs, lengths, post: Posterior) -> HMM:
    valid = (jnp.arange(obs.shape[1]) < lengths[:, None]).astype(post.smoothed.dtype)   # (N, T)
    gamma = post.smoothed * valid[..., None]                                            # (N, T, K)
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
def em_step(params: HMM, obs: jax.Array, lengths: jax.Array, min_variance=1e-6):
    """One Baum-Welch iteration on a padded batch: returns (new params, Σ_n log p(x_n | old)).

    E-step: forward-backward per sequence (vmapped). M-step: π = mean γ_0; A ∝ expected
    transition counts; B ∝ Σ_t γ_t(k) 1[x_t = m] (categorical) or weighted means and
    variances (Gaussian, variances floored at ``min_variance``). A state with no
    responsibility keeps its old row.
    """
    post = jax.vmap(_posterior_one, in_axes=(None, 0, 0))(params, obs, lengths)
    new = _m_step(params, obs, lengths, post)
    if isinstance(new, GaussianHMM):
        new = new._replace(variances=jnp.maximum(new.variances, min_variance))
    return new, jnp.sum(post.log_likelihood)


def baum_welch(params: HMM, obs, lengths=None, *, num_iters: int = 50, tol: float | None = None,
               min_variance: float = 1e-6, progress: bool = False) -> EMResult:
    """Fit by expectation-maximisation from ``params`` (the initial guess).

    obs: a padded batch (N, T) / (N, T, D), or one sequence (T,) / (T, D); ``lengths`` (N,)
    gives each sequence's true length (the shape, and hence the compiled code, never
    depends on it). Stops early when the log-likelihood improves by less than ``tol``.
    The log-likelihood never decreases (EM's guarantee, up to rounding).
    """
    params, obs, lengths, batched = _prepare(params, obs, lengths)
    if not batched:
        obs, lengths = obs[None], lengths[None]
    if int(num_iters) < 1:
        raise ValueError(f"num_iters must be >= 1, got {num_iters}")
    history = []
    iters = range(int(num_iters))
    if progress:
        from tqdm.auto import tqdm
        iters = tqdm(iters, desc="Baum-Welch", leave=False)
    for _ in iters:
        new, total = em_step(params, obs, lengths, min_variance)
        history.append(float(total))
        params = new
        if tol is not None and len(history) > 1 and history[-1] - history[-2] < tol:
            break
    return EMResult(params, np.asarray(history))
