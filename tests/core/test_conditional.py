"""Conditional flows p(x | y): the unconditional flow's guarantees, per condition.

Invertibility given y, a closed form (conditional linear field), normalisation for two
conditions, batch invariance with a different y per point, BacksolveAdjoint gradients
reaching the embedding, flow matching's minimiser for a conditional Gaussian, sampling
shapes, every bad input, and conditional batches over several devices.
"""

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import diffrax
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from helpers import examples
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp
from jax.scipy.linalg import expm
from jax.scipy.stats import multivariate_normal

import cnfax
from cnfax.objectives import FlowMatching, MaximumLikelihood, conditional_batch

seeds = st.integers(0, 2**16)
DIM, COND, N = 2, 3, 16  # data width, raw condition width, points


def tight(tol):
    return diffrax.PIDController(rtol=tol, atol=tol)


def conditional_field(seed, dtype=jnp.float32, field_type=cnfax.ConcatSquashMLP, width=COND):
    return field_type(DIM, (16, 16), condition_dim=width, param_dtype=dtype, rngs=nnx.Rngs(seed))


def embedding(seed, dtype=jnp.float32, features=4):
    """A small embedding net (raw width COND -> features), trained with the field."""
    return nnx.Sequential(
        nnx.Linear(COND, 8, param_dtype=dtype, rngs=nnx.Rngs(seed)),
        jnp.tanh,
        nnx.Linear(8, features, param_dtype=dtype, rngs=nnx.Rngs(seed + 1)),
    )


def points(seed, dtype, n=N, width=DIM, scale=1.5):
    return scale * jax.random.normal(jax.random.key(seed), (n, width), dtype)


def flat(tree):
    return jnp.concatenate([jnp.ravel(v) for v in jax.tree.leaves(tree)])


# ----------------------------------------------------------------------------- invertibility


