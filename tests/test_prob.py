"""Oracles for course_lib.prob: scipy densities, closed forms against Monte Carlo, sklearn QDA,
Bayesian networks against brute-force loops over every assignment."""
import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings, strategies as st
from scipy import stats

from course_lib import prob


def random_spd(rng, d):
    a = rng.normal(size=(d, d))
    return a @ a.T + d * np.eye(d)


@given(d=st.integers(1, 5), seed=st.integers(0, 10_000))
@settings(max_examples=25, deadline=None)
def test_logpdf_matches_scipy(d, seed):
    rng = np.random.default_rng(seed)
    mean, cov = rng.normal(size=d), random_spd(rng, d)
    x = rng.normal(size=(7, d)) * 3
    ours = prob.gaussian_logpdf(jnp.asarray(mean, jnp.float32), jnp.asarray(cov, jnp.float32),
                                jnp.asarray(x, jnp.float32))
    np.testing.assert_allclose(ours, stats.multivariate_normal(mean, cov).logpdf(x).reshape(7),
                               rtol=1e-4, atol=1e-4)


def test_logpdf_gradient_is_score():
    # d/dx log N(x | μ, Σ) = -Σ^{-1} (x - μ): a closed form for the gradient.
    mean = jnp.array([0.5, -1.0])
    cov = jnp.array([[2.0, 0.3], [0.3, 1.0]])
    x = jnp.array([1.0, 2.0])
    grad = jax.grad(lambda v: prob.gaussian_logpdf(mean, cov, v))(x)
    np.testing.assert_allclose(grad, -jnp.linalg.solve(cov, x - mean), rtol=1e-5)


def test_sampling_moments_and_mle():
    mean = jnp.array([1.0, -2.0, 0.5])
    cov = jnp.asarray(random_spd(np.random.default_rng(1), 3), jnp.float32)
    x = prob.sample_gaussian(jax.random.key(0), mean, cov, 200_000)
    fit = prob.gaussian_mle(x)
    np.testing.assert_allclose(fit.mean, mean, atol=0.03)
    np.testing.assert_allclose(fit.cov, cov, rtol=0.03, atol=0.05)
    np.testing.assert_allclose(fit.cov, np.cov(np.asarray(x).T, bias=True), rtol=1e-3, atol=1e-3)


def test_kl_closed_form_against_monte_carlo_and_zero_for_equal():
    m0, m1 = jnp.array([0.0, 0.0]), jnp.array([1.0, -1.0])
    s0 = jnp.array([[1.0, 0.2], [0.2, 0.5]])
    s1 = jnp.array([[2.0, 0.0], [0.0, 1.0]])
    exact = prob.kl_gaussians(m0, s0, m1, s1)
    mc = prob.kl_monte_carlo(jax.random.key(3), m0, s0, m1, s1, 400_000)
    assert abs(float(exact) - float(mc)) < 0.01
    assert abs(float(prob.kl_gaussians(m0, s0, m0, s0))) < 1e-6
    # 1-D closed form: log(σ1/σ0) + (σ0² + (μ0-μ1)²)/(2σ1²) - 1/2
    one_d = prob.kl_gaussians(jnp.array([0.3]), jnp.array([[0.25]]), jnp.array([-1.0]), jnp.array([[4.0]]))
    expected = np.log(2.0 / 0.5) + (0.25 + 1.3**2) / (2 * 4.0) - 0.5
    np.testing.assert_allclose(one_d, expected, rtol=1e-5)


def test_classifier_matches_sklearn_qda():
    from sklearn.datasets import load_iris
    from sklearn.discriminant_analysis import QuadraticDiscriminantAnalysis

    x, y = load_iris(return_X_y=True)
    model = prob.fit_gaussian_classifier(jnp.asarray(x, jnp.float32), jnp.asarray(y), 3, reg=0.0)
    qda = QuadraticDiscriminantAnalysis(store_covariance=True).fit(x, y)
    post = prob.class_posterior(model, jnp.asarray(x, jnp.float32))
    np.testing.assert_allclose(post.sum(axis=1), 1.0, rtol=1e-5)
    np.testing.assert_array_equal(np.asarray(post.argmax(1)), qda.predict(x))
    # Ours are the maximum-likelihood covariances (1/n), numpy's bias=True.
    for c in range(3):
        np.testing.assert_allclose(model.covs[c], np.cov(x[y == c].T, bias=True), rtol=1e-4, atol=1e-5)


