"""Fields with known answers, shared by the tests."""

import jax
import jax.numpy as jnp
from flax import nnx
from hypothesis import settings


class LinearField(nnx.Module):
    """f(t, z) = A z: the flow is z(t) = exp(A t) z(0), with divergence tr(A)."""

    def __init__(self, matrix):
        self.matrix = nnx.Param(jnp.asarray(matrix))
        self.dim = self.matrix.shape[0]

    def __call__(self, t, z):
        return z @ self.matrix[...].T


def linear_flow_log_prob(matrices, end_time, x):
    """Closed form for blocks of linear fields: log N(prod_b exp(-A_b T) x) - T sum_b tr A_b."""
    z = x
    for a in reversed(matrices):
        z = z @ jax.scipy.linalg.expm(-a * end_time).T
    base = -0.5 * jnp.sum(z**2, -1) - 0.5 * x.shape[-1] * jnp.log(2 * jnp.pi)
    return base - end_time * sum(jnp.trace(a) for a in matrices)


def examples(cap: int) -> int:
    """The active profile's example count, capped for tests whose examples are expensive."""
    return min(settings.default.max_examples, cap)


# A training config small enough for tests: two tiny hidden layers, evaluation and
# checkpoints every 10 steps, no pictures.
SMALL_TRAINING = dict(
    hidden=(16, 16),
    batch_size=64,
    eval_every=10,
    ckpt_every=10,
    eval_size=256,
    pictures=False,
    lr=1e-2,
)


class TimeLinearField(nnx.Module):
    """f(t, z) = (1 + t) A z: time-dependent, yet z(t) = exp(A c(t)) z(0) with
    c(t) = t + t^2 / 2 (:func:`elapsed`), and divergence (1 + t) tr A. A CNF that
    evaluates the field at the wrong time, or differentiates T only through the speed
    T f and not through the time T s, disagrees with this closed form."""

    def __init__(self, matrix):
        self.matrix = nnx.Param(jnp.asarray(matrix))
        self.dim = self.matrix.shape[0]

    def __call__(self, t, z):
        return (1 + t) * (z @ self.matrix[...].T)


def elapsed(t):
    """c(t) = int_0^t (1 + u) du: the TimeLinearField's flow over [0, t] is exp(A c(t)),
    so ``linear_flow_log_prob(matrices, elapsed(T), x)`` is its closed-form log-density."""
    return t + t**2 / 2


def nan_where_positive(z):
    """A 2-d target (``--target helpers:nan_where_positive``): N(0, I) where z_1 <= 0, NaN
    where z_1 > 0, as a log-density with a bug in half the space would be."""
    logp = -0.5 * jnp.sum(z**2, axis=-1) - jnp.log(2 * jnp.pi)
    return jnp.where(z[:, 0] > 0, jnp.nan, logp)


nan_where_positive.dim = 2
