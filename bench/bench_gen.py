"""Training-step throughput of course_lib.gan (DCGAN) and course_lib.vae (VAE) against PyTorch.

Each case is one training step at the configuration notebooks 07 and 08 use (``full`` scale,
and the ``small`` one), on the CPU:

* DCGAN, both players (``gan.train_dcgan_mnist``'s recipe): one discriminator step on a real
  batch and as many fresh fakes, then one generator step on fresh latents, non-saturating
  loss, Adam(lr, b1=0.5) for each player;
* VAE (``vae.VAE`` under ``vae.make_vae_update``): dynamic binarisation of the batch, one
  reparameterised draw, Bernoulli decoder on 28x28 images, closed-form KL, Adam.

Ours is what ``train.loop`` runs at each step: the batch gathered from the data, the
``update`` that ``gan.train_gan`` / notebook 08 give the loop (``gan.gan_update()``, i.e. the
compiled ``gan_step``; ``vae.make_vae_update()``, i.e. binarisation then the compiled
``vae_step``), and the loop's NaN/Inf check of the metrics (and of the whole state every 10
steps). PyTorch's twin (bench/torch_models.py) is the same model (same layer sizes, batch
norm momentum, optimizer and hyper-parameters), eager, with the same thread count, run in a
worker process from ``.venv-torch``. The two sides alternate in rounds of ``k`` steps so that
they see the same machine load; the best round of each counts.

What was tried (2-core CPU shared with other jobs, jax 0.10.2 vs torch 2.13.0; the same-run
A/B of each change, ms per step of ours):
* DCGAN, full scale: ~400 -> ~150 ms. XLA:CPU computes the kernel gradient of a transposed
  convolution as a convolution with a dilated input on a slow generic path: 380 ms for the
  64 -> 32 layer at batch 128, against 14 ms for the same numbers obtained as the kernel
  gradient of the strided convolution whose adjoint the transposed convolution is.
  ``gan._upsample`` has that hand-written backward pass (forward and input gradient
  bit-identical to before, kernel gradient equal up to float32 rounding). What remains is
  the convolutions themselves (the discriminator's kernel gradients, run once for the real
  and once for the fake batch, and the dilated-input convolutions of the transposed forward
  pass and of the discriminator's input gradient).
* VAE: the step is small (a few ms of matmuls), so Python work per step counts. The loop's
  update now binarises, splits the key and steps in one compiled call with
  ``nnx.jit(graph=False)`` (was: eager split and Bernoulli draw, a second validation of the
  binarised batch, graph-mode ``nnx.jit``), and the [0, 1] check of the batch reads the host
  copy that the finiteness check already made instead of two device reductions: full
  ~31 -> ~24 ms, small ~16 -> ~8 ms under load, parameters bit-identical after 30 loop steps.
* Threads: PyTorch with 2 OpenMP threads collapses when the 2 cores are shared with other
  work (1.1-2.3 s per DCGAN step against 0.22 s with 1 thread, same load); rerun on a quiet
  machine for the table, or pin both sides to one core (``taskset -c 0``) for a fair
  one-thread comparison on a busy one.

Run alone: ``.venv/bin/python bench/bench_gen.py [--quick] [dcgan_full dcgan_small vae_full
vae_small]`` (the cases to run; all by default).
"""
from __future__ import annotations

import sys
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from bench_nets import THREADS  # noqa: E402
from common import Row, TorchWorker, alternate_rounds, block  # noqa: E402
from course_lib import gan, train, vae  # noqa: E402

# notebook 07's CFG (dcgan_batch, features, latent_dim, dcgan_lr) and 08's (batch_size,
# hidden, latent, lr), small and full scale
DCGAN_CFGS = {
    "full": dict(case="dcgan", batch=128, features=32, latent_dim=64, lr=2e-4),
    "small": dict(case="dcgan", batch=64, features=8, latent_dim=32, lr=1e-3),
}
VAE_CFGS = {
    "full": dict(case="vae", batch=100, hidden=[512, 256], latent=32, lr=1e-3),
    "small": dict(case="vae", batch=100, hidden=[256], latent=16, lr=2e-3),
}


def _dcgan_state(cfg: dict):
    """The state, update and data of ``gan.train_dcgan_mnist`` (unconditional)."""
    rngs = nnx.Rngs(0)
    g = gan.DCGANGenerator(cfg["latent_dim"], features=cfg["features"], rngs=rngs)
    d = gan.DCGANDiscriminator(features=cfg["features"], rngs=rngs)
    state = gan.gan_state(g, d, optax.adam(cfg["lr"], b1=0.5), optax.adam(cfg["lr"], b1=0.5))
    rng = np.random.default_rng(0)
    images = rng.uniform(size=(4 * cfg["batch"], 28, 28)).astype(np.float32)
    return state, gan.gan_update(), (jnp.asarray(2.0 * images[..., None] - 1.0),)


