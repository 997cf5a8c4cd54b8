"""The digits' generative classifier: argmax_y log p(x | y) + log p(y) with a conditional
flow p(x | y) (``cnfax.load`` of a ``--dataset digits --conditional`` run) and the
training label frequencies p(y)."""

from __future__ import annotations

import numpy as np

from cnfax.evaluation.posterior_checks import CHUNK
from cnfax.scoring import batched_log_prob, numpy_rng


def bayes_classifier_log_joint(
    model, images, levels: int, label_frequencies, *, key=None, chunk: int = CHUNK
) -> np.ndarray:
    """log p(x | y) + log p(y) for every image (rows of integer grey levels in
    [0, levels)) and every label y (one-hot, K = len(label_frequencies)), shape (n, K).

    ``model.log_prob`` is the density of the dequantised image v = x + u, u in [0, 1)^D
    (``cnfax.load`` of a discrete run); v is the cell centre x + 1/2, or with ``key`` one
    uniform u per image, the same for every label (so labels are compared at one point).
    p(y): the training label frequencies (counts or probabilities), normalised here."""
    images = np.asarray(images, np.float64)
    if images.ndim != 2:
        raise ValueError(f"images must have shape (n, D), got {images.shape}")
    if np.any(images != np.round(images)) or np.any(images < 0) or np.any(images >= levels):
        raise ValueError(f"images must hold integer grey levels in [0, {levels})")
    prior = np.asarray(label_frequencies, np.float64)
    if prior.ndim != 1 or np.any(prior < 0) or prior.sum() <= 0:
        raise ValueError("label_frequencies must be K non-negative numbers, not all zero")
    classes = len(prior)
    width = getattr(model, "condition_dim", classes)
    if width != classes:
        raise ValueError(f"{classes} label frequencies but the model's condition width is {width}")
    if key is None:
        v = images + 0.5
    else:
        v = images + numpy_rng(key).uniform(size=images.shape)
    n = len(images)
    one_hot = np.tile(np.eye(classes), (n, 1))  # row i * K + k: label k
    log_likelihood = batched_log_prob(model, np.repeat(v, classes, axis=0), one_hot, chunk)
    with np.errstate(divide="ignore"):
        log_prior = np.log(prior / prior.sum())
    return log_likelihood.reshape(n, classes) + log_prior


def bayes_classifier_accuracy(
    model, images, labels, levels: int, label_frequencies, *, key=None, chunk: int = CHUNK
) -> float:
    """Accuracy of argmax_y p(x | y) p(y) on the images (:func:`bayes_classifier_log_joint`)."""
    labels = np.asarray(labels)
    if labels.shape != (len(images),):
        raise ValueError(f"labels must have shape ({len(images)},), got {labels.shape}")
    scores = bayes_classifier_log_joint(
        model, images, levels, label_frequencies, key=key, chunk=chunk
    )
    return float(np.mean(np.argmax(scores, axis=1) == labels))
