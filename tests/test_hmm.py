"""Oracle tests for course_lib.hmm: brute-force enumeration of every state path, hmmlearn,
EM's monotonicity (hypothesis), the gradient identity ∂ log p / ∂ log b_t(k) = γ_t(k),
padding and recompilation, and the error messages for bad parameters."""
from __future__ import annotations

import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from course_lib import hmm


@pytest.fixture(autouse=True)
def x64():
    """Oracle comparisons in float64 (restored afterwards; other test files keep float32)."""
    with jax.enable_x64(True):
        yield


def random_categorical(seed, k=3, m=4, concentration=1.0):
    rng = np.random.default_rng(seed)
    return hmm.CategoricalHMM(
        rng.dirichlet(np.full(k, concentration)),
        rng.dirichlet(np.full(k, concentration), size=k),
        rng.dirichlet(np.full(m, concentration), size=k),
    )


def random_gaussian(seed, k=3, d=2):
    rng = np.random.default_rng(seed)
    return hmm.GaussianHMM(
        rng.dirichlet(np.ones(k)),
        rng.dirichlet(np.ones(k), size=k),
        rng.normal(0.0, 2.0, size=(k, d)),
        rng.uniform(0.3, 2.0, size=(k, d)),
    )


def emission_logpdf_np(params, obs):
    """(T, K) emission log-likelihoods computed independently in NumPy."""
    if isinstance(params, hmm.CategoricalHMM):
        return np.log(np.asarray(params.emission))[:, np.asarray(obs)].T
    x, mu, var = np.asarray(obs), np.asarray(params.means), np.asarray(params.variances)
    diff = x[:, None, :] - mu[None]
    return -0.5 * np.sum(diff**2 / var + np.log(2 * np.pi * var), axis=-1)


def brute_force(params, obs):
    """Enumerate all K^T paths: log p(x), filtered, smoothed, pair counts, best path."""
    ll = emission_logpdf_np(params, obs)
    t_len, k = ll.shape
    log_pi, log_a = np.log(np.asarray(params.initial)), np.log(np.asarray(params.transition))
    paths = np.array(list(itertools.product(range(k), repeat=t_len)))          # (P, T)
    joint = log_pi[paths[:, 0]] + ll[np.arange(t_len), paths].sum(axis=1)
    joint += log_a[paths[:, :-1], paths[:, 1:]].sum(axis=1)
    log_px = np.logaddexp.reduce(joint)
    w = np.exp(joint - log_px)
    smoothed = np.zeros((t_len, k))
    for t in range(t_len):
        np.add.at(smoothed[t], paths[:, t], w)
    pairs = np.zeros((k, k))
    for t in range(t_len - 1):
        np.add.at(pairs, (paths[:, t], paths[:, t + 1]), w)
    filtered = np.zeros((t_len, k))
    for t in range(t_len):  # p(z_t | x_{0:t}): enumerate prefixes of length t+1
        pre = np.array(list(itertools.product(range(k), repeat=t + 1)))
        lj = log_pi[pre[:, 0]] + ll[np.arange(t + 1), pre].sum(axis=1)
        lj += log_a[pre[:, :-1], pre[:, 1:]].sum(axis=1) if t else 0.0
        pw = np.exp(lj - np.logaddexp.reduce(lj))
        np.add.at(filtered[t], pre[:, -1], pw)
    best = int(np.argmax(joint))
    return log_px, filtered, smoothed, pairs, paths[best], joint[best]


def path_score(params, obs, path):
    """log p(z = path, x = obs), evaluated directly."""
    ll = emission_logpdf_np(params, obs)
    log_a = np.log(np.asarray(params.transition))
    return (np.log(np.asarray(params.initial))[path[0]] + ll[np.arange(len(path)), path].sum()
            + log_a[path[:-1], path[1:]].sum())


def observations(params, t_len, seed):
    return hmm.sample(jax.random.key(seed), params, t_len).observations


