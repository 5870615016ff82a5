"""course_lib.train: exact resume, divergence stops, checkpoint failures, determinism, early
stopping and metric averaging, each checked against an independent computation."""
import gc
import json
import shutil
import weakref

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

from course_lib import nets, train

N_TRAIN, N_EVAL, BATCH, STEPS, EVAL_EVERY = 64, 50, 8, 30, 10


def _data(n, seed):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, 4)).astype(np.float32)
    y = (np.argmax(x[:, :3], axis=1)).astype(np.int32)
    return x, y


TRAIN, EVAL = _data(N_TRAIN, 0), _data(N_EVAL, 1)


def loss_fn(model, batch, key):
    x, y = batch
    logits = model(x, rngs=key)
    return train.cross_entropy(logits, y), {"acc": train.accuracy(logits, y),
                                             "x0_mean": jnp.mean(x[:, 0])}


def make_model(seed=0):
    return nets.MLP(4, [8], 3, dropout_rate=0.2, rngs=nnx.Rngs(seed))


def make_tx():
    # a schedule and clipping: resume must restore the optimizer's step count exactly
    schedule = optax.warmup_cosine_decay_schedule(0.0, 0.05, warmup_steps=5, decay_steps=STEPS)
    return optax.chain(optax.clip_by_global_norm(1.0), optax.adamw(schedule))


def run(model=None, *, tx=None, loss=loss_fn, data=TRAIN, **kw):
    model = make_model() if model is None else model
    args = dict(steps=STEPS, batch_size=BATCH, key=jax.random.key(0), eval_data=EVAL,
                eval_every=EVAL_EVERY, progress=False)
    args.update(kw)
    return model, train.fit(model, make_tx() if tx is None else tx, loss, data, **args)


def params(model):
    return [np.asarray(x) for x in jax.tree.leaves(nnx.state(model, nnx.Param))]


def assert_bit_identical(a, b):
    pa, pb = params(a), params(b)
    assert len(pa) == len(pb)
    for x, y in zip(pa, pb):
        np.testing.assert_array_equal(x, y)


@pytest.fixture(scope="module")
def reference():
    """One uninterrupted run that several tests compare against."""
    return run()


@pytest.fixture(scope="module")
def short_run_dir(tmp_path_factory):
    """A checkpoint folder holding a run stopped after 12 of its steps."""
    where = tmp_path_factory.mktemp("ckpt") / "run"
    run(steps=12, checkpoint_dir=where)
    return where


# ------------------------------------------------------------------ determinism and resume
def test_same_seed_gives_same_numbers(reference):
    model, result = reference
    again, result2 = run()
    assert_bit_identical(model, again)
    assert result2.history == result.history
    other, result3 = run(key=jax.random.key(1))
    assert not all(np.array_equal(a, b) for a, b in zip(params(model), params(other)))
    assert result3.history["train_loss"] != result.history["train_loss"]


def test_interrupted_run_resumes_bit_identical(reference, tmp_path):
    model, result = reference

    def interrupt(steps_done):  # a kernel interrupt during step 18
        if steps_done == 17:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        run(checkpoint_dir=tmp_path, checkpoint_every=5, callback=interrupt)
    assert train.latest_checkpoint_step(tmp_path) == 15
    resumed_model = make_model(seed=123)  # different initial weights: all must come from disk
    _, resumed = run(resumed_model, checkpoint_dir=tmp_path, resume=True)
    assert_bit_identical(model, resumed_model)
    assert resumed.history == result.history
    assert resumed.steps_done == STEPS
    assert train.latest_checkpoint_step(tmp_path) == STEPS  # written at the end


def test_shorter_run_resumed_to_the_end_is_bit_identical(reference, short_run_dir, tmp_path):
    model, _ = reference
    where = tmp_path / "copy"
    shutil.copytree(short_run_dir, where)
    resumed_model = make_model(seed=7)
    _, resumed = run(resumed_model, checkpoint_dir=where, resume=True)
    assert_bit_identical(model, resumed_model)
    # a checkpoint of a finished run resumes to the same place without training a step
    again, calls = make_model(seed=8), []
    _, result = run(again, checkpoint_dir=where, resume=True, callback=calls.append)
    assert calls == []
    assert_bit_identical(model, again)
    assert result == resumed and result.steps_done == STEPS
    assert train.latest_checkpoint_step(where) == STEPS
    # a run that is further than the steps asked for is not silently returned
    with pytest.raises(ValueError, match="steps=20"):
        run(make_model(), checkpoint_dir=where, resume=True, steps=20)


