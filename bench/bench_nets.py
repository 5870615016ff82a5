"""Training-step throughput of course_lib.nets against the same networks in PyTorch.

Two cases, each one optimizer step (forward, backward, Adam update) on the CPU:
* the MNIST-sized CNN (course_lib.nets.CNN, default widths) on a batch of 28x28 images;
* the LSTM character language model (course_lib.nets.CharLM) on a batch of sequences.
Ours is the exact compiled step that ``train.fit`` runs (batch gather, NaN guard included);
PyTorch's is the usual ``zero_grad; loss.backward(); opt.step()`` (bench/torch_models.py),
run in a worker process from ``.venv-torch`` with the same thread count. The two sides
alternate in rounds so that they see the same machine load; the best round of each counts.

Run alone: ``.venv/bin/python bench/bench_nets.py [--quick]``.

What was tried (2-core CPU, jax 0.10.2 vs torch 2.13.0), steady-state ms per step:
* CNN: 48 -> 22 ms after replacing ``nnx.max_pool`` (whose gradient is XLA's
  ``select_and_scatter``, ~20 ms alone) by a reshape + max (``nets.max_pool_2x2``).
  XLA flags (``--xla_cpu_use_onednn``, ``--xla_cpu_use_xnnpack``) changed nothing.
* LSTM LM: input projection hoisted out of the time loop (one big matmul); a hand-written
  backward pass (``nets._lstm_scan``) that forms dW_h as one product after the loop
  (grad 70 -> 55 ms); all gate nonlinearities from one tanh (forward 20 -> 14 ms).
  Remaining gap: ~64 small per-step fusions in each direction; the 64 recurrent matmuls
  themselves take ~6 ms. ``unroll`` of the scan (4, 8, 16) did not help.
"""
from __future__ import annotations

import os
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

from common import Row, TorchWorker, alternate_rounds, block  # noqa: E402
from course_lib import nets, train  # noqa: E402

THREADS = len(os.sched_getaffinity(0))

CNN_CFG = dict(case="cnn", batch=128, in_shape=[28, 28, 1], channels=[16, 32], hidden=128,
               classes=10)
LSTM_CFG = dict(case="lstm", batch=32, seq=64, vocab=84, embed=64, hidden=256)


def _jax_cnn_step():
    cfg = CNN_CFG
    model = nets.CNN(tuple(cfg["in_shape"]), tuple(cfg["channels"]), cfg["hidden"],
                     cfg["classes"], rngs=nnx.Rngs(0))
    rng = np.random.default_rng(0)
    n = cfg["batch"] * 4
    data = (jnp.asarray(rng.uniform(size=(n, 28, 28)).astype(np.float32)),
            jnp.asarray(rng.integers(0, cfg["classes"], n).astype(np.int32)))

    def loss_fn(model, batch, key):
        return train.cross_entropy(model(batch[0]), batch[1]), {}

    return model, data, loss_fn


def _jax_lstm_step():
    cfg = LSTM_CFG
    model = nets.CharLM(cfg["vocab"], cfg["embed"], cfg["hidden"], cell="lstm", rngs=nnx.Rngs(0))
    rng = np.random.default_rng(0)
    n = cfg["batch"] * 4
    data = (jnp.asarray(rng.integers(0, cfg["vocab"], (n, cfg["seq"] + 1)).astype(np.int32)),)

    def loss_fn(model, batch, key):
        tokens = batch[0]
        return train.cross_entropy(model(tokens[:, :-1]), tokens[:, 1:]), {}

    return model, data, loss_fn


def _ours(build, batch: int):
    """(first call seconds, function running k steps and returning the last loss)."""
    model, data, loss_fn = build()
    optimizer = nnx.Optimizer(model, optax.adam(1e-3), wrt=nnx.Param)
    step = train.make_train_step(loss_fn)
    key, healthy = jax.random.key(0), jnp.array(True)
    idx = np.arange(batch)
    model.train()
    t0 = time.perf_counter()
    block(step(model, optimizer, data, idx, key, jnp.uint32(0), healthy))
    first = time.perf_counter() - t0

    def run(k: int) -> float:
        t0 = time.perf_counter()
        for i in range(k):
            out = step(model, optimizer, data, idx, key, jnp.uint32(i), healthy)
        block(out)
        return (time.perf_counter() - t0) / k

    return first, run


def _compare(name: str, cfg: dict, build, quick: bool, note: str) -> Row:
    first, ours = _ours(build, cfg["batch"])
    torch_worker = TorchWorker("torch_models.py", cfg, THREADS)
    rounds, k = (3, 5) if quick else (7, 20)
    try:
        steady, peer_s = alternate_rounds(ours, torch_worker.time, rounds=rounds, k=k)
    finally:
        torch_worker.close()
    return Row(topic="nets", case=name, ours_s=steady, peer_s=peer_s,
               peer=f"PyTorch {torch_worker.version}", compile_s=first - steady, target=1.0,
               note=note, repeats=rounds)


def run(quick: bool) -> list[Row]:
    c, l = CNN_CFG, LSTM_CFG
    return [
        _compare(f"CNN train step (Adam), B={c['batch']}, 28x28x1, conv {c['channels']}, "
                 f"dense {c['hidden']}", c, _jax_cnn_step, quick,
                 f"{THREADS} threads each; NHWC (ours) vs NCHW (torch); max-pool as reshape+max "
                 "(XLA's select_and_scatter gradient took ~20 of 48 ms)"),
        _compare(f"LSTM char-LM train step (Adam), B={l['batch']}, T={l['seq']}, V={l['vocab']}, "
                 f"E={l['embed']}, H={l['hidden']}", l, _jax_lstm_step, quick,
                 f"{THREADS} threads each; torch nn.LSTM is one fused oneDNN kernel; ours: "
                 "lax.scan, hand-written VJP, per-step XLA fusions dominate"),
    ]


if __name__ == "__main__":
    from common import markdown_table

    print(markdown_table(run(quick="--quick" in sys.argv)))
