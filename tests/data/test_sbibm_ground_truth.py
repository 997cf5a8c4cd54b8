"""cnfax's SBI tasks against sbibm's ground truth, and each simulator against its own
closed-form likelihood.

(a) sbibm's ten observations per task (tests/data/sbibm/, copied from sbibm 1.1.0) are
    typical under cnfax's likelihood at their true parameters.
(b) Every simulator draws from its closed-form likelihood: the mean of simulated x and
    the mean of log p(x | theta) over simulated x both match what the likelihood itself
    says (closed forms, or quadrature of ``log_likelihood``), at fixed theta. The
    mutation drill (experiments/mutants.toml, ``sim-*``) changes each simulator's noise
    scales and offsets by 10% and checks that this test fails.
"""

import json
import math
from pathlib import Path

import numpy as np
import pytest

from cnfax.data.sbi import SLCP, GaussianLinear, GaussianMixture, TwoMoons

DATA = Path(__file__).parent / "sbibm"
TASKS = {
    "two_moons": TwoMoons(),
    "gaussian_linear": GaussianLinear(),
    "gaussian_mixture": GaussianMixture(),
    "slcp": SLCP(),
}


def sbibm_ground_truth(name: str) -> tuple[np.ndarray, np.ndarray]:
    """sbibm's true parameters (10, theta_dim) and observations (10, x_dim) of a task."""
    record = json.loads((DATA / f"{name}.json").read_text())
    return np.asarray(record["true_parameters"]), np.asarray(record["observations"])


# --------------------------------------------------------------------------- (a)


@pytest.mark.parametrize("name", sorted(TASKS))
def test_sbibm_observations_are_typical_under_the_likelihood_at_their_true_parameters(name):
    """For each of sbibm's 10 (theta_o, x_o): log p(x_o | theta_o) is at least the 0.1%
    quantile of log p(x | theta_o) over 20,000 x simulated at theta_o.

    Why this threshold: if cnfax's likelihood is sbibm's, x_o is one more draw of x given
    theta_o, so log p(x_o | theta_o) falls below that quantile with probability 0.001
    (0.004 for the quantile's own noise at 20,000 draws, whose standard error is about
    sqrt(0.001 / 20,000) = 2e-4 in probability): 4% for all 40 observations, and the data
    and streams are fixed, so the outcome is reproducible. A different convention (the
    moons' rotation or sign, a scale read as a variance, s = theta instead of theta^2,
    x and theta swapped) puts the observations in the far tail or at -inf."""
    task = TASKS[name]
    theta, x = sbibm_ground_truth(name)
    assert theta.shape == (10, task.theta_dim) and x.shape == (10, task.x_dim)
    rng = np.random.default_rng(20)
    for i in range(10):
        observed = task.log_likelihood(x[i], theta[i : i + 1])[0]
        simulated = task.simulate(np.repeat(theta[i : i + 1], 20_000, 0), rng)
        null = task.log_likelihood(simulated, np.repeat(theta[i : i + 1], 20_000, 0))
        threshold = np.quantile(null, 0.001)
        assert np.isfinite(observed) and observed >= threshold, (name, i, observed, threshold)


# --------------------------------------------------------------------------- (b)

SIMULATIONS = 20_000


def moments_by_quadrature(log_density, lows, highs, step):
    """E[x] and E[log p(x)] of a 2-d density by the midpoint rule on a grid; p log p is 0
    where p is."""
    axes = [np.arange(lo, hi, step) + step / 2 for lo, hi in zip(lows, highs, strict=True)]
    grid = np.stack(np.meshgrid(*axes, indexing="ij"), -1).reshape(-1, 2)
    log_p = log_density(grid)
    p = np.exp(log_p)
    area = step**2
    entropy_term = np.sum(np.where(p > 0, p * np.where(p > 0, log_p, 0.0), 0.0)) * area
    return (p @ grid) * area, entropy_term, p.sum() * area


def likelihood_moments(name, task, theta):
    """(E[x], E[log p(x | theta)], allowance) under the closed-form likelihood at one
    theta, computed from the likelihood's formula, never from the simulator; the
    allowance bounds the quadrature's error (0 for closed forms)."""
    if name == "gaussian_linear":
        var = task.noise_variance
        return theta, -0.5 * task.dim * (1 + math.log(2 * math.pi * var)), 0.0
    if name == "slcp":
        m, cov = task.mean_and_covariance(theta[None])
        log_det = math.log(np.linalg.det(cov[0]))
        entropy = task.draws * (1 + math.log(2 * math.pi) + 0.5 * log_det)
        return np.tile(m[0], task.draws), -entropy, 0.0
    if name == "gaussian_mixture":
        _, weight, log_p = mixture_radius_quadrature(task, theta)
        return theta, float(weight @ log_p), 1e-4
    if name == "two_moons":
        centre = task._shift(theta[None])[0] + np.array([0.25, 0.0])
        mean, expected, mass = moments_by_quadrature(
            lambda x: task.log_likelihood(x, np.broadcast_to(theta, x.shape)),
            centre - 0.2,
            centre + 0.2,
            0.0005,
        )
        # the density jumps to 0 at the moon's ends, a first-order error: mass is 1 to
        # ~1e-3 (test_sbi), so E[log p] (|log p| < 6 where p is not tiny) is good to ~0.01
        assert abs(mass - 1) < 2e-3
        return mean / mass, expected / mass, 0.01
    raise AssertionError(name)


