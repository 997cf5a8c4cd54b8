"""ReverseKL: the negative ELBO against closed forms for linear fields (q Gaussian), its
gradient against finite differences, sticking the landing's mean and variance, and bad
targets refused (wrong shape) or rejected by the training step (non-finite values)."""

import math

import diffrax
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx
from helpers import LinearField

import cnfax
from cnfax.parallel import data_mesh, replicate, shard_batch
from cnfax.train.step import Steps
from cnfax.variational import ReverseKL

TIGHT = diffrax.PIDController(rtol=1e-10, atol=1e-10)
MATRIX = np.array([[0.3, -0.4], [0.2, -0.2]])
END_TIME = 0.8
MEAN = np.array([0.5, -1.0])
COVARIANCE = np.array([[1.5, 0.6], [0.6, 0.8]])


def gaussian_log_density(mean, covariance):
    """log N(z; mean, covariance) of rows z, as a target."""
    mean, covariance = jnp.asarray(mean), jnp.asarray(covariance)
    chol = jnp.linalg.cholesky(covariance)
    log_det = 2 * jnp.sum(jnp.log(jnp.diag(chol)))
    d = len(mean)

    def log_density(z):
        white = jax.scipy.linalg.solve_triangular(chol, (z - mean).T, lower=True)
        return -0.5 * jnp.sum(white**2, 0) - 0.5 * log_det - 0.5 * d * math.log(2 * math.pi)

    return log_density


def gaussian_kl(mean_q, cov_q, mean_p, cov_p):
    """KL(N(mean_q, cov_q) || N(mean_p, cov_p)) in closed form."""
    d = len(mean_q)
    inv = jnp.linalg.inv(cov_p)
    diff = mean_p - mean_q
    return 0.5 * (
        jnp.trace(inv @ cov_q)
        + diff @ inv @ diff
        - d
        + jnp.linalg.slogdet(cov_p)[1]
        - jnp.linalg.slogdet(cov_q)[1]
    )


def linear_q_covariance(matrix, end_time):
    """f = A z carries N(0, I) to N(0, M M^T), M = exp(A T)."""
    m = jax.scipy.linalg.expm(jnp.asarray(matrix) * end_time)
    return m @ m.T


def linear_flow(matrix=MATRIX, trace=None):
    field = LinearField(jnp.asarray(matrix))
    return cnfax.CNF(field, t1=END_TIME, stepsize_controller=TIGHT, trace=trace)


@pytest.mark.parametrize("matrix", [np.zeros((2, 2)), MATRIX], ids=["zero-field", "linear"])
def test_reverse_kl_equals_the_closed_form_for_a_gaussian_q(matrix):
    """q = N(0, M M^T) exactly. Per draw the loss is log q(z) - log p(z) at z = M z0 to
    solver precision (1e-10 tolerances: 1e-7 is far above it), and its mean over 4096
    draws is within 5 standard errors of KL(q || p) (a false alarm below 1e-6: the
    per-draw terms are smooth in a Gaussian z0, so the CLT holds at n = 4096)."""
    with jax.enable_x64(True):
        target = gaussian_log_density(MEAN, COVARIANCE)
        objective = ReverseKL(target)
        z0 = objective.make_batch((4096, 2), np.random.default_rng(0), np.float64)
        assert z0.shape == (4096, 2) and z0.dtype == np.float64
        flow = linear_flow(matrix)
        cov_q = linear_q_covariance(matrix, END_TIME)
        z = z0 @ np.asarray(jax.scipy.linalg.expm(jnp.asarray(matrix) * END_TIME)).T
        terms = gaussian_log_density(np.zeros(2), cov_q)(z) - target(z)
        log_w, stats = objective.log_weights_and_stats(flow, jnp.asarray(z0), None)
        np.testing.assert_allclose(-log_w, terms, atol=1e-7)
        assert bool(stats.success)
        loss, (_, metrics) = objective(flow, jnp.asarray(z0), None)
        assert float(metrics["batch_elbo"]) == pytest.approx(-float(loss))
        kl = float(gaussian_kl(jnp.zeros(2), cov_q, jnp.asarray(MEAN), jnp.asarray(COVARIANCE)))
        standard_error = float(np.std(terms) / math.sqrt(len(terms)))
        assert abs(float(loss) - kl) <= 5 * standard_error, (float(loss), kl, standard_error)
        # and the estimators agree on the value: STL's log q is the inverse solve's
        stl_loss, _ = ReverseKL(target, "stl")(flow, jnp.asarray(z0), None)
        assert float(stl_loss) == pytest.approx(float(loss), abs=1e-7)


