"""Pictures of a flow (PNG): FFJORD's three panels and a trajectory figure for 2-D data,
and image grids for image data."""

from __future__ import annotations

from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

from cnfax.scoring import log_prob_in_chunks

LIMIT = 4.0  # FFJORD's toy plots show [-4, 4]^2


def density_grid(flow, resolution: int = 100, limit: float = LIMIT):
    """exp(log p) on a resolution x resolution grid over [-limit, limit]^2 (the flow's own
    trace: pass an evaluation flow for the exact one)."""
    axis = np.linspace(-limit, limit, resolution, dtype=np.float32)
    grid = np.stack(np.meshgrid(axis, axis), -1).reshape(-1, 2)
    logp, _ = log_prob_in_chunks(flow, grid)
    return axis, np.exp(logp).reshape(resolution, resolution)


def plot_panels(
    flow, data: np.ndarray, path: str | Path, *, key, n_samples: int = 20_000, title: str = ""
) -> Path:
    """Data histogram, model density on a grid, and a histogram of model samples."""
    import matplotlib.pyplot as plt  # on use: importing cnfax picks no backend

    fig, axes = plt.subplots(1, 3, figsize=(12, 4.2))
    bins = np.linspace(-LIMIT, LIMIT, 120)
    axes[0].hist2d(data[:, 0], data[:, 1], bins=[bins, bins], cmap="inferno")
    axes[0].set_title("data")
    axis, density = density_grid(flow)
    axes[1].pcolormesh(axis, axis, density, cmap="inferno", shading="auto")
    axes[1].set_title("model density")
    samples = np.asarray(flow.sample(key, n_samples))
    axes[2].hist2d(samples[:, 0], samples[:, 1], bins=[bins, bins], cmap="inferno")
    axes[2].set_title("model samples")
    return save_square_panels(fig, axes, path, title)


def save_square_panels(fig, axes, path: str | Path, title: str | None, *, rect=None) -> Path:
    """Each panel [-LIMIT, LIMIT]^2, square and unticked; the title (if any) above them;
    the figure written to ``path`` and closed. ``rect``: tight_layout's area for the
    panels."""
    import matplotlib.pyplot as plt

    for ax in axes:
        ax.set_xlim(-LIMIT, LIMIT)
        ax.set_ylim(-LIMIT, LIMIT)
        ax.set_aspect("equal")
        ax.set_xticks([])
        ax.set_yticks([])
    if title:
        fig.suptitle(title)
    fig.tight_layout(rect=rect)
    path = Path(path)
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return path


def plot_trajectory(flow, path: str | Path, *, key, n_points: int = 2000, n_times: int = 6) -> Path:
    """Base samples carried to data space: snapshots at evenly spaced times, coloured by
    the angle of each starting point, so one can follow where each region goes."""
    z0 = jax.random.normal(key, (n_points, 2))
    total = float(jnp.sum(flow.end_times))
    ts = jnp.linspace(0.0, total, n_times)
    states = np.asarray(flow.trajectory(z0, ts))
    colour = np.arctan2(np.asarray(z0)[:, 1], np.asarray(z0)[:, 0])
    import matplotlib.pyplot as plt  # on use: importing cnfax picks no backend

    fig, axes = plt.subplots(1, n_times, figsize=(2.6 * n_times, 2.9))
    for ax, t, state in zip(axes, np.asarray(ts), states, strict=True):
        ax.scatter(state[:, 0], state[:, 1], c=colour, cmap="hsv", s=2, linewidths=0)
        ax.set_title(f"t = {t:.2f}")
    return save_square_panels(fig, axes, path, "base (t = 0) to data (t = T)")


def plot_image_grid(
    images: np.ndarray, path: str | Path, *, shape: tuple[int, int], vmax: float, title: str = ""
) -> Path:
    """Rows of ``images`` (n, h * w) as a square-ish grid of grey-level pictures."""
    n = len(images)
    columns = int(np.ceil(np.sqrt(n)))
    rows = int(np.ceil(n / columns))
    import matplotlib.pyplot as plt  # on use: importing cnfax picks no backend

    fig, axes = plt.subplots(rows, columns, figsize=(columns * 0.9, rows * 0.9 + 0.4))
    for i, ax in enumerate(np.ravel(axes)):
        ax.axis("off")
        if i < n:
            ax.imshow(images[i].reshape(shape), cmap="gray_r", vmin=0, vmax=vmax)
    if title:
        fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return path
