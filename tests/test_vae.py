"""Oracles for course_lib.vae: closed forms (Gaussian KL, linear-Gaussian marginal, posterior and
ELBO), scipy densities and quadrature, a 1-D-latent VAE whose log p(x) is computed by brute-force
integration, sklearn's ROC AUC, check_grads on every loss, hypothesis properties, bad input."""
import math

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx
from hypothesis import given, settings, strategies as st
from jax.test_util import check_grads
from scipy import integrate, stats
from scipy.special import expit, logsumexp
from sklearn.metrics import roc_auc_score

from course_lib import vae


@pytest.fixture
def x64():
    with jax.enable_x64(True):
        yield


def key(i=0):
    return jax.random.key(i)


def bits(seed, shape, p=0.3):
    return (np.random.default_rng(seed).random(shape) < p).astype(np.float32)


def to_float64(model):
    """The same model with float64 parameters (for check_grads and tight oracles)."""
    graphdef, state = nnx.split(model)
    return nnx.merge(graphdef, jax.tree.map(lambda a: jnp.asarray(a, jnp.float64), state))


def tiny_vae(latent=2, shape=(2, 3), hidden=(8,), seed=0, cls=vae.VAE, **kw):
    return cls(latent, hidden=hidden, image_shape=shape, rngs=nnx.Rngs(seed), **kw)


# ------------------------------------------------------------------------------ Gaussian KL
def test_gaussian_kl_matches_quadrature_of_scipy_densities(x64):
    for mu, log_var in [(0.7, -0.4), (-2.0, 1.3), (0.0, 0.0), (3.0, -3.0)]:
        sd = math.exp(0.5 * log_var)
        q = stats.norm(mu, sd)
        integrand = lambda z: q.pdf(z) * (q.logpdf(z) - stats.norm.logpdf(z))
        exact, _ = integrate.quad(integrand, mu - 40 * sd, mu + 40 * sd, limit=400)
        got = float(vae.gaussian_kl(jnp.array([mu]), jnp.array([log_var])))
        np.testing.assert_allclose(got, exact, rtol=1e-7, atol=1e-10)


def test_gaussian_kl_matches_monte_carlo_per_example(x64):
    rng = np.random.default_rng(0)
    mean, log_var = rng.normal(size=(3, 4)), rng.normal(size=(3, 4)) * 0.5
    kl = np.asarray(vae.gaussian_kl(mean, log_var))
    assert kl.shape == (3,)
    sd = np.exp(0.5 * log_var)
    z = mean + sd * rng.normal(size=(200_000, 3, 4))
    log_ratio = (stats.norm.logpdf(z, mean, sd) - stats.norm.logpdf(z)).sum(-1)
    mc, se = log_ratio.mean(0), log_ratio.std(0) / math.sqrt(len(z))
    assert np.all(np.abs(kl - mc) < 4 * se), (kl, mc, se)


nonzero = st.floats(-5, 5).filter(lambda v: abs(v) > 1e-2)


@settings(max_examples=60)
@given(st.lists(st.tuples(st.floats(-5, 5), st.floats(-5, 5)), min_size=1, max_size=5))
def test_gaussian_kl_is_non_negative(pairs):
    mean, log_var = np.array(pairs, np.float32).T
    assert float(vae.gaussian_kl(mean, log_var)) >= 0.0


@settings(max_examples=60)
@given(st.integers(1, 5), st.integers(0, 4), nonzero, st.booleans())
def test_gaussian_kl_is_zero_only_for_the_standard_normal(d, where, value, in_mean):
    mean, log_var = np.zeros(d, np.float32), np.zeros(d, np.float32)
    assert float(vae.gaussian_kl(mean, log_var)) == 0.0
    (mean if in_mean else log_var)[where % d] = value
    assert float(vae.gaussian_kl(mean, log_var)) > 0.0


# ------------------------------------------------------------------------------ Gaussians, sampling
def test_diagonal_and_full_gaussian_log_prob_match_scipy(x64):
    rng = np.random.default_rng(1)
    mean, log_var = rng.normal(size=(2, 3)), rng.normal(size=(2, 3))
    z = rng.normal(size=(5, 2, 3))
    diag = vae.DiagonalGaussian(jnp.array(mean), jnp.array(log_var)).log_prob(jnp.array(z))
    a = rng.normal(size=(2, 3, 3))
    cov = a @ np.swapaxes(a, -1, -2) + 0.5 * np.eye(3)
    full = vae.FullGaussian(jnp.array(mean), jnp.linalg.cholesky(jnp.array(cov))).log_prob(z)
    for b in range(2):
        want_diag = stats.multivariate_normal(mean[b], np.diag(np.exp(log_var[b]))).logpdf(z[:, b])
        want_full = stats.multivariate_normal(mean[b], cov[b]).logpdf(z[:, b])
        np.testing.assert_allclose(diag[:, b], want_diag, rtol=1e-10)
        np.testing.assert_allclose(full[:, b], want_full, rtol=1e-10)
    np.testing.assert_allclose(vae.standard_normal_log_density(z),
                               stats.norm.logpdf(z).sum(-1), rtol=1e-12)


