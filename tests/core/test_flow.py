"""CNF properties: invertibility, closed forms (also of a time-dependent field),
normalisation, batch invariance, sampling."""

import diffrax
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from helpers import LinearField, TimeLinearField, elapsed, examples, linear_flow_log_prob
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

import cnfax

seeds = st.integers(0, 2**16)
DIM = 2
N = 16


def random_field(seed, dtype=jnp.float32):
    return cnfax.ConcatSquashMLP(
        DIM, (16, 16), activation="tanh", param_dtype=dtype, rngs=nnx.Rngs(seed)
    )


def tight(tol):
    return diffrax.PIDController(rtol=tol, atol=tol)


def base_points(seed, dtype, scale=1.5):
    return scale * jax.random.normal(jax.random.key(seed), (N, DIM), dtype)


# Round-trip bounds: about 100x the worst error measured over 10 seeds (dopri5 1.3e-8,
# tsit5 4.2e-9 at rtol = atol = 1e-8). Fixed-step RK4 at dt = 0.005 round-trips to 2.8e-15
# (bound 1e-13, 35x); a second-order method in its place (midpoint) misses by 2e-10 or more.
ROUND_TRIP_F64 = {"dopri5": 1e-6, "tsit5": 5e-7, "rk4-fixed": 1e-13}
SOLVERS_F64 = {
    "dopri5": dict(solver=diffrax.Dopri5(), stepsize_controller=tight(1e-8)),
    "tsit5": dict(solver=diffrax.Tsit5(), stepsize_controller=tight(1e-8)),
    "rk4-fixed": dict(
        solver=cnfax.RK4(), stepsize_controller=diffrax.ConstantStepSize(), dt0=0.005
    ),
}


@pytest.mark.parametrize("solver", sorted(SOLVERS_F64))
@settings(max_examples=examples(3))
@given(seed=seeds)
def test_inverse_undoes_forward_in_float64(solver, seed):
    with jax.enable_x64(True):
        flow = cnfax.CNF(random_field(seed, jnp.float64), t1=0.5, **SOLVERS_F64[solver])
        z = base_points(seed + 1, jnp.float64)
        x = flow.forward(z)
        assert not np.allclose(x, z, atol=1e-2), "the flow should move the points"
        error = jnp.abs(flow.inverse(x) - z) / jnp.maximum(1.0, jnp.abs(z))
        assert jnp.max(error) <= ROUND_TRIP_F64[solver]


# Measured worst over 10 seeds: dopri5 1.2e-5, tsit5 2.8e-6 (rtol = atol = 1e-5), Heun at
# dt = 0.01 5.8e-7. Bounds 17x to 36x above (float32 round-off varies more between seeds).
ROUND_TRIP_F32 = {"dopri5": 2e-4, "tsit5": 1e-4, "heun-fixed": 2e-5}
SOLVERS_F32 = {
    "dopri5": dict(),
    "tsit5": dict(solver=diffrax.Tsit5()),
    "heun-fixed": dict(
        solver=diffrax.Heun(), stepsize_controller=diffrax.ConstantStepSize(), dt0=0.01
    ),
}


@pytest.mark.parametrize("solver", sorted(SOLVERS_F32))
@settings(max_examples=examples(3))
@given(seed=seeds)
def test_inverse_undoes_forward_in_float32_at_default_tolerances(solver, seed):
    flow = cnfax.CNF(random_field(seed), t1=0.5, **SOLVERS_F32[solver])
    z = base_points(seed + 1, jnp.float32)
    error = jnp.abs(flow.inverse(flow.forward(z)) - z) / jnp.maximum(1.0, jnp.abs(z))
    assert jnp.max(error) <= ROUND_TRIP_F32[solver]


matrices = hnp.arrays(np.float64, (DIM, DIM), elements=st.floats(-1.0, 1.0))


