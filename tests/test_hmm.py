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
    np.testing.assert_allclose(ours, model.score(x[:, None]), rtol=1e-6)
    vit64 = hmm.viterbi(params, x)
    best, _ = model.decode(x[:, None])
    # float64: the decoded path is optimal and log_prob is its exact log joint.
    score64 = path_score(params, x, np.asarray(vit64.path))     # NumPy's pairwise sum
    np.testing.assert_allclose(score64, best, rtol=1e-10)        # hmmlearn's running sum
    np.testing.assert_allclose(float(vit64.log_prob), score64, rtol=1e-13)
    # float32: the log-likelihood to float32 accuracy (the per-step terms are summed
    # pairwise, so the error does not grow like T * eps).
    p32 = hmm.CategoricalHMM(*(jnp.asarray(a, jnp.float32) for a in params))
    ll32 = hmm.log_likelihood(p32, x)
    assert ll32.dtype == jnp.float32
    np.testing.assert_allclose(float(ll32), ours, rtol=1e-5)
    # float32 Viterbi does not promise the float64 path: δ is rounded at every step, so two
    # paths whose scores differ by less than that rounding can swap. What it guarantees:
    # (1) the decoded path is optimal to within float32 rounding of its score, checked in
    #     float64 against the true optimum (|best| ~ 1.4e6 nats: 1e-6 relative is ~1.4 nats);
    # (2) log_prob is that path's own log joint, to float32 accuracy, with no drift
    #     (a running sum of per-step shifts was 0.2 % off at this T).
    vit32 = hmm.viterbi(p32, x)
    assert vit32.log_prob.dtype == jnp.float32
    score32 = path_score(params, x, np.asarray(vit32.path))
    assert best - 1e-6 * abs(best) <= score32 <= score64 + 1e-12 * abs(score64)
    np.testing.assert_allclose(float(vit32.log_prob), score32, rtol=1e-5)


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
    hmm.baum_welch(params, batch, np.array([16, 8, 4, 2]), max_iter=2)
    before = hmm._em_step._cache_size()
    hmm.baum_welch(params, batch, np.array([5, 6, 7, 8]), max_iter=2)
    assert hmm._em_step._cache_size() == before


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
        result = hmm.baum_welch(start, data, lengths, max_iter=15, tol=0)
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
    fit = hmm.baum_welch(start, data, max_iter=100, tol=1e-9).params
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
     r"transition must sum to 1 along axis -1; a sum is off by 0.1"),
    (GOOD._replace(transition=np.array([[1.2, -0.2, 0.0], [0.3, 0.3, 0.4], [0.2, 0.2, 0.6]])),
     r"transition must be non-negative \(probabilities\), got -0.2"),
    (GOOD._replace(emission=np.array([[np.nan, 0.5, 0.25, 0.25]] * 3)), r"emission contains NaN"),
    (GOOD._replace(initial=np.array(["a", "b", "c"])), r"initial must hold real numbers"),
    (GOOD._replace(initial=np.array([0.5, 0.5, 0.5])), r"initial must sum to 1"),
    (GOOD._replace(initial=np.array([0.5, 0.5])), r"transition must have shape \(2, 2\)"),
    (GOOD._replace(emission=np.ones((2, 4)) / 4), r"emission must have shape \(K, M\) = \(3, M\)"),
    (GOOD._replace(emission=np.full((3, 4), 0.3)), r"emission must sum to 1"),
    (hmm.GaussianHMM(np.ones(2) / 2, np.eye(2), np.zeros((2, 1)), np.array([[1.0], [0.0]])),
     r"variances must be positive"),
    (hmm.GaussianHMM(np.ones(2) / 2, np.eye(2), np.array([[np.inf], [0.0]]), np.ones((2, 1))),
     r"means contains NaN or infinite"),
    (hmm.GaussianHMM(np.ones(2) / 2, np.eye(2), np.zeros((2, 1)), np.array([[np.inf], [1.0]])),
     r"variances contains NaN or infinite"),
    (hmm.GaussianHMM(np.ones(2) / 2, np.eye(2), np.zeros((2, 1)), np.ones((2, 2))),
     r"variances must have the shape of means"),
])
def test_bad_parameters_raise_clear_errors(params, match):
    with pytest.raises(ValueError, match=match):
        hmm.log_likelihood(params, np.array([0, 1, 0]) if isinstance(params, hmm.CategoricalHMM)
                           else np.zeros((3, params.means.shape[1])))


