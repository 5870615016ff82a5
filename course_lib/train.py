"""The course's training loops: Flax NNX + optax, compiled steps, exact resume, clear failures.

One call trains a model in place::

    tx = optax.chain(optax.clip_by_global_norm(1.0),
                     optax.adamw(optax.warmup_cosine_decay_schedule(
                         init_value=0.0, peak_value=1e-3, warmup_steps=100, decay_steps=2000)))
    result = train.fit(model, tx, loss_fn, (x_train, y_train), steps=2000, batch_size=64,
                       key=jax.random.key(0), eval_data=(x_val, y_val), eval_every=200,
                       patience=3, checkpoint_dir="runs/mnist", checkpoint_every=500)

* ``loss_fn(model, batch, key) -> (loss, metrics)``: ``batch`` is the tuple of arrays of one
  mini-batch, ``key`` the PRNG key of this step (for dropout: ``model(x, rngs=key)``),
  ``metrics`` a dict of scalars to average (it may be empty; ``"loss"`` is reserved).
* Learning-rate schedules and gradient clipping are part of the optax transformation the
  caller passes (as above); ``fit`` adds nothing to it.
* Randomness is explicit: ``key`` is split (:func:`fit_keys`) into a data key (which example
  goes into which batch: :func:`batch_at`), a step key (``fold_in(step_key, step)`` is
  passed to ``loss_fn``) and an eval key. The same key gives the same numbers, and a resumed run gives
  bit-identical parameters to an uninterrupted one.
* Steps are counted from 0; ``history["step"]`` holds the number of steps completed.
* NaN/Inf stops the run with :class:`TrainingDiverged` naming the step; checkpoint problems
  raise :class:`CheckpointError`. ``fit`` leaves the model in eval mode.
* The compiled steps are cached per ``loss_fn`` (weakly: dropping the function frees them),
  so a second ``fit`` with the same ``loss_fn``, the same optax object and models of the same
  architecture does not trace or compile again.

:func:`loop` is the same loop for any state and any step (two players of a GAN, a VAE's
reparameterised step, k discriminator steps per generator step)::

    state = {"g": generator, "d": critic, "g_opt": nnx.Optimizer(generator, tx_g, wrt=nnx.Param),
             "d_opt": nnx.Optimizer(critic, tx_d, wrt=nnx.Param)}
    result = train.loop(state, update, (x_train,), steps=5000, batch_size=64,
                        key=jax.random.key(0), checkpoint_dir="runs/gan")

with ``update(state, batch, key, step) -> metrics`` (see :func:`loop`). ``fit`` is
``loop`` with the step :func:`make_train_step` compiles from ``loss_fn``.
"""
from __future__ import annotations

import hashlib
import json
import math
import os
import types
import warnings
import weakref
from pathlib import Path
from typing import Any, Callable, Iterable, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx
from tqdm.auto import tqdm

from course_lib import _validate

Array = jax.Array
LossFn = Callable[[nnx.Module, tuple, Array], tuple[Array, dict[str, Array]]]
UpdateFn = Callable[[Any, tuple, Array, int], dict[str, Array]]
EvalFn = Callable[[Any, tuple, Array], dict[str, Array]]

__all__ = [
    "fit", "loop", "FitResult", "batch_at", "TrainingDiverged", "CheckpointError",
    "cross_entropy", "accuracy", "save_model", "load_model", "make_train_step",
    "make_eval_step", "latest_checkpoint_step", "fit_keys",
]


class TrainingDiverged(FloatingPointError, RuntimeError):
    """The loss, a metric, a gradient or a parameter became NaN or infinite."""


class CheckpointError(RuntimeError):
    """A checkpoint is missing, damaged or does not match the model being trained."""


class FitResult(NamedTuple):
    """What :func:`fit` and :func:`loop` return (the model or state is trained in place).

    Attributes:
      history: lists of equal length, one entry per period of ``eval_every`` steps:
        ``"step"`` (steps completed), ``"train_<metric>"`` for each metric of the steps
        (``"train_loss"`` for ``fit``; averaged over the period), and with evaluation
        ``"eval_<metric>"``.
      best_step: steps completed at the lowest monitored eval metric (``fit``: the eval
        loss; None without evaluation).
      stopped_early: whether early stopping ended the run.
      steps_done: steps completed (``steps`` unless stopped early).
    """

    history: dict[str, list[float]]
    best_step: int | None
    stopped_early: bool
    steps_done: int


# ------------------------------------------------------------------------------- losses
def _logits_and_labels(logits, labels) -> tuple[Array, Array]:
    """Checked ``(logits (..., C), labels (...))``: real logits without NaN, integer labels
    in ``[0, C)`` (values checked when concrete, i.e. not under ``jit``)."""
    if not isinstance(logits, jax.Array):
        logits = jnp.asarray(_as_numeric(logits, "logits"))
    logits = _validate.real_array(logits, "logits", finite=False)   # -inf (a mask) is allowed
    if logits.ndim < 1 or logits.shape[-1] < 1:
        raise ValueError(f"logits must have a class axis (..., C) with C >= 1, got shape "
                         f"{tuple(logits.shape)}")
    if _validate.is_concrete(logits) and bool(jnp.any(jnp.isnan(logits))):
        raise ValueError("logits contains NaN")
    if np.shape(labels) != logits.shape[:-1]:
        raise ValueError(f"labels must have shape logits.shape[:-1] = {logits.shape[:-1]}, "
                         f"got {np.shape(labels)}")
    labels = _validate.ids(labels, "labels", logits.shape[-1], what="classes")
    return logits, labels


