"""One training step, and the steps of one training: a flow per tolerance, the objective
of the step, and a failed step (a failed solve, a non-finite loss or gradient) rejected
without touching the parameters or the optimizer's state."""

from __future__ import annotations

import dataclasses
import functools
import math
import time

import diffrax
import jax
import jax.numpy as jnp
from flax import nnx
from jax.sharding import Mesh

from cnfax.core.flow import CNF
from cnfax.core.stats import SolveStats, backward_evaluations
from cnfax.objectives import FlowMatching, MaximumLikelihood
from cnfax.parallel import data_parallel_loss_and_grad
from cnfax.train.runtime import compile_seconds, describe_failure, errors_without_callbacks


@functools.partial(nnx.jit, static_argnames=("objective", "mesh"))
def train_step(flow: CNF, optimizer: nnx.Optimizer, batch, key, mesh: Mesh, objective=None):
    """One optimizer step on the objective (maximum likelihood by default) over the
    sharded batch; returns (loss, solve statistics, the objective's metrics)."""
    objective = MaximumLikelihood() if objective is None else objective
    loss, stats, metrics, grads = data_parallel_loss_and_grad(objective, flow, batch, key, mesh)
    # A non-finite loss can come with finite gradients (an overflowing log-density, say):
    # poison them, so that apply_if_finite rejects the whole update.
    ok = jnp.isfinite(loss) & stats.success
    grads = jax.tree.map(lambda g: jnp.where(ok, g, jnp.nan), grads)
    optimizer.update(flow, grads)
    return loss, stats, metrics


@dataclasses.dataclass
class StepOutcome:
    """What one step did: its loss, solve statistics and metrics, or the cause of its
    rejection (then nothing was updated)."""

    loss: float
    stats: SolveStats | None
    metrics: dict
    cause: str | None
    seconds: float
    first_call: bool  # the first call of this step function in this process: it compiled
    compile_seconds: dict = dataclasses.field(default_factory=dict)  # of that first call:
    # trace_seconds, lower_seconds, compile_seconds (runtime.compile_seconds)


class Steps:
    """The steps of one training: the flow (one copy per training tolerance, sharing its
    parameters, so that each (objective, tolerance) pair is one compiled step, made once),
    the optimizer, the mesh, and the count of consecutive rejected steps."""

    def __init__(self, flow: CNF, optimizer: nnx.Optimizer, mesh: Mesh, *, callbacks: bool):
        self.flow, self.optimizer, self.mesh = flow, optimizer, mesh
        self.callbacks = callbacks  # count backward evaluations (a host callback)
        self._flows = {}
        self._called = set()
        self.consecutive_failures = 0
        self.rejected_total = 0

    def flow_at(self, tol: tuple[float, float]) -> CNF:
        if tol not in self._flows:
            controller = diffrax.PIDController(rtol=tol[0], atol=tol[1])
            self._flows[tol] = self.flow.replace(stepsize_controller=controller)
        return self._flows[tol]

    def run(self, objective, tol: tuple[float, float], batch, key) -> StepOutcome:
        """One step on a sharded batch at the tolerance ``tol`` (ignored by flow matching,
        which makes no solve)."""
        if isinstance(objective, FlowMatching):
            tol = ("flow matching",)  # one compiled step whatever the tolerance
            flow = self.flow
        else:
            flow = self.flow_at(tol)
        first_call = (objective, tol) not in self._called
        self._called.add((objective, tol))
        backward_evaluations.reset()
        compiled_before = compile_seconds()
        started = time.perf_counter()
        try:
            with errors_without_callbacks(not self.callbacks):
                loss, stats, metrics = train_step(
                    flow, self.optimizer, batch, key, self.mesh, objective
                )
            loss, cause = float(loss), None
            if not bool(stats.success):
                cause = f"forward solve reached max_steps={flow.options.max_steps}"
            elif not math.isfinite(loss):
                cause = f"non-finite loss {loss}"
            elif not bool(self.optimizer.opt_state.last_finite[...]):
                cause = "non-finite gradient (a backward solve that ran out of steps, say)"
        except RuntimeError as error:  # e.g. the backward solve ran out of steps
            # nnx.jit writes state back only on success: nothing was updated.
            loss, stats, metrics = float("nan"), None, {}
            cause = describe_failure(error, flow.options.max_steps, tol)
        if cause is None:
            self.consecutive_failures = 0
        else:  # apply_if_finite left parameters and optimizer state unchanged
            self.consecutive_failures += 1
            self.rejected_total += 1
        seconds = time.perf_counter() - started
        metrics = {name: float(value) for name, value in metrics.items()}
        spent = {}
        if first_call:
            spent = {k: v - compiled_before[k] for k, v in compile_seconds().items()}
        return StepOutcome(loss, stats, metrics, cause, seconds, first_call, spent)