def test_sample_labelled_follows_the_model():
    model = prob.GaussianClassifier(
        jnp.log(jnp.array([0.2, 0.8])), jnp.array([[-3.0, 0.0], [3.0, 1.0]]),
        jnp.stack([jnp.eye(2), 0.5 * jnp.eye(2)]))
    x, y = prob.sample_labelled(jax.random.key(0), model, 200_000)
    assert abs(float(y.mean()) - 0.8) < 0.01
    np.testing.assert_allclose(x[y == 1].mean(0), [3.0, 1.0], atol=0.02)
    np.testing.assert_allclose(jnp.var(x[y == 0], axis=0), [1.0, 1.0], rtol=0.04)


NOT_PD = np.array([[1.0, 2.0], [2.0, 1.0]])          # symmetric, eigenvalues 3 and -1
NAN_COV = np.array([[1.0, np.nan], [np.nan, 1.0]])
ASYM = np.array([[1.0, 0.5], [0.0, 1.0]])
KEY = jax.random.key(0)
CLF = prob.GaussianClassifier(jnp.log(jnp.array([0.5, 0.5])), jnp.zeros((2, 2)), jnp.stack([jnp.eye(2)] * 2))
XS = np.random.default_rng(0).normal(size=(6, 2))
YS = np.array([0, 1, 0, 1, 0, 1])