def test_bad_observations_raise_clear_errors():
    with pytest.raises(ValueError, match=r"obs must lie in \[0, 4\) \(4 symbols.*got 4"):
        hmm.log_likelihood(GOOD, np.array([0, 1, 4]))
    with pytest.raises(ValueError, match=r"obs must lie in \[0, 4\).*got -1"):
        hmm.viterbi(GOOD, np.array([-1, 1, 2]))
    with pytest.raises(ValueError, match="obs must hold integer symbols"):
        hmm.log_likelihood(GOOD, np.array(["a", "b"]))
    with pytest.raises(ValueError, match="obs must hold integer symbols"):
        hmm.log_likelihood(GOOD, np.array([True, False]))
    with pytest.raises(ValueError, match="integer symbols"):
        hmm.log_likelihood(GOOD, np.array([0.0, 1.0]))
    with pytest.raises(ValueError, match=r"lengths must lie in \[1, 3\]"):
        hmm.log_likelihood(GOOD, np.zeros((2, 3), np.int32), np.array([3, 4]))
    with pytest.raises(ValueError, match=r"lengths must have shape \(2,\)"):
        hmm.log_likelihood(GOOD, np.zeros((2, 3), np.int32), np.array([3]))
    gauss = random_gaussian(0, k=3, d=2)
    with pytest.raises(ValueError, match=r"obs must have shape \(T, D=2\)"):
        hmm.log_likelihood(gauss, np.zeros((5, 3)))
    with pytest.raises(ValueError, match="obs must hold real numbers"):
        hmm.log_likelihood(gauss, np.array([["a", "b"]], dtype=object))
    with pytest.raises(ValueError, match="CategoricalHMM or GaussianHMM"):
        hmm.log_likelihood((GOOD.initial, GOOD.transition), np.array([0]))


def test_padding_may_hold_any_symbol():
    """Only the valid part of a padded batch is range-checked (padding is never read)."""
    batch = np.array([[0, 1, 2, 99], [3, 2, 1, 0]])
    ll = hmm.log_likelihood(GOOD, batch, np.array([3, 4]))
    np.testing.assert_allclose(ll[0], hmm.log_likelihood(GOOD, np.array([0, 1, 2])), rtol=1e-12)


# --------------------------------------------------------------------------- Viterbi with ties


def brute_best_score(params, obs):
    return brute_force(params, obs)[5]


def test_parallel_viterbi_does_not_splice_tied_paths():
    """Two states that alternate, uninformative emissions: exactly two optimal paths,
    0101... and 1010.... Choosing each step's state on its own (argmax of forward + backward
    scores, ties to state 0) gave 00000000, 8 · log(0.1/0.9) below the optimum."""
    params = hmm.CategoricalHMM(np.array([0.5, 0.5]), np.array([[0.1, 0.9], [0.9, 0.1]]),
                                np.array([[0.5, 0.5], [0.5, 0.5]]))
    x = np.array([0, 1, 1, 0, 1, 0, 0, 1])
    best = brute_best_score(params, x)
    for parallel in (False, True):
        vit = hmm.viterbi(params, x, parallel=parallel)
        path = np.asarray(vit.path)
        assert np.all(path[1:] != path[:-1]), (parallel, path)          # it alternates
        np.testing.assert_allclose(path_score(params, x, path), best, rtol=1e-12)
        np.testing.assert_allclose(float(vit.log_prob), best, rtol=1e-12)


def tied_categorical(seed, k, m):
    """Rows that are permutations of one vector, a uniform start: many exactly tied paths."""
    rng = np.random.default_rng(seed)
    row_a = rng.choice([0.1, 0.2, 0.3, 0.4], size=k)
    row_b = rng.choice([0.25, 0.5], size=m)
    return hmm.CategoricalHMM(
        np.full(k, 1.0 / k),
        np.stack([rng.permutation(row_a) for _ in range(k)]) / row_a.sum(),
        np.stack([rng.permutation(row_b) for _ in range(k)]) / row_b.sum())