@pytest.mark.parametrize("per_sample", [False, True], ids=["shared", "per-sample"])
@given(a=matrices, seed=seeds)
def test_linear_field_log_prob_matches_closed_form_float64(per_sample, a, seed):
    with jax.enable_x64(True):
        end_time = 0.7
        flow = cnfax.CNF(
            LinearField(a), t1=end_time, stepsize_controller=tight(1e-10), per_sample=per_sample
        )
        x = base_points(seed, jnp.float64, scale=2.0)
        expected = linear_flow_log_prob([jnp.asarray(a)], end_time, x)
        np.testing.assert_allclose(flow.log_prob(x), expected, rtol=0, atol=1e-6)


@given(a=matrices, seed=seeds)
def test_linear_field_log_prob_matches_closed_form_float32_defaults(a, seed):
    a32 = np.asarray(a, np.float32)
    flow = cnfax.CNF(LinearField(a32), t1=0.5)
    x = base_points(seed, jnp.float32, scale=2.0)
    with jax.enable_x64(True):
        expected = linear_flow_log_prob([jnp.asarray(a32, jnp.float64)], 0.5, x.astype(jnp.float64))
    np.testing.assert_allclose(flow.log_prob(x), expected, rtol=0, atol=1e-3)


@settings(max_examples=examples(3))
@given(a1=matrices, a2=matrices, seed=seeds)
def test_time_dependent_blocks_compose_and_their_log_densities_add(a1, a2, seed):
    """Blocks f_b = (1 + t) A_b z, each over its own [0, T]: block b maps z to
    e^{A_b c(T)} z with c(T) = T + T^2 / 2, so forward, inverse and log p have closed
    forms in which the field's time matters (at s instead of T s the map would be
    e^{1.5 A_b T}). Measured over 6 draws at rtol = atol = 1e-10: log p 4.6e-9, forward
    and inverse 1.6e-10. Bounds: 5e-7 and 1e-8 (about 100x and 60x)."""
    with jax.enable_x64(True):
        flow = cnfax.CNF(
            [TimeLinearField(a1), TimeLinearField(a2)], t1=0.4, stepsize_controller=tight(1e-10)
        )
        x = base_points(seed, jnp.float64)
        expected = linear_flow_log_prob([jnp.asarray(a1), jnp.asarray(a2)], elapsed(0.4), x)
        np.testing.assert_allclose(flow.log_prob(x), expected, rtol=0, atol=5e-7)
        # forward applies block 1 then block 2; inverse undoes both
        z = base_points(seed + 1, jnp.float64)
        expm = jax.scipy.linalg.expm
        manual = z @ expm(a1 * elapsed(0.4)).T @ expm(a2 * elapsed(0.4)).T
        np.testing.assert_allclose(flow.forward(z), manual, rtol=0, atol=1e-8)
        np.testing.assert_allclose(flow.inverse(manual), z, rtol=0, atol=1e-8)


@settings(max_examples=examples(3))
@given(a1=matrices, a2=matrices, seed=seeds)
def test_trajectory_follows_the_exact_path_across_blocks(a1, a2, seed):
    """f_b = (1 + t) A_b z: at time t in block b the state is e^{A_b c(t - start_b)} times
    the block's start. Measured relative error 5.5e-10 (6 draws); bound 1e-7 (180x: saved
    times between steps come from Dopri5's dense interpolant, whose error varies more)."""
    with jax.enable_x64(True):
        flow = cnfax.CNF(
            [TimeLinearField(a1), TimeLinearField(a2)], t1=0.5, stepsize_controller=tight(1e-10)
        )
        z = base_points(seed, jnp.float64)[:4]
        ts = jnp.array([0.0, 0.2, 0.5, 0.7, 1.0])
        path = flow.trajectory(z, ts)
        assert path.shape == (5, 4, DIM)
        expm = jax.scipy.linalg.expm
        for t, state in zip(ts, path, strict=True):
            t = float(t)
            first, second = min(t, 0.5), max(t - 0.5, 0.0)
            exact = z @ expm(a1 * elapsed(first)).T @ expm(a2 * elapsed(second)).T
            np.testing.assert_allclose(state, exact, rtol=1e-7, atol=1e-7)