# --------------------------------------------------------------------------- brute force


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("kind", ["categorical", "gaussian"])
def test_inference_matches_brute_force(seed, kind):
    params = random_categorical(seed) if kind == "categorical" else random_gaussian(seed)
    x = observations(params, 6, seed)
    log_px, filtered, smoothed, pairs, best_path, best_score = brute_force(params, x)

    np.testing.assert_allclose(hmm.log_likelihood(params, x), log_px, rtol=1e-10)
    fwd = hmm.forward(params, x)
    np.testing.assert_allclose(fwd.log_likelihood, log_px, rtol=1e-10)
    np.testing.assert_allclose(fwd.filtered, filtered, atol=1e-10)
    post = hmm.posterior(params, x)
    np.testing.assert_allclose(post.smoothed, smoothed, atol=1e-10)
    np.testing.assert_allclose(post.transition_counts, pairs, atol=1e-10)
    vit = hmm.viterbi(params, x)
    np.testing.assert_array_equal(vit.path, best_path)
    np.testing.assert_allclose(vit.log_prob, best_score, rtol=1e-10)


@pytest.mark.parametrize("seed", [3, 4])
def test_parallel_kernels_match_brute_force(seed):
    params = random_categorical(seed, k=3, m=5)
    x = observations(params, 7, seed)
    log_px, filtered, _, _, best_path, best_score = brute_force(params, x)
    fwd = hmm.forward(params, x, parallel=True)
    np.testing.assert_allclose(fwd.log_likelihood, log_px, rtol=1e-10)
    np.testing.assert_allclose(fwd.filtered, filtered, atol=1e-10)
    vit = hmm.viterbi(params, x, parallel=True)
    np.testing.assert_array_equal(vit.path, best_path)
    np.testing.assert_allclose(vit.log_prob, best_score, rtol=1e-10)


def test_parallel_kernels_match_sequential_on_long_sequences():
    params = random_gaussian(5, k=4, d=1)
    x = observations(params, 1000, 5)
    seq, par = hmm.forward(params, x), hmm.forward(params, x, parallel=True)
    np.testing.assert_allclose(par.log_likelihood, seq.log_likelihood, rtol=1e-10)
    np.testing.assert_allclose(par.filtered, seq.filtered, atol=1e-8)
    v_seq, v_par = hmm.viterbi(params, x), hmm.viterbi(params, x, parallel=True)
    np.testing.assert_array_equal(v_par.path, v_seq.path)
    np.testing.assert_allclose(v_par.log_prob, v_seq.log_prob, rtol=1e-10)


def test_low_level_kernels_take_a_trailing_batch_axis():
    params = random_categorical(6)
    xs = [np.asarray(observations(params, 40, s)) for s in (1, 2)]
    ll = np.stack([emission_logpdf_np(params, x) for x in xs], axis=-1)        # (T, K, 2)
    both = hmm.forward_log_likelihood(params.initial, params.transition, jnp.asarray(ll))
    each = [hmm.log_likelihood(params, x) for x in xs]
    np.testing.assert_allclose(both, each, rtol=1e-12)
    paths = hmm.viterbi_path(params.initial, params.transition, jnp.asarray(ll)).path
    np.testing.assert_array_equal(paths.T, [hmm.viterbi(params, x).path for x in xs])


# --------------------------------------------------------------------------- hmmlearn


def hmmlearn_model(params):
    from hmmlearn import hmm as hl

    if isinstance(params, hmm.CategoricalHMM):
        model = hl.CategoricalHMM(n_components=len(params.initial), implementation="scaling")
        model.n_features = params.emission.shape[1]
        model.emissionprob_ = np.asarray(params.emission)
    else:
        model = hl.GaussianHMM(n_components=len(params.initial), covariance_type="diag",
                               implementation="scaling")
        model.means_ = np.asarray(params.means)
        model.covars_ = np.asarray(params.variances)
    model.startprob_ = np.asarray(params.initial)
    model.transmat_ = np.asarray(params.transition)
    return model


