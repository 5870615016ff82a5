"""Argument checks shared by every ``course_lib`` module (private: not part of the course's API).

Each check names the argument it rejects, says what was expected and what it got, and returns
the value in the form the kernels use. Value checks (finite, in range, summing to one, positive
definite) run on the host when the array is concrete; under ``jax.jit`` only shapes and dtypes
can be checked, so the public functions call these before they trace anything.

Conventions (the same in every module):

- a count (``n``, ``length``, ``steps``, ``max_iter``, ``n_components``...) is a Python or NumPy
  integer; ``True`` and ``2.7`` are refused, not read as 1 and 2;
- real data arrive as real numbers: strings, objects, complex numbers and booleans are refused
  with the argument's name instead of JAX's "Error interpreting argument";
- integer ids (symbols, labels, tokens) must lie in ``[0, size)``; nothing is wrapped or clipped.
"""
from __future__ import annotations

import numbers

import jax
import jax.numpy as jnp
import numpy as np


def is_concrete(*arrays) -> bool:
    """True when no argument is a tracer, so its values can be read on the host."""
    return not any(isinstance(a, jax.core.Tracer) for a in arrays)


def count(value, name: str, *, minimum: int = 1, maximum: int | None = None) -> int:
    """An integer count in ``[minimum, maximum]``; bools and non-integral numbers are refused."""
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, numbers.Integral):
        raise ValueError(f"{name} must be an integer, got {value!r} ({type(value).__name__})")
    value = int(value)
    if value < minimum or (maximum is not None and value > maximum):
        upper = "" if maximum is None else f" and <= {maximum}"
        raise ValueError(f"{name} must be an integer >= {minimum}{upper}, got {value}")
    return value


def real(value, name: str, *, low: float | None = None, high: float | None = None,
         low_open: bool = False, high_open: bool = False) -> float:
    """A finite real scalar in the interval given (open or closed at each end)."""
    if isinstance(value, (bool, np.bool_, str, bytes)):
        raise ValueError(f"{name} must be a real number, got {value!r}")
    try:
        out = float(value)
    except (TypeError, ValueError):
        raise ValueError(f"{name} must be a real number, got {value!r}") from None
    if not np.isfinite(out):
        raise ValueError(f"{name} must be finite, got {value!r}")
    if low is not None and (out < low or (low_open and out == low)):
        raise ValueError(f"{name} must be {'>' if low_open else '>='} {low}, got {value!r}")
    if high is not None and (out > high or (high_open and out == high)):
        raise ValueError(f"{name} must be {'<' if high_open else '<='} {high}, got {value!r}")
    return out


def _numeric_dtype(x, name: str, *, allow_int: bool) -> None:
    dtype = np.asarray(x).dtype if not isinstance(x, jax.Array) else x.dtype
    if dtype == np.bool_ or not (np.issubdtype(dtype, np.floating) or
                                 (allow_int and np.issubdtype(dtype, np.integer))):
        raise ValueError(f"{name} must hold real numbers, got dtype {dtype}")


def real_array(x, name: str, *, ndim: int | tuple[int, ...] | None = None,
               finite: bool = True, dtype=None) -> jax.Array:
    """``x`` as a floating-point JAX array, checked: real dtype, dimension, finite values.

    Integers are accepted and converted to ``dtype`` (default: JAX's default float).
    """
    if not isinstance(x, jax.Array):
        try:
            x = np.asarray(x)
        except (TypeError, ValueError) as err:       # ragged lists and the like
            raise ValueError(f"{name} must be an array of real numbers: {err}") from None
    _numeric_dtype(x, name, allow_int=True)
    dims = (ndim,) if isinstance(ndim, int) else ndim
    if dims is not None and x.ndim not in dims:
        want = " or ".join(f"{d}-D" for d in dims)
        raise ValueError(f"{name} must be {want}, got shape {tuple(x.shape)}")
    target = dtype or (x.dtype if np.issubdtype(x.dtype, np.floating) else jnp.result_type(float))
    out = jnp.asarray(x, dtype=jax.dtypes.canonicalize_dtype(target))   # float64 only under x64
    # checked with NumPy on the host: a concrete constant captured inside jit stays concrete,
    # but jnp.isfinite of it would be a tracer
    if finite and is_concrete(out) and not np.all(np.isfinite(np.asarray(out))):
        raise ValueError(f"{name} contains NaN or infinite values")
    return out


