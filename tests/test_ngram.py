"""Oracle tests for course_lib.ngram: brute-force counting and enumeration, closed forms, the
chain rule summed by hand, and check_grads for the neural bigram. Float64 (jax.enable_x64)
unless a test says so."""
from __future__ import annotations

import itertools
import math
from collections import Counter

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings, strategies as st
from jax.test_util import check_grads

from course_lib import data, ngram

HYP = settings(max_examples=25, deadline=None)


@pytest.fixture(autouse=True)
def x64():
    with jax.enable_x64(True):
        yield


# =========================================================================== n-grams


def brute_counts(text: str, order: int, vocab: str) -> Counter:
    return Counter(text[i: i + order] for i in range(len(text) - order + 1))


@given(text=st.text(alphabet="abcd", min_size=48, max_size=48), order=st.integers(1, 4))
@HYP
def test_ngram_counts_match_brute_force_counting(text, order):
    vocab = data.CharVocab("abcd")
    counts = np.asarray(ngram.ngram_counts(ngram.text_windows(vocab.encode(text), order), 4))
    brute = brute_counts(text, order, "abcd")
    for gram in map("".join, itertools.product("abcd", repeat=order)):
        row = sum(vocab.chars.index(ch) * 4 ** (order - 2 - i) for i, ch in enumerate(gram[:-1]))
        assert counts[row, vocab.chars.index(gram[-1])] == brute[gram]
    assert counts.sum() == len(text) - order + 1


@given(text=st.text(alphabet="abc", min_size=30, max_size=30), k=st.sampled_from([0.01, 0.5, 1.0, 3.0]))
@HYP
def test_add_k_probabilities_match_the_formula_and_normalise(text, k):
    vocab = data.CharVocab("abc")
    model = ngram.fit_ngram(ngram.text_windows(vocab.encode(text), 2), 3, k=k)
    probs = np.exp(np.asarray(model.log_probs))
    np.testing.assert_allclose(probs.sum(axis=1), 1.0, rtol=1e-12)
    pairs = brute_counts(text, 2, "abc")
    for a, b in itertools.product("abc", repeat=2):
        total = sum(pairs[a + c] for c in "abc")
        expected = (pairs[a + b] + k) / (total + 3 * k)
        assert probs["abc".index(a), "abc".index(b)] == pytest.approx(expected, rel=1e-12)


def test_log_likelihood_is_the_chain_rule_sum():
    text = "abacabad" * 3 + "dcba"
    vocab = data.CharVocab("abcd")
    windows = ngram.text_windows(vocab.encode(text), 3)
    model = ngram.fit_ngram(windows, 4, k=0.5)
    lp = np.asarray(model.log_probs)
    by_hand = sum(lp[vocab.chars.index(text[i]) * 4 + vocab.chars.index(text[i + 1]),
                     vocab.chars.index(text[i + 2])] for i in range(len(text) - 2))
    assert float(ngram.log_likelihood(model, windows)) == pytest.approx(by_hand, rel=1e-12)
    assert float(ngram.perplexity(model, windows)) == pytest.approx(math.exp(-by_hand / (len(text) - 2)))


def test_chain_rule_sums_to_one_over_all_sequences():
    """Brute force: with a fixed start context, sum over all V^L strings of prod p = 1."""
    windows = ngram.text_windows(jnp.asarray([0, 1, 2, 1, 0, 0, 2, 2, 1]), 3)
    model = ngram.fit_ngram(windows, 3, k=0.3)
    lp = np.asarray(model.log_probs)
    total = 0.0
    for seq in itertools.product(range(3), repeat=5):
        full = (0, 0) + seq
        total += math.exp(sum(lp[full[t] * 3 + full[t + 1], full[t + 2]] for t in range(5)))
    assert total == pytest.approx(1.0, rel=1e-12)


