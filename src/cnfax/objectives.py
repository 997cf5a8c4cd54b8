"""Training objectives for a CNF: maximum likelihood with RNODE's regularisers, and flow
matching.

An objective is called as ``objective(flow, batch, key) -> (loss, (stats, metrics))``: a
scalar loss to minimise, the solver statistics of any solve it made, and a dict of scalar
metrics to log. ``objective.make_batch(data, rng)`` turns a batch of data rows into what
the objective takes, on the host (flow matching pairs the data with base samples there).

- :class:`MaximumLikelihood` (FFJORD): the mean negative log-likelihood, plus RNODE's
  (Finlay et al. 2020) kinetic energy lambda_K int |f|^2 dt and Jacobian norm
  lambda_J int ||df/dz||_F^2 dt, integrated along the same solve, and an optional penalty
  lambda_T sum_b T_b on learned end times.
- :class:`FlowMatching` (Lipman et al. 2023): simulation-free regression of the field on
  the conditional optimal-transport path, optionally over minibatch optimal-transport
  pairs (Tong et al. 2023). The field it trains is a CNF like any other; its likelihood
  comes from the usual solve.

Conditional flows p(x | y). A batch is then the dict ``{"x": rows, "condition": y}``
(:func:`conditional_batch`), both with one row per point (a plain array is an
unconditional batch, as before); :func:`cnfax.parallel.shard_batch` shards such a dict
along its leading axis. Maximum likelihood uses log p(x | y); flow matching regresses
f(t, x_tau, e(y)) on the same path, whose minimiser is, for every y, the marginal field
of p(x | y). Minibatch OT pairs are refused with a condition (see :class:`FlowMatching`).
"""

from __future__ import annotations

import dataclasses
from typing import Literal

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from scipy.optimize import linear_sum_assignment

from cnfax.core.checks import check_condition
from cnfax.core.flow import CNF
from cnfax.core.stats import SolveStats

Array = jax.Array

X, CONDITION = "x", "condition"


def conditional_batch(x, condition) -> dict:
    """The batch of a conditional objective: rows x and their conditions, one per row."""
    return {X: x, CONDITION: condition}


def batch_parts(batch) -> tuple:
    """(rows, condition): a plain array is an unconditional batch (condition None), a dict
    ``{"x": rows, "condition": y}`` a conditional one."""
    if isinstance(batch, dict):
        if set(batch) != {X, CONDITION}:
            raise ValueError(
                f"a conditional batch is a dict with keys 'x' and 'condition', got {sorted(batch)}"
            )
        return batch[X], batch[CONDITION]
    return batch, None


@dataclasses.dataclass(frozen=True)
class MaximumLikelihood:
    """-mean log p(x) + lambda_K mean K(x) + lambda_J mean J(x) + lambda_T sum_b T_b.

    K(x) = int_0^T |f(t, z(t))|^2 dt and J(x) = int_0^T ||df/dz||_F^2 dt along the path of
    x (:meth:`cnfax.CNF.log_prob_and_regularizers`). Both are always integrated and
    logged, so that an unregularised run can be compared with a regularised one; they do
    not take part in step-size control. With a conditional batch
    (:func:`conditional_batch`) the likelihood is log p(x | y).
    """

    kinetic_energy_weight: float = 0.0
    jacobian_norm_weight: float = 0.0
    t1_penalty_weight: float = 0.0

    def __post_init__(self):
        for name in ("kinetic_energy_weight", "jacobian_norm_weight", "t1_penalty_weight"):
            if not getattr(self, name) >= 0:
                raise ValueError(f"{name} must be non-negative, got {getattr(self, name)!r}")

    def make_batch(self, data, rng: np.random.Generator):
        """The data rows as they are (an array, or a conditional batch dict)."""
        return data

    def __call__(self, flow: CNF, batch, key: Array | None):
        x, condition = batch_parts(batch)
        logp, regs, stats = flow.log_prob_and_regularizers(x, key=key, condition=condition)
        nll = -jnp.mean(logp)
        kinetic = jnp.mean(regs.kinetic_energy)
        jacobian = jnp.mean(regs.jacobian_frobenius)
        loss = nll + self.kinetic_energy_weight * kinetic + self.jacobian_norm_weight * jacobian
        if self.t1_penalty_weight:
            loss = loss + self.t1_penalty_weight * jnp.sum(flow.end_times)
        metrics = {"nll": nll, "kinetic_energy": kinetic, "jacobian_frobenius": jacobian}
        return loss, (stats, metrics)


def optimal_transport_pairs(base: np.ndarray, data: np.ndarray) -> np.ndarray:
    """Reorder ``base`` so that row i is paired with data row i by the exact optimal
    transport plan between the two empirical measures under squared Euclidean cost.

    With equal sizes and uniform weights the optimal plan is a permutation (Birkhoff), so
    the assignment problem solves it exactly (Tong et al. 2023 use the same exact plan).
    """
    cost = np.sum((data[:, None, :] - base[None, :, :]) ** 2, axis=-1)
    _, columns = linear_sum_assignment(cost)
    return base[columns]


