"""scikit-learn's bundled 8x8 handwritten digits: 1,797 images with 17 grey levels (0-16),
64 dimensions, no download."""

from __future__ import annotations

import numpy as np

LEVELS = 17
IMAGE_SHAPE = (8, 8)


def load_digits() -> np.ndarray:
    """The images as integer-valued float32 rows, shape (1797, 64), values in {0, ..., 16}."""
    from sklearn.datasets import load_digits as sklearn_digits

    return sklearn_digits().data.astype(np.float32)