def test_samples_have_the_right_moments(x64):
    mean = jnp.array([1.0, -2.0])
    a = jnp.array([[1.0, 0.0], [0.8, 0.5]])
    z = vae.FullGaussian(mean, a).sample(key(0), 100_000)
    assert z.shape == (100_000, 2)
    np.testing.assert_allclose(z.mean(0), mean, atol=0.02)
    np.testing.assert_allclose(np.cov(np.asarray(z).T), a @ a.T, atol=0.02)
    log_var = jnp.array([0.5, -1.0])
    r = vae.reparameterize(key(1), mean, log_var, n=100_000)
    np.testing.assert_allclose(r.mean(0), mean, atol=0.02)
    np.testing.assert_allclose(r.var(0), jnp.exp(log_var), rtol=0.02)
    assert vae.reparameterize(key(1), mean, log_var).shape == (2,)


def test_reparameterized_draw_is_differentiable_in_mean_and_log_var(x64):
    eps = jax.random.normal(key(2), (3,), jnp.float64)
    mean, log_var = jnp.array([0.1, 0.2, 0.3]), jnp.array([0.0, -1.0, 1.0])
    jac_mean, jac_lv = jax.jacobian(lambda m, lv: vae.reparameterize(key(2), m, lv),
                                    argnums=(0, 1))(mean, log_var)
    np.testing.assert_allclose(jac_mean, np.eye(3))
    np.testing.assert_allclose(jac_lv, np.diag(0.5 * np.exp(0.5 * log_var) * eps), rtol=1e-12)


# ------------------------------------------------------------------------------ Bernoulli, binarise
def test_bernoulli_log_likelihood_matches_scipy_and_is_stable(x64):
    rng = np.random.default_rng(3)
    logits, x = rng.normal(size=(4, 6)) * 3, bits(3, (4, 6)).astype(np.float64)
    want = stats.bernoulli.logpmf(x, expit(logits)).sum(-1)
    np.testing.assert_allclose(vae.bernoulli_log_likelihood(logits, x), want, rtol=1e-12)
    huge = jnp.array([[1000.0, -1000.0, 1000.0]])
    np.testing.assert_allclose(vae.bernoulli_log_likelihood(huge, jnp.array([[1.0, 0.0, 0.0]])),
                               [-1000.0], rtol=1e-12)
    assert np.isfinite(jax.grad(lambda l: vae.bernoulli_log_likelihood(l, jnp.ones(3)).sum())(
        huge[0])).all()
    check_grads(lambda l: vae.bernoulli_log_likelihood(l, x), (jnp.array(logits),), order=2)


def test_gaussian_kl_gradients(x64):
    rng = np.random.default_rng(4)
    check_grads(vae.gaussian_kl, (jnp.array(rng.normal(size=(2, 3))),
                                  jnp.array(rng.normal(size=(2, 3)))), order=2)


def test_binarize_draws_each_pixel_with_its_intensity():
    p = np.tile(np.array([0.0, 0.1, 0.5, 0.9, 1.0], np.float32), (20_000, 1))
    b = np.asarray(vae.binarize(key(0), p))
    assert b.dtype == np.float32 and set(np.unique(b)) <= {0.0, 1.0}
    assert b[:, 0].sum() == 0 and b[:, 4].min() == 1
    se = np.sqrt(p[0] * (1 - p[0]) / len(p))
    assert np.all(np.abs(b.mean(0) - p[0]) <= 4 * se + 1e-9)
    assert not np.array_equal(b, vae.binarize(key(1), p))


# ------------------------------------------------------------------------------ linear-Gaussian oracle
def linear_gaussian(seed=0, x_dim=4, z_dim=2, noise=0.7):
    rng = np.random.default_rng(seed)
    params = vae.LinearGaussian(jnp.array(rng.normal(size=(x_dim, z_dim))),
                                jnp.array(rng.normal(size=x_dim)), noise)
    z = rng.normal(size=(5, z_dim))
    x = z @ np.asarray(params.weight).T + np.asarray(params.bias) + noise * rng.normal(size=(5, x_dim))
    return params, jnp.array(x)


