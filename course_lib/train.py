"""The course's training loop: Flax NNX + optax, compiled steps, exact resume, clear failures.

One call trains a model in place::

    tx = optax.chain(optax.clip_by_global_norm(1.0),
                     optax.adamw(optax.warmup_cosine_decay_schedule(
                         init_value=0.0, peak_value=1e-3, warmup_steps=100, decay_steps=2000)))
    result = train.fit(model, tx, loss_fn, (x_train, y_train), steps=2000, batch_size=64,
                       key=jax.random.key(0), eval_data=(x_val, y_val), eval_every=200,
                       patience=3, checkpoint_dir="runs/mnist", checkpoint_every=500)

* ``loss_fn(model, batch, key) -> (loss, metrics)``: ``batch`` is the tuple of arrays of one
  mini-batch, ``key`` the PRNG key of this step (for dropout: ``model(x, rngs=key)``),
  ``metrics`` a dict of scalars to average (it may be empty).
* Learning-rate schedules and gradient clipping are part of the optax transformation the
  caller passes (as above); ``fit`` adds nothing to it.
* Randomness is explicit: ``key`` is split (:func:`fit_keys`) into a data key (which example
  goes into which batch: :func:`batch_at`), a step key (``fold_in(step_key, step)`` is
  passed to ``loss_fn``) and an eval key. The same key gives the same numbers, and a resumed run gives
  bit-identical parameters to an uninterrupted one.
* Steps are counted from 0; ``history["step"]`` holds the number of steps completed.
* NaN/Inf stops the run with :class:`TrainingDiverged` naming the step; checkpoint problems
  raise :class:`CheckpointError`. ``fit`` leaves the model in eval mode.
"""
from __future__ import annotations

import hashlib
import json
import math
import os
import shutil
import warnings
from pathlib import Path
from typing import Any, Callable, Iterable, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx
from tqdm.auto import tqdm

Array = jax.Array
LossFn = Callable[[nnx.Module, tuple, Array], tuple[Array, dict[str, Array]]]

__all__ = [
    "fit", "FitResult", "batch_at", "TrainingDiverged", "CheckpointError", "cross_entropy",
    "accuracy", "save_model", "load_model", "make_train_step", "make_eval_step",
    "latest_checkpoint_step", "fit_keys",
]


class TrainingDiverged(FloatingPointError, RuntimeError):
    """The loss or the gradients became NaN or infinite."""


class CheckpointError(RuntimeError):
    """A checkpoint is missing, damaged or does not match the model being trained."""


class FitResult(NamedTuple):
    """What :func:`fit` returns (the model itself is trained in place).

    Attributes:
      history: lists of equal length, one entry per period of ``eval_every`` steps:
        ``"step"`` (steps completed), ``"train_loss"`` and ``"train_<metric>"`` (averaged
        over the period), and with ``eval_data`` ``"eval_loss"``, ``"eval_<metric>"``.
      best_step: steps completed at the lowest eval loss (None without eval data).
      stopped_early: whether early stopping ended the run.
      steps_done: steps completed (``steps`` unless stopped early).
    """

    history: dict[str, list[float]]
    best_step: int | None
    stopped_early: bool
    steps_done: int


# ------------------------------------------------------------------------------- losses
def cross_entropy(logits: Array, labels: Array) -> Array:
    """Mean softmax cross-entropy ``-mean(log softmax(logits)[label])``.

    ``logits (..., C)`` floats, ``labels (...)`` integer class ids in ``[0, C)``.
    """
    if logits.shape[:-1] != labels.shape:
        raise ValueError(f"labels must have shape logits.shape[:-1] = {logits.shape[:-1]}, "
                         f"got {labels.shape}")
    if not jnp.issubdtype(labels.dtype, jnp.integer):
        raise ValueError(f"labels must be integer class ids, got dtype {labels.dtype}")
    return optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean()


def accuracy(logits: Array, labels: Array) -> Array:
    """Fraction of positions where ``argmax(logits) == labels``."""
    if logits.shape[:-1] != labels.shape:
        raise ValueError(f"labels must have shape logits.shape[:-1] = {logits.shape[:-1]}, "
                         f"got {labels.shape}")
    return jnp.mean(jnp.argmax(logits, axis=-1) == labels)