@pytest.mark.parametrize("call, match", [
    (lambda: prob.gaussian_logpdf(jnp.zeros(2), jnp.eye(3), jnp.zeros((3, 2))), "cov must have shape"),
    (lambda: prob.gaussian_logpdf(jnp.zeros(2), jnp.eye(2), jnp.zeros((3, 4))), "x must end in D=2"),
    (lambda: prob.gaussian_logpdf(jnp.zeros(2), NOT_PD, jnp.zeros(2)), "cov must be positive definite"),
    (lambda: prob.gaussian_logpdf(jnp.zeros(2), NAN_COV, jnp.zeros(2)), "cov contains NaN"),
    (lambda: prob.gaussian_logpdf(jnp.zeros(2), ASYM, jnp.zeros(2)), "cov must be symmetric"),
    (lambda: prob.gaussian_logpdf(jnp.array([0.0, np.inf]), jnp.eye(2), jnp.zeros(2)), "mean contains NaN"),
    (lambda: prob.gaussian_logpdf(jnp.zeros(2), jnp.eye(2), jnp.array([np.nan, 0.0])), "x contains NaN"),
    (lambda: prob.gaussian_logpdf(np.array(["a", "b"]), jnp.eye(2), jnp.zeros(2)), "mean must hold real numbers"),
    (lambda: prob.gaussian_logpdf(jnp.zeros((2, 2)), jnp.eye(2), jnp.zeros(2)), "mean must be 1-D"),
    (lambda: prob.sample_gaussian(KEY, jnp.zeros(2), NOT_PD, 5), "cov must be positive definite"),
    (lambda: prob.sample_gaussian(KEY, jnp.zeros(2), NAN_COV, 5), "cov contains NaN"),
    (lambda: prob.sample_gaussian(KEY, jnp.zeros(2), jnp.eye(2), True), "n must be an integer"),
    (lambda: prob.sample_gaussian(KEY, jnp.zeros(2), jnp.eye(2), 2.7), "n must be an integer"),
    (lambda: prob.sample_gaussian(KEY, jnp.zeros(2), jnp.eye(2), 0), "n must be an integer >= 1"),
    (lambda: prob.kl_gaussians(jnp.zeros(2), NOT_PD, jnp.zeros(2), jnp.eye(2)), "cov0 must be positive definite"),
    (lambda: prob.kl_gaussians(jnp.zeros(2), jnp.eye(2), jnp.zeros(2), NOT_PD), "cov1 must be positive definite"),
    (lambda: prob.kl_gaussians(jnp.zeros(2), jnp.eye(2), jnp.zeros(2), NAN_COV), "cov1 contains NaN"),
    (lambda: prob.kl_gaussians(jnp.zeros(2), jnp.eye(2), jnp.zeros(3), jnp.eye(3)), "same shape"),
    (lambda: prob.kl_monte_carlo(KEY, jnp.zeros(2), jnp.eye(2), jnp.zeros(2), NOT_PD, 10), "cov1 must be positive"),
    (lambda: prob.kl_monte_carlo(KEY, jnp.zeros(2), jnp.eye(2), jnp.zeros(2), jnp.eye(2), True), "n must be"),
    (lambda: prob.gaussian_mle(jnp.zeros(5)), "x must be 2-D"),
    (lambda: prob.gaussian_mle(jnp.zeros((0, 2))), "x must have shape"),
    (lambda: prob.gaussian_mle(np.array([[1.0, np.nan]])), "x contains NaN"),
    (lambda: prob.fit_gaussian_classifier(jnp.zeros((4, 2)), jnp.array([0, 0, 1, 1]), 3), "every class"),
    (lambda: prob.fit_gaussian_classifier(jnp.zeros((4, 2)), jnp.array([0, 1]), 2), "y must have shape"),
    (lambda: prob.fit_gaussian_classifier(XS, np.array([0, 1, 0, 1, 0, 2]), 2), r"y must lie in \[0, 2\)"),
    (lambda: prob.fit_gaussian_classifier(XS, np.array([0, 1, 0, 1, 0, -1]), 2), r"y must lie in \[0, 2\)"),
    (lambda: prob.fit_gaussian_classifier(XS, YS, 0), "num_classes must be an integer >= 1"),
    (lambda: prob.fit_gaussian_classifier(XS, YS, True), "num_classes must be an integer"),
    (lambda: prob.fit_gaussian_classifier(XS, YS.astype(float), 2), "y must hold integer"),
    (lambda: prob.fit_gaussian_classifier(XS, YS, 2, reg=-1.0), "reg must be >= 0"),
    (lambda: prob.fit_gaussian_classifier(XS, YS, 2, reg=float("nan")), "reg must be finite"),
    (lambda: prob.fit_gaussian_classifier(XS[:4], YS[:4], 2, reg=0.0), "reg=0 leaves a class covariance"),
    (lambda: prob.fit_gaussian_classifier(np.where(XS > 1, np.nan, XS), YS, 2), "x contains NaN"),
    (lambda: prob.class_posterior(CLF._replace(covs=jnp.stack([NOT_PD] * 2)), XS), "covs must be positive"),
    (lambda: prob.class_posterior(CLF._replace(log_prior=jnp.log(jnp.array([0.5, 0.4]))), XS),
     "log_prior .* must sum to 1"),
    (lambda: prob.class_posterior(CLF._replace(log_prior=jnp.array([0.0, jnp.nan])), XS), "log_prior must hold"),
    (lambda: prob.class_posterior(CLF, XS[:, :1]), "x must have D=2"),
    (lambda: prob.class_log_joint(CLF, np.where(XS > 1, np.inf, XS)), "x contains NaN"),
    (lambda: prob.class_log_joint(CLF._replace(means=jnp.zeros((3, 2))), XS), "must agree"),
    (lambda: prob.class_log_joint(XS, XS), "model must be a GaussianClassifier"),
    (lambda: prob.sample_labelled(KEY, CLF._replace(covs=jnp.stack([NAN_COV] * 2)), 5), "covs contains NaN"),
    (lambda: prob.sample_labelled(KEY, CLF, 2.7), "n must be an integer"),
])
def test_bad_input_is_named(call, match):
    with pytest.raises(ValueError, match=match):
        call()


# --------------------------------------------------------------------------- entropy and KL


def test_entropy_cross_entropy_kl_against_scipy_and_identities():
    rng = np.random.default_rng(0)
    p, q = rng.dirichlet(np.ones(6), size=5), rng.dirichlet(np.ones(6), size=5)
    pj, qj = jnp.asarray(p, jnp.float32), jnp.asarray(q, jnp.float32)
    np.testing.assert_allclose(prob.entropy(pj), stats.entropy(p, axis=-1), rtol=1e-5)
    np.testing.assert_allclose(prob.kl_categorical(pj, qj), stats.entropy(p, q, axis=-1), rtol=1e-4, atol=1e-6)
    # H(p, q) = H(p) + KL(p || q) >= H(p)
    np.testing.assert_allclose(prob.cross_entropy(pj, qj), prob.entropy(pj) + prob.kl_categorical(pj, qj), rtol=1e-5)
    assert bool(jnp.all(prob.cross_entropy(pj, qj) >= prob.entropy(pj)))
    # bounds: 0 for a certain outcome (0 log 0 = 0), log K for the uniform, 1 bit for a fair coin
    assert float(prob.entropy(jnp.array([0.0, 1.0, 0.0]))) == 0.0
    np.testing.assert_allclose(prob.entropy(jnp.full(8, 1 / 8)) / np.log(2), 3.0, rtol=1e-6)
    np.testing.assert_allclose(prob.entropy(jnp.array([0.5, 0.5])), np.log(2), rtol=1e-6)
    assert float(prob.kl_categorical(pj[0], pj[0])) == pytest.approx(0.0, abs=1e-6)
    assert np.isinf(float(prob.cross_entropy(jnp.array([0.5, 0.5]), jnp.array([1.0, 0.0]))))
    # the axis argument (keyword-only) and jit
    np.testing.assert_allclose(jax.jit(prob.entropy, static_argnames="axis")(pj.T, axis=0), prob.entropy(pj),
                               rtol=1e-6)
    np.testing.assert_allclose(prob.kl_categorical(pj.T, qj.T, axis=0), prob.kl_categorical(pj, qj), rtol=1e-6)


