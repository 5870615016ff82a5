"""PyTorch twin of course_lib.gpt, run as a worker process for bench/bench_gpt.py.

Runs under ``.venv-torch/bin/python``. The model is course_lib.gpt's: token and learned
position embeddings, ``n_layer`` pre-LN blocks (layer norm with scale and bias; one fused
``W x 3W`` q/k/v product, no biases in any linear layer; causal multi-head attention by
``F.scaled_dot_product_attention``, as nanoGPT; an exact-erf GELU MLP ``W -> 4W -> W``), a
final layer norm and the output layer tied to the token embedding. The training step is
nanoGPT's: ``zero_grad; loss.backward(); clip_grad_norm_(1.0); AdamW.step(); scheduler``,
AdamW(b1=0.9, b2=0.99, weight decay 0.1 on matrices and embeddings only) under a warm-up +
cosine schedule, as course_lib.gpt.make_optimizer. Generation (greedy) keeps its own KV cache
(preallocated ``(1, H, block_size, D)`` per layer), under ``torch.inference_mode``.

Protocol, one JSON object per line on stdin/stdout:
  -> {"case": "train", "threads": t, "vocab", "block", "n_layer", "n_head", "width", "batch",
      "weights": optional .npz of course_lib.gpt's parameters}
  -> {"case": "generate", "threads": t, ..., "prompt": [ids], "length": n}
  <- {"ready": true, "torch": version, "params": count}
  -> {"time": k}            (k training steps, or k whole generations; seconds per call)
  <- {"seconds_per_step": s}
  -> {"quit": true}
"""
import ctypes
import math
import sys

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from torch_models import serve


class Block(nn.Module):
    def __init__(self, width, n_head):
        super().__init__()
        self.n_head = n_head
        self.ln1 = nn.LayerNorm(width, eps=1e-5)
        self.qkv = nn.Linear(width, 3 * width, bias=False)
        self.proj = nn.Linear(width, width, bias=False)
        self.ln2 = nn.LayerNorm(width, eps=1e-5)
        self.fc = nn.Linear(width, 4 * width, bias=False)
        self.fc_proj = nn.Linear(4 * width, width, bias=False)

    def heads(self, x):
        B, T, W = x.shape
        q, k, v = self.qkv(self.ln1(x)).split(W, dim=2)
        shape = (B, T, self.n_head, W // self.n_head)
        return (a.view(shape).transpose(1, 2) for a in (q, k, v))        # (B, H, T, D)

    def rest(self, x, a):
        B, H, T, D = a.shape
        x = x + self.proj(a.transpose(1, 2).reshape(B, T, H * D))
        return x + self.fc_proj(F.gelu(self.fc(self.ln2(x))))

    def forward(self, x):
        q, k, v = self.heads(x)
        return self.rest(x, F.scaled_dot_product_attention(q, k, v, is_causal=True))


class GPT(nn.Module):
    def __init__(self, vocab, block, n_layer, n_head, width):
        super().__init__()
        self.tok = nn.Embedding(vocab, width)
        self.pos = nn.Embedding(block, width)
        self.blocks = nn.ModuleList(Block(width, n_head) for _ in range(n_layer))
        self.ln_f = nn.LayerNorm(width, eps=1e-5)
        for name, p in self.named_parameters():        # nanoGPT's initialisation
            if p.dim() == 2:
                std = 0.02 / math.sqrt(2 * n_layer) if name.endswith("proj.weight") else 0.02
                nn.init.normal_(p, 0.0, std)

    def forward(self, idx):
        x = self.tok(idx) + self.pos(torch.arange(idx.shape[1]))
        for b in self.blocks:
            x = b(x)
        return F.linear(self.ln_f(x), self.tok.weight)              # tied output layer


def build_train(cfg):
    rng = np.random.default_rng(0)
    model = GPT(cfg["vocab"], cfg["block"], cfg["n_layer"], cfg["n_head"], cfg["width"])
    B, T, V = cfg.get("batch", 1), cfg["block"], cfg["vocab"]
    data = torch.from_numpy(rng.integers(0, V, (4, B, T + 1)))
    decay = [p for p in model.parameters() if p.dim() >= 2]
    no_decay = [p for p in model.parameters() if p.dim() < 2]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": 0.1},
                             {"params": no_decay, "weight_decay": 0.0}],
                            lr=1e-3, betas=(0.9, 0.99))
    warmup, steps = 100, 5000

    def lr_factor(t):                                   # warm-up, then cosine to 0.1
        if t < warmup:
            return t / warmup
        return 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * min(t - warmup, steps - warmup)
                                               / (steps - warmup)))

    sched = torch.optim.lr_scheduler.LambdaLR(opt, lr_factor)
    calls = [0]

    def step():
        t = calls[0] = (calls[0] + 1) % 4
        x, y = data[t, :, :-1], data[t, :, 1:]
        opt.zero_grad(set_to_none=True)
        loss = F.cross_entropy(model(x).reshape(-1, V), y.reshape(-1))
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
        return loss

    return model, step