# ------------------------------------------------------------------------------- batches
def _as_key(key) -> Array:
    """Accept a typed key (``jax.random.key``) or a raw ``PRNGKey``; return a typed key."""
    if key is None:
        raise ValueError("key must be a JAX PRNG key, e.g. jax.random.key(0); got None")
    key = jnp.asarray(key) if not isinstance(key, jax.Array) else key
    if jnp.issubdtype(key.dtype, jax.dtypes.prng_key):
        if key.shape != ():
            raise ValueError(f"key must be a single PRNG key, got shape {key.shape}")
        return key
    if key.dtype == jnp.uint32 and key.shape == (2,):
        return jax.random.wrap_key_data(key)
    raise ValueError(f"key must be a JAX PRNG key (jax.random.key(seed)), got {key.dtype} {key.shape}")


def _check_arrays(arrays, name: str) -> tuple:
    if not isinstance(arrays, (tuple, list)) or not arrays:
        raise ValueError(f"{name} must be a non-empty tuple of arrays with a common first "
                         f"axis, got {type(arrays).__name__}")
    sizes = [np.shape(a)[0] if np.ndim(a) else None for a in arrays]
    if None in sizes or len(set(sizes)) != 1:
        raise ValueError(f"{name} arrays must share their first axis (N), got shapes "
                         f"{[np.shape(a) for a in arrays]}")
    if sizes[0] == 0:
        raise ValueError(f"{name} is empty")
    return tuple(arrays)


def _epoch_permutation(key: Array, epoch: int, n: int) -> np.ndarray:
    return np.asarray(jax.random.permutation(jax.random.fold_in(key, epoch), n))


def batch_at(arrays: tuple, batch_size: int, step: int, *, key) -> tuple:
    """The mini-batch of global step ``step``: a pure function of ``(key, step)``.

    ``steps_per_epoch = N // batch_size`` (the last ``N % batch_size`` examples of each
    shuffled epoch are dropped); ``epoch = step // steps_per_epoch``; the epoch's order is
    ``jax.random.permutation(jax.random.fold_in(key, epoch), N)``. Because no iterator
    state exists, resuming at any step gives the same batches.
    """
    arrays = _check_arrays(arrays, "arrays")
    n = np.shape(arrays[0])[0]
    if isinstance(batch_size, bool) or not isinstance(batch_size, (int, np.integer)) \
            or not 1 <= batch_size <= n:
        raise ValueError(f"batch_size must be an int in [1, N={n}], got {batch_size!r}")
    if isinstance(step, bool) or not isinstance(step, (int, np.integer)) or step < 0:
        raise ValueError(f"step must be a non-negative int, got {step!r}")
    per_epoch = n // batch_size
    epoch, within = divmod(int(step), per_epoch)
    idx = _epoch_permutation(_as_key(key), epoch, n)[within * batch_size:(within + 1) * batch_size]
    return tuple(a[idx] for a in arrays)


def fit_keys(key) -> tuple[Array, Array, Array]:
    """The three keys :func:`fit` derives from its ``key``: ``(data_key, step_key,
    eval_key)`` = ``jax.random.split(key, 3)``. Batches are ``batch_at(..., key=data_key)``;
    step ``t`` passes ``fold_in(step_key, t)`` to ``loss_fn``; evaluation chunk ``i`` gets
    ``fold_in(eval_key, i)``. Separate keys keep batch order and dropout independent."""
    data_key, step_key, eval_key = jax.random.split(_as_key(key), 3)
    return data_key, step_key, eval_key


# ------------------------------------------------------------------------------- steps
def _all_finite(tree) -> Array:
    leaves = [jnp.all(jnp.isfinite(x)) for x in jax.tree.leaves(tree)
              if jnp.issubdtype(x.dtype, jnp.inexact)]
    return jnp.all(jnp.stack(leaves)) if leaves else jnp.array(True)