@pytest.mark.parametrize("field_type", [cnfax.ConcatSquashMLP, cnfax.ConcatMLP])
@settings(max_examples=examples(3))
@given(seed=seeds)
def test_inverse_undoes_forward_given_each_points_condition(field_type, seed):
    """forward(inverse(x | y) | y) = x with one y per point (through an embedding), and
    the map depends on y. Round trip: worst over 10 seeds 1.7e-8 (ConcatSquash) and 1.2e-8
    (Concat) at rtol = atol = 1e-8, bound 1e-6. Reversing the conditions moves each of the
    first 8 base points by at least 0.067 (max-norm, worst over 10 seeds); bound 0.01."""
    with jax.enable_x64(True):
        flow = cnfax.CNF(
            conditional_field(seed, jnp.float64, field_type, width=4),
            embedding=embedding(seed, jnp.float64),
            t1=1.0,
            stepsize_controller=tight(1e-8),
        )
        x = points(seed + 1, jnp.float64)
        y = points(seed + 2, jnp.float64, width=COND)
        z = flow.inverse(x, condition=y)
        assert float(jnp.max(jnp.abs(flow.forward(z, condition=y) - x))) <= 1e-6
        other = flow.inverse(x, condition=y[::-1])
        assert float(jnp.min(jnp.max(jnp.abs(other - z), axis=1)[: N // 2])) > 0.01


# ----------------------------------------------------------------------------- closed form


class ConditionalLinearField(nnx.Module):
    """f(t, z, h) = A z + B h, with condition features h of width ``B.shape[1]``."""

    def __init__(self, a, b):
        self.a, self.b = nnx.Param(jnp.asarray(a)), nnx.Param(jnp.asarray(b))
        self.dim, self.condition_dim = self.b.shape

    def __call__(self, t, z, h):
        return z @ self.a[...].T + h @ self.b[...].T


def linear_conditional_law(a, b, h, end_time):
    """The law of x = z(T) given h for dz/dt = A z + B h, z(0) ~ N(0, I).

    h is constant along the path, so variation of constants gives

        z(T) = e^{AT} z(0) + int_0^T e^{A(T - s)} B h ds = e^{AT} z(0) + G B h,
        G = int_0^T e^{As} ds,

    an affine map of a standard normal: x | h ~ N(mu(h), Sigma) with mu(h) = G B h and
    Sigma = e^{AT} e^{A^T T}. G is the top-right block of exp([[A, I], [0, 0]] T) (no
    inverse of A needed: the block is sum_k A^k T^{k+1} / (k+1)!).
    Returns (mu of each row of h, Sigma, e^{AT}).
    """
    d = a.shape[0]
    big = jnp.block([[a, jnp.eye(d)], [jnp.zeros((d, d)), jnp.zeros((d, d))]])
    g = expm(big * end_time)[:d, d:]
    flow_map = expm(a * end_time)
    return h @ (g @ b).T, flow_map @ flow_map.T, flow_map


matrices = hnp.arrays(np.float64, (DIM, DIM), elements=st.floats(-1.0, 1.0))


@settings(max_examples=examples(4))
@given(a=matrices, b=hnp.arrays(np.float64, (DIM, 2), elements=st.floats(-2, 2)), seed=seeds)
def test_conditional_linear_field_matches_its_gaussian_closed_form(a, b, seed):
    """For f = A z + B h(y), with a linear embedding h(y) = W y + c, x | y is Gaussian
    (linear_conditional_law): log p(x | y) and forward(z | y) equal the closed form with
    one y per point. Worst over 10 draws at rtol = atol = 1e-10: 2.9e-9 (log p) and
    1.2e-10 (forward); bound 1e-7."""
    with jax.enable_x64(True):
        embed = nnx.Linear(COND, 2, param_dtype=jnp.float64, rngs=nnx.Rngs(seed))
        flow = cnfax.CNF(
            ConditionalLinearField(a, b),
            embedding=embed,
            t1=0.7,
            stepsize_controller=tight(1e-10),
        )
        x = points(seed + 1, jnp.float64, n=8)
        y = points(seed + 2, jnp.float64, n=8, width=COND)
        h = y @ embed.kernel[...] + embed.bias[...]
        mean, cov, flow_map = linear_conditional_law(jnp.asarray(a), jnp.asarray(b), h, 0.7)
        expected = jnp.stack([multivariate_normal.logpdf(x[i], mean[i], cov) for i in range(8)])
        np.testing.assert_allclose(flow.log_prob(x, condition=y), expected, rtol=0, atol=1e-7)
        z = points(seed + 3, jnp.float64, n=8)
        np.testing.assert_allclose(
            flow.forward(z, condition=y), z @ flow_map.T + mean, rtol=0, atol=1e-7
        )


# ----------------------------------------------------------------------------- normalisation


@settings(max_examples=examples(2))
@given(seed=seeds)
def test_density_integrates_to_one_for_each_of_two_conditions(seed):
    """Riemann sums of exp(log p(x | y)) over [-8, 8]^2 (spacing 0.1) are 1 within 1e-3 for
    y = -1 and y = 1.5 (measured 8e-6 over 6 seeds: the field moves mass by about |f| T,
    so little leaves the box, and the grid error of a smooth density at this spacing is
    far smaller), and the two densities differ: total variation 0.07 to 0.71 over 6
    seeds, bound 0.02."""
    flow = cnfax.CNF(conditional_field(seed, width=1), t1=0.5)
    axis = jnp.linspace(-8.0, 8.0, 161)
    grid = jnp.stack(jnp.meshgrid(axis, axis), -1).reshape(-1, 2)
    cell = (axis[1] - axis[0]) ** 2
    densities = [jnp.exp(flow.log_prob(grid, condition=jnp.array([y]))) for y in (-1.0, 1.5)]
    for density in densities:
        assert abs(float(jnp.sum(density) * cell) - 1.0) <= 1e-3
    assert float(0.5 * jnp.sum(jnp.abs(densities[0] - densities[1])) * cell) > 0.02


# ----------------------------------------------------------------------------- batch invariance


class TestBatchInvarianceWithOneConditionPerPoint:
    """log p(x_i | y_i) must not depend on the other points of the batch or their y."""

    @settings(max_examples=examples(3))
    @given(seed=seeds, perm_seed=seeds)
    def test_shared_solve_with_per_point_norm(self, seed, perm_seed):
        """Alone and in a batch of 64 with far-out points and other conditions: the gap
        relative to (1 + |log p|) measured up to 7.6e-8 at tol 1e-7 (40 points over 10
        seeds); bound 10 x tol x (1 + |log p|). y is not in the state, so the
        max-over-points norm sees only each point's (z, delta_logp)."""
        tol = 1e-7
        with jax.enable_x64(True):
            flow = cnfax.CNF(
                conditional_field(seed, jnp.float64), t1=1.0, stepsize_controller=tight(tol)
            )
            mine = points(seed + 1, jnp.float64, n=4, scale=1.0)
            my_y = points(seed + 2, jnp.float64, n=4, width=COND, scale=1.0)
            others = points(perm_seed, jnp.float64, n=60, scale=3.0)
            other_y = points(perm_seed + 1, jnp.float64, n=60, width=COND, scale=3.0)
            perm = jax.random.permutation(jax.random.key(perm_seed), 64)
            batch = jnp.concatenate([mine, others])[perm]
            batch_y = jnp.concatenate([my_y, other_y])[perm]
            in_batch = flow.log_prob(batch, condition=batch_y)
            where = jnp.argsort(perm)[:4]  # the rows of batch that hold `mine`
            for i in range(4):
                alone = flow.log_prob(mine[i : i + 1], condition=my_y[i : i + 1])[0]
                gap = abs(float(in_batch[where[i]] - alone))
                assert gap <= 10 * tol * (1 + abs(float(alone))), gap

    @settings(max_examples=examples(2))
    @given(seed=seeds, perm_seed=seeds)
    def test_per_sample_solve_is_exactly_invariant(self, seed, perm_seed):
        """per_sample=True vmaps the condition with the points: each point's solve is its
        own, so permuting the batch permutes the answers to rounding (1e-12)."""
        with jax.enable_x64(True):
            flow = cnfax.CNF(
                conditional_field(seed, jnp.float64),
                t1=1.0,
                stepsize_controller=tight(1e-6),
                per_sample=True,
            )
            x = points(seed + 1, jnp.float64, scale=2.5)
            y = points(seed + 2, jnp.float64, width=COND, scale=2.0)
            perm = jax.random.permutation(jax.random.key(perm_seed), N)
            logp = flow.log_prob(x, condition=y)
            alone = jnp.stack([flow.log_prob(x[i], condition=y[i]) for i in range(3)])
            np.testing.assert_allclose(logp[:3], alone, rtol=1e-12, atol=1e-12)
            np.testing.assert_allclose(
                flow.log_prob(x[perm], condition=y[perm]), logp[perm], rtol=1e-12, atol=1e-12
            )


# ----------------------------------------------------------------------------- gradients


@settings(max_examples=examples(2))
@given(seed=seeds, trace=st.sampled_from(["exact", "hutchinson"]))
def test_backsolve_gradients_reach_the_embedding_and_match_recursive_checkpoint(seed, trace):
    """d(-mean log p(x | y)) under BacksolveAdjoint equals RecursiveCheckpointAdjoint's,
    field, end time and embedding alike: the features travel in the ODE's args, whose
    adjoint the backward solve integrates. Relative error at rtol = atol = 1e-8 measured
    up to 2.5e-8 (exact) and 2.7e-8 (Hutchinson) over 5 seeds, embedding alone or all
    parameters; bound 1e-6.
    With Hutchinson both adjoints differentiate the same (key-fixed) estimator."""
    with jax.enable_x64(True):
        flow = cnfax.CNF(
            conditional_field(seed, jnp.float64, width=4),
            embedding=embedding(seed, jnp.float64),
            t1=0.5,
            learn_t1=True,
            trace=cnfax.Hutchinson("gaussian") if trace == "hutchinson" else None,
            stepsize_controller=tight(1e-8),
        )
        x = points(seed + 1, jnp.float64, n=32)
        y = points(seed + 2, jnp.float64, n=32, width=COND)
        key = jax.random.key(seed)

        def grads(flow):
            loss = lambda f: -jnp.mean(f.log_prob(x, condition=y, key=key))  # noqa: E731
            return nnx.to_pure_dict(nnx.jit(nnx.grad(loss))(flow))

        back = grads(flow)
        ckpt = grads(flow.replace(adjoint=diffrax.RecursiveCheckpointAdjoint()))
        for got, expected in [(back["embedding"], ckpt["embedding"]), (back, ckpt)]:
            got, expected = flat(got), flat(expected)
            assert float(jnp.linalg.norm(expected)) > 1e-3, "the embedding should matter"
            error = float(jnp.linalg.norm(got - expected) / jnp.linalg.norm(expected))
            assert error <= 1e-6, error


# ----------------------------------------------------------------------------- flow matching


class GaussianMarginalField(nnx.Module):
    """The exact flow-matching field for data x | y ~ N(m(y), s^2 I), m(y) = M y + b.

    On the path x_tau = a x0 + tau x1 with a = 1 - (1 - sigma) tau, x0 ~ N(0, I) and
    u = x1 - (1 - sigma) x0, (x_tau, u) is jointly Gaussian given y:
    x_tau ~ N(tau m, (a^2 + tau^2 s^2) I), E u = m, Cov(u, x_tau) = (tau s^2 - (1 - sigma) a) I,
    so E[u | x_tau, y] = m + k(tau) (x_tau - tau m), k = (tau s^2 - (1 - sigma) a) /
    (a^2 + tau^2 s^2), and the loss E|T f - u|^2 is minimised by f = E[u | x_tau, y] / T
    at t = tau T. Its flow carries N(0, I) to N(m(y), (s^2 + sigma^2) I) for every y.
    """

    def __init__(self, mean_map, offset, data_std, sigma_min, end_time):
        self.mean_map = nnx.Param(jnp.asarray(mean_map))
        self.offset = nnx.Param(jnp.asarray(offset))
        self.data_std, self.sigma_min, self.end_time = data_std, sigma_min, end_time
        self.dim, self.condition_dim = self.mean_map.shape

    def __call__(self, t, z, y):
        tau = t / self.end_time
        a = 1 - (1 - self.sigma_min) * tau
        s2 = self.data_std**2
        k = (tau * s2 - (1 - self.sigma_min) * a) / (a * a + tau * tau * s2)
        m = y @ self.mean_map[...].T + self.offset[...]
        return (m + k * (z - tau * m)) / self.end_time


MEAN_MAP = np.array([[1.0, -0.5], [0.3, 0.8]], np.float32)
OFFSET = np.array([0.5, -1.0], np.float32)


def gaussian_case(mean_map, data_std, sigma_min=0.1, end_time=0.5):
    """The flow of GaussianMarginalField behind an identity linear embedding (so that
    gradients with respect to the embedding are measured too)."""
    embed = nnx.Linear(2, 2, rngs=nnx.Rngs(0))
    embed.kernel[...], embed.bias[...] = jnp.eye(2), jnp.zeros(2)
    field = GaussianMarginalField(mean_map, OFFSET, data_std, sigma_min, end_time)
    return cnfax.CNF(field, embedding=embed, t1=end_time)


def conditional_gaussian_data(seed, n, data_std):
    rng = np.random.default_rng(seed)
    y = rng.standard_normal((n, 2)).astype(np.float32)
    x = y @ MEAN_MAP.T + OFFSET + data_std * rng.standard_normal((n, 2))
    return conditional_batch(x.astype(np.float32), y), rng


@settings(max_examples=examples(3))
@given(seed=seeds)
def test_the_exact_conditional_marginal_field_minimises_the_flow_matching_loss(seed):
    """At the exact field the loss's gradient (field's M, b and the embedding's W, c)
    vanishes up to sampling noise (~1/sqrt(pairs)), over 65536 independent pairs: its norm
    per parameter measured <= 0.022 over 8 seeds, bound 0.06. With M off by 0.1 the largest
    is >= 0.68. The CNF of the exact field has the closed-form conditional density:
    log p(x | y) within 5.5e-5 of it over 8 seeds (float32, default tolerances); bound 5e-4."""
    objective = FlowMatching(sigma_min=0.1)
    data, rng = conditional_gaussian_data(seed, 65536, data_std=0.5)
    batch = jax.tree.map(jnp.asarray, objective.make_batch(data, rng))
    key = jax.random.key(seed)

    def gradient_norms(flow):
        grads = nnx.grad(lambda f: objective(f, batch, key)[0])(flow)
        return [float(jnp.linalg.norm(g)) for g in jax.tree.leaves(nnx.to_pure_dict(grads))]

    exact = gaussian_case(MEAN_MAP, 0.5)
    assert max(gradient_norms(exact)) <= 0.06, gradient_norms(exact)
    assert max(gradient_norms(gaussian_case(MEAN_MAP + 0.1, 0.5))) > 0.3
    # The flow of the minimiser: x | y ~ N(M y + b, (s^2 + sigma^2) I).
    x, y = data["x"][:32], data["condition"][:32]
    expected = jax.scipy.stats.norm.logpdf(x, y @ MEAN_MAP.T + OFFSET, np.sqrt(0.26)).sum(-1)
    np.testing.assert_allclose(exact.log_prob(x, condition=y), expected, rtol=0, atol=5e-4)


def test_flow_matching_loss_is_zero_for_point_masses_given_y():
    """Data x | y = m(y) exactly (s = 0): the exact field regresses u with zero error."""
    objective = FlowMatching(sigma_min=0.1)
    data, rng = conditional_gaussian_data(0, 512, data_std=0.0)
    batch = jax.tree.map(jnp.asarray, objective.make_batch(data, rng))
    loss, (_, metrics) = objective(gaussian_case(MEAN_MAP, 0.0), batch, jax.random.key(0))
    assert float(loss) <= 1e-9 and float(metrics["flow_matching"]) == float(loss)


def test_flow_matching_refuses_ot_pairs_with_a_condition():
    objective = FlowMatching(coupling="ot")
    data, rng = conditional_gaussian_data(0, 8, data_std=0.5)
    with pytest.raises(ValueError, match="coupling='ot'.*biases the base distribution"):
        objective.make_batch(data, rng)
    pairs = FlowMatching().make_batch(data, rng)
    with pytest.raises(ValueError, match="coupling='ot'"):
        objective(gaussian_case(MEAN_MAP, 0.5), pairs, jax.random.key(0))
    # without a condition OT pairs stay available
    assert objective.make_batch(data["x"], rng).shape == (8, 2, 2)


def test_maximum_likelihood_takes_conditional_batches():
    """The objective's NLL is -mean log p(x | y) and its gradient reaches the embedding."""
    flow = cnfax.CNF(conditional_field(0, width=4), embedding=embedding(0))
    x, y = points(1, jnp.float32), points(2, jnp.float32, width=COND)
    batch = MaximumLikelihood().make_batch(conditional_batch(x, y), np.random.default_rng(0))
    loss, (stats, metrics) = MaximumLikelihood()(flow, batch, None)
    np.testing.assert_allclose(loss, -jnp.mean(flow.log_prob(x, condition=y)), rtol=1e-6)
    assert bool(stats.success)
    loss_of = lambda f, batch: MaximumLikelihood()(f, batch, None)[0]  # noqa: E731
    grads = nnx.to_pure_dict(nnx.jit(nnx.grad(loss_of))(flow, batch))
    assert float(jnp.linalg.norm(flat(grads["embedding"]))) > 0


# ----------------------------------------------------------------------------- sampling


@settings(max_examples=examples(3))
@given(seed=seeds, key=seeds)
def test_sample_shapes_follow_the_condition(seed, key):
    """A condition (c,) gives n draws from p(. | y) (other draws for another y); (n, c)
    one draw per row, row i drawn given y_i: from the same base draws, row i equals the
    draw made with y_i for every row, to the solver's tolerance (measured 7.6e-7 over 6
    seeds, bound 2e-5). sample_and_log_prob agrees with log_prob of its samples given
    their conditions (9.5e-7, bound 2e-5)."""
    flow = cnfax.CNF(conditional_field(seed, width=4), embedding=embedding(seed), t1=0.5)
    y = points(seed + 1, jnp.float32, n=5, width=COND)
    k = jax.random.key(key)
    draws = flow.sample(k, 7, condition=y[0])
    assert draws.shape == (7, DIM)
    assert float(jnp.max(jnp.abs(draws - flow.sample(k, 7, condition=y[1])))) > 1e-3
    per_row = flow.sample(k, 5, condition=y)
    assert per_row.shape == (5, DIM)
    for i in range(5):
        alone = flow.sample(k, 5, condition=y[i])[i]
        np.testing.assert_allclose(per_row[i], alone, rtol=0, atol=2e-5)
    x, logp = flow.sample_and_log_prob(k, 5, condition=y)
    assert x.shape == (5, DIM) and logp.shape == (5,)
    np.testing.assert_allclose(flow.log_prob(x, condition=y), logp, rtol=0, atol=2e-5)
    single = flow.log_prob(x[0], condition=y[0])
    assert single.shape == () and abs(float(single - logp[0])) <= 2e-5
    path = flow.trajectory(x, jnp.array([0.0, 0.25, 0.5]), condition=y)
    assert path.shape == (3, 5, DIM)


# ----------------------------------------------------------------------------- bad input


@pytest.fixture(scope="module")
def conditional_flow():
    return cnfax.CNF(conditional_field(0, width=4), embedding=embedding(0))


@pytest.fixture(scope="module")
def unconditional_flow():
    return cnfax.CNF(cnfax.ConcatSquashMLP(DIM, (8,), rngs=nnx.Rngs(0)))


BAD_CONDITIONS = {
    "this CNF is conditional": None,
    "condition has last dimension 2": jnp.zeros((4, 2)),
    "condition has batch size 3": jnp.zeros((3, COND)),
    "condition must have a floating dtype": jnp.zeros((4, COND), jnp.int32),
    "condition contains NaN or inf": jnp.zeros((4, COND)).at[2, 1].set(jnp.inf),
    "condition must have shape": jnp.zeros((4, 1, COND)),
}
METHODS = {
    "log_prob": lambda f, y: f.log_prob(jnp.zeros((4, DIM)), condition=y),
    "log_prob_and_stats": lambda f, y: f.log_prob_and_stats(jnp.zeros((4, DIM)), condition=y),
    "log_prob_and_regularizers": lambda f, y: f.log_prob_and_regularizers(
        jnp.zeros((4, DIM)), condition=y
    ),
    "inverse": lambda f, y: f.inverse(jnp.zeros((4, DIM)), condition=y),
    "forward": lambda f, y: f.forward(jnp.zeros((4, DIM)), condition=y),
    "forward_and_log_prob": lambda f, y: f.forward_and_log_prob(jnp.zeros((4, DIM)), condition=y),
    "sample": lambda f, y: f.sample(jax.random.key(0), 4, condition=y),
    "sample_and_log_prob": lambda f, y: f.sample_and_log_prob(jax.random.key(0), 4, condition=y),
    "trajectory": lambda f, y: f.trajectory(jnp.zeros((4, DIM)), jnp.array([0.0]), condition=y),
}


@pytest.fixture
def no_solve(monkeypatch):
    """Any solve fails the test: the checks must come before it."""

    def solve_block(*args, **kwargs):
        raise AssertionError("a solve started before the input was checked")

    monkeypatch.setattr(cnfax.core.flow, "solve_block", solve_block)


@pytest.mark.parametrize("problem", sorted(BAD_CONDITIONS))
@pytest.mark.parametrize("method", sorted(METHODS))
def test_bad_condition_is_a_value_error_naming_the_problem_before_any_solve(
    conditional_flow, no_solve, problem, method
):
    with pytest.raises(ValueError, match=problem):
        METHODS[method](conditional_flow, BAD_CONDITIONS[problem])


@pytest.mark.parametrize("method", sorted(METHODS))
def test_unconditional_flow_refuses_a_condition_before_any_solve(
    unconditional_flow, no_solve, method
):
    with pytest.raises(ValueError, match="this CNF is unconditional"):
        METHODS[method](unconditional_flow, jnp.zeros((4, COND)))


@given(
    row=st.integers(0, 3), column=st.integers(0, COND - 1), value=st.sampled_from([np.nan, np.inf])
)
def test_any_non_finite_condition_entry_is_caught(conditional_flow, row, column, value):
    y = np.zeros((4, COND), np.float32)
    y[row, column] = value
    with pytest.raises(ValueError, match="condition contains NaN or inf"):
        conditional_flow.log_prob(np.zeros((4, DIM), np.float32), condition=y)


def test_non_finite_condition_under_jit_is_an_error_not_a_number(conditional_flow):
    y = jnp.zeros((4, COND)).at[0, 0].set(jnp.nan)
    with pytest.raises(Exception, match="condition contains NaN or inf"):
        nnx.jit(lambda f, y: f.log_prob(jnp.zeros((4, DIM)), condition=y))(
            conditional_flow, y
        ).block_until_ready()


def test_single_point_takes_a_single_condition(conditional_flow):
    with pytest.raises(ValueError, match="batch size 2.*a single point"):
        conditional_flow.log_prob(jnp.zeros(DIM), condition=jnp.zeros((2, COND)))
    with pytest.raises(ValueError, match="batch size 3.*4 points"):
        conditional_flow.sample(jax.random.key(0), 4, condition=jnp.zeros((3, COND)))


class Unsized(nnx.Module):
    """An embedding that does not say its input width."""

    def __init__(self, inner):
        self.inner = inner

    def __call__(self, y):
        return self.inner(y)


def test_inconsistent_widths_are_refused_when_the_flow_is_built():
    field = conditional_field(0, width=4)
    with pytest.raises(ValueError, match=r"maps conditions \(1, 3\) to shape \(1, 5\)"):
        cnfax.CNF(field, embedding=nnx.Linear(COND, 5, rngs=nnx.Rngs(0)))
    with pytest.raises(ValueError, match="does not accept conditions of width 2"):
        cnfax.CNF(field, embedding=embedding(0), condition_dim=2)
    with pytest.raises(ValueError, match="no in_features.*condition_dim="):
        cnfax.CNF(field, embedding=Unsized(nnx.Linear(COND, 4, rngs=nnx.Rngs(0))))
    assert cnfax.CNF(field, embedding=embedding(0)).condition_dim == COND  # first layer's
    assert cnfax.CNF(field, embedding=embedding(0), condition_dim=COND).condition_dim == COND
    with pytest.raises(ValueError, match="field is unconditional"):
        cnfax.CNF(cnfax.ConcatMLP(DIM, (8,), rngs=nnx.Rngs(0)), embedding=embedding(0))
    with pytest.raises(
        ValueError, match="condition_dim=3 but the field takes conditions of width 4"
    ):
        cnfax.CNF(field, condition_dim=3)
    with pytest.raises(ValueError, match="share one condition_dim"):
        cnfax.CNF([field, conditional_field(1, width=2)])
    with pytest.raises(ValueError, match="condition_dim must be a non-negative integer"):
        cnfax.ConcatSquashMLP(DIM, (8,), condition_dim=-1, rngs=nnx.Rngs(0))


def test_flow_matching_checks_the_condition_against_the_flow(conditional_flow):
    pairs = jnp.zeros((4, 2, DIM))
    with pytest.raises(ValueError, match="this CNF is conditional"):
        FlowMatching()(conditional_flow, pairs, jax.random.key(0))
    with pytest.raises(ValueError, match="batch size 3"):
        FlowMatching()(conditional_flow, conditional_batch(pairs, jnp.zeros((3, COND))), None)
    with pytest.raises(ValueError, match="keys 'x' and 'condition'"):
        MaximumLikelihood()(conditional_flow, {"x": pairs[:, 0], "y": jnp.zeros((4, COND))}, None)


# ----------------------------------------------------------------------------- devices


SHARDED = """
import json, jax, jax.numpy as jnp, numpy as np, cnfax
from flax import nnx
from cnfax.objectives import FlowMatching, MaximumLikelihood, conditional_batch
from cnfax.parallel import (data_mesh, data_parallel_log_prob, data_parallel_loss_and_grad,
                            local_rows, shard_batch)
mesh = data_mesh()
field = cnfax.ConcatSquashMLP(2, (8,), condition_dim=3, rngs=nnx.Rngs(0))
flow = cnfax.CNF(field, embedding=nnx.Linear(2, 3, rngs=nnx.Rngs(1)))
x, y = (np.asarray(jax.random.normal(jax.random.key(i), (16, 2))) for i in (1, 2))
step = nnx.jit(data_parallel_loss_and_grad, static_argnames=("objective", "mesh"))
batch = shard_batch(local_rows(conditional_batch(x, y)), mesh)
_, _, _, grads = step(MaximumLikelihood(), flow, batch, jax.random.key(3), mesh)
parts = zip(np.split(x, 4), np.split(y, 4))
# one jitted per-shard gradient, the shard as its arguments: compiled once, run 4 times
shard_grad = nnx.jit(lambda f, p, q: nnx.grad(lambda g: -jnp.mean(g.log_prob(p, condition=q)))(f))
per_shard = [shard_grad(flow, p, q) for p, q in parts]
mean = jax.tree.map(lambda *g: sum(g) / 4, *per_shard)
flat = lambda t: jnp.concatenate([jnp.ravel(v) for v in jax.tree.leaves(t)])
error = jnp.linalg.norm(flat(grads) - flat(mean)) / jnp.linalg.norm(flat(mean))
log_prob = nnx.jit(data_parallel_log_prob, static_argnames="mesh")
logp, _ = log_prob(flow, shard_batch(x, mesh), mesh, shard_batch(y, mesh))
fm = FlowMatching().make_batch(conditional_batch(x, y), np.random.default_rng(0))
fm_loss, _, _, _ = step(FlowMatching(), flow, shard_batch(fm, mesh), jax.random.key(4), mesh)
print(json.dumps({"devices": jax.device_count(), "gradient_error": float(error),
                  "log_prob_gap": float(jnp.max(jnp.abs(logp - flow.log_prob(x, condition=y)))),
                  "sharding": str(batch["condition"].sharding.spec),
                  "fm_loss": float(fm_loss)}))
"""


def test_conditional_batches_shard_over_four_devices():
    """shard_batch splits a conditional batch's x and y alike, and the sharded gradient of
    maximum likelihood (embedding included) is the mean of per-shard gradients (measured
    2e-9 relative); sharded log p(x | y) equals the one-device answer to the tolerance."""
    flags = f"{os.environ.get('XLA_FLAGS', '')} --xla_force_host_platform_device_count=4"
    env = dict(os.environ, XLA_FLAGS=flags)
    env["JAX_PLATFORMS"] = "cpu"
    env["PYTHONPATH"] = str(Path(cnfax.__file__).parents[1])  # this checkout's cnfax
    done = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(SHARDED)],
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    report = json.loads(done.stdout.strip().splitlines()[-1])
    assert report["devices"] == 4 and report["sharding"] in ("P('data',)", "PartitionSpec('data',)")
    assert report["gradient_error"] <= 1e-5
    assert report["log_prob_gap"] <= 1e-4
    assert np.isfinite(report["fm_loss"])
