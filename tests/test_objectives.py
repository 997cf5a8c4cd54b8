"""Objectives: RNODE's regulariser integrals against closed forms for linear fields, their
exclusion from step-size control, flow matching's loss and optimal-transport pairing, and
short training runs with each objective."""

import itertools
import math

import diffrax
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from helpers import SMALL_TRAINING, LinearField, examples
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy.optimize import linear_sum_assignment

import cnfax
from cnfax.data.toy import held_out_set
from cnfax.evaluation import evaluation_flow, held_out_nll
from cnfax.objectives import FlowMatching, MaximumLikelihood, optimal_transport_pairs
from cnfax.run.config import Config
from cnfax.run.directory import restore_flow
from cnfax.run.model import build_flow
from cnfax.train import train

TIGHT = diffrax.PIDController(rtol=1e-9, atol=1e-9)
rates = st.floats(0.2, 1.5).flatmap(lambda a: st.sampled_from([a, -a]))


@settings(max_examples=examples(4), deadline=None)
@given(a=st.tuples(rates, rates), end_time=st.floats(0.3, 1.0), seed=st.integers(0, 2**16))
def test_regularizers_equal_their_closed_form_for_a_diagonal_linear_field(a, end_time, seed):
    """f = A z with A = diag(a). The inverse solve runs from x along z(t) = exp(-A u) x,
    u = T - t, so K = sum_i a_i^2 x_i^2 (1 - exp(-2 a_i T)) / (2 a_i) and J = T ||A||_F^2.
    Rademacher noise gives |A eps|^2 = ||A||_F^2 exactly for a diagonal A, so the
    Hutchinson J is exact here too."""
    with jax.enable_x64(True):
        a = jnp.asarray(a, jnp.float64)
        x = jax.random.normal(jax.random.key(seed), (16, 2), jnp.float64)
        kinetic = jnp.sum(a**2 * x**2 * (1 - jnp.exp(-2 * a * end_time)) / (2 * a), axis=-1)
        jacobian = end_time * jnp.sum(a**2)
        for trace in (cnfax.Exact(), cnfax.Hutchinson("rademacher", probes=2)):
            flow = cnfax.CNF(
                LinearField(jnp.diag(a)), t1=end_time, trace=trace, stepsize_controller=TIGHT
            )
            _, regs, _ = flow.log_prob_and_regularizers(x, key=jax.random.key(1))
            np.testing.assert_allclose(regs.kinetic_energy, kinetic, rtol=1e-6)
            np.testing.assert_allclose(regs.jacobian_frobenius, jacobian, rtol=1e-6)


def test_jacobian_norm_of_a_general_linear_field_and_its_hutchinson_estimate():
    """J = T ||A||_F^2 exactly with the exact trace. Hutchinson's |A eps|^2 is unbiased:
    its mean over 400 independent draws (100 keys x 4 points) is within 5 standard
    errors of T ||A||_F^2 (a false alarm has probability below 1e-6)."""

    with jax.enable_x64(True):
        matrix = jnp.array([[0.3, -1.2], [0.8, -0.5]], jnp.float64)
        x = jax.random.normal(jax.random.key(0), (4, 2), jnp.float64)
        expected = 0.7 * float(jnp.sum(matrix**2))
        flow = cnfax.CNF(LinearField(matrix), t1=0.7, stepsize_controller=TIGHT)
        _, regs, _ = flow.log_prob_and_regularizers(x)
        np.testing.assert_allclose(regs.jacobian_frobenius, expected, rtol=1e-7)

        hutchinson = flow.replace(trace=cnfax.Hutchinson("gaussian"))
        estimate = jax.jit(lambda k: hutchinson.log_prob_and_regularizers(x, key=k)[1])
        keys = jax.random.split(jax.random.key(1), 100)
        draws = np.concatenate([np.asarray(estimate(k).jacobian_frobenius) for k in keys])
        standard_error = draws.std() / math.sqrt(draws.size)
        assert abs(draws.mean() - expected) <= 5 * standard_error


def test_regularizers_do_not_change_the_steps_or_the_log_density():
    """The integrals are left out of step-size control: a field with a large kinetic
    energy takes exactly the steps of the plain solve and gives the same log p."""
    field = cnfax.ConcatSquashMLP(2, (16, 16), rngs=nnx.Rngs(0))
    flow = cnfax.CNF(field, t1=2.0)
    x = 3.0 * jax.random.normal(jax.random.key(1), (64, 2))
    logp, stats = flow.log_prob_and_stats(x)
    logp_reg, regs, stats_reg = flow.log_prob_and_regularizers(x)
    assert float(jnp.max(regs.kinetic_energy)) > 1.0  # would dominate an error norm
    assert int(stats_reg.steps) == int(stats.steps)
    np.testing.assert_array_equal(logp_reg, logp)