def make_train_step(loss_fn: LossFn):
    """The compiled training step ``fit`` uses (exposed for benchmarks and for study).

    ``step(model, optimizer, arrays, idx, step_key, step, healthy) -> (loss, metrics, finite,
    healthy)``: gathers the batch ``arrays[idx]``, computes the loss and its gradient, and
    applies the optimizer update in place, but only if the loss, every gradient and every
    updated parameter are finite and no earlier step failed (``healthy``), so a diverged
    run keeps the parameters from before its first bad step. The step's key is ``fold_in(step_key, step)``.
    """

    @nnx.jit
    def train_step(model, optimizer, arrays, idx, step_key, step, healthy):
        batch = tuple(a[idx] for a in arrays)
        key = jax.random.fold_in(step_key, step)

        def objective(m):
            return loss_fn(m, batch, key)

        (loss, metrics), grads = nnx.value_and_grad(objective, has_aux=True)(model)
        # a snapshot of the values (nnx.state returns references to the live variables)
        before = jax.tree.map(lambda x: x, nnx.state((model, optimizer)))
        optimizer.update(model, grads)
        after = nnx.state((model, optimizer))
        finite = jnp.isfinite(loss) & _all_finite(grads) & _all_finite(after)
        ok = healthy & finite
        nnx.update((model, optimizer),
                   jax.tree.map(lambda new, old: jnp.where(ok, new, old), after, before))
        return loss, metrics, finite, ok

    return train_step


def make_eval_step(loss_fn: LossFn):
    """Compiled ``eval_step(model, batch, key) -> (loss, metrics)`` (no update)."""

    @nnx.jit
    def eval_step(model, batch, key):
        return loss_fn(model, batch, key)

    return eval_step


def _evaluate(eval_step, model, arrays: tuple, chunk: int, key: Array) -> dict[str, float]:
    """Loss and metrics over the whole eval set, in chunks of ``chunk`` examples, averaged
    with each chunk weighted by its size (so the result is the mean over all examples)."""
    n = arrays[0].shape[0]
    sums: dict[str, Array] = {}
    model.eval()
    try:
        for i, start in enumerate(range(0, n, chunk)):
            batch = tuple(a[start:start + chunk] for a in arrays)
            loss, metrics = eval_step(model, batch, jax.random.fold_in(key, i))
            weight = batch[0].shape[0]
            for name, value in {"loss": loss, **metrics}.items():
                sums[name] = sums.get(name, 0.0) + weight * jnp.asarray(value, jnp.float32)
    finally:
        model.train()
    return {name: float(total) / n for name, total in sums.items()}


# ------------------------------------------------------------------------------- checkpoints
def _leaves_and_paths(tree) -> tuple[list[Array], list[str]]:
    flat = jax.tree_util.tree_flatten_with_path(tree)[0]
    return [leaf for _, leaf in flat], [jax.tree_util.keystr(path) for path, _ in flat]


def _digest(leaves: Iterable) -> str:
    h = hashlib.sha256()
    for leaf in leaves:
        a = np.ascontiguousarray(np.asarray(leaf))
        h.update(str((a.dtype, a.shape)).encode())
        h.update(a.tobytes())
    return h.hexdigest()


def _ocp():
    import orbax.checkpoint as ocp  # imported lazily: orbax is slow to import

    return ocp


def _abstract(leaves):
    return [jax.ShapeDtypeStruct(np.shape(x), x.dtype) for x in leaves]


def _save_tree(checkpointer_or_manager, where, trees: dict[str, list], meta: dict) -> None:
    ocp = _ocp()
    meta = dict(meta, digest={k: _digest(v) for k, v in trees.items()})
    args = ocp.args.Composite(state=ocp.args.StandardSave(trees), meta=ocp.args.JsonSave(meta))
    checkpointer_or_manager.save(where, args=args, force=True)


