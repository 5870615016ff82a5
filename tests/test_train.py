"""course_lib.train: exact resume, divergence stops, checkpoint failures, determinism, early
stopping and metric averaging, each checked against an independent computation."""
import os
from pathlib import Path

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


def run(model=None, **kw):
    model = make_model() if model is None else model
    args = dict(steps=STEPS, batch_size=BATCH, key=jax.random.key(0), eval_data=EVAL,
                eval_every=EVAL_EVERY, progress=False)
    args.update(kw)
    return model, train.fit(model, make_tx(), loss_fn, TRAIN, **args)


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
    import shutil
    shutil.copytree(short_run_dir, where)
    resumed_model = make_model(seed=7)
    _, resumed = run(resumed_model, checkpoint_dir=where, resume=True)
    assert_bit_identical(model, resumed_model)
    # a checkpoint of a finished run resumes to the same place without training
    again = make_model(seed=8)
    _, result = run(again, checkpoint_dir=where, resume=True)
    assert_bit_identical(model, again) and result.steps_done == STEPS


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
    import shutil
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
    import shutil
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
    the recorded checksum) are refused."""
    import json
    import shutil
    where = tmp_path / "checksum"
    shutil.copytree(short_run_dir, where)
    meta_file = where / "12" / "meta" / "metadata"
    meta = json.loads(meta_file.read_text())
    meta["digest"]["optimizer"] = "0" * 64
    meta_file.write_text(json.dumps(meta))
    with pytest.raises(train.CheckpointError, match="checksum"):
        run(checkpoint_dir=where, resume=True)


def test_checkpoint_of_another_model_or_key_is_an_error(short_run_dir, tmp_path):
    import shutil
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