def test_linear_gaussian_closed_forms_match_scipy_and_bayes_rule(x64):
    params, x = linear_gaussian()
    w, b, s = np.asarray(params.weight), np.asarray(params.bias), params.noise_std
    marginal = stats.multivariate_normal(b, w @ w.T + s ** 2 * np.eye(4))
    np.testing.assert_allclose(vae.linear_gaussian_log_marginal(params, x),
                               marginal.logpdf(np.asarray(x)), rtol=1e-10)
    # Gaussian conditioning of the joint (z, x), the other textbook form of the posterior.
    gain = w.T @ np.linalg.inv(w @ w.T + s ** 2 * np.eye(4))
    post = vae.linear_gaussian_posterior(params, x)
    np.testing.assert_allclose(post.mean, (np.asarray(x) - b) @ gain.T, rtol=1e-9)
    np.testing.assert_allclose(post.scale_tril[0] @ post.scale_tril[0].T, np.eye(2) - gain @ w,
                               rtol=1e-9)
    z = np.random.default_rng(9).normal(size=(3, 5, 2))
    joint = stats.norm.logpdf(np.asarray(x), z @ w.T + b, s).sum(-1) + stats.norm.logpdf(z).sum(-1)
    np.testing.assert_allclose(vae.linear_gaussian_log_joint(params, x)(jnp.array(z)), joint,
                               rtol=1e-10)


def test_elbo_with_the_exact_posterior_is_log_p_x_for_every_draw(x64):
    params, x = linear_gaussian(1)
    exact = vae.linear_gaussian_log_marginal(params, x)
    post = vae.linear_gaussian_posterior(params, x)
    log_joint = vae.linear_gaussian_log_joint(params, x)
    lw = vae.log_importance_weights(key(0), log_joint, post, k=7)
    np.testing.assert_allclose(lw, jnp.broadcast_to(exact, lw.shape), rtol=1e-10)
    np.testing.assert_allclose(vae.elbo_estimate(key(1), log_joint, post, k=3), exact, rtol=1e-10)
    np.testing.assert_allclose(vae.iwae_estimate(key(2), log_joint, post, k=11, chunk_size=4),
                               exact, rtol=1e-10)
    np.testing.assert_allclose(vae.linear_gaussian_elbo(params, x, post), exact, rtol=1e-10)


def test_closed_form_elbo_matches_the_monte_carlo_estimate(x64):
    params, x = linear_gaussian(2)
    q = vae.DiagonalGaussian(jnp.full((5, 2), 0.3), jnp.full((5, 2), -0.5))
    lw = vae.log_importance_weights(key(3), vae.linear_gaussian_log_joint(params, x), q, k=200_000)
    mc, se = lw.mean(0), lw.std(0) / math.sqrt(lw.shape[0])
    closed = vae.linear_gaussian_elbo(params, x, q)
    assert np.all(np.abs(closed - mc) < 4 * se), (closed, mc, se)
    assert np.all(closed < vae.linear_gaussian_log_marginal(params, x) - 0.1)


def full_gaussian_kl(m0, c0, m1, c1):
    inv1 = np.linalg.inv(c1)
    d = len(m0)
    return 0.5 * (np.trace(inv1 @ c0) + (m1 - m0) @ inv1 @ (m1 - m0) - d
                  + np.linalg.slogdet(c1)[1] - np.linalg.slogdet(c0)[1])


@settings(max_examples=40)
@given(seed=st.integers(0, 10_000), shift=st.floats(-3, 3), log_scale=st.floats(-2, 1),
       shear=st.floats(-1, 1))
def test_elbo_is_below_log_p_x_by_exactly_the_kl_to_the_posterior(seed, shift, log_scale, shear):
    with jax.enable_x64(True):
        params, x = linear_gaussian(seed, x_dim=3, z_dim=2, noise=0.5)
        x = x[:1]
        tril = np.array([[math.exp(log_scale), 0.0], [shear, math.exp(0.5 * log_scale)]])
        q = vae.FullGaussian(jnp.array([[shift, -shift / 2]]), jnp.array([tril]))
        bound = float(vae.linear_gaussian_elbo(params, x, q)[0])
        exact = float(vae.linear_gaussian_log_marginal(params, x)[0])
        post = vae.linear_gaussian_posterior(params, x)
        gap = full_gaussian_kl(np.asarray(q.mean[0]), tril @ tril.T, np.asarray(post.mean[0]),
                               np.asarray(post.scale_tril[0] @ post.scale_tril[0].T))
        assert bound <= exact + 1e-9
        np.testing.assert_allclose(exact - bound, gap, rtol=1e-7, atol=1e-9)