def key(value, name: str = "key") -> jax.Array:
    """A JAX PRNG key: a typed key (``jax.random.key(seed)``) or a legacy raw ``uint32[2]``
    (``jax.random.PRNGKey(seed)``), returned unchanged (both draw the same numbers)."""
    if isinstance(value, jax.Array) and jnp.issubdtype(value.dtype, jax.dtypes.prng_key):
        if value.shape != ():
            raise ValueError(f"{name} must be one PRNG key, got a batch of shape {value.shape}")
        return value
    if (isinstance(value, (jax.Array, np.ndarray)) and value.shape == (2,)
            and value.dtype == np.uint32):
        return value
    raise ValueError(f"{name} must be a PRNG key from jax.random.key(seed), got {value!r:.80}")


def ids(x, name: str, size: int, *, ndim: int | tuple[int, ...] | None = None,
        what: str = "ids") -> jax.Array:
    """Integer ids (symbols, labels, tokens) as a JAX integer array, each in ``[0, size)``."""
    if not isinstance(x, jax.Array):
        try:
            x = np.asarray(x)
        except (TypeError, ValueError) as err:
            raise ValueError(f"{name} must be an array of integer {what}: {err}") from None
    if x.dtype == np.bool_ or not np.issubdtype(x.dtype, np.integer):
        raise ValueError(f"{name} must hold integer {what}, got dtype {x.dtype}")
    dims = (ndim,) if isinstance(ndim, int) else ndim
    if dims is not None and x.ndim not in dims:
        want = " or ".join(f"{d}-D" for d in dims)
        raise ValueError(f"{name} must be {want}, got shape {tuple(x.shape)}")
    if is_concrete(x) and x.size:
        lo, hi = int(np.min(np.asarray(x))), int(np.max(np.asarray(x)))
        if lo < 0 or hi >= size:
            bad = lo if lo < 0 else hi
            raise ValueError(f"{name} must lie in [0, {size}) ({size} {what}), got {bad}")
    return jnp.asarray(x)


def probabilities(p, name: str, *, axis: int = -1, atol: float | None = None) -> jax.Array:
    """Non-negative, finite entries that sum to one along ``axis`` (checked when concrete)."""
    p = real_array(p, name)
    if is_concrete(p):
        v = np.asarray(p, np.float64)
        if np.any(v < 0):
            raise ValueError(f"{name} must be non-negative (probabilities), got {v.min():.6g}")
        tol = atol if atol is not None else (1e-6 if p.dtype == jnp.float64 else 1e-4)
        sums = v.sum(axis=axis)
        worst = float(np.max(np.abs(sums - 1.0))) if sums.size else 0.0
        if worst > tol:
            raise ValueError(f"{name} must sum to 1 along axis {axis}; a sum is off by {worst:.3g}")
    return p


def positive_definite(cov, name: str) -> jax.Array:
    """Symmetric positive definite matrices ``(..., D, D)`` (checked when concrete)."""
    cov = real_array(cov, name)
    if cov.ndim < 2 or cov.shape[-1] != cov.shape[-2]:
        raise ValueError(f"{name} must be square (..., D, D), got shape {tuple(cov.shape)}")
    if is_concrete(cov):
        c = np.asarray(cov, np.float64)
        scale = max(float(np.abs(c).max()), 1e-300)
        if not np.allclose(c, np.swapaxes(c, -1, -2), rtol=1e-5, atol=1e-7 * scale):
            raise ValueError(f"{name} must be symmetric")
        smallest = float(np.linalg.eigvalsh(c).min())
        if smallest <= 0:
            raise ValueError(
                f"{name} must be positive definite; its smallest eigenvalue is {smallest:.3g}")
    return cov


def class_labels(labels, n_classes: int | None, batch: int, model_name: str):
    """The labels a (possibly) class-conditional model needs: ``None`` for an unconditional one
    (``n_classes`` None or 0), else ``batch`` integer labels in ``[0, n_classes)``."""
    if not n_classes:
        if labels is not None:
            raise ValueError(f"labels given but {model_name} is unconditional (it takes none)")
        return None
    if labels is None:
        raise ValueError(f"labels are required: {model_name} is class-conditional "
                         f"({n_classes} classes)")
    labels = ids(labels, "labels", n_classes, ndim=1, what="classes")
    if labels.shape[0] != batch:
        raise ValueError(f"labels must hold one label per example ({batch}), got {labels.shape[0]}")
    return labels
