"""PyTorch twins of the benchmarked course_lib networks, run as a worker process.

Runs under ``.venv-torch/bin/python`` (PyTorch lives in its own venv). Protocol, one JSON
object per line on stdin/stdout:
  -> {"case": "cnn" | "lstm" | "dcgan" | "vae", "threads": t, ...shapes}   (build, warm up)
  <- {"ready": true, "torch": version}
  -> {"time": k}            (run k training steps, reply the seconds per step)
  <- {"seconds_per_step": s}
  -> {"quit": true}
The shapes, batch and optimizer mirror bench/bench_nets.py ("cnn", "lstm") and
bench/bench_gen.py ("dcgan", "vae") exactly.
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


class DCGANGenerator(nn.Module):
    """course_lib.gan.DCGANGenerator: Linear -> (2F, 7, 7) -> BN -> ReLU -> ConvT(4, s2, p1)
    -> (F, 14, 14) -> BN -> ReLU -> ConvT(4, s2, p1) -> (1, 28, 28) -> tanh. Flax's BatchNorm
    momentum 0.9 (weight of the old running value) is PyTorch's momentum 0.1."""

    def __init__(self, latent_dim, features):
        super().__init__()
        f = self.features = features
        self.project = nn.Linear(latent_dim, 7 * 7 * 2 * f)
        self.bn0 = nn.BatchNorm2d(2 * f, eps=1e-5, momentum=0.1)
        self.up1 = nn.ConvTranspose2d(2 * f, f, 4, 2, 1)
        self.bn1 = nn.BatchNorm2d(f, eps=1e-5, momentum=0.1)
        self.up2 = nn.ConvTranspose2d(f, 1, 4, 2, 1)

    def forward(self, z):
        h = self.project(z).view(z.shape[0], 2 * self.features, 7, 7)
        h = torch.relu(self.bn0(h))
        h = torch.relu(self.bn1(self.up1(h)))
        return torch.tanh(self.up2(h))


class DCGANDiscriminator(nn.Module):
    """course_lib.gan.DCGANDiscriminator (no batch norm): Conv(4, s2, p1) -> LeakyReLU(0.2)
    -> Conv(4, s2, p1) -> LeakyReLU(0.2) -> Linear -> one logit per image."""

    def __init__(self, features):
        super().__init__()
        f = features
        self.down1 = nn.Conv2d(1, f, 4, 2, 1)
        self.down2 = nn.Conv2d(f, 2 * f, 4, 2, 1)
        self.out = nn.Linear(7 * 7 * 2 * f, 1)

    def forward(self, x):
        h = nn.functional.leaky_relu(self.down1(x), 0.2)
        h = nn.functional.leaky_relu(self.down2(h), 0.2)
        return self.out(h.flatten(1))[:, 0]


def _mlp(widths):
    layers = []
    for a, b in zip(widths[:-1], widths[1:]):
        layers += [nn.Linear(a, b), nn.ReLU()]
    return nn.Sequential(*layers)


class VAE(nn.Module):
    """course_lib.vae.VAE: encoder MLP (relu) with mean and log-variance heads; decoder MLP
    mirroring the widths, one Bernoulli logit per pixel."""

    def __init__(self, pixels, hidden, latent):
        super().__init__()
        self.body = _mlp([pixels, *hidden])
        self.mean_head = nn.Linear(hidden[-1], latent)
        self.log_var_head = nn.Linear(hidden[-1], latent)
        self.decoder = nn.Sequential(_mlp([latent, *hidden[::-1]]), nn.Linear(hidden[0], pixels))

    def forward(self, x):
        h = self.body(x)
        mean, log_var = self.mean_head(h), self.log_var_head(h)
        z = mean + torch.exp(0.5 * log_var) * torch.randn_like(mean)   # reparameterisation
        return self.decoder(z), mean, log_var