@dataclasses.dataclass(frozen=True)
class FlowMatching:
    """Conditional flow matching on the optimal-transport path of Lipman et al. (2023).

    With a base sample x0 ~ N(0, I), a data point x1 and tau ~ U[0, 1]:

        x_tau = (1 - (1 - sigma_min) tau) x0 + tau x1,   u = x1 - (1 - sigma_min) x0,

    and the loss is E |T f(tau T, x_tau) - u|^2: the field, run for time T, should move
    x_tau with velocity u / T. Its minimiser is the marginal field that carries N(0, I) to
    the data convolved with N(0, sigma_min^2 I).

    With a condition (batch ``{"x": data, "condition": y}``) each pair keeps its data
    point's y and the loss is E |T f(tau T, x_tau, e(y)) - u|^2, whose minimiser is, for
    each y, the marginal field of p(x | y): E[u | x_tau, y] / T.

    Args:
        sigma_min: width of the path's end around each data point.
        time_exponent: alpha in the density of tau, p(tau) = (1 + alpha) tau^alpha on
            [0, 1] (tau = u^(1 / (1 + alpha)), u ~ U[0, 1]): 0 is uniform; alpha > 0 puts
            more pairs near the data end tau = 1, as FMPE does (Dax et al. 2023; sbi's
            ``time_prior_exponent``). The minimiser is the same field for any alpha: each
            tau's loss is still minimised by the marginal field.
        coupling: "independent" pairs (Lipman) or "ot": minibatch optimal-transport pairs
            (Tong et al.'s OT-CFM), which straighten the paths. "ot" is refused with a
            condition: the pairing ignores y, so base points are matched to data across
            different conditions and the noise paired with a given y is no longer
            N(0, I): the learned flow's base given y would be biased.
    """

    sigma_min: float = 1e-4
    coupling: Literal["independent", "ot"] = "independent"
    time_exponent: float = 0.0

    def __post_init__(self):
        if not 0 <= self.sigma_min < 1:
            raise ValueError(f"sigma_min must be in [0, 1), got {self.sigma_min!r}")
        if self.coupling not in ("independent", "ot"):
            raise ValueError(f"coupling must be 'independent' or 'ot', got {self.coupling!r}")
        if not self.time_exponent > -1:
            raise ValueError(f"time_exponent must be above -1, got {self.time_exponent!r}")

    def check_model(self, num_blocks: int, conditional: bool, learn_t1: bool = False) -> None:
        """Refuse a model that flow matching cannot train: several blocks or a learned end
        time (the path has one fixed time axis), or OT pairs with a condition."""
        if num_blocks != 1 or learn_t1:
            raise ValueError(
                "flow matching trains a single-block CNF (num_blocks=1) with a fixed end time"
            )
        self._refuse_ot_with(conditional)

    def _refuse_ot_with(self, conditional: bool) -> None:
        if conditional and self.coupling == "ot":
            raise ValueError(
                "flow matching with coupling='ot' cannot take a condition: minibatch OT "
                "pairs ignore y, matching noise to data of other conditions, which biases "
                "the base distribution given y away from N(0, I); use "
                "coupling='independent' for conditional data"
            )

    def make_batch(self, data, rng: np.random.Generator):
        """Pairs (x0, x1) as an array (n, 2, d), x0 drawn from the base distribution;
        for a conditional batch, ``{"x": pairs, "condition": y}``."""
        data, condition = batch_parts(data)
        self._refuse_ot_with(condition is not None)
        base = rng.standard_normal(data.shape).astype(data.dtype)
        if self.coupling == "ot":
            base = optimal_transport_pairs(base, data)
        pairs = np.stack([base, data], axis=1)
        return pairs if condition is None else conditional_batch(pairs, condition)

    def __call__(self, flow: CNF, batch, key: Array):
        pairs, condition = batch_parts(batch)
        self.check_model(flow.num_blocks, condition is not None, flow.learn_t1)
        condition = check_condition(condition, flow.condition_dim, pairs.shape[:1])
        x0, x1 = pairs[:, 0], pairs[:, 1]
        tau = jax.random.uniform(key, (x1.shape[0], 1), x1.dtype)
        if self.time_exponent:
            tau = tau ** (1 / (1 + self.time_exponent))
        x_tau = (1 - (1 - self.sigma_min) * tau) * x0 + tau * x1
        target = x1 - (1 - self.sigma_min) * x0
        end_time = flow.end_times[0].astype(x1.dtype)
        graphdef, state = nnx.split(flow.blocks[0])

        def velocity(t, z, h):  # one point at its own time, with its own features
            field = nnx.merge(graphdef, state)
            return field(t, z) if h is None else field(t, z, h)

        h = None  # the field's features of each pair's y, through the (trained) embedding
        if condition is not None:
            h = flow.embed(condition).astype(x1.dtype)
            h = jnp.broadcast_to(h, (x1.shape[0], h.shape[-1]))
        h_axis = None if h is None else 0
        predicted = end_time * jax.vmap(velocity, in_axes=(0, 0, h_axis))(
            tau[:, 0] * end_time, x_tau, h
        )
        loss = jnp.mean(jnp.sum(jnp.square(predicted - target), axis=-1))
        return loss, (SolveStats.zero(), {"flow_matching": loss})
