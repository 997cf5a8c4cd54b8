"""The augmented dynamics of a CNF and the solve of one block.

The state is (z, delta_logp[, kinetic_energy, jacobian_frobenius]). In normalised time
s in [0, 1], with end time T and t(s) = T s forward (T (1 - s) in the inverse direction):

    d z / ds = +-T f(t(s), z),   d delta_logp / ds = -+T tr(df/dz),

and, with ``regularize``, RNODE's integrals over t (Finlay et al. 2020), the same in
either direction since dt = T ds:

    d kinetic_energy / ds = T |f|^2,   d jacobian_frobenius / ds = T ||df/dz||_F^2.

Three choices keep every quantity differentiable by ``BacksolveAdjoint``, which only
differentiates ``y0``, ``args`` and the term:

- Time is rescaled to s in [0, 1], so the end time T (fixed, or learned) enters through
  ``args``, not through ``t1``, which no adjoint can differentiate.
- The network's state goes through ``args`` (``nnx.split`` / ``nnx.merge``), never through
  a closure over traced values, and so does the Hutchinson noise, drawn once per solve.
- So does a conditional flow's condition y (after its embedding): dz/ds = +-T f(t, z, y).
  y is constant along the path, so it is no part of the state: it never enters step-size
  control, and the backward solve's adjoint of ``args`` carries dL/dy to the embedding.

The inverse direction runs s from 0 to 1 too, with the field negated and time reversed, so
solver, controller and adjoint see the same forward-in-time problem either way.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any, NamedTuple

import diffrax
import equinox as eqx
import jax
import jax.numpy as jnp
from flax import nnx

from cnfax.core import norms as control
from cnfax.core import solvers, stats
from cnfax.core.stats import SolveStats
from cnfax.core.trace import TraceEstimator

Array = jax.Array

FORWARD = 1  # base -> data
INVERSE = -1  # data -> base


class Regularizers(NamedTuple):
    """RNODE's regularisers of each point, integrated along its path over t in [0, T]
    (summed over blocks): kinetic energy int |f|^2 dt and Jacobian norm
    int ||df/dz||_F^2 dt (an unbiased estimate under Hutchinson)."""

    kinetic_energy: Array
    jacobian_frobenius: Array


REGULARIZER_KEYS = Regularizers._fields


@dataclasses.dataclass(frozen=True, eq=False)
class SolveOptions:
    """How the ODE is solved: static data of the CNF's graph, so part of every jitted
    function's cache key.

    Equal options compare and hash equal (by the pytree leaves and structure of solver,
    controller and adjoint), so two flows built alike, or one rebuilt by a second
    ``cnfax.fit`` or ``make train`` in the same process, reuse the steps already
    compiled. Options holding an unhashable leaf (an array rtol, say) fall back to
    identity, which is always sound and only costs a recompile.

    Build it with :meth:`create`, which fills in FFJORD's defaults and checks the values;
    :meth:`replace` changes some options and re-checks the result.
    """

    solver: diffrax.AbstractSolver
    stepsize_controller: diffrax.AbstractStepSizeController
    adjoint: diffrax.AbstractAdjoint
    dt0: float | None
    max_steps: int
    per_sample: bool
    throw: bool
    count_backward: bool

    @classmethod
    def create(
        cls,
        solver: diffrax.AbstractSolver | None = None,
        stepsize_controller: diffrax.AbstractStepSizeController | None = None,
        adjoint: diffrax.AbstractAdjoint | None = None,
        dt0: float | None = None,
        max_steps: int = 4096,
        per_sample: bool = False,
        throw: bool = True,
        count_backward: bool = False,
    ) -> SolveOptions:
        """Defaults are FFJORD's: Dopri5, PID control at rtol = atol = 1e-5 and
        BacksolveAdjoint. A PID controller left with Diffrax's RMS norm gets the per-point
        norm of :func:`cnfax.core.norms.batch_max_norm`."""
        if not isinstance(max_steps, int) or max_steps < 1:
            raise ValueError(f"max_steps must be a positive integer, got {max_steps!r}")
        solver = diffrax.Dopri5() if solver is None else solver
        if stepsize_controller is None:
            stepsize_controller = diffrax.PIDController(rtol=1e-5, atol=1e-5)
        if isinstance(stepsize_controller, diffrax.ConstantStepSize) and dt0 is None:
            raise ValueError("ConstantStepSize needs a step: pass dt0= (in units of t)")
        if dt0 is not None and not dt0 > 0:
            raise ValueError(f"dt0 must be positive, got {dt0!r}")
        stepsize_controller = control.with_batch_norm(stepsize_controller)
        adjoint = diffrax.BacksolveAdjoint() if adjoint is None else adjoint
        adjoint = control.prepare_adjoint(adjoint, stepsize_controller)
        return cls(
            solver, stepsize_controller, adjoint, dt0, max_steps, per_sample, throw, count_backward
        )

    def _value_key(self):
        """(pytree structure, leaves) of all the options, or None if a leaf is unhashable."""
        options = tuple(getattr(self, field.name) for field in dataclasses.fields(self))
        leaves, structure = jax.tree.flatten(options)
        key = (structure, tuple((type(leaf), leaf) for leaf in leaves))
        try:
            hash(key)
        except TypeError:
            return None
        return key

    def __eq__(self, other) -> bool:
        if self is other:
            return True
        if not isinstance(other, SolveOptions):
            return NotImplemented
        mine, theirs = self._value_key(), other._value_key()
        return mine is not None and mine == theirs

    @functools.cached_property
    def _hash(self) -> int:
        # Once per options object (they are frozen): every jitted call hashes the flow's
        # graph. Only the int is kept, which any copy of the options may share.
        key = self._value_key()
        return id(self) if key is None else hash(key)

    def __hash__(self) -> int:
        return self._hash

    def replace(self, **changes) -> SolveOptions:
        names = {field.name for field in dataclasses.fields(self)}
        unknown = set(changes) - names
        if unknown:
            raise TypeError(f"unknown options {sorted(unknown)}")
        return SolveOptions.create(**{name: getattr(self, name) for name in names} | changes)

    def describe(self) -> str:
        ctrl = self.stepsize_controller
        if isinstance(ctrl, diffrax.PIDController):
            tol = f"rtol={ctrl.rtol}, atol={ctrl.atol}"
        else:
            tol = f"{type(ctrl).__name__} with dt0={self.dt0}"
        return f"{type(self.solver).__name__}, {tol}, max_steps={self.max_steps}"


class AugmentedField(eqx.Module):
    """The right-hand side of the augmented ODE in normalised time s (module docstring).

    ``args`` is (field state, T, Hutchinson noise or None, condition features or None):
    the field is called f(t, z) or, with a condition, f(t, z, y). The divergence is
    taken in z only (y is held fixed). The Jacobian norm comes from
    the JVPs the divergence already formed: exact, or its unbiased estimate |J eps|^2.
    :mod:`cnfax.core.norms` keeps the regularisers out of step-size control.
    """

    graphdef: Any = eqx.field(static=True)
    trace: TraceEstimator = eqx.field(static=True)
    direction: int = eqx.field(static=True)
    with_logp: bool = eqx.field(static=True)
    count_backward: bool = eqx.field(static=True)
    regularize: bool = eqx.field(static=True, default=False)

    def __call__(self, s, y, args):
        state, end_time, noise, condition = args
        field = nnx.merge(self.graphdef, state)
        t = end_time * (s if self.direction == FORWARD else 1 - s)
        speed = self.direction * end_time

        def f(z):
            return field(t, z) if condition is None else field(t, z, condition)

        if self.with_logp:
            div = self.trace(f, y["z"], noise)
            out = {"z": speed * div.value, "delta_logp": -speed * div.trace}
            if self.regularize:
                out["kinetic_energy"] = end_time * jnp.sum(jnp.square(div.value), axis=-1)
                out["jacobian_frobenius"] = end_time * div.frobenius_sq
        else:
            out = {"z": speed * f(y["z"])}
        if self.count_backward:
            out = stats.count_backward(out)
        return out


class BlockSolution(NamedTuple):
    """One block's solve: z at s = 1 (or at each saved s, leading axis), the change in
    log-density, the regulariser integrals (or None) and the solver's statistics. Entries
    of failed solves are NaN."""

    z: Array
    delta_logp: Array | None
    regularizers: Regularizers | None
    stats: SolveStats


def mask_failed(ys: dict, ok: Array) -> dict:
    """NaN out the saved states of failed solves; ``ok`` is a scalar or one flag per point."""

    def mask(v):
        flags = ok if ok.ndim == 0 else ok.reshape((1, -1) + (1,) * (v.ndim - 2))
        return jnp.where(flags, v, jnp.nan)

    return jax.tree.map(mask, ys)


def solve_block(
    block: nnx.Module,
    end_time: Array,
    z: Array,
    direction: int,
    *,
    trace: TraceEstimator,
    options: SolveOptions,
    with_logp: bool,
    noise: Array | None,
    save_s: Array | None = None,
    regularize: bool = False,
    condition: Array | None = None,
) -> BlockSolution:
    """Solve one block's augmented ODE over s in [0, 1] in ``direction``.

    ``condition`` (conditional blocks only) holds the condition features of each point,
    shape ``z.shape[:-1] + (c,)``; with ``per_sample`` it is split per point like z.
    """
    graphdef, state = nnx.split(block)
    term = diffrax.ODETerm(
        AugmentedField(graphdef, trace, direction, with_logp, options.count_backward, regularize)
    )
    saveat = diffrax.SaveAt(t1=True) if save_s is None else diffrax.SaveAt(ts=save_s)

    def solve_one(z, noise, condition, state, end_time):
        y0 = {"z": z}
        if with_logp:
            y0["delta_logp"] = jnp.zeros(z.shape[:-1], z.dtype)
        if regularize:
            y0.update({k: jnp.zeros(z.shape[:-1], z.dtype) for k in REGULARIZER_KEYS})
        # The step in s units; not differentiated (no adjoint can differentiate dt0, and
        # the solution's dependence on T flows through the field's T instead).
        ds0 = None if options.dt0 is None else options.dt0 / jax.lax.stop_gradient(end_time)
        sol = diffrax.diffeqsolve(
            term,
            options.solver,
            t0=0.0,
            t1=1.0,
            dt0=ds0,
            y0=y0,
            args=(state, end_time, noise, condition),
            saveat=saveat,
            stepsize_controller=options.stepsize_controller,
            adjoint=options.adjoint,
            max_steps=options.max_steps,
            throw=False,
        )
        return sol.ys, sol.result == diffrax.RESULTS.successful, sol.stats

    if options.per_sample and z.ndim == 2:
        noise_axis = None if noise is None else 1
        condition_axis = None if condition is None else 0
        ys, lane_ok, raw = jax.vmap(
            solve_one, in_axes=(0, noise_axis, condition_axis, None, None), out_axes=(1, 0, 0)
        )(z, noise, condition, state, end_time)
        # The vmapped loop runs until its slowest lane is done: its cost is the max.
        raw = jax.tree.map(jnp.max, raw)
        success = jnp.all(lane_ok)
    else:
        ys, success, raw = solve_one(z, noise, condition, state, end_time)
        lane_ok = success
    nfe = solvers.evaluations_per_step(options.solver) * raw["num_steps"] + (
        solvers.initial_evaluations(options.solver)
    )
    solve_stats = SolveStats(
        steps=raw["num_steps"],
        accepted=raw["num_accepted_steps"],
        rejected=raw["num_rejected_steps"],
        nfe=jnp.asarray(nfe),
        success=success,
    )
    # A failed solve's numbers are not results: they become NaN, never silently wrong.
    ys = mask_failed(ys, lane_ok)
    zs = ys["z"] if save_s is not None else ys["z"][0]
    dlogp = ys["delta_logp"][0] if with_logp else None
    regs = Regularizers(*(ys[k][0] for k in REGULARIZER_KEYS)) if regularize else None
    return BlockSolution(zs, dlogp, regs, solve_stats)


def raise_on_failure(out: Array, solve_stats: SolveStats, options: SolveOptions) -> Array:
    """``out`` unchanged, or (with ``options.throw``) an error naming max_steps and the
    tolerances if any solve failed."""
    if not options.throw:
        return out
    return eqx.error_if(
        out,
        ~solve_stats.success,
        f"CNF solve failed: the solver reached max_steps={options.max_steps} "
        f"({options.describe()}). Raise max_steps, loosen rtol/atol, or "
        "regularise the field (e.g. kinetic energy).",
    )