@pytest.mark.parametrize("kind", ["categorical", "gaussian"])
def test_matches_hmmlearn(kind):
    params = random_categorical(7, k=4, m=6) if kind == "categorical" else random_gaussian(7, k=4)
    x = np.asarray(observations(params, 500, 7))
    model = hmmlearn_model(params)
    x2d = x[:, None] if x.ndim == 1 else x
    np.testing.assert_allclose(hmm.log_likelihood(params, x), model.score(x2d), rtol=1e-6)
    np.testing.assert_allclose(hmm.posterior(params, x).smoothed, model.predict_proba(x2d), atol=1e-8)
    log_prob, path = model.decode(x2d, algorithm="viterbi")
    vit = hmm.viterbi(params, x)
    # Discrete data produce exact ties (…3, 0, 3, 3… scores the same as …3, 3, 0, 3… when
    # both middle steps emit the same symbol), so compare scores, then the paths loosely.
    np.testing.assert_allclose(path_score(params, x, np.asarray(vit.path)), log_prob, rtol=1e-10)
    np.testing.assert_allclose(vit.log_prob, log_prob, rtol=1e-10)
    assert np.mean(np.asarray(vit.path) == path) > 0.98


def test_million_steps_neither_underflow_nor_overflow():
    """T = 10^6: the scaled forward pass and the shifted Viterbi stay finite and exact."""
    params = random_categorical(8, k=3, m=4, concentration=2.0)
    x = np.asarray(observations(params, 1_000_000, 8))
    model = hmmlearn_model(params)
    ours = float(hmm.log_likelihood(params, x))
    assert np.isfinite(ours) and ours < -1e5
    np.testing.assert_allclose(ours, model.score(x[:, None]), rtol=1e-6)
    vit64 = hmm.viterbi(params, x)
    best, _ = model.decode(x[:, None])
    np.testing.assert_allclose(path_score(params, x, np.asarray(vit64.path)), best, rtol=1e-10)
    # float32: same log-likelihood to float32 accuracy, and Viterbi still decodes exactly
    # (the per-step shift keeps δ near 0, so paths that differ a little stay apart).
    p32 = hmm.CategoricalHMM(*(jnp.asarray(a, jnp.float32) for a in params))
    ll32 = hmm.log_likelihood(p32, x)
    assert ll32.dtype == jnp.float32 and np.isfinite(float(ll32))
    np.testing.assert_allclose(float(ll32), ours, rtol=1e-4)
    agree = np.mean(np.asarray(hmm.viterbi(p32, x).path) == np.asarray(vit64.path))
    assert agree > 0.999


def test_gaussian_with_huge_log_densities_does_not_overflow():
    params = random_gaussian(9, k=3, d=1)._replace(variances=np.full((3, 1), 1e-6))
    x = np.asarray(observations(params, 2000, 9))
    ours = hmm.log_likelihood(params, x)
    np.testing.assert_allclose(ours, hmmlearn_model(params).score(x), rtol=1e-6)


def test_one_baum_welch_step_matches_hmmlearn():
    params = random_categorical(10, k=3, m=5)
    x = np.asarray(observations(params, 400, 10))
    model = hmmlearn_model(params)
    model.n_iter, model.init_params, model.params = 1, "", "ste"
    model.fit(x[:, None])
    new, _ = hmm.em_step(params, jnp.asarray(x)[None], jnp.array([len(x)]))
    np.testing.assert_allclose(new.initial, model.startprob_, atol=1e-8)
    np.testing.assert_allclose(new.transition, model.transmat_, atol=1e-8)
    np.testing.assert_allclose(new.emission, model.emissionprob_, atol=1e-8)


# --------------------------------------------------------------------------- gradients


def test_gradient_of_log_likelihood_is_the_smoothed_posterior():
    """∂ log p(x) / ∂ log p(x_t | z_t = k) = p(z_t = k | x): autodiff through the scaled
    forward pass reproduces forward-backward."""
    params = random_gaussian(11, k=3, d=2)
    x = observations(params, 50, 11)
    ll = hmm.emission_log_likelihoods(params, x)
    grad = jax.grad(hmm.forward_log_likelihood, argnums=2)(params.initial, params.transition, ll)
    np.testing.assert_allclose(grad, hmm.posterior(params, x).smoothed, atol=1e-10)


