"""SBI tasks: each simulator agrees with its closed-form likelihood, and each reference
posterior agrees with an independent brute-force one (rejection ABC, importance sampling)."""

import numpy as np
import pytest

from cnfax.data.sbi import GaussianLinear, GaussianMixture, TwoMoons, observations


def test_two_moons_likelihood_is_normalised_and_matches_the_simulator():
    """For a fixed theta, p(x | theta) integrates to 1 over a box around the moon (midpoint
    rule on a 0.001 grid), and the fraction of simulated x in a half-box equals the
    likelihood's mass there (binomial SE at n = 20,000 is 0.0035; we allow 4 SE)."""
    task = TwoMoons()
    theta = np.array([[0.3, -0.5]])
    shift = task._shift(theta)[0] + np.array([0.25, 0.0])
    axis = np.arange(-0.2, 0.2, 0.001) + 0.0005
    grid = np.stack(np.meshgrid(axis, axis, indexing="ij"), -1).reshape(-1, 2) + shift
    density = np.exp(task.log_likelihood(grid, np.repeat(theta, len(grid), 0)))
    assert abs(density.sum() * 1e-6 - 1.0) < 2e-3
    x = task.simulate(np.repeat(theta, 20_000, 0), np.random.default_rng(0))
    upper = (x[:, 1] - shift[1]) > 0
    mass_upper = density[(grid[:, 1] - shift[1]) > 0].sum() * 1e-6
    assert abs(upper.mean() - mass_upper) < 4 * 0.0035


def test_two_moons_reference_posterior_matches_rejection_abc():
    """Rejection ABC (keep prior draws whose simulated x lands within 0.01 of x_obs, from
    2,000,000 simulations) samples the posterior up to the eps-blur; its mean and spread
    agree with the grid posterior's to within 0.03 (about 3 standard errors of ~1000
    accepted draws of a posterior with spread ~0.3, plus the blur)."""
    task = TwoMoons(grid=500)
    rng = np.random.default_rng(1)
    theta_obs, x_obs = observations(task, seed=0, n=1)
    theta, x = task.joint(rng, 2_000_000)
    accepted = theta[np.linalg.norm(x - x_obs[0], axis=1) < 0.01]
    assert len(accepted) > 300
    grid, log_density, _ = task.posterior_grid(x_obs[0])
    weights = np.exp(log_density) * (2 / task.grid) ** 2
    mean = weights @ grid

    # The posterior is two arcs symmetric under theta -> (-theta_2, -theta_1)... compare
    # quantities invariant to which arc: |theta_1 + theta_2| and theta_2 - theta_1.
    def features(t):
        return np.stack([np.abs(t[:, 0] + t[:, 1]), t[:, 1] - t[:, 0]], 1)

    np.testing.assert_allclose(features(accepted).mean(0), weights @ features(grid), atol=0.03)
    assert np.all(np.abs(mean) <= 1)
    assert np.isfinite(task.reference_log_posterior(theta_obs, x_obs[0])).all()


def test_gaussian_linear_posterior_matches_importance_sampling_from_the_prior():
    """E[theta | x] and Var[theta | x] by self-normalised importance sampling with the
    prior as proposal (200,000 draws) agree with the closed form N(x / 2, 0.05 I) within 4
    standard errors, sqrt(0.05 / ESS) for the mean (ESS, the effective sample size, is a
    few hundred in 10 dimensions)."""
    task = GaussianLinear()
    rng = np.random.default_rng(2)
    _, x = observations(task, seed=0, n=1)
    theta = task.prior(rng, 200_000)
    log_w = -0.5 * np.sum((x[0] - theta) ** 2, 1) / task.noise_variance
    w = np.exp(log_w - log_w.max())
    w /= w.sum()
    mean, var = task.posterior(x[0])
    ess = 1 / np.sum(w**2)
    assert ess > 100
    np.testing.assert_allclose(w @ theta, mean, atol=4 * np.sqrt(var / ess))
    # the variance's SE is var * sqrt(2 / ESS) for Gaussian draws
    np.testing.assert_allclose(w @ (theta - mean) ** 2, var, atol=4 * var * np.sqrt(2 / ess))
    samples = task.reference_samples(x[0], rng, 50_000)
    np.testing.assert_allclose(samples.mean(0), mean, atol=0.01)
    # log-density: closed form agrees with the Gaussian's at the mean
    assert np.isclose(
        task.reference_log_posterior(mean[None], x[0])[0], -5 * np.log(2 * np.pi * var)
    )