@pytest.mark.parametrize("p, match", [
    (jnp.array([0.5, jnp.nan]), "NaN"),
    (jnp.array([0.5, jnp.inf]), "NaN or infinite"),
    (jnp.array([1.2, -0.2]), "non-negative"),
    (jnp.array([0.5, 0.4]), "sum to 1"),
    (jnp.array([True, False]), "real numbers"),
    (np.array(["0.5", "0.5"]), "real numbers"),
    (jnp.array(0.5), "at least one category"),
])
def test_entropy_rejects_what_is_not_a_distribution(p, match):
    with pytest.raises(ValueError, match=match):
        prob.entropy(p)
    with pytest.raises(ValueError, match="q "):
        prob.cross_entropy(jnp.array([0.5, 0.5]), p)


# --------------------------------------------------------------------------- Bayesian networks


def sprinkler():
    """Cloudy -> Sprinkler, Cloudy -> Rain, (Sprinkler, Rain) -> Wet grass."""
    return prob.bayes_net(
        [(), (0,), (0,), (1, 2)],
        [np.array([0.5, 0.5]),
         np.array([[0.6, 0.4], [0.9, 0.1]]),
         np.array([[0.8, 0.2], [0.3, 0.7]]),
         np.array([[[0.95, 0.05], [0.1, 0.9]], [[0.15, 0.85], [0.02, 0.98]]])],
        names=("cloudy", "sprinkler", "rain", "wet"))


def random_net(seed, max_nodes=5, max_card=3):
    """A random DAG (nodes not listed in topological order), random cards and Dirichlet CPTs (float64)."""
    rng = np.random.default_rng(seed)
    n = int(rng.integers(2, max_nodes + 1))
    rank = rng.permutation(n)                       # node rank[k] is the k-th in a hidden order
    cards = rng.integers(2, max_card + 1, size=n)
    parents = [()] * n
    for k in range(n):
        earlier = [int(rank[j]) for j in range(k) if rng.random() < 0.5]
        parents[int(rank[k])] = tuple(rng.permutation(earlier).tolist()) if earlier else ()
    cpts = [rng.dirichlet(np.ones(cards[i]), size=tuple(cards[p] for p in parents[i])) for i in range(n)]
    return parents, cpts


def joint_by_loops(parents, cpts):
    """Oracle: the joint table filled one assignment at a time, Π_i cpt_i[parents' values, value_i]."""
    cards = [c.shape[-1] for c in cpts]
    joint = np.zeros(cards)
    for x in itertools.product(*(range(c) for c in cards)):
        value = 1.0
        for i, ps in enumerate(parents):
            value *= cpts[i][tuple(x[p] for p in ps) + (x[i],)]
        joint[x] = value
    return joint


def query_by_loops(joint, target, evidence):
    """Oracle: P(target | evidence) by summing matching assignments of a float64 joint."""
    post = np.zeros(joint.shape[target])
    for x in itertools.product(*(range(c) for c in joint.shape)):
        if all(x[e] == v for e, v in evidence.items()):
            post[x[target]] += joint[x]
    return post / post.sum()


def cmi_float64(joint, a, b, given):
    """Oracle: I(A; B | C) = Σ p(a,b,c) log p(a,b,c) p(c) / (p(a,c) p(b,c)), float64."""
    def marg(keep):
        return joint.sum(axis=tuple(i for i in range(joint.ndim) if i not in keep), keepdims=True)
    pabc, pc = marg((a, b, *given)), marg(tuple(given))
    pac, pbc = marg((a, *given)), marg((b, *given))
    ratio = np.divide(pabc * pc, pac * pbc, out=np.ones_like(pabc), where=pabc > 0)
    return float(np.sum(pabc * np.log(ratio)))



