"""The continuous normalizing flow: the public face of the augmented ODE.

A data point is x = z(T), the end state of dz/dt = f(t, z) started from a base sample
z(0) ~ N(0, I). Along the path the log-density obeys the instantaneous change of variables
(Chen et al. 2018)

    d log p(z(t)) / dt = -tr(df/dz (t, z(t))),

so one solve of the augmented state (z, delta_logp) gives both the transformed point and
the change in log-density; solving backwards inverts the map. The dynamics and the solve
of one block live in :mod:`cnfax.core.augmented`; this module chains blocks and checks inputs.
``delta_logp`` is the change log p(end) - log p(start) of each solve.

A conditional flow models p(x | y): the field is f(t, z, h) with features h = e(y) of the
condition (e an optional embedding network, else the identity), held fixed along the path,

    log p(x | y) = log N(z(0)) - int_0^T tr(df/dz (t, z(t), e(y))) dt,

so for every y the map z(0) -> x is a flow and p(. | y) a normalised density.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import diffrax
import jax
import jax.numpy as jnp
from flax import nnx

from cnfax.core.augmented import (
    FORWARD,
    INVERSE,
    Regularizers,
    SolveOptions,
    raise_on_failure,
    solve_block,
)
from cnfax.core.checks import check_condition, check_end_time, check_points, condition_width
from cnfax.core.stats import SolveStats
from cnfax.core.trace import Exact, TraceEstimator

Array = jax.Array


def standard_normal_log_prob(z: Array) -> Array:
    """log N(z; 0, I), summed over the last axis."""
    d = z.shape[-1]
    return -0.5 * jnp.sum(jnp.square(z), axis=-1) - 0.5 * d * math.log(2 * math.pi)


class CNF(nnx.Module):
    """A continuous normalizing flow (FFJORD) over R^dim with a standard normal base.

    Args:
        field: an NNX module f(t, z), or a sequence of them: blocks applied in order
            base -> data, each solved over its own [0, T_b], log-densities summed
            (FFJORD's num_blocks). A field with ``condition_dim`` = e > 0 is conditional,
            f(t, z, h) (:mod:`cnfax.core.fields`); then every block must have the same e, every
            method takes ``condition=`` and each block sees the same features h.
        embedding: an optional NNX module mapping raw conditions y, shape (m, c), to the
            field's features h = e(y), shape (m, e), row by row; trained with the field
            (its parameters are part of this module). Default: h = y.
        condition_dim: the raw condition width c. Default: the field's e without an
            embedding, else the embedding's ``in_features`` (as in ``nnx.Linear``; for
            ``nnx.Sequential``, its first layer's).
        t1: end time T of every block.
        learn_t1: learn T (one per block), kept positive as T = sqrt_t1^2 (FFJORD's train_T).
        trace: divergence estimator, :class:`cnfax.Exact` (default) or
            :class:`cnfax.Hutchinson`.
        solver, stepsize_controller, adjoint: any Diffrax ODE solver, controller and adjoint.
            Defaults are FFJORD's: Dopri5, PID control at rtol = atol = 1e-5, and
            BacksolveAdjoint. A PID controller left with Diffrax's default norm gets the
            per-point norm of :func:`cnfax.core.norms.batch_max_norm`.
        dt0: initial step in units of t (required by ``ConstantStepSize``).
        max_steps: step budget of each solve.
        per_sample: solve each point as its own ODE under ``vmap`` (own step sizes),
            instead of the batch as one state with the per-point max norm.
        throw: on a failed solve (max_steps reached), raise an error naming max_steps and
            the tolerances. With ``throw=False`` failed points come back as NaN and
            ``SolveStats.success`` is False, for training loops that skip the step.
        count_backward: count backward-pass evaluations in ``cnfax.core.stats`` (host callback).
        dim: data dimension; read from ``field.dim`` when omitted.
    """

    def __init__(
        self,
        field: nnx.Module | Sequence[nnx.Module],
        *,
        embedding: nnx.Module | None = None,
        condition_dim: int | None = None,
        t1: float = 0.5,
        learn_t1: bool = False,
        trace: TraceEstimator | None = None,
        solver: diffrax.AbstractSolver | None = None,
        stepsize_controller: diffrax.AbstractStepSizeController | None = None,
        adjoint: diffrax.AbstractAdjoint | None = None,
        dt0: float | None = None,
        max_steps: int = 4096,
        per_sample: bool = False,
        throw: bool = True,
        count_backward: bool = False,
        dim: int | None = None,
    ):
        blocks = list(field) if isinstance(field, Sequence) else [field]
        if not blocks:
            raise ValueError("a CNF needs at least one field")
        if dim is None:
            dim = getattr(blocks[0], "dim", None)
            if dim is None:
                raise ValueError("the field has no .dim attribute: pass dim= to CNF")
        check_end_time(t1)
        options = SolveOptions.create(
            solver, stepsize_controller, adjoint, dt0, max_steps, per_sample, throw, count_backward
        )
        self.dim = int(dim)
        self.condition_dim = condition_width(blocks, embedding, condition_dim)
        self.embedding = embedding
        self.blocks = nnx.List(blocks)
        self.trace = Exact() if trace is None else trace
        self.options = options
        self.learn_t1 = learn_t1
        # The default float dtype: float64 under jax_enable_x64 (T = 0.5 to 1e-16, not 2e-8).
        sqrt_t1 = jnp.full((len(blocks),), math.sqrt(t1), jnp.result_type(float))
        self.sqrt_t1 = nnx.Param(sqrt_t1) if learn_t1 else nnx.Variable(sqrt_t1)

    # ------------------------------------------------------------------ configuration

    @property
    def num_blocks(self) -> int:
        return len(self.blocks)

    @property
    def end_times(self) -> Array:
        """T_b of each block, shape (num_blocks,)."""
        return jnp.square(self.sqrt_t1[...])

    def replace(self, **changes) -> CNF:
        """A CNF sharing this one's fields and end times, with other options changed.

        E.g. ``flow.replace(trace=cnfax.Exact(), stepsize_controller=...)`` for evaluation.
        """
        trace = changes.pop("trace", self.trace)
        try:
            options = self.options.replace(**changes)
        except TypeError as error:
            raise TypeError(f"CNF.replace got {error}") from None
        new = CNF(
            list(self.blocks),
            embedding=self.embedding,
            condition_dim=self.condition_dim,
            trace=trace,
            dim=self.dim,
            learn_t1=self.learn_t1,
        )
        new.options = options
        new.sqrt_t1 = self.sqrt_t1  # shared variable: same end times, same parameter
        return new

    # ------------------------------------------------------------------ solving

    def _solve(self, block: int, z: Array, direction: int, **kwargs):
        """Solve block ``block`` (:func:`cnfax.core.augmented.solve_block`)."""
        end_time = self.end_times[block].astype(z.dtype)
        return solve_block(
            self.blocks[block],
            end_time,
            z,
            direction,
            trace=self.trace,
            options=self.options,
            **kwargs,
        )

    def _noise(self, key, shape, dtype) -> list[Array | None]:
        if self.trace.needs_key and key is None:
            raise ValueError(f"{self.trace!r} needs a PRNG key: pass key=jax.random.key(seed)")
        keys = (
            [None] * self.num_blocks
            if key is None
            else list(jax.random.split(key, self.num_blocks))
        )
        return [self.trace.sample_noise(k, shape, dtype) for k in keys]

    def _transform(
        self,
        x: Array,
        direction: int,
        *,
        key=None,
        with_logp: bool,
        regularize: bool = False,
        condition: Array | None = None,
    ):
        """Run all blocks in ``direction``, each with the same condition features; return
        (y, sum of delta_logp, summed regularisers or None, stats)."""
        if regularize and not with_logp:
            raise ValueError("the regularisers are integrated with the log-density")
        order = range(self.num_blocks) if direction == FORWARD else reversed(range(self.num_blocks))
        noise = self._noise(key, x.shape, x.dtype) if with_logp else [None] * self.num_blocks
        total_dlogp = jnp.zeros(x.shape[:-1], x.dtype) if with_logp else None
        zeros = jnp.zeros(x.shape[:-1], x.dtype)
        total_regs = Regularizers(zeros, zeros) if regularize else None
        total = SolveStats.zero()
        y = x
        for b in order:
            y, dlogp, regs, solve_stats = self._solve(
                b,
                y,
                direction,
                with_logp=with_logp,
                noise=noise[b],
                regularize=regularize,
                condition=condition,
            )
            total = total + solve_stats
            if with_logp:
                total_dlogp = total_dlogp + dlogp
            if regularize:
                total_regs = Regularizers(*(a + r for a, r in zip(total_regs, regs, strict=True)))
        y = raise_on_failure(y, total, self.options)
        return y, total_dlogp, total_regs, total

    # ------------------------------------------------------------------ conditions

    def _embed(self, y: Array) -> Array:
        """Features e(y) of checked raw conditions, always as rows: (1 or n, e)."""
        rows = y[None] if y.ndim == 1 else y
        return rows if self.embedding is None else self.embedding(rows)

    def embed(self, condition: Array) -> Array:
        """The field's condition features h = e(y) of raw conditions y of shape (c,) or
        (n, c): shape (e,) or (n, e), the embedding applied row by row (h = y without
        one). Checked like every method's ``condition=``."""
        y = check_condition(condition, self.condition_dim, jnp.shape(condition)[:-1])
        h = self._embed(y)
        return h[0] if y.ndim == 1 else h

    def _inputs(self, x, name: str, condition) -> tuple[Array, Array | None]:
        """Checked points, and the condition features of each of them (None for an
        unconditional flow): shape x.shape[:-1] + (e,), in x's dtype."""
        x = check_points(x, self.dim, name)
        y = check_condition(condition, self.condition_dim, x.shape[:-1])
        return x, self._features(y, x)

    def _features(self, y: Array | None, x: Array) -> Array | None:
        if y is None:
            return None
        h = self._embed(y).astype(x.dtype)
        return h[0] if x.ndim == 1 else jnp.broadcast_to(h, (x.shape[0], h.shape[-1]))

    # ------------------------------------------------------------------ public API
    # Every method takes ``condition=``: y of shape (c,) for all points, or (n, c) with one
    # row per point; required by a conditional flow, refused by an unconditional one.

    def forward(self, z: Array, *, condition: Array | None = None) -> Array:
        """Map base points z (n, dim) to data space (given the condition)."""
        z, h = self._inputs(z, "z", condition)
        return self._transform(z, FORWARD, with_logp=False, condition=h)[0]

    def inverse(self, x: Array, *, condition: Array | None = None) -> Array:
        """Map data points x (n, dim) to the base space (given the condition)."""
        x, h = self._inputs(x, "x", condition)
        return self._transform(x, INVERSE, with_logp=False, condition=h)[0]

    def log_prob_and_stats(
        self, x: Array, *, key: Array | None = None, condition: Array | None = None
    ) -> tuple[Array, SolveStats]:
        """log p(x) (or log p(x | y)) of each row, and the statistics of the inverse solve.

        log p(x) = log N(z0) - sum_b delta_logp_b, where z0 is x mapped to the base and
        delta_logp_b = log p_{b-1}(z_{b-1}) - log p_b(z_b) is each inverse block's change.
        """
        x, h = self._inputs(x, "x", condition)
        z0, dlogp, _, solve_stats = self._transform(
            x, INVERSE, key=key, with_logp=True, condition=h
        )
        return standard_normal_log_prob(z0) - dlogp, solve_stats

    def log_prob_and_regularizers(
        self, x: Array, *, key: Array | None = None, condition: Array | None = None
    ) -> tuple[Array, Regularizers, SolveStats]:
        """log p(x), RNODE's regularisers along each point's path, and the solve's
        statistics, all from one (inverse) solve of the augmented ODE."""
        x, h = self._inputs(x, "x", condition)
        z0, dlogp, regs, solve_stats = self._transform(
            x, INVERSE, key=key, with_logp=True, regularize=True, condition=h
        )
        return standard_normal_log_prob(z0) - dlogp, regs, solve_stats

    def log_prob(
        self, x: Array, *, key: Array | None = None, condition: Array | None = None
    ) -> Array:
        """log p(x) (or log p(x | y)) of each row of x (n, dim). Hutchinson's estimator
        needs ``key``."""
        return self.log_prob_and_stats(x, key=key, condition=condition)[0]

    def sample(self, key: Array, n: int, dtype=None, *, condition: Array | None = None) -> Array:
        """n samples from the flow, shape (n, dim): n draws from p(x | y) for a condition
        of shape (c,), or one draw per row of a condition of shape (n, c)."""
        z0 = self._base_sample(key, n, dtype)
        h = self._features(check_condition(condition, self.condition_dim, (n,)), z0)
        return self._transform(z0, FORWARD, with_logp=False, condition=h)[0]

    def forward_and_log_prob(
        self, z: Array, *, key: Array | None = None, condition: Array | None = None
    ) -> tuple[Array, Array]:
        """Map base points to data space and carry their log-density along the same solve:
        log p(x) = log N(z) - integral of tr(df/dz) dt."""
        x, logp, _ = self.forward_log_prob_and_stats(z, key=key, condition=condition)
        return x, logp

    def forward_log_prob_and_stats(
        self, z: Array, *, key: Array | None = None, condition: Array | None = None
    ) -> tuple[Array, Array, SolveStats]:
        """:meth:`forward_and_log_prob` and the statistics of its (forward) solve."""
        z, h = self._inputs(z, "z", condition)
        x, dlogp, _, solve_stats = self._transform(z, FORWARD, key=key, with_logp=True, condition=h)
        return x, standard_normal_log_prob(z) + dlogp, solve_stats

    def forward_and_stats(
        self, z: Array, *, condition: Array | None = None
    ) -> tuple[Array, SolveStats]:
        """:meth:`forward` (no log-density) and the statistics of its solve."""
        z, h = self._inputs(z, "z", condition)
        x, _, _, solve_stats = self._transform(z, FORWARD, with_logp=False, condition=h)
        return x, solve_stats

    def sample_and_log_prob(
        self, key: Array, n: int, dtype=None, *, condition: Array | None = None
    ) -> tuple[Array, Array]:
        """n samples and their log-densities from one forward solve (with the exact trace
        unless the flow uses Hutchinson, whose noise is then drawn from ``key``)."""
        noise_key, base_key = jax.random.split(key)
        z0 = self._base_sample(base_key, n, dtype)
        return self.forward_and_log_prob(z0, key=noise_key, condition=condition)

    def trajectory(self, z: Array, ts: Array, *, condition: Array | None = None) -> Array:
        """States of base points z (n, dim) at times ts (ascending, in [0, sum of T_b]).

        Returns shape (len(ts), n, dim). Blocks follow one another in time: block b covers
        [T_0 + ... + T_{b-1}, T_0 + ... + T_b].
        """
        z, h = self._inputs(z, "z", condition)
        ts = jnp.asarray(ts, z.dtype)
        if ts.ndim != 1:
            raise ValueError(f"ts must be a 1-D array of times, got shape {ts.shape}")
        ends = self.end_times.astype(z.dtype)
        starts = jnp.concatenate([jnp.zeros((1,), z.dtype), jnp.cumsum(ends)[:-1]])
        path = None
        y = z
        for b in range(self.num_blocks):
            # Save at the requested times (clipped into this block) and at its end s = 1,
            # which the next block starts from.
            save_s = jnp.clip((ts - starts[b]) / ends[b], 0.0, 1.0)
            save_s = jnp.concatenate([save_s, jnp.ones((1,), z.dtype)])
            zs, _, _, solve_stats = self._solve(
                b, y, FORWARD, with_logp=False, noise=None, save_s=save_s, condition=h
            )
            zs = raise_on_failure(zs, solve_stats, self.options)
            y, zs = zs[-1], zs[:-1]
            inside = (ts >= starts[b])[:, None, None]
            path = zs if path is None else jnp.where(inside, zs, path)
        return path

    def _base_sample(self, key, n, dtype):
        if not isinstance(n, int) or n < 1:
            raise ValueError(f"n must be a positive integer, got {n!r}")
        dtype = jnp.zeros(()).dtype if dtype is None else dtype
        return jax.random.normal(key, (n, self.dim), dtype)