def test_gradient_matches_central_differences_on_a_tiny_field():
    """d loss along a random direction of parameter space, by the adjoint vs by central
    differences with step 1e-4. Truncation error is O(eps^2) ~ 1e-8, solver error
    ~1e-10 / eps ~ 1e-6: a relative tolerance of 1e-4 leaves room for both."""
    with jax.enable_x64(True):
        field = cnfax.ConcatSquashMLP(2, (8,), param_dtype=jnp.float64, rngs=nnx.Rngs(0))
        flow = cnfax.CNF(field, t1=0.5, stepsize_controller=TIGHT)
        objective = ReverseKL(gaussian_log_density(MEAN, COVARIANCE))
        z0 = jnp.asarray(objective.make_batch((16, 2), np.random.default_rng(1), np.float64))
        graphdef, params, rest = nnx.split(flow, nnx.Param, ...)

        def loss(p):
            return objective(nnx.merge(graphdef, p, rest), z0, None)[0]

        grad = jax.grad(loss)(params)
        leaves, tree = jax.tree.flatten(params)
        keys = jax.random.split(jax.random.key(2), len(leaves))
        direction = jax.tree.unflatten(
            tree,
            [jax.random.normal(k, x.shape, x.dtype) for k, x in zip(keys, leaves, strict=True)],
        )
        analytic = sum(
            float(jnp.sum(g * v))
            for g, v in zip(jax.tree.leaves(grad), jax.tree.leaves(direction), strict=True)
        )
        eps = 1e-4

        def shifted(sign):
            return jax.tree.map(lambda p, v: p + sign * eps * v, params, direction)

        numeric = float(loss(shifted(1)) - loss(shifted(-1))) / (2 * eps)
        assert abs(analytic) > 1e-2  # a direction the loss depends on
        assert analytic == pytest.approx(numeric, rel=1e-4)


def per_batch_gradients(estimator, target, matrix, z0s, trace=None):
    """The gradient in A of each batch's loss, for batches z0s (k, m, 2): shape (k, 4).
    With a Hutchinson ``trace``, batch i's noise comes from key i."""
    flow = linear_flow(matrix, trace)
    objective = ReverseKL(target, estimator)
    graphdef, params, rest = nnx.split(flow, nnx.Param, ...)

    def loss(p, z0, key):
        return objective(nnx.merge(graphdef, p, rest), z0, key)[0]

    random = trace is not None
    keys = jax.random.split(jax.random.key(5), len(z0s)) if random else None
    grads = jax.jit(jax.vmap(jax.grad(loss), in_axes=(None, 0, 0 if random else None)))(
        params, z0s, keys
    )
    return np.asarray(jax.tree.leaves(grads)[0]).reshape(len(z0s), -1)


@pytest.mark.parametrize("trace", [None, cnfax.Hutchinson()], ids=["exact", "hutchinson"])
def test_stl_and_standard_gradients_have_the_closed_form_mean(trace):
    """Away from the optimum both estimators are unbiased for the gradient of the
    closed-form KL(N(0, M M^T) || p) in A, with the exact trace and with Hutchinson's
    (unbiased for tr(df/dz), and log q is linear in it, so its gradient is unbiased too:
    what makes ``--trace hutchinson`` a sound way to train in d = 50): each one's mean over
    256 batches of 8 draws is within 5 standard errors of it in each of the 4 coordinates
    (false alarm below 8 x 3e-7 over the 8 comparisons)."""
    with jax.enable_x64(True):
        target = gaussian_log_density(MEAN, COVARIANCE)
        z0s = np.random.default_rng(3).standard_normal((256, 8, 2))

        def kl(a):
            cov_q = linear_q_covariance(a, END_TIME)
            return gaussian_kl(jnp.zeros(2), cov_q, jnp.asarray(MEAN), jnp.asarray(COVARIANCE))

        exact = np.asarray(jax.grad(kl)(jnp.asarray(MATRIX))).ravel()
        assert np.linalg.norm(exact) > 0.1  # not at the optimum
        for estimator in ("standard", "stl"):
            grads = per_batch_gradients(estimator, target, MATRIX, z0s, trace)
            standard_error = grads.std(0, ddof=1) / math.sqrt(len(grads))
            assert np.all(np.abs(grads.mean(0) - exact) <= 5 * standard_error), (
                estimator,
                grads.mean(0),
                exact,
                standard_error,
            )


