"""course_lib.nets against oracles: Flax's built-in cells, numerical gradients, the
convolution size formula against XLA's convolution, and a naive sampler."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from hypothesis import given, settings, strategies as st
from jax.test_util import check_grads

from course_lib import nets

CELLS = [nets.RNNCell, nets.LSTMCell, nets.GRUCell]


def _perturbed_carry(cell, batch, key):
    """A non-zero carry, so the recurrent weights matter from the first step."""
    carry = cell.initialize_carry(batch)
    leaves, treedef = jax.tree.flatten(carry)
    keys = jax.random.split(key, len(leaves))
    return jax.tree.unflatten(treedef, [jax.random.normal(k, x.shape) for k, x in zip(keys, leaves)])


# ------------------------------------------------------------------ cells vs Flax built-ins
@pytest.mark.parametrize("cell_cls", CELLS)
def test_cell_step_equals_flax_builtin(cell_cls):
    cell = cell_cls(5, 7, rngs=nnx.Rngs(1))
    # Non-trivial biases, so a bias copied to the wrong gate would show.
    cell.bias[...] = jax.random.normal(jax.random.key(9), cell.bias.shape)
    ref = nets.to_flax_cell(cell)
    x = jax.random.normal(jax.random.key(2), (3, 5))
    carry = _perturbed_carry(cell, 3, jax.random.key(3))
    (ours_carry, ours_h), (ref_carry, ref_h) = cell(carry, x), ref(carry, x)
    np.testing.assert_allclose(ours_h, ref_h, rtol=1e-5, atol=1e-6)
    for a, b in zip(jax.tree.leaves(ours_carry), jax.tree.leaves(ref_carry)):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("cell_cls", CELLS)
def test_run_cell_equals_flax_rnn_over_time(cell_cls):
    cell = cell_cls(4, 6, rngs=nnx.Rngs(0))
    cell.bias[...] = jax.random.normal(jax.random.key(5), cell.bias.shape)
    xs = jax.random.normal(jax.random.key(1), (2, 9, 4))
    carry0 = _perturbed_carry(cell, 2, jax.random.key(4))
    final, hs = nets.run_cell(cell, xs, carry0)
    ref = nnx.RNN(nets.to_flax_cell(cell), return_carry=True)
    ref_final, ref_hs = ref(xs, initial_carry=carry0)
    assert hs.shape == (2, 9, 6)
    np.testing.assert_allclose(hs, ref_hs, rtol=1e-5, atol=1e-5)
    for a, b in zip(jax.tree.leaves(final), jax.tree.leaves(ref_final)):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5)


def test_lstm_gates_by_hand():
    """One LSTM step recomputed from the equations with NumPy."""
    cell = nets.LSTMCell(2, 3, rngs=nnx.Rngs(0))
    x = np.array([[0.5, -1.0]], np.float32)
    c, h = (np.full((1, 3), 0.2, np.float32), np.full((1, 3), -0.1, np.float32))
    kx, kh, b = map(np.asarray, (cell.kernel_x[...], cell.kernel_h[...], cell.bias[...]))
    z = x @ kx + h @ kh + b
    sig = lambda v: 1 / (1 + np.exp(-v))
    i, f, g, o = sig(z[:, :3]), sig(z[:, 3:6]), np.tanh(z[:, 6:9]), sig(z[:, 9:])
    c_new = f * c + i * g
    (c_ours, h_ours), _ = cell((jnp.asarray(c), jnp.asarray(h)), jnp.asarray(x))
    np.testing.assert_allclose(c_ours, c_new, rtol=1e-5)
    np.testing.assert_allclose(h_ours, o * np.tanh(c_new), rtol=1e-5)
    # the forget gate starts biased towards remembering
    np.testing.assert_array_equal(b[3:6], 1.0)


@pytest.mark.parametrize("cell_cls", [nets.LSTMCell, nets.GRUCell])
def test_run_cell_gradients_check_numerically(cell_cls):
    with jax.enable_x64(True):
        cell = cell_cls(3, 4, rngs=nnx.Rngs(0))
        graphdef, state = nnx.split(cell)
        state = jax.tree.map(lambda a: a.astype(jnp.float64), state)
        xs = jax.random.normal(jax.random.key(0), (2, 4, 3), jnp.float64)

        @jax.jit
        def objective(state, xs):
            carry, hs = nets.run_cell(nnx.merge(graphdef, state), xs)
            return jnp.sum(hs ** 2) + jnp.sum(jax.tree.leaves(carry)[0])

        check_grads(objective, (state, xs), order=1, modes=["rev"])


def test_lstm_hand_written_backward_equals_autodiff_of_plain_scan():
    """LSTMCell.scan has a custom VJP; its gradients must equal JAX's autodiff through
    lax.scan over LSTMCell.step, for every input, weight and initial state."""
    cell = nets.LSTMCell(3, 5, rngs=nnx.Rngs(0))
    xw = jax.random.normal(jax.random.key(1), (6, 2, 20))
    carry = _perturbed_carry(cell, 2, jax.random.key(2))
    weights = jax.random.normal(jax.random.key(3), (6, 2, 5))

    graphdef, state = nnx.split(cell)

    def objective(state, xw, carry, use_custom):
        live = nnx.merge(graphdef, state)
        if use_custom:
            (c, h), hs = live.scan(carry, xw)
        else:
            (c, h), hs = jax.lax.scan(live.step, carry, xw)
        return jnp.sum(weights * hs) + jnp.sum(jnp.sin(c)) + jnp.sum(h ** 2)

    args = (state, xw, carry)
    ours = jax.grad(objective, argnums=(0, 1, 2))(*args, True)
    ref = jax.grad(objective, argnums=(0, 1, 2))(*args, False)
    for a, b in zip(jax.tree.leaves(ours), jax.tree.leaves(ref)):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5)


def test_cnn_gradients_check_numerically():
    with jax.enable_x64(True):
        model = nets.CNN((6, 6, 1), channels=(2,), hidden=4, num_classes=3, rngs=nnx.Rngs(0))
        graphdef, state = nnx.split(model)
        state = jax.tree.map(lambda a: a.astype(jnp.float64), state)
        # Distinct pixel values so max-pool has a unique arg-max (differentiable there).
        x = jax.random.permutation(jax.random.key(1), jnp.linspace(0.0, 1.0, 72)).reshape(2, 6, 6)

        @jax.jit
        def objective(state):
            return jnp.sum(jnp.tanh(nnx.merge(graphdef, state)(x)))

        check_grads(objective, (state,), order=1, modes=["rev"], eps=1e-6)


# ------------------------------------------------------------------ convolution sizes
@settings(max_examples=60, deadline=None)
@given(size=st.integers(1, 20), kernel=st.integers(1, 7), stride=st.integers(1, 4),
       padding=st.integers(0, 3))
def test_conv_output_size_matches_xla_convolution(size, kernel, stride, padding):
    if kernel > size + 2 * padding:
        with pytest.raises(ValueError, match="kernel"):
            nets.conv_output_size(size, kernel, stride, padding)
        return
    expected = nets.conv_output_size(size, kernel, stride, padding)
    x = jnp.ones((1, size, size, 1))
    w = jnp.ones((kernel, kernel, 1, 1))
    y = jax.lax.conv_general_dilated(x, w, (stride, stride), [(padding, padding)] * 2,
                                     dimension_numbers=("NHWC", "HWIO", "NHWC"))
    assert y.shape == (1, expected, expected, 1)
    # and by counting window positions one by one
    assert expected == sum(1 for s in range(0, size + 2 * padding - kernel + 1, stride))


def test_conv_output_size_syllabus_example():
    # a 32x32x3 image and a 5x5 filter, stride 1, no padding: 28x28
    assert nets.conv_output_size(32, 5) == 28
    assert nets.conv_output_size(32, 5, padding=2) == 32
    assert nets.conv_output_size(28, 2, stride=2) == 14


@pytest.mark.parametrize("bad", [dict(size=0, kernel=1), dict(size=5, kernel=0),
                                 dict(size=5, kernel=3, stride=0),
                                 dict(size=5, kernel=3, padding=-1),
                                 dict(size=2.5, kernel=1), dict(size=3, kernel=9)])
def test_conv_output_size_rejects_bad_input(bad):
    with pytest.raises(ValueError):
        nets.conv_output_size(**bad)


@settings(max_examples=25, deadline=None)
@given(h=st.integers(4, 20), w=st.integers(4, 20), k=st.sampled_from([1, 2, 3, 4, 5]),
       c=st.integers(1, 3))
def test_cnn_feature_map_shapes_follow_formula(h, w, k, c):
    def build_and_run(x):  # traced only (jax.eval_shape): shapes without any computation
        model = nets.CNN((h, w, c), channels=(2, 3), hidden=5, num_classes=4, kernel_size=k,
                         rngs=nnx.Rngs(0))
        return model.feature_maps(x), model(x)

    p = (k - 1) // 2
    expected, hh, ww = [], h, w
    try:
        for chans in (2, 3):
            hh, ww = (nets.conv_output_size(s, k, 1, p) for s in (hh, ww))
            if min(hh, ww) < 2:
                raise ValueError("too small to pool")
            hh, ww = (nets.conv_output_size(s, 2, 2) for s in (hh, ww))
            expected.append((2, hh, ww, chans))
    except ValueError:
        with pytest.raises(ValueError, match="too small"):
            jax.eval_shape(build_and_run, jax.ShapeDtypeStruct((2, h, w, c), jnp.float32))
        return
    maps, logits = jax.eval_shape(build_and_run, jax.ShapeDtypeStruct((2, h, w, c), jnp.float32))
    assert [m.shape for m in maps] == expected
    assert logits.shape == (2, 4)


@pytest.mark.parametrize("h, w", [(2, 2), (5, 7), (8, 9)])
def test_max_pool_2x2_equals_flax_max_pool(h, w):
    # distinct values (no ties), so the gradient is unique too
    x = jax.random.permutation(jax.random.key(h * 10 + w), jnp.arange(2 * h * w * 3, dtype=jnp.float32))
    x = x.reshape(2, h, w, 3)
    ref = lambda v: nnx.max_pool(v, (2, 2), strides=(2, 2))
    np.testing.assert_array_equal(nets.max_pool_2x2(x), ref(x))
    cot = jax.random.normal(jax.random.key(0), ref(x).shape)
    both = jax.jit(lambda v: (jax.grad(lambda u: jnp.sum(cot * nets.max_pool_2x2(u)))(v),
                              jax.grad(lambda u: jnp.sum(cot * ref(u)))(v)))
    g_ours, g_ref = both(x)
    np.testing.assert_allclose(g_ours, g_ref, rtol=1e-6)


def test_cnn_shapes_and_channel_axis():
    model = nets.CNN(rngs=nnx.Rngs(0))
    x = jax.random.uniform(jax.random.key(0), (3, 28, 28))
    logits = model(x)
    assert logits.shape == (3, 10)
    assert model.embed(x).shape == (3, 128)
    assert [m.shape for m in model.feature_maps(x)] == [(3, 14, 14, 16), (3, 7, 7, 32)]
    np.testing.assert_array_equal(logits, model(x[..., None]))
    with pytest.raises(ValueError, match="shape"):
        model(jnp.ones((3, 32, 32)))


def test_cnn_dropout_uses_the_key_in_train_mode_only():
    model = nets.CNN((8, 8, 1), channels=(2,), hidden=16, num_classes=3, dropout_rate=0.5,
                     rngs=nnx.Rngs(0))
    x = jax.random.uniform(jax.random.key(0), (4, 8, 8))
    a, b = model(x, rngs=jax.random.key(1)), model(x, rngs=jax.random.key(2))
    assert not np.allclose(a, b)
    np.testing.assert_array_equal(a, model(x, rngs=jax.random.key(1)))
    model.eval()
    np.testing.assert_array_equal(model(x), model(x, rngs=jax.random.key(3)))


def test_cnn_rejects_bad_construction():
    with pytest.raises(ValueError, match="in_shape"):
        nets.CNN((28, 28), rngs=nnx.Rngs(0))
    with pytest.raises(ValueError, match="too small"):
        nets.CNN((4, 4, 1), channels=(2, 2, 2), rngs=nnx.Rngs(0))
    with pytest.raises(ValueError, match="dropout_rate"):
        nets.CNN(dropout_rate=1.0, rngs=nnx.Rngs(0))


# ------------------------------------------------------------------ MLP
def test_mlp_parameter_count_and_shapes():
    model = nets.MLP(4, [8, 6], 3, rngs=nnx.Rngs(0))
    assert nets.count_params(model) == (4 * 8 + 8) + (8 * 6 + 6) + (6 * 3 + 3)
    assert model(jnp.ones((5, 4))).shape == (5, 3)
    with pytest.raises(ValueError, match=r"\(B, 4\)"):
        model(jnp.ones((5, 3)))
    with pytest.raises(ValueError, match="hidden"):
        nets.MLP(4, [0], 3, rngs=nnx.Rngs(0))


def test_mlp_equals_hand_written_forward_pass():
    model = nets.MLP(3, [5], 2, activation=jnp.tanh, rngs=nnx.Rngs(0))
    x = np.random.default_rng(0).normal(size=(4, 3)).astype(np.float32)
    layer, out = model.hidden_layers[0], model.out
    hidden = np.tanh(x @ np.asarray(layer.kernel[...]) + np.asarray(layer.bias[...]))
    expected = hidden @ np.asarray(out.kernel[...]) + np.asarray(out.bias[...])
    np.testing.assert_allclose(model(jnp.asarray(x)), expected, rtol=1e-5, atol=1e-6)


# ------------------------------------------------------------------ CharLM
@pytest.mark.parametrize("kind", ["lstm", "gru", "rnn"])
def test_charlm_is_causal(kind):
    model = nets.CharLM(11, 4, 8, cell=kind, rngs=nnx.Rngs(0))
    tokens = jax.random.randint(jax.random.key(0), (2, 6), 0, 11)
    changed = tokens.at[:, 4:].set((tokens[:, 4:] + 1) % 11)
    a, b = model(tokens), model(changed)
    assert a.shape == (2, 6, 11)
    np.testing.assert_allclose(a[:, :4], b[:, :4], rtol=1e-6)
    assert not np.allclose(a[:, 4:], b[:, 4:])


def test_charlm_generate_matches_naive_sampler():
    """The compiled scan sampler equals re-running the whole model on the growing text."""
    model = nets.CharLM(7, 3, 5, cell="gru", rngs=nnx.Rngs(2))
    prompt = jnp.array([1, 4, 2], jnp.int32)
    key = jax.random.key(42)
    out = model.generate(key, prompt, 6, temperature=0.8)
    assert out.shape == (9,) and out.dtype == jnp.int32
    np.testing.assert_array_equal(out[:3], prompt)
    seq = list(np.asarray(prompt))
    for k in jax.random.split(key, 6):
        logits = model(jnp.asarray(seq)[None])[0, -1]
        seq.append(int(jax.random.categorical(k, logits[None] / 0.8, axis=-1)[0]))
    np.testing.assert_array_equal(out, seq)
    np.testing.assert_array_equal(out, model.generate(key, prompt, 6, temperature=0.8))
    assert not np.array_equal(out, model.generate(jax.random.key(7), prompt, 6, temperature=0.8))


def test_charlm_rejects_bad_input():
    with pytest.raises(ValueError, match="cell"):
        nets.CharLM(5, 2, 3, cell="transformer", rngs=nnx.Rngs(0))
    model = nets.CharLM(5, 2, 3, rngs=nnx.Rngs(0))
    with pytest.raises(ValueError, match="integer"):
        model(jnp.ones((2, 3)))
    with pytest.raises(ValueError, match="temperature"):
        model.generate(jax.random.key(0), jnp.array([1]), 3, temperature=0.0)
    with pytest.raises(ValueError, match="at least one"):
        model.generate(jax.random.key(0), jnp.zeros((0,), jnp.int32), 3)
    with pytest.raises(ValueError, match="length"):
        model.generate(jax.random.key(0), jnp.array([1]), 0)
    with pytest.raises(ValueError, match="xs"):
        nets.run_cell(model.cell, jnp.ones((3, 2)))
    with pytest.raises(ValueError, match="features"):
        nets.run_cell(model.cell, jnp.ones((1, 3, 4)))


# ------------------------------------------------------------------ issue 9: bad input
@pytest.mark.parametrize("bad", [-1, 5, 100])
def test_charlm_refuses_token_ids_outside_the_vocabulary(bad):
    """Issue 9: token -1 silently read the last embedding row, an id >= V gave NaN logits."""
    model = nets.CharLM(5, 2, 3, rngs=nnx.Rngs(0))
    tokens = jnp.array([[0, 1, bad]])
    with pytest.raises(ValueError, match=rf"tokens must lie in \[0, 5\) .*got {bad}"):
        model(tokens)
    with pytest.raises(ValueError, match=rf"prompt_ids must lie in \[0, 5\) .*got {bad}"):
        model.generate(jax.random.key(0), jnp.array([1, bad]), 3)


def test_charlm_token_check_leaves_jit_alone():
    """Under jit the ids are tracers: no host check, same numbers as the eager call."""
    model = nets.CharLM(5, 2, 3, rngs=nnx.Rngs(0))
    tokens = jnp.array([[0, 1, 4, 2]])
    np.testing.assert_allclose(nnx.jit(lambda m, t: m(t))(model, tokens), model(tokens), rtol=1e-6)


@pytest.mark.parametrize("call,argument", [
    (lambda m: m(np.array([["a", "b"]])), "tokens"),                        # strings
    (lambda m: m(jnp.array([0, 1])), "tokens"),                             # 1-D
    (lambda m: m(np.array([[True, False]])), "tokens"),                     # bools
    (lambda m: m.generate(jax.random.key(0), jnp.array([1]), 2.5), "length"),
    (lambda m: m.generate(jax.random.key(0), jnp.array([1]), True), "length"),
    (lambda m: m.generate(0, jnp.array([1]), 3), "key"),
    (lambda m: m.generate(jax.random.key(0), jnp.array([1]), 3, temperature=np.nan), "temperature"),
    (lambda m: m.generate(jax.random.key(0), jnp.array([1]), 3, temperature="hot"), "temperature"),
    (lambda m: m.generate(jax.random.key(0), jnp.array([[1]]), 3), "prompt_ids"),
    (lambda m: nets.run_cell(m.cell, jnp.ones((2, 3, 2)), jnp.zeros((3, 3))), "carry"),
    (lambda m: nets.run_cell(m.cell, np.array([[["x", "y"]]])), "xs"),
    (lambda m: nets.run_cell(m.cell, jnp.full((1, 2, 2), jnp.nan)), "xs"),
    (lambda m: nets.run_cell("lstm", jnp.ones((1, 2, 2))), "cell"),
    (lambda m: m.cell.initialize_carry(0), "batch_size"),
    (lambda m: m.cell.initialize_carry(2.0), "batch_size"),
    (lambda m: nets.CharLM(True, 2, 3, rngs=nnx.Rngs(0)), "vocab_size"),
    (lambda m: nets.CharLM(5, 2.5, 3, rngs=nnx.Rngs(0)), "embed_features"),
    (lambda m: nets.CharLM(5, 2, 0, rngs=nnx.Rngs(0)), "hidden_features"),
    (lambda m: nets.CharLM(5, 2, 3, cell=["lstm"], rngs=nnx.Rngs(0)), "cell"),
    (lambda m: nets.LSTMCell(3, -1, rngs=nnx.Rngs(0)), "hidden_features"),
    (lambda m: nets.MLP(4, [8], 3, dropout_rate=-0.1, rngs=nnx.Rngs(0)), "dropout_rate"),
    (lambda m: nets.MLP(4, [8], 3, dropout_rate=np.nan, rngs=nnx.Rngs(0)), "dropout_rate"),
    (lambda m: nets.MLP(4, [8], 3, dropout_rate="0.5", rngs=nnx.Rngs(0)), "dropout_rate"),
    (lambda m: nets.MLP(4, [True], 3, rngs=nnx.Rngs(0)), "hidden"),
    (lambda m: nets.MLP(4, [8], 3, rngs=nnx.Rngs(0))(np.array([["a"] * 4])), "x"),
    (lambda m: nets.MLP(4, [8], 3, rngs=nnx.Rngs(0))(jnp.full((1, 4), jnp.inf)), "x"),
    (lambda m: nets.CNN((8, 8, 1), channels=(), rngs=nnx.Rngs(0)), "channels"),
    (lambda m: nets.CNN((8, 8, 1), channels=4, rngs=nnx.Rngs(0)), "channels"),
    (lambda m: nets.CNN((8, 8, 1), channels=(2,), kernel_size=0, rngs=nnx.Rngs(0)), "kernel_size"),
    (lambda m: nets.CNN((8, 8, 1), channels=(2,), hidden=1.5, rngs=nnx.Rngs(0)), "hidden"),
    (lambda m: nets.CNN((8, 8, 1), channels=(2,), num_classes=0, rngs=nnx.Rngs(0)), "num_classes"),
    (lambda m: nets.CNN("abc", rngs=nnx.Rngs(0)), "in_shape"),
    (lambda m: nets.max_pool_2x2(jnp.ones((2, 4, 4))), "x"),               # no channel axis
    (lambda m: nets.max_pool_2x2(jnp.ones((2, 1, 4, 3))), "x"),            # H < 2
    (lambda m: nets.conv_output_size(5, 3, padding=True), "padding"),
    (lambda m: nets.conv_output_size(5, 3, stride=1.0), "stride"),
])
def test_nets_bad_input_names_the_argument(call, argument):
    model = nets.CharLM(5, 2, 3, rngs=nnx.Rngs(0))
    with pytest.raises(ValueError, match=rf"\b{argument}\b"):
        call(model)


def test_input_checks_work_inside_jit_on_closed_over_constants():
    model = nets.MLP(2, [3], 1, rngs=nnx.Rngs(0))
    x = jnp.ones((4, 2))
    np.testing.assert_allclose(nnx.jit(lambda m: m(x))(model), model(x), rtol=1e-6)
