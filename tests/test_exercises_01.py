"""Notebook 01's exercise checkers: each passes the right answer and fails the obvious wrong ones.

The checkers are loaded from the notebook without executing it (tests/exercises.py). The right
answers are written here independently of the notebook's solution cells.
"""
import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from course_lib import prob
from exercises import checkers

ck = checkers("01")


# --------------------------------------------------------------------------- Exercise 1: Bayes, twice

TEST = dict(prior=0.01, sensitivity=0.99, false_positive=0.05)


def right_update(prior, sensitivity, false_positive):
    positive_and_d = sensitivity * prior
    return positive_and_d / (positive_and_d + false_positive * (1 - prior))


def two_tests(update):
    return update(update(0.01, 0.99, 0.05), 0.99, 0.05)


def test_bayes_update_right_answer_passes():
    ck.check_bayes_update(right_update, two_tests(right_update), **TEST)


@pytest.mark.parametrize("update, answer", [
    # the likelihood P(+ | D) instead of the posterior
    (lambda p, s, f: s, None),
    # no normalisation by P(+)
    (lambda p, s, f: s * p, None),
    # the evidence without its false positives
    (lambda p, s, f: s * p / (s * p), None),
    # the false-positive rate where the sensitivity belongs
    (lambda p, s, f: f * p / (f * p + s * (1 - p)), None),
    # a typed-in number: right on Section 2's test, wrong on any other
    (lambda p, s, f: 0.16666666666666666, 0.7983870967741935),
    # right function, but only one test applied
    (right_update, right_update(0.01, 0.99, 0.05)),
    # right function, but the second test squares the sensitivity and forgets the false positives
    (right_update, 0.99**2 * 0.01 / (0.99**2 * 0.01 + 0.05 * 0.99)),
    # the right value rounded as printed
    (right_update, 0.7984),
    # the prior
    (right_update, 0.01),
])
def test_bayes_update_wrong_answers_fail(update, answer):
    answer = two_tests(update) if answer is None else answer
    with pytest.raises(AssertionError):
        ck.check_bayes_update(update, answer, **TEST)


# --------------------------------------------------------------------------- Exercise 2: Bernoulli MLE


def coin():
    return jax.random.bernoulli(jax.random.key(1), 0.3, (2_000,)).astype(jnp.float32)


def right_ll(a, x):
    theta = jax.nn.sigmoid(a)
    return jnp.mean(jnp.where(x == 1, jnp.log(theta), jnp.log1p(-theta)))


@functools.lru_cache(maxsize=None)
def compiled_climb(objective, steps, lr):
    """a after `steps` gradient-ascent steps from 0, as one compiled loop (cached: the tests stay fast)."""
    def climb(x):
        return jax.lax.fori_loop(0, steps, lambda _, a: a + lr * jax.grad(objective)(a, x), jnp.float32(0.0))
    return jax.jit(climb)


def right_ascent(objective, x, steps=500, lr=2.0):
    return float(jax.nn.sigmoid(compiled_climb(objective, steps, lr)(x)))


def test_bernoulli_right_answer_passes():
    x = coin()
    theta_hat = right_ascent(right_ll, x)
    assert abs(theta_hat - float(x.mean())) < 1e-4
    ck.check_bernoulli_mle(right_ll, right_ascent, theta_hat, x)


def sample_mean_shortcut(objective, x, **_):
    return float(jnp.mean(x))


def descent(objective, x, steps=500, lr=2.0):
    return right_ascent(objective, x, steps, -lr)


def returns_a(objective, x, steps=500, lr=2.0):
    return float(compiled_climb(objective, steps, lr)(x))


def one_step(objective, x, **_):
    return right_ascent(objective, x, steps=1)


def ignores_x_argument(objective, x, **_):
    return right_ascent(objective, coin())


@pytest.mark.parametrize("ll, ascent, theta_hat", [
    # the sample mean typed in, and a "climber" that returns the sample mean: fails on the log-posterior
    (right_ll, sample_mean_shortcut, "mean"),
    # descent instead of ascent
    (right_ll, descent, "mean"),
    # the logit a instead of theta = sigmoid(a)
    (right_ll, returns_a, "mean"),
    # too few steps
    (right_ll, one_step, "mean"),
    # a climber that always uses the notebook's own flips
    (right_ll, ignores_x_argument, "mean"),
    # the summed, not the mean, log-likelihood
    (lambda a, x: jnp.sum(x * jax.nn.log_sigmoid(a) + (1 - x) * jax.nn.log_sigmoid(-a)), right_ascent, "mean"),
    # the log terms swapped (the likelihood of theta for the zeros)
    (lambda a, x: jnp.mean(x * jax.nn.log_sigmoid(-a) + (1 - x) * jax.nn.log_sigmoid(a)), right_ascent, "mean"),
    # the likelihood, not its logarithm
    (lambda a, x: jnp.mean(jnp.where(x == 1, jax.nn.sigmoid(a), jax.nn.sigmoid(-a))), right_ascent, "mean"),
    # right functions, but theta_hat typed in: the true theta of the simulation, a fair coin, 0
    (right_ll, right_ascent, 0.3),
    (right_ll, right_ascent, 0.5),
    (right_ll, right_ascent, 0.0),
])
def test_bernoulli_wrong_answers_fail(ll, ascent, theta_hat):
    x = coin()
    theta_hat = float(x.mean()) if theta_hat == "mean" else theta_hat
    with pytest.raises(AssertionError):
        ck.check_bernoulli_mle(ll, ascent, theta_hat, x)


