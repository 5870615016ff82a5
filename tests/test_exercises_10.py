"""Notebook 10's exercise checkers pass the right answers and reject the obvious wrong ones."""
from __future__ import annotations

import numpy as np
import pytest
import scipy.linalg

from course_lib import gan, metrics
import jax

from exercises import checkers

ck = checkers("10")


# ------------------------------------------------------------------ exercise 1: FID by hand
def make_frechet(*, ddof=1, factor=2.0, mean_term=True, root="eigh", squared=True):
    def frechet(f1, f2):
        f1, f2 = np.asarray(f1, np.float64), np.asarray(f2, np.float64)
        m1, m2 = f1.mean(0), f2.mean(0)
        c1, c2 = np.cov(f1, rowvar=False, ddof=ddof), np.cov(f2, rowvar=False, ddof=ddof)
        if root == "eigh":
            w, v = np.linalg.eigh(c1)
            s = (v * np.sqrt(np.clip(w, 0, None))) @ v.T
            trace_root = np.sum(np.sqrt(np.clip(np.linalg.eigvalsh(s @ c2 @ s), 0, None)))
        elif root == "elementwise":                       # sqrt of each entry of C1 C2
            trace_root = np.trace(np.sqrt(np.abs(c1 @ c2)))
        elif root == "diagonal":                          # only the variances
            trace_root = np.sum(np.sqrt(np.diag(c1) * np.diag(c2)))
        value = (np.sum((m1 - m2) ** 2) if mean_term else 0.0) + np.trace(c1) + np.trace(c2) - factor * trace_root
        return float(value if squared else np.sqrt(max(value, 0.0)))
    return frechet


def toy_sets():
    rng = np.random.default_rng(5)
    a = rng.normal(size=(2000, 8))
    b = rng.normal(size=(2000, 8)) @ np.diag(np.linspace(0.5, 1.5, 8)) + 0.3
    return a, b


def test_frechet_right_answer_passes():
    right = make_frechet()
    ck.check_frechet_by_hand(right, right(*toy_sets()))


def test_frechet_sqrtm_answer_passes_too():
    """The checker accepts any correct float64 computation, e.g. with scipy's sqrtm."""
    def with_sqrtm(f1, f2):
        c1, c2 = np.cov(f1, rowvar=False), np.cov(f2, rowvar=False)
        return float(np.sum((f1.mean(0) - f2.mean(0)) ** 2)
                     + np.trace(c1 + c2 - 2 * scipy.linalg.sqrtm(c1 @ c2).real))
    ck.check_frechet_by_hand(with_sqrtm, with_sqrtm(*toy_sets()))


@pytest.mark.parametrize("wrong", [
    make_frechet(ddof=0),                                 # biased covariances (1/n)
    make_frechet(factor=1.0),                             # forgot the 2
    make_frechet(mean_term=False),                        # only the covariance part
    make_frechet(root="elementwise"),                     # entrywise square root
    make_frechet(root="diagonal"),                        # variances only
    make_frechet(squared=False),                          # the distance, not its square
    lambda f1, f2: float(metrics.fid(f1, f2)),            # the library call (float32)
    lambda f1, f2: 0.0,                                   # trivial
], ids=["ddof0", "no-two", "no-mean", "elementwise-sqrt", "diagonal", "not-squared", "library", "zero"])
def test_frechet_wrong_functions_fail(wrong):
    with pytest.raises(AssertionError):
        ck.check_frechet_by_hand(wrong, make_frechet()(*toy_sets()))


@pytest.mark.parametrize("toy_fid", [0.0, 1.0, None], ids=["zero", "typed-in", "ddof0-value"])
def test_frechet_wrong_toy_value_fails(toy_fid):
    if toy_fid is None:
        toy_fid = make_frechet(ddof=0)(*toy_sets())
    with pytest.raises(AssertionError):
        ck.check_frechet_by_hand(make_frechet(), toy_fid)


# ------------------------------------------------------------------ exercise 2: IS by hand
def make_is(*, use_exp=True, reverse=False, global_marginal=False, ddof=0, split="array_split"):
    def inception(probs, n_splits):
        probs = np.asarray(probs, np.float64)
        whole = probs.mean(axis=0)
        if split == "array_split":
            parts = np.array_split(probs, n_splits)
        else:                                             # one split only, ignoring n_splits
            parts = [probs]
        scores = []
        for part in parts:
            marginal = whole if global_marginal else part.mean(axis=0)
            safe_p = np.where(part > 0, part, 1.0)
            safe_m = np.where(marginal > 0, marginal, 1.0)
            if reverse:                                   # KL(p(y) || p(y|x))
                kl = np.sum(marginal * (np.log(safe_m) - np.log(np.maximum(part, 1e-300))), axis=1)
            else:
                kl = np.sum(part * (np.log(safe_p) - np.log(safe_m)), axis=1)
            scores.append(np.exp(kl.mean()) if use_exp else kl.mean())
        return float(np.mean(scores)), float(np.std(scores, ddof=ddof) if len(scores) > 1 else 0.0)
    return inception


