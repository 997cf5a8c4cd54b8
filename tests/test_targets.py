"""Targets of variational inference: each log-density against an independent scipy or
numpy formula, the grid normalisers of U1-U4 against refinement (and U2's closed form),
the registry and resolve_target's errors."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import special, stats

from cnfax import targets
from cnfax.targets import TARGETS, grid_log_normalizer, resolve_target


@pytest.mark.parametrize("name", ["u1", "u2", "u3", "u4"])
def test_grid_log_normalizer_is_converged(name):
    """Refining the grid from 2000^2 to 3000^2 cells moves log Z by < 1e-4 (the midpoint
    rule on a smooth integrand that vanishes at the box's edge: the change bounds the
    remaining error of the coarser grid)."""
    coarse = targets.Energy2D(name).log_normalizer
    assert coarse == grid_log_normalizer(name, 2000)
    assert abs(grid_log_normalizer(name, 3000) - coarse) < 1e-4
    # and a wider box adds no mass
    assert abs(grid_log_normalizer(name, 2500, 10.0) - coarse) < 1e-4


def test_u2_log_normalizer_matches_its_closed_form():
    """int exp(-U2) = int exp(-(z1/4)^8 / 2) dz1 * 0.4 sqrt(2 pi): for each z1 the z2
    integral is a Gaussian's (the box holds all of it), and
    int exp(-u^8 / 2) du over R = 2 Gamma(9/8) 2^(1/8). Agreement to 1e-8 checks the
    quadrature itself, not only its convergence."""
    closed = math.log(0.4 * math.sqrt(2 * math.pi) * 4 * 2 * math.gamma(9 / 8) * 2 ** (1 / 8))
    assert grid_log_normalizer("u2") == pytest.approx(closed, abs=1e-8)


def test_u1_matches_rezende_and_mohamed():
    z = np.random.default_rng(0).normal(size=(64, 2)) * 2
    r = np.linalg.norm(z, axis=1)
    bumps = np.exp(-0.5 * ((z[:, 0] - 2) / 0.6) ** 2) + np.exp(-0.5 * ((z[:, 0] + 2) / 0.6) ** 2)
    expected = -(0.5 * ((r - 2) / 0.4) ** 2 - np.log(bumps))
    with jax.enable_x64(True):
        np.testing.assert_allclose(targets.Energy2D("u1")(jnp.asarray(z)), expected, rtol=1e-12)


def test_funnel_is_neals():
    funnel = TARGETS["funnel"]()
    assert funnel.dim == 10 and funnel.log_normalizer == 0.0
    z = funnel.sample(np.random.default_rng(1), 256)
    expected = stats.norm.logpdf(z[:, 0], 0, 3) + np.sum(
        stats.norm.logpdf(z[:, 1:], 0, np.exp(z[:, :1] / 2)), axis=1
    )
    with jax.enable_x64(True):
        np.testing.assert_allclose(funnel(jnp.asarray(z)), expected, rtol=1e-10)
    # exact draws: v ~ N(0, 9); its sample variance over 256 draws within 30%
    assert 0.7 * 9 < np.var(z[:, 0]) < 1.3 * 9


def test_mixture_density_and_its_modes():
    mixture = TARGETS["mixture"]()
    modes = mixture.modes
    assert modes.shape == (8, 10) and mixture.log_normalizer == 0.0
    distances = np.linalg.norm(modes[:, None] - modes[None], axis=-1)
    assert np.min(distances[~np.eye(8, dtype=bool)]) >= 8.0  # well separated (sd 1)
    rng = np.random.default_rng(2)
    which = rng.integers(0, 8, 200)
    z = modes[which] + rng.normal(size=(200, 10))
    each = np.stack([stats.multivariate_normal.logpdf(z, m, np.eye(10)) for m in modes], 1)
    with jax.enable_x64(True):
        np.testing.assert_allclose(
            mixture(jnp.asarray(z)), special.logsumexp(each, axis=1) - math.log(8), rtol=1e-10
        )
    np.testing.assert_array_equal(mixture.nearest_mode(z), which)
    np.testing.assert_array_equal(mixture.mode_counts(z), np.bincount(which, minlength=8))


def test_gaussian50_density_and_closed_form_kl():
    gaussian = TARGETS["gaussian50"]()
    assert gaussian.dim == 50
    z = np.random.default_rng(3).normal(size=(32, 50))
    expected = stats.multivariate_normal.logpdf(z, gaussian.mean, gaussian.covariance)
    with jax.enable_x64(True):
        np.testing.assert_allclose(gaussian(jnp.asarray(z)), expected, rtol=1e-9)
    assert gaussian.kl_from(gaussian.mean, gaussian.covariance) == pytest.approx(0, abs=1e-9)
    # a shifted copy: KL = delta^T S^-1 delta / 2; a scaled one: d (c - 1 - log c) / 2
    delta = np.full(50, 0.1)
    shift = 0.5 * delta @ np.linalg.solve(gaussian.covariance, delta)
    assert gaussian.kl_from(gaussian.mean + delta, gaussian.covariance) == pytest.approx(shift)
    c = 2.0
    scaled = gaussian.kl_from(gaussian.mean, c * gaussian.covariance)
    assert scaled == pytest.approx(50 * (c - 1 - math.log(c)) / 2)


def test_logistic_regression_posterior():
    logistic = TARGETS["logistic"]()
    assert logistic.dim == 31 and logistic.log_normalizer is None
    x, y = logistic.features, logistic.labels
    np.testing.assert_allclose(x[:, 1:].mean(0), 0, atol=1e-10)
    np.testing.assert_allclose(x[:, 1:].std(0), 1, atol=1e-10)
    beta = np.random.default_rng(4).normal(size=(8, 31)) * 0.3
    p = special.expit(beta @ x.T)
    expected = np.sum(y * np.log(p) + (1 - y) * np.log1p(-p), 1) + np.sum(
        stats.norm.logpdf(beta), 1
    )
    with jax.enable_x64(True):
        np.testing.assert_allclose(logistic(jnp.asarray(beta)), expected, rtol=1e-10)


@pytest.mark.parametrize("name", sorted(TARGETS))
def test_every_registered_target_gives_one_finite_value_per_draw(name):
    target = resolve_target(name)
    z = jnp.asarray(np.random.default_rng(5).normal(size=(7, target.dim)), jnp.float32)
    logp = target(z)
    assert logp.shape == (7,) and bool(jnp.all(jnp.isfinite(logp)))
    hash(target)  # part of a compiled step's static objective


def test_resolve_target_accepts_callables_names_and_module_paths_and_explains_errors():
    def mine(z):
        return -jnp.sum(z**2, -1)

    assert resolve_target(mine) is mine
    assert resolve_target("cnfax.targets:u1") is targets.u1
    assert isinstance(resolve_target("cnfax.targets:Funnel"), targets.Funnel)
    with pytest.raises(ValueError, match="unknown target 'u9'.*funnel"):
        resolve_target("u9")
    with pytest.raises(ValueError, match="cannot import module 'no_such_module'"):
        resolve_target("no_such_module:f")
    with pytest.raises(ValueError, match="has no 'nothing'"):
        resolve_target("cnfax.targets:nothing")
    with pytest.raises(ValueError, match="not callable"):
        resolve_target("cnfax.targets:GRID_POINTS")
    with pytest.raises(ValueError, match="module:function"):
        resolve_target(":u1")
    with pytest.raises(TypeError, match="callable"):
        resolve_target(3)