@given(seed=st.integers(0, 10_000))
@settings(max_examples=15, deadline=None)
def test_joint_and_query_match_brute_force_on_random_networks(seed):
    parents, cpts = random_net(seed)
    net = prob.bayes_net(parents, [c.astype(np.float32) for c in cpts])
    oracle = joint_by_loops(parents, cpts)
    joint = prob.bn_joint(net)
    assert joint.shape == oracle.shape
    np.testing.assert_allclose(joint, oracle, rtol=1e-5, atol=1e-7)
    assert abs(float(joint.sum()) - 1.0) < 1e-5
    rng = np.random.default_rng(seed)
    target = int(rng.integers(len(parents)))
    others = [i for i in range(len(parents)) if i != target]
    evidence = {int(e): int(rng.integers(net.cards[e])) for e in rng.permutation(others)[: rng.integers(0, len(others) + 1)]}
    np.testing.assert_allclose(prob.bn_query(net, target, evidence), query_by_loops(oracle, target, evidence),
                               rtol=1e-4, atol=1e-6)


@given(seed=st.integers(0, 10_000))
@settings(max_examples=40, deadline=None)
def test_independences_by_enumeration_match_d_separation(seed):
    # Random CPTs are faithful to their graph (with probability 1): every d-connected pair is
    # dependent. Checked for every pair and every conditioning set of the other nodes.
    parents, cpts = random_net(seed, max_nodes=5)
    oracle = joint_by_loops(parents, cpts)
    n = len(parents)
    for a, b in itertools.combinations(range(n), 2):
        rest = [i for i in range(n) if i not in (a, b)]
        for r in range(len(rest) + 1):
            for given_set in itertools.combinations(rest, r):
                cmi = cmi_float64(oracle, a, b, given_set)
                separated = prob.d_separated(parents, a, b, given_set)
                assert separated == (cmi < 1e-12), (parents, a, b, given_set, cmi)
                assert separated == prob.d_separated(parents, b, a, given_set)   # symmetric


@pytest.mark.parametrize("seed", [0, 1])
def test_conditional_mutual_information_against_float64(seed):
    parents, cpts = random_net(seed, max_nodes=4)
    joint32 = prob.bn_joint(prob.bayes_net(parents, [c.astype(np.float32) for c in cpts]))
    oracle = joint_by_loops(parents, cpts)
    n = len(parents)
    for a, b in itertools.combinations(range(n), 2):
        rest = [i for i in range(n) if i not in (a, b)]
        for given_set in [()] + [(g,) for g in rest] + [tuple(rest)]:
            ours = float(prob.conditional_mutual_information(joint32, a, b, given_set))
            assert ours >= 0 and abs(ours - cmi_float64(oracle, a, b, given_set)) < 1e-5


def test_d_separation_chain_fork_collider():
    chain, fork, collider = [(), (0,), (1,)], [(1,), (), (1,)], [(), (0, 2), ()]
    assert not prob.d_separated(chain, 0, 2) and prob.d_separated(chain, 0, 2, [1])
    assert not prob.d_separated(fork, 0, 2) and prob.d_separated(fork, 0, 2, [1])
    assert prob.d_separated(collider, 0, 2) and not prob.d_separated(collider, 0, 2, [1])
    # observing a descendant of the collider opens it too
    collider_child = [(), (0, 2), (), (1,)]
    assert prob.d_separated(collider_child, 0, 2) and not prob.d_separated(collider_child, 0, 2, [3])
    net = sprinkler()
    assert prob.d_separated(net.parents, 0, 3, [1, 2]) and not prob.d_separated(net.parents, 0, 3)


def test_sprinkler_query_by_hand():
    # P(rain = 1 | wet = 1) written out: Σ_c Σ_s P(c) P(s|c) P(r=1|c) P(w=1|s,r=1) / P(w=1)
    pc = [0.5, 0.5]
    ps = [[0.6, 0.4], [0.9, 0.1]]
    pr = [[0.8, 0.2], [0.3, 0.7]]
    pw1 = [[0.05, 0.9], [0.85, 0.98]]          # P(w = 1 | s, r)
    num = {r: sum(pc[c] * ps[c][s] * pr[c][r] * pw1[s][r] for c in (0, 1) for s in (0, 1)) for r in (0, 1)}
    by_hand = num[1] / (num[0] + num[1])
    post = prob.bn_query(sprinkler(), 2, {3: 1})
    np.testing.assert_allclose(post, [1 - by_hand, by_hand], rtol=1e-5)
    # explaining away: learning that the sprinkler was on makes rain less likely
    assert float(prob.bn_query(sprinkler(), 2, {3: 1, 1: 1})[1]) < by_hand


