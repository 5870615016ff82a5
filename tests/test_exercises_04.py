"""Notebook 04's exercise checkers: each passes the right answer and fails the obvious wrong ones.

The checkers are loaded from the notebook without executing it (``tests/exercises.py``); the
right answers are computed here, independently of the notebook's solution cells.
"""
from __future__ import annotations

import jax
import numpy as np
import pytest

from course_lib import data, ngram
from exercises import checkers

ck = checkers("04")
TEMPERATURES = (0.3, 1.0, 2.0)


# ----------------------------------------------------------------- Exercise 1: AR(2) facts

def ar2_right(phi1, phi2):
    """Roots from the quadratic formula, stationarity from them, ρ1 from the Yule-Walker equations."""
    a, b, c = -phi2, -phi1, 1.0                              # a z² + b z + c
    disc = np.lib.scimath.sqrt(b * b - 4 * a * c)
    roots = np.array([(-b + disc) / (2 * a), (-b - disc) / (2 * a)], dtype=complex)
    # Yule-Walker for lags 1 and 2, unknowns (ρ1, ρ2): ρ1 = φ1 + φ2 ρ1 and ρ2 = φ1 ρ1 + φ2
    rho1 = np.linalg.solve([[1.0 - phi2, 0.0], [-phi1, 1.0]], [phi1, phi2])[0]
    return roots, bool(np.all(np.abs(roots) > 1)), rho1


def _simulated_rho1(phi1, phi2):
    shocks, y = np.random.default_rng(0).normal(size=20_000), [0.0, 0.0]
    for eps in shocks:
        y.append(phi1 * y[-1] + phi2 * y[-2] + eps)
    y = np.array(y[2:]) - np.mean(y[2:])
    return float(y[1:] @ y[:-1] / (y @ y))


AR2_WRONG = {
    # np.roots with the lowest power first: the reciprocals of the roots
    "reversed coefficients": lambda p1, p2: (np.roots([1.0, -p1, -p2]), *ar2_right(p1, p2)[1:]),
    "stationary when inside": lambda p1, p2: (ar2_right(p1, p2)[0],
                                              bool(np.all(np.abs(ar2_right(p1, p2)[0]) < 1)),
                                              ar2_right(p1, p2)[2]),
    "one root only": lambda p1, p2: (ar2_right(p1, p2)[0][:1], *ar2_right(p1, p2)[1:]),
    "rho1 = phi1": lambda p1, p2: (*ar2_right(p1, p2)[:2], p1),
    "rho1 sign slip": lambda p1, p2: (*ar2_right(p1, p2)[:2], p1 / (1 + p2)),
    "rho1 from a simulation": lambda p1, p2: (*ar2_right(p1, p2)[:2], _simulated_rho1(p1, p2)),
    "typed-in answer for (1.2, -0.5)": lambda p1, p2: ar2_right(1.2, -0.5),
    "trivial": lambda p1, p2: (np.array([]), True, 0.0),
}


def test_ar2_facts_right_answer_passes():
    ck.check_ar2_facts(ar2_right)


@pytest.mark.parametrize("wrong", AR2_WRONG.values(), ids=AR2_WRONG.keys())
def test_ar2_facts_wrong_answers_fail(wrong):
    with pytest.raises(AssertionError):
        ck.check_ar2_facts(wrong)


# ----------------------------------------------------------------- Exercise 2: chain rule