def _restore_tree(checkpointer_or_manager, where, templates: dict[str, list], what: str):
    """Restore ``templates``-shaped leaf lists; every failure becomes a CheckpointError."""
    ocp = _ocp()
    try:
        meta = checkpointer_or_manager.restore(
            where, args=ocp.args.Composite(meta=ocp.args.JsonRestore()))["meta"]
    except Exception as err:  # orbax raises many kinds; all mean "cannot read it"
        raise CheckpointError(f"{what}: cannot read its metadata ({type(err).__name__}: "
                              f"{err}). The checkpoint is damaged or incomplete.") from err
    if not isinstance(meta, dict) or "paths" not in meta or "digest" not in meta:
        raise CheckpointError(f"{what}: metadata is missing or was not written by course_lib")
    for name, template in templates.items():
        leaves, paths = template
        saved_paths, saved_shapes = meta["paths"].get(name), meta["shapes"].get(name)
        shapes = [list(np.shape(x)) for x in leaves]
        if saved_paths != paths or saved_shapes != shapes:
            raise CheckpointError(
                f"{what}: its {name!r} state does not match the model/optimizer given "
                f"(saved {len(saved_paths or [])} arrays, this one has {len(paths)}; first "
                f"difference: {_first_difference(saved_paths, saved_shapes, paths, shapes)}). "
                "Build the model and optimizer exactly as for the saved run.")
    abstract = {name: _abstract(t[0]) for name, t in templates.items()}
    try:
        restored = checkpointer_or_manager.restore(
            where, args=ocp.args.Composite(state=ocp.args.StandardRestore(abstract)))["state"]
    except Exception as err:
        raise CheckpointError(f"{what}: cannot read its arrays ({type(err).__name__}: "
                              f"{err}). The checkpoint is damaged or incomplete.") from err
    for name in templates:
        if _digest(restored[name]) != meta["digest"].get(name):
            raise CheckpointError(f"{what}: the {name!r} arrays fail their checksum: the "
                                  "checkpoint is damaged.")
    return restored, meta


def _first_difference(saved_paths, saved_shapes, paths, shapes) -> str:
    saved = list(zip(saved_paths or [], saved_shapes or []))
    ours = list(zip(paths, shapes))
    for i in range(max(len(saved), len(ours))):
        a = saved[i] if i < len(saved) else None
        b = ours[i] if i < len(ours) else None
        if a != b:
            return f"saved {a} vs expected {b}"
    return "none"


def _tree_meta(trees: dict[str, tuple[list, list[str]]]) -> dict:
    return {"paths": {k: v[1] for k, v in trees.items()},
            "shapes": {k: [list(np.shape(x)) for x in v[0]] for k, v in trees.items()}}


class _RunCheckpoints:
    """Orbax CheckpointManager for one training run: a folder per step, written to a
    temporary name and renamed when complete (atomic); the last two are kept."""

    def __init__(self, directory, *, create: bool):
        ocp = _ocp()
        self.directory = Path(directory).absolute()
        options = ocp.CheckpointManagerOptions(
            max_to_keep=2, create=create, enable_async_checkpointing=False)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            self.manager = ocp.CheckpointManager(self.directory, options=options)

    def steps(self) -> list[int]:
        return sorted(self.manager.all_steps())

    def save(self, step: int, trees: dict, meta: dict) -> None:
        _save_tree(self.manager, step, {k: v[0] for k, v in trees.items()},
                   dict(meta, **_tree_meta(trees)))
        self.manager.wait_until_finished()

    def restore(self, step: int, templates: dict):
        return _restore_tree(self.manager, step, templates,
                             f"checkpoint of step {step} in {self.directory}")

    def close(self) -> None:
        self.manager.close()


def latest_checkpoint_step(checkpoint_dir) -> int | None:
    """Steps completed in the newest complete checkpoint of a run folder (None if none)."""
    if not Path(checkpoint_dir).is_dir():
        return None
    ckpts = _RunCheckpoints(checkpoint_dir, create=False)
    try:
        steps = ckpts.steps()
    finally:
        ckpts.close()
    return steps[-1] if steps else None


def save_model(model: nnx.Module, path) -> Path:
    """Save every variable of ``model`` with orbax under the folder ``path`` (overwriting it).

    Written to a temporary name and renamed when complete, so ``path`` always holds a whole
    model. Load it with :func:`load_model` into a model built the same way.
    """
    ocp = _ocp()
    path = Path(path).absolute()
    leaves, paths = _leaves_and_paths(nnx.state(model))
    with ocp.Checkpointer(ocp.CompositeCheckpointHandler()) as ckptr:
        _save_tree(ckptr, path, {"model": leaves},
                   dict(_tree_meta({"model": (leaves, paths)}), kind=type(model).__name__))
    return path