def test_regularised_gradients_under_backsolve_match_recursive_checkpoint():
    """The backward solve's seminorm ignores the regulariser adjoints; the gradient of the
    regularised loss must still be the one a stored trajectory gives."""
    with jax.enable_x64(True):
        field = cnfax.ConcatSquashMLP(2, (16, 16), param_dtype=jnp.float64, rngs=nnx.Rngs(3))
        x = jax.random.normal(jax.random.key(4), (32, 2), jnp.float64)
        tol = diffrax.PIDController(rtol=1e-8, atol=1e-8)
        backsolve = cnfax.CNF(field, t1=0.5, learn_t1=True, stepsize_controller=tol)
        checkpoint = backsolve.replace(adjoint=diffrax.RecursiveCheckpointAdjoint())
        objective = MaximumLikelihood(
            kinetic_energy_weight=0.5, jacobian_norm_weight=0.5, t1_penalty_weight=0.1
        )

        def grad(flow):
            g = nnx.grad(lambda f: objective(f, x, None)[0])(flow)
            return jnp.concatenate([jnp.ravel(v) for v in jax.tree.leaves(g)])

        g_back, g_ckpt = grad(backsolve), grad(checkpoint)
        unregularised = nnx.grad(lambda f: MaximumLikelihood()(f, x, None)[0])(backsolve)
        flat = jnp.concatenate([jnp.ravel(v) for v in jax.tree.leaves(unregularised)])
        assert float(jnp.linalg.norm(g_ckpt - flat)) > 1e-3  # the penalties do pull
        # Measured 2.5e-7 over 3 seeds; bound 40x that.
        assert float(jnp.linalg.norm(g_back - g_ckpt) / jnp.linalg.norm(g_ckpt)) <= 1e-5


class ConditionalField(nnx.Module):
    """The exact field of flow matching's path towards one point c:
    f(t, z) = (c - (1 - s) z) / (T (1 - (1 - s) t / T)), with s = sigma_min.
    For data concentrated at c this is also the marginal field, and the CNF it defines
    carries N(0, I) to N(c, s^2 I)."""

    def __init__(self, center, sigma_min, end_time):
        self.center = nnx.Param(jnp.asarray(center))
        self.sigma_min, self.end_time, self.dim = sigma_min, end_time, len(center)

    def __call__(self, t, z):
        shrink = 1 - self.sigma_min
        return (self.center[...] - shrink * z) / (self.end_time * (1 - shrink * t / self.end_time))


@pytest.mark.parametrize("coupling", ["independent", "ot"])
def test_flow_matching_loss_of_the_exact_conditional_field_is_zero(coupling):
    center, sigma_min, end_time = jnp.array([1.5, -0.5]), 0.1, 0.5
    flow = cnfax.CNF(ConditionalField(center, sigma_min, end_time), t1=end_time)
    objective = FlowMatching(sigma_min=sigma_min, coupling=coupling)
    data = np.tile(np.asarray(center, np.float32), (256, 1))
    pairs = objective.make_batch(data, np.random.default_rng(0))
    loss, (_, metrics) = objective(flow, jnp.asarray(pairs), jax.random.key(0))
    assert float(loss) <= 1e-9
    # a wrong field has a positive loss
    wrong = cnfax.CNF(ConditionalField(center + 0.1, sigma_min, end_time), t1=end_time)
    assert float(objective(wrong, jnp.asarray(pairs), jax.random.key(0))[0]) > 1e-3
    # and the CNF of the exact field has the closed-form density N(c, sigma_min^2 I)
    x = center + sigma_min * jax.random.normal(jax.random.key(1), (64, 2))
    expected = jax.scipy.stats.norm.logpdf(x, center, sigma_min).sum(-1)
    np.testing.assert_allclose(flow.log_prob(x), expected, atol=1e-3)


def pairing_cost(base, data):
    return float(np.sum((base - data) ** 2))


def cheapest_cost(base, data):
    """The least total squared distance over all pairings of the rows: by brute force over
    every permutation for n <= 7 (an independent reference), else by the Hungarian
    algorithm (scipy's linear_sum_assignment)."""
    cost = np.sum((data[:, None, :] - base[None, :, :]) ** 2, axis=-1)
    n = len(data)
    if n <= 7:
        perms = np.array(list(itertools.permutations(range(n))))
        return float(cost[np.arange(n), perms].sum(axis=1).min())
    rows, columns = linear_sum_assignment(cost)
    return float(cost[rows, columns].sum())