def test_ancestral_sampling_frequencies_match_the_joint():
    net = sprinkler()
    n = 400_000
    x = np.asarray(jax.jit(prob.bn_sample, static_argnums=2)(jax.random.key(0), net, n))
    assert x.shape == (n, 4) and x.dtype == np.int32
    joint = np.asarray(prob.bn_joint(net), np.float64)
    counts = np.zeros(joint.shape)
    np.add.at(counts, tuple(x.T), 1)
    chi2 = stats.chisquare(counts.ravel(), joint.ravel() * n)
    assert chi2.pvalue > 1e-3, chi2
    assert np.max(np.abs(counts / n - joint)) < 4 * np.sqrt(0.25 / n)


def test_sampling_respects_non_topological_node_order():
    # node 0 has parent 2: the sampler must draw 2 first. A deterministic copy makes it visible.
    net = prob.bayes_net([(2,), (), (1,)], [np.eye(2), np.array([0.3, 0.7]), np.array([[0.1, 0.9], [0.9, 0.1]])])
    x = np.asarray(prob.bn_sample(jax.random.key(1), net, 10_000))
    np.testing.assert_array_equal(x[:, 0], x[:, 2])
    joint = np.asarray(prob.bn_joint(net))
    np.testing.assert_allclose(joint.sum(axis=(1, 2)), [0.3 * 0.1 + 0.7 * 0.9, 0.3 * 0.9 + 0.7 * 0.1], rtol=1e-6)


def test_likelihood_weighting_and_rejection_agree_with_enumeration():
    net = sprinkler()
    evidence = {1: 1, 3: 0}                     # sprinkler on, grass dry: a rare event
    exact = float(prob.bn_query(net, 2, evidence)[1])
    x, w = prob.bn_likelihood_weighting(jax.random.key(2), net, evidence, 200_000)
    assert bool(jnp.all(x[:, 1] == 1)) and bool(jnp.all(x[:, 3] == 0))
    lw = float(jnp.sum(w * (x[:, 2] == 1)) / jnp.sum(w))
    assert abs(lw - exact) < 0.01
    s = prob.bn_sample(jax.random.key(3), net, 400_000)
    keep = (s[:, 1] == 1) & (s[:, 3] == 0)
    rejection = float(s[keep, 2].mean())
    assert abs(rejection - exact) < 4 * np.sqrt(exact * (1 - exact) / int(keep.sum()))


def test_bayes_net_passes_through_jit():
    net = sprinkler()
    np.testing.assert_allclose(jax.jit(prob.bn_joint)(net), prob.bn_joint(net), rtol=1e-6)
    query = jax.jit(prob.bn_query, static_argnums=(1, 2))
    np.testing.assert_allclose(query(net, 2, ((3, 1),)), prob.bn_query(net, 2, {3: 1}), rtol=1e-6)


GOOD = [np.array([0.5, 0.5]), np.array([[0.6, 0.4], [0.9, 0.1]])]