def test_is_right_answer_passes():
    ck.check_inception_score_by_hand(make_is())


def _marginal_entropy(probs, n_splits):
    scores = []
    for part in np.array_split(np.asarray(probs, np.float64), n_splits):
        m = part.mean(0)
        scores.append(np.exp(-np.sum(np.where(m > 0, m * np.log(np.where(m > 0, m, 1)), 0))))
    return float(np.mean(scores)), float(np.std(scores))


@pytest.mark.parametrize("wrong", [
    make_is(use_exp=False),                               # the mean KL, not its exponential
    make_is(reverse=True),                                # KL the wrong way round
    make_is(global_marginal=True),                        # p(y) over all samples, not per split
    make_is(ddof=1),                                      # sample std instead of NumPy's default
    make_is(split="whole"),                               # splits ignored
    _marginal_entropy,                                    # exp H(p(y)): diversity only
    lambda p, n: tuple(float(v) for v in metrics.inception_score(p, n_splits=n)),   # the library
    lambda p, n: (1.0, 0.0),                              # trivial
], ids=["no-exp", "reversed-kl", "global-marginal", "ddof1", "no-splits", "marginal-entropy",
        "library", "trivial"])
def test_is_wrong_answers_fail(wrong):
    with pytest.raises(AssertionError):
        ck.check_inception_score_by_hand(wrong)


# ------------------------------------------------------------------ exercise 3: precision/recall
def make_pr(*, k_offset=0, closed=True, swap=False, fake_radii_from_real=False):
    def pr(real, fake, k):
        real, fake = np.asarray(real, np.float64), np.asarray(fake, np.float64)

        def dist(a, b):
            return np.sqrt(np.maximum((a ** 2).sum(1)[:, None] + (b ** 2).sum(1)[None] - 2 * a @ b.T, 0))
        kk = k + k_offset
        r_real = np.sort(dist(real, real), axis=1)[:, kk]
        r_fake = np.sort(dist(fake, fake), axis=1)[:, kk]
        if fake_radii_from_real:                          # generated balls with the real radii
            r_fake = np.sort(dist(fake, real), axis=1)[:, k - 1]
        cross = dist(fake, real)
        inside = (lambda d, r: d <= r) if closed else (lambda d, r: d < r)
        precision = np.mean(np.any(inside(cross, r_real[None, :]), axis=1))
        recall = np.mean(np.any(inside(cross, r_fake[:, None]), axis=0))
        return (float(recall), float(precision)) if swap else (float(precision), float(recall))
    return pr


def smeared_pr(fn):
    return fn(gan.ring_mixture(jax.random.key(30), 500, std=0.1).x,
              gan.ring_mixture(jax.random.key(31), 500, std=0.3).x, 3)


def test_pr_right_answer_passes():
    right = make_pr()
    ck.check_precision_recall_by_hand(right, smeared_pr(right))


@pytest.mark.parametrize("wrong", [
    make_pr(k_offset=-1),                                 # the point itself counted as a neighbour
    make_pr(k_offset=1),                                  # one neighbour too far
    make_pr(closed=False),                                # open balls
    make_pr(swap=True),                                   # precision and recall swapped
    make_pr(fake_radii_from_real=True),                   # wrong radii for the generated balls
    lambda r, f, k: (1.0, 1.0),                           # trivial
], ids=["k-minus-1", "k-plus-1", "open-balls", "swapped", "real-radii", "trivial"])
def test_pr_wrong_functions_fail(wrong):
    with pytest.raises(AssertionError):
        ck.check_precision_recall_by_hand(wrong, smeared_pr(make_pr()))


def test_pr_the_library_in_float32_passes_the_checker_even_on_far_clusters():
    """The checker's clusters 10^4 apart are where |a|^2 + |b|^2 - 2 a.b cancels in float32;
    the library's float32 k-NN kernels must still give the float64 answer."""
    def library(r, f, k):
        result = metrics.precision_recall(np.asarray(r, np.float32), np.asarray(f, np.float32), k=k)
        return float(result.precision), float(result.recall)
    ck.check_precision_recall_by_hand(library, smeared_pr(make_pr()))


@pytest.mark.parametrize("value", [(1.0, 1.0), (0.5, 0.9), "k-plus-1"], ids=["trivial", "typed-in", "off-by-one"])
def test_pr_wrong_smeared_value_fails(value):
    if value == "k-plus-1":
        value = smeared_pr(make_pr(k_offset=1))
    with pytest.raises(AssertionError):
        ck.check_precision_recall_by_hand(make_pr(), value)