# ------------------------------------------------------------------ checkpoint failures
def test_missing_or_empty_checkpoint_is_an_error(tmp_path):
    with pytest.raises(train.CheckpointError, match="does not exist"):
        run(checkpoint_dir=tmp_path / "nowhere", resume=True)
    with pytest.raises(train.CheckpointError, match="no complete checkpoint"):
        run(checkpoint_dir=tmp_path, resume=True)
    with pytest.raises(ValueError, match="checkpoint_dir"):
        run(resume=True)


def test_existing_checkpoints_are_not_silently_overwritten(short_run_dir):
    with pytest.raises(train.CheckpointError, match="already holds checkpoints"):
        run(checkpoint_dir=short_run_dir)


def test_damaged_checkpoint_is_an_error(short_run_dir, tmp_path):
    where = tmp_path / "damaged"
    shutil.copytree(short_run_dir, where)
    step_dir = where / "12"
    files = [p for p in step_dir.rglob("*") if p.is_file()]
    assert files
    for p in files:  # scramble every byte but keep the sizes
        p.write_bytes(np.random.default_rng(0).integers(0, 256, p.stat().st_size, np.uint8).tobytes())
    with pytest.raises(train.CheckpointError, match="damaged"):
        run(checkpoint_dir=where, resume=True)