def test_uniform_model_has_perplexity_equal_to_vocab_size():
    v = 7
    uniform = ngram.NGramModel(jnp.full((v, v), -np.log(v)), 2, v)
    windows = jax.random.randint(jax.random.key(0), (300, 2), 0, v)
    assert float(ngram.perplexity(uniform, windows)) == pytest.approx(v, rel=1e-12)
    # add-k with overwhelming k tends to the uniform model
    heavy = ngram.fit_ngram(windows, v, k=1e9)
    assert float(ngram.perplexity(heavy, windows)) == pytest.approx(v, rel=1e-6)


def test_deterministic_text_has_perplexity_one_and_mle_unseen_is_infinite():
    vocab = data.CharVocab("abc")
    windows = ngram.text_windows(vocab.encode("abc" * 30), 2)
    mle = ngram.fit_ngram(windows, 3, k=0.0)
    assert float(ngram.perplexity(mle, windows)) == pytest.approx(1.0, abs=1e-12)
    unseen = ngram.text_windows(vocab.encode("acb"), 2)
    assert np.isinf(float(ngram.perplexity(mle, unseen)))
    assert np.isfinite(float(ngram.perplexity(ngram.fit_ngram(windows, 3, k=1.0), unseen)))


def test_name_windows_pad_with_the_boundary():
    vocab = data.CharVocab.from_text(["ab", ngram.BOUNDARY])
    got = [vocab.decode(w) for w in ngram.name_windows(["ab", "b"], vocab, 3)]
    assert got == ["..a", ".ab", "ab.", "..b", ".b."]


def test_interpolated_model_is_the_mixture_of_orders():
    vocab = data.CharVocab("abcd")
    text = "abcabdacbdcadbbacd" * 2
    w3 = ngram.text_windows(vocab.encode(text), 3)
    lam = np.array([0.2, 0.3, 0.5])
    mixed = np.exp(np.asarray(ngram.fit_interpolated_ngram(w3, 4, lambdas=lam, k=0.1).log_probs))
    p1 = np.exp(np.asarray(ngram.fit_ngram(w3[:, 2:], 4, k=0.1).log_probs))[0]
    p2 = np.exp(np.asarray(ngram.fit_ngram(w3[:, 1:], 4, k=0.1).log_probs))
    p3 = np.exp(np.asarray(ngram.fit_ngram(w3, 4, k=0.1).log_probs))
    for a, b in itertools.product(range(4), repeat=2):
        expected = lam[0] * p1 + lam[1] * p2[b] + lam[2] * p3[a * 4 + b]
        np.testing.assert_allclose(mixed[a * 4 + b], expected, rtol=1e-12)
    top_only = ngram.fit_interpolated_ngram(w3, 4, lambdas=[0, 0, 1], k=0.1).log_probs
    np.testing.assert_allclose(np.asarray(top_only), np.log(p3), rtol=1e-12)


# =========================================================================== sampling


def test_sampling_follows_the_tempered_distribution():
    """First symbol after the start context: frequencies match softmax(log p / T)."""
    log_p = np.log(np.array([0.5, 0.3, 0.15, 0.05]))
    model = ngram.NGramModel(jnp.asarray(np.tile(log_p, (4, 1))), 2, 4)
    for temp in (1.0, 0.5, 2.0):
        ids = np.asarray(ngram.sample_ngram(jax.random.key(3), model, 20_000, 1, temperature=temp))
        freq = np.bincount(ids[:, 0], minlength=4) / ids.shape[0]
        target = np.exp(log_p / temp) / np.exp(log_p / temp).sum()
        assert np.all(np.abs(freq - target) < 4 * np.sqrt(target * (1 - target) / ids.shape[0]) + 1e-3)