def cross_entropy(logits: Array, labels: Array) -> Array:
    """Mean softmax cross-entropy ``-mean(log softmax(logits)[label])``.

    ``logits (..., C)`` floats, ``labels (...)`` integer class ids in ``[0, C)``. Concrete
    labels outside ``[0, C)`` and NaN logits raise ``ValueError`` (under ``jit`` only shapes
    and dtypes can be checked).
    """
    logits, labels = _logits_and_labels(logits, labels)
    return optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean()


def accuracy(logits: Array, labels: Array) -> Array:
    """Fraction of positions where ``argmax(logits) == labels`` (same checks as
    :func:`cross_entropy`)."""
    logits, labels = _logits_and_labels(logits, labels)
    return jnp.mean(jnp.argmax(logits, axis=-1) == labels)


# ------------------------------------------------------------------------------- data
def _as_key(key) -> Array:
    """Accept a typed key (``jax.random.key``) or a raw ``PRNGKey``; return a typed key."""
    key = _validate.key(key)
    return key if jnp.issubdtype(key.dtype, jax.dtypes.prng_key) else jax.random.wrap_key_data(key)


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


def _as_numeric(a, name: str):
    """``a`` as an array of numbers (bool, int or float): strings, objects and complex
    numbers are refused with the argument's name."""
    if not isinstance(a, jax.Array):
        try:
            a = np.asarray(a)
        except (TypeError, ValueError) as err:      # ragged lists and the like
            raise ValueError(f"{name} must be an array of numbers: {err}") from None
    if np.dtype(a.dtype).kind not in "biuf":
        raise ValueError(f"{name} must hold numbers (bool, int or float), got dtype {a.dtype}")
    return a


def _data(arrays, name: str) -> tuple[Array, ...]:
    """Training or evaluation data: a tuple of numeric arrays sharing their first axis, with
    no NaN or infinite value; returned as JAX arrays."""
    arrays = _check_arrays(arrays, name)
    out = []
    for i, a in enumerate(arrays):
        a = jnp.asarray(_as_numeric(a, f"{name}[{i}]"))
        if jnp.issubdtype(a.dtype, jnp.floating) and not bool(jnp.all(jnp.isfinite(a))):
            bad = int(np.argmax(~np.isfinite(np.asarray(a)).reshape(a.shape[0], -1).all(1)))
            raise ValueError(f"{name}[{i}] contains NaN or infinite values (first at example "
                             f"{bad})")
        out.append(a)
    return tuple(out)


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
    batch_size = _validate.count(batch_size, "batch_size", maximum=n)
    step = _validate.count(step, "step", minimum=0)
    idx = _Batches(_as_key(key), n, batch_size).indices(step)
    return tuple(a[idx] for a in arrays)


class _Batches:
    """The example indices of each step (:func:`batch_at`), one permutation per epoch."""

    def __init__(self, data_key: Array, n: int, batch_size: int):
        self.key, self.n, self.batch_size = data_key, n, batch_size
        self.per_epoch = n // batch_size
        self.epoch, self.perm = -1, None

    def indices(self, step: int) -> np.ndarray:
        epoch, within = divmod(step, self.per_epoch)
        if epoch != self.epoch:
            self.epoch, self.perm = epoch, _epoch_permutation(self.key, epoch, self.n)
        return self.perm[within * self.batch_size:(within + 1) * self.batch_size]


def fit_keys(key) -> tuple[Array, Array, Array]:
    """The three keys :func:`fit` and :func:`loop` derive from their ``key``: ``(data_key,
    step_key, eval_key)`` = ``jax.random.split(key, 3)``. Batches are ``batch_at(...,
    key=data_key)``; step ``t`` gets ``fold_in(step_key, t)``; evaluation chunk ``i`` gets
    ``fold_in(eval_key, i)``. Separate keys keep batch order and dropout independent."""
    data_key, step_key, eval_key = jax.random.split(_as_key(key), 3)
    return data_key, step_key, eval_key


# ------------------------------------------------------------------------------- steps
def _all_finite(tree) -> Array:
    leaves = [jnp.all(jnp.isfinite(x)) for x in jax.tree.leaves(tree)
              if jnp.issubdtype(x.dtype, jnp.inexact)]
    return jnp.all(jnp.stack(leaves)) if leaves else jnp.array(True)


_finite = jax.jit(_all_finite)
_STATE_CHECK_EVERY = 10      # loop(): steps between two checks of every float in the state


def _checked_loss_output(out, what: str = "loss_fn"):
    """``(loss, metrics)`` as ``loss_fn`` must return it (checked while tracing)."""
    if not isinstance(out, (tuple, list)) or len(out) != 2 or not isinstance(out[1], dict):
        raise ValueError(f"{what} must return (loss, metrics dict), got {type(out).__name__}")
    loss, metrics = out
    if np.shape(loss) != ():
        raise ValueError(f"{what} must return a scalar loss, got shape {np.shape(loss)}")
    if "loss" in metrics:
        raise ValueError(f"{what}'s metrics dict must not use the name 'loss' (reserved for "
                         "the loss itself)")
    _check_metrics(metrics, f"{what}'s metrics")
    return loss, metrics