def load_model(model_template: nnx.Module, path) -> nnx.Module:
    """Load what :func:`save_model` wrote into ``model_template`` (in place) and return it.

    ``model_template`` must be built with the same architecture (any weights); a missing,
    damaged or mismatching save raises :class:`CheckpointError`.
    """
    ocp = _ocp()
    path = Path(path).absolute()
    if not path.is_dir():
        raise CheckpointError(f"no saved model at {path}: save one with train.save_model")
    state = nnx.state(model_template)
    leaves, paths = _leaves_and_paths(state)
    with ocp.Checkpointer(ocp.CompositeCheckpointHandler()) as ckptr:
        restored, _ = _restore_tree(ckptr, path, {"model": (leaves, paths)},
                                    f"saved model at {path}")
    treedef = jax.tree.structure(state)
    nnx.update(model_template, jax.tree.unflatten(treedef, restored["model"]))
    return model_template


# ------------------------------------------------------------------------------- fit
def _check_int(name: str, value, low: int) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < low:
        raise ValueError(f"{name} must be an int >= {low}, got {value!r}")
    return int(value)


def _diverged_message(step: int, loss: float) -> str:
    return (f"training diverged at step {step} (counting from 0): the loss, a gradient or an "
            f"updated parameter is NaN or infinite (loss = {loss:.4g}). The model keeps its "
            "parameters from before that step. Try: a lower learning rate, gradient clipping "
            "(optax.clip_by_global_norm(1.0) first in the optax chain), or check the inputs "
            "and the loss for NaN/Inf (e.g. log(0) or division by zero).")