def test_iwae_rises_with_k_towards_log_p_x_on_the_linear_gaussian_model(x64):
    params, x = linear_gaussian(3, x_dim=4, z_dim=2, noise=0.5)
    x = x[:2]
    exact = np.asarray(vae.linear_gaussian_log_marginal(params, x))
    reps = 400                                       # independent repetitions of each estimate
    x_rep = jnp.tile(x, (reps, 1))
    q = vae.DiagonalGaussian(jnp.zeros((len(x_rep), 2)), jnp.zeros((len(x_rep), 2)))  # the prior
    log_joint = vae.linear_gaussian_log_joint(params, x_rep)
    means, ses = [], []
    for i, k in enumerate((1, 10, 100, 1000)):
        est = np.asarray(vae.iwae_estimate(key(i), log_joint, q, k=k, chunk_size=128))
        est = est.reshape(reps, 2)
        assert np.all(est.mean(0) < exact + 3 * est.std(0) / math.sqrt(reps) + 1e-9)
        means.append(est.mean(0))
        ses.append(est.std(0) / math.sqrt(reps))
    means, ses = np.array(means), np.array(ses)
    assert np.all(np.diff(means, axis=0) > -3 * np.sqrt(ses[1:] ** 2 + ses[:-1] ** 2))
    gaps = exact - means
    assert np.all(gaps[0] > 1.0), gaps           # the prior is a poor proposal...
    assert np.all(gaps[-1] < 0.05 * gaps[0]), gaps  # ...and k = 1000 closes 95% of the gap


def test_iwae_chunks_cover_exactly_k_draws(x64):
    params, x = linear_gaussian(4)
    q = vae.DiagonalGaussian(jnp.zeros((5, 2)), jnp.zeros((5, 2)))
    log_joint = vae.linear_gaussian_log_joint(params, x)
    parts = [vae.log_importance_weights(jax.random.fold_in(key(5), i), log_joint, q, k=4)
             for i in range(3)]
    lw = jnp.concatenate(parts)[:10]                       # 4 + 4 + the first 2 of the last chunk
    want = logsumexp(np.asarray(lw), axis=0) - math.log(10)
    np.testing.assert_allclose(vae.iwae_estimate(key(5), log_joint, q, k=10, chunk_size=4), want,
                               rtol=1e-12)


# ------------------------------------------------------------------------------ the VAE itself
def grid_log_marginal(model, x, labels=None):
    """log p(x) of a VAE with a 1-D latent, by the trapezoid rule on a fine grid."""
    z = np.linspace(-12, 12, 24_001)
    logits = np.asarray(model.decode(jnp.array(z)[:, None, None].repeat(x.shape[0], 1), labels))
    log_lik = stats.bernoulli.logpmf(np.asarray(x)[None], expit(logits)).sum(-1)   # (G, B)
    integrand = np.exp(log_lik + stats.norm.logpdf(z)[:, None])
    return np.log(integrate.trapezoid(integrand, z, axis=0))


def test_vae_elbo_and_iwae_bracket_log_p_x_computed_by_quadrature(x64):
    model = to_float64(tiny_vae(latent=1, shape=(2, 3), hidden=(16,), seed=3))
    x = jnp.array(bits(5, (4, 6), 0.5), jnp.float64)
    exact = grid_log_marginal(model, x)
    reps = 200
    x_rep = jnp.tile(x, (reps, 1))
    bound = np.asarray(vae.elbo(key(0), model, x_rep, n=200, per_example=True).elbo)
    bound = bound.reshape(reps, 4).mean(0)
    assert np.all(bound < exact - 0.005), (bound, exact)
    iwae = np.asarray(vae.iwae_bound(key(1), model, x, k=5000, chunk_size=512, per_example=True))
    np.testing.assert_allclose(iwae, exact, atol=0.01)
    small_k = np.asarray(vae.iwae_bound(key(2), model, x_rep, k=3, per_example=True))
    small_k = small_k.reshape(reps, 4).mean(0)
    assert np.all(bound < small_k) and np.all(small_k < exact), (bound, small_k, exact)