def test_sampling_is_reproducible_and_tiny_temperature_is_greedy():
    vocab = data.CharVocab("abc")
    model = ngram.fit_ngram(ngram.text_windows(vocab.encode("abcabcaabbcc" * 5), 3), 3, k=0.5)
    a = ngram.sample_ngram(jax.random.key(0), model, 4, 30, context=[0, 1])
    np.testing.assert_array_equal(np.asarray(a), np.asarray(ngram.sample_ngram(jax.random.key(0), model, 4, 30, context=[0, 1])))
    greedy = np.asarray(ngram.sample_ngram(jax.random.key(1), model, 3, 12, temperature=1e-4, context=[0, 1]))
    lp, ctx = np.asarray(model.log_probs), [0, 1]
    for t in range(12):
        nxt = int(np.argmax(lp[ctx[-2] * 3 + ctx[-1]]))
        assert np.all(greedy[:, t] == nxt)
        ctx.append(nxt)


def test_decode_names_cuts_at_the_boundary():
    vocab = data.CharVocab.from_text(["abc", ngram.BOUNDARY])
    ids = np.array([vocab.encode("ab.ca"), vocab.encode("...ab")])
    assert ngram.decode_names(ids, vocab) == ["ab", ""]


@pytest.mark.parametrize("call,argument", [
    (lambda m: ngram.sample_ngram(jax.random.key(0), m, 2, 5, temperature=0.0), "temperature"),
    (lambda m: ngram.sample_ngram(jax.random.key(0), m, 2, 5, temperature=-1.0), "temperature"),
    (lambda m: ngram.sample_ngram(jax.random.key(0), m, 0, 5), "n"),
    (lambda m: ngram.sample_ngram(jax.random.key(0), m, 2, 5, context=[0, 1, 2]), "context"),
    (lambda m: ngram.fit_ngram(np.zeros((3, 2), np.int32), 3, k=-1.0), "k"),
    (lambda m: ngram.fit_ngram(np.zeros((3, 30), np.int32), 3), "order"),
    (lambda m: ngram.fit_ngram(np.full((3, 2), 5), 3), "windows"),
    (lambda m: ngram.name_windows(["ab"], data.CharVocab(".ab"), 0), "order"),
    (lambda m: ngram.text_windows([0, 1], 3), "ids"),
    (lambda m: ngram.fit_interpolated_ngram(np.zeros((3, 2), np.int32), 3, lambdas=[0.5, 0.6]), "lambdas"),
    (lambda m: ngram.train_neural_bigram(jax.random.key(0), [0, 1], [1, 0], 2, steps=0), "steps"),
])
def test_bad_ngram_input_raises_value_error_naming_the_argument(call, argument):
    model = ngram.NGramModel(jnp.zeros((3, 3)) - np.log(3), 2, 3)
    with pytest.raises(ValueError, match=rf"\b{argument}\b"):
        call(model)


# =========================================================================== neural bigram


def test_bigram_loss_gradients_check_and_match_closed_form():
    key_w, key_x, key_y = jax.random.split(jax.random.key(0), 3)
    v = 5
    w = jax.random.normal(key_w, (v, v))
    x = jax.random.randint(key_x, (40,), 0, v)
    y = jax.random.randint(key_y, (40,), 0, v)
    check_grads(lambda w: ngram.bigram_loss(w, x, y), (w,), order=2, modes=["rev"])
    counts = np.zeros((v, v))
    np.add.at(counts, (np.asarray(x), np.asarray(y)), 1.0)
    closed = (counts.sum(1, keepdims=True) * np.asarray(jax.nn.softmax(w)) - counts) / 40
    np.testing.assert_allclose(np.asarray(jax.grad(ngram.bigram_loss)(w, x, y)), closed, atol=1e-12)


