"""FFJORD's eight 2-D toy densities, generated on demand and reproducibly from a seed.

Each generator follows FFJORD's ``toy_data.inf_train_gen`` (scikit-learn's moons, circles
and swiss roll are re-implemented with NumPy). Draws are keyed by (seed, stream, index):
training batch k is ``train_batch(name, seed, k, n)`` and the test set comes from its own
stream, so training and test draws are independent, and a resumed run sees exactly the
batches an uninterrupted one would.
"""

from __future__ import annotations

import numpy as np

# The test stream keeps its old number, so test NLLs stay comparable with earlier runs.
_STREAMS = {"train": 0, "test": 1, "validation": 2}


def _eight_gaussians(rng, n):
    scale = 4.0
    s = 1.0 / np.sqrt(2)
    centers = scale * np.array(
        [(1, 0), (-1, 0), (0, 1), (0, -1), (s, s), (s, -s), (-s, s), (-s, -s)]
    )
    points = rng.normal(size=(n, 2)) * 0.5 + centers[rng.integers(0, 8, n)]
    return points / 1.414


def _checkerboard(rng, n):
    x1 = rng.random(n) * 4 - 2
    x2 = rng.random(n) - rng.integers(0, 2, n) * 2 + np.floor(x1) % 2
    return np.stack([x1, x2], 1) * 2


def _two_spirals(rng, n):
    half = (n + 1) // 2
    t = np.sqrt(rng.random((half, 1))) * 540 * (2 * np.pi) / 360
    dx = -np.cos(t) * t + rng.random((half, 1)) * 0.5
    dy = np.sin(t) * t + rng.random((half, 1)) * 0.5
    x = np.vstack([np.hstack([dx, dy]), np.hstack([-dx, -dy])]) / 3
    return rng.permutation(x + rng.normal(size=x.shape) * 0.1)[:n]


def _pinwheel(rng, n):
    radial_std, tangential_std, classes, rate = 0.3, 0.1, 5, 0.25
    labels = rng.integers(0, classes, n)
    rads = np.linspace(0, 2 * np.pi, classes, endpoint=False)
    features = rng.normal(size=(n, 2)) * np.array([radial_std, tangential_std])
    features[:, 0] += 1.0
    angles = rads[labels] + rate * np.exp(features[:, 0])
    rotations = np.stack([np.cos(angles), -np.sin(angles), np.sin(angles), np.cos(angles)])
    rotations = rotations.T.reshape(-1, 2, 2)
    return 2 * np.einsum("ti,tij->tj", features, rotations)


def _swissroll(rng, n):
    # sklearn.datasets.make_swiss_roll(n, noise=1.0), columns (x, z), divided by 5
    t = 1.5 * np.pi * (1 + 2 * rng.random(n))
    points = np.stack([t * np.cos(t), t * np.sin(t)], 1) + rng.normal(size=(n, 2))
    return points / 5


def _circles(rng, n):
    # sklearn.datasets.make_circles(n, factor=0.5, noise=0.08), times 3
    angles = rng.random(n) * 2 * np.pi
    radius = np.where(rng.random(n) < 0.5, 1.0, 0.5)
    points = radius[:, None] * np.stack([np.cos(angles), np.sin(angles)], 1)
    return (points + rng.normal(scale=0.08, size=(n, 2))) * 3


def _moons(rng, n):
    # sklearn.datasets.make_moons(n, noise=0.1), times 2, shifted by (-1, -0.2)
    angles = rng.random(n) * np.pi
    outer = rng.random(n) < 0.5
    x = np.where(outer, np.cos(angles), 1 - np.cos(angles))
    y = np.where(outer, np.sin(angles), 1 - np.sin(angles) - 0.5)
    points = np.stack([x, y], 1) + rng.normal(scale=0.1, size=(n, 2))
    return points * 2 + np.array([-1.0, -0.2])


def _rings(rng, n):
    radii = np.array([0.25, 0.5, 0.75, 1.0])
    angles = rng.random(n) * 2 * np.pi
    radius = radii[rng.integers(0, 4, n)]
    points = radius[:, None] * np.stack([np.cos(angles), np.sin(angles)], 1) * 3.0
    return points + rng.normal(scale=0.08, size=(n, 2))


TOY_DATASETS = {
    "8gaussians": _eight_gaussians,
    "checkerboard": _checkerboard,
    "2spirals": _two_spirals,
    "pinwheel": _pinwheel,
    "swissroll": _swissroll,
    "circles": _circles,
    "moons": _moons,
    "rings": _rings,
}


def sample_toy(name: str, rng: np.random.Generator, n: int) -> np.ndarray:
    """n points (float32, shape (n, 2)) from the named density."""
    if name not in TOY_DATASETS:
        raise ValueError(f"unknown dataset {name!r}; choose one of {sorted(TOY_DATASETS)}")
    return TOY_DATASETS[name](rng, n).astype(np.float32)


def train_batch(name: str, seed: int, index: int, n: int) -> np.ndarray:
    """Training batch number ``index``: a pure function of (name, seed, index, n)."""
    return sample_toy(name, np.random.default_rng([seed, _STREAMS["train"], index]), n)


def held_out_set(name: str, seed: int, n: int, split: str = "test") -> np.ndarray:
    """Held-out points of ``split`` ("validation" or "test"): each split is its own stream,
    which no training batch and no other split uses."""
    if split not in ("validation", "test"):
        raise ValueError(f"held-out split must be 'validation' or 'test', got {split!r}")
    return sample_toy(name, np.random.default_rng([seed, _STREAMS[split]]), n)