@pytest.mark.parametrize("seed", range(12))
def test_viterbi_with_many_ties_is_a_map_path(seed):
    rng = np.random.default_rng(1000 + seed)
    k, m, t_len = int(rng.integers(2, 4)), int(rng.integers(2, 4)), int(rng.integers(5, 9))
    params = tied_categorical(seed, k, m)
    x = rng.integers(0, m, size=t_len)
    best = brute_best_score(params, x)
    seq = hmm.viterbi(params, x)
    par = hmm.viterbi(params, x, parallel=True)
    for vit in (seq, par):
        np.testing.assert_allclose(path_score(params, x, np.asarray(vit.path)), best, rtol=1e-12)
        np.testing.assert_allclose(float(vit.log_prob), best, rtol=1e-12)
    low = hmm.viterbi_parallel(params.initial, params.transition,
                               jnp.asarray(emission_logpdf_np(params, x)))
    np.testing.assert_allclose(path_score(params, x, np.asarray(low.path)), best, rtol=1e-12)


def test_parallel_viterbi_on_a_long_sequence_with_ties():
    """T = 10^5 with many ties: the parallel path scores exactly what the sequential one does
    (splicing tied paths cost 7.9 nats at T = 5000)."""
    params = tied_categorical(3, 3, 3)
    x = np.random.default_rng(3).integers(0, 3, size=100_000)
    seq = hmm.viterbi(params, x)
    par = hmm.viterbi(params, x, parallel=True)
    seq_score = path_score(params, x, np.asarray(seq.path))
    par_score = path_score(params, x, np.asarray(par.path))
    np.testing.assert_allclose(par_score, seq_score, rtol=1e-12)
    np.testing.assert_allclose(float(par.log_prob), par_score, rtol=1e-12)
    np.testing.assert_allclose(float(seq.log_prob), seq_score, rtol=1e-12)


def test_padded_parallel_viterbi_with_ties():
    params = tied_categorical(5, 3, 2)
    x = np.random.default_rng(5).integers(0, 2, size=(3, 8))
    lengths = np.array([8, 5, 1])
    par = hmm.viterbi(params, x, lengths, parallel=True)
    for i, n in enumerate(lengths):
        best = brute_best_score(params, x[i, :n])
        np.testing.assert_allclose(path_score(params, x[i, :n], np.asarray(par.path[i, :n])), best,
                                   rtol=1e-12)
        np.testing.assert_allclose(float(par.log_prob[i]), best, rtol=1e-12)
        assert np.all(np.asarray(par.path[i, n:]) == int(par.path[i, n - 1]))   # repeats the last


# --------------------------------------------------------------------------- impossible data, NaN


def test_symbol_absent_from_training_gives_minus_inf_not_nan():
    """After Baum-Welch on data without symbol 2, B[:, 2] = 0: held-out data with a 2 have
    probability 0 (log-likelihood -inf), and Baum-Welch refuses to continue from there."""
    truth = hmm.CategoricalHMM(np.array([0.5, 0.5]), np.array([[0.9, 0.1], [0.2, 0.8]]),
                               np.array([[0.7, 0.3, 0.0], [0.2, 0.8, 0.0]]))
    train = np.stack([np.asarray(observations(truth, 200, s)) for s in range(3)])
    start = hmm.CategoricalHMM(np.array([0.5, 0.5]), np.array([[0.8, 0.2], [0.3, 0.7]]),
                               np.array([[0.5, 0.3, 0.2], [0.2, 0.5, 0.3]]))
    fit = hmm.baum_welch(start, train, max_iter=5).params
    assert np.all(np.asarray(fit.emission)[:, 2] == 0)
    held_out = np.array([0, 1, 2, 1, 0])
    batch = np.stack([held_out, np.array([0, 1, 1, 1, 0])])
    for dtype in (jnp.float64, jnp.float32):
        p = hmm.CategoricalHMM(*(jnp.asarray(a, dtype) for a in fit))
        assert float(hmm.log_likelihood(p, held_out)) == -np.inf
        both = np.asarray(hmm.log_likelihood(p, batch))
        assert both[0] == -np.inf and np.isfinite(both[1])
        assert float(hmm.forward(p, held_out).log_likelihood) == -np.inf
        assert float(hmm.forward(p, held_out, parallel=True).log_likelihood) == -np.inf
        assert float(hmm.posterior(p, held_out).log_likelihood) == -np.inf
        assert float(hmm.viterbi(p, held_out).log_prob) == -np.inf
        assert float(hmm.viterbi(p, held_out, parallel=True).log_prob) == -np.inf
        ll = hmm.emission_log_likelihoods(p, held_out)
        assert float(hmm.forward_log_likelihood(p.initial, p.transition, ll)) == -np.inf
    with pytest.raises(ValueError, match="impossible"):
        hmm.baum_welch(fit, batch)
    with pytest.raises(ValueError, match="impossible"):
        hmm.em_step(fit, batch)