def _check_metrics(metrics, what: str) -> dict:
    if not isinstance(metrics, dict):
        raise ValueError(f"{what} must be a dict of scalars, got {type(metrics).__name__}")
    for name, value in metrics.items():
        if not isinstance(name, str) or np.shape(value) != ():
            raise ValueError(f"{what} must map names (str) to scalars; {name!r} has shape "
                             f"{np.shape(value)}")
    return metrics


# Compiled steps per loss_fn. Keys are weak (a dropped loss_fn frees its steps) and the steps
# reach loss_fn through a weak reference, so the cache keeps nothing alive by itself.
_STEP_CACHE: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def _weak_caller(fn: Callable) -> Callable:
    """``fn`` called through a weak reference when one can be made (a function, a partial, a
    callable object); a bound method is held by :class:`weakref.WeakMethod`."""
    try:
        ref = weakref.WeakMethod(fn) if isinstance(fn, types.MethodType) else weakref.ref(fn)
    except TypeError:                        # not weak-referenceable: hold it strongly
        return fn

    def call(*args):
        target = ref()
        if target is None:
            raise RuntimeError("the loss_fn this step was compiled for no longer exists")
        return target(*args)

    return call


def _steps_for(loss_fn: LossFn) -> dict[str, Callable]:
    if not callable(loss_fn):
        raise ValueError(f"loss_fn must be callable as loss_fn(model, batch, key), got "
                         f"{type(loss_fn).__name__}")
    try:
        cached = _STEP_CACHE.get(loss_fn)
    except TypeError:                        # unhashable or not weak-referenceable
        cached = None
    if cached is not None:
        return cached
    steps = {"train": _compile_train_step(_weak_caller(loss_fn)),
             "eval": _compile_eval_step(_weak_caller(loss_fn))}
    if not isinstance(loss_fn, types.MethodType):   # a bound method is a new object each time
        try:
            _STEP_CACHE[loss_fn] = steps
        except TypeError:
            pass
    return steps


def _compile_train_step(loss_fn: LossFn):
    @nnx.jit
    def train_step(model, optimizer, arrays, idx, step_key, step, healthy):
        batch = tuple(a[idx] for a in arrays)
        key = jax.random.fold_in(step_key, step)

        def objective(m):
            return _checked_loss_output(loss_fn(m, batch, key))

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


def _compile_eval_step(loss_fn: LossFn):
    @nnx.jit
    def eval_step(model, batch, key):
        return _checked_loss_output(loss_fn(model, batch, key))

    return eval_step


def make_train_step(loss_fn: LossFn):
    """The compiled training step ``fit`` uses (exposed for benchmarks and for study).

    ``step(model, optimizer, arrays, idx, step_key, step, healthy) -> (loss, metrics, finite,
    healthy)``: gathers the batch ``arrays[idx]``, computes the loss and its gradient, and
    applies the optimizer update in place, but only if the loss, every gradient and every
    updated parameter are finite and no earlier step failed (``healthy``), so a diverged
    run keeps the parameters from before its first bad step. The step's key is ``fold_in(step_key, step)``.

    The same ``loss_fn`` gives the same compiled function (cached weakly), so it is traced
    once per architecture, optimizer and batch shape, not once per call of ``fit``.
    """
    return _steps_for(loss_fn)["train"]


def make_eval_step(loss_fn: LossFn):
    """Compiled ``eval_step(model, batch, key) -> (loss, metrics)`` (no update; cached per
    ``loss_fn`` like :func:`make_train_step`)."""
    return _steps_for(loss_fn)["eval"]


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


def _meta_digest(meta: dict) -> str:
    """Checksum of the metadata itself (JSON round-trips Python floats exactly)."""
    body = {k: v for k, v in meta.items() if k != "meta_digest"}
    return hashlib.sha256(json.dumps(body, sort_keys=True).encode()).hexdigest()


def _ocp():
    import orbax.checkpoint as ocp  # imported lazily: orbax is slow to import

    return ocp


def _abstract(leaves):
    return [jax.ShapeDtypeStruct(np.shape(x), x.dtype) for x in leaves]


def _save_tree(checkpointer_or_manager, where, trees: dict[str, list], meta: dict) -> None:
    ocp = _ocp()
    meta = dict(meta, digest={k: _digest(v) for k, v in trees.items()})
    meta["meta_digest"] = _meta_digest(meta)
    args = ocp.args.Composite(state=ocp.args.StandardSave(trees), meta=ocp.args.JsonSave(meta))
    checkpointer_or_manager.save(where, args=args, force=True)


def _read_meta(checkpointer_or_manager, where, what: str) -> dict:
    """The checkpoint's metadata, checked against its own checksum."""
    ocp = _ocp()
    try:
        meta = checkpointer_or_manager.restore(
            where, args=ocp.args.Composite(meta=ocp.args.JsonRestore()))["meta"]
    except Exception as err:  # orbax raises many kinds; all mean "cannot read it"
        raise CheckpointError(f"{what}: cannot read its metadata ({type(err).__name__}: "
                              f"{err}). The checkpoint is damaged or incomplete.") from err
    if not isinstance(meta, dict) or not {"paths", "shapes", "digest"} <= meta.keys():
        raise CheckpointError(f"{what}: metadata is missing or was not written by course_lib")
    if meta.get("meta_digest") != _meta_digest(meta):
        raise CheckpointError(f"{what}: its metadata fails its checksum: the checkpoint is "
                              "damaged (or was written by an older course_lib).")
    return meta


