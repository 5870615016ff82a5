"""Notebook 03's exercise checkers accept the right answers and reject the obvious wrong ones.

The checkers are loaded from the notebook without executing it (tests/exercises.py). The
right answers below are written independently of the notebook's solutions: the table of
path scores by a recursion over days, the log-space backward pass with NumPy's
``logaddexp``.
"""
from __future__ import annotations

import numpy as np
import pytest

from exercises import checkers

ck = checkers("03")

MODELS = [
    (np.array([0.6, 0.3, 0.1]),                                        # Sunny, Cloudy, Rainy
     np.array([[0.7, 0.2, 0.1], [0.3, 0.5, 0.2], [0.2, 0.3, 0.5]]),
     np.array([[0.9, 0.1], [0.7, 0.3], [0.2, 0.8]])),
    (np.array([0.6, 0.4]),                                             # Sunny, Rainy
     np.array([[0.7, 0.3], [0.4, 0.6]]),
     np.array([[0.9, 0.1], [0.2, 0.8]])),
]

# --------------------------------------------------------------------------- exercise 1


def table_by_days(pi, A, B, x):
    """Scores of all paths, grown one day at a time: table[..., i] + log A[i, j] + log B[j, x_t]."""
    table = np.log(pi) + np.log(B[:, x[0]])
    for x_t in x[1:]:
        table = table[..., None] + np.log(A) + np.log(B[:, x_t])
    return table


def _one_path_scores(pi, A, B, x, forget_pi=False, forget_first_emission=False,
                     transposed=False, emission_lag=False):
    """A loop over paths with one of the usual slips switched on."""
    import itertools
    K, T = len(pi), len(x)
    A_used = A.T if transposed else A
    table = np.empty((K,) * T)
    for z in itertools.product(range(K), repeat=T):
        s = 0.0 if forget_pi else np.log(pi[z[0]])
        s += 0.0 if forget_first_emission else np.log(B[z[0], x[0]])
        for t in range(1, T):
            s += np.log(A_used[z[t - 1], z[t]]) + np.log(B[z[t], x[t - 1] if emission_lag else x[t]])
        table[z] = s
    return table


WEEK_TABLE = table_by_days(*MODELS[0], np.array([1, 1, 0, 0, 0, 1, 1]))

WRONG_TABLES = {
    "zeros": lambda pi, A, B, x: np.zeros((len(pi),) * len(x)),
    "flat vector of K**T scores": lambda pi, A, B, x: table_by_days(pi, A, B, x).reshape(-1),
    "probabilities, not logs": lambda pi, A, B, x: np.exp(table_by_days(pi, A, B, x)),
    "forgets pi": lambda pi, A, B, x: _one_path_scores(pi, A, B, x, forget_pi=True),
    "forgets the first day's emission": lambda pi, A, B, x: _one_path_scores(pi, A, B, x, forget_first_emission=True),
    "A transposed (column-stochastic reading)": lambda pi, A, B, x: _one_path_scores(pi, A, B, x, transposed=True),
    "emission one day late (off by one)": lambda pi, A, B, x: _one_path_scores(pi, A, B, x, emission_lag=True),
    "days in reverse axis order": lambda pi, A, B, x: np.transpose(table_by_days(pi, A, B, x)),
    "typed-in table of the syllabus week": lambda pi, A, B, x: WEEK_TABLE,
    "only the best path (Viterbi's answer)": lambda pi, A, B, x: np.array(
        np.unravel_index(np.argmax(table_by_days(pi, A, B, x)), (len(pi),) * len(x))),
}


def test_path_log_joints_right_answer_passes():
    ck.check_path_log_joints(table_by_days, MODELS)


@pytest.mark.parametrize("wrong", list(WRONG_TABLES), ids=list(WRONG_TABLES))
def test_path_log_joints_wrong_answers_fail(wrong):
    with pytest.raises(AssertionError):
        ck.check_path_log_joints(WRONG_TABLES[wrong], MODELS)


# --------------------------------------------------------------------------- exercise 2


def log_backward_by_logaddexp(A, B, x):
    T, K = len(x), A.shape[0]
    out = np.zeros((T, K))
    for t in range(T - 2, -1, -1):
        out[t] = np.logaddexp.reduce(np.log(A) + (np.log(B[:, x[t + 1]]) + out[t + 1])[None, :], axis=1)
    return out


def _probability_space(A, B, x):
    """Unscaled beta' in probabilities, logged at the end: underflows on long sequences."""
    T, K = len(x), A.shape[0]
    beta = np.ones((T, K))
    for t in range(T - 2, -1, -1):
        beta[t] = A @ (B[:, x[t + 1]] * beta[t + 1])
    with np.errstate(divide="ignore"):
        return np.log(beta)


def _normalised_each_day(A, B, x):
    """What hmm.backward_messages returns (each beta_t rescaled to sum 1), logged."""
    lb = log_backward_by_logaddexp(A, B, x)
    return lb - np.logaddexp.reduce(lb, axis=1, keepdims=True)


def _library_call(A, B, x):
    import jax.numpy as jnp
    from course_lib import hmm
    log_lik = jnp.log(jnp.asarray(B)).T[jnp.asarray(x)]
    return np.log(np.asarray(hmm.backward_messages(jnp.asarray(A), log_lik)))


def _emission_same_day(A, B, x):
    T, K = len(x), A.shape[0]
    out = np.zeros((T, K))
    for t in range(T - 2, -1, -1):
        out[t] = np.logaddexp.reduce(np.log(A) + (np.log(B[:, x[t]]) + out[t + 1])[None, :], axis=1)
    return out


def _transposed(A, B, x):
    return log_backward_by_logaddexp(A.T, B, x)


def _max_instead_of_sum(A, B, x):
    T, K = len(x), A.shape[0]
    out = np.zeros((T, K))
    for t in range(T - 2, -1, -1):
        out[t] = np.max(np.log(A) + (np.log(B[:, x[t + 1]]) + out[t + 1])[None, :], axis=1)
    return out


WRONG_BACKWARD = {
    "zeros": lambda A, B, x: np.zeros((len(x), A.shape[0])),
    "probability space (underflows)": _probability_space,
    "each day normalised to sum 1": _normalised_each_day,
    "the library call hmm.backward_messages": _library_call,
    "emission of the same day (off by one)": _emission_same_day,
    "A transposed": _transposed,
    "max instead of sum (Viterbi's backward)": _max_instead_of_sum,
    "shape (K, T)": lambda A, B, x: log_backward_by_logaddexp(A, B, x).T,
    "one day short": lambda A, B, x: log_backward_by_logaddexp(A, B, x)[:-1],
}


def test_log_backward_right_answer_passes():
    ck.check_log_backward(log_backward_by_logaddexp, MODELS)


@pytest.mark.parametrize("wrong", list(WRONG_BACKWARD), ids=list(WRONG_BACKWARD))
def test_log_backward_wrong_answers_fail(wrong):
    with pytest.raises(AssertionError):
        ck.check_log_backward(WRONG_BACKWARD[wrong], MODELS)
