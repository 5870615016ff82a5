"""Notebook 09's exercise checkers pass the right answers and reject the obvious wrong ones."""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from course_lib import gpt
from exercises import checkers

ck = checkers("09")


# ------------------------------------------------------------------ exercise 1: one step of cached attention
def make_attend_step(*, mask="causal", scale=True, axis=-1):
    def attend_step(q, K, V, t):
        scores = jnp.einsum("hd,shd->hs", q, K)
        if scale:
            scores = scores / jnp.sqrt(q.shape[-1])
        positions = jnp.arange(K.shape[0])
        if mask == "causal":
            scores = jnp.where(positions <= t, scores, -jnp.inf)
        elif mask == "strict":                        # forgets the new token itself
            scores = jnp.where(positions < t, scores, -jnp.inf)
            scores = jnp.where(t == 0, jnp.zeros_like(scores), scores)
        elif mask == "one-late":                      # lets in one junk row
            scores = jnp.where(positions <= t + 1, scores, -jnp.inf)
        weights = jax.nn.softmax(scores, axis=axis)
        return jnp.einsum("hs,shd->hd", weights, V)
    return attend_step


def test_attend_step_right_answer_passes():
    ck.check_attend_step(make_attend_step())


@pytest.mark.parametrize("wrong", [
    make_attend_step(mask="none"),                    # attends to the junk after t
    make_attend_step(mask="strict"),                  # off by one: excludes position t
    make_attend_step(mask="one-late"),                # off by one: includes position t + 1
    make_attend_step(scale=False),                    # no 1/sqrt(d)
    make_attend_step(axis=0),                         # softmax over heads
    lambda q, K, V, t: V[t],                          # copies the new value
    lambda q, K, V, t: jnp.mean(V[: t + 1], axis=0),  # equal attention to the past
    lambda q, K, V, t: jnp.zeros_like(q),             # trivial
], ids=["no-mask", "strict-mask", "one-late", "no-scale", "wrong-axis", "copy-value", "uniform",
        "zero"])
def test_attend_step_wrong_answers_fail(wrong):
    with pytest.raises(AssertionError):
        ck.check_attend_step(wrong)


# ------------------------------------------------------------------ exercise 2: nucleus filtering
def nucleus_right(probs, p):
    probs = np.asarray(probs, np.float64)
    order = np.argsort(-probs, kind="stable")
    before = np.cumsum(probs[order]) - probs[order]
    keep = np.zeros(probs.shape, bool)
    keep[order[before < p]] = True
    out = np.where(keep, probs, 0.0)
    return out / out.sum()


def test_nucleus_right_answer_passes():
    ck.check_nucleus(nucleus_right)


def _cumsum_at_most_p(probs, p):                      # drops the token that crosses p
    probs = np.asarray(probs, np.float64)
    order = np.argsort(-probs, kind="stable")
    keep = np.zeros(probs.shape, bool)
    keep[order[np.cumsum(probs[order]) <= p]] = True
    keep[order[0]] = True
    out = np.where(keep, probs, 0.0)
    return out / out.sum()


def _not_renormalised(probs, p):
    out = nucleus_right(probs, p)
    return np.where(out > 0, np.asarray(probs, np.float64), 0.0)


def _ascending(probs, p):                             # least likely first
    probs = np.asarray(probs, np.float64)
    order = np.argsort(probs, kind="stable")
    before = np.cumsum(probs[order]) - probs[order]
    keep = np.zeros(probs.shape, bool)
    keep[order[before < p]] = True
    out = np.where(keep, probs, 0.0)
    return out / out.sum()


def _ties_by_higher_index(probs, p):
    probs = np.asarray(probs, np.float64)
    order = np.array(sorted(range(len(probs)), key=lambda i: (-probs[i], -i)))
    before = np.cumsum(probs[order]) - probs[order]
    keep = np.zeros(probs.shape, bool)
    keep[order[before < p]] = True
    out = np.where(keep, probs, 0.0)
    return out / out.sum()


def _threshold(probs, p):                             # keeps entries with probability >= 1 - p
    probs = np.asarray(probs, np.float64)
    out = np.where(probs >= 1 - p, probs, 0.0)
    return out / out.sum() if out.sum() else probs


def _library_float32(probs, p):                       # the library call, in float32
    logits = jnp.log(jnp.asarray(probs, jnp.float32))
    return np.asarray(jax.nn.softmax(gpt.filter_logits(logits, top_p=p))).astype(np.float64)


@pytest.mark.parametrize("wrong", [
    _cumsum_at_most_p, _not_renormalised, _ascending, _ties_by_higher_index, _threshold,
    _library_float32,
    lambda probs, p: np.asarray(probs, np.float64),                 # no filtering
    lambda probs, p: np.eye(len(probs))[int(np.argmax(probs))],     # greedy
], ids=["at-most-p", "not-renormalised", "ascending", "ties-reversed", "threshold",
        "library-float32", "unfiltered", "greedy"])
def test_nucleus_wrong_answers_fail(wrong):
    with pytest.raises(AssertionError):
        ck.check_nucleus(wrong)
