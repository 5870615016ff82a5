"""course_lib.gpt against independent references: jax.nn.dot_product_attention, per-position
loops, a NumPy transformer, finite differences, brute-force BPE and sampling filters, naive
generation for the KV cache, and a single-device step for the data-parallel one."""
from __future__ import annotations

import json
import math
import os
import subprocess
import sys
import textwrap
from collections import Counter
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings, strategies as st
from jax.test_util import check_grads
from scipy import stats

from course_lib import gpt, train

ROOT = Path(__file__).resolve().parents[1]
TINY = gpt.Config(vocab_size=11, block_size=8, n_layer=2, n_head=2, width=8)


@pytest.fixture(scope="module")
def tiny():
    return gpt.init(jax.random.key(0), TINY)


def _random_params(key, config, scale=0.3):
    """Parameters with non-trivial layer norms (init leaves them at 1 and 0), so that the
    reference checks every piece."""
    params = gpt.init(key, config)
    leaves, tree = jax.tree.flatten(params)
    keys = jax.random.split(jax.random.fold_in(key, 1), len(leaves))
    leaves = [a + scale * jax.random.normal(k, a.shape) for a, k in zip(leaves, keys)]
    return jax.tree.unflatten(tree, leaves)


# ------------------------------------------------------------------------------- attention
def _qkv(seed, shape=(2, 5, 3, 4)):
    k1, k2, k3 = jax.random.split(jax.random.key(seed), 3)
    return (jax.random.normal(k1, shape), jax.random.normal(k2, shape),
            jax.random.normal(k3, shape))


@pytest.mark.parametrize("causal", [True, False])
def test_attention_matches_jax_dot_product_attention(causal):
    q, k, v = _qkv(0)
    ours = gpt.attention(q, k, v, causal=causal)
    ref = jax.nn.dot_product_attention(q, k, v, is_causal=causal)
    np.testing.assert_allclose(ours, ref, rtol=1e-5, atol=1e-6)


def test_attention_matches_a_per_position_loop():
    q, k, v = (np.asarray(a, np.float64) for a in _qkv(1))
    B, T, H, D = q.shape
    out = np.zeros_like(q)
    for b in range(B):
        for h in range(H):
            for i in range(T):
                s = np.array([q[b, i, h] @ k[b, j, h] / math.sqrt(D) for j in range(i + 1)])
                w = np.exp(s - s.max())
                w /= w.sum()
                out[b, i, h] = sum(w[j] * v[b, j, h] for j in range(i + 1))
    np.testing.assert_allclose(gpt.attention(q, k, v), out, rtol=1e-5, atol=1e-6)


def test_causal_mask_and_weights():
    np.testing.assert_array_equal(gpt.causal_mask(3), [[1, 0, 0], [1, 1, 0], [1, 1, 1]])
    q, k, _ = _qkv(2)
    w = gpt.attention_weights(q, k)
    np.testing.assert_allclose(w.sum(-1), 1.0, rtol=1e-6)
    assert float(jnp.abs(jnp.triu(w, 1)).max()) == 0.0
    # without 1/sqrt(D) at a large D the softmax saturates: rows close to one-hot
    q, k, _ = _qkv(3, (1, 16, 1, 256))
    assert float(gpt.attention_weights(q, k, causal=False, scale=False).max(-1).mean()) > 0.9
    assert float(gpt.attention_weights(q, k, causal=False).max(-1).mean()) < 0.5


def test_heads_split_and_merge_are_inverse():
    x = jnp.arange(2 * 3 * 12, dtype=jnp.float32).reshape(2, 3, 12)
    h = gpt.split_heads(x, 4)
    assert h.shape == (2, 3, 4, 3)
    np.testing.assert_array_equal(h[0, 0, 1], x[0, 0, 3:6])
    np.testing.assert_array_equal(gpt.merge_heads(h), x)


