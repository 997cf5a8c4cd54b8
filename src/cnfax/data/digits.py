"""scikit-learn's bundled 8x8 handwritten digits: 1,797 images with 17 grey levels (0-16),
64 dimensions, no download."""

from __future__ import annotations

import numpy as np

LEVELS = 17
IMAGE_SHAPE = (8, 8)


CLASSES = 10


def load_digits() -> np.ndarray:
    """The images as integer-valued float32 rows, shape (1797, 64), values in {0, ..., 16}."""
    return load_digits_and_labels()[0]


def load_digits_and_labels() -> tuple[np.ndarray, np.ndarray]:
    """The images (as in :func:`load_digits`) and their labels 0-9 as one-hot float32 rows,
    shape (1797, 10)."""
    from sklearn.datasets import load_digits as sklearn_digits

    bunch = sklearn_digits()
    return bunch.data.astype(np.float32), np.eye(CLASSES, dtype=np.float32)[bunch.target]