def test_neural_bigram_converges_to_the_count_based_bigram():
    names = data.load_names()[:1500]
    vocab = data.CharVocab.from_text(names + [ngram.BOUNDARY])
    windows = ngram.name_windows(names, vocab, 2)
    w, losses = ngram.train_neural_bigram(jax.random.key(0), windows[:, 0], windows[:, 1],
                                       vocab.size, steps=400, learning_rate=0.5)
    counts = ngram.ngram_counts(windows, vocab.size)
    best = float(ngram.bigram_mle_loss(counts))
    assert float(losses[0]) > best + 0.5          # it started far away
    assert float(losses[-1]) - best < 1e-4        # ... and reached the closed-form optimum
    assert best <= float(ngram.bigram_loss(w, windows[:, 0], windows[:, 1])) + 1e-12
    mle = np.asarray(counts / counts.sum(axis=1, keepdims=True))
    np.testing.assert_allclose(np.asarray(jax.nn.softmax(w)), mle, atol=2e-3)
    # the count model with k = 0 scores the same per-symbol loss
    model = ngram.fit_ngram(windows, vocab.size, k=0.0)
    assert float(jnp.log(ngram.perplexity(model, windows))) == pytest.approx(best, rel=1e-10)



# =========================================================================== issue 9: the split


def test_ngram_models_live_in_their_own_module():
    """Issue 9: ar.py held three topics. No compatibility aliases are left in ar, and the topic
    modules do not import each other."""
    from course_lib import ar
    moved = ["NGramModel", "BOUNDARY", "MAX_TABLE_SIZE", "name_windows", "text_windows",
             "context_index", "ngram_counts", "fit_ngram", "fit_interpolated_ngram",
             "log_likelihood", "perplexity", "sample_ngram", "decode_names", "bigram_loss",
             "bigram_mle_loss", "train_neural_bigram"]
    assert sorted(ngram.__all__) == sorted(moved)
    for name in moved:
        assert callable(getattr(ngram, name)) or name in ("BOUNDARY", "MAX_TABLE_SIZE")
        assert not hasattr(ar, name), f"ar.{name} should have moved to ngram"
        assert name not in ar.__all__
    for name in ar.__all__:
        assert hasattr(ar, name)
    for module in (ar, ngram):
        imports = [line for line in open(module.__file__).read().splitlines()
                   if line.startswith(("import ", "from "))]
        other = {"ar": "ngram", "ngram": "ar"}[module.__name__.rsplit(".", 1)[1]]
        assert not any(other in line.split() or f"course_lib.{other}" in line for line in imports)
    assert ngram.__doc__ and "course_lib.ar" in ngram.__doc__ and "course_lib.ngram" in ar.__doc__


def test_public_signatures_follow_the_conventions():
    """key first, then the model, then data, then sizes; options keyword-only; n for a
    number of samples (issue 9: sample_ngram took n_samples, and its docstring said T for
    the temperature)."""
    import inspect

    def params(f):
        return [(p.name, p.kind == p.KEYWORD_ONLY) for p in inspect.signature(f).parameters.values()]

    assert params(ngram.sample_ngram) == [("key", False), ("model", False), ("n", False),
                                          ("length", False), ("temperature", True),
                                          ("context", True)]
    assert params(ngram.fit_interpolated_ngram) == [("windows", False), ("vocab_size", False),
                                                    ("lambdas", True), ("k", True)]
    assert params(ngram.train_neural_bigram)[0] == ("key", False)
    assert params(ngram.log_likelihood)[:2] == [("model", False), ("windows", False)]
    assert params(ngram.perplexity)[:2] == [("model", False), ("windows", False)]
    doc = ngram.sample_ngram.__doc__
    assert "/ T)" not in doc and "T = 1" not in doc and "temperature" in doc


# =========================================================================== issue 9: claims


def _count_table(pairs, v):
    counts = np.zeros((v, v))
    for a, b in pairs:
        counts[a, b] += 1
    return counts