def nan_padded_gaussian_batch():
    params = random_gaussian(20, k=2, d=2)
    a, b = np.asarray(observations(params, 9, 1)), np.asarray(observations(params, 5, 2))
    batch = np.full((2, 9, 2), np.nan)
    batch[0], batch[1, :5] = a, b
    return params, batch, np.array([9, 5])


def test_nan_padding_reaches_neither_gradients_nor_the_m_step():
    params, batch, lengths = nan_padded_gaussian_batch()
    zero_padded = np.nan_to_num(batch, nan=0.0)

    def loss(means, x):
        return jnp.sum(hmm.log_likelihood(params._replace(means=means), x, lengths))

    means = jnp.asarray(params.means)
    grad_nan = jax.grad(loss)(means, batch)
    assert np.all(np.isfinite(np.asarray(grad_nan)))
    np.testing.assert_allclose(grad_nan, jax.grad(loss)(means, zero_padded), rtol=1e-12)
    new_nan, ll_nan = hmm.em_step(params, batch, lengths)
    new_zero, ll_zero = hmm.em_step(params, zero_padded + 1e3 * np.isnan(batch), lengths)
    for got, want in zip(new_nan, new_zero):
        assert np.all(np.isfinite(np.asarray(got)))
        np.testing.assert_allclose(got, want, rtol=1e-12)
    np.testing.assert_allclose(ll_nan, ll_zero, rtol=1e-12)
    post = hmm.posterior(params, batch, lengths)
    assert np.all(np.isfinite(np.asarray(post.smoothed)))
    assert np.all(np.isfinite(np.asarray(hmm.viterbi(params, batch, lengths, parallel=True).log_prob)))


def test_gaussian_m_step_on_a_nan_padded_batch_matches_hmmlearn():
    from hmmlearn import hmm as hl

    params, batch, lengths = nan_padded_gaussian_batch()
    model = hl.GaussianHMM(n_components=2, covariance_type="diag", n_iter=1, init_params="",
                           params="stmc", implementation="scaling", covars_prior=0.0,
                           min_covar=1e-12)
    model.startprob_, model.transmat_ = np.asarray(params.initial), np.asarray(params.transition)
    model.means_, model.covars_ = np.asarray(params.means), np.asarray(params.variances)
    model.fit(np.concatenate([batch[0], batch[1, :5]]), lengths)
    new, _ = hmm.em_step(params, batch, lengths, min_variance=1e-12)
    np.testing.assert_allclose(new.initial, model.startprob_, atol=1e-10)
    np.testing.assert_allclose(new.transition, model.transmat_, atol=1e-10)
    np.testing.assert_allclose(new.means, model.means_, atol=1e-10)
    np.testing.assert_allclose(new.variances, np.asarray(model.covars_)[:, np.arange(2), np.arange(2)]
                               if np.ndim(model.covars_) == 3 else model.covars_, atol=1e-8)


def test_gaussian_nan_observations_raise():
    params, batch, lengths = nan_padded_gaussian_batch()
    bad = batch.copy()
    bad[1, 2, 0] = np.nan                     # inside the valid part of sequence 1
    for fn in (hmm.log_likelihood, hmm.posterior, hmm.viterbi, hmm.forward):
        with pytest.raises(ValueError, match="obs contains NaN or infinite values at valid"):
            fn(params, bad, lengths)
    with pytest.raises(ValueError, match="obs contains NaN"):
        hmm.baum_welch(params, bad, lengths)
    with pytest.raises(ValueError, match="obs contains NaN"):
        hmm.log_likelihood(params, batch[0] * np.inf)


