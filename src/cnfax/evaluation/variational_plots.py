"""Pictures of a variational run (PNG): the target and model densities side by side with
the model's samples over the target's contours (2-d targets), and the held-out ELBO and
ESS fraction against the training step (from metrics.jsonl, any dimension)."""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from pathlib import Path

import jax.numpy as jnp
import numpy as np
from scipy.special import logsumexp

from cnfax.evaluation.plots import LIMIT, density_grid, save_square_panels


def target_density_grid(target: Callable, resolution: int = 100, limit: float = LIMIT):
    """p(z) = p~(z) / Z on the grid of :func:`cnfax.evaluation.plots.density_grid`, with
    Z the midpoint rule's sum of p~ over the shown square (so the picture's mass is 1 on
    it, whether or not the target knows its log Z): log Z_box = logsumexp(log p~) + 2 log h."""
    axis = np.linspace(-limit, limit, resolution, dtype=np.float32)
    grid = np.stack(np.meshgrid(axis, axis), -1).reshape(-1, 2)
    log_p = np.asarray(target(jnp.asarray(grid)), np.float64)
    finite = np.where(np.isfinite(log_p), log_p, -np.inf)
    h = float(axis[1] - axis[0])
    log_z_box = logsumexp(finite) + 2 * math.log(h)
    return axis, np.exp(finite - log_z_box).reshape(resolution, resolution)


def plot_target_panels(flow, target: Callable, samples: np.ndarray, path, *, title: str = ""):
    """Three panels over [-4, 4]^2: the target's density, the model's density (the flow's
    own trace: pass an evaluation flow for the exact one), and the model's samples over
    the target's contours."""
    import matplotlib.pyplot as plt  # on use: importing cnfax picks no backend

    fig, axes = plt.subplots(1, 3, figsize=(12, 4.2))
    axis, target_density = target_density_grid(target)
    axes[0].pcolormesh(axis, axis, target_density, cmap="inferno", shading="auto")
    axes[0].set_title("target density")
    axis, model_density = density_grid(flow)
    axes[1].pcolormesh(axis, axis, model_density, cmap="inferno", shading="auto")
    axes[1].set_title("model density q")
    shown = samples[:5000]
    axes[2].scatter(shown[:, 0], shown[:, 1], s=1, alpha=0.3, color="tab:blue", linewidths=0)
    if np.max(target_density) > 0:
        axes[2].contour(axis, axis, target_density, levels=6, colors="k", linewidths=0.7)
    axes[2].set_title("samples of q over the target's contours")
    rect = (0, 0, 1, 0.93) if title else None  # the title above the panels'
    return save_square_panels(fig, axes, path, title, rect=rect)


def read_curves(metrics_path: str | Path) -> dict[str, np.ndarray]:
    """step, elbo and ess_fraction of every evaluation row of a run's metrics.jsonl (a
    resumed run's rows are read in order; a later row for a step replaces an earlier)."""
    by_step = {}
    for line in Path(metrics_path).read_text().splitlines():
        row = json.loads(line)
        if "elbo" in row and "ess_fraction" in row:
            by_step[row["step"]] = (row["elbo"], row["ess_fraction"])
    steps = sorted(by_step)
    return {
        "step": np.asarray(steps),
        "elbo": np.asarray([by_step[s][0] for s in steps], np.float64),
        "ess_fraction": np.asarray([by_step[s][1] for s in steps], np.float64),
    }


def plot_training_curves(metrics_path, path, *, log_z: float | None = None, title: str = ""):
    """The held-out ELBO (with log Z, its ceiling, where known) and ESS fraction against the
    training step; None when the metrics hold no evaluation."""
    curves = read_curves(metrics_path)
    if not len(curves["step"]):
        return None
    import matplotlib.pyplot as plt  # on use: importing cnfax picks no backend

    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 3.8))
    left.plot(curves["step"], curves["elbo"], marker="o", ms=3, label="held-out ELBO")
    if log_z is not None:
        left.axhline(log_z, color="k", ls="--", lw=0.8, label="log Z")
    left.set_xlabel("step")
    left.set_ylabel("nats")
    left.legend()
    right.plot(curves["step"], curves["ess_fraction"], marker="o", ms=3, color="tab:green")
    right.set_ylim(0, 1.02)
    right.set_xlabel("step")
    right.set_ylabel("ESS fraction (Kish)")
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return path
