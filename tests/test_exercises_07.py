"""Notebook 07's exercise checkers pass the right answers and reject the obvious wrong ones."""
from __future__ import annotations

import jax
import numpy as np
import pytest

from course_lib import gan
from exercises import checkers

ck = checkers("07")


# ------------------------------------------------------------------ exercise 1: JS from the game
def js_right(p, q):
    p, q = np.asarray(p, np.float64), np.asarray(q, np.float64)
    total = p + q
    d = np.divide(p, total, out=np.full_like(p, 0.5), where=total > 0)
    v = np.sum(p[p > 0] * np.log(d[p > 0])) + np.sum(q[q > 0] * np.log(1 - d[q > 0]))
    return (v + np.log(4)) / 2


JS_EXAMPLE = js_right([0.5, 0.5, 0.0], [0.0, 0.5, 0.5])



def _value_js(p, q, d_of, log4=np.log(4), half=True):
    p, q = np.asarray(p, np.float64), np.asarray(q, np.float64)
    t = np.where(p + q > 0, p + q, 1.0)
    d = np.clip(d_of(p, q, t), 1e-300, 1 - 1e-16)
    v = np.sum(np.where(p > 0, p * np.log(d), 0)) + np.sum(np.where(q > 0, q * np.log1p(-d), 0))
    return (v + log4) / 2 if half else v + log4


def test_js_right_answer_passes():
    assert abs(JS_EXAMPLE - 0.5 * np.log(2)) < 1e-12          # half the mass is disjoint
    ck.check_js_from_game(js_right, JS_EXAMPLE)


@pytest.mark.parametrize("wrong", [
    lambda p, q: 0.0,                                              # trivial
    lambda p, q: 0.3466,                                           # typed-in number
    lambda p, q: _value_js(p, q, lambda p, q, t: q / t),           # D* with the roles swapped
    lambda p, q: _value_js(p, q, lambda p, q, t: p / t, half=False),   # forgot to halve
    lambda p, q: _value_js(p, q, lambda p, q, t: p / t, log4=np.log(2)),   # + log 2, not log 4
    lambda p, q: _value_js(p, q, lambda p, q, t: np.full_like(p, 0.5)),   # D = 1/2 everywhere
    lambda p, q: js_right(p, q) / np.log(2),                       # in bits, not nats
], ids=["trivial", "typed-in", "swapped", "no-half", "log2", "half-D", "bits"])
def test_js_wrong_function_fails(wrong):
    with pytest.raises(AssertionError):
        ck.check_js_from_game(wrong, JS_EXAMPLE)


@pytest.mark.parametrize("js_example", [0.0, np.log(2), 2 * JS_EXAMPLE, JS_EXAMPLE / np.log(2)])
def test_js_wrong_example_fails(js_example):
    with pytest.raises(AssertionError):
        ck.check_js_from_game(js_right, js_example)


# ------------------------------------------------------------------ exercise 2: mode coverage
def coverage_right(x, centres, std, min_count, *, radius=3.0, nearest_only=True, strict=False,
                   use_min=True):
    x, centres = np.asarray(x, np.float64), np.asarray(centres, np.float64)
    dist = np.linalg.norm(x[:, None, :] - centres[None, :, :], axis=-1)
    nearest, closest = dist.argmin(axis=1), dist.min(axis=1)
    good = closest <= radius * std
    counts = np.bincount(nearest if not nearest_only else nearest[good], minlength=len(centres))
    covered = counts > min_count if strict else counts >= (min_count if use_min else 1)
    return int(covered.sum()), float(good.mean())


def shifted(fn=coverage_right, **kw):
    mixture = gan.ring_mixture(jax.random.key(5), 2000, std=0.1)
    return fn(np.asarray(mixture.x) + np.array([0.25, 0.0]), mixture.centres, 0.1, 25, **kw)


SHIFTED = shifted()


def test_coverage_right_answer_passes():
    assert SHIFTED[0] == 8 and 0.5 < SHIFTED[1] < 0.7        # a 2.5-std shift: many samples beyond 3 std
    ck.check_coverage_by_hand(coverage_right, SHIFTED)
    ck.check_coverage_by_hand(lambda *a: gan.mode_coverage(*a[:3], min_count=a[3])[:2], SHIFTED)


@pytest.mark.parametrize("wrong", [
    lambda x, c, s, m: (len(c), 1.0),                               # trivial: everything covered
    lambda x, c, s, m: (8, 0.603),                                  # typed-in
    lambda x, c, s, m: coverage_right(x, c, s, m, radius=2.0),      # 2 std, not 3
    lambda x, c, s, m: coverage_right(x, c, s, m, nearest_only=False),   # counts bad samples too
    lambda x, c, s, m: coverage_right(x, c, s, m, strict=True),     # > min_count, not >=
    lambda x, c, s, m: coverage_right(x, c, s, m, use_min=False),   # one sample covers a mode
], ids=["trivial", "typed-in", "2-std", "all-samples", "strict", "no-min-count"])
def test_coverage_wrong_function_fails(wrong):
    with pytest.raises(AssertionError):
        ck.check_coverage_by_hand(wrong, SHIFTED)


@pytest.mark.parametrize("answer", [(7, SHIFTED[1]), (8, 1.0), (8, 0.92), shifted(radius=2.0)])
def test_coverage_wrong_example_fails(answer):
    with pytest.raises(AssertionError):
        ck.check_coverage_by_hand(coverage_right, answer)