@settings(max_examples=examples(2))
@given(seed=seeds)
def test_density_integrates_to_one(seed):
    """Riemann sum of exp(log_prob) over [-8, 8]^2 with a 0.1 spacing.

    The flow moves the N(0, I) base by |f| * T; with this field (tanh hidden units and
    lecun-normal weights, T = 0.5) mass beyond radius 8 is below 1e-6, and the grid error
    of a smooth density at this spacing is far below the 0.01 tolerance.
    """
    flow = cnfax.CNF(random_field(seed), t1=0.5)
    axis = jnp.linspace(-8.0, 8.0, 161)
    grid = jnp.stack(jnp.meshgrid(axis, axis), -1).reshape(-1, 2)
    mass = jnp.sum(jnp.exp(flow.log_prob(grid))) * (axis[1] - axis[0]) ** 2
    assert abs(float(mass) - 1.0) <= 0.01


@settings(max_examples=examples(3))
@given(seed=seeds, key=seeds)
def test_sample_and_log_prob_agrees_with_log_prob_of_its_samples(seed, key):
    flow = cnfax.CNF(random_field(seed), t1=0.5)
    x, logp = flow.sample_and_log_prob(jax.random.key(key), N)
    assert x.shape == (N, DIM) and logp.shape == (N,)
    np.testing.assert_allclose(flow.log_prob(x), logp, rtol=0, atol=1e-3)
    np.testing.assert_allclose(flow.sample(jax.random.key(key), N).shape, (N, DIM))


def moment_z_scores(x, mean, cov):
    """Largest |sample mean - mean| and |sample covariance - cov| of the rows of x, each in
    units of its standard error under a Gaussian: sqrt(S_ii / n) for the mean and
    sqrt((S_ii S_jj + S_ij^2) / n) for the covariance."""
    x = np.asarray(x)
    n = len(x)
    var = np.diag(cov)
    mean_z = np.abs(x.mean(0) - mean) / np.sqrt(var / n)
    cov_z = np.abs(np.cov(x.T) - cov) / np.sqrt((np.outer(var, var) + cov**2) / n)
    return float(mean_z.max()), float(cov_z.max())


@pytest.mark.parametrize("matrix", [[[0.6, -0.8], [0.3, -0.4]], [[-0.5, 1.0], [-1.0, 0.2]]])
def test_samples_are_base_draws_carried_by_the_flow(matrix):
    """f = (1 + t) A z over T = 1: samples are x = M z0 with M = e^{1.5 A}, so their mean is
    0 and their covariance M M^T (far from I for these A), and inverse(samples) is
    N(0, I). With 4096 samples every sample moment is within 5 standard errors (measured
    at most 2.2 over 5 keys; a false alarm has probability below 1e-6 per moment).
    Samples that skip the flow have covariance I and fail by tens of standard errors."""
    with jax.enable_x64(True):
        a = np.asarray(matrix)
        flow = cnfax.CNF(TimeLinearField(a), t1=1.0)
        m = np.asarray(jax.scipy.linalg.expm(jnp.asarray(a) * elapsed(1.0)))
        x = flow.sample(jax.random.key(0), 4096)
        assert x.dtype == jnp.float64 and x.shape == (4096, DIM)
        assert max(moment_z_scores(x, np.zeros(DIM), m @ m.T)) <= 5
        assert max(moment_z_scores(flow.inverse(x), np.zeros(DIM), np.eye(DIM))) <= 5


def test_hutchinson_log_prob_is_unbiased_over_keys():
    """The mean over 400 Hutchinson solves is within 5 standard errors of the exact one."""
    field = random_field(3)
    exact = cnfax.CNF(field, t1=0.5)
    hutch = exact.replace(trace=cnfax.Hutchinson("rademacher"))
    x = base_points(4, jnp.float32)
    keys = jax.random.split(jax.random.key(0), 400)
    estimates = jnp.stack([hutch.log_prob(x, key=k) for k in keys[:400]])
    error = jnp.abs(estimates.mean(0) - exact.log_prob(x))
    assert jnp.all(error <= 5 * estimates.std(0) / np.sqrt(len(keys)) + 1e-4)
    assert jnp.all(estimates.std(0) > 0), "different keys should give different estimates"