# --------------------------------------------------------------------------- low-level kernels


KERNELS = {
    "forward_log_likelihood": lambda i, a, ll, **kw: hmm.forward_log_likelihood(i, a, ll, **kw),
    "forward_filter": lambda i, a, ll, **kw: hmm.forward_filter(i, a, ll, **kw),
    "smooth": lambda i, a, ll, **kw: hmm.smooth(i, a, ll, **kw),
    "viterbi_path": lambda i, a, ll, **kw: hmm.viterbi_path(i, a, ll, **kw),
    "forward_filter_parallel": lambda i, a, ll, **kw: hmm.forward_filter_parallel(i, a, ll),
    "viterbi_parallel": lambda i, a, ll, **kw: hmm.viterbi_parallel(i, a, ll),
    "backward_messages": lambda i, a, ll, **kw: hmm.backward_messages(a, ll, **kw),
}
LOG_LIK = np.log(np.full((6, 3), 0.25))


@pytest.mark.parametrize("name", sorted(KERNELS))
@pytest.mark.parametrize("initial, transition, log_lik, match", [
    (GOOD.initial, GOOD.transition[:2, :2], LOG_LIK, r"transition must have shape \(3, 3\)"),
    (GOOD.initial, GOOD.transition * 2, LOG_LIK, r"transition must sum to 1"),
    (GOOD.initial, GOOD.transition, LOG_LIK[:, :2], r"transition must have shape \(2, 2\)"),
    (GOOD.initial, GOOD.transition, np.where(np.eye(6, 3) > 0, np.nan, LOG_LIK), r"log_lik .*NaN"),
    (GOOD.initial, GOOD.transition, np.where(np.eye(6, 3) > 0, np.inf, LOG_LIK), r"log_lik .*\+inf"),
    (GOOD.initial, GOOD.transition, LOG_LIK[0], r"log_lik must be"),
    (GOOD.initial, GOOD.transition, np.full((6, 3), "x"), r"log_lik must hold real numbers"),
    (GOOD.initial, GOOD.transition, np.zeros((0, 3)), r"log_lik must have at least one time step"),
])
def test_kernels_name_the_bad_argument(name, initial, transition, log_lik, match):
    with pytest.raises(ValueError, match=match):
        KERNELS[name](initial, transition, log_lik)


@pytest.mark.parametrize("name", ["forward_log_likelihood", "forward_filter", "smooth",
                                  "viterbi_path", "forward_filter_parallel", "viterbi_parallel"])
def test_kernels_check_the_initial_distribution(name):
    with pytest.raises(ValueError, match=r"initial must have shape \(3,\)"):
        KERNELS[name](GOOD.initial[:2] / GOOD.initial[:2].sum(), GOOD.transition, LOG_LIK)
    with pytest.raises(ValueError, match=r"initial must be non-negative"):
        KERNELS[name](np.array([1.5, -0.5, 0.0]), GOOD.transition, LOG_LIK)


def test_kernel_options_are_checked():
    with pytest.raises(ValueError, match="unroll must be an integer"):
        hmm.forward_filter(GOOD.initial, GOOD.transition, LOG_LIK, unroll=True)
    with pytest.raises(ValueError, match="unroll must be an integer >= 1"):
        hmm.viterbi_path(GOOD.initial, GOOD.transition, LOG_LIK, unroll=0)
    with pytest.raises(ValueError, match=r"length must lie in \[1, 6\]"):
        hmm.viterbi_path(GOOD.initial, GOOD.transition, LOG_LIK, 7)
    with pytest.raises(ValueError, match=r"length must lie in \[1, 6\]"):
        hmm.viterbi_parallel(GOOD.initial, GOOD.transition, LOG_LIK, 0)
    with pytest.raises(ValueError, match="length must be an integer"):
        hmm.viterbi_parallel(GOOD.initial, GOOD.transition, LOG_LIK, 2.5)
    with pytest.raises(ValueError, match=r"valid_transitions must have shape \(5,\)"):
        hmm.smooth(GOOD.initial, GOOD.transition, LOG_LIK, np.ones(6, bool))
    with pytest.raises(ValueError, match="valid_transitions must be booleans"):
        hmm.smooth(GOOD.initial, GOOD.transition, LOG_LIK, np.ones(5))
    # -inf (probability 0) is a valid log-likelihood
    ll = LOG_LIK.copy()
    ll[2, 0] = -np.inf
    assert np.isfinite(float(hmm.forward_log_likelihood(GOOD.initial, GOOD.transition, ll)))