def _restore_tree(checkpointer_or_manager, where, templates: dict[str, tuple], what: str,
                  meta: dict | None = None):
    """Restore ``templates``-shaped leaf lists; every failure becomes a CheckpointError."""
    ocp = _ocp()
    if meta is None:
        meta = _read_meta(checkpointer_or_manager, where, what)
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

    def what(self, step: int) -> str:
        return f"checkpoint of step {step} in {self.directory}"

    def meta(self, step: int) -> dict:
        return _read_meta(self.manager, step, self.what(step))

    def restore(self, step: int, templates: dict, meta: dict):
        return _restore_tree(self.manager, step, templates, self.what(step), meta)

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


def _check_module(model, name: str) -> None:
    if not isinstance(model, nnx.Module):
        raise ValueError(f"{name} must be an nnx.Module, got {type(model).__name__}")


def save_model(model: nnx.Module, path) -> Path:
    """Save every variable of ``model`` with orbax under the folder ``path`` (overwriting it).

    Written to a temporary name and renamed when complete, so ``path`` always holds a whole
    model. Load it with :func:`load_model` into a model built the same way.
    """
    _check_module(model, "model")
    ocp = _ocp()
    path = Path(path).absolute()
    if path.exists() and not path.is_dir():
        raise ValueError(f"path {path} is a regular file: save_model writes a folder there")
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
    _check_module(model_template, "model_template")
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


# ------------------------------------------------------------------------------- the loop's parts
class _Settings(NamedTuple):
    steps: int
    batch_size: int
    eval_every: int
    patience: int | None
    checkpoint_every: int | None
    monitor: str


def _settings(*, n: int, steps, batch_size, eval_every, patience, checkpoint_every, monitor,
              has_eval: bool, needs_eval: str, checkpoint_dir, resume, progress, desc,
              callback) -> _Settings:
    """Every count and option of a run, checked before anything is traced or trained."""
    steps = _validate.count(steps, "steps")
    batch_size = _validate.count(batch_size, "batch_size", maximum=n)
    eval_every = max(1, steps // 10) if eval_every is None else _validate.count(
        eval_every, "eval_every")
    if patience is not None:
        patience = _validate.count(patience, "patience")
        if not has_eval:
            raise ValueError(f"patience (early stopping) needs {needs_eval} to watch")
    if checkpoint_every is not None:
        checkpoint_every = _validate.count(checkpoint_every, "checkpoint_every")
    if not isinstance(monitor, str):
        raise ValueError(f"monitor must be the name of an eval metric, got {monitor!r}")
    for name, flag in (("resume", resume), ("progress", progress)):
        if not isinstance(flag, (bool, np.bool_)):
            raise ValueError(f"{name} must be True or False, got {flag!r}")
    if resume and checkpoint_dir is None:
        raise ValueError("resume=True needs checkpoint_dir (where the run was saved)")
    if not isinstance(desc, str):
        raise ValueError(f"desc must be a string (the progress bar's label), got {desc!r}")
    if callback is not None and not callable(callback):
        raise ValueError(f"callback must be callable as callback(steps_completed), got "
                         f"{type(callback).__name__}")
    return _Settings(steps, batch_size, eval_every, patience, checkpoint_every, monitor)


def _open_checkpoints(checkpoint_dir, resume: bool) -> _RunCheckpoints | None:
    """The run's checkpoint folder, checked before any step: a regular file, a folder that
    cannot be created, or (without ``resume``) old checkpoints there are refused."""
    if checkpoint_dir is None:
        return None
    try:
        where = Path(checkpoint_dir).absolute()
    except TypeError:
        raise ValueError(f"checkpoint_dir must be a path, got {checkpoint_dir!r}") from None
    if where.exists() and not where.is_dir():
        raise ValueError(f"checkpoint_dir {where} is a regular file, not a folder: pass a "
                         "folder (new or holding this run's checkpoints)")
    if resume and not where.is_dir():
        raise CheckpointError(f"resume=True but the checkpoint folder {where} does not "
                              "exist. Check the path, or pass resume=False to start fresh.")
    try:
        where.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise ValueError(f"checkpoint_dir {where} cannot be created ({err})") from None
    if not os.access(where, os.W_OK | os.X_OK):
        raise ValueError(f"checkpoint_dir {where} is not writable")
    ckpts = _RunCheckpoints(where, create=True)
    try:
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
    except BaseException:
        ckpts.close()
        raise
    return ckpts


def _modules(state) -> list:
    """The NNX objects (modules, optimizers) of a state: one object or a dict/list/tuple."""
    nodes = jax.tree.leaves(state, is_leaf=lambda x: isinstance(x, nnx.Pytree))
    if not nodes or not all(isinstance(x, nnx.Pytree) for x in nodes):
        kinds = sorted({type(x).__name__ for x in nodes if not isinstance(x, nnx.Pytree)})
        held = f" holding {kinds}" if kinds else ""
        raise ValueError("state must be an NNX module or optimizer, or a dict/list/tuple of "
                         f"them, got {type(state).__name__}{held}")
    return [x for x in nodes if isinstance(x, nnx.Module)]


def _set_mode(modules: list, *, training: bool) -> None:
    for m in modules:
        m.train() if training else m.eval()