def test_elbo_wires_encoder_sampling_decoder_and_kl_as_written(x64):
    model = to_float64(tiny_vae(latent=2, shape=(2, 2), hidden=(5,), seed=1))
    x = jnp.array(bits(6, (3, 4), 0.5), jnp.float64)
    out = vae.elbo(key(7), model, x.reshape(3, 2, 2), beta=0.3, n=4, per_example=True)
    mean, log_var = (np.asarray(a) for a in model.encode(x))
    eps = np.asarray(jax.random.normal(key(7), (4, 3, 2), jnp.float64))
    z = mean + np.exp(0.5 * log_var) * eps
    rec = stats.bernoulli.logpmf(np.asarray(x), expit(np.asarray(model.decode(jnp.array(z))))).sum(-1)
    kl = 0.5 * (mean ** 2 + np.exp(log_var) - 1 - log_var).sum(-1)
    np.testing.assert_allclose(out.reconstruction, rec.mean(0), rtol=1e-10)
    np.testing.assert_allclose(out.kl, kl, rtol=1e-10)
    np.testing.assert_allclose(out.elbo, rec.mean(0) - 0.3 * kl, rtol=1e-10)
    batch = vae.elbo(key(7), model, x, beta=0.3, n=4)
    np.testing.assert_allclose(batch.elbo, np.mean(out.elbo), rtol=1e-12)
    np.testing.assert_allclose(vae.anomaly_score(key(7), model, x, n=4),
                               -(rec.mean(0) - kl), rtol=1e-10)


def vae_objective(graphdef, x, step_key, beta):
    def f(state):
        return -vae.elbo(step_key, nnx.merge(graphdef, state), x, beta=beta).elbo
    return f


def test_check_grads_on_the_vae_and_autoencoder_losses(x64):
    model = to_float64(tiny_vae(latent=2, shape=(2, 2), hidden=(3,), seed=2))
    x = jnp.array(bits(8, (3, 4), 0.5), jnp.float64)
    graphdef, state = nnx.split(model)
    check_grads(vae_objective(graphdef, x, key(3), 0.5), (state,), order=1, modes=("rev",))
    ae = to_float64(vae.Autoencoder(2, hidden=(3,), image_shape=(2, 2), rngs=nnx.Rngs(0)))
    ae_def, ae_state = nnx.split(ae)
    check_grads(lambda s: vae.autoencoder_loss(nnx.merge(ae_def, s), x), (ae_state,), order=1,
                modes=("rev",))


def test_vae_step_takes_one_gradient_step_on_the_beta_objective(x64):
    model = to_float64(tiny_vae(latent=2, shape=(2, 2), hidden=(4,), seed=4))
    x = jnp.array(bits(9, (6, 4), 0.5), jnp.float64)
    graphdef, state = nnx.split(model)
    before = jax.tree.map(lambda a: jnp.array(a, copy=True), state)   # the step updates in place
    grads = jax.grad(vae_objective(graphdef, x, key(11), 2.5))(before)
    optimizer = nnx.Optimizer(model, optax.sgd(0.1), wrt=nnx.Param)
    metrics = vae.vae_step(key(11), model, optimizer, x, beta=2.5)
    want = jax.tree.map(lambda p, g: p - 0.1 * g, before, grads)
    after = nnx.state(model)
    for a, b in zip(jax.tree.leaves(after), jax.tree.leaves(want)):
        np.testing.assert_allclose(a, b, rtol=1e-10, atol=1e-12)
    first = vae.elbo(key(11), nnx.merge(graphdef, before), x)
    np.testing.assert_allclose(metrics["loss"], -(first.reconstruction - 2.5 * first.kl), rtol=1e-10)
    np.testing.assert_allclose(metrics["elbo"], first.elbo, rtol=1e-10)
    assert set(metrics) == {"loss", "elbo", "reconstruction", "kl"}


def test_vae_update_for_the_training_loop_binarises_then_steps():
    xs = np.random.default_rng(0).random((8, 2, 2)).astype(np.float32)
    models = [tiny_vae(latent=2, shape=(2, 2), hidden=(4,), seed=5) for _ in range(2)]
    opts = [nnx.Optimizer(m, optax.adam(1e-2), wrt=nnx.Param) for m in models]
    update = vae.make_vae_update(beta=0.5)
    got = update({"model": models[0], "optimizer": opts[0]}, (xs,), key(4), 0)
    bits_key, step_key = jax.random.split(key(4))
    want = vae.vae_step(step_key, models[1], opts[1], vae.binarize(bits_key, xs), beta=0.5)
    for name in want:
        np.testing.assert_allclose(got[name], want[name], rtol=1e-6)
    evaluate = vae.make_vae_eval(n=3)
    scored = evaluate({"model": models[0], "optimizer": opts[0]}, (bits(1, (8, 4)),), key(5))
    ref = vae.elbo(key(5), models[0], bits(1, (8, 4)), n=3)
    np.testing.assert_allclose(scored["loss"], -ref.elbo, rtol=1e-6)