@torch.inference_mode()
def generate_cached(model, prompt, length):
    """Greedy: prefill the prompt (keys and values of every layer into the cache), then one
    position per new token, its query against the cached keys and values of positions <= t."""
    blocks = model.blocks
    H = blocks[0].n_head
    W = model.tok.weight.shape[1]
    T = model.pos.weight.shape[0]
    kc = [torch.zeros(1, H, T, W // H) for _ in blocks]
    vc = [torch.zeros(1, H, T, W // H) for _ in blocks]
    T0 = prompt.shape[1]
    x = model.tok(prompt) + model.pos.weight[:T0]
    for i, b in enumerate(blocks):
        q, k, v = b.heads(x)
        kc[i][:, :, :T0] = k
        vc[i][:, :, :T0] = v
        x = b.rest(x, F.scaled_dot_product_attention(q, k, v, is_causal=True))
    last = F.linear(model.ln_f(x[:, -1]), model.tok.weight)
    out = [int(a) for a in prompt[0]]
    for t in range(T0, T0 + length):
        token = int(last.argmax(-1))
        out.append(token)
        if t == T0 + length - 1:
            break
        x = model.tok.weight[token].view(1, 1, W) + model.pos.weight[t]
        for i, b in enumerate(blocks):
            q, k, v = b.heads(x)
            kc[i][:, :, t:t + 1] = k
            vc[i][:, :, t:t + 1] = v
            a = F.scaled_dot_product_attention(q, kc[i][:, :, :t + 1], vc[i][:, :, :t + 1])
            x = b.rest(x, a)
        last = F.linear(model.ln_f(x[:, -1]), model.tok.weight)
    return out


def load_weights(model, path):
    """course_lib.gpt's parameters (an .npz written by bench_gpt.py; its matrices are
    ``(n_in, n_out)``, PyTorch's ``(n_out, n_in)``)."""
    w = np.load(path)
    sd = {"tok.weight": w["tok"], "pos.weight": w["pos"], "ln_f.weight": w["ln_f.scale"],
          "ln_f.bias": w["ln_f.bias"]}
    for i in range(len(model.blocks)):
        for name in ("ln1", "ln2"):
            sd[f"blocks.{i}.{name}.weight"] = w[f"{i}.{name}.scale"]
            sd[f"blocks.{i}.{name}.bias"] = w[f"{i}.{name}.bias"]
        for name in ("qkv", "proj", "fc", "fc_proj"):
            sd[f"blocks.{i}.{name}.weight"] = w[f"{i}.{name}"].T
    model.load_state_dict({k: torch.from_numpy(np.ascontiguousarray(v)) for k, v in sd.items()})


def build(cfg):
    torch.manual_seed(0)
    model, step = build_train(cfg)
    if cfg.get("weights"):
        load_weights(model, cfg["weights"])
    if cfg["case"] == "train":
        return model, step
    prompt = torch.tensor([cfg["prompt"]])
    model.eval()
    return model, lambda: generate_cached(model, prompt, cfg["length"])


def main():
    # the same allocator policy as course_lib.gpt._retain_freed_memory (fair to both sides)
    if sys.platform.startswith("linux"):
        libc = ctypes.CDLL("libc.so.6")
        libc.mallopt(-3, 1 << 30)
        libc.mallopt(-1, 1 << 30)

    def build_and_ready(msg):
        model, step = build(msg)
        params = sum(p.numel() for p in model.parameters())
        extra = (lambda value: {"params": params, "tokens": value}) if msg["case"] == "generate" \
            else (lambda value: {"params": params})
        return step, extra

    serve(build_and_ready, warmup=2)


if __name__ == "__main__":
    main()