def fit(model: nnx.Module, optimizer_tx: optax.GradientTransformation, loss_fn: LossFn,
        train_data: tuple, *, steps: int, batch_size: int, key, eval_data: tuple | None = None,
        eval_every: int = 0, patience: int | None = None,
        checkpoint_dir: str | os.PathLike | None = None, checkpoint_every: int = 0,
        resume: bool = False, progress: bool = True, desc: str = "train",
        callback: Callable[[int], Any] | None = None) -> FitResult:
    """Train ``model`` in place for ``steps`` optimizer steps; see the module docstring.

    Args:
      model: an ``nnx.Module``; put in train mode while training, eval mode to evaluate.
      optimizer_tx: the optax transformation (schedules and clipping included).
      loss_fn: ``loss_fn(model, batch, key) -> (loss, metrics dict)``.
      train_data: tuple of arrays sharing the first axis N; batches come from :func:`batch_at`.
      steps: total steps of the run (a resumed run continues up to this number).
      batch_size: examples per step (also the chunk size of evaluation).
      key: PRNG key; the same key gives the same numbers.
      eval_data: optional tuple of arrays, evaluated whole (chunked, size-weighted mean).
      eval_every: record (and evaluate) every this many steps; 0 means about 10 records
        (``max(1, steps // 10)``). The last step is always recorded.
      patience: early stopping: stop after this many evaluations in a row without a lower
        eval loss. Needs ``eval_data``. With ``patience`` set, the model ends with the
        parameters of its best evaluation (and ``best_step`` says which).
      checkpoint_dir: folder of orbax checkpoints of this run; written every
        ``checkpoint_every`` steps (0: only at the end) and at the end.
      resume: continue from the newest checkpoint in ``checkpoint_dir`` (parameters,
        optimizer state, step, key and history restored exactly). A missing or damaged
        checkpoint raises :class:`CheckpointError`; so does a ``checkpoint_dir`` that already
        holds checkpoints when ``resume`` is False (no silent overwrite).
      progress: show a ``tqdm.auto`` bar with the live loss.
      desc: the bar's label.
      callback: called as ``callback(steps_completed)`` after every step (after any
        evaluation and checkpoint of that step); raising from it stops the run.

    Raises:
      TrainingDiverged: the loss or a gradient became NaN/Inf (the message names the step).
    """
    # ---- arguments
    steps = _check_int("steps", steps, 1)
    train_data = tuple(jnp.asarray(a) for a in _check_arrays(train_data, "train_data"))
    n = train_data[0].shape[0]
    if isinstance(batch_size, bool) or not isinstance(batch_size, (int, np.integer)) \
            or not 1 <= batch_size <= n:
        raise ValueError(f"batch_size must be an int in [1, N={n}] (N = len(train_data[0])), "
                         f"got {batch_size!r}")
    key = _as_key(key)
    if eval_data is not None:
        eval_data = tuple(jnp.asarray(a) for a in _check_arrays(eval_data, "eval_data"))
    eval_every = _check_int("eval_every", eval_every, 0) or max(1, steps // 10)
    if patience is not None:
        _check_int("patience", patience, 1)
        if eval_data is None:
            raise ValueError("patience (early stopping) needs eval_data to watch")
    checkpoint_every = _check_int("checkpoint_every", checkpoint_every, 0)
    if resume and checkpoint_dir is None:
        raise ValueError("resume=True needs checkpoint_dir (where the run was saved)")
    if not isinstance(model, nnx.Module):
        raise ValueError(f"model must be an nnx.Module, got {type(model).__name__}")
    if not callable(loss_fn):
        raise ValueError("loss_fn must be callable as loss_fn(model, batch, key)")

    data_key, step_key, eval_key = fit_keys(key)
    optimizer = nnx.Optimizer(model, optimizer_tx, wrt=nnx.Param)
    train_step, eval_step = make_train_step(loss_fn), make_eval_step(loss_fn)

    history: dict[str, list[float]] = {"step": []}
    period: list[tuple[Array, dict]] = []          # (loss, metrics) since the last record
    start, best_step, best_loss, bad_evals = 0, None, math.inf, 0
    best_state = None

    def trees():
        t = {"model": _leaves_and_paths(nnx.state(model)),
             "optimizer": _leaves_and_paths(nnx.state(optimizer)),
             "key": ([jax.random.key_data(key)], ["key"])}
        if best_state is not None:
            t["best"] = _leaves_and_paths(best_state)
        return t

    # ---- checkpoints
    ckpts = None
    if checkpoint_dir is not None:
        where = Path(checkpoint_dir).absolute()
        if resume and not where.is_dir():
            raise CheckpointError(f"resume=True but the checkpoint folder {where} does not "
                                  "exist. Check the path, or pass resume=False to start fresh.")
        ckpts = _RunCheckpoints(where, create=True)
        saved = ckpts.steps()
        if resume and not saved:
            leftovers = sorted(p.name for p in where.iterdir())
            raise CheckpointError(
                f"resume=True but {where} holds no complete checkpoint"
                + (f" (found only: {leftovers[:5]})" if leftovers else " (it is empty)")
                + ". Check the path, or pass resume=False to start fresh.")
        if not resume and saved:
            raise CheckpointError(
                f"{where} already holds checkpoints (newest: step {saved[-1]}). Pass "
                "resume=True to continue that run, or use an empty folder (or delete this "
                "one) to start a new run.")
        if resume:
            last = saved[-1]
            templates = trees()
            ocp = _ocp()
            try:
                meta = ckpts.manager.restore(last, args=ocp.args.Composite(
                    meta=ocp.args.JsonRestore()))["meta"]
            except Exception as err:
                raise CheckpointError(
                    f"checkpoint of step {last} in {where}: cannot read its metadata "
                    f"({type(err).__name__}: {err}). The checkpoint is damaged; delete that "
                    f"step folder to resume from an earlier one ({saved[:-1] or 'none'}).") from err
            if not isinstance(meta, dict) or "run" not in meta:
                raise CheckpointError(f"checkpoint of step {last} in {where} was not written "
                                      "by train.fit (no run metadata)")
            run = meta["run"]
            if run["n"] != n or run["batch_size"] != batch_size:
                raise CheckpointError(
                    f"checkpoint in {where} was written with N={run['n']}, batch_size="
                    f"{run['batch_size']}; this call has N={n}, batch_size={batch_size}. "
                    "Resume with the same data and batch size.")
            if run["has_best"]:
                best_state = nnx.state(model)  # template with the right structure
                templates = trees()
            restored, _ = ckpts.restore(last, templates)
            saved_key = np.asarray(restored["key"][0])
            if not np.array_equal(saved_key, np.asarray(jax.random.key_data(key))):
                raise CheckpointError(
                    f"the key passed to fit differs from the key of the run saved in {where}; "
                    "pass the same key to resume it exactly.")
            for name, target in (("model", model), ("optimizer", optimizer)):
                structure = jax.tree.structure(nnx.state(target))
                nnx.update(target, jax.tree.unflatten(structure, restored[name]))
            if run["has_best"]:
                best_state = jax.tree.unflatten(jax.tree.structure(best_state), restored["best"])
            start, history = run["step"], run["history"]
            best_step, bad_evals = run["best_step"], run["bad_evals"]
            best_loss = math.inf if run["best_loss"] is None else run["best_loss"]
            period[:] = [(np.float32(l), {k: np.float32(v) for k, v in m.items()})
                         for l, m in run["period"]]

    def save(step_done: int) -> None:
        if ckpts is None:
            return
        run = {"step": step_done, "n": n, "batch_size": batch_size, "history": history,
               "best_step": best_step, "bad_evals": bad_evals,
               "best_loss": None if math.isinf(best_loss) else best_loss,
               "has_best": best_state is not None,
               # the current period's per-step values, so a resumed run averages the same
               "period": [[float(l), {k: float(v) for k, v in m.items()}]
                          for l, m in jax.device_get(period)]}
        ckpts.save(step_done, trees(), {"run": run})

    # ---- the loop
    healthy = jnp.array(True)
    pending: list[tuple[int, Array, Array]] = []   # (step, finite flag, loss) not yet checked
    stopped_early = False
    step_done = start
    bar = tqdm(total=steps, initial=start, desc=desc, disable=not progress, leave=True)
    model.train()
    perm_epoch, perm = -1, None
    per_epoch = n // batch_size

    def check_pending() -> None:
        if not pending:
            return
        flags = np.asarray(jax.device_get([f for _, f, _ in pending]))
        if not flags.all():
            i = int(np.argmin(flags))
            bad_step, bad_loss = pending[i][0], float(pending[i][2])
            raise TrainingDiverged(_diverged_message(bad_step, bad_loss))
        bar.set_postfix(loss=f"{float(pending[-1][2]):.4f}", refresh=False)
        pending.clear()

    try:
        if start >= steps:
            check_pending()
        for step in range(start, steps):
            epoch, within = divmod(step, per_epoch)
            if epoch != perm_epoch:
                perm_epoch, perm = epoch, _epoch_permutation(data_key, epoch, n)
            idx = perm[within * batch_size:(within + 1) * batch_size]
            loss, metrics, finite, healthy = train_step(
                model, optimizer, train_data, idx, step_key, jnp.uint32(step), healthy)
            pending.append((step, finite, loss))
            period.append((loss, metrics))
            step_done = step + 1
            record = step_done % eval_every == 0 or step_done == steps
            checkpoint = ckpts is not None and (
                step_done == steps or (checkpoint_every and step_done % checkpoint_every == 0))
            if record or checkpoint or len(pending) >= 10:
                check_pending()
            bar.update(1)
            if record:
                means = jax.device_get([(l, m) for l, m in period])
                history["step"].append(step_done)
                _append(history, "train_loss", float(np.mean([l for l, _ in means])))
                for name in means[0][1]:
                    _append(history, f"train_{name}", float(np.mean([m[name] for _, m in means])))
                period.clear()
                if eval_data is not None:
                    ev = _evaluate(eval_step, model, eval_data, batch_size, eval_key)
                    for name, value in ev.items():
                        _append(history, f"eval_{name}", value)
                    bar.set_postfix(loss=f"{history['train_loss'][-1]:.4f}",
                                    eval_loss=f"{ev['loss']:.4f}", refresh=False)
                    if ev["loss"] < best_loss:
                        best_loss, best_step, bad_evals = ev["loss"], step_done, 0
                        if patience is not None:
                            best_state = jax.tree.map(jnp.copy, nnx.state(model))
                    else:
                        bad_evals += 1
                    if patience is not None and bad_evals >= patience:
                        stopped_early = True
            if checkpoint or (stopped_early and ckpts is not None):
                save(step_done)
            if callback is not None:
                callback(step_done)
            if stopped_early:
                break
        check_pending()
    finally:
        bar.close()
        if ckpts is not None:
            ckpts.close()
    if patience is not None and best_state is not None:
        nnx.update(model, best_state)
    model.eval()
    return FitResult(history=history, best_step=best_step, stopped_early=stopped_early,
                     steps_done=step_done)


def _append(history: dict, name: str, value: float) -> None:
    history.setdefault(name, []).append(value)