def test_sinusoidal_positions_closed_form():
    p = np.asarray(gpt.sinusoidal_positions(50, 16))
    t, i = 7, 3
    assert p[t, 2 * i] == pytest.approx(math.sin(t / 10000 ** (2 * i / 16)), abs=1e-6)
    assert p[t, 2 * i + 1] == pytest.approx(math.cos(t / 10000 ** (2 * i / 16)), abs=1e-6)
    # a shift by s is the same rotation at every position
    s = 5
    a = p[s:, :2]
    rot = np.linalg.lstsq(p[:-s, :2], a, rcond=None)[0]
    np.testing.assert_allclose(p[:-s, :2] @ rot, a, atol=1e-5)


# ------------------------------------------------------------------------------- the model
def _numpy_logits(params, tokens):
    """An independent NumPy (float64) GPT forward pass with the same weights."""
    c = params.config
    f = lambda a: np.asarray(a, np.float64)

    def ln(x, p):
        mu = x.mean(-1, keepdims=True)
        var = ((x - mu) ** 2).mean(-1, keepdims=True)
        return (x - mu) / np.sqrt(var + 1e-5) * f(p["scale"]) + f(p["bias"])

    def gelu(x):
        from scipy.special import erf
        return 0.5 * x * (1 + erf(x / math.sqrt(2)))

    B, T = tokens.shape
    pos = f(params.pos)[:T] if c.positions == "learned" else np.array(
        [[math.sin(t / 10000 ** (i / c.width)) if i % 2 == 0 else
          math.cos(t / 10000 ** ((i - 1) / c.width)) for i in range(c.width)] for t in range(T)])
    x = f(params.tok)[tokens] + pos
    H, D = c.n_head, c.width // c.n_head
    for layer in params.blocks:
        h = ln(x, layer["ln1"])
        qkv = h @ f(layer["qkv"])
        q, k, v = (qkv[..., i * c.width:(i + 1) * c.width].reshape(B, T, H, D) for i in range(3))
        out = np.zeros((B, T, H, D))
        for b in range(B):
            for hd in range(H):
                s = q[b, :, hd] @ k[b, :, hd].T / math.sqrt(D)
                s = np.where(np.tril(np.ones((T, T))) > 0, s, -np.inf)
                w = np.exp(s - s.max(-1, keepdims=True))
                out[b, :, hd] = (w / w.sum(-1, keepdims=True)) @ v[b, :, hd]
        x = x + out.reshape(B, T, c.width) @ f(layer["proj"])
        x = x + gelu(ln(x, layer["ln2"]) @ f(layer["fc"])) @ f(layer["fc_proj"])
    return ln(x, params.ln_f) @ f(params.tok).T


@pytest.mark.parametrize("positions", ["learned", "sinusoidal"])
def test_forward_matches_numpy_reference(positions):
    config = gpt.Config(13, 10, 2, 2, 8, positions=positions)
    params = _random_params(jax.random.key(4), config)
    tokens = np.asarray(jax.random.randint(jax.random.key(5), (3, 9), 0, 13))
    np.testing.assert_allclose(gpt.logits(params, tokens), _numpy_logits(params, tokens),
                               rtol=1e-4, atol=1e-4)
    targets = np.roll(tokens, -1, axis=1)
    ref = _numpy_logits(params, tokens)
    ref = ref - ref.max(-1, keepdims=True)
    logp = ref - np.log(np.exp(ref).sum(-1, keepdims=True))
    nll = -np.take_along_axis(logp, targets[..., None], -1).mean()
    assert float(gpt.loss(params, tokens, targets)) == pytest.approx(nll, rel=1e-5)


@settings(max_examples=10)
@given(st.data())
def test_logits_are_causal(data):
    params = _random_params(jax.random.key(6), TINY)
    T = TINY.block_size
    tokens = np.array(data.draw(st.lists(st.integers(0, 10), min_size=T, max_size=T)))
    t = data.draw(st.integers(0, T - 2))
    changed = tokens.copy()
    changed[t + 1:] = data.draw(st.lists(st.integers(0, 10), min_size=T - t - 1,
                                         max_size=T - t - 1))
    a = gpt.logits(params, tokens[None])[0]
    b = gpt.logits(params, changed[None])[0]
    np.testing.assert_allclose(a[:t + 1], b[:t + 1], rtol=1e-5, atol=1e-6)


