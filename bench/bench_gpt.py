"""Training and generation speed of course_lib.gpt against the same GPT in PyTorch eager.

Rows (CPU):

* train step at nanoGPT's CPU configuration (4 layers, 4 heads, width 128, context 64,
  batch 12, 65 characters) and at a larger one (6 layers, 6 heads, width 384, context 256,
  batch 8): ours is ``gpt.make_train_step(gpt.make_optimizer())`` (forward, backward,
  global-norm clipping, AdamW with the warm-up + cosine schedule; parameters and optimizer
  state donated); PyTorch's is nanoGPT's loop body (bench/torch_gpt.py) with the same model,
  clipping, AdamW and schedule, with the same thread count, in a worker process from
  ``.venv-torch``. Tokens per second are ``batch x context / seconds per step``. The note
  gives the achieved fraction of a float32 matmul peak measured in the same run (a 2048^3
  product under ``jax.jit``), counting the step's FLOPs as

      6 B T (12 L W^2 + V W)  +  12 L B T^2 W

  (every matrix product three times, forward and the two backward ones: the blocks' ``12 W^2``
  weights per layer and the tied ``V x W`` output layer; the attention scores and the
  weighted sum, ``2 T^2 W`` each per layer and sequence, counted over the full ``T x T``
  square as XLA and PyTorch compute it; the embedding gather, layer norms, softmax and
  optimizer are not counted).
* generation, greedy, on the small model with a 256-token context (a 16-token prompt and
  240 new tokens): ``gpt.generate_cached`` (KV cache) against ``gpt.generate`` (the whole
  window recomputed for every token), and against PyTorch generating with its own KV cache
  from the same weights (the note says whether the tokens agree).

Run alone: ``.venv/bin/python bench/bench_gpt.py [--quick]``; for a fair one-core ratio on a
busy machine, ``taskset -c 0 .venv/bin/python bench/bench_gpt.py`` (both sides then use one
thread: PyTorch's two OpenMP threads degrade badly when the cores are shared).

What was tried (see bench/README.md, "GPT"): the notes below are this file's record.
"""
from __future__ import annotations

import os
import sys
import tempfile
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from common import Row, TorchWorker, alternate_rounds, best_time, block  # noqa: E402
from course_lib import gpt  # noqa: E402

THREADS = len(os.sched_getaffinity(0))
VOCAB = 65                      # Shakespeare's characters


def matmul_peak_gflops(n: int = 2048) -> float:
    a = jax.random.normal(jax.random.key(0), (n, n), jnp.float32)
    f = jax.jit(lambda a: a @ a)
    block(f(a))
    return 2 * n**3 / best_time(lambda: f(a), repeats=10) / 1e9


def step_flops(c: gpt.Config, batch: int) -> float:
    """``6 B T (12 L W^2 + V W) + 12 L B T^2 W`` (see the module docstring)."""
    B, T, L, W, V = batch, c.block_size, c.n_layer, c.width, c.vocab_size
    return 6 * B * T * (12 * L * W * W + V * W) + 12 * L * B * T * T * W


def _torch_cfg(c: gpt.Config, **extra) -> dict:
    return dict(vocab=c.vocab_size, block=c.block_size, n_layer=c.n_layer, n_head=c.n_head,
                width=c.width, **extra)


def _save_weights(params: gpt.Params, path: str) -> None:
    arrays = {"tok": params.tok, "pos": params.pos, "ln_f.scale": params.ln_f["scale"],
              "ln_f.bias": params.ln_f["bias"]}
    for i, layer in enumerate(params.blocks):
        for name in ("ln1", "ln2"):
            arrays[f"{i}.{name}.scale"] = layer[name]["scale"]
            arrays[f"{i}.{name}.bias"] = layer[name]["bias"]
        for name in ("qkv", "proj", "fc", "fc_proj"):
            arrays[f"{i}.{name}"] = layer[name]
    np.savez(path, **{k: np.asarray(v) for k, v in arrays.items()})


def ours_train(c: gpt.Config, batch: int):
    """(first call seconds, run(k) -> seconds per step) for the compiled step on 4 batches
    taken in turn, as the PyTorch worker does."""
    tx = gpt.make_optimizer()
    state = [gpt.init(jax.random.key(0), c), None]
    state[1] = tx.init(state[0])
    step = gpt.make_train_step(tx)
    rng = np.random.default_rng(0)
    data = jnp.asarray(rng.integers(0, c.vocab_size, (4, batch, c.block_size + 1)), jnp.int32)
    xs, ys = data[:, :, :-1], data[:, :, 1:]
    calls = [0]

    def one():
        t = calls[0] = (calls[0] + 1) % 4
        state[0], state[1], value = step(state[0], state[1], xs[t], ys[t])
        return value

    t0 = time.perf_counter()
    block(one())
    first = time.perf_counter() - t0

    def run(k: int) -> float:
        t0 = time.perf_counter()
        for _ in range(k):
            value = one()
        block(value)
        return (time.perf_counter() - t0) / k

    return first, run


