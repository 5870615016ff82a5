"""PyTorch twins of the benchmarked course_lib networks, run as a worker process.

Runs under ``.venv-torch/bin/python`` (PyTorch lives in its own venv). Protocol, one JSON
object per line on stdin/stdout:
  -> {"case": "cnn" | "lstm", "steps": k, "threads": t, ...shapes}   (build, warm up)
  <- {"ready": true, "torch": version}
  -> {"time": k}            (run k training steps, reply the seconds per step)
  <- {"seconds_per_step": s}
  -> {"quit": true}
The shapes, batch and optimizer mirror bench/bench_nets.py exactly.
"""
import json
import sys
import time

import numpy as np
import torch
from torch import nn


class CNN(nn.Module):
    """conv(3x3, pad 1) -> relu -> 2x2 max-pool, per channel entry; dense -> relu; dense."""

    def __init__(self, in_shape, channels, hidden, classes):
        super().__init__()
        h, w, c = in_shape
        layers = []
        for c_out in channels:
            layers += [nn.Conv2d(c, c_out, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2)]
            c, h, w = c_out, h // 2, w // 2
        self.features = nn.Sequential(*layers)
        self.dense = nn.Linear(c * h * w, hidden)
        self.head = nn.Linear(hidden, classes)

    def forward(self, x):
        return self.head(torch.relu(self.dense(self.features(x).flatten(1))))


class CharLM(nn.Module):
    def __init__(self, vocab, embed, hidden):
        super().__init__()
        self.embed = nn.Embedding(vocab, embed)
        self.lstm = nn.LSTM(embed, hidden, batch_first=True)
        self.head = nn.Linear(hidden, vocab)

    def forward(self, tokens):
        hs, _ = self.lstm(self.embed(tokens))
        return self.head(hs)


def build(cfg):
    torch.manual_seed(0)
    rng = np.random.default_rng(0)
    if cfg["case"] == "cnn":
        model = CNN(cfg["in_shape"], cfg["channels"], cfg["hidden"], cfg["classes"])
        h, w, c = cfg["in_shape"]
        # NCHW, PyTorch's native layout (channels-last is not faster for these sizes on CPU)
        x = torch.from_numpy(rng.uniform(size=(cfg["batch"], c, h, w)).astype(np.float32))
        y = torch.from_numpy(rng.integers(0, cfg["classes"], cfg["batch"]))

        def loss():
            return nn.functional.cross_entropy(model(x), y)
    else:
        model = CharLM(cfg["vocab"], cfg["embed"], cfg["hidden"])
        tokens = torch.from_numpy(rng.integers(0, cfg["vocab"], (cfg["batch"], cfg["seq"] + 1)))
        x, y = tokens[:, :-1], tokens[:, 1:]

        def loss():
            logits = model(x)
            return nn.functional.cross_entropy(logits.reshape(-1, cfg["vocab"]), y.reshape(-1))
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)

    def step():
        opt.zero_grad(set_to_none=True)
        value = loss()
        value.backward()
        opt.step()
        return value

    return step


def main():
    step = None
    for line in sys.stdin:
        msg = json.loads(line)
        if "case" in msg:
            torch.set_num_threads(msg["threads"])
            torch.set_num_interop_threads(1)
            step = build(msg)
            for _ in range(3):
                step()
            reply = {"ready": True, "torch": torch.__version__}
        elif "time" in msg:
            t0 = time.perf_counter()
            for _ in range(msg["time"]):
                value = step()
            value.detach().item()  # wait for the last step
            reply = {"seconds_per_step": (time.perf_counter() - t0) / msg["time"]}
        else:
            break
        print(json.dumps(reply), flush=True)


if __name__ == "__main__":
    main()