class TestBatchInvariance:
    """log p(x_i) must not depend, beyond the tolerance, on the other points of its batch."""

    @settings(max_examples=examples(3))
    @given(seed=seeds, perm_seed=seeds)
    def test_shared_solve_with_per_point_norm(self, seed, perm_seed):
        """Alone and in a batch of 64 (with far-out points), the answers differ by at most
        100 x tol x (1 + |log p|): the per-point norm makes every point meet in the batch
        the same local error test it meets alone, and Dopri5's global error at these
        tolerances stays within about 100 local tolerances (it is ~10x here)."""
        tol = 1e-7
        with jax.enable_x64(True):
            flow = cnfax.CNF(
                random_field(seed, jnp.float64), t1=1.0, stepsize_controller=tight(tol)
            )
            points = base_points(seed + 1, jnp.float64, scale=1.0)[:4]
            others = jax.random.normal(jax.random.key(perm_seed), (60, DIM), jnp.float64) * 3.0
            batch = jax.random.permutation(
                jax.random.key(perm_seed), jnp.concatenate([points, others])
            )
            in_batch = flow.log_prob(batch)
            for p in points:
                alone = flow.log_prob(p[None])[0]
                where = jnp.argmax(jnp.all(batch == p, axis=1))
                assert abs(in_batch[where] - alone) <= 100 * tol * (1 + abs(alone))

    @settings(max_examples=examples(3))
    @given(seed=seeds, perm_seed=seeds)
    def test_per_sample_solve_is_exactly_invariant(self, seed, perm_seed):
        with jax.enable_x64(True):
            flow = cnfax.CNF(
                random_field(seed, jnp.float64),
                t1=1.0,
                stepsize_controller=tight(1e-6),
                per_sample=True,
            )
            batch = base_points(seed + 1, jnp.float64, scale=2.5)
            perm = jax.random.permutation(jax.random.key(perm_seed), N)
            alone = jnp.stack([flow.log_prob(p[None])[0] for p in batch[:3]])
            np.testing.assert_allclose(flow.log_prob(batch)[:3], alone, rtol=1e-12, atol=1e-12)
            np.testing.assert_allclose(
                flow.log_prob(batch[perm]), flow.log_prob(batch)[perm], rtol=1e-12, atol=1e-12
            )


def test_single_point_input_gives_a_scalar_log_prob():
    flow = cnfax.CNF(random_field(0), t1=0.5)
    x = jnp.array([0.3, -0.2])
    lp = flow.log_prob(x)
    assert lp.shape == ()
    np.testing.assert_allclose(lp, flow.log_prob(x[None])[0], rtol=1e-6)


def test_learned_end_time_stays_positive_and_is_a_parameter():
    flow = cnfax.CNF(random_field(0), t1=0.8, learn_t1=True)
    params = nnx.state(flow, nnx.Param)
    assert "sqrt_t1" in params
    np.testing.assert_allclose(flow.end_times, [0.8], rtol=1e-6)
    fixed = cnfax.CNF(random_field(0), t1=0.8)
    assert "sqrt_t1" not in nnx.state(fixed, nnx.Param)


def test_end_times_follow_the_default_float_dtype():
    """Under jax_enable_x64, T = 0.5 is 0.5 to float64 rounding (a float32 sqrt_t1 gives
    0.49999998, 2e-8 off), so learned-T gradients come back in float64."""
    with jax.enable_x64(True):
        flow = cnfax.CNF(random_field(0), t1=0.5, learn_t1=True)
        assert flow.end_times.dtype == jnp.float64
        assert abs(float(flow.end_times[0]) - 0.5) < 1e-15
    assert cnfax.CNF(random_field(0), t1=0.5).end_times.dtype == jnp.float32