def digits_bits():
    from course_lib import data
    split = data.load("digits")
    return (vae.binarize(key(0), split.x_train), np.asarray(split.y_train),
            vae.binarize(key(1), split.x_test), np.asarray(split.y_test))


def train_briefly(model, x, steps, *, labels=None, beta=1.0, lr=3e-3, batch=64):
    optimizer = nnx.Optimizer(model, optax.adam(lr), wrt=nnx.Param)
    rng = np.random.default_rng(0)
    for t in range(steps):
        idx = rng.integers(0, len(x), batch)
        vae.vae_step(jax.random.fold_in(key(9), t), model, optimizer, x[idx],
                     labels=None if labels is None else labels[idx], beta=beta)
    return model


@pytest.fixture(scope="module")
def digits_vae():
    """A 4-D-latent VAE trained for 400 steps on binarised 8x8 digits, and its initial -ELBO."""
    x_train, _, x_test, _ = digits_bits()
    model = vae.VAE(4, hidden=(64,), image_shape=(8, 8), rngs=nnx.Rngs(0))
    before = -float(vae.elbo(key(2), model, x_test, n=5).elbo)
    return train_briefly(model, x_train, 400), before


def test_a_short_training_run_learns_digits(digits_vae):
    model, before = digits_vae
    x_test = digits_bits()[2]
    after = vae.elbo(key(2), model, x_test, n=5)
    assert before > 40 and -float(after.elbo) < 30, (before, -float(after.elbo))
    assert float(after.kl) > 1.0                 # the latent is used (no posterior collapse)
    iwae = -float(vae.iwae_bound(key(3), model, x_test, k=200))
    assert iwae < -float(after.elbo)             # the IWAE bound is tighter than the ELBO


def test_conditional_vae_uses_its_labels():
    x_train, y_train, x_test, y_test = digits_bits()
    model = vae.ConditionalVAE(2, n_classes=10, hidden=(64,), image_shape=(8, 8),
                               rngs=nnx.Rngs(1))
    train_briefly(model, x_train, 400, labels=y_train)
    right = -float(vae.elbo(key(4), model, x_test, labels=y_test, n=5).elbo)
    wrong = -float(vae.elbo(key(4), model, x_test, labels=(y_test + 5) % 10, n=5).elbo)
    assert right + 3.0 < wrong, (right, wrong)   # the true label explains the image better
    samples = vae.generate(key(5), model, 200, labels=np.repeat([0, 1], 100))
    assert samples.shape == (200, 8, 8)
    zeros, ones = np.asarray(samples[:100]).mean(0), np.asarray(samples[100:]).mean(0)
    mean_zero = np.asarray(x_train)[y_train == 0].mean(0)
    mean_one = np.asarray(x_train)[y_train == 1].mean(0)
    assert np.abs(zeros - mean_zero).mean() < np.abs(zeros - mean_one).mean()
    assert np.abs(ones - mean_one).mean() < np.abs(ones - mean_zero).mean()


def test_autoencoder_trains_and_reconstructs():
    x_train, _, x_test, _ = digits_bits()
    model = vae.Autoencoder(4, hidden=(64,), image_shape=(8, 8), rngs=nnx.Rngs(2))
    optimizer = nnx.Optimizer(model, optax.adam(3e-3), wrt=nnx.Param)
    before = float(vae.autoencoder_loss(model, x_test))
    for t in range(300):
        idx = np.random.default_rng(t).integers(0, len(x_train), 64)
        vae.autoencoder_step(model, optimizer, x_train[idx])
    after = float(vae.autoencoder_loss(model, x_test))
    assert after < 0.6 * before, (before, after)
    rec = vae.reconstruct(model, x_test[:5])
    assert rec.shape == (5, 8, 8) and float(rec.min()) >= 0 and float(rec.max()) <= 1