@pytest.mark.parametrize("build, match", [
    (lambda: prob.bayes_net([(), (0,)], [np.array([0.5, np.nan]), GOOD[1]]), r"cpts\[0\] contains NaN"),
    (lambda: prob.bayes_net([(), (0,)], [GOOD[0], np.array([[0.6, 0.3], [0.9, 0.1]])]),
     r"cpts\[1\] must sum to 1 along axis -1; a sum is off by 0.1"),
    (lambda: prob.bayes_net([(), (0,)], [GOOD[0], np.array([[1.2, -0.2], [0.9, 0.1]])]),
     r"cpts\[1\] must be non-negative"),
    (lambda: prob.bayes_net([(), (0,)], [np.array(["a", "b"]), GOOD[1]]), r"cpts\[0\] must hold real numbers"),
    (lambda: prob.bayes_net([(), (True,)], GOOD), r"parents\[1\] names True"),
    (lambda: prob.bayes_net(5, GOOD), "parents must be a sequence"),
    (lambda: prob.bn_query(sprinkler(), 2, {3: True}), "evidence sets node 3 to True"),
    (lambda: prob.bn_query(sprinkler(), 2, {3: 1.0}), "evidence sets node 3 to 1.0"),
    (lambda: prob.bn_query(sprinkler(), 2, {True: 1}), "evidence names node True"),
    (lambda: prob.bn_query(sprinkler(), True), "target must be a node index"),
    (lambda: prob.bn_query(sprinkler(), -1), "target must be a node index"),
    (lambda: prob.bn_sample(jax.random.key(0), sprinkler(), 2.7), "n must be an integer"),
    (lambda: prob.bn_sample(jax.random.key(0), sprinkler(), 0), "n must be an integer >= 1"),
    (lambda: prob.bn_likelihood_weighting(jax.random.key(0), sprinkler(), {3: 1}, True), "n must be an integer"),
    (lambda: prob.d_separated([(), (0,)], 0, 1, [1.5]), "given must be a node index"),
    (lambda: prob.d_separated([(), (0,)], 0, 2), "y must be a node index"),
    (lambda: prob.d_separated([(), (3,)], 0, 1), r"parents\[1\] names 3"),
    (lambda: prob.topological_order([(), (7,)]), r"parents\[1\] names 7"),
    (lambda: prob.topological_order([(), 1]), r"parents\[1\] must be a tuple"),
    (lambda: prob.conditional_mutual_information(jnp.full((2, 2), 0.3), 0, 1), "joint must sum to 1"),
    (lambda: prob.conditional_mutual_information(jnp.full((2, 2), 0.25), 0, 2), "an axis of the joint"),
    (lambda: prob.conditional_mutual_information(jnp.full((2, 2), 0.25), 0, 1, [0.5]), "an axis of the joint"),
    (lambda: prob.cross_entropy(jnp.full(3, 1 / 3), jnp.full(2, 0.5)), "p and q must"),
    (lambda: prob.entropy(jnp.full(2, 0.5), axis=1.0), "axis must be an integer"),
    (lambda: prob.bayes_net([(1,), (0,)], [GOOD[1], GOOD[1]]), "parents: the graph has a directed cycle"),
    (lambda: prob.bayes_net([(), (1,)], GOOD), r"parents\[1\] lists node 1 itself"),
    (lambda: prob.bayes_net([(), (0, 0)], [GOOD[0], np.full((2, 2, 2), 0.5)]), "lists a parent twice"),
    (lambda: prob.bayes_net([(), (5,)], GOOD), r"parents\[1\] names 5"),
    (lambda: prob.bayes_net([(), 0], GOOD), r"parents\[1\] must be a tuple"),
    (lambda: prob.bayes_net([(), (0,)], [GOOD[0], np.full((3, 2), 0.5)]), r"cpts\[1\] must have shape .*\(2, 'card'\)"),
    (lambda: prob.bayes_net([(), ()], GOOD), r"cpts\[1\] must have shape"),
    (lambda: prob.bayes_net([(), (0,)], GOOD[:1]), "cpts must hold one table per node"),
    (lambda: prob.bayes_net([(), (0,)], GOOD, names=["a"]), "names must label"),
    (lambda: prob.bn_query(sprinkler(), 2, {3: 2}), "evidence sets node 3 to 2"),
    (lambda: prob.bn_query(sprinkler(), 2, {7: 0}), "evidence names node 7"),
    (lambda: prob.bn_query(sprinkler(), 2, {2: 1}), "evidence fixes the target"),
    (lambda: prob.bn_query(sprinkler(), 4), "target must be a node index"),
    (lambda: prob.bn_likelihood_weighting(jax.random.key(0), sprinkler(), {0: -1}, 10), "evidence sets node 0"),
    (lambda: prob.bn_query(prob.bayes_net([(), (0,)], [np.array([1.0, 0.0]), np.eye(2)]), 0, {1: 1}),
     "probability 0"),
    (lambda: prob.bn_joint(GOOD), "net must be a BayesNet"),
    (lambda: prob.d_separated([(), (0,)], 0, 0), "x and y must differ"),
    (lambda: prob.d_separated([(), (0,)], 0, 1, [1]), "y = 1 is in given"),
    (lambda: prob.d_separated([(1,), (0,)], 0, 1), "cycle"),
    (lambda: prob.conditional_mutual_information(jnp.full((2, 2), 0.25), 0, 0), "distinct axes"),
])
def test_bad_networks_and_queries_are_named(build, match):
    with pytest.raises(ValueError, match=match):
        build()


