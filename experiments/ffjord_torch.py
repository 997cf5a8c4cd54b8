"""The peer: FFJORD's toy model in PyTorch with torchdiffeq, for the peer comparison of
experiments/benchmark.py (``make bench-peers``; needs ``pip install -e '.[peers]'``).

Written from FFJORD's description (Grathwohl et al. 2019, github.com/rtqichen/ffjord):
a ConcatSquash MLP 2-64-64-64-2 with tanh, one block with T = 0.5, dopri5 at
rtol = atol = 1e-5, ``odeint_adjoint`` gradients and the brute-force exact divergence (one
autograd pass per dimension). Trained with cnfax's FFJORD recipe: AdamW (lr 3e-3, weight
decay 1e-5), global gradient norm clipped to 10, on the batches the caller gives.

    python experiments/ffjord_torch.py --data bench/peers/8gaussians-0.npz --out run.json

The data file holds ``train`` (iters, batch, 2) and ``held_out`` (n, 2). The output has
the step timings at each batch size, and the training curve: at each evaluation, the
clock (Unix time, so that the caller can time from the command's start), the seconds the
evaluation took and the held-out NLL (exact divergence, same tolerance). Training stops
at the first evaluation whose NLL reaches --threshold, or after the data's iterations.
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import time

import numpy as np
import torch
from torch import nn
from torchdiffeq import odeint, odeint_adjoint


class ConcatSquashLinear(nn.Module):
    """W x * sigmoid(a t + c) + b t, as FFJORD's ConcatSquashLinear."""

    def __init__(self, dim_in: int, dim_out: int):
        super().__init__()
        self.layer = nn.Linear(dim_in, dim_out)
        self.hyper_bias = nn.Linear(1, dim_out, bias=False)
        self.hyper_gate = nn.Linear(1, dim_out)

    def forward(self, t, x):
        t = t.reshape(1, 1)
        return self.layer(x) * torch.sigmoid(self.hyper_gate(t)) + self.hyper_bias(t)


class ODEFunc(nn.Module):
    """d(z, -log p)/dt = (f(t, z), -tr df/dz), the trace by brute force; counts calls."""

    def __init__(self, dim: int = 2, hidden=(64, 64, 64)):
        super().__init__()
        widths = (dim, *hidden, dim)
        self.layers = nn.ModuleList(
            ConcatSquashLinear(a, b) for a, b in zip(widths[:-1], widths[1:], strict=True)
        )
        self.evaluations = 0

    def field(self, t, z):
        for i, layer in enumerate(self.layers):
            z = layer(t, z)
            if i < len(self.layers) - 1:
                z = torch.tanh(z)
        return z

    def forward(self, t, state):
        z = state[0]
        self.evaluations += 1
        with torch.enable_grad():
            z = z if z.requires_grad else z.requires_grad_(True)
            dz = self.field(t, z)
            divergence = 0.0
            for i in range(z.shape[1]):  # FFJORD's divergence_bf
                divergence = (
                    divergence + torch.autograd.grad(dz[:, i].sum(), z, create_graph=True)[0][:, i]
                )
        return dz, -divergence


class FFJORD(nn.Module):
    def __init__(self, t1: float = 0.5, tol: float = 1e-5):
        super().__init__()
        self.func = ODEFunc()
        self.t1, self.tol = t1, tol

    def log_prob(self, x, adjoint: bool = True):
        """log p(x): x solved from data (t = 0) to the base (t = T), FFJORD's direction."""
        times = torch.tensor([0.0, self.t1])
        solve = odeint_adjoint if adjoint else odeint
        state = (x, torch.zeros(x.shape[0]))
        z, delta_logp = (
            s[-1] for s in solve(self.func, state, times, rtol=self.tol, atol=self.tol)
        )
        base = -0.5 * (z**2).sum(1) - 0.5 * z.shape[1] * math.log(2 * math.pi)
        return base - delta_logp


def make_optimizer(model):
    return torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=1e-5)


def train_step(model, optimizer, x):
    """One step; returns (loss, NFE forward, NFE backward)."""
    optimizer.zero_grad()
    model.func.evaluations = 0
    loss = -model.log_prob(x).mean()
    forward = model.func.evaluations
    loss.backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), 10.0)
    optimizer.step()
    return float(loss.detach()), forward, model.func.evaluations - forward


def held_out_nll(model, x, chunk: int = 2000) -> tuple[float, int]:
    """Mean NLL over x with the exact divergence (no parameter gradients), and the NFE."""
    total, nfe = 0.0, 0
    with torch.no_grad():
        for i in range(0, len(x), chunk):
            model.func.evaluations = 0
            total += float(model.log_prob(x[i : i + chunk], adjoint=False).sum())
            nfe = max(nfe, model.func.evaluations)
    return -total / len(x), nfe


def step_timings(batch_sizes, repeats: int, seed: int) -> list[dict]:
    """Median seconds of a training step of a freshly initialised model at each batch size."""
    rows = []
    for batch in batch_sizes:
        torch.manual_seed(seed)
        model = FFJORD()
        optimizer = make_optimizer(model)
        x = torch.randn(batch, 2, generator=torch.Generator().manual_seed(1))
        _, forward, backward = train_step(model, optimizer, x)  # warm-up
        times = []
        for _ in range(repeats):
            start = time.perf_counter()
            train_step(model, optimizer, x)
            times.append(time.perf_counter() - start)
        rows.append(
            {
                "batch": batch,
                "step_s": statistics.median(times),
                "nfe_forward": forward,
                "nfe_backward": backward,
            }
        )
    return rows


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", help=".npz with train (iters, batch, 2) and held_out (n, 2)")
    parser.add_argument("--out", required=True)
    parser.add_argument("--threshold", type=float, default=-math.inf)
    parser.add_argument("--eval-every", type=int, default=25)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--step-batches", type=int, nargs="*", default=[])
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args(argv)
    result = {"torch": torch.__version__, "threads": torch.get_num_threads()}
    result["step_timings"] = step_timings(args.step_batches, args.repeats, args.seed)
    curve = []
    if args.data:
        data = np.load(args.data)
        train, held_out = torch.as_tensor(data["train"]), torch.as_tensor(data["held_out"])
        torch.manual_seed(args.seed)
        model = FFJORD()
        optimizer = make_optimizer(model)
        for step in range(len(train)):
            started = time.perf_counter()
            loss, forward, backward = train_step(model, optimizer, train[step])
            step_s = time.perf_counter() - started
            done = step + 1
            if done % args.eval_every == 0 or done == len(train):
                started = time.perf_counter()
                nll, nfe = held_out_nll(model, held_out)
                row = {
                    "step": done,
                    "train_loss": loss,
                    "test_nll": nll,
                    "test_nfe": nfe,
                    "nfe_forward": forward,
                    "nfe_backward": backward,
                    "step_seconds": step_s,
                    "eval_seconds": time.perf_counter() - started,
                    "unix_time": time.time(),
                }
                curve.append(row)
                print(json.dumps(row), flush=True)
                if nll <= args.threshold:
                    break
    result["curve"] = curve
    with open(args.out, "w") as file:
        json.dump(result, file, indent=2)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