@pytest.fixture(scope="module")
def names_models():
    """The names vocabulary and the Laplace bigram of the training names (Exercise 3 samples
    from it too: any n-gram will do for testing the checker, and a bigram compiles fastest)."""
    names = data.load_names()
    vocab = data.CharVocab.from_text(names + [ngram.BOUNDARY])
    train = [names[i] for i in np.random.default_rng(0).permutation(len(names))][2 * (len(names) // 10):]
    laplace = ngram.fit_ngram(ngram.name_windows(train, vocab, 2), vocab.size, k=1.0)
    return vocab, laplace


def terms_right(log_probs, chars, name):
    ids = [chars.index(c) for c in ngram.BOUNDARY + name + ngram.BOUNDARY]
    table = np.asarray(log_probs)
    return list(table[ids[:-1], ids[1:]])


def _anna_on(names_models):
    vocab, laplace = names_models
    return terms_right(laplace.log_probs, vocab.chars, "anna")


TERMS_WRONG = {
    "four terms, no end symbol": lambda t, c, n: terms_right(t, c, n)[:-1],
    "trigram padding, six terms": lambda t, c, n: [float(np.log(1 / len(c)))] + terms_right(t, c, n),
    "the total instead of the list": lambda t, c, n: float(np.sum(terms_right(t, c, n))),
    "the total in a one-element list": lambda t, c, n: [float(np.sum(terms_right(t, c, n)))],
    "row and column swapped": lambda t, c, n: terms_right(np.asarray(t).T, c, n),
    "probabilities, not logs": lambda t, c, n: list(np.exp(terms_right(t, c, n))),
}


def test_chain_rule_right_answer_passes(names_models):
    vocab, laplace = names_models
    ck.check_chain_rule(terms_right, laplace.log_probs, vocab.chars)


@pytest.mark.parametrize("wrong", TERMS_WRONG.values(), ids=TERMS_WRONG.keys())
def test_chain_rule_wrong_answers_fail(wrong, names_models):
    vocab, laplace = names_models
    with pytest.raises(AssertionError):
        ck.check_chain_rule(wrong, laplace.log_probs, vocab.chars)


def test_chain_rule_typed_in_numbers_fail(names_models):
    vocab, laplace = names_models
    anna = _anna_on(names_models)            # right for "anna" on this table, and nothing else
    with pytest.raises(AssertionError):
        ck.check_chain_rule(lambda t, c, n: anna, laplace.log_probs, vocab.chars)


def test_more_probable(names_models):
    vocab, laplace = names_models
    ck.check_more_probable("anna", laplace.log_probs, vocab.chars)
    for wrong in ("zzyx", "", None):
        with pytest.raises(AssertionError):
            ck.check_more_probable(wrong, laplace.log_probs, vocab.chars)


# ----------------------------------------------------------------- Exercise 3: diversity

def _fractions(model, vocab, *, key=7, n=2_000, cut=True):
    """Distinct fraction among the first n of 2,000 samples of length 16 (one compiled shape)."""
    out = {}
    for tau in TEMPERATURES:
        ids = ngram.sample_ngram(jax.random.key(key), model, 2_000, 16, temperature=tau)[:n]
        names = ngram.decode_names(ids, vocab) if cut else [tuple(row) for row in np.asarray(ids)]
        out[tau] = len(set(names)) / len(names)
    return out


def test_diversity_right_answer_passes(names_models):
    vocab, model = names_models
    ck.check_diversity(_fractions(model, vocab), model, vocab.chars)


DIVERSITY_WRONG = {
    "reversed": lambda right, m, v: dict(zip(TEMPERATURES, reversed(list(right.values())))),
    "all distinct": lambda right, m, v: {tau: 1.0 for tau in TEMPERATURES},
    "fraction of duplicates": lambda right, m, v: {tau: 1 - f for tau, f in right.items()},
    "counts, not fractions": lambda right, m, v: {tau: f * 2_000 for tau, f in right.items()},
    "a temperature missing": lambda right, m, v: {tau: right[tau] for tau in TEMPERATURES[1:]},
    "200 samples": lambda right, m, v: _fractions(m, v, n=200),
    "another key": lambda right, m, v: _fractions(m, v, key=0),
    "rows not cut at the end symbol": lambda right, m, v: _fractions(m, v, cut=False),
}


@pytest.mark.parametrize("wrong", DIVERSITY_WRONG.values(), ids=DIVERSITY_WRONG.keys())
def test_diversity_wrong_answers_fail(wrong, names_models):
    vocab, model = names_models
    answer = wrong(_fractions(model, vocab), model, vocab)
    with pytest.raises(AssertionError):
        ck.check_diversity(answer, model, vocab.chars)