# ------------------------------------------------------------------------------ gradient estimators
def test_score_function_and_reparameterized_gradients_match_closed_forms(x64):
    """f(z) = z^2, z ~ N(mu, sigma^2): d/dmu E f = 2 mu, d/dlog_var E f = sigma^2, and the
    single-draw variances are known in closed form for both estimators."""
    mu, log_var = 0.8, math.log(0.5)
    s2 = math.exp(log_var)
    cmp = vae.compare_gradient_estimators(key(0), lambda z: jnp.sum(z ** 2), jnp.array([mu]),
                                          jnp.array([log_var]), n=400_000)
    for mean in (cmp.score_function_mean, cmp.reparameterized_mean):
        np.testing.assert_allclose(mean.mean, [2 * mu], rtol=0.03)
        np.testing.assert_allclose(mean.log_var, [s2], rtol=0.05)
    score_var_mu = (mu ** 4 + 18 * mu ** 2 * s2 + 15 * s2 ** 2) / s2 - 4 * mu ** 2
    np.testing.assert_allclose(cmp.score_function_variance.mean, [score_var_mu], rtol=0.05)
    np.testing.assert_allclose(cmp.reparameterized_variance.mean, [4 * s2], rtol=0.02)
    np.testing.assert_allclose(cmp.reparameterized_variance.log_var,
                               [mu ** 2 * s2 + 2 * s2 ** 2], rtol=0.03)
    assert np.all(cmp.reparameterized_variance.mean < cmp.score_function_variance.mean)
    sf = vae.score_function_gradient(key(0), lambda z: jnp.sum(z ** 2), jnp.array([mu]),
                                     jnp.array([log_var]), n=10)
    rp = vae.reparameterized_gradient(key(0), lambda z: jnp.sum(z ** 2), jnp.array([mu]),
                                      jnp.array([log_var]), n=10)
    assert sf.mean.shape == rp.log_var.shape == (10, 1)


# ------------------------------------------------------------------------------ ROC AUC
@settings(max_examples=50)
@given(st.lists(st.tuples(st.integers(0, 4), st.booleans()), min_size=2, max_size=40)
       .filter(lambda rows: len({b for _, b in rows}) == 2))
def test_roc_auc_matches_sklearn_with_ties(rows):
    scores = np.array([s for s, _ in rows], np.float32)
    labels = np.array([int(b) for _, b in rows])
    np.testing.assert_allclose(vae.roc_auc(scores, labels), roc_auc_score(labels, scores),
                               rtol=1e-12)


def test_roc_auc_of_perfect_reversed_and_constant_scores():
    labels = np.array([0, 0, 1, 1])
    assert vae.roc_auc([0.1, 0.2, 0.8, 0.9], labels) == 1.0
    assert vae.roc_auc([0.9, 0.8, 0.2, 0.1], labels) == 0.0
    assert vae.roc_auc([0.5, 0.5, 0.5, 0.5], labels) == 0.5