# --------------------------------------------------------------------------- Exercise 3: KL in 1-D


def right_kl_1d(mu0, s0, mu1, s1):
    var0, var1 = np.square(s0), np.square(s1)
    return 0.5 * (np.log(var1 / var0) + (var0 + np.square(mu1 - mu0)) / var1 - 1.0)


def test_kl_1d_right_answer_passes():
    ck.check_kl_1d(right_kl_1d)


def library_wrapper(mu0, s0, mu1, s1):
    return float(prob.kl_gaussians(jnp.array([mu0]), jnp.array([[s0**2]]), jnp.array([mu1]), jnp.array([[s1**2]])))


def library_vectorised(mu0, s0, mu1, s1):
    return np.vectorize(library_wrapper)(mu0, s0, mu1, s1)


def scalar_only(mu0, s0, mu1, s1):
    import math
    return math.log(s1 / s0) + (s0**2 + (mu0 - mu1) ** 2) / (2 * s1**2) - 0.5


@pytest.mark.parametrize("kl_1d", [
    lambda mu0, s0, mu1, s1: right_kl_1d(mu1, s1, mu0, s0),                                   # the reverse KL
    lambda mu0, s0, mu1, s1: np.log(s1 / s0) + (s0 + (mu0 - mu1) ** 2) / (2 * s1) - 0.5,       # variances for stds
    lambda mu0, s0, mu1, s1: np.log(s1 / s0) + (s0**2 + (mu0 - mu1) ** 2) / (2 * s1**2),       # no -1/2
    lambda mu0, s0, mu1, s1: np.log(s1**2 / s0**2) + (s0**2 + (mu0 - mu1) ** 2) / (2 * s1**2) - 0.5,  # log of variances
    lambda mu0, s0, mu1, s1: np.log(s1 / s0) + (s0**2 + (mu0 - mu1) ** 2) / s1**2 - 0.5,       # no 1/2 on the fraction
    lambda mu0, s0, mu1, s1: np.zeros_like(mu0),                                              # trivial
    lambda mu0, s0, mu1, s1: np.asarray(jnp.asarray(right_kl_1d(mu0, s0, mu1, s1), jnp.float32)),  # float32
    library_wrapper,                                                                          # the library call
    library_vectorised,                                                                       # ... made elementwise
    scalar_only,                                                                              # not elementwise
])
def test_kl_1d_wrong_answers_fail(kl_1d):
    with pytest.raises(AssertionError):
        ck.check_kl_1d(kl_1d)


# --------------------------------------------------------------------------- Exercise 4: network size


def right_count(parents, cards):
    total = 0
    for i, ps in enumerate(parents):
        rows = 1
        for p in ps:
            rows *= cards[p]
        total += rows * (cards[i] - 1)
    return total


def test_num_free_parameters_right_answer_passes():
    assert right_count([(), (0,), (0,), (1, 2)], [2] * 4) == 9
    ck.check_num_free_parameters(right_count)


@pytest.mark.parametrize("count", [
    lambda parents, cards: sum(c * int(np.prod([cards[p] for p in ps]))            # forgets the row sums
                               for c, ps in zip(cards, parents)),
    lambda parents, cards: int(np.prod(cards)) - 1,                                # the full joint table
    lambda parents, cards: sum(c - 1 for c in cards),                              # ignores the parents
    lambda parents, cards: sum((cards[i] - 1) * sum(cards[p] for p in ps) if ps else cards[i] - 1
                               for i, ps in enumerate(parents)),                   # sums the parents' states
    lambda parents, cards: sum((cards[i] - 1) * int(np.prod([cards[p] - 1 for p in ps]))
                               for i, ps in enumerate(parents)),                   # (K_p - 1) for the parents too
    lambda parents, cards: right_count(parents, cards) + 1,                        # off by one
    lambda parents, cards: right_count(parents, cards) - 1,                        # off by one
    lambda parents, cards: sum((cards[i] - 1) * int(np.prod([cards[j] for j in range(i)]))
                               for i in range(len(cards))),                        # every earlier node a parent
    lambda parents, cards: 9,                                                      # the sprinkler's number typed in
])
def test_num_free_parameters_wrong_answers_fail(count):
    with pytest.raises(AssertionError):
        ck.check_num_free_parameters(count)
