"""Pictures of posterior estimates (PNG): two moons' model posterior next to the reference,
coverage calibration curves, and digits drawn one row per label.

Models have the conditional-density interface of :mod:`cnfax.evaluation.posterior_checks`."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from cnfax.evaluation.posterior_checks import CHUNK, sbi_task
from cnfax.evaluation.posterior_coverage import CoverageResult
from cnfax.scoring import batched_log_prob


def posterior_density_grid(
    model, x, resolution: int = 256, chunk: int = CHUNK
) -> tuple[np.ndarray, np.ndarray]:
    """The axis (resolution,) and q(theta | x) on a resolution^2 grid of cell centres over
    [-1, 1]^2, as an array indexed [theta_2, theta_1] (for ``pcolormesh``)."""
    edges = np.linspace(-1.0, 1.0, resolution + 1)
    axis = (edges[:-1] + edges[1:]) / 2
    theta = np.stack(np.meshgrid(axis, axis), -1).reshape(-1, 2)  # row: theta_2
    x = np.asarray(x, np.float64).reshape(1, -1)
    log_q = batched_log_prob(model, theta, np.repeat(x, len(theta), axis=0), chunk)
    return axis, np.exp(log_q).reshape(resolution, resolution)


def plot_two_moons_posteriors(
    task,
    model,
    observations_x,
    path: str | Path,
    *,
    theta_true=None,
    resolution: int = 256,
    title: str = "",
    label: str = "model",
    chunk: int = CHUNK,
) -> Path:
    """Reference posterior (top row) and the model's (bottom row) for the first four
    observations, each on a resolution^2 grid over the prior's box [-1, 1]^2; the true
    parameters, if given, as cyan crosses. Cost: 4 x resolution^2 model densities."""
    task = sbi_task(task)
    xs = np.asarray(observations_x, np.float64)[:4]
    import matplotlib.pyplot as plt  # on use: importing cnfax picks no backend

    fig, axes = plt.subplots(2, len(xs), figsize=(2.8 * len(xs), 5.9), squeeze=False)
    reference_axis = None
    for k, x in enumerate(xs):
        axis, density = posterior_density_grid(model, x, resolution, chunk)
        if reference_axis is None:
            reference_axis = axis
            mesh = np.stack(np.meshgrid(axis, axis), -1).reshape(-1, 2)
        reference = np.exp(task.reference_log_posterior(mesh, x)).reshape(resolution, resolution)
        for row, (values, name) in enumerate([(reference, "reference"), (density, label)]):
            ax = axes[row, k]
            ax.pcolormesh(axis, axis, values, cmap="inferno", shading="auto")
            if theta_true is not None:
                t = np.asarray(theta_true)[k]
                ax.plot(t[0], t[1], "+", color="cyan", markersize=7, mew=1.0)
            ax.set_xlim(-1, 1)
            ax.set_ylim(-1, 1)
            ax.set_aspect("equal")
            ax.set_xticks([])
            ax.set_yticks([])
            if row == 0:
                ax.set_title(f"x = ({x[0]:.2f}, {x[1]:.2f})", fontsize=8)
            if k == 0:
                ax.set_ylabel(name, fontsize=9)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    return _save(fig, path)


def plot_coverage(results: dict[str, CoverageResult], path: str | Path, *, title: str = "") -> Path:
    """Expected coverage against alpha for each named result (e.g. the model and the
    conditional Gaussian), the diagonal, and the band of width ``null_max_deviation``
    around it (95% of calibrated models' largest deviations stay inside it)."""
    import matplotlib.pyplot as plt  # on use: importing cnfax picks no backend

    fig, ax = plt.subplots(figsize=(4.4, 4.4))
    first = next(iter(results.values()))
    grid = np.linspace(0, 1, 2)
    ax.fill_between(
        grid,
        grid - first.null_max_deviation,
        grid + first.null_max_deviation,
        color="0.88",
        label=f"calibrated, 95% ({first.pairs} pairs)",
    )
    ax.plot(grid, grid, color="0.4", lw=1, ls="--")
    for name, result in results.items():
        ax.plot(
            result.alphas,
            result.coverage,
            marker="o",
            markersize=3,
            label=f"{name} (max dev {result.max_deviation:.3f})",
        )
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1)
    ax.set_aspect("equal")
    ax.set_xlabel("credibility level alpha (HPD region)")
    ax.set_ylabel("expected coverage")
    ax.legend(fontsize=7, loc="upper left")
    if title:
        ax.set_title(title, fontsize=9)
    fig.tight_layout()
    return _save(fig, path)


def plot_samples_by_label(
    samples,
    path: str | Path,
    *,
    shape: tuple[int, int] = (8, 8),
    vmax: float = 16,
    labels=tuple(range(10)),
    title: str = "",
) -> Path:
    """A grid of images, one row per label: ``samples`` (rows x columns, h * w) holds
    the draws given labels[0] first, then labels[1], ... (e.g. (100, 64): ten digits of
    each of ten labels); each row is headed by its label."""
    samples = np.asarray(samples)
    rows = len(labels)
    if len(samples) % rows or samples.shape[1:] != (shape[0] * shape[1],):
        raise ValueError(
            f"samples must have shape ({rows} * columns, {shape[0] * shape[1]}), "
            f"got {samples.shape}"
        )
    columns = len(samples) // rows
    import matplotlib.pyplot as plt  # on use: importing cnfax picks no backend

    fig, axes = plt.subplots(
        rows, columns, figsize=(columns * 0.7 + 0.4, rows * 0.7 + 0.4), squeeze=False
    )
    for r in range(rows):
        for c in range(columns):
            ax = axes[r, c]
            ax.imshow(samples[r * columns + c].reshape(shape), cmap="gray_r", vmin=0, vmax=vmax)
            ax.set_xticks([])
            ax.set_yticks([])
            for spine in ax.spines.values():
                spine.set_visible(False)
        axes[r, 0].set_ylabel(str(labels[r]), rotation=0, labelpad=10, va="center")
    if title:
        fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    return _save(fig, path)


def _save(fig, path) -> Path:
    path = Path(path)
    fig.savefig(path, dpi=90)
    import matplotlib.pyplot as plt  # on use: importing cnfax picks no backend

    plt.close(fig)
    return path