def test_integer_probabilities_are_read_as_floats():
    # A certain outcome written with integers is a distribution (the library converts ints).
    assert float(prob.entropy(np.array([0, 1]))) == 0.0
    assert float(prob.kl_categorical(np.array([1, 0]), jnp.array([0.5, 0.5]))) == pytest.approx(np.log(2), rel=1e-6)


def test_labels_outside_the_classes_are_refused_not_dropped():
    # Found by the issue: label 3 with num_classes=3 was one-hot encoded as all zeros, so the
    # point vanished from every class's statistics. Old code returned a model; now an error.
    x, y = np.random.default_rng(1).normal(size=(9, 2)), np.array([0, 1, 2] * 2 + [0, 1, 3])
    with pytest.raises(ValueError, match=r"y must lie in \[0, 3\) \(3 classes\), got 3"):
        prob.fit_gaussian_classifier(x, y, 3)
    model = prob.fit_gaussian_classifier(x, np.where(y == 3, 2, y), 3)        # the remedy: a valid label
    np.testing.assert_allclose(np.exp(model.log_prior), [3 / 9, 3 / 9, 3 / 9], rtol=1e-6)


# Positive definite in float64 (smallest eigenvalue 4.5e-9 for values ~1), singular to within
# float32 rounding: float32 Cholesky returns NaN on this machine. Found by a seeded search.
NEARLY_SINGULAR = np.array([[1.0590906, 0.2591689, 0.26568383, -0.5967661],
                            [0.2591689, 1.0678148, 0.11469702, -0.09763219],
                            [0.26568383, 0.11469702, 0.06910703, -0.1473108],
                            [-0.5967661, -0.09763219, -0.1473108, 0.3385925]], np.float32)


@pytest.mark.parametrize("call", [
    lambda c: prob.gaussian_logpdf(jnp.zeros(4), c, jnp.ones((3, 4))),
    lambda c: prob.sample_gaussian(jax.random.key(0), jnp.zeros(4), c, 3),
    lambda c: prob.kl_gaussians(jnp.zeros(4), jnp.eye(4), jnp.zeros(4), c),
    lambda c: prob.kl_gaussians(jnp.zeros(4), c, jnp.zeros(4), jnp.eye(4)),
])
def test_float32_covariance_singular_to_rounding_is_an_error_not_nan(call):
    cov = jnp.asarray(NEARLY_SINGULAR)
    assert np.linalg.eigvalsh(NEARLY_SINGULAR.astype(np.float64)).min() > 0
    try:
        out = call(cov)
    except ValueError as err:
        assert "cov" in str(err) and "Cholesky" in str(err)
    else:   # a CPU whose float32 factorisation succeeds must then give finite numbers
        assert bool(jnp.all(jnp.isfinite(out)))


def test_importing_prob_starts_no_jax_backend():
    # The module used to build LOG_2PI as a float32 array at import, which initialises a backend
    # (and fixes the platform before a notebook's runtime.setup can choose it).
    import subprocess
    import sys
    code = ("import course_lib.prob as p\nfrom jax._src import xla_bridge\n"
            "assert not xla_bridge._backends, list(xla_bridge._backends)\n"
            "assert type(p.LOG_2PI) is float\nprint('ok')")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0 and out.stdout.strip() == "ok", out.stderr
    assert prob.LOG_2PI == pytest.approx(np.log(2 * np.pi), rel=1e-15)


def test_bad_covariances_no_longer_give_nan_densities_kl_or_samples():
    # The silent cases: each of these returned NaN (or NaN samples) without a word.
    for cov in (NOT_PD, NAN_COV, np.zeros((2, 2))):
        for call in (lambda: prob.gaussian_logpdf(jnp.zeros(2), cov, jnp.zeros(2)),
                     lambda: prob.kl_gaussians(jnp.zeros(2), cov, jnp.zeros(2), jnp.eye(2)),
                     lambda: prob.sample_gaussian(jax.random.key(0), jnp.zeros(2), cov, 4)):
            with pytest.raises(ValueError, match=r"\bcov0?\b"):
                call()


def test_public_names_are_listed():
    assert set(prob.__all__) <= set(dir(prob))
    for name in ("gaussian_logpdf", "fit_gaussian_classifier", "bayes_net", "bn_query", "entropy"):
        assert name in prob.__all__
    assert not any(name.startswith("_") for name in prob.__all__)