def test_gradient_wrt_parameters_matches_finite_differences():
    params = random_categorical(12)
    x = observations(params, 30, 12)

    def loss(logits):
        return hmm.forward_log_likelihood(params.initial, jax.nn.softmax(logits, axis=1),
                                          hmm.emission_log_likelihoods(params, x))

    logits = jnp.log(jnp.asarray(params.transition))
    grad = jax.grad(loss)(logits)
    eps = 1e-6
    for i, j in [(0, 0), (1, 2), (2, 1)]:
        bump = jnp.zeros_like(logits).at[i, j].set(eps)
        fd = (loss(logits + bump) - loss(logits - bump)) / (2 * eps)
        np.testing.assert_allclose(grad[i, j], fd, rtol=1e-5, atol=1e-8)


# --------------------------------------------------------------------------- padding, compilation


def test_padded_batch_equals_each_sequence_alone():
    params = random_categorical(13)
    lengths = [1, 12]
    seqs = [np.asarray(observations(params, n, 100 + n)) for n in lengths]
    batch = np.zeros((len(seqs), 12), np.int32)
    for i, s in enumerate(seqs):
        batch[i, : len(s)] = s
    lengths = np.array(lengths)
    ll = hmm.log_likelihood(params, batch, lengths)
    post = hmm.posterior(params, batch, lengths)
    vit = hmm.viterbi(params, batch, lengths)
    vit_par = hmm.viterbi(params, batch, lengths, parallel=True)
    fwd_par = hmm.forward(params, batch, lengths, parallel=True)
    for i, s in enumerate(seqs):
        n = len(s)
        np.testing.assert_allclose(ll[i], hmm.log_likelihood(params, s), rtol=1e-12)
        np.testing.assert_allclose(fwd_par.log_likelihood[i], ll[i], rtol=1e-12)
        alone = hmm.posterior(params, s)
        np.testing.assert_allclose(post.smoothed[i, :n], alone.smoothed, atol=1e-12)
        np.testing.assert_allclose(post.transition_counts[i], alone.transition_counts, atol=1e-12)
        np.testing.assert_array_equal(vit.path[i, :n], hmm.viterbi(params, s).path)
        np.testing.assert_array_equal(vit_par.path[i, :n], vit.path[i, :n])
        np.testing.assert_allclose(vit.log_prob[i], hmm.viterbi(params, s).log_prob, rtol=1e-12)


def test_padded_gaussian_batch():
    params = random_gaussian(14, k=2, d=1)
    a, b = np.asarray(observations(params, 7, 1)), np.asarray(observations(params, 4, 2))
    batch = np.zeros((2, 7, 1))
    batch[0], batch[1, :4] = a, b
    ll = hmm.log_likelihood(params, batch, np.array([7, 4]))
    np.testing.assert_allclose(ll, [hmm.log_likelihood(params, a), hmm.log_likelihood(params, b)],
                               rtol=1e-12)


def test_changing_lengths_does_not_recompile():
    params = random_categorical(15)
    batch = np.asarray(observations(params, 64, 15)).reshape(4, 16)
    calls = [(hmm.log_likelihood, hmm._log_likelihood), (hmm.viterbi, hmm._viterbi),
             (hmm.posterior, hmm._posterior)]
    for public, jitted in calls:
        public(params, batch, np.array([16, 16, 16, 16]))
        before = jitted._cache_size()
        for lengths in ([3, 7, 16, 1], [10, 2, 5, 16], [16, 15, 14, 13]):
            public(params, batch, np.array(lengths))
        assert jitted._cache_size() == before, public.__name__
    hmm.baum_welch(params, batch, np.array([16, 8, 4, 2]), num_iters=2)
    before = hmm.em_step._cache_size()
    hmm.baum_welch(params, batch, np.array([5, 6, 7, 8]), num_iters=2)
    assert hmm.em_step._cache_size() == before


# --------------------------------------------------------------------------- Baum-Welch


@settings(max_examples=10, deadline=None)
@given(seed=st.integers(0, 10_000), gaussian=st.booleans(),
       lengths=st.lists(st.integers(1, 40), min_size=3, max_size=3))