def _evaluate(eval_fn: EvalFn, state, modules: list, arrays: tuple | None, chunk: int,
              key: Array) -> dict[str, float]:
    """Eval metrics: ``eval_fn`` on chunks of ``chunk`` examples, averaged with each chunk
    weighted by its size (so the result is the mean over all examples); one call with
    ``batch = ()`` without eval data. Modules are in eval mode meanwhile."""
    n = 1 if arrays is None else arrays[0].shape[0]
    starts = [None] if arrays is None else range(0, n, chunk)
    sums: dict[str, Array] = {}
    _set_mode(modules, training=False)
    try:
        for i, start in enumerate(starts):
            batch = () if arrays is None else tuple(a[start:start + chunk] for a in arrays)
            metrics = _check_metrics(eval_fn(state, batch, jax.random.fold_in(key, i)),
                                     "eval_fn's result")
            weight = batch[0].shape[0] if batch else 1
            for name, value in metrics.items():
                sums[name] = sums.get(name, 0.0) + weight * jnp.asarray(value, jnp.float32)
    finally:
        _set_mode(modules, training=True)
    return {name: float(total) / n for name, total in sums.items()}


def _append(history: dict, name: str, value: float) -> None:
    history.setdefault(name, []).append(value)


class _Record:
    """History, the metrics of the current period, and early stopping."""

    def __init__(self, settings: _Settings):
        self.patience, self.monitor = settings.patience, settings.monitor
        self.history: dict[str, list[float]] = {"step": []}
        self.period: list[dict[str, Array]] = []     # each step's metrics since the last record
        self.best_step, self.best_value, self.bad_evals = None, math.inf, 0
        self.best_state = None
        self.stopped_early, self.stop_reason = False, None

    def close_period(self, step_done: int) -> dict[str, float]:
        means = jax.device_get(self.period)
        self.history["step"].append(step_done)
        out = {}
        for name in means[0]:
            out[name] = float(np.mean([m[name] for m in means]))
            _append(self.history, f"train_{name}", out[name])
        self.period.clear()
        return out

    def add_eval(self, step_done: int, ev: dict[str, float], state) -> None:
        for name, value in ev.items():
            _append(self.history, f"eval_{name}", value)
        if self.monitor not in ev:
            if self.patience is not None:
                raise ValueError(f"early stopping watches the eval metric {self.monitor!r} "
                                 f"(monitor), but the evaluation returned only {sorted(ev)}")
            return
        value = ev[self.monitor]
        if math.isnan(value):
            raise TrainingDiverged(f"the evaluation after step {step_done} gave eval "
                                   f"{self.monitor} = nan")
        if value < self.best_value:
            self.best_value, self.best_step, self.bad_evals = value, step_done, 0
            if self.patience is not None:
                self.best_state = jax.tree.map(jnp.copy, nnx.state(state))
        else:
            self.bad_evals += 1
        if self.patience is not None and self.bad_evals >= self.patience:
            self.stopped_early = True
            self.stop_reason = (f"early stopping: no lower eval {self.monitor} in "
                                f"{self.patience} evaluations in a row (best {self.best_value:.6g}"
                                f" after step {self.best_step})")

    def to_meta(self) -> dict:
        return {"history": self.history, "best_step": self.best_step,
                "bad_evals": self.bad_evals,
                "best_value": None if math.isinf(self.best_value) else self.best_value,
                "has_best": self.best_state is not None,
                "stopped_early": self.stopped_early, "stop_reason": self.stop_reason,
                # the current period's per-step values, so a resumed run averages the same
                "period": [{k: float(v) for k, v in m.items()}
                           for m in jax.device_get(self.period)]}

    def from_meta(self, run: dict, best_state) -> None:
        self.history, self.best_step, self.bad_evals = run["history"], run["best_step"], \
            run["bad_evals"]
        self.best_value = math.inf if run["best_value"] is None else run["best_value"]
        self.best_state = best_state
        self.stopped_early, self.stop_reason = run["stopped_early"], run["stop_reason"]
        self.period = [{k: np.float32(v) for k, v in m.items()} for m in run["period"]]


class _Guard:
    """NaN/Inf watch: each step's finite flag is read back every few steps (reading it at
    every step would stall the device), and the first bad step is named."""

    def __init__(self, bar, message: Callable[[int, dict], str]):
        self.bar, self.message = bar, message
        self.pending: list[tuple[int, Array, dict]] = []   # (step, finite flag, metrics)

    def add(self, step: int, finite: Array, metrics: dict) -> None:
        self.pending.append((step, finite, metrics))

    def check(self) -> None:
        if not self.pending:
            return
        flags = np.asarray(jax.device_get([f for _, f, _ in self.pending]))
        if not flags.all():
            step, _, metrics = self.pending[int(np.argmin(flags))]
            raise TrainingDiverged(self.message(step, jax.device_get(metrics)))
        self.bar.set_postfix({k: f"{float(v):.4f}" for k, v in self.pending[-1][2].items()},
                             refresh=False)
        self.pending.clear()


class _Run(NamedTuple):
    """One run's pieces, built by :func:`fit` or :func:`loop` and driven by :func:`_drive`."""
    state: Any                                   # what is trained and checkpointed
    modules: list                                # put in train/eval mode
    step: Callable[[int, np.ndarray], tuple[Array, dict]]   # (step, indices) -> (finite, metrics)
    evaluate: Callable[[], dict[str, float]] | None
    n: int
    key: Array
    settings: _Settings
    message: Callable[[int, dict], str]          # the TrainingDiverged message