def test_prior_boxes_hold_the_prior_draws():
    """Two moons' prior U[-1, 1]^2 has that box, and every prior draw lies inside it (a
    box one draw could leave would give it log-density -inf); Gaussian linear's prior is
    Gaussian, on all of R^10, so it has none."""
    box = TwoMoons().prior_box
    assert box.bounds()[0].tolist() == [-1.0, -1.0] and box.bounds()[1].tolist() == [1.0, 1.0]
    assert box.contains(TwoMoons().prior(np.random.default_rng(5), 10_000)).all()
    assert GaussianLinear().prior_box is None


def test_gaussian_mixture_reference_is_normalised_and_its_sampler_matches_it():
    """Observation near the box's edge (x_1 = 9.8, so the truncation matters: the wide
    component keeps 58% of its mass). (1) exp(reference_log_posterior) integrates to 1
    over [-10, 10]^2 (midpoint rule, cells 0.01: the narrow component's s = 0.1 spans 10
    cells, error below 1e-3); (2) 100,000 exact draws: all inside the box, and their
    mean is the density's (by the same quadrature) within 5 standard errors."""
    task = GaussianMixture()
    x = np.array([9.8, -3.0])
    axis = np.arange(-10.0, 10.0, 0.01) + 0.005
    grid = np.stack(np.meshgrid(axis, axis, indexing="ij"), -1).reshape(-1, 2)
    density = np.exp(task.reference_log_posterior(grid, x)) * 1e-4
    assert abs(density.sum() - 1) < 1e-3
    draws = task.reference_samples(x, np.random.default_rng(6), 100_000)
    assert task.prior_box.contains(draws).all()
    se = draws.std(0) / np.sqrt(len(draws))
    assert np.all(np.abs(draws.mean(0) - density @ grid) < 5 * se)
    outside = task.reference_log_posterior(np.array([[10.5, 0.0]]), x)
    assert outside[0] == -np.inf
    assert task.prior_box.bounds()[1].tolist() == [10.0, 10.0]


def test_slcp_says_it_has_no_reference_posterior():
    """KL (and the reference as a model) refuse SLCP with NoReferencePosterior naming the
    task, before any model call; the report marks KL unavailable."""
    from cnfax.data.sbi import SLCP, NoReferencePosterior
    from cnfax.evaluation.baselines import ReferencePosterior
    from cnfax.evaluation.conditional_report import sbi_summary
    from cnfax.evaluation.posterior_checks import kl_to_reference

    with pytest.raises(NoReferencePosterior, match="SLCP has no reference posterior"):
        kl_to_reference("sbi-slcp", model=None, observations_x=np.zeros((1, 8)))
    with pytest.raises(NoReferencePosterior):
        ReferencePosterior("sbi-slcp")
    assert not SLCP.has_reference and GaussianMixture.has_reference
    assert SLCP().prior_box.bounds()[0].tolist() == [-3.0] * 5
    coverage = {"max_deviation": 0.04, "null_max_deviation_95": 0.08}
    line = sbi_summary({"model": {"kl": {"unavailable": "no reference"}, "coverage": coverage}})
    assert "KL unavailable (no reference)" in line and "0.040" in line


def test_new_tasks_are_registered_as_datasets():
    from cnfax.data.sbi import SBI_TASKS, SLCP
    from cnfax.run.config import DATASETS

    assert isinstance(SBI_TASKS["sbi-gaussian-mixture"], GaussianMixture)
    assert isinstance(SBI_TASKS["sbi-slcp"], SLCP)
    assert {"sbi-gaussian-mixture", "sbi-slcp"} <= set(DATASETS)
    theta, x = SBI_TASKS["sbi-slcp"].joint(np.random.default_rng(0), 3)
    assert theta.shape == (3, 5) and x.shape == (3, 8)
