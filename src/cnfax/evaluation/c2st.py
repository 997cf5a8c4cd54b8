"""The classifier two-sample test (C2ST) as sbibm 1.1.0 computes it (sbibm/metrics/c2st.py;
Lopez-Paz & Oquab 2017, Lueckmann et al. 2021).

Given reference draws X (n, d) (sbibm's reference posterior samples) and model draws
Y (m, d):

1. z-score both by the reference's mean and standard deviation (sbibm uses torch.std, the
   unbiased n - 1 form);
2. label X 0 and Y 1, and score scikit-learn's MLPClassifier (activation relu, two hidden
   layers of 10 d units, solver adam, max_iter 10000, random_state seed, every other
   setting at its default: no early stopping) by 5-fold cross-validated accuracy, with
   KFold(n_splits=5, shuffle=True, random_state=seed);
3. return the mean accuracy over the folds.

0.5 means the classifier cannot tell the samples apart (the best possible score for a
model, up to noise); 1.0 means it always can. With n = m, the Bayes-optimal accuracy is
(1 + TV(p, q)) / 2, TV the total-variation distance, so a trained classifier's score is
about that or below it. sbibm's default is 10,000 draws of each.
"""

from __future__ import annotations

import numpy as np
from sklearn.model_selection import KFold, cross_val_score
from sklearn.neural_network import MLPClassifier

DRAWS = 10_000  # sbibm's number of reference and model draws per observation


def c2st(
    reference: np.ndarray,
    samples: np.ndarray,
    *,
    seed: int = 1,
    folds: int = 5,
    z_score: bool = True,
) -> float:
    """Cross-validated accuracy of a classifier telling ``samples`` from ``reference``
    (module docstring; sbibm's ``c2st(X=reference, Y=samples)`` with its defaults)."""
    x = _rows(reference, "reference")
    y = _rows(samples, "samples")
    if x.shape[1] != y.shape[1]:
        raise ValueError(
            f"reference has {x.shape[1]} columns but samples have {y.shape[1]}: both must "
            "be draws of the same parameter"
        )
    if min(len(x), len(y)) < folds:
        raise ValueError(f"C2ST with {folds} folds needs at least {folds} draws of each")
    if z_score:
        mean, std = x.mean(0), x.std(0, ddof=1)
        if np.any(std == 0):
            raise ValueError(f"reference column {int(np.argmin(std))} is constant")
        x, y = (x - mean) / std, (y - mean) / std
    dim = x.shape[1]
    classifier = MLPClassifier(
        activation="relu",
        hidden_layer_sizes=(10 * dim, 10 * dim),
        max_iter=10_000,
        solver="adam",
        random_state=seed,
    )
    data = np.concatenate([x, y])
    target = np.concatenate([np.zeros(len(x)), np.ones(len(y))])
    split = KFold(n_splits=folds, shuffle=True, random_state=seed)
    return float(np.mean(cross_val_score(classifier, data, target, cv=split, scoring="accuracy")))


def _rows(a, name: str) -> np.ndarray:
    a = np.asarray(a, np.float64)
    if a.ndim != 2:
        raise ValueError(f"{name} must be draws of shape (n, dim), got shape {a.shape}")
    if not np.all(np.isfinite(a)):
        row = int(np.argmin(np.all(np.isfinite(a), axis=1)))
        raise ValueError(f"{name} row {row} is not finite: {a[row].tolist()}")
    return a