@settings(max_examples=examples(10), deadline=None)
@given(seed=st.integers(0, 2**16), n=st.integers(2, 40))
def test_optimal_transport_pairs_are_a_cheapest_permutation(seed, n):
    rng = np.random.default_rng(seed)
    base, data = rng.standard_normal((n, 3)), rng.standard_normal((n, 3))
    paired = optimal_transport_pairs(base, data)
    # a permutation of the base sample ...
    np.testing.assert_array_equal(np.sort(paired, axis=0), np.sort(base, axis=0))
    # ... of least cost (a float sum over n <= 40 terms: 1e-9 is far above its round-off)
    assert pairing_cost(paired, data) <= cheapest_cost(base, data) + 1e-9
    # and a shuffled copy of the data is paired back exactly
    np.testing.assert_array_equal(optimal_transport_pairs(rng.permutation(data), data), data)


def test_optimal_transport_pairs_cost_equals_the_brute_force_minimum():
    """300 fixed random problems with n = 2 to 7 points in 3 dimensions, each against the
    minimum over all n! pairings. A local search (greedy matching, then pairwise swaps
    until none helps) misses the minimum in about 1 of 8 of these; 40-point problems
    against the Hungarian algorithm catch it in almost all."""
    for seed in range(300):
        rng = np.random.default_rng(seed)
        n = 2 + seed % 6
        base, data = rng.standard_normal((n, 3)), rng.standard_normal((n, 3))
        cost = pairing_cost(optimal_transport_pairs(base, data), data)
        assert cost <= cheapest_cost(base, data) + 1e-9, (seed, n)
    for seed in range(5):
        rng = np.random.default_rng(seed)
        base, data = rng.standard_normal((40, 3)), rng.standard_normal((40, 3))
        cost = pairing_cost(optimal_transport_pairs(base, data), data)
        assert cost <= cheapest_cost(base, data) + 1e-9, seed


@pytest.mark.parametrize("n", [7, 64])
def test_flow_matching_batch_with_ot_coupling_pairs_each_data_point_optimally(n):
    """make_batch with coupling="ot" keeps the data rows in order and pairs them with base
    draws (a standard-normal sample) so that the total squared distance is the least of
    all pairings of the same rows: brute force for 7 points, Hungarian for 64. Random
    (independent) pairs of 7 or 64 points are almost never the cheapest."""
    rng = np.random.default_rng(n)
    data = (3.0 * rng.standard_normal((n, 2)) + 1.0).astype(np.float32)
    ot = FlowMatching(coupling="ot").make_batch(data, np.random.default_rng(1))
    assert ot.shape == (n, 2, 2) and ot.dtype == np.float32
    np.testing.assert_array_equal(ot[:, 1], data)
    base = ot[:, 0].astype(np.float64)
    assert pairing_cost(base, data) <= cheapest_cost(base, data) + 1e-4  # float32 rows
    independent = FlowMatching().make_batch(data, np.random.default_rng(1))
    np.testing.assert_array_equal(independent[:, 1], data)
    others = independent[:, 0].astype(np.float64)
    assert pairing_cost(others, data) > cheapest_cost(others, data) + 1.0


@pytest.mark.parametrize(
    "objective",
    [
        dict(objective="mle", kinetic_energy_weight=0.05, jacobian_norm_weight=0.05),
        dict(objective="flow-matching", coupling="ot", iters=60, lr=1e-2),
    ],
    ids=["rnode", "flow-matching"],
)
def test_a_short_run_with_each_objective_lowers_the_test_nll(tmp_path, objective):
    config = Config(**{"iters": 30, **SMALL_TRAINING, "run_dir": str(tmp_path), **objective})
    held_out = held_out_set(config.dataset, config.seed, 512)
    before, _ = held_out_nll(evaluation_flow(build_flow(config, 2)), held_out)
    last = train(config)
    _, trained, _ = restore_flow(tmp_path)
    after, nfe = held_out_nll(evaluation_flow(trained), held_out)
    assert after < before - 0.2, (before, after)
    assert nfe > 0
    logged = (
        {"kinetic_energy", "jacobian_frobenius"} if config.objective == "mle" else {"flow_matching"}
    )
    assert logged <= set(last)