def _trees(run: _Run, record: _Record) -> dict:
    t = {"state": _leaves_and_paths(nnx.state(run.state)),
         "key": ([jax.random.key_data(run.key)], ["key"])}
    if record.best_state is not None:
        t["best"] = _leaves_and_paths(record.best_state)
    return t


def _save(ckpts: _RunCheckpoints, run: _Run, record: _Record, step_done: int) -> None:
    meta = {"step": step_done, "n": run.n, "batch_size": run.settings.batch_size,
            **record.to_meta()}
    ckpts.save(step_done, _trees(run, record), {"run": meta})


def _resume(ckpts: _RunCheckpoints, run: _Run, record: _Record) -> int:
    """Restore the newest checkpoint into the state and the record; return its step."""
    last = ckpts.steps()[-1]
    where = ckpts.directory
    meta = ckpts.meta(last)
    saved = meta.get("run")
    if not isinstance(saved, dict):
        raise CheckpointError(f"checkpoint of step {last} in {where} was not written "
                              "by train.fit or train.loop (no run metadata)")
    if saved["n"] != run.n or saved["batch_size"] != run.settings.batch_size:
        raise CheckpointError(
            f"checkpoint in {where} was written with N={saved['n']}, batch_size="
            f"{saved['batch_size']}; this call has N={run.n}, batch_size="
            f"{run.settings.batch_size}. Resume with the same data and batch size.")
    if saved["step"] > run.settings.steps and not saved["stopped_early"]:
        raise ValueError(f"steps={run.settings.steps} but the run in {where} has already "
                         f"completed {saved['step']} steps")
    structure = jax.tree.structure(nnx.state(run.state))
    templates = _trees(run, record)
    if saved["has_best"]:
        templates["best"] = templates["state"]
    restored, _ = ckpts.restore(last, templates, meta)
    if not np.array_equal(np.asarray(restored["key"][0]),
                          np.asarray(jax.random.key_data(run.key))):
        raise CheckpointError(
            f"the key passed differs from the key of the run saved in {where}; "
            "pass the same key to resume it exactly.")
    nnx.update(run.state, jax.tree.unflatten(structure, restored["state"]))
    best = jax.tree.unflatten(structure, restored["best"]) if saved["has_best"] else None
    record.from_meta(saved, best)
    return saved["step"]


def _drive(run: _Run, checkpoint_dir, *, resume: bool, progress: bool, desc: str,
           callback) -> FitResult:
    """The training loop of :func:`fit` and :func:`loop`: steps, periodic records and
    evaluations, NaN/Inf watch, checkpoints, early stopping and resume."""
    settings = run.settings
    record = _Record(settings)
    ckpts = _open_checkpoints(checkpoint_dir, resume)
    bar = None
    step_done = 0
    try:
        start = _resume(ckpts, run, record) if resume else 0
        # a run that stopped early is over: resuming it trains nothing
        end = start if record.stopped_early else settings.steps
        step_done = start
        bar = tqdm(total=settings.steps, initial=start, desc=desc, disable=not progress,
                   leave=True)
        guard = _Guard(bar, run.message)
        batches = _Batches(fit_keys(run.key)[0], run.n, settings.batch_size)
        _set_mode(run.modules, training=True)
        for step in range(start, end):
            finite, metrics = run.step(step, batches.indices(step))
            guard.add(step, finite, metrics)
            record.period.append(metrics)
            step_done = step + 1
            is_record = step_done % settings.eval_every == 0 or step_done == settings.steps
            is_checkpoint = ckpts is not None and (step_done == settings.steps or (
                settings.checkpoint_every and step_done % settings.checkpoint_every == 0))
            if is_record or is_checkpoint or len(guard.pending) >= 10:
                guard.check()
            bar.update(1)
            if is_record:
                means = record.close_period(step_done)
                shown = {f"train_{k}": f"{v:.4f}" for k, v in means.items()}
                if run.evaluate is not None:
                    ev = run.evaluate()
                    record.add_eval(step_done, ev, run.state)
                    shown.update({f"eval_{k}": f"{v:.4f}" for k, v in ev.items()})
                bar.set_postfix(shown, refresh=False)
            if is_checkpoint or (record.stopped_early and ckpts is not None):
                _save(ckpts, run, record, step_done)
            if callback is not None:
                callback(step_done)
            if record.stopped_early:
                break
        guard.check()
    finally:
        if bar is not None:
            bar.close()
        if ckpts is not None:
            ckpts.close()
    if settings.patience is not None and record.best_state is not None:
        nnx.update(run.state, record.best_state)
    _set_mode(run.modules, training=False)
    return FitResult(history=record.history, best_step=record.best_step,
                     stopped_early=record.stopped_early, steps_done=step_done)


# ------------------------------------------------------------------------------- loop and fit
def _loop_message(step: int, metrics: dict) -> str:
    shown = ", ".join(f"{k} = {float(v):.4g}" for k, v in metrics.items()) or "no metrics"
    return (f"training diverged at step {step} (counting from 0): a metric that update "
            f"returned or a value in the state is NaN or infinite ({shown}). The state holds "
            "what the steps up to this check left in it (at most 9 steps later); resume from "
            "the last checkpoint. Try: a lower learning rate, gradient clipping "
            "(optax.clip_by_global_norm(1.0) first in the optax chain), or check the inputs "
            "and the losses for NaN/Inf (e.g. log(0) or division by zero).")