def test_baum_welch_never_lowers_the_likelihood(seed, gaussian, lengths):
    # Shapes are fixed (K, M, N, T_max) so that examples share one compilation; the
    # parameters, the data and the true lengths vary.
    k, m = 3, 4
    with jax.enable_x64(True):
        truth = random_gaussian(seed, k=k, d=1) if gaussian else random_categorical(seed, k=k, m=m)
        start = random_gaussian(seed + 1, k=k, d=1) if gaussian else random_categorical(seed + 1, k=k, m=m)
        t_max = 40
        data = np.stack([np.asarray(observations(truth, t_max, seed + i)) for i in range(3)])
        lengths = np.array(lengths)
        result = hmm.baum_welch(start, data, lengths, num_iters=15)
        lls = result.log_likelihoods
        slack = 1e-8 * np.maximum(1.0, np.abs(lls))          # rounding only
        assert np.all(np.diff(lls) >= -slack[:-1]), lls
        final = float(jnp.sum(hmm.log_likelihood(result.params, data, lengths)))
        assert final >= lls[-1] - slack[-1]
        hmm.validate(result.params)   # still valid distributions


def test_baum_welch_recovers_a_well_separated_model():
    truth = hmm.CategoricalHMM(np.array([0.5, 0.5]), np.array([[0.95, 0.05], [0.1, 0.9]]),
                               np.array([[0.8, 0.15, 0.05], [0.05, 0.15, 0.8]]))
    data = np.stack([np.asarray(observations(truth, 500, s)) for s in range(8)])
    start = hmm.CategoricalHMM(np.array([0.5, 0.5]), np.array([[0.7, 0.3], [0.3, 0.7]]),
                               np.array([[0.5, 0.3, 0.2], [0.2, 0.3, 0.5]]))
    fit = hmm.baum_welch(start, data, num_iters=100, tol=1e-9).params
    np.testing.assert_allclose(fit.transition, truth.transition, atol=0.03)
    np.testing.assert_allclose(fit.emission, truth.emission, atol=0.03)


# --------------------------------------------------------------------------- sampling, chains


def test_sample_frequencies_match_the_parameters():
    params = random_categorical(16, k=3, m=4, concentration=3.0)
    n = 200_000
    s = hmm.sample(jax.random.key(0), params, n)
    z, x = np.asarray(s.states), np.asarray(s.observations)
    counts = np.zeros((3, 3))
    np.add.at(counts, (z[:-1], z[1:]), 1)
    np.testing.assert_allclose(counts / counts.sum(1, keepdims=True), params.transition, atol=0.01)
    emit = np.zeros((3, 4))
    np.add.at(emit, (z, x), 1)
    np.testing.assert_allclose(emit / emit.sum(1, keepdims=True), params.emission, atol=0.01)
    np.testing.assert_allclose(np.bincount(z, minlength=3) / n,
                               hmm.stationary_distribution(params.transition), atol=0.01)


def test_gaussian_sample_moments():
    params = hmm.GaussianHMM(np.array([1.0, 0.0]), np.array([[0.9, 0.1], [0.2, 0.8]]),
                             np.array([[-3.0], [4.0]]), np.array([[0.25], [4.0]]))
    s = hmm.sample(jax.random.key(1), params, 100_000)
    z, x = np.asarray(s.states), np.asarray(s.observations)[:, 0]
    assert z[0] == 0
    for k in range(2):
        np.testing.assert_allclose(x[z == k].mean(), params.means[k, 0], atol=0.05)
        np.testing.assert_allclose(x[z == k].var(), params.variances[k, 0], rtol=0.05)


def test_stationary_distribution_of_the_syllabus_chain():
    column_stochastic = np.array([[0.5, 0.1, 0.7], [0.3, 0.5, 0.2], [0.2, 0.4, 0.1]])
    a = column_stochastic.T
    pi = hmm.stationary_distribution(a)
    np.testing.assert_allclose(pi @ a, pi, atol=1e-12)
    np.testing.assert_allclose(pi.sum(), 1.0)
    np.testing.assert_allclose(pi, np.linalg.matrix_power(a, 200)[0], atol=1e-10)
    with pytest.raises(ValueError, match="transition"):
        hmm.stationary_distribution(column_stochastic)