def test_bigram_loss_has_no_stationary_point_when_a_pair_is_unseen():
    """Issue 9: the docstring said the gradient "vanishes exactly" at the count-based bigram.
    With an unseen pair (a, b) the count-based p(b | a) is 0, which no finite logit reaches:
    at any finite W that gradient entry is C(a) softmax(W_a)_b / N > 0, and the loss stays
    strictly above bigram_mle_loss, approaching it only as the logit goes to -inf."""
    x = jnp.asarray([0, 0, 0, 1, 1, 2, 2, 2])
    y = jnp.asarray([1, 1, 2, 0, 2, 0, 1, 2])           # (0, 0), (1, 1) never occur
    counts = _count_table(zip(np.asarray(x), np.asarray(y)), 3)
    best = float(ngram.bigram_mle_loss(counts))
    gaps = []
    for eps in (1e-1, 1e-3, 1e-6, 1e-9):
        w = jnp.log(jnp.asarray(counts) + eps)           # finite logits, closer and closer
        loss = float(ngram.bigram_loss(w, x, y))
        grad = np.asarray(jax.grad(ngram.bigram_loss)(w, x, y))
        assert loss > best
        assert grad[0, 0] > 0 and grad[1, 1] > 0         # not a stationary point
        gaps.append(loss - best)
    assert all(a > b for a, b in zip(gaps, gaps[1:])) and gaps[-1] < 1e-7   # an infimum


def test_bigram_loss_reaches_the_count_bigram_when_every_pair_is_seen():
    """The claim holds exactly when every observed context is followed by every symbol."""
    pairs = list(itertools.product(range(3), repeat=2)) + [(0, 1), (0, 1), (2, 0)]
    x, y = (jnp.asarray(v) for v in zip(*pairs))
    counts = _count_table(pairs, 3)
    w = jnp.log(jnp.asarray(counts))
    assert float(ngram.bigram_loss(w, x, y)) == pytest.approx(float(ngram.bigram_mle_loss(counts)), rel=1e-14)
    np.testing.assert_allclose(np.asarray(jax.grad(ngram.bigram_loss)(w, x, y)), 0.0, atol=1e-15)


@given(seed=st.integers(0, 2 ** 31 - 1))
@HYP
def test_bigram_mle_loss_is_below_every_logits_table(seed):
    rng = np.random.default_rng(seed)
    x, y = rng.integers(0, 4, 30), rng.integers(0, 4, 30)
    best = float(ngram.bigram_mle_loss(_count_table(zip(x, y), 4)))
    w = jnp.asarray(rng.normal(scale=3.0, size=(4, 4)))
    assert float(ngram.bigram_loss(w, jnp.asarray(x), jnp.asarray(y))) >= best - 1e-12


# =========================================================================== issue 9: sums


def test_log_likelihood_is_the_exactly_rounded_sum():
    """Summed with math.fsum on the host (float64): equal, bit for bit, to the exactly rounded
    sum of the per-window terms, however many windows; perplexity follows from it."""
    v = 30
    ids = jax.random.randint(jax.random.key(5), (300_000,), 0, v)
    windows = ngram.text_windows(ids, 2)
    model = ngram.fit_ngram(windows[:1000], v, k=0.3)
    lp = np.asarray(model.log_probs)
    w = np.asarray(windows)
    terms = lp[w[:, 0], w[:, 1]]
    exact = math.fsum(terms)
    assert float(ngram.log_likelihood(model, windows)) == exact
    assert float(ngram.perplexity(model, windows)) == pytest.approx(math.exp(-exact / len(w)), rel=1e-15)


def test_log_likelihood_in_float32_is_the_float64_sum_rounded_once():
    v = 30
    with jax.enable_x64(False):
        ids = jax.random.randint(jax.random.key(6), (1_000_000,), 0, v)
        windows = ngram.text_windows(ids, 2)
        model = ngram.fit_ngram(windows[:500], v, k=0.5)
        got = ngram.log_likelihood(model, windows)
        assert got.dtype == jnp.float32
        w, lp = np.asarray(windows), np.asarray(model.log_probs, np.float64)
    exact = math.fsum(lp[w[:, 0], w[:, 1]])
    assert float(got) == float(np.float32(exact))


# =========================================================================== issue 9: bad input

BAD_TABLE = np.log(np.full((3, 3), 1 / 3))


def _model(log_probs=BAD_TABLE, order=2, v=3):
    return ngram.NGramModel(jnp.asarray(log_probs), order, v)