# --------------------------------------------------------------------------- API conventions


def test_public_api():
    assert set(hmm.__all__) <= set(dir(hmm))
    for name in ("forward_filter", "smooth", "viterbi_path", "forward_filter_parallel",
                 "viterbi_parallel", "em_step", "sample", "baum_welch", "log_likelihood",
                 "posterior", "viterbi", "forward", "backward_messages", "emission_log_likelihoods"):
        assert name in hmm.__all__
    assert not any(name.startswith("_") for name in hmm.__all__)


@pytest.mark.parametrize("length, match", [
    (2.7, "length must be an integer"), (True, "length must be an integer"),
    (0, "length must be an integer >= 1"), (np.float64(3.0), "length must be an integer"),
])
def test_sample_refuses_bad_lengths(length, match):
    with pytest.raises(ValueError, match=match):
        hmm.sample(jax.random.key(0), GOOD, length)


def test_sample_checks_its_key_and_params():
    with pytest.raises(ValueError, match="key must be (one|a) PRNG key"):
        hmm.sample(0, GOOD, 5)
    with pytest.raises(ValueError, match="initial must sum to 1"):
        hmm.sample(jax.random.key(0), GOOD._replace(initial=np.array([0.5, 0.5, 0.5])), 5)
    assert hmm.sample(jax.random.key(0), GOOD, np.int64(4)).states.shape == (4,)


@pytest.mark.parametrize("kwargs, match", [
    (dict(max_iter=2.7), "max_iter must be an integer"), (dict(max_iter=True), "max_iter must be an integer"),
    (dict(max_iter=0), "max_iter must be an integer >= 1"), (dict(tol=-1e-3), "tol must be >= 0"),
    (dict(tol=np.nan), "tol must be finite"), (dict(min_variance=0.0), "min_variance must be > 0"),
    (dict(progress="yes"), "progress must be True or False"),
])
def test_baum_welch_refuses_bad_options(kwargs, match):
    with pytest.raises(ValueError, match=match):
        hmm.baum_welch(GOOD, np.array([0, 1, 2, 3]), **kwargs)


def test_em_step_validates_its_arguments():
    with pytest.raises(ValueError, match=r"obs must lie in \[0, 4\)"):
        hmm.em_step(GOOD, np.array([[0, 1, 9]]), np.array([3]))
    with pytest.raises(ValueError, match=r"lengths must have shape \(1,\)"):
        hmm.em_step(GOOD, np.array([[0, 1, 2]]), np.array([3, 3]))
    with pytest.raises(ValueError, match="transition must sum to 1"):
        hmm.em_step(GOOD._replace(transition=GOOD.transition * 2), np.array([[0, 1, 2]]))
    with pytest.raises(ValueError, match="min_variance must be > 0"):
        hmm.em_step(random_gaussian(0), np.zeros((1, 4, 2)), min_variance=-1.0)


def test_tol_is_the_change_of_the_mean_log_likelihood_per_time_step():
    truth = random_categorical(21, k=2, m=3)
    data = np.stack([np.asarray(observations(truth, 300, s)) for s in range(4)])
    lengths = np.array([300, 250, 200, 100])
    start = random_categorical(22, k=2, m=3)
    exact = hmm.baum_welch(start, data, lengths, max_iter=25, tol=0)
    assert len(exact.log_likelihoods) == 25
    per_step = np.diff(exact.log_likelihoods) / lengths.sum()
    tol = float(np.abs(per_step[5]) * 1.0001)     # the first change below tol comes at or after 6
    early = hmm.baum_welch(start, data, lengths, max_iter=25, tol=tol)
    stop = int(np.argmax(np.abs(per_step) < tol)) + 2     # iterations run when it stops
    assert len(early.log_likelihoods) == stop
    np.testing.assert_allclose(early.log_likelihoods, exact.log_likelihoods[:stop], rtol=1e-12)
