"""Data parallelism over every JAX device (and host) with JAX's own sharding.

The batch is split along a one-axis ``jax.sharding.Mesh`` named ``"data"``; parameters are
replicated. Inside ``jax.shard_map`` each device solves the ODE of its own shard, with its
own adaptive steps (no collective per solver step), and only the loss, the gradient and the
solver statistics are reduced, once per training step. With one device this is the plain
single-device step.

Several hosts: call ``jax.distributed.initialize()`` first (see the README); the mesh
then spans the devices of all hosts, and each host passes its own slice of the batch to
:func:`shard_batch`.

A batch may be a dict of arrays with a common leading batch axis (a conditional batch
``{"x": rows, "condition": y}``): :func:`shard_batch` and :func:`local_rows` split every
entry along that axis, and ``P("data")`` in the shard_map specs applies to every leaf.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from cnfax.core.stats import SolveStats

DATA = "data"


def data_mesh() -> jax.sharding.Mesh:
    """A mesh over all devices of all processes, with one axis, ``"data"``."""
    # Auto axes: XLA places the (replicated) parameters and reshards inputs as needed.
    return jax.make_mesh((jax.device_count(),), (DATA,), axis_types=(jax.sharding.AxisType.Auto,))


def check_divisible(batch_size: int, mesh: jax.sharding.Mesh) -> None:
    devices = mesh.shape[DATA]
    if batch_size % devices:
        raise ValueError(
            f"batch size {batch_size} does not divide over {devices} devices; "
            f"use a multiple of {devices}"
        )


def shard_batch(local_batch: np.ndarray | dict, mesh: jax.sharding.Mesh) -> jax.Array | dict:
    """A global batch sharded over the data axis, from this process's rows (a dict of
    arrays, such as a conditional batch, entry by entry along the leading axis)."""
    if isinstance(local_batch, dict):
        return {name: shard_batch(part, mesh) for name, part in local_batch.items()}
    sharding = NamedSharding(mesh, P(DATA))
    return jax.make_array_from_process_local_data(sharding, np.asarray(local_batch))


def _reduce_stats(stats: SolveStats) -> SolveStats:
    """Costs are the slowest device's (every device waits for it); success needs all."""
    pmax = lambda v: jax.lax.pmax(v, DATA)  # noqa: E731
    return SolveStats(
        steps=pmax(stats.steps),
        accepted=pmax(stats.accepted),
        rejected=pmax(stats.rejected),
        nfe=pmax(stats.nfe),
        success=jax.lax.pmin(stats.success.astype(jnp.int32), DATA).astype(bool),
    )


def data_parallel_loss_and_grad(objective, flow, batch, key, mesh):
    """An objective's loss over the global batch, its gradient (parameters), the solver
    statistics and the objective's metrics, each shard on its own device.

    ``objective(model, shard, key) -> (loss, (stats, metrics))`` is a
    :mod:`cnfax.objectives` objective. Shard i uses the key ``fold_in(key, i)``. Loss,
    gradient and metrics are means over shards: for equal shards, the mean over the global
    batch (tests/test_parallel.py checks the gradient against per-shard gradients).
    """
    graphdef, params, rest = nnx.split(flow, nnx.Param, ...)
    batch = jax.lax.with_sharding_constraint(batch, NamedSharding(mesh, P(DATA)))

    def per_shard(params, rest, batch, key):
        key = jax.random.fold_in(key, jax.lax.axis_index(DATA))

        def loss_fn(params):
            return objective(nnx.merge(graphdef, params, rest), batch, key)

        (loss, (stats, metrics)), grads = jax.value_and_grad(loss_fn, has_aux=True)(params)
        mean = lambda tree: jax.lax.pmean(tree, DATA)  # noqa: E731
        return mean(loss), _reduce_stats(stats), mean(metrics), mean(grads)

    return jax.shard_map(
        per_shard,
        mesh=mesh,
        in_specs=(P(), P(), P(DATA), P()),
        out_specs=P(),
        check_vma=False,  # equinox's runtime checks (error_if) do not carry shard types
    )(params, rest, batch, key)


def data_parallel_log_prob(flow, x, mesh, condition=None):
    """log p (or log p(x | y)) of each row of a sharded batch, each shard solved on its own
    device; returns (log p sharded like x, the solves' statistics). A condition of shape
    (n, c) is sharded like x; one of shape (c,) is replicated."""
    graphdef, state = nnx.split(flow)
    x = jax.lax.with_sharding_constraint(x, NamedSharding(mesh, P(DATA)))
    per_row = condition is not None and jnp.ndim(condition) == 2
    if per_row:
        condition = jax.lax.with_sharding_constraint(condition, NamedSharding(mesh, P(DATA)))

    def per_shard(state, x, condition):
        flow = nnx.merge(graphdef, state)
        logp, stats = flow.log_prob_and_stats(x, condition=condition)
        return logp, _reduce_stats(stats)

    return jax.shard_map(
        per_shard,
        mesh=mesh,
        in_specs=(P(), P(DATA), P(DATA) if per_row else P()),
        out_specs=(P(DATA), P()),
        check_vma=False,
    )(state, x, condition)


def replicate(module: nnx.Module, mesh: jax.sharding.Mesh) -> None:
    """Place every array of an NNX module on all devices of the mesh (replicated), in place,
    so that it can meet batches sharded over the mesh in one computation."""
    state = nnx.state(module)
    nnx.update(module, jax.device_put(state, NamedSharding(mesh, P())))


def local_rows(batch: np.ndarray | dict) -> np.ndarray | dict:
    """This process's share of a global batch (every process generates the same batch);
    a dict of arrays is split entry by entry."""
    if isinstance(batch, dict):
        return {name: local_rows(part) for name, part in batch.items()}
    rows = len(batch) // jax.process_count()
    return batch[jax.process_index() * rows : (jax.process_index() + 1) * rows]


def gather(x: jax.Array) -> np.ndarray:
    """A global array as one NumPy array on every process."""
    if x.is_fully_addressable:
        return np.asarray(x)
    from jax.experimental import multihost_utils

    return np.asarray(multihost_utils.process_allgather(x, tiled=True))