@pytest.mark.parametrize("call,argument", [
    # windows and ids: values, not only shapes
    (lambda: ngram.ngram_counts(np.array([[0, 3]]), 3), "windows"),          # id = V
    (lambda: ngram.ngram_counts(np.array([[0, -1]]), 3), "windows"),         # negative id
    (lambda: ngram.ngram_counts(np.array([[0.0, 1.0]]), 3), "windows"),      # floats
    (lambda: ngram.ngram_counts(np.array([[True, False]]), 3), "windows"),   # bools
    (lambda: ngram.ngram_counts(np.zeros((0, 2), np.int32), 3), "windows"),  # empty
    (lambda: ngram.ngram_counts(np.zeros((2, 2), np.int32), 0), "vocab_size"),
    (lambda: ngram.ngram_counts(np.zeros((2, 2), np.int32), True), "vocab_size"),
    (lambda: ngram.fit_ngram(np.zeros((2, 2), np.int32), 3, k=np.nan), "k"),
    (lambda: ngram.fit_ngram(np.zeros((2, 2), np.int32), 3, k="1"), "k"),
    (lambda: ngram.fit_interpolated_ngram(np.zeros((2, 2), np.int32), 3, lambdas=[1.2, -0.2]), "lambdas"),
    (lambda: ngram.fit_interpolated_ngram(np.zeros((2, 2), np.int32), 3, lambdas=[0.2, 0.3, 0.5]), "lambdas"),
    (lambda: ngram.fit_interpolated_ngram(np.zeros((2, 2), np.int32), 3, lambdas=[np.nan, 1.0]), "lambdas"),
    (lambda: ngram.text_windows([0, -2, 1], 2), "ids"),
    (lambda: ngram.text_windows([0.5, 1.0], 1), "ids"),
    (lambda: ngram.text_windows([[0, 1]], 1), "ids"),
    (lambda: ngram.text_windows([0, 1, 2], True), "order"),
    (lambda: ngram.context_index([[0, 5]], 3), "contexts"),
    (lambda: ngram.context_index([[0, 1]], 0), "vocab_size"),
    (lambda: ngram.name_windows("anna", data.CharVocab(".an"), 2), "names"),  # a str, not a list
    (lambda: ngram.name_windows(["a.n"], data.CharVocab(".an"), 2), "names"),
    (lambda: ngram.name_windows(["ab"], data.CharVocab(".ab"), 2.0), "order"),
    (lambda: ngram.name_windows(["ab"], data.CharVocab("ab"), 2), "vocab"),
    # models
    (lambda: ngram.log_likelihood(_model(np.full((3, 3), np.nan)), np.zeros((2, 2), np.int32)), "model.log_probs"),
    (lambda: ngram.log_likelihood(_model(np.zeros((3, 3))), np.zeros((2, 2), np.int32)), "model.log_probs"),
    (lambda: ngram.log_likelihood(_model(BAD_TABLE[:2]), np.zeros((2, 2), np.int32)), "model.log_probs"),
    (lambda: ngram.log_likelihood(_model(order=0), np.zeros((2, 2), np.int32)), "model.order"),
    (lambda: ngram.log_likelihood(BAD_TABLE, np.zeros((2, 2), np.int32)), "model"),
    (lambda: ngram.log_likelihood(_model(), np.zeros((2, 3), np.int32)), "order"),
    (lambda: ngram.perplexity(_model(), np.array([[0, 7]])), "windows"),
    # sampling
    (lambda: ngram.sample_ngram(0, _model(), 2, 5), "key"),
    (lambda: ngram.sample_ngram(jax.random.key(0), _model(), True, 5), "n"),
    (lambda: ngram.sample_ngram(jax.random.key(0), _model(), 2, 2.7), "length"),
    (lambda: ngram.sample_ngram(jax.random.key(0), _model(), 2, 5, temperature=np.inf), "temperature"),
    (lambda: ngram.sample_ngram(jax.random.key(0), _model(), 2, 5, temperature=np.nan), "temperature"),
    (lambda: ngram.sample_ngram(jax.random.key(0), _model(), 2, 5, context=[3]), "context"),
    (lambda: ngram.sample_ngram(jax.random.key(0), _model(), 2, 5, context=[-1]), "context"),
    (lambda: ngram.sample_ngram(jax.random.key(0), _model(np.full((3, 3), np.nan)), 2, 5), "model.log_probs"),
    (lambda: ngram.decode_names(np.array([[0, 9]]), data.CharVocab(".ab")), "ids"),
    # neural bigram
    (lambda: ngram.bigram_loss(jnp.zeros((3, 3)), jnp.asarray([0, 3]), jnp.asarray([1, 1])), "inputs"),
    (lambda: ngram.bigram_loss(jnp.zeros((3, 3)), jnp.asarray([0, 1]), jnp.asarray([1, -1])), "targets"),
    (lambda: ngram.bigram_loss(jnp.zeros((3, 3)), jnp.asarray([0, 1]), jnp.asarray([1])), "targets"),
    (lambda: ngram.bigram_loss(jnp.zeros((3, 4)), jnp.asarray([0]), jnp.asarray([1])), "logits_table"),
    (lambda: ngram.bigram_loss(jnp.full((3, 3), jnp.nan), jnp.asarray([0]), jnp.asarray([1])), "logits_table"),
    (lambda: ngram.bigram_mle_loss(-np.ones((2, 2))), "counts"),
    (lambda: ngram.bigram_mle_loss(np.zeros((2, 2))), "counts"),
    (lambda: ngram.bigram_mle_loss(np.full((2, 2), np.nan)), "counts"),
    (lambda: ngram.train_neural_bigram(jax.random.key(0), [0, 1], [1, 0], 2, learning_rate=0.0), "learning_rate"),
    (lambda: ngram.train_neural_bigram(jax.random.key(0), [0, 1], [1, 0], 2, learning_rate=np.nan), "learning_rate"),
    (lambda: ngram.train_neural_bigram(jax.random.key(0), [0, 1], [1, 0], 2, init_scale=-1.0), "init_scale"),
    (lambda: ngram.train_neural_bigram(jax.random.key(0), [0, 2], [1, 0], 2), "inputs"),
    (lambda: ngram.train_neural_bigram(jax.random.key(0), [0, 1], [1], 2), "targets"),
    (lambda: ngram.train_neural_bigram(jax.random.key(0), [0, 1], [1, 0], 2, steps=True), "steps"),
    (lambda: ngram.train_neural_bigram(1, [0, 1], [1, 0], 2), "key"),
])
def test_bad_input_is_refused_with_the_argument_named(call, argument):
    with pytest.raises(ValueError, match=rf"(^|[^\w.]){argument}\b"):
        call()


def test_options_are_keyword_only():
    with pytest.raises(TypeError):
        ngram.fit_interpolated_ngram(np.zeros((2, 2), np.int32), 3, [0.5, 0.5])
    with pytest.raises(TypeError):
        ngram.sample_ngram(jax.random.key(0), _model(), 2, 5, 1.0)


def test_bigram_loss_still_differentiates_and_jits():
    w = jax.random.normal(jax.random.key(0), (3, 3))
    x, y = jnp.asarray([0, 1, 2]), jnp.asarray([1, 2, 0])
    np.testing.assert_allclose(float(jax.jit(ngram.bigram_loss)(w, x, y)),
                               float(ngram.bigram_loss(w, x, y)), rtol=1e-12)


def test_model_and_table_checks_work_inside_jit_on_closed_over_constants():
    model = ngram.fit_ngram(np.array([[0, 1], [1, 2], [2, 0]]), 3, k=1.0)
    w = jnp.zeros((3, 3))
    x, y = jnp.asarray([0, 1]), jnp.asarray([1, 2])
    assert float(jax.jit(lambda: ngram.bigram_loss(w, x, y))()) == pytest.approx(math.log(3))
    assert jax.jit(lambda: ngram._check_model(model).log_probs)().shape == (3, 3)