def mixture_radius_quadrature(task, theta):
    """The mixture is isotropic around theta, so |x - theta| = r has density
    2 pi r p(r), p(r) the likelihood along a ray from theta: midpoints r (step 1e-4 to 12),
    each cell's probability, and log p there (E[log p] = sum of probability x log p)."""
    r = np.arange(0.0, 12.0, 1e-4) + 5e-5
    ray = theta + np.stack([r, np.zeros_like(r)], 1)
    log_p = task.log_likelihood(ray, np.broadcast_to(theta, ray.shape))
    weight = 2 * math.pi * r * np.exp(log_p) * 1e-4
    assert abs(weight.sum() - 1) < 1e-6  # the ray's quadrature is normalised
    return r, weight, log_p


def dkw_bound(n: int, alpha: float = 1e-6) -> float:
    """The Dvoretzky-Kiefer-Wolfowitz bound: P(sup |F_n - F| > eps) <= 2 exp(-2 n eps^2)
    for the empirical CDF of n i.i.d. draws, so eps = sqrt(log(2 / alpha) / (2 n))."""
    return math.sqrt(math.log(2 / alpha) / (2 * n))


THETAS = {  # away from 0, so that a 10% change of an offset proportional to theta shows
    "two_moons": [[0.8, -0.3], [-0.4, -0.6]],
    "gaussian_linear": [[1.0] * 10, [-0.5, 0.8] * 5],
    "gaussian_mixture": [[5.0, -7.0], [-2.0, 3.0]],
    "slcp": [[2.5, -2.5, 0.8, -0.9, 0.5], [-1.5, 2.0, 1.1, 0.7, -1.0]],
}


@pytest.mark.parametrize("name", sorted(TASKS))
def test_simulator_agrees_with_its_closed_form_likelihood(name):
    """At fixed theta, 20,000 simulated x: (1) each coordinate's mean is the likelihood's
    E[x] within 5 standard errors (sample std / sqrt(20,000)); (2) the mean of
    log p(x | theta) is the likelihood's E[log p] = -entropy within 5 standard errors
    (std of log p / sqrt(20,000)) plus the quadrature's allowance.

    Soundness: both are means of i.i.d. draws with finite variance, so under a correct
    simulator each lands beyond 5 standard errors with probability below 1e-6. Power: a
    10% larger (smaller) noise scale moves E[log p] by about -(+)0.1 nats per dimension
    it scales, and a 10% offset moves E[x] by 0.1 times the offset; at these thetas both
    are 10 to 100 standard errors (experiments/mutants.toml, sim-*). The mixture's
    log p has a wide, two-humped spread, so (3) its radius |x - theta| is also compared
    with the likelihood's radial CDF (Kolmogorov-Smirnov against the DKW bound at
    level 1e-6, 50,000 draws: 0.012; a 10% change of either scale moves the CDF by
    about 0.5 x 0.07 = 0.035)."""
    task = TASKS[name]
    rng = np.random.default_rng(21)
    for theta in np.asarray(THETAS[name], np.float64):
        rows = np.repeat(theta[None], SIMULATIONS, 0)
        x = task.simulate(rows, rng)
        log_p = task.log_likelihood(x, rows)
        assert np.all(np.isfinite(log_p)), f"{name}: simulated x outside the likelihood"
        mean, expected, allowance = likelihood_moments(name, task, theta)
        se = x.std(0, ddof=1) / math.sqrt(SIMULATIONS)
        z = (x.mean(0) - mean) / se
        assert np.all(np.abs(z) < 5), f"{name} at {theta}: mean of x off by {z} SE"
        if name == "gaussian_mixture":
            radius_cdf_check(task, theta, rng)
        se_log_p = log_p.std(ddof=1) / math.sqrt(SIMULATIONS)
        gap = log_p.mean() - expected
        assert abs(gap) < 5 * se_log_p + allowance, (
            f"{name} at {theta}: mean log p {log_p.mean():.4f}, likelihood's "
            f"{expected:.4f} ({gap / se_log_p:.1f} SE)"
        )


def radius_cdf_check(task, theta, rng, n: int = 50_000):
    """sup_r |empirical CDF of |x - theta|| - the likelihood's radial CDF| below the DKW
    bound (test docstring)."""
    r, weight, _ = mixture_radius_quadrature(task, theta)
    cdf = np.cumsum(weight)  # at the cells' upper edges r + 5e-5
    x = task.simulate(np.repeat(theta[None], n, 0), rng)
    radii = np.sort(np.linalg.norm(x - theta, axis=1))
    model = np.interp(radii, r + 5e-5, cdf)
    empirical_high, empirical_low = np.arange(1, n + 1) / n, np.arange(n) / n
    distance = max(np.max(empirical_high - model), np.max(model - empirical_low))
    assert distance < dkw_bound(n), f"mixture at {theta}: KS distance {distance:.4f}"
