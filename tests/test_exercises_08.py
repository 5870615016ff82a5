"""Notebook 08's exercise checkers pass the right answers and reject the obvious wrong ones."""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from exercises import checkers

ck = checkers("08")


# ------------------------------------------------------------------ exercise 1: KL of diagonal Gaussians
def kl_right(mean_q, log_var_q, mean_p, log_var_p):
    var_q, var_p = jnp.exp(log_var_q), jnp.exp(log_var_p)
    return jnp.sum(0.5 * (log_var_p - log_var_q + (var_q + (mean_q - mean_p) ** 2) / var_p - 1.0), -1)


def test_kl_right_answer_passes():
    ck.check_kl_diag(kl_right)


@pytest.mark.parametrize("wrong", [
    lambda mq, lq, mp, lp: kl_right(mp, lp, mq, lq),                               # KL(p || q): swapped
    lambda mq, lq, mp, lp: kl_right(mq, lq, mp, lp) * 2,                          # forgot the 1/2
    lambda mq, lq, mp, lp: jnp.sum(0.5 * (mq**2 + jnp.exp(lq) - 1 - lq), -1),     # against N(0, I) only
    lambda mq, lq, mp, lp: jnp.sum(0.5 * (lp - lq + (lq + (mq - mp) ** 2) / lp - 1), -1),  # log_var used as var
    lambda mq, lq, mp, lp: kl_right(mq, lq, mp, lp) + 0.5 * mq.shape[-1],         # forgot the -1
    lambda mq, lq, mp, lp: jnp.sum(0.5 * (lp - lq + (jnp.exp(lq) + (mq - mp) ** 2) / jnp.exp(lp) - 1), 0),  # summed over the batch axis
    lambda mq, lq, mp, lp: jnp.zeros(mq.shape[:-1]),                              # trivial
    lambda mq, lq, mp, lp: jnp.full(mq.shape[:-1], 0.4),                          # typed-in number
], ids=["swapped", "no-half", "std-normal", "log-var-as-var", "no-minus-one", "wrong-axis", "zero", "typed-in"])
def test_kl_wrong_answers_fail(wrong):
    with pytest.raises(AssertionError):
        ck.check_kl_diag(wrong)


# ------------------------------------------------------------------ exercise 2: the IWAE bound
def make_iwae(*, reduce="logsumexp", minus_log_k=True, q_sign=1.0, use_eps_density=True):
    def iwae(key, log_joint, mean, log_var, k):
        eps = jax.random.normal(key, (k,) + mean.shape)
        z = mean + jnp.exp(0.5 * log_var) * eps
        if use_eps_density:
            log_q = -0.5 * jnp.sum(jnp.log(2 * jnp.pi) + log_var + eps**2, axis=-1)
        else:                                             # N(0, I)'s density instead of q's
            log_q = -0.5 * jnp.sum(jnp.log(2 * jnp.pi) + z**2, axis=-1)
        log_w = log_joint(z) - q_sign * log_q
        if reduce == "mean":                              # the ELBO, not the IWAE bound
            return jnp.mean(log_w, axis=0)
        if reduce == "max":
            return jnp.max(log_w, axis=0) - (jnp.log(k) if minus_log_k else 0.0)
        return jax.nn.logsumexp(log_w, axis=0) - (jnp.log(k) if minus_log_k else 0.0)
    return iwae


def test_iwae_right_answer_passes():
    ck.check_iwae(make_iwae())


@pytest.mark.parametrize("wrong", [
    make_iwae(reduce="mean"),                             # the ELBO: does not rise with k
    make_iwae(minus_log_k=False),                         # log sum instead of log mean
    make_iwae(q_sign=-1.0),                               # + log q
    make_iwae(use_eps_density=False),                     # the prior's density for q
    make_iwae(reduce="max"),                              # the largest weight
    lambda key, log_joint, mean, log_var, k: jnp.zeros(mean.shape[0]),                 # trivial
    lambda key, log_joint, mean, log_var, k: jnp.mean(log_joint(mean[None]), axis=0),  # log p(x, mu): no sampling
], ids=["elbo", "no-log-k", "plus-log-q", "prior-density", "max", "zero", "plug-in-mean"])
def test_iwae_wrong_answers_fail(wrong):
    with pytest.raises(AssertionError):
        ck.check_iwae(wrong)


# ------------------------------------------------------------------ exercise 3: ROC AUC
def auc_right(scores, labels):
    scores, labels = np.asarray(scores, np.float64), np.asarray(labels)
    pos, neg = scores[labels == 1], scores[labels == 0]
    wins = (pos[:, None] > neg[None, :]).sum() + 0.5 * (pos[:, None] == neg[None, :]).sum()
    return wins / (len(pos) * len(neg))


def test_auc_right_answer_passes():
    ck.check_auc_by_hand(auc_right)


def _no_ties(scores, labels):
    scores, labels = np.asarray(scores, np.float64), np.asarray(labels)
    pos, neg = scores[labels == 1], scores[labels == 0]
    return (pos[:, None] > neg[None, :]).mean()


def _ties_as_wins(scores, labels):
    scores, labels = np.asarray(scores, np.float64), np.asarray(labels)
    pos, neg = scores[labels == 1], scores[labels == 0]
    return (pos[:, None] >= neg[None, :]).mean()


@pytest.mark.parametrize("wrong", [
    _no_ties,                                                     # ties count 0
    _ties_as_wins,                                                # ties count 1
    lambda s, l: 1.0 - auc_right(s, l),                           # classes swapped
    lambda s, l: float(np.mean((np.asarray(s) > np.median(s)) == np.asarray(l))),   # an accuracy
    lambda s, l: 0.5,                                             # chance, typed in
], ids=["ties-zero", "ties-one", "swapped", "accuracy", "typed-in"])
def test_auc_wrong_answers_fail(wrong):
    with pytest.raises(AssertionError):
        ck.check_auc_by_hand(wrong)
