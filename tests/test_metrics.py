"""course_lib.metrics against independent references: closed forms of the Fréchet distance,
scipy.linalg.sqrtm (pytorch-fid's recipe), NumPy re-implementations of the inception score (the
original split loop) and the unbiased MMD^2, brute-force distance matrices for precision/recall,
density/coverage and nearest neighbours, the expected coverage of Naeem et al. (2020), and the
path length of decoders whose speed is known. Float64 where a test says x64."""
from __future__ import annotations

import json
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.linalg
from flax import nnx

from course_lib import data, metrics, nets, train


@pytest.fixture
def x64():
    with jax.enable_x64(True):
        yield


def random_rotation(rng, d):
    q, r = np.linalg.qr(rng.normal(size=(d, d)))
    return q * np.sign(np.diag(r))


def closed_form_fd(m1, a, m2, b):
    """Fréchet distance of N(m1, Q diag(a) Q^T) and N(m2, Q diag(b) Q^T): commuting covariances."""
    return float(np.sum((m1 - m2) ** 2) + np.sum((np.sqrt(a) - np.sqrt(b)) ** 2))


def sqrtm_fd(m1, c1, m2, c2):
    """pytorch-fid's formula: scipy.linalg.sqrtm of the product, real part, float64."""
    covmean = scipy.linalg.sqrtm(c1 @ c2)
    return float(np.sum((m1 - m2) ** 2) + np.trace(c1) + np.trace(c2) - 2 * np.trace(covmean.real))


# ==================================================================== Fréchet distance, FID
def test_frechet_distance_of_commuting_gaussians_matches_the_closed_form(x64):
    rng = np.random.default_rng(0)
    d = 12
    q = random_rotation(rng, d)
    a, b = rng.gamma(2.0, size=d), rng.gamma(2.0, size=d)
    m1, m2 = rng.normal(size=d), rng.normal(size=d)
    got = float(metrics.frechet_distance(m1, (q * a) @ q.T, m2, (q * b) @ q.T))
    assert got == pytest.approx(closed_form_fd(m1, a, m2, b), rel=1e-10)


@pytest.mark.parametrize("d", [3, 40])
def test_frechet_distance_matches_scipy_sqrtm_in_float64(x64, d):
    rng = np.random.default_rng(d)
    x = rng.normal(size=(4 * d, d)) @ rng.normal(size=(d, d))
    y = rng.normal(size=(4 * d, d)) @ rng.normal(size=(d, d)) + 0.5
    m1, c1, m2, c2 = x.mean(0), np.cov(x, rowvar=False), y.mean(0), np.cov(y, rowvar=False)
    got = metrics.frechet_distance(m1, c1, m2, c2)
    assert got.dtype == jnp.float64
    assert abs(float(got) - sqrtm_fd(m1, c1, m2, c2)) <= 1e-4 * sqrtm_fd(m1, c1, m2, c2)
    # fid on the features is gaussian_stats (numpy.cov) + the same distance
    assert float(metrics.fid(x, y)) == pytest.approx(float(got), rel=1e-10)
    stats = metrics.gaussian_stats(x)
    np.testing.assert_allclose(stats.mean, m1, rtol=1e-12)
    np.testing.assert_allclose(stats.cov, c1, rtol=1e-10, atol=1e-12)


def test_fid_in_float32_agrees_with_scipy_to_float32_accuracy():
    rng = np.random.default_rng(1)
    x = rng.normal(size=(600, 64)).astype(np.float32)
    y = (rng.normal(size=(500, 64)) * 1.2 + 0.1).astype(np.float32)
    got = metrics.fid(x, y)
    assert got.dtype == jnp.float32
    x64_, y64 = x.astype(np.float64), y.astype(np.float64)
    ref = sqrtm_fd(x64_.mean(0), np.cov(x64_, rowvar=False), y64.mean(0), np.cov(y64, rowvar=False))
    assert float(got) == pytest.approx(ref, rel=1e-4)


def test_fid_of_a_set_with_itself_is_zero_and_invariant_to_a_shared_rotation(x64):
    rng = np.random.default_rng(2)
    x = rng.normal(size=(300, 20)) @ rng.normal(size=(20, 20))
    y = rng.normal(size=(250, 20)) + 0.3
    assert abs(float(metrics.fid(x, x))) < 1e-10 * np.trace(np.cov(x, rowvar=False))
    q, shift = random_rotation(rng, 20), rng.normal(size=20) * 5
    before, after = float(metrics.fid(x, y)), float(metrics.fid(x @ q + shift, y @ q + shift))
    assert after == pytest.approx(before, rel=1e-9)
    with jax.enable_x64(False):                               # float32: zero to rounding
        x32 = x.astype(np.float32)
        assert float(metrics.fid(x32, x32)) < 1e-5 * np.trace(np.cov(x, rowvar=False))


