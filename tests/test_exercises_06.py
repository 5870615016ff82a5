"""Notebook 06's exercise checkers: the right answers pass, the obvious wrong ones fail.

The checkers are loaded from the notebook without executing it (tests/exercises.py).
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from exercises import checkers

ck = checkers("06")

GATES = {"rnn": 1, "lstm": 4, "gru": 3}


# ----------------------------------------------------------------- 1. charlm_params
def params_right(V, E, H, cell):
    embedding, output = V * E, H * V + V
    cell_params = GATES[cell] * (E * H + H * H + H)
    return embedding + cell_params + output


def params_library(V, E, H, cell):
    """Counts a built model: the call the exercise asks the learner to replace."""
    from flax import nnx

    from course_lib import nets
    return nets.count_params(nets.CharLM(V, E, H, cell=cell, rngs=nnx.Rngs(0)))


WRONG_PARAMS = {
    "lstm counted with 3 gates": lambda V, E, H, c: params_right(V, E, H, "gru" if c == "lstm" else c),
    "gru counted with 4 gates": lambda V, E, H, c: params_right(V, E, H, "lstm" if c == "gru" else c),
    "one gate for every cell": lambda V, E, H, c: params_right(V, E, H, "rnn"),
    "no cell biases": lambda V, E, H, c: params_right(V, E, H, c) - GATES[c] * H,
    "two biases a gate (PyTorch's layout)": lambda V, E, H, c: params_right(V, E, H, c) + GATES[c] * H,
    "no output bias": lambda V, E, H, c: params_right(V, E, H, c) - V,
    "no output layer": lambda V, E, H, c: params_right(V, E, H, c) - H * V - V,
    "no embedding": lambda V, E, H, c: params_right(V, E, H, c) - V * E,
    "off by one": lambda V, E, H, c: params_right(V, E, H, c) + 1,
    "typed-in count of the notebook's LSTM": lambda V, E, H, c: 95_956,
    "the library call (a model is built)": params_library,
}


def test_charlm_params_right_answer_passes():
    ck.check_charlm_params(params_right)


@pytest.mark.parametrize("wrong", WRONG_PARAMS.values(), ids=WRONG_PARAMS.keys())
def test_charlm_params_wrong_answers_fail(wrong):
    with pytest.raises(AssertionError):
        ck.check_charlm_params(wrong)


# ----------------------------------------------------------------- 2. clip_by_hand
def global_norm(tree):
    return np.sqrt(sum(np.sum(np.asarray(x, np.float64) ** 2) for x in jax.tree.leaves(tree)))


def clip_right(grads, c):
    scale = min(1.0, c / global_norm(grads))
    return jax.tree.map(lambda g: g * scale, grads), scale


def clip_identity(grads, c):
    return grads, 1.0


def clip_always_to_c(grads, c):            # scales small gradients up as well
    scale = c / global_norm(grads)
    return jax.tree.map(lambda g: g * scale, grads), scale


def clip_per_leaf(grads, c):               # each leaf clipped to norm c on its own
    clipped = jax.tree.map(lambda g: g * min(1.0, c / max(global_norm(g), 1e-30)), grads)
    return clipped, min(1.0, c / global_norm(grads))


def clip_sum_of_norms(grads, c):           # the norms of the leaves added, not squared
    total = sum(global_norm(g) for g in jax.tree.leaves(grads))
    scale = min(1.0, c / total)
    return jax.tree.map(lambda g: g * scale, grads), scale


def clip_by_value(grads, c):               # optax.clip(c): elementwise, another transformation
    return jax.tree.map(lambda g: jnp.clip(g, -c, c), grads), 1.0


def clip_first_leaf_norm(grads, c):
    scale = min(1.0, c / global_norm(jax.tree.leaves(grads)[0]))
    return jax.tree.map(lambda g: g * scale, grads), scale


def clip_optax_only(grads, c):             # the library call, no factor computed
    return optax.clip_by_global_norm(c).update(grads, optax.EmptyState())[0]


def clip_optax_with_typed_factor(grads, c):
    return optax.clip_by_global_norm(c).update(grads, optax.EmptyState())[0], 1.0


def clip_scale_not_applied(grads, c):      # the right factor, the gradients left as they were
    return grads, min(1.0, c / global_norm(grads))


WRONG_CLIPS = [clip_identity, clip_always_to_c, clip_per_leaf, clip_sum_of_norms, clip_by_value,
               clip_first_leaf_norm, clip_optax_only, clip_optax_with_typed_factor,
               clip_scale_not_applied]


@pytest.fixture(scope="module")
def grads():
    """A gradient-like pytree with leaves of very different norms (like a CharLM's)."""
    rng = np.random.default_rng(1)
    return {"embed": jnp.asarray(0.01 * rng.normal(size=(20, 4)), jnp.float32),
            "cell": {"kernel": jnp.asarray(rng.normal(size=(4, 12)), jnp.float32),
                     "bias": jnp.asarray(0.1 * rng.normal(size=12), jnp.float32)},
            "head": jnp.asarray(3 * rng.normal(size=(3, 20)), jnp.float32)}


def test_clip_by_hand_right_answer_passes(grads):
    ck.check_clip_by_hand(clip_right, grads)


@pytest.mark.parametrize("wrong", WRONG_CLIPS, ids=[f.__name__ for f in WRONG_CLIPS])
def test_clip_by_hand_wrong_answers_fail(wrong, grads):
    with pytest.raises(AssertionError):
        ck.check_clip_by_hand(wrong, grads)
