"""C2ST (sbibm's classifier two-sample test): about 0.5 for two samples of one
distribution, about the Bayes accuracy for two Gaussians a known distance apart, near 1
for clearly different ones. Small samples (1,000 of each) keep it cheap."""

import math

import numpy as np
import pytest
from scipy.special import ndtr

from cnfax.evaluation.c2st import c2st

N = 1000


def gaussian(seed: int, shift: float = 0.0, dim: int = 2) -> np.ndarray:
    return np.random.default_rng(seed).normal(size=(N, dim)) + shift


def test_c2st_of_one_distribution_is_about_a_half():
    """Accuracy on 2,000 held-out labels of indistinguishable samples is a binomial
    proportion around 0.5 with standard error sqrt(0.25 / 2000) = 0.011 (plus the
    classifier's own overfitting noise, which only moves it further from any signal);
    we allow 0.05, about 4.5 standard errors (this stream scores 0.478)."""
    assert abs(c2st(gaussian(0), gaussian(1)) - 0.5) < 0.05


def test_c2st_of_gaussians_a_known_distance_apart_is_their_bayes_accuracy():
    """N(0, I) against N(mu, I) with |mu| = 1: the Bayes-optimal accuracy with equal
    samples is Phi(|mu| / 2) = 0.691. The classifier cannot beat it beyond noise
    (4 standard errors of sqrt(0.69 x 0.31 / 2000) = 0.010: +0.04; this stream scores
    0.713) and should come within 0.05 of it (ROC AUC instead of accuracy scores 0.785
    here, the mutant c2st-auc)."""
    bayes = float(ndtr(0.5))
    score = c2st(gaussian(2), gaussian(3, shift=1 / math.sqrt(2)))
    assert bayes - 0.05 < score < bayes + 0.04


def test_c2st_of_clearly_different_samples_is_near_one():
    """Means 3 apart in each of 2 coordinates: Bayes accuracy Phi(3 sqrt 2 / 2) = 0.983
    (this stream scores 0.978); above 0.95 is 3 standard errors (0.004) below it."""
    assert c2st(gaussian(4), gaussian(5, shift=3.0)) > 0.95


def test_c2st_is_deterministic_and_refuses_bad_input():
    x, y = gaussian(6)[:200], gaussian(7, shift=0.5)[:200]
    assert c2st(x, y, seed=3) == c2st(x, y, seed=3)
    with pytest.raises(ValueError, match="reference has 2 columns but samples have 3"):
        c2st(x, np.zeros((10, 3)))
    with pytest.raises(ValueError, match=r"samples must be draws of shape \(n, dim\)"):
        c2st(x, np.zeros(10))
    with pytest.raises(ValueError, match="samples row 1 is not finite"):
        c2st(x, np.array([[0.0, 0.0], [np.nan, 0.0]] * 5))
    with pytest.raises(ValueError, match="reference column 1 is constant"):
        c2st(np.stack([np.arange(10.0), np.ones(10)], 1), x)