def test_gradients_match_finite_differences():
    with jax.enable_x64(True):
        params = _random_params(jax.random.key(7), gpt.Config(7, 5, 2, 2, 4))
        params = jax.tree.map(lambda a: a.astype(jnp.float64), params)
        tokens = jnp.array([[1, 2, 3, 4, 0], [6, 5, 4, 3, 2]])
        targets = jnp.roll(tokens, -1, axis=1)
        check_grads(lambda p: gpt.loss(p, tokens, targets), (params,), order=1, modes=["rev"],
                    atol=1e-6, rtol=1e-6)


def test_custom_gradients_match_autodiff_of_the_formulas():
    x = jax.random.normal(jax.random.key(8), (2, 3, 6))
    s, b = jax.random.normal(jax.random.key(9), (6,)), jax.random.normal(jax.random.key(10), (6,))
    w = jax.random.normal(jax.random.key(11), (6, 5))
    plain_ln = lambda x, s, b: (x - x.mean(-1, keepdims=True)) / jnp.sqrt(
        x.var(-1, keepdims=True) + 1e-5) * s + b
    g = jax.random.normal(jax.random.key(12), (2, 3, 6))
    ours = jax.vjp(gpt.layer_norm, x, s, b)[1](g)
    ref = jax.vjp(plain_ln, x, s, b)[1](g)
    for a, r in zip(ours, ref):
        np.testing.assert_allclose(a, r, rtol=1e-4, atol=1e-5)
    g = jax.random.normal(jax.random.key(13), (2, 3, 5))
    ours = jax.vjp(gpt.linear, x, w)[1](g)
    ref = jax.vjp(jnp.matmul, x, w)[1](g)
    for a, r in zip(ours, ref):
        np.testing.assert_allclose(a, r, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("positions", ["learned", "sinusoidal"])
def test_param_count_formula_equals_the_real_count(positions):
    for config in (gpt.Config(65, 64, 4, 4, 128, positions=positions),
                   gpt.Config(7, 5, 3, 2, 4, positions=positions)):
        params = gpt.init(jax.random.key(0), config)
        assert gpt.param_count(config) == sum(a.size for a in jax.tree.leaves(params))
    assert gpt.param_count(gpt.Config(65, 64, 4, 4, 128)) == 805_248


def test_init_scales_and_tying():
    params = gpt.init(jax.random.key(0), gpt.Config(65, 64, 4, 4, 128))
    assert float(jnp.std(params.blocks[0]["qkv"])) == pytest.approx(0.02, rel=0.02)
    assert float(jnp.std(params.blocks[0]["proj"])) == pytest.approx(0.02 / math.sqrt(8), rel=0.05)
    # weight tying: the output layer is the embedding, so its gradient has both parts
    tokens = jnp.array([[1, 2, 3]])
    g = jax.grad(lambda p: gpt.loss(p, tokens, tokens))(params)
    assert float(jnp.abs(g.tok[50]).max()) > 0       # id 50 is never an input: output part only


# ------------------------------------------------------------------------------- training
def test_loop_trains_checkpoints_and_resumes_exactly(tmp_path):
    text = "to be or not to be that is the question " * 20
    chars = sorted(set(text))
    ids = np.array([chars.index(c) for c in text], np.int32)
    config = gpt.Config(len(chars), 16, 1, 2, 16)
    tx = gpt.make_optimizer(learning_rate=1e-2, steps=30, warmup_steps=3)
    data = (gpt.window_starts(ids, 16),)

    def run(steps, ckpt, resume=False, state=None):
        state = state or gpt.train_state(gpt.init(jax.random.key(0), config), tx)
        result = train.loop(state, gpt.make_update(tx, ids), data, steps=steps, batch_size=8,
                            key=jax.random.key(1), eval_fn=gpt.make_eval_fn(ids),
                            eval_data=(data[0][:32],), eval_every=15, checkpoint_dir=ckpt,
                            checkpoint_every=15, resume=resume, progress=False)
        return state, result

    full, result = run(30, tmp_path / "a")
    assert result.history["train_loss"][-1] < result.history["train_loss"][0] - 0.3
    assert result.history["eval_loss"][-1] < math.log(len(chars)) - 0.5
    half, _ = run(15, tmp_path / "b")
    resumed, _ = run(30, tmp_path / "b", resume=True,
                     state=gpt.train_state(gpt.init(jax.random.key(9), config), tx))
    for a, b in zip(jax.tree.leaves(full.params.get_value()),
                    jax.tree.leaves(resumed.params.get_value())):
        np.testing.assert_array_equal(a, b)


def test_windows_and_sampler():
    tokens = np.arange(20, dtype=np.int32)
    x, y = gpt.windows(tokens, np.array([0, 5]), 4)
    np.testing.assert_array_equal(x, [[0, 1, 2, 3], [5, 6, 7, 8]])
    np.testing.assert_array_equal(y, x + 1)
    np.testing.assert_array_equal(gpt.window_starts(tokens, 4), np.arange(16))
    x, y = gpt.sample_windows(jax.random.key(0), tokens, 50, 4)
    assert x.shape == (50, 4) and int(x.max()) <= 18
    np.testing.assert_array_equal(y, x + 1)


def test_optimizer_schedule_and_decay_mask(tiny):
    tx = gpt.make_optimizer(learning_rate=1e-2, steps=100, warmup_steps=10, weight_decay=0.5,
                            clip_norm=1e9)
    state = tx.init(tiny)
    zeros = jax.tree.map(jnp.zeros_like, tiny)
    updates, _ = tx.update(zeros, state, tiny)
    # zero gradient, step 0 of warm-up: learning rate 0, nothing moves
    assert all(float(jnp.abs(u).max()) == 0 for u in jax.tree.leaves(updates))
    for _ in range(5):
        updates, state = tx.update(zeros, state, tiny)
    # with zero gradients only decoupled weight decay moves: matrices shrink, layer norms not
    assert float(jnp.abs(updates.blocks[0]["qkv"]).max()) > 0
    assert float(jnp.abs(updates.blocks[0]["ln1"]["scale"]).max()) == 0


# ------------------------------------------------------------------------------- sampling
def test_top_k_keeps_exactly_k_with_ties():
    logits = jnp.array([1.0, 3.0, 3.0, 2.0, 3.0, 0.0])
    kept = np.isfinite(np.asarray(gpt.filter_logits(logits, top_k=2)))
    np.testing.assert_array_equal(kept, [0, 1, 1, 0, 0, 0])        # ties: lower id first
    for k in range(1, 7):
        assert np.isfinite(np.asarray(gpt.filter_logits(logits, top_k=k))).sum() == k
    assert np.isfinite(np.asarray(gpt.filter_logits(logits, top_k=50))).all()
    assert int(gpt.sample_token(jax.random.key(0), logits, temperature=0)) == 1


def _brute_nucleus(p, top_p):
    """The smallest set of ids (the most probable first, ties by id) with mass >= top_p."""
    order = sorted(range(len(p)), key=lambda i: (-p[i], i))
    for size in range(1, len(p) + 1):
        if sum(p[i] for i in order[:size]) >= top_p - 1e-12:
            return set(order[:size])
    return set(order)


@settings(max_examples=20)
@given(st.lists(st.floats(-3, 3), min_size=2, max_size=8),
       st.floats(0.05, 0.999), st.floats(0.3, 3.0), st.integers(1, 8))
def test_filters_match_brute_force(logits, top_p, temperature, top_k):
    z = np.asarray(logits, np.float64) / temperature
    # top-k first (ties: lower id), then the nucleus of the renormalised rest
    order = sorted(range(len(z)), key=lambda i: (-z[i], i))[:top_k]
    p = np.zeros(len(z))
    p[order] = np.exp(z[order] - z[order].max())
    p /= p.sum()
    keep = _brute_nucleus(p, top_p)
    ref = np.zeros(len(z))
    ref[list(keep)] = p[list(keep)]
    ref /= ref.sum()
    out = jax.nn.softmax(gpt.filter_logits(jnp.asarray(logits, jnp.float32),
                                           temperature=temperature, top_k=top_k, top_p=top_p))
    # a set decided by a float32 cumulative sum can differ where the mass sits exactly at p
    margin = min(abs(np.cumsum(sorted(p, reverse=True))[:len(keep)] - top_p))
    if margin > 1e-5:
        np.testing.assert_allclose(out, ref, atol=2e-6)


def test_temperature_to_zero_is_greedy():
    # rows of distinct logits 0.5 apart: at temperature 0.01 the runner-up is e^-50 as likely
    logits = 0.5 * jax.vmap(lambda k: jax.random.permutation(k, 9))(
        jax.random.split(jax.random.key(1), 200)).astype(jnp.float32)
    greedy = jnp.argmax(logits, -1)
    np.testing.assert_array_equal(gpt.sample_token(jax.random.key(2), logits, temperature=0),
                                  greedy)
    np.testing.assert_array_equal(
        gpt.sample_token(jax.random.key(2), logits, temperature=0.01), greedy)
    p = jax.nn.softmax(gpt.filter_logits(logits, temperature=0.01))
    np.testing.assert_allclose(p, jax.nn.one_hot(greedy, 9), atol=1e-12)


def test_sample_frequencies_match_the_filtered_distribution():
    logits = jnp.array([2.0, 1.5, 1.0, 0.5, 0.0, -1.0, -3.0])
    options = dict(temperature=0.8, top_k=5, top_p=0.9)
    p = np.asarray(jax.nn.softmax(gpt.filter_logits(logits, **options)), np.float64)
    n = 40_000
    draws = gpt.sample_token(jax.random.key(3), jnp.broadcast_to(logits, (n, 7)), **options)
    counts = np.bincount(np.asarray(draws), minlength=7)
    assert counts[p == 0].sum() == 0
    kept = p > 0
    chi2 = stats.chisquare(counts[kept], n * p[kept] / p[kept].sum())
    assert chi2.pvalue > 1e-3


# ------------------------------------------------------------------------------- KV cache
@pytest.mark.parametrize("options", [dict(temperature=0.0), dict(temperature=1.0),
                                     dict(temperature=0.7, top_k=3, top_p=0.8)])
def test_kv_cache_generates_the_same_tokens_as_naive(options):
    config = gpt.Config(vocab_size=11, block_size=12, n_layer=2, n_head=2, width=8)
    params = _random_params(jax.random.key(14), config, scale=0.5)
    for prompt, length in (([3], 11), ([1, 4, 1, 5], 8)):
        naive = gpt.generate(jax.random.key(15), params, prompt, length, **options)
        cached = gpt.generate_cached(jax.random.key(15), params, prompt, length, **options)
        assert naive.shape == (len(prompt) + length,)
        np.testing.assert_array_equal(naive, cached)
        np.testing.assert_array_equal(cached[:len(prompt)], prompt)


def test_kv_cache_compiles_once(tiny):
    gpt.generate_cached(jax.random.key(0), tiny, [1, 2], 3)
    before = gpt._generate_kv._cache_size()
    gpt.generate_cached(jax.random.key(1), tiny, [1, 2, 3], 5)
    gpt.generate_cached(jax.random.key(2), tiny, [4], 1, temperature=0.5)
    assert gpt._generate_kv._cache_size() == before


def test_naive_generation_slides_past_the_context(tiny):
    out = gpt.generate(jax.random.key(0), tiny, [1, 2, 3], 20, temperature=0)
    assert out.shape == (23,)
    # greedy token t is the argmax of the logits of the last block_size tokens before it
    t = 15
    window = out[t - TINY.block_size:t]
    assert int(out[t]) == int(jnp.argmax(gpt.logits(tiny, window[None])[0, -1]))


# ------------------------------------------------------------------------------- BPE
def _brute_bpe(text, vocab_size):
    """Training by the book, in plain Python: recount every pair after every merge."""
    chars = sorted(set(text))
    seq = [chars.index(c) for c in text]
    merges = []
    while len(chars) + len(merges) < vocab_size and len(seq) >= 2:
        counts = Counter(zip(seq, seq[1:]))
        best = max(counts.values())
        if best < 2:
            break
        pair = min(p for p, c in counts.items() if c == best)
        new = len(chars) + len(merges)
        merges.append(pair)
        out, i = [], 0
        while i < len(seq):
            if i + 1 < len(seq) and (seq[i], seq[i + 1]) == pair:
                out.append(new)
                i += 2
            else:
                out.append(seq[i])
                i += 1
        seq = out
    return tuple(merges), seq


def test_bpe_merges_equal_a_brute_force_recount():
    text = ("the cat sat on the mat; the bat ate the rat. aaaa bbb abab " * 3)[:400]
    bpe = gpt.train_bpe(text, 60)
    merges, seq = _brute_bpe(text, 60)
    assert bpe.merges == merges
    np.testing.assert_array_equal(gpt.bpe_encode(bpe, text), seq)
    assert gpt.bpe_decode(bpe, gpt.bpe_encode(bpe, text)) == text
    assert len(gpt.bpe_encode(bpe, text)) < len(text) / 2


def test_bpe_ties_and_overlaps():
    # (a, b) and (c, d) both occur twice: the smaller pair of ids is merged first
    bpe = gpt.train_bpe("ababcdcd", 6)
    assert bpe.merges[0] == (0, 1)
    # "aaaa": (a, a) counted 3 times (overlapping), replaced left to right: two new tokens
    bpe = gpt.train_bpe("aaaa", 10)
    assert bpe.merges == ((0, 0),)          # then (1, 1) occurs once: training stops
    np.testing.assert_array_equal(gpt.bpe_encode(bpe, "aaaaa"), [1, 1, 0])
    assert gpt.bpe_pieces(bpe) == ["a", "aa"]


@settings(max_examples=25)
@given(st.text(min_size=1, max_size=60), st.integers(0, 30))
def test_bpe_round_trip(text, extra):
    bpe = gpt.train_bpe(text, len(set(text)) + extra)
    assert gpt.bpe_decode(bpe, gpt.bpe_encode(bpe, text)) == text
    sub = text[len(text) // 3:]
    assert gpt.bpe_decode(bpe, gpt.bpe_encode(bpe, sub)) == sub
    assert bpe.merges == _brute_bpe(text, len(set(text)) + extra)[0]


# ------------------------------------------------------------------------------- data parallel
_DP_SCRIPT = textwrap.dedent("""
    import json, jax, jax.numpy as jnp, numpy as np
    from course_lib import gpt
    assert jax.device_count() == 8, jax.devices()
    config = gpt.Config(17, 8, 2, 2, 16)
    tx = gpt.make_optimizer(learning_rate=1e-2, steps=10, warmup_steps=1)
    x = jax.random.randint(jax.random.key(1), (16, 8), 0, 17)
    y = jax.random.randint(jax.random.key(2), (16, 8), 0, 17)
    fresh = lambda: gpt.init(jax.random.key(0), config)
    p1, s1 = fresh(), tx.init(fresh())
    one = gpt.make_train_step(tx)
    mesh = gpt.make_mesh()
    p8 = gpt.replicate(mesh, fresh())
    s8 = gpt.replicate(mesh, tx.init(fresh()))
    xs, ys = gpt.shard_batch(mesh, x, y)
    layout = gpt.describe_layout(mesh, p8, xs)
    many = gpt.make_data_parallel_step(tx, mesh)
    losses = []
    for _ in range(2):
        p1, s1, l1 = one(p1, s1, x, y)
        p8, s8, l8 = many(p8, s8, xs, ys)
        losses.append((float(l1), float(l8)))
    diff = max(float(jnp.abs(a - b).max()) for a, b in zip(jax.tree.leaves(p1), jax.tree.leaves(p8)))
    shards = len(xs.addressable_shards)
    print(json.dumps(dict(losses=losses, diff=diff, shards=shards, layout=layout,
                          replicated=all(len(a.sharding.device_set) == 8 for a in jax.tree.leaves(p8)))))
""")


def test_data_parallel_step_equals_single_device_step():
    env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=8",
               JAX_PLATFORMS="cpu")
    out = subprocess.run([sys.executable, "-c", _DP_SCRIPT], cwd=ROOT, env=env,
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    res = json.loads(out.stdout.strip().splitlines()[-1])
    for l1, l8 in res["losses"]:
        assert l8 == pytest.approx(l1, rel=1e-5)
    assert res["diff"] < 1e-5
    assert res["shards"] == 8 and res["replicated"]
    assert "rows 14:16 on cpu:7" in res["layout"] and "8 device(s)" in res["layout"]


def test_data_parallel_on_this_machine_prints_its_layout(tiny):
    mesh = gpt.make_mesh()
    x = np.zeros((jax.device_count() * 2, 8), np.int32)
    (xs,) = gpt.shard_batch(mesh, x)
    text = gpt.describe_layout(mesh, gpt.replicate(mesh, tiny), xs)
    assert "device(s) on axis 'data'" in text and "params:" in text


# ------------------------------------------------------------------------------- bad input
@pytest.mark.parametrize("kwargs, name", [
    (dict(block_size=0), "block_size"), (dict(n_head=3), "n_head"), (dict(width=True), "width"),
    (dict(vocab_size=2.5), "vocab_size"), (dict(positions="rope"), "positions"),
])
def test_bad_config_is_refused(kwargs, name):
    base = dict(vocab_size=11, block_size=8, n_layer=2, n_head=2, width=8)
    with pytest.raises(ValueError, match=name):
        gpt.Config(**(base | kwargs))


@pytest.mark.parametrize("call, name", [
    (lambda p: gpt.generate(jax.random.key(0), p, list(range(9)), 1), "prompt_ids"),
    (lambda p: gpt.generate_cached(jax.random.key(0), p, [1, 2], 7), "length"),
    (lambda p: gpt.generate(jax.random.key(0), p, [11], 1), "prompt_ids"),
    (lambda p: gpt.generate(jax.random.key(0), p, [1], 2, top_k=0), "top_k"),
    (lambda p: gpt.generate(jax.random.key(0), p, [1], 2, top_p=0.0), "top_p"),
    (lambda p: gpt.generate(jax.random.key(0), p, [1], 2, top_p=1.5), "top_p"),
    (lambda p: gpt.generate_cached(jax.random.key(0), p, [1], 2, temperature=-1), "temperature"),
    (lambda p: gpt.generate(jax.random.key(0), p, [1], 0), "length"),
    (lambda p: gpt.logits(p, [[1, 2, 99]]), "tokens"),
    (lambda p: gpt.logits(p, np.zeros((1, 9), int)), "tokens"),
    (lambda p: gpt.loss(p, [[1, 2]], [[1, -1]]), "targets"),
    (lambda p: gpt.filter_logits(jnp.zeros(4), top_k=-2), "top_k"),
    (lambda p: gpt.filter_logits(jnp.zeros(4), temperature=float("nan")), "temperature"),
    (lambda p: gpt.train_bpe("abc", 2), "vocab_size"),
    (lambda p: gpt.bpe_encode(gpt.train_bpe("abc", 3), "abd"), "text"),
    (lambda p: gpt.bpe_decode(gpt.train_bpe("abc", 3), [3]), "ids"),
    (lambda p: gpt.shard_batch(gpt.make_mesh(), np.zeros((3, 2)))
     if jax.device_count() > 1 else gpt.causal_mask(0), "arrays|length"),
    (lambda p: gpt.make_optimizer(learning_rate=0.0), "learning_rate"),
    (lambda p: gpt.bits_per_char(1.0, chars_per_token=0), "chars_per_token"),
    (lambda p: gpt.init(jax.random.key(0), dict(vocab_size=3)), "config"),
])
def test_bad_input_is_refused_with_its_name(tiny, call, name):
    with pytest.raises(ValueError, match=name):
        call(tiny)


def test_bits_per_char():
    assert gpt.bits_per_char(math.log(2)) == pytest.approx(1.0)
    assert gpt.bits_per_char(math.log(4), chars_per_token=2.0) == pytest.approx(1.0)