def loop(state, update: UpdateFn, data: tuple, *, steps: int, batch_size: int, key,
         eval_fn: EvalFn | None = None, eval_data: tuple | None = None,
         eval_every: int | None = None, patience: int | None = None, monitor: str = "loss",
         checkpoint_dir: str | os.PathLike | None = None, checkpoint_every: int | None = None,
         resume: bool = False, progress: bool = True, desc: str = "train",
         callback: Callable[[int], Any] | None = None) -> FitResult:
    """Run any training step over any NNX state: the loop of :func:`fit`, for GANs, VAEs...

    Each step ``t`` (counted from 0) calls ``update(state, batch, key, t) -> metrics``:

    * ``state`` is what you passed: an NNX module or ``nnx.Optimizer``, or a dict/list/tuple
      of them (e.g. ``{"g": G, "d": D, "g_opt": opt_g, "d_opt": opt_d}``). ``update``
      changes it in place (``opt.update(model, grads)``); compile it with ``nnx.jit``.
    * ``batch`` is the tuple ``batch_at(data, batch_size, t, key=data_key)``;
      ``key = fold_in(step_key, t)`` (see :func:`fit_keys`): the noise of this step (the
      VAE's reparameterisation, the GAN's latent draws, dropout).
    * ``t`` is the step number as a Python int. Under ``nnx.jit`` it arrives as a traced
      integer (no recompilation per step): use it with ``jnp.where``/``nnx.cond``; or keep
      ``update`` a plain Python function that calls compiled sub-steps, e.g. k
      discriminator steps per generator step::

          def update(state, batch, key, t):
              metrics = d_step(state, batch, key)                # compiled with nnx.jit
              if t % k == k - 1:
                  metrics |= g_step(state, key)                  # compiled with nnx.jit
              return metrics

      (metrics must then have the same names at every step: return the last generator
      loss, or a placeholder, on the other steps.)
    * ``metrics`` is a dict of scalars; ``history["train_<name>"]`` holds their means over
      each period of ``eval_every`` steps.

    ``eval_fn(state, batch, key) -> metrics`` runs every ``eval_every`` steps with the
    modules in eval mode, on chunks of ``batch_size`` examples of ``eval_data`` (size-weighted
    means), or once with ``batch = ()`` without ``eval_data``; chunk ``i`` gets
    ``fold_in(eval_key, i)``. ``patience`` stops the run after that many evaluations in a row
    without a lower ``eval_fn(...)[monitor]`` and restores the whole state (models and
    optimizers) of the best one.

    NaN/Inf: the metrics are checked after every step and every float in the state every
    10 steps and at the last one (on the device; read back every 10 steps, at records and at
    checkpoints): the first bad step seen is named in :class:`TrainingDiverged` (a NaN that
    reaches the parameters shows in the next step's loss, so that is the step it was made or
    the one after; a NaN only in a state no metric reads is seen within 10 steps). Checkpoints (``checkpoint_dir``, every
    ``checkpoint_every`` steps and at the end; orbax, with checksums) hold the state, the
    key, the history and the early-stopping record; ``resume=True`` continues bit for bit
    (and a run that had stopped early returns at once, training nothing). The modules end in
    eval mode. Other arguments as in :func:`fit`.
    """
    modules = _modules(state)
    if not callable(update):
        raise ValueError(f"update must be callable as update(state, batch, key, step), got "
                         f"{type(update).__name__}")
    if eval_fn is not None and not callable(eval_fn):
        raise ValueError(f"eval_fn must be callable as eval_fn(state, batch, key), got "
                         f"{type(eval_fn).__name__}")
    if eval_data is not None and eval_fn is None:
        raise ValueError("eval_data needs eval_fn (what to compute on it)")
    data = _data(data, "data")
    eval_data = None if eval_data is None else _data(eval_data, "eval_data")
    settings = _settings(n=data[0].shape[0], steps=steps, batch_size=batch_size,
                         eval_every=eval_every, patience=patience,
                         checkpoint_every=checkpoint_every, monitor=monitor,
                         has_eval=eval_fn is not None, needs_eval="eval_fn (an evaluation)",
                         checkpoint_dir=checkpoint_dir, resume=resume, progress=progress,
                         desc=desc, callback=callback)
    key = _as_key(key)
    _, step_key, eval_key = fit_keys(key)

    names: list[list[str]] = []          # the metric names of the first step

    def step(t: int, idx: np.ndarray):
        batch = tuple(a[idx] for a in data)
        metrics = _check_metrics(update(state, batch, jax.random.fold_in(step_key, t), t),
                                 "update's result")
        if not names:
            names.append(list(metrics))
        elif list(metrics) != names[0]:
            raise ValueError(f"update must return the same metric names at every step: the "
                             f"first step gave {names[0]}, step {t} gave {list(metrics)}")
        metrics = {k: jnp.asarray(v) for k, v in metrics.items()}
        # the metrics after every step; every float of the state (a graph traversal, the
        # costly part for small models) every _STATE_CHECK_EVERY steps and at the last one
        if (t + 1) % _STATE_CHECK_EVERY == 0 or t + 1 == settings.steps:
            return _finite((metrics, nnx.state(state))), metrics
        return _finite(metrics), metrics

    evaluate = None if eval_fn is None else (
        lambda: _evaluate(eval_fn, state, modules, eval_data, settings.batch_size, eval_key))
    run = _Run(state, modules, step, evaluate, data[0].shape[0], key, settings, _loop_message)
    return _drive(run, checkpoint_dir, resume=resume, progress=progress, desc=desc,
                  callback=callback)