# ------------------------------------------------------------------------------ bad input
def test_bad_inputs_are_refused_naming_the_argument():
    model = tiny_vae(latent=2, shape=(2, 2), hidden=(4,))
    good = bits(0, (3, 2, 2))
    opt = nnx.Optimizer(model, optax.sgd(0.1), wrt=nnx.Param)
    cases = [
        (lambda: vae.elbo(key(), model, bits(0, (3, 3, 2))), "x must be a batch of images"),
        (lambda: vae.elbo(key(), model, bits(0, (4,))), "x must be a batch of images"),
        (lambda: vae.iwae_bound(key(), model, bits(0, (3, 5)), k=2), "x must be a batch"),
        (lambda: vae.VAE(0, rngs=nnx.Rngs(0)), "latent_size"),
        (lambda: vae.Autoencoder(0, rngs=nnx.Rngs(0)), "latent_size"),
        (lambda: vae.VAE(2, hidden=(0,), rngs=nnx.Rngs(0)), r"hidden\[0\]"),
        (lambda: vae.VAE(2, hidden=64, rngs=nnx.Rngs(0)), "hidden"),
        (lambda: vae.ConditionalVAE(2, n_classes=0, rngs=nnx.Rngs(0)), "n_classes"),
        (lambda: vae.elbo(key(), model, good, beta=-0.1), "beta"),
        (lambda: vae.elbo(key(), model, good, beta=float("nan")), "beta"),
        (lambda: vae.vae_step(key(), model, opt, good, beta=-1.0), "beta"),
        (lambda: vae.make_vae_update(beta=-1.0), "beta"),
        (lambda: vae.iwae_bound(key(), model, good, k=0), "k must"),
        (lambda: vae.iwae_estimate(key(), lambda z: z.sum(-1), vae.DiagonalGaussian(
            jnp.zeros((1, 2)), jnp.zeros((1, 2))), k=0), "k must"),
        (lambda: vae.elbo_estimate(key(), lambda z: z.sum(-1), vae.DiagonalGaussian(
            jnp.zeros((1, 2)), jnp.zeros((1, 2))), k=1.5), "k must"),
        (lambda: vae.elbo(key(), model, np.where(good == 1, np.nan, good)), "x contains NaN"),
        (lambda: vae.binarize(key(), np.array([0.5, np.nan])), "images contains NaN"),
        (lambda: vae.elbo(key(), model, good * 2.0), r"x must lie in \[0, 1\]"),
        (lambda: vae.elbo(key(), model, good - 0.5), r"x must lie in \[0, 1\]"),
        (lambda: vae.bernoulli_log_likelihood(np.zeros(4), np.full(4, 1.5)), r"x must lie"),
        (lambda: vae.binarize(key(), np.array([1.2])), r"images must lie"),
        (lambda: vae.elbo(key(), model, good, n=0), "n must"),
        (lambda: vae.elbo(0, model, good), "key must"),
        (lambda: vae.elbo(key(), object(), good), "model must"),
        (lambda: vae.elbo(key(), model, good, labels=[0, 1, 2]), "labels given"),
        (lambda: vae.gaussian_kl(np.zeros(3), np.zeros(2)), "log_var must have the shape"),
        (lambda: vae.roc_auc([0.1, 0.2], [1, 1]), "both classes"),
        (lambda: vae.roc_auc([0.1, 0.2], [0, 2]), "labels must lie"),
        (lambda: vae.roc_auc([0.1, np.nan], [0, 1]), "scores contains NaN"),
        (lambda: vae.generate(key(), model, 0), "n must"),
        (lambda: vae.compare_gradient_estimators(key(), 3.0, np.zeros(1), np.zeros(1), n=5), "f must"),
        (lambda: vae.linear_gaussian_log_marginal(vae.LinearGaussian(np.ones((3, 2)), np.zeros(3), 0.0),
                                                  np.zeros((1, 3))), "noise_std"),
    ]
    for call, message in cases:
        with pytest.raises(ValueError, match=message):
            call()


def test_conditional_vae_demands_valid_labels():
    model = tiny_vae(latent=2, shape=(2, 2), hidden=(4,), cls=vae.ConditionalVAE, n_classes=3)
    x = bits(0, (2, 4))
    with pytest.raises(ValueError, match="labels are required"):
        vae.elbo(key(), model, x)
    with pytest.raises(ValueError, match="labels must lie in"):
        vae.elbo(key(), model, x, labels=[0, 3])
    with pytest.raises(ValueError, match="one label per example"):
        vae.elbo(key(), model, x, labels=[0, 1, 2])
    with pytest.raises(ValueError, match="labels must hold integer"):
        vae.elbo(key(), model, x, labels=[0.0, 1.0])


def test_the_vae_update_plugs_into_the_training_loop():
    from course_lib import train
    x_train, _, x_test, _ = digits_bits()
    model = vae.VAE(4, hidden=(32,), image_shape=(8, 8), rngs=nnx.Rngs(3))
    state = {"model": model, "optimizer": nnx.Optimizer(model, optax.adam(3e-3), wrt=nnx.Param)}
    result = train.loop(state, vae.make_vae_update(), (np.asarray(x_train),), steps=60,
                        batch_size=64, key=key(6), eval_fn=vae.make_vae_eval(),
                        eval_data=(np.asarray(x_test),), eval_every=30, progress=False)
    assert result.steps_done == 60 and result.history["step"] == [30, 60]
    assert {"train_loss", "train_elbo", "train_kl", "eval_loss", "eval_kl"} <= set(result.history)
    assert result.history["eval_loss"][1] < result.history["eval_loss"][0]


def test_a_large_beta_collapses_the_posterior_onto_the_prior(digits_vae):
    """beta-VAE's other end: when KL costs beta times more, q(z|x) falls back to N(0, I)
    (posterior collapse; not mode collapse, which is the GAN failure)."""
    x_train, _, x_test, _ = digits_bits()
    collapsed = vae.VAE(4, hidden=(64,), image_shape=(8, 8), rngs=nnx.Rngs(0))
    train_briefly(collapsed, x_train, 300, beta=30.0)
    kl_beta_1 = float(vae.elbo(key(2), digits_vae[0], x_test).kl)
    kl_beta_30 = float(vae.elbo(key(2), collapsed, x_test).kl)
    assert kl_beta_1 > 1.0 and kl_beta_30 < 0.1, (kl_beta_1, kl_beta_30)