def test_stl_gradient_vanishes_at_the_optimum_and_the_standard_one_does_not():
    """Target = q's own density N(0, M M^T): grad_z (log q - log p) = 0 at every z, so
    every STL batch gradient is zero up to solver error (1e-10 tolerances; bound 1e-6),
    while the standard estimator's score term keeps a spread (its mean is still zero:
    within 5 standard errors)."""
    with jax.enable_x64(True):
        target = gaussian_log_density(np.zeros(2), linear_q_covariance(MATRIX, END_TIME))
        z0s = np.random.default_rng(4).standard_normal((64, 8, 2))
        stl = per_batch_gradients("stl", target, MATRIX, z0s)
        standard = per_batch_gradients("standard", target, MATRIX, z0s)
        assert np.max(np.abs(stl)) < 1e-6
        spread = standard.std(0, ddof=1)
        assert np.all(spread > 0.05), spread
        assert np.all(np.abs(standard.mean(0)) <= 5 * spread / math.sqrt(len(standard)))


def test_a_target_of_the_wrong_shape_is_refused():
    objective = ReverseKL(lambda z: -0.5 * z**2)  # (n, d), not (n,)
    z0 = objective.make_batch((8, 2), np.random.default_rng(0))
    with pytest.raises(ValueError, match=r"one value per draw.*shape \(8,\).*got shape \(8, 2\)"):
        objective(linear_flow(), jnp.asarray(z0), None)
    with pytest.raises(ValueError, match="estimator"):
        ReverseKL(lambda z: z[:, 0], estimator="score")
    with pytest.raises(TypeError, match="callable"):
        ReverseKL("u1")


@pytest.mark.parametrize("bad", [jnp.nan, jnp.inf], ids=["nan", "inf"])
def test_a_non_finite_target_value_rejects_the_step_and_updates_nothing(bad):
    """A target that is NaN or +inf at some draws (z_1 > 1) makes the loss non-finite:
    Steps rejects the step and neither the parameters nor the optimizer state move; the
    same step with a finite target does move them."""
    field = cnfax.ConcatSquashMLP(2, (16,), rngs=nnx.Rngs(0))
    flow = cnfax.CNF(field, t1=0.5, throw=False)
    mesh = data_mesh()
    optimizer = nnx.Optimizer(flow, optax.apply_if_finite(optax.adam(1e-2), 10), wrt=nnx.Param)
    replicate(flow, mesh)
    replicate(optimizer, mesh)
    steps = Steps(flow, optimizer, mesh, callbacks=False)

    def snapshot():
        return [np.array(a) for a in jax.tree.leaves(nnx.state(flow, nnx.Param))]

    def poisoned(z):
        return jnp.where(z[:, 0] > 1.0, bad, -0.5 * jnp.sum(z**2, -1))

    finite = ReverseKL(lambda z: -0.5 * jnp.sum((z - 1.0) ** 2, -1))
    batch = shard_batch(finite.make_batch((64, 2), np.random.default_rng(0)), mesh)
    before = snapshot()
    outcome = steps.run(ReverseKL(poisoned), (1e-3, 1e-3), batch, jax.random.key(0))
    assert outcome.cause is not None and "non-finite loss" in outcome.cause
    assert steps.rejected_total == 1
    for a, b in zip(before, snapshot(), strict=True):
        np.testing.assert_array_equal(a, b)
    outcome = steps.run(finite, (1e-3, 1e-3), batch, jax.random.key(0))
    assert outcome.cause is None and math.isfinite(outcome.loss)
    assert any(not np.array_equal(a, b) for a, b in zip(before, snapshot(), strict=True))