def test_flipped_byte_in_array_data_is_an_error(short_run_dir, tmp_path):
    where = tmp_path / "flipped"
    shutil.copytree(short_run_dir, where)
    data_files = [p for p in (where / "12" / "state" / "d").iterdir() if p.is_file()]
    assert data_files
    for p in data_files:
        raw = bytearray(p.read_bytes())
        raw[len(raw) // 2] ^= 0xFF
        p.write_bytes(bytes(raw))
    with pytest.raises(train.CheckpointError, match="damaged"):
        run(checkpoint_dir=where, resume=True)


def test_arrays_that_fail_their_checksum_are_an_error(short_run_dir, tmp_path):
    """Arrays that read back fine but differ from what was saved (simulated by changing
    the recorded checksum, with metadata that is otherwise consistent) are refused."""
    where = tmp_path / "checksum"
    shutil.copytree(short_run_dir, where)
    meta_file = where / "12" / "meta" / "metadata"
    meta = json.loads(meta_file.read_text())
    meta["digest"]["state"] = "0" * 64
    meta["meta_digest"] = train._meta_digest(meta)
    meta_file.write_text(json.dumps(meta))
    with pytest.raises(train.CheckpointError, match="'state' arrays fail their checksum"):
        run(checkpoint_dir=where, resume=True)


@pytest.mark.parametrize("edit", ["step", "history", "best_value", "garbage", "missing"])
def test_tampered_run_metadata_is_an_error(short_run_dir, tmp_path, edit):
    """The run's metadata (step, history, early-stopping record) is checksummed too: a
    changed step would otherwise resume step 12's weights at another step."""
    where = tmp_path / edit
    shutil.copytree(short_run_dir, where)
    meta_file = where / "12" / "meta" / "metadata"
    meta = json.loads(meta_file.read_text())
    if edit == "step":
        meta["run"]["step"] = 5
    elif edit == "history":
        meta["run"]["history"]["train_loss"][0] += 1e-3
    elif edit == "best_value":
        meta["run"]["best_value"] = 0.0
    if edit == "garbage":
        meta_file.write_text("{not json")
    elif edit == "missing":
        meta_file.unlink()
    else:
        meta_file.write_text(json.dumps(meta))
    calls = []
    with pytest.raises(train.CheckpointError, match="damaged"):
        run(checkpoint_dir=where, resume=True, callback=calls.append)
    assert calls == []


def test_missing_array_file_is_an_error(short_run_dir, tmp_path):
    where = tmp_path / "missing"
    shutil.copytree(short_run_dir, where)
    data_files = [p for p in (where / "12" / "state" / "d").iterdir() if p.is_file()]
    assert data_files
    for p in data_files:
        p.unlink()
    with pytest.raises(train.CheckpointError, match="damaged"):
        run(checkpoint_dir=where, resume=True)


def test_checkpoint_of_another_model_or_key_is_an_error(short_run_dir, tmp_path):
    where = tmp_path / "other"
    shutil.copytree(short_run_dir, where)
    with pytest.raises(train.CheckpointError, match="does not match"):
        run(nets.MLP(4, [9], 3, dropout_rate=0.2, rngs=nnx.Rngs(0)), checkpoint_dir=where,
            resume=True)
    with pytest.raises(train.CheckpointError, match="key"):
        run(checkpoint_dir=where, resume=True, key=jax.random.key(5))
    with pytest.raises(train.CheckpointError, match="batch_size"):
        run(checkpoint_dir=where, resume=True, batch_size=4)


def test_save_and_load_model(reference, tmp_path):
    model, _ = reference
    path = train.save_model(model, tmp_path / "cnn")
    loaded = train.load_model(make_model(seed=99), path)
    assert_bit_identical(model, loaded)
    train.save_model(loaded, path)  # overwriting is allowed
    with pytest.raises(train.CheckpointError, match="does not match"):
        train.load_model(nets.MLP(4, [8, 8], 3, rngs=nnx.Rngs(0)), path)
    with pytest.raises(train.CheckpointError, match="no saved model"):
        train.load_model(make_model(), tmp_path / "missing")


# ------------------------------------------------------------------ divergence
class Scalar(nnx.Module):
    def __init__(self, value):
        self.w = nnx.Param(jnp.array(value, jnp.float32))


def test_nan_loss_stops_at_the_step_it_happens():
    # loss = log(w), plain gradient descent: w <- w - lr / w. Simulated in float32, the
    # first step whose loss is NaN (w < 0) is known in advance.
    lr, w = np.float32(0.3), np.float32(1.0)
    ws = []
    while w > 0:
        ws.append(w)
        w = np.float32(w - lr / w)
    bad_step = len(ws)  # steps 0..bad_step-1 have w > 0; step bad_step sees w < 0
    assert bad_step == 3

    def log_loss(model, batch, key):
        return jnp.log(model.w[...]) + 0.0 * jnp.sum(batch[0]), {}

    model = Scalar(1.0)
    with pytest.raises(train.TrainingDiverged, match=rf"step {bad_step}\b") as err:
        train.fit(model, optax.sgd(float(lr)), log_loss, (np.zeros((4, 1), np.float32),),
                  steps=20, batch_size=2, key=jax.random.key(0), progress=False)
    assert isinstance(err.value, FloatingPointError)
    assert "learning rate" in str(err.value) and "clip" in str(err.value)
    # the model keeps the parameters from before the bad step
    np.testing.assert_allclose(float(model.w[...]), w, rtol=1e-6)


def test_nan_gradient_with_finite_loss_stops():
    # sqrt(w^2 * x) at x = 0 is 0, but its gradient is 0 / 0
    def sqrt_loss(model, batch, key):
        return jnp.sqrt(model.w[...] ** 2 * jnp.sum(batch[0])), {}

    model = Scalar(2.0)
    assert float(sqrt_loss(model, (jnp.zeros(2),), None)[0]) == 0.0
    with pytest.raises(train.TrainingDiverged, match=r"step 0\b"):
        train.fit(model, optax.sgd(0.1), sqrt_loss, (np.zeros((4, 1), np.float32),),
                  steps=5, batch_size=2, key=jax.random.key(0), progress=False)
    assert float(model.w[...]) == 2.0


# ------------------------------------------------------------------ early stopping
def test_early_stopping_restores_the_best_parameters():
    # Train batches (tag 1) push w up by lr each step (loss -w); the eval loss (tag 0) is
    # (w - 1)^2, lowest after 10 steps. With patience 3 the run stops after step 13.
    def loss(model, batch, key):
        tag = batch[0]
        w = model.w[...]
        return jnp.mean(tag * -w + (1 - tag) * (w - 1.0) ** 2), {}

    model = Scalar(0.0)
    result = train.fit(model, optax.sgd(0.1), loss, (np.ones(8, np.float32),), steps=50,
                       batch_size=2, key=jax.random.key(0), eval_data=(np.zeros(3, np.float32),),
                       eval_every=1, patience=3, progress=False)
    assert result.stopped_early and result.steps_done == 13 and result.best_step == 10
    np.testing.assert_allclose(float(model.w[...]), 1.0, atol=1e-6)
    assert result.history["step"] == list(range(1, 14))
    np.testing.assert_allclose(result.history["eval_loss"],
                               [(0.1 * k - 1) ** 2 for k in range(1, 14)], atol=1e-5)


# ------------------------------------------------------------------ averaged metrics
def test_eval_metrics_are_means_over_the_whole_eval_set(reference):
    """50 eval examples in chunks of 8 (6 full + 1 of 2): a size-weighted mean, compared
    with a NumPy computation over all 50 at once with the final parameters."""
    model, result = reference
    layer, out = model.hidden_layers[0], model.out
    x, y = EVAL
    hidden = np.maximum(x @ np.asarray(layer.kernel[...]) + np.asarray(layer.bias[...]), 0)
    logits = (hidden @ np.asarray(out.kernel[...]) + np.asarray(out.bias[...])).astype(np.float64)
    logp = logits - np.log(np.exp(logits - logits.max(1, keepdims=True)).sum(1, keepdims=True)) \
        - logits.max(1, keepdims=True)
    np.testing.assert_allclose(result.history["eval_loss"][-1], -logp[np.arange(N_EVAL), y].mean(),
                               rtol=1e-5)
    np.testing.assert_allclose(result.history["eval_acc"][-1], (logits.argmax(1) == y).mean(),
                               rtol=1e-6)
    np.testing.assert_allclose(result.history["eval_x0_mean"][-1], x[:, 0].mean(), rtol=1e-5)


def test_train_metrics_are_averaged_over_each_period(reference):
    _, result = reference
    data_key = train.fit_keys(jax.random.key(0))[0]
    means = [train.batch_at(TRAIN, BATCH, t, key=data_key)[0][:, 0].mean() for t in range(STEPS)]
    expected = np.reshape(means, (STEPS // EVAL_EVERY, EVAL_EVERY)).mean(axis=1)
    np.testing.assert_allclose(result.history["train_x0_mean"], expected, rtol=1e-5)
    assert result.history["step"] == [10, 20, 30]
    assert {len(v) for v in result.history.values()} == {3}
    assert result.history["train_loss"][-1] < result.history["train_loss"][0]


# ------------------------------------------------------------------ batches and losses
def test_batch_at_is_a_pure_function_of_key_and_step():
    x = np.arange(10)
    key = jax.random.key(3)
    for step in range(7):  # 3 steps per epoch, 1 example dropped each epoch
        (batch,) = train.batch_at((x,), 3, step, key=key)
        epoch, within = divmod(step, 3)
        perm = np.asarray(jax.random.permutation(jax.random.fold_in(key, epoch), 10))
        np.testing.assert_array_equal(batch, perm[within * 3:(within + 1) * 3])
    epoch0 = np.concatenate([train.batch_at((x,), 3, s, key=key)[0] for s in range(3)])
    assert len(set(epoch0.tolist())) == 9  # no repeats within an epoch
    a = train.batch_at((x, x * 2), 3, 5, key=key)
    np.testing.assert_array_equal(a[1], 2 * a[0])


@pytest.mark.parametrize("bad, match", [
    (dict(arrays=(np.zeros(4), np.zeros(5))), "share"),
    (dict(batch_size=0), "batch_size"),
    (dict(batch_size=11), "batch_size"),
    (dict(step=-1), "step"),
    (dict(key=None), "key"),
])
def test_batch_at_rejects_bad_input(bad, match):
    args = dict(arrays=(np.zeros(10),), batch_size=2, step=0, key=jax.random.key(0))
    args.update(bad)
    with pytest.raises(ValueError, match=match):
        train.batch_at(args.pop("arrays"), args.pop("batch_size"), args.pop("step"), **args)


def test_cross_entropy_and_accuracy_match_numpy():
    rng = np.random.default_rng(0)
    logits = rng.normal(size=(6, 5)).astype(np.float32)
    labels = rng.integers(0, 5, 6).astype(np.int32)
    logp = logits - np.log(np.exp(logits).sum(1, keepdims=True))
    np.testing.assert_allclose(train.cross_entropy(logits, labels),
                               -logp[np.arange(6), labels].mean(), rtol=1e-5)
    np.testing.assert_allclose(train.accuracy(logits, labels), (logits.argmax(1) == labels).mean())
    with pytest.raises(ValueError, match="labels"):
        train.cross_entropy(logits, labels[:3])
    with pytest.raises(ValueError, match="integer"):
        train.cross_entropy(logits, labels.astype(np.float32))


@pytest.mark.parametrize("bad, match", [
    (dict(steps=0), "steps"),
    (dict(batch_size=65), "batch_size"),
    (dict(key=None), "key"),
    (dict(patience=2, eval_data=None), "eval_data"),
    (dict(eval_every=-1), "eval_every"),
    (dict(checkpoint_every=-5), "checkpoint_every"),
    (dict(eval_data=(np.zeros((3, 4)), np.zeros(2))), "share"),
])
def test_fit_rejects_bad_input(bad, match):
    with pytest.raises(ValueError, match=match):
        run(**bad)


def test_fit_rejects_mismatched_train_arrays():
    with pytest.raises(ValueError, match="share"):
        train.fit(make_model(), make_tx(), loss_fn, (TRAIN[0], TRAIN[1][:5]), steps=2,
                  batch_size=2, key=jax.random.key(0), progress=False)


# ------------------------------------------------------------------ early stopping and resume
def _tagged_loss(model, batch, key):
    # Train batches (tag 1) push w up by lr each step (loss -w); the eval loss (tag 0) is
    # (w - 1)^2, lowest after 10 steps. With patience 3 the run stops after step 13.
    tag = batch[0]
    w = model.w[...]
    return jnp.mean(tag * -w + (1 - tag) * (w - 1.0) ** 2), {}


def _early_stopping_fit(model, **kw):
    return train.fit(model, optax.sgd(0.1), _tagged_loss, (np.ones(8, np.float32),), steps=50,
                     batch_size=2, key=jax.random.key(0), eval_data=(np.zeros(3, np.float32),),
                     eval_every=1, patience=3, progress=False, **kw)


def test_resume_of_an_early_stopped_run_trains_no_step(tmp_path):
    where = tmp_path / "es"
    first_model = Scalar(0.0)
    first = _early_stopping_fit(first_model, checkpoint_dir=where)
    assert first.stopped_early and first.steps_done == 13 and first.best_step == 10
    assert train.latest_checkpoint_step(where) == 13
    # the checkpoint says that the run stopped, and why
    meta = json.loads((where / "13" / "meta" / "metadata").read_text())
    assert meta["run"]["stopped_early"] is True
    assert "early stopping" in meta["run"]["stop_reason"]
    assert "3 evaluations" in meta["run"]["stop_reason"]
    calls = []
    resumed_model = Scalar(5.0)          # other weights: everything must come from disk
    resumed = _early_stopping_fit(resumed_model, checkpoint_dir=where, resume=True,
                                  callback=calls.append)
    assert calls == []                   # not one step trained
    assert resumed == first              # same history, best step, stop flag, steps done
    np.testing.assert_array_equal(np.asarray(resumed_model.w[...]),
                                  np.asarray(first_model.w[...]))
    assert train.latest_checkpoint_step(where) == 13      # and nothing new written


# ------------------------------------------------------------------ compiled steps
def test_second_fit_with_the_same_loss_fn_does_not_trace_again():
    traces = []

    def counted_loss(model, batch, key):
        traces.append(1)                 # a Python side effect runs only while tracing
        return loss_fn(model, batch, key)

    tx = make_tx()
    run(loss=counted_loss, tx=tx, steps=4, eval_every=2)
    first = len(traces)
    assert first >= 2                    # the train step and the eval step were traced
    again, result = run(make_model(seed=3), loss=counted_loss, tx=tx, steps=4, eval_every=2)
    assert len(traces) == first          # a new model of the same architecture: no new trace
    assert result.steps_done == 4
    assert train.make_train_step(counted_loss) is train.make_train_step(counted_loss)
    assert train.make_eval_step(counted_loss) is train.make_eval_step(counted_loss)


def test_compiled_steps_keep_neither_the_loss_nor_the_model_alive():
    def own_loss(model, batch, key):
        return loss_fn(model, batch, key)

    model = make_model()
    run(model, loss=own_loss, steps=2, eval_data=None)
    refs = weakref.ref(own_loss), weakref.ref(model)
    del own_loss, model
    gc.collect()
    assert refs[0]() is None and refs[1]() is None


# ------------------------------------------------------------------ the generic loop
def gan_state(seed):
    g = nets.MLP(2, [8], 2, rngs=nnx.Rngs(seed))
    d = nets.MLP(2, [8], 1, rngs=nnx.Rngs(seed + 1))
    return {"g": g, "d": d, "g_opt": nnx.Optimizer(g, optax.adam(1e-2), wrt=nnx.Param),
            "d_opt": nnx.Optimizer(d, optax.adam(1e-2), wrt=nnx.Param)}


@nnx.jit
def d_step(state, batch, key):
    (x,) = batch
    fake = state["g"](jax.random.normal(key, x.shape))

    def d_loss(d):
        return jnp.mean(jax.nn.softplus(-d(x))) + jnp.mean(jax.nn.softplus(d(fake)))

    loss, grads = nnx.value_and_grad(d_loss)(state["d"])
    state["d_opt"].update(state["d"], grads)
    return loss


@nnx.jit
def g_step(state, batch, key):
    z = jax.random.normal(jax.random.fold_in(key, 1), batch[0].shape)

    def g_loss(g):                       # non-saturating generator loss
        return jnp.mean(jax.nn.softplus(-state["d"](g(z))))

    loss, grads = nnx.value_and_grad(g_loss)(state["g"])
    state["g_opt"].update(state["g"], grads)
    return loss


def gan_update(state, batch, key, t):
    """Two discriminator steps per generator step: a Python branch on the step number."""
    metrics = {"d_loss": d_step(state, batch, key), "g_loss": jnp.float32(0.0)}
    if t % 2 == 1:
        metrics["g_loss"] = g_step(state, batch, key)
    return metrics


GAN_DATA = (np.random.default_rng(2).normal(size=(40, 2)).astype(np.float32) + 3.0,)


def state_leaves(state):
    return [np.asarray(x) for x in jax.tree.leaves(nnx.state(state))]


def test_loop_runs_the_update_it_is_given_step_by_step():
    """Oracle: the same update called by hand with batch_at's batches and fold_in keys."""
    key = jax.random.key(4)
    looped, by_hand = gan_state(0), gan_state(0)
    result = train.loop(looped, gan_update, GAN_DATA, steps=10, batch_size=8, key=key,
                        eval_every=5, progress=False)
    data_key, step_key, _ = train.fit_keys(key)
    d_losses = []
    for t in range(10):
        batch = train.batch_at(GAN_DATA, 8, t, key=data_key)
        d_losses.append(gan_update(by_hand, batch, jax.random.fold_in(step_key, t), t)["d_loss"])
    for a, b in zip(state_leaves(looped), state_leaves(by_hand)):
        np.testing.assert_array_equal(a, b)
    assert not np.array_equal(state_leaves(looped)[0], state_leaves(gan_state(0))[0])
    assert result.history["step"] == [5, 10] and result.steps_done == 10
    np.testing.assert_allclose(result.history["train_d_loss"],
                               [np.mean(d_losses[:5]), np.mean(d_losses[5:])], rtol=1e-6)
    assert int(looped["g_opt"].step[...]) == 5 and int(looped["d_opt"].step[...]) == 10


def test_loop_resume_of_a_two_player_state_is_bit_identical(tmp_path):
    key = jax.random.key(5)
    straight = gan_state(0)
    train.loop(straight, gan_update, GAN_DATA, steps=10, batch_size=8, key=key,
               progress=False)
    where = tmp_path / "gan"
    first_half = gan_state(0)
    train.loop(first_half, gan_update, GAN_DATA, steps=5, batch_size=8, key=key,
               checkpoint_dir=where, progress=False)
    assert train.latest_checkpoint_step(where) == 5
    resumed, calls = gan_state(9), []        # other initial weights: all must come from disk
    train.loop(resumed, gan_update, GAN_DATA, steps=10, batch_size=8, key=key,
               checkpoint_dir=where, resume=True, callback=calls.append, progress=False)
    assert calls == list(range(6, 11))       # it trained steps 5..9 only
    for a, b in zip(state_leaves(straight), state_leaves(resumed), strict=True):
        np.testing.assert_array_equal(a, b)
    # step 5 (odd) updated the generator: the step number reached update after the resume
    assert int(resumed["g_opt"].step[...]) == 5


def test_loop_early_stopping_on_a_named_metric_restores_the_whole_state():
    model = Scalar(0.0)
    state = {"model": model, "opt": nnx.Optimizer(model, optax.sgd(0.1), wrt=nnx.Param)}

    traces = []

    @nnx.jit
    def update(state, batch, key, t):
        traces.append(1)
        loss, grads = nnx.value_and_grad(lambda m: -jnp.mean(batch[0]) * m.w[...])(state["model"])
        state["opt"].update(state["model"], grads)
        return {"minus_w": loss}

    def eval_fn(state, batch, key):
        assert batch == ()
        return {"mse": (state["model"].w[...] - 1.0) ** 2}

    result = train.loop(state, update, (np.ones(8, np.float32),), steps=50, batch_size=2,
                        key=jax.random.key(0), eval_fn=eval_fn, eval_every=1, patience=3,
                        monitor="mse", progress=False)
    assert result.stopped_early and result.steps_done == 13 and result.best_step == 10
    np.testing.assert_allclose(float(model.w[...]), 1.0, atol=1e-6)
    assert int(state["opt"].step[...]) == 10     # the optimizer went back to step 10 too
    assert len(traces) == 1     # the step number arrives traced: one compilation, 13 steps
    np.testing.assert_allclose(result.history["eval_mse"],
                               [(0.1 * k - 1) ** 2 for k in range(1, 14)], atol=1e-5)


def test_loop_names_the_step_where_a_metric_or_the_state_went_bad():
    # loss = log(w), plain gradient descent from w = 1 with lr 0.3: w < 0 at step 3
    model = Scalar(1.0)
    state = (model, nnx.Optimizer(model, optax.sgd(0.3), wrt=nnx.Param))

    @nnx.jit
    def update(state, batch, key, t):
        m, opt = state
        loss, grads = nnx.value_and_grad(lambda m: jnp.log(m.w[...]))(m)
        opt.update(m, grads)
        return {"log_w": loss}

    with pytest.raises(train.TrainingDiverged, match=r"step 3\b.*log_w = nan"):
        train.loop(state, update, (np.zeros(4, np.float32),), steps=20, batch_size=2,
                   key=jax.random.key(0), progress=False)

    # finite metrics, but the state becomes infinite at step 4: no metric reads it, so the
    # state check (every 10 steps, to keep the per-step cost low) finds it at step 9
    def blow_up(state, batch, key, t):
        if t == 4:
            state.w[...] = jnp.array(np.inf, jnp.float32)
        return {"zero": 0.0}

    with pytest.raises(train.TrainingDiverged, match=r"step 9\b"):
        train.loop(Scalar(1.0), blow_up, (np.zeros(4, np.float32),), steps=20, batch_size=2,
                   key=jax.random.key(0), progress=False)
    # ... and at the last step, whatever the step count
    with pytest.raises(train.TrainingDiverged, match=r"step 5\b"):
        train.loop(Scalar(1.0), blow_up, (np.zeros(4, np.float32),), steps=6, batch_size=2,
                   key=jax.random.key(0), progress=False)


def _loop(**kw):
    args = dict(state=Scalar(0.0), update=lambda s, b, k, t: {"x": jnp.float32(0.0)},
                data=(np.zeros(4, np.float32),), steps=3, batch_size=2, key=jax.random.key(0),
                progress=False)
    args.update(kw)
    return train.loop(args.pop("state"), args.pop("update"), args.pop("data"), **args)


@pytest.mark.parametrize("bad, match", [
    (dict(state=5), "state must be an NNX"),
    (dict(state={"a": Scalar(0.0), "b": np.zeros(3)}), "state must be an NNX"),
    (dict(update=None), "update must be callable"),
    (dict(eval_fn=3), "eval_fn must be callable"),
    (dict(eval_data=(np.zeros(3, np.float32),)), "eval_data needs eval_fn"),
    (dict(patience=2), "patience .* eval_fn"),
    (dict(update=lambda s, b, k, t: [1.0]), "update's result must be a dict"),
    (dict(update=lambda s, b, k, t: {"x": jnp.zeros(3)}), "update's result .* scalars"),
    (dict(update=lambda s, b, k, t: {f"m{t}": 0.0}), "same metric names"),
    (dict(eval_fn=lambda s, b, k: {"other": 0.0}, patience=2), "monitor"),
    (dict(data=(np.array(["a", "b", "c", "d"]),)), r"data\[0\] must hold numbers"),
    (dict(data=(np.array([0.0, np.nan, 1.0, 2.0]),)), r"data\[0\] contains NaN"),
    (dict(steps=2.7), "steps"),
    (dict(monitor=3), "monitor"),
])
def test_loop_rejects_bad_input(bad, match):
    with pytest.raises(ValueError, match=match):
        _loop(**bad)


# ------------------------------------------------------------------ bad input
@pytest.mark.parametrize("name", ["steps", "batch_size", "eval_every", "patience",
                                  "checkpoint_every"])
@pytest.mark.parametrize("value", [True, 2.7, 0, np.float32(3.0)])
def test_fit_refuses_counts_that_are_not_positive_integers(name, value):
    calls = []
    with pytest.raises(ValueError, match=name):
        run(**{name: value}, callback=calls.append)
    assert calls == []


@pytest.mark.parametrize("which, bad, match", [
    ("x", np.array([["a"] * 4] * N_TRAIN), r"train_data\[0\] must hold numbers"),
    ("x", np.array([[None] * 4] * N_TRAIN, dtype=object), r"train_data\[0\] must hold numbers"),
    ("x", TRAIN[0] * 1j, r"train_data\[0\] must hold numbers"),
    ("x", np.where(np.arange(N_TRAIN)[:, None] == 5, np.nan, TRAIN[0]),
     r"train_data\[0\] contains NaN .* example 5"),
    ("x", np.where(np.arange(N_TRAIN)[:, None] == 7, np.inf, TRAIN[0]),
     r"train_data\[0\] contains NaN or infinite"),
    ("y", np.array(["0"] * N_TRAIN), r"train_data\[1\] must hold numbers"),
    ("eval", (np.full((N_EVAL, 4), np.nan, np.float32), EVAL[1]), r"eval_data\[0\] contains NaN"),
    ("eval", (EVAL[0], EVAL[1].astype(str)), r"eval_data\[1\] must hold numbers"),
])
def test_fit_rejects_non_numeric_or_nan_data_naming_it(which, bad, match):
    if which == "eval":
        kw = dict(eval_data=bad)
    else:
        kw = dict(data=(bad, TRAIN[1]) if which == "x" else (TRAIN[0], bad))
    with pytest.raises(ValueError, match=match):
        run(**kw)


@pytest.mark.parametrize("bad, match", [
    (dict(model="mlp"), "model must be an nnx.Module"),
    (dict(tx="adam"), "optimizer_tx"),
    (dict(loss=None), "loss_fn must be callable"),
    (dict(callback=3), "callback"),
    (dict(resume="yes", checkpoint_dir="x"), "resume"),
    (dict(desc=5), "desc"),
    (dict(key="seed"), "key"),
    (dict(loss=lambda m, b, k: (loss_fn(m, b, k)[0], {"loss": 1.0})), "name 'loss'"),
    (dict(loss=lambda m, b, k: (jnp.zeros(3), {})), "scalar loss"),
    (dict(loss=lambda m, b, k: loss_fn(m, b, k)[0]), r"\(loss, metrics dict\)"),
])
def test_fit_rejects_bad_arguments_naming_them(bad, match):
    with pytest.raises(ValueError, match=match):
        run(**bad)


def test_checkpoint_dir_that_is_a_file_fails_before_any_step(tmp_path):
    traces, calls = [], []

    def counted_loss(model, batch, key):
        traces.append(1)
        return loss_fn(model, batch, key)

    a_file = tmp_path / "not_a_folder"
    a_file.write_text("x")
    for where in (a_file, a_file / "run"):
        with pytest.raises(ValueError, match="checkpoint_dir"):
            run(loss=counted_loss, checkpoint_dir=where, callback=calls.append)
    assert traces == [] and calls == []       # nothing was compiled, no step ran
    with pytest.raises(ValueError, match="checkpoint_dir"):
        _loop(checkpoint_dir=a_file)


def test_cross_entropy_and_accuracy_refuse_labels_outside_the_classes():
    logits = np.zeros((4, 3), np.float32)
    for fn in (train.cross_entropy, train.accuracy):
        with pytest.raises(ValueError, match=r"labels must lie in \[0, 3\) .*got 3"):
            fn(logits, np.array([0, 1, 2, 3]))
        with pytest.raises(ValueError, match=r"labels must lie in \[0, 3\) .*got -1"):
            fn(logits, np.array([0, -1, 2, 1]))
        with pytest.raises(ValueError, match="labels must hold integer"):
            fn(logits, np.array([0.0, 1.0, 2.0, 1.0]))
        with pytest.raises(ValueError, match="labels must hold integer"):
            fn(logits, np.array([True, False, True, False]))
        with pytest.raises(ValueError, match="logits contains NaN"):
            fn(np.full((4, 3), np.nan, np.float32), np.array([0, 1, 2, 1]))
        with pytest.raises(ValueError, match="logits must hold numbers"):
            fn(np.array([["a"] * 3] * 4), np.array([0, 1, 2, 1]))
        with pytest.raises(ValueError, match="class axis"):
            fn(np.zeros((4, 0), np.float32), np.array([0, 1, 2, 1]))


def test_cross_entropy_allows_masked_logits_and_runs_under_jit():
    logits = np.array([[0.0, -np.inf, 1.0], [2.0, 0.5, -np.inf]], np.float32)
    labels = np.array([2, 0], np.int32)
    expected = -np.mean([1.0 - np.log(1 + np.e), 2.0 - np.log(np.exp(2.0) + np.exp(0.5))])
    np.testing.assert_allclose(train.cross_entropy(logits, labels), expected, rtol=1e-6)
    np.testing.assert_allclose(jax.jit(train.cross_entropy)(logits, labels), expected,
                               rtol=1e-6)
    assert float(jax.jit(train.accuracy)(logits, labels)) == 1.0


def test_save_and_load_model_reject_bad_arguments(tmp_path):
    a_file = tmp_path / "weights.txt"
    a_file.write_text("x")
    with pytest.raises(ValueError, match="regular file"):
        train.save_model(make_model(), a_file)
    assert a_file.read_text() == "x"                       # left untouched
    with pytest.raises(ValueError, match="model must be an nnx.Module"):
        train.save_model({"w": np.zeros(3)}, tmp_path / "m")
    path = train.save_model(make_model(), tmp_path / "m")
    with pytest.raises(ValueError, match="model_template must be an nnx.Module"):
        train.load_model(None, path)
    with pytest.raises(train.CheckpointError, match="no saved model"):
        train.load_model(make_model(), a_file)


def test_interrupted_early_stopping_run_resumes_with_its_best_state(tmp_path):
    straight_model = Scalar(0.0)
    straight = _early_stopping_fit(straight_model)

    def interrupt(steps_done):       # after the best evaluation (10) and one worse one
        if steps_done == 11:
            raise KeyboardInterrupt

    where = tmp_path / "es"
    with pytest.raises(KeyboardInterrupt):
        _early_stopping_fit(Scalar(0.0), checkpoint_dir=where, checkpoint_every=1,
                            callback=interrupt)
    assert train.latest_checkpoint_step(where) == 11
    resumed_model, calls = Scalar(3.0), []
    resumed = _early_stopping_fit(resumed_model, checkpoint_dir=where, resume=True,
                                  callback=calls.append)
    assert calls == [12, 13]
    assert resumed == straight
    np.testing.assert_array_equal(np.asarray(resumed_model.w[...]),
                                  np.asarray(straight_model.w[...]))


def test_a_raw_prng_key_gives_the_same_batches_as_a_typed_one():
    x = np.arange(10)
    for step in range(4):
        np.testing.assert_array_equal(train.batch_at((x,), 3, step, key=jax.random.PRNGKey(3))[0],
                                      train.batch_at((x,), 3, step, key=jax.random.key(3))[0])
    with pytest.raises(ValueError, match="key"):
        train.batch_at((x,), 3, 0, key=jax.random.split(jax.random.key(0), 2))