@pytest.mark.parametrize("dtype_x64,rel", [(True, 1e-10), (False, 1e-5)])
def test_singular_covariances_give_the_finite_exact_distance(dtype_x64, rel):
    """Zero eigenvalues (shared and not shared by both covariances), rotated: the closed form."""
    rng = np.random.default_rng(3)
    d = 64
    q = random_rotation(rng, d)
    a, b = rng.gamma(1.0, size=d), rng.gamma(1.0, size=d)
    a[:20], b[10:35] = 0.0, 0.0                   # 10 directions null for both, others for one
    m1, m2 = rng.normal(size=d) * 0.1, rng.normal(size=d) * 0.1
    with jax.enable_x64(dtype_x64):
        got = float(metrics.frechet_distance(m1, (q * a) @ q.T, m2, (q * b) @ q.T))
        same = float(metrics.frechet_distance(m1, (q * a) @ q.T, m1, (q * a) @ q.T))
    assert np.isfinite(got)
    assert got == pytest.approx(closed_form_fd(m1, a, m2, b), rel=rel)
    assert abs(same) <= rel * a.sum()


def test_eps_floors_eigenvalues_relative_to_the_largest_as_documented(x64):
    """eps=1e-2: eigenvalues <= 1e-2 * max become 0 in each covariance (closed form with them
    zeroed); eps=0 keeps every positive eigenvalue (the exact closed form)."""
    rng = np.random.default_rng(15)
    d = 8
    q = random_rotation(rng, d)
    a = np.array([4.0, 2.0, 1.0, 0.5, 0.03, 0.02, 1e-3, 0.0])
    b = np.array([1.0, 3.0, 0.2, 0.01, 0.5, 0.0, 0.3, 2e-3])
    m = np.zeros(d)
    c1, c2 = (q * a) @ q.T, (q * b) @ q.T
    floored = lambda v: np.where(v > 1e-2 * v.max(), v, 0.0)  # noqa: E731
    got = float(metrics.frechet_distance(m, c1, m, c2, eps=1e-2))
    assert got == pytest.approx(closed_form_fd(m, floored(a), m, floored(b)), rel=1e-9)
    assert float(metrics.frechet_distance(m, c1, m, c2, eps=0.0)) == pytest.approx(
        closed_form_fd(m, a, m, b), rel=1e-7)       # no floor: sqrt(rounding noise) remains


def test_fid_with_fewer_samples_than_features_equals_fid_in_the_spanned_subspace(x64):
    """Features confined to a 6-D subspace of R^32, 30 samples each (covariances of rank <= 6):
    the distance equals scipy's on the 6-D coordinates (rotation and zero padding change nothing)."""
    rng = np.random.default_rng(4)
    basis = random_rotation(rng, 32)[:, :6]
    u, v = rng.normal(size=(30, 6)), rng.normal(size=(30, 6)) * 1.5 + 0.2
    ref = sqrtm_fd(u.mean(0), np.cov(u, rowvar=False), v.mean(0), np.cov(v, rowvar=False))
    got = float(metrics.fid(u @ basis.T, v @ basis.T))
    assert np.isfinite(got) and got == pytest.approx(ref, rel=1e-8)
    # and with n < D without a subspace: finite, and 0 against itself
    w = rng.normal(size=(10, 32))
    assert np.isfinite(float(metrics.fid(w, rng.normal(size=(12, 32)))))
    assert abs(float(metrics.fid(w, w))) < 1e-9


def test_frechet_distance_refuses_covariances_that_are_not_psd_or_not_symmetric():
    eye = np.eye(3)
    with pytest.raises(ValueError, match="cov2 must be positive semi-definite"):
        metrics.frechet_distance(np.zeros(3), eye, np.zeros(3), np.diag([1.0, 1.0, -0.5]))
    with pytest.raises(ValueError, match="cov1 must be symmetric"):
        metrics.frechet_distance(np.zeros(3), np.triu(np.ones((3, 3))), np.zeros(3), eye)