def _diverged_message(step: int, metrics: dict) -> str:
    return (f"training diverged at step {step} (counting from 0): the loss, a gradient or an "
            f"updated parameter is NaN or infinite (loss = {float(metrics['loss']):.4g}). The "
            "model keeps its parameters from before that step. Try: a lower learning rate, "
            "gradient clipping (optax.clip_by_global_norm(1.0) first in the optax chain), or "
            "check the inputs and the loss for NaN/Inf (e.g. log(0) or division by zero).")


def fit(model: nnx.Module, optimizer_tx: optax.GradientTransformation, loss_fn: LossFn,
        train_data: tuple, *, steps: int, batch_size: int, key, eval_data: tuple | None = None,
        eval_every: int | None = None, patience: int | None = None,
        checkpoint_dir: str | os.PathLike | None = None, checkpoint_every: int | None = None,
        resume: bool = False, progress: bool = True, desc: str = "train",
        callback: Callable[[int], Any] | None = None) -> FitResult:
    """Train ``model`` in place for ``steps`` optimizer steps; see the module docstring.

    Args:
      model: an ``nnx.Module``; put in train mode while training, eval mode to evaluate.
      optimizer_tx: the optax transformation (schedules and clipping included).
      loss_fn: ``loss_fn(model, batch, key) -> (loss, metrics dict)``.
      train_data: tuple of arrays sharing the first axis N (numbers, no NaN/Inf); batches
        come from :func:`batch_at`.
      steps: total steps of the run (a resumed run continues up to this number).
      batch_size: examples per step (also the chunk size of evaluation).
      key: PRNG key; the same key gives the same numbers.
      eval_data: optional tuple of arrays, evaluated whole (chunked, size-weighted mean).
      eval_every: record (and evaluate) every this many steps; None means about 10 records
        (``max(1, steps // 10)``). The last step is always recorded.
      patience: early stopping: stop after this many evaluations in a row without a lower
        eval loss. Needs ``eval_data``. With ``patience`` set, the model ends with the
        parameters of its best evaluation (and ``best_step`` says which).
      checkpoint_dir: folder of orbax checkpoints of this run; written every
        ``checkpoint_every`` steps (None: only at the end), at the end, and when early
        stopping ends the run (the checkpoint records that, and why). Checked before the
        first step (a regular file or an unwritable place is refused).
      resume: continue from the newest checkpoint in ``checkpoint_dir`` (parameters,
        optimizer state, step, key and history restored exactly); a run that had stopped
        early returns at once with its result, training nothing. A missing or damaged
        checkpoint raises :class:`CheckpointError`; so does a ``checkpoint_dir`` that already
        holds checkpoints when ``resume`` is False (no silent overwrite).
      progress: show a ``tqdm.auto`` bar with the live loss.
      desc: the bar's label.
      callback: called as ``callback(steps_completed)`` after every step (after any
        evaluation and checkpoint of that step); raising from it stops the run.

    Raises:
      TrainingDiverged: the loss or a gradient became NaN/Inf (the message names the step).
      ValueError: a bad argument (named), before anything is trained.

    ``fit`` is :func:`loop` with the step :func:`make_train_step` compiles (cached per
    ``loss_fn``), the state ``{"model": model, "optimizer": nnx.Optimizer(model,
    optimizer_tx, wrt=nnx.Param)}`` and the step that keeps the parameters from before a
    bad step.
    """
    _check_module(model, "model")
    if not isinstance(optimizer_tx, optax.GradientTransformation):
        raise ValueError(f"optimizer_tx must be an optax transformation (e.g. "
                         f"optax.adam(1e-3)), got {type(optimizer_tx).__name__}")
    compiled = _steps_for(loss_fn)
    train_data = _data(train_data, "train_data")
    eval_data = None if eval_data is None else _data(eval_data, "eval_data")
    settings = _settings(n=train_data[0].shape[0], steps=steps, batch_size=batch_size,
                         eval_every=eval_every, patience=patience,
                         checkpoint_every=checkpoint_every, monitor="loss",
                         has_eval=eval_data is not None, needs_eval="eval_data",
                         checkpoint_dir=checkpoint_dir, resume=resume, progress=progress,
                         desc=desc, callback=callback)
    key = _as_key(key)
    _, step_key, eval_key = fit_keys(key)
    optimizer = nnx.Optimizer(model, optimizer_tx, wrt=nnx.Param)
    state = {"model": model, "optimizer": optimizer}
    train_step, eval_step = compiled["train"], compiled["eval"]
    healthy = [jnp.array(True)]

    def step(t: int, idx: np.ndarray):
        loss, metrics, finite, healthy[0] = train_step(
            model, optimizer, train_data, idx, step_key, jnp.uint32(t), healthy[0])
        return finite, {"loss": loss, **metrics}

    def eval_fn(_state, batch, key):
        loss, metrics = eval_step(model, batch, key)
        return {"loss": loss, **metrics}

    evaluate = None if eval_data is None else (
        lambda: _evaluate(eval_fn, state, [model], eval_data, settings.batch_size, eval_key))
    run = _Run(state, [model], step, evaluate, train_data[0].shape[0], key, settings,
               _diverged_message)
    return _drive(run, checkpoint_dir, resume=resume, progress=progress, desc=desc,
                  callback=callback)