def train_row(name: str, c: gpt.Config, batch: int, peak: float, rounds: int, k: int,
              target: float | None) -> Row:
    first, ours = ours_train(c, batch)
    worker = TorchWorker("torch_gpt.py", _torch_cfg(c, case="train", batch=batch), THREADS)
    try:
        ours_s, peer_s = alternate_rounds(ours, worker.time, rounds=rounds, k=k, warm=1)
    finally:
        worker.close()
    tokens = batch * c.block_size
    flops = step_flops(c, batch)
    frac = lambda s: 100 * flops / s / 1e9 / peak
    case = (f"GPT train step ({name}: L={c.n_layer}, H={c.n_head}, W={c.width}, "
            f"T={c.block_size}, B={batch}, V={c.vocab_size}; AdamW + clip)")
    note = (f"{THREADS} thread(s) each; tokens/s ours {tokens / ours_s:,.0f}, PyTorch "
            f"{tokens / peer_s:,.0f}; {flops / 1e9:.2f} GFLOP/step: ours "
            f"{flops / ours_s / 1e9:.1f} GFLOP/s = {frac(ours_s):.0f}%, PyTorch "
            f"{frac(peer_s):.0f}% of {peak:.0f} GFLOP/s matmul peak")
    return Row(topic="gpt", case=case, ours_s=ours_s, peer_s=peer_s,
               peer=f"PyTorch {worker.version}", compile_s=first - ours_s, target=target,
               note=note, repeats=rounds * k)


def generation_rows(c: gpt.Config, prompt_len: int, length: int, rounds: int) -> list[Row]:
    params = gpt.init(jax.random.key(1), c)
    prompt = np.asarray(jax.random.randint(jax.random.key(2), (prompt_len,), 0, c.vocab_size))
    key = jax.random.key(3)
    cached = lambda: gpt.generate_cached(key, params, prompt, length, temperature=0)
    naive = lambda: gpt.generate(key, params, prompt, length, temperature=0)
    t0 = time.perf_counter()
    ours_tokens = np.asarray(block(cached()))
    first_cached = time.perf_counter() - t0
    t0 = time.perf_counter()
    naive_tokens = np.asarray(block(naive()))
    first_naive = time.perf_counter() - t0
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "gpt.npz")
        _save_weights(params, path)
        worker = TorchWorker("torch_gpt.py", _torch_cfg(c, case="generate", weights=path,
                             prompt=[int(i) for i in prompt], length=length), THREADS)
    torch_tokens = np.asarray(worker.ready["tokens"])
    try:
        best = [float("inf")] * 3
        for _ in range(rounds):
            for i, fn in enumerate((cached, naive)):
                t0 = time.perf_counter()
                block(fn())
                best[i] = min(best[i], time.perf_counter() - t0)
            best[2] = min(best[2], worker.time(1))
    finally:
        worker.close()
    case = (f"greedy generation, {prompt_len}-token prompt + {length} tokens (context "
            f"{c.block_size}), L={c.n_layer}, H={c.n_head}, W={c.width}")
    same_naive = np.array_equal(ours_tokens, naive_tokens)
    agree = float(np.mean(torch_tokens == ours_tokens))
    first_diff = np.flatnonzero(torch_tokens != ours_tokens)
    torch_note = ("the same tokens" if agree == 1.0 else
                  f"tokens agree up to position {first_diff[0]} ({100 * agree:.0f}% overall; "
                  "float32 rounding flips a near-tied argmax)")
    return [
        Row(topic="gpt", case=f"{case}: KV cache vs naive recomputation", ours_s=best[0],
            peer_s=best[1], peer="course_lib gpt.generate (naive)",
            compile_s=first_cached - best[0], target=5.0, repeats=rounds,
            note=(f"{THREADS} thread(s); ours cached {length / best[0]:,.0f} tokens/s, naive "
                  f"{length / best[1]:,.0f} tokens/s (compile {first_naive - best[1]:.2f} s); "
                  f"same tokens: {same_naive}")),
        Row(topic="gpt", case=f"{case}: KV cache vs PyTorch's KV cache", ours_s=best[0],
            peer_s=best[2], peer=f"PyTorch {worker.version}", compile_s=first_cached - best[0],
            repeats=rounds,
            note=(f"{THREADS} thread(s) each; PyTorch {length / best[2]:,.0f} tokens/s "
                  f"(eager, one position per step, inference_mode); same weights: "
                  f"{torch_note}")),
    ]


def run(quick: bool) -> list[Row]:
    peak = matmul_peak_gflops()
    if quick:
        small, large = gpt.Config(VOCAB, 32, 2, 2, 64), gpt.Config(VOCAB, 64, 2, 4, 128)
        gen = gpt.Config(VOCAB, 64, 2, 2, 64)
        return [train_row("small", small, 4, peak, 2, 3, None),
                train_row("larger", large, 4, peak, 2, 2, None),
                *generation_rows(gen, 8, 56, 2)]
    small = gpt.Config(VOCAB, 64, 4, 4, 128)
    large = gpt.Config(VOCAB, 256, 6, 6, 384)
    gen = gpt.Config(VOCAB, 256, 4, 4, 128)
    return [train_row("nanoGPT CPU config", small, 12, peak, 5, 20, 1.2),
            train_row("nanoGPT char config", large, 8, peak, 3, 2, None),
            *generation_rows(gen, 16, 240, 3)]


if __name__ == "__main__":
    from common import markdown_table

    print(markdown_table(run(quick="--quick" in sys.argv)))