# ============================================================================ inception score
def numpy_inception_score(probs, n_splits):
    """The original code's loop: consecutive parts, KL to each part's marginal, exp of the mean."""
    n, scores = len(probs), []
    for s in range(n_splits):
        part = probs[s * n // n_splits:(s + 1) * n // n_splits]
        py = part.mean(0, keepdims=True)
        with np.errstate(divide="ignore", invalid="ignore"):
            kl = np.where(part > 0, part * (np.log(part) - np.log(py)), 0.0).sum(1)
        scores.append(np.exp(kl.mean()))
    return np.mean(scores), np.std(scores)


@pytest.mark.parametrize("n_classes", [2, 10])
def test_inception_score_of_confident_even_predictions_is_the_number_of_classes(n_classes):
    probs = np.eye(n_classes)[np.arange(50 * n_classes) % n_classes]
    score = metrics.inception_score(probs, n_splits=5)
    assert float(score.mean) == pytest.approx(n_classes, rel=1e-5)
    assert float(score.std) == pytest.approx(0.0, abs=1e-5)


def test_inception_score_of_identical_predictions_is_one():
    probs = np.tile([0.1, 0.6, 0.3], (40, 1))
    score = metrics.inception_score(probs, n_splits=4)
    assert float(score.mean) == pytest.approx(1.0, abs=1e-6)


@pytest.mark.parametrize("n,n_splits", [(103, 10), (50, 1), (17, 17)])
def test_inception_score_matches_a_numpy_reference_of_the_split_loop(x64, n, n_splits):
    rng = np.random.default_rng(n)
    logits = rng.normal(size=(n, 7)) * 2
    logits[:, 3] = -np.inf                           # an impossible class: 0 log 0 terms
    probs = np.exp(logits - logits.max(1, keepdims=True))
    probs /= probs.sum(1, keepdims=True)
    got = metrics.inception_score(probs, n_splits=n_splits)
    mean, std = numpy_inception_score(probs, n_splits)
    assert float(got.mean) == pytest.approx(mean, rel=1e-12)
    assert float(got.std) == pytest.approx(std, rel=1e-9, abs=1e-12)


def test_inception_score_splits_are_consecutive_so_class_ordered_samples_score_low():
    """A sample sorted by class puts one class in each split: IS 1 per split, not 10."""
    probs = np.eye(10)[np.repeat(np.arange(10), 100)]
    assert float(metrics.inception_score(probs, n_splits=10).mean) == pytest.approx(1.0)
    assert float(metrics.inception_score(probs[np.random.default_rng(0).permutation(1000)],
                                         n_splits=10).mean) > 9


# ==================================================================================== KID
def numpy_mmd2_unbiased(x, y):
    d = x.shape[1]
    k = lambda a, b: (a @ b.T / d + 1.0) ** 3  # noqa: E731
    m, n = len(x), len(y)
    kxx, kyy, kxy = k(x, x), k(y, y), k(x, y)
    return ((kxx.sum() - np.trace(kxx)) / (m * (m - 1)) + (kyy.sum() - np.trace(kyy)) / (n * (n - 1))
            - 2 * kxy.mean())


def test_kid_on_whole_sets_matches_a_numpy_reference_of_the_unbiased_mmd(x64):
    rng = np.random.default_rng(5)
    x, y = rng.normal(size=(60, 8)), rng.normal(size=(60, 8)) * 1.3 + 0.2
    got = metrics.kid(jax.random.key(0), x, y, n_subsets=3, subset_size=60)
    ref = numpy_mmd2_unbiased(x, y)
    assert float(got.mean) == pytest.approx(ref, rel=1e-10)
    assert float(got.std) == pytest.approx(0.0, abs=1e-10 * abs(ref))


def test_kid_subsets_are_draws_without_replacement_of_the_right_size(x64):
    """Subsets of 5 of 6 rows: each subset's MMD^2 is one of the 36 values of dropping one row of
    each set, so the mean over subsets lies within their range and the spread is not zero."""
    rng = np.random.default_rng(6)
    x, y = rng.normal(size=(6, 3)), rng.normal(size=(6, 3)) + 0.5
    values = [numpy_mmd2_unbiased(np.delete(x, i, 0), np.delete(y, j, 0))
              for i in range(6) for j in range(6)]
    got = metrics.kid(jax.random.key(1), x, y, n_subsets=200, subset_size=5)
    assert min(values) <= float(got.mean) <= max(values)
    assert float(got.mean) == pytest.approx(np.mean(values), abs=4 * np.std(values) / np.sqrt(200))
    assert float(got.std) == pytest.approx(np.std(values), rel=0.25)


def test_kid_is_zero_for_two_samples_of_one_distribution_within_its_spread():
    rng = np.random.default_rng(7)
    x, y = rng.normal(size=(2000, 16)), rng.normal(size=(2000, 16))
    same = metrics.kid(jax.random.key(2), x, y, n_subsets=50, subset_size=500)
    assert abs(float(same.mean)) < 3 * float(same.std)
    other = metrics.kid(jax.random.key(2), x, y * 1.3 + 0.2, n_subsets=50, subset_size=500)
    assert float(other.mean) > 5 * float(other.std)


# ===================================================== precision/recall, density/coverage, k-NN
def brute_force_prdc(real, fake, k):
    """Float64 distance matrices by explicit differences; closed balls."""
    real, fake = np.asarray(real, np.float64), np.asarray(fake, np.float64)
    d2 = lambda a, b: ((a[:, None, :] - b[None, :, :]) ** 2).sum(-1)  # noqa: E731
    r_real = np.sort(d2(real, real), axis=1)[:, k]          # column 0 is the point itself
    r_fake = np.sort(d2(fake, fake), axis=1)[:, k]
    rf = d2(real, fake)                                     # (N, M)
    precision = (rf <= r_real[:, None]).any(0).mean()
    recall = (rf <= r_fake[None, :]).any(1).mean()
    density = (rf <= r_real[:, None]).sum(0).mean() / k
    coverage = (rf.min(1) <= r_real).mean()
    return precision, recall, density, coverage


@pytest.mark.parametrize("k,block", [(1, 7), (3, 64), (5, 1000)])
def test_precision_recall_density_coverage_match_brute_force(x64, k, block):
    rng = np.random.default_rng(k)
    real = rng.normal(size=(150, 5))
    fake = rng.normal(size=(130, 5)) * 1.4 + 0.5
    p, r, dens, cov = brute_force_prdc(real, fake, k)
    pr = metrics.precision_recall(real, fake, k=k, block_size=block)
    dc = metrics.density_coverage(real, fake, k=k, block_size=block)
    assert (float(pr.precision), float(pr.recall)) == pytest.approx((p, r), abs=1e-12)
    assert float(pr.f1) == pytest.approx(2 * p * r / (p + r), rel=1e-12)
    assert (float(dc.density), float(dc.coverage)) == pytest.approx((dens, cov), abs=1e-12)
    assert 0 < p < 1 and 0 < r < 1 and 0 < cov < 1       # a test that can tell them apart


def test_ties_and_duplicates_are_exact_in_float32_and_any_block_size():
    """Small-integer features (exact in float32) with duplicate rows: every distance is exact,
    so ties at a ball's boundary and zero-radius balls follow the closed-ball rule exactly, for
    block sizes that divide the sample and ones that do not."""
    rng = np.random.default_rng(8)
    half = rng.integers(-2, 3, size=(40, 3))
    real = np.concatenate([half, -half, half[:10]])          # duplicates; mean stays integer-free?
    real = np.concatenate([real, -real]).astype(np.float32)  # symmetric: mean exactly 0
    fake = np.concatenate([rng.integers(-3, 4, size=(60, 3)), real[:15]]).astype(np.float32)
    for k, block in ((1, 7), (4, 13), (4, len(real))):
        want = brute_force_prdc(real, fake, k)
        pr = metrics.precision_recall(real, fake, k=k, block_size=block)
        dc = metrics.density_coverage(real, fake, k=k, block_size=block)
        got = (float(pr.precision), float(pr.recall), float(dc.density), float(dc.coverage))
        assert got == pytest.approx(want, abs=1e-6), (k, block)


def test_nearest_neighbours_match_a_stable_argsort_with_ties():
    rng = np.random.default_rng(9)
    half = rng.integers(-3, 4, size=(50, 4))
    reference = np.concatenate([half, -half, half[:5], -half[:5]]).astype(np.float32)  # mean 0
    query = np.concatenate([rng.integers(-3, 4, size=(33, 4)), reference[:4]]).astype(np.float32)
    d2 = ((query[:, None, :].astype(np.float64) - reference[None]) ** 2).sum(-1)
    order = np.argsort(d2, axis=1, kind="stable")[:, :6]
    for block in (5, 37, 512):
        got = metrics.nearest_neighbours(query, reference, k=6, block_size=block)
        np.testing.assert_array_equal(got.indices, order)
        np.testing.assert_allclose(got.distances, np.sqrt(np.take_along_axis(d2, order, 1)),
                                   rtol=1e-6)


def test_same_distribution_scores_near_one_and_disjoint_ones_zero():
    """Naeem et al.'s expectations for two samples of one distribution: density 1 and
    coverage 1 - prod_{i=1..k} (N - i) / (N + M - i); disjoint Gaussians score 0 everywhere."""
    rng = np.random.default_rng(10)
    n, k = 2000, 5
    real, fake = rng.normal(size=(n, 2)), rng.normal(size=(n, 2))
    dc = metrics.density_coverage(real, fake, k=k)
    expected_cov = 1 - np.prod([(n - i) / (2 * n - i) for i in range(1, k + 1)])
    assert float(dc.coverage) == pytest.approx(expected_cov, abs=0.02)
    assert float(dc.density) == pytest.approx(1.0, abs=0.06)
    pr = metrics.precision_recall(real, fake, k=3)
    assert float(pr.precision) > 0.9 and float(pr.recall) > 0.9
    far = metrics.precision_recall(real, fake + 20.0, k=3)
    assert (float(far.precision), float(far.recall), float(far.f1)) == (0.0, 0.0, 0.0)
    far_dc = metrics.density_coverage(real, fake + 20.0, k=k)
    assert (float(far_dc.density), float(far_dc.coverage)) == (0.0, 0.0)
    # identical sets: every sample sits on a real point
    same = metrics.precision_recall(real, real, k=3)
    assert (float(same.precision), float(same.recall)) == (1.0, 1.0)


def test_mode_dropping_lowers_recall_not_precision_and_an_outlier_is_what_density_ignores():
    rng = np.random.default_rng(11)
    centres = np.array([[0, 0], [10, 0], [0, 10], [10, 10]], float)
    real = (centres[rng.integers(0, 4, 2000)] + rng.normal(size=(2000, 2))).astype(np.float32)
    one_mode = (centres[0] + rng.normal(size=(2000, 2))).astype(np.float32)
    pr = metrics.precision_recall(real, one_mode, k=3)
    assert float(pr.precision) > 0.9 and float(pr.recall) < 0.35
    dc = metrics.density_coverage(real, one_mode, k=5)
    assert float(dc.coverage) < 0.35


def far_clusters(seed, n_real, n_fake, grid: bool, d=8):
    """Unit-spread clusters 10^4 apart, far from the origin (centres 1e4 ... 5e4), float32:
    two on a line, or a 5 x 5 grid. Generated samples: spread 1.25 and shifted by 0.3, so
    precision, recall, density and coverage are all strictly between their extremes."""
    rng = np.random.default_rng(seed)
    if grid:
        centres = np.zeros((25, d))
        centres[:, :2] = 1e4 * np.array([(i, j) for i in range(1, 6) for j in range(1, 6)])
    else:
        centres = np.zeros((2, d))
        centres[:, 0] = [1e4, 2e4]
    real = np.concatenate([c + rng.normal(size=(n_real, d)) for c in centres])
    fake = np.concatenate([c + 1.25 * rng.normal(size=(n_fake, d)) + 0.3 for c in centres])
    return real.astype(np.float32), fake.astype(np.float32)


def boundary_margin(real, fake, k):
    """Smallest |d^2 / r^2 - 1| over the cross pairs, for the real and the generated k-NN balls."""
    real, fake = np.asarray(real, np.float64), np.asarray(fake, np.float64)
    d2 = lambda a, b: ((a[:, None, :] - b[None, :, :]) ** 2).sum(-1)  # noqa: E731
    r_real = np.sort(d2(real, real), axis=1)[:, k]
    r_fake = np.sort(d2(fake, fake), axis=1)[:, k]
    rf = d2(real, fake)
    return min(np.abs(rf / r_real[:, None] - 1).min(), np.abs(rf / r_fake[None, :] - 1).min())


@pytest.mark.parametrize("grid,seed,n,block", [(False, 5, 500, 512), (True, 1, 40, 512),
                                               (True, 1, 40, 96)],
                         ids=["two-clusters", "5x5-grid", "5x5-grid-block-96"])
def test_far_apart_clusters_in_float32_match_a_float64_brute_force_exactly(grid, seed, n, block):
    """Clusters of unit spread 10^4 apart in float32: |x|^2 ~ 10^8 cancels to ~1 in the
    expansion of a distance unless each block is centred on its own rows. No cross pair lies
    within 1e-5 (relative) of a ball's boundary, so the fractions must be equal, not close."""
    real, fake = far_clusters(seed, n, n, grid)
    assert min(boundary_margin(real, fake, 3), boundary_margin(real, fake, 5)) > 1e-5
    p, r, _, _ = brute_force_prdc(real, fake, 3)
    _, _, dens, cov = brute_force_prdc(real, fake, 5)
    pr = metrics.precision_recall(real, fake, k=3, block_size=block)
    dc = metrics.density_coverage(real, fake, k=5, block_size=block)
    assert pr.precision.dtype == jnp.float32
    assert (float(pr.precision), float(pr.recall)) == pytest.approx((p, r), abs=1e-7)
    assert (float(dc.density), float(dc.coverage)) == pytest.approx((dens, cov), abs=1e-7)
    assert 0.3 < p < 0.9 and 0.3 < r < 0.999 and 0.3 < dens < 0.9 and 0.5 < cov < 0.99


def test_nearest_neighbours_far_from_the_origin_are_exact_for_copies_and_float64_accurate():
    """A 5 x 5 grid of clusters 10^4 apart: exact copies of reference rows are at distance
    exactly 0 (their own index first), the k-NN distances of every query match a float64
    brute force to 1e-5 relative, and the order matches a stable argsort."""
    reference, _ = far_clusters(3, 30, 0, grid=True)             # 750 rows, D = 8
    rng = np.random.default_rng(4)
    picked = rng.choice(len(reference), 60, replace=False)
    others = reference[rng.choice(len(reference), 40, replace=False)] + rng.normal(size=(40, 8))
    query = np.concatenate([reference[picked], others.astype(np.float32)])
    d2 = ((query[:, None, :].astype(np.float64) - reference[None]) ** 2).sum(-1)
    order = np.argsort(d2, axis=1, kind="stable")[:, :5]
    want = np.sqrt(np.take_along_axis(d2, order, 1))
    assert np.all(np.diff(want, axis=1)[:, 1:] > 1e-5 * want[:, 2:])    # no near-ties to order
    for block in (512, 64):
        got = metrics.nearest_neighbours(query, reference, k=5, block_size=block)
        np.testing.assert_array_equal(got.distances[:60, 0], 0.0)
        np.testing.assert_array_equal(got.indices[:60, 0], picked)
        np.testing.assert_array_equal(got.indices, order)
        np.testing.assert_allclose(got.distances, want, rtol=1e-5)
    # the k-NN radii of the set itself: column 0 is the row (distance 0), then float64-accurate
    own = metrics.nearest_neighbours(reference, reference, k=4)
    np.testing.assert_array_equal(own.distances[:, 0], 0.0)
    np.testing.assert_array_equal(own.indices[:, 0], np.arange(len(reference)))
    d2_own = ((reference[:, None, :].astype(np.float64) - reference[None]) ** 2).sum(-1)
    np.testing.assert_allclose(own.distances, np.sqrt(np.sort(d2_own, axis=1)[:, :4]), rtol=1e-5)


def test_duplicates_far_from_the_origin_tie_at_zero_with_the_lower_index_first():
    """Rows duplicated in the reference, 10^4 from the origin: both copies at distance exactly
    0, the lower index first, for any block size."""
    base, _ = far_clusters(6, 200, 0, grid=False)                # 400 rows, D = 8
    reference = np.concatenate([base, base[:25]])                 # rows i and 400 + i equal
    query = base[:25][::-1]
    for block in (512, 7):
        got = metrics.nearest_neighbours(query, reference, k=2, block_size=block)
        np.testing.assert_array_equal(got.distances, 0.0)
        np.testing.assert_array_equal(got.indices, np.stack([np.arange(25), 400 + np.arange(25)],
                                                            axis=1)[::-1])


# ============================================================================= likelihoods
def test_perplexity_is_exp_of_the_mean_cross_entropy_and_bits_per_char_its_log2():
    rng = np.random.default_rng(12)
    logits, labels = rng.normal(size=(200, 30)) * 2, rng.integers(0, 30, 200)
    ce = float(train.cross_entropy(jnp.asarray(logits, jnp.float32), jnp.asarray(labels)))
    log_p = logits - np.log(np.exp(logits).sum(1, keepdims=True))
    ref_ce = -log_p[np.arange(200), labels].mean()
    assert ce == pytest.approx(ref_ce, rel=1e-5)
    assert float(metrics.perplexity(ce)) == pytest.approx(np.exp(ref_ce), rel=1e-5)
    assert float(metrics.bits_per_char(ce)) == pytest.approx(ref_ce / np.log(2), rel=1e-5)
    assert 2 ** float(metrics.bits_per_char(ce)) == pytest.approx(float(metrics.perplexity(ce)),
                                                                  rel=1e-5)
    # a uniform guess over V symbols: perplexity V, log2 V bits
    assert float(metrics.perplexity(np.log(84.0))) == pytest.approx(84.0, rel=1e-6)
    assert float(metrics.bits_per_char(np.log(84.0))) == pytest.approx(np.log2(84), rel=1e-6)


def test_bits_per_dim_of_a_uniform_8_bit_image_model_is_8():
    nll = 784 * np.log(256.0)                    # -log p(x) of uniform pixels, nats per image
    assert float(metrics.bits_per_dim(nll, 784)) == pytest.approx(8.0, rel=1e-6)
    np.testing.assert_allclose(metrics.bits_per_dim([nll, -nll], 784), [8.0, -8.0], rtol=1e-6)


# ==================================================================== perceptual path length
def test_path_length_of_a_linear_decoder_on_straight_paths_is_twice_its_frobenius_norm():
    """G(z) = A z on lerp paths: every sample's d is |A (z1 - z0)|^2, whose mean is 2 |A|_F^2."""
    rng = np.random.default_rng(13)
    a = rng.normal(size=(5, 3)).astype(np.float32)
    calls = []

    def decode(z):
        calls.append(z.shape[0])
        return z @ a.T

    ppl = metrics.perceptual_path_length(jax.random.key(0), decode, lambda f: f, 3, n=3000,
                                         interpolation="lerp", batch_size=512, percentiles=None)
    want = 2 * np.sum(a ** 2)
    spread = float(np.sqrt(np.var(ppl.distances) / 3000))
    assert ppl.mean == pytest.approx(want, abs=4 * spread)
    assert set(calls) == {512} and len(calls) == 2 * 6        # padded last batch, two calls each
    assert ppl.distances.shape == (3000,) and ppl.kept.all()


def test_path_length_on_slerp_paths_of_the_unit_circle_is_the_mean_squared_angle():
    """Unit latents in 2-D, decoder = identity: slerp moves at angular speed w (the angle between
    the endpoints, uniform on [0, pi]), so d = w^2 and E[d] = pi^2 / 3."""
    def unit(key, batch):
        z = jax.random.normal(key, (batch, 2))
        return z / jnp.linalg.norm(z, axis=1, keepdims=True)

    ppl = metrics.perceptual_path_length(jax.random.key(1), lambda z: z, lambda f: f, unit,
                                         n=4000, epsilon=1e-3, percentiles=None)
    assert ppl.mean == pytest.approx(math.pi ** 2 / 3, abs=4 * np.sqrt(4 * math.pi ** 4 / 45 / 4000))


def test_path_length_filtering_follows_the_papers_percentile_rule():
    ppl = metrics.perceptual_path_length(jax.random.key(2), lambda z: jnp.tanh(z) ** 3,
                                         lambda f: f, 4, n=999)
    d = ppl.distances
    lo, hi = np.percentile(d, 1, method="lower"), np.percentile(d, 99, method="higher")
    keep = (d >= lo) & (d <= hi)
    np.testing.assert_array_equal(ppl.kept, keep)
    assert ppl.mean == pytest.approx(d[keep].mean(), rel=1e-12)
    assert 0.9 * 999 < keep.sum() < 999


# ============================================================================== bad inputs
RNG = np.random.default_rng(99)
X = RNG.normal(size=(20, 4))
P = np.full((20, 5), 0.2)
BAD = [
    (lambda: metrics.fid(X, X[:, :3]), "features_fake has feature width 3"),
    (lambda: metrics.fid(X[:1], X), "features_real must hold at least 2"),
    (lambda: metrics.fid(np.where(X > 1.5, np.nan, X), X), "features_real contains NaN"),
    (lambda: metrics.fid(X, X, eps=-1.0), "eps"),
    (lambda: metrics.gaussian_stats(X[0]), "features must be 2-D"),
    (lambda: metrics.frechet_distance(np.zeros(4), np.eye(4), np.zeros(3), np.eye(3)), "mean2"),
    (lambda: metrics.frechet_distance(np.zeros(4), np.eye(3), np.zeros(4), np.eye(4)), "cov1"),
    (lambda: metrics.inception_score(P, n_splits=21), "n_splits .* larger than the sample"),
    (lambda: metrics.inception_score(P, n_splits=0), "n_splits"),
    (lambda: metrics.inception_score(P * 2, n_splits=2), "probs must sum to 1"),
    (lambda: metrics.inception_score(P[0], n_splits=1), "probs must be"),
    (lambda: metrics.kid(jax.random.key(0), X, X, n_subsets=2, subset_size=21), "subset_size"),
    (lambda: metrics.kid(jax.random.key(0), X, X[:, :2], n_subsets=2, subset_size=5),
     "features_fake has feature width"),
    (lambda: metrics.kid(0, X, X, n_subsets=2, subset_size=5), "key"),
    (lambda: metrics.precision_recall(X, X[:3], k=3), "k .3. must be smaller .* fake"),
    (lambda: metrics.precision_recall(X[:3], X, k=3), "k .3. must be smaller .* real"),
    (lambda: metrics.precision_recall(X, X[:, :2]), "fake has feature width"),
    (lambda: metrics.precision_recall(X, np.where(X > 1.5, np.inf, X)), "fake contains NaN"),
    (lambda: metrics.precision_recall(X, X, k=True), "k must be an integer"),
    (lambda: metrics.density_coverage(X[:5], X, k=5), "k .5. must be smaller .* real"),
    (lambda: metrics.density_coverage(X, X, block_size=0), "block_size"),
    (lambda: metrics.nearest_neighbours(X, X, k=21), "k must be"),
    (lambda: metrics.nearest_neighbours(X, X[:, :1]), "query has feature width"),
    (lambda: metrics.perplexity(-0.1), "mean_cross_entropy_nats must be >= 0"),
    (lambda: metrics.bits_per_char(np.nan), "mean_cross_entropy_nats contains NaN"),
    (lambda: metrics.bits_per_dim(1.0, 0), "n_dims"),
    (lambda: metrics.perceptual_path_length(jax.random.key(0), lambda z: z, lambda f: f, 2, n=0), "n must"),
    (lambda: metrics.perceptual_path_length(jax.random.key(0), lambda z: z, lambda f: f, 2, n=5,
                                            epsilon=0.0), "epsilon"),
    (lambda: metrics.perceptual_path_length(jax.random.key(0), lambda z: z, lambda f: f, 2, n=5,
                                            interpolation="cubic"), "interpolation"),
    (lambda: metrics.perceptual_path_length(jax.random.key(0), None, lambda f: f, 2, n=5), "decode_fn"),
    (lambda: metrics.perceptual_path_length(jax.random.key(0), lambda z: z, lambda f: f, 2.5, n=5),
     "latent_dim_or_sampler"),
    (lambda: metrics.perceptual_path_length(jax.random.key(0), lambda z: z * jnp.nan, lambda f: f,
                                            2, n=5, percentiles=None), "NaN"),
    (lambda: metrics.features(object(), X), "net must be an nnx.Module"),
]


@pytest.mark.parametrize("call,match", BAD, ids=[m for _, m in BAD])
def test_bad_input_raises_value_error_naming_the_argument(call, match):
    with pytest.raises(ValueError, match=match):
        call()


# ======================================================================= the feature network
class TinyClassifier(nnx.Module):
    """The interface train_feature_net needs (logits and embed), cheap to compile."""

    def __init__(self, rngs, pixels=64):
        self.hidden = nnx.Linear(pixels, 8, rngs=rngs)
        self.head = nnx.Linear(8, 10, rngs=rngs)

    def embed(self, x):
        return nnx.relu(self.hidden(x.reshape(x.shape[0], -1)))

    def __call__(self, x, *, rngs=None):
        return self.head(self.embed(x))


def tiny_net(seed=0):
    return TinyClassifier(nnx.Rngs(seed))


@pytest.fixture(scope="module")
def digits():
    split = data.load_digits()
    return split.x_train[:256], split.y_train[:256], split.x_test[:50]


@pytest.fixture(scope="module")
def cached_net(tmp_path_factory, digits):
    """One training of the tiny net into a cache folder (compiling the CNN's step is the cost)."""
    images, labels, _ = digits
    cache = tmp_path_factory.mktemp("feature_net") / "net"
    kwargs = dict(steps=10, batch_size=32, cache_dir=cache)
    return metrics.train_feature_net(jax.random.key(0), tiny_net(), images, labels, **kwargs), kwargs


def test_feature_net_is_cached_with_a_checksum_and_retrained_when_it_fails(cached_net, digits):
    images, labels, test_images = digits
    first, kwargs = cached_net
    assert not first.from_cache and len(first.sha256) == 64
    again = metrics.train_feature_net(jax.random.key(0), tiny_net(), images, labels, **kwargs)
    assert again.from_cache and again.sha256 == first.sha256
    np.testing.assert_array_equal(metrics.features(again.model, test_images),
                                  metrics.features(first.model, test_images))
    # a wrong checksum in the record: retrained (deterministically: the same weights)
    record = kwargs["cache_dir"] / "feature_net.json"
    saved = json.loads(record.read_text())
    record.write_text(json.dumps(dict(saved, sha256="0" * 64)))
    redo = metrics.train_feature_net(jax.random.key(0), tiny_net(), images, labels, **kwargs)
    assert not redo.from_cache and redo.sha256 == first.sha256
    assert json.loads(record.read_text())["sha256"] == first.sha256
    # another start does not reuse the cache (its fingerprint differs), and replaces it
    other = metrics.train_feature_net(jax.random.key(0), tiny_net(1), images, labels, **kwargs)
    assert not other.from_cache and other.sha256 != first.sha256
    assert json.loads(record.read_text())["sha256"] == other.sha256


def test_features_and_class_probs_are_the_nets_own_layers_in_eval_mode(cached_net, digits):
    net, test_images = cached_net[0].model, digits[2]
    before = jax.tree.map(np.asarray, nnx.state(net))
    feats = metrics.features(net, test_images, batch_size=16)     # 50 = 3 x 16 + 2: padded
    np.testing.assert_allclose(feats, net.embed(test_images), rtol=1e-5, atol=1e-6)
    probs = metrics.class_probs(net, test_images, batch_size=7)
    np.testing.assert_allclose(probs, jax.nn.softmax(net(test_images)), rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(np.sum(probs, 1), 1.0, rtol=1e-5)
    assert feats.shape == (50, 8) and probs.shape == (50, 10)
    jax.tree.map(np.testing.assert_array_equal, before, jax.tree.map(np.asarray, nnx.state(net)))


def test_features_of_notebook_05s_cnn_are_its_penultimate_layer():
    cnn = nets.CNN(channels=(4, 8), hidden=16, dropout_rate=0.5, rngs=nnx.Rngs(0))  # train mode
    images = np.random.default_rng(14).uniform(size=(30, 28, 28)).astype(np.float32)
    np.testing.assert_allclose(metrics.features(cnn, images, batch_size=8), cnn.embed(images),
                               rtol=1e-5, atol=1e-6)
    cnn.eval()                                   # class_probs evaluates without dropout
    np.testing.assert_allclose(metrics.class_probs(cnn, images), jax.nn.softmax(cnn(images)),
                               rtol=1e-5, atol=1e-7)


def test_mnist_feature_net_trains_on_the_named_split_and_reports_its_test_accuracy(tmp_path):
    net = metrics.mnist_feature_net(jax.random.key(0), TinyClassifier(nnx.Rngs(0), 784), steps=3,
                                    cache_dir=tmp_path / "mnist")
    split = data.load_mnist_small()
    logits = net.model(split.x_test)
    assert net.test_accuracy == pytest.approx(float(train.accuracy(logits, split.y_test)), abs=1e-6)
    assert not net.from_cache and (tmp_path / "mnist" / "feature_net.json").exists()
    with pytest.raises(ValueError, match="dataset must be one of"):
        metrics.mnist_feature_net(jax.random.key(0), tiny_net(), dataset="cifar10")