def test_float32_in_float32_out():
    params = hmm.CategoricalHMM(*(jnp.asarray(p, jnp.float32) for p in random_categorical(17)))
    x = observations(params, 20, 0)
    assert hmm.log_likelihood(params, x).dtype == jnp.float32
    assert hmm.posterior(params, x).smoothed.dtype == jnp.float32
    assert hmm.forward(params, x, parallel=True).filtered.dtype == jnp.float32


# --------------------------------------------------------------------------- bad input


GOOD = random_categorical(18)


@pytest.mark.parametrize("params, match", [
    (GOOD._replace(transition=np.array([[0.5, 0.6, 0.0], [0.3, 0.3, 0.4], [0.2, 0.2, 0.6]])),
     r"transition must sum to 1.*row 0"),
    (GOOD._replace(transition=np.array([[1.2, -0.2, 0.0], [0.3, 0.3, 0.4], [0.2, 0.2, 0.6]])),
     r"transition must have finite, non-negative"),
    (GOOD._replace(initial=np.array([0.5, 0.5, 0.5])), r"initial must sum to 1"),
    (GOOD._replace(initial=np.array([0.5, 0.5])), r"transition must have shape \(2, 2\)"),
    (GOOD._replace(emission=np.ones((2, 4)) / 4), r"emission must have shape \(K, M\) = \(3, M\)"),
    (GOOD._replace(emission=np.full((3, 4), 0.3)), r"emission must sum to 1"),
    (hmm.GaussianHMM(np.ones(2) / 2, np.eye(2), np.zeros((2, 1)), np.array([[1.0], [0.0]])),
     r"variances must be positive"),
    (hmm.GaussianHMM(np.ones(2) / 2, np.eye(2), np.zeros((2, 1)), np.ones((2, 2))),
     r"variances must have the shape of means"),
])
def test_bad_parameters_raise_clear_errors(params, match):
    with pytest.raises(ValueError, match=match):
        hmm.log_likelihood(params, np.array([0, 1, 0]) if isinstance(params, hmm.CategoricalHMM)
                           else np.zeros((3, params.means.shape[1])))


def test_bad_observations_raise_clear_errors():
    with pytest.raises(ValueError, match=r"symbols in \[0, 4\).*\[0, 4\]"):
        hmm.log_likelihood(GOOD, np.array([0, 1, 4]))
    with pytest.raises(ValueError, match=r"symbols in \[0, 4\)"):
        hmm.viterbi(GOOD, np.array([-1, 1, 2]))
    with pytest.raises(ValueError, match="integer symbols"):
        hmm.log_likelihood(GOOD, np.array([0.0, 1.0]))
    with pytest.raises(ValueError, match=r"lengths must lie in \[1, 3\]"):
        hmm.log_likelihood(GOOD, np.zeros((2, 3), np.int32), np.array([3, 4]))
    with pytest.raises(ValueError, match=r"lengths must have shape \(2,\)"):
        hmm.log_likelihood(GOOD, np.zeros((2, 3), np.int32), np.array([3]))
    gauss = random_gaussian(0, k=3, d=2)
    with pytest.raises(ValueError, match=r"observations must have shape \(T, D=2\)"):
        hmm.log_likelihood(gauss, np.zeros((5, 3)))
    with pytest.raises(ValueError, match="num_steps"):
        hmm.sample(jax.random.key(0), GOOD, 0)
    with pytest.raises(ValueError, match="CategoricalHMM or GaussianHMM"):
        hmm.log_likelihood((GOOD.initial, GOOD.transition), np.array([0]))


def test_padding_may_hold_any_symbol():
    """Only the valid part of a padded batch is range-checked (padding is never read)."""
    batch = np.array([[0, 1, 2, 99], [3, 2, 1, 0]])
    ll = hmm.log_likelihood(GOOD, batch, np.array([3, 4]))
    np.testing.assert_allclose(ll[0], hmm.log_likelihood(GOOD, np.array([0, 1, 2])), rtol=1e-12)