def _vae_state(cfg: dict):
    """The state, update and data of notebook 08's ``fit_vae``."""
    model = vae.VAE(cfg["latent"], hidden=tuple(cfg["hidden"]), rngs=nnx.Rngs(0))
    state = {"model": model, "optimizer": nnx.Optimizer(model, optax.adam(cfg["lr"]),
                                                        wrt=nnx.Param)}
    rng = np.random.default_rng(0)
    images = rng.uniform(size=(4 * cfg["batch"], 28, 28)).astype(np.float32)
    return state, vae.make_vae_update(), (jnp.asarray(images),)


def _ours(build, cfg: dict):
    """(first call seconds, function running k loop steps and returning seconds per step).

    Each step is ``train.loop``'s: gather the batch, ``update(state, batch, fold_in(key, t),
    t)``, then the jitted finiteness check of the metrics (of metrics and state every
    ``train._STATE_CHECK_EVERY`` steps)."""
    state, update, data = build(cfg)
    _, step_key, _ = train.fit_keys(jax.random.key(0))
    n, b = data[0].shape[0], cfg["batch"]
    modules = [m for m in jax.tree.leaves(state, is_leaf=lambda x: isinstance(x, nnx.Module))
               if isinstance(m, nnx.Module) and not isinstance(m, nnx.Optimizer)]
    for m in modules:
        m.train()
    counter = [0]

    def step():
        t = counter[0]
        counter[0] += 1
        idx = np.arange((t * b) % n, (t * b) % n + b)
        batch = tuple(a[idx] for a in data)
        metrics = update(state, batch, jax.random.fold_in(step_key, t), t)
        metrics = {k: jnp.asarray(v) for k, v in metrics.items()}
        if (t + 1) % train._STATE_CHECK_EVERY == 0:
            return train._finite((metrics, nnx.state(state)))
        return train._finite(metrics)

    t0 = time.perf_counter()
    block(step())
    first = time.perf_counter() - t0

    def run(k: int) -> float:
        t0 = time.perf_counter()
        for _ in range(k):
            out = step()
        block(out)
        return (time.perf_counter() - t0) / k

    return first, run


def _compare(name: str, cfg: dict, build, quick: bool, note: str, k: int) -> Row:
    first, ours = _ours(build, cfg)
    torch_worker = TorchWorker("torch_models.py", cfg, THREADS)
    rounds = 3 if quick else 7
    k = max(2, k // 4) if quick else k
    try:
        steady, peer_s = alternate_rounds(ours, torch_worker.time, rounds=rounds, k=k)
    finally:
        torch_worker.close()
    return Row(topic="gen", case=name, ours_s=steady, peer_s=peer_s,
               peer=f"PyTorch {torch_worker.version}", compile_s=first - steady, target=1.2,
               note=note, repeats=rounds)


def run(quick: bool, only: tuple[str, ...] = ("dcgan_full", "dcgan_small", "vae_full",
                                             "vae_small")) -> list[Row]:
    rows = []
    for scale in ("full", "small"):
        c = DCGAN_CFGS[scale]
        if f"dcgan_{scale}" not in only:
            continue
        rows.append(_compare(
            f"DCGAN train step, both players (D then G, non-saturating, Adam), notebook 07 "
            f"{scale}: B={c['batch']}, F={c['features']}, latent {c['latent_dim']}",
            c, _dcgan_state, quick,
            f"{THREADS} threads each; NHWC (ours) vs NCHW (torch); torch: fakes under no_grad "
            "for D, D's parameters frozen for G's backward (ours computes neither)", k=10))
    for scale in ("full", "small"):
        c = VAE_CFGS[scale]
        if f"vae_{scale}" not in only:
            continue
        rows.append(_compare(
            f"VAE train step (binarise, reparameterise, Bernoulli decoder, Adam), notebook 08 "
            f"{scale}: B={c['batch']}, hidden {tuple(c['hidden'])}, latent {c['latent']}",
            c, _vae_state, quick, f"{THREADS} threads each", k=40))
    return rows


if __name__ == "__main__":
    from common import markdown_table

    cases = tuple(a for a in sys.argv[1:] if not a.startswith("--"))
    print(markdown_table(run(quick="--quick" in sys.argv, **({"only": cases} if cases else {}))))