def build_dcgan(cfg):
    """One step of both players, as course_lib.gan.gan_step (n_critic=1, non-saturating):
    a discriminator step on a real batch and as many fresh fakes (no gradient into G; batch
    norm in train mode), then a generator step on fresh latents (no gradient into D's
    parameters: only G is updated); Adam(lr, b1=0.5) for each; the same metrics."""
    rng = np.random.default_rng(0)
    b, latent = cfg["batch"], cfg["latent_dim"]
    gen, disc = DCGANGenerator(latent, cfg["features"]), DCGANDiscriminator(cfg["features"])
    gen.train()
    disc.train()
    data = torch.from_numpy(2 * rng.uniform(size=(4 * b, 1, 28, 28)).astype(np.float32) - 1)
    g_opt = torch.optim.Adam(gen.parameters(), lr=cfg["lr"], betas=(0.5, 0.999))
    d_opt = torch.optim.Adam(disc.parameters(), lr=cfg["lr"], betas=(0.5, 0.999))
    softplus = nn.functional.softplus
    d_params = list(disc.parameters())
    calls = [0]

    def step():
        t = calls[0] = (calls[0] + 1) % 4
        x = data[t * b:(t + 1) * b]
        with torch.no_grad():
            fake = gen(torch.randn(b, latent))
        d_opt.zero_grad(set_to_none=True)
        real_l, fake_l = disc(x), disc(fake)
        d_loss = softplus(-real_l).mean() + softplus(fake_l).mean()
        d_loss.backward()
        d_opt.step()
        with torch.no_grad():
            metrics = (0.5 * ((real_l > 0).float().mean() + (fake_l < 0).float().mean()),
                       torch.sigmoid(real_l).mean(), torch.sigmoid(fake_l).mean())
        for p in d_params:
            p.requires_grad_(False)
        g_opt.zero_grad(set_to_none=True)
        g_loss = softplus(-disc(gen(torch.randn(b, latent)))).mean()
        g_loss.backward()
        g_opt.step()
        for p in d_params:
            p.requires_grad_(True)
        return g_loss + metrics[0]

    return step


def build_vae(cfg):
    """One step as course_lib.vae.make_vae_update: dynamic binarisation of the batch, one
    reparameterised draw, loss -(E_q log p(x|z) - KL) with the Bernoulli log-likelihood on
    logits and the closed-form Gaussian KL, batch mean; Adam(lr)."""
    rng = np.random.default_rng(0)
    b, pixels = cfg["batch"], 28 * 28
    model = VAE(pixels, cfg["hidden"], cfg["latent"])
    data = torch.from_numpy(rng.uniform(size=(4 * b, pixels)).astype(np.float32))
    opt = torch.optim.Adam(model.parameters(), lr=cfg["lr"])
    softplus = nn.functional.softplus
    calls = [0]

    def step():
        t = calls[0] = (calls[0] + 1) % 4
        x = torch.bernoulli(data[t * b:(t + 1) * b])
        opt.zero_grad(set_to_none=True)
        logits, mean, log_var = model(x)
        reconstruction = (x * logits - softplus(logits)).sum(-1).mean()
        kl = 0.5 * (mean.square() + torch.clamp(torch.expm1(log_var) - log_var, min=0)).sum(-1).mean()
        loss = -(reconstruction - kl)
        loss.backward()
        opt.step()
        return loss

    return step


def build(cfg):
    torch.manual_seed(0)
    if cfg["case"] == "dcgan":
        return build_dcgan(cfg)
    if cfg["case"] == "vae":
        return build_vae(cfg)
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


def serve(build, *, warmup: int = 3) -> None:
    """The worker loop of the protocol above, for any twin: ``build(msg)`` returns
    ``(step, ready)``, a zero-argument training (or generation) step and a function of the
    last warm-up step's value giving extra fields of the ``ready`` reply."""
    step = None
    for line in sys.stdin:
        msg = json.loads(line)
        if "case" in msg:
            torch.set_num_threads(msg["threads"])
            torch.set_num_interop_threads(1)
            step, ready = build(msg)
            for _ in range(warmup):
                value = step()
            reply = {"ready": True, "torch": torch.__version__, **ready(value)}
        elif "time" in msg:
            t0 = time.perf_counter()
            for _ in range(msg["time"]):
                value = step()
            if torch.is_tensor(value):
                value.detach().item()  # wait for the last step
            reply = {"seconds_per_step": (time.perf_counter() - t0) / msg["time"]}
        else:
            break
        print(json.dumps(reply), flush=True)


def main():
    serve(lambda msg: (build(msg), lambda value: {}))


if __name__ == "__main__":
    main()
