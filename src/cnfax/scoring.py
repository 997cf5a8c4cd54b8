"""Log-densities and draws of many rows, in chunks: the one loop that training's held-out
NLL, ``cnfax.load``, the posterior checks and the pictures share.

A compiled solve has one shape, so rows go in chunks of :data:`CHUNK`, padded with copies
of a chunk's first row, which are dropped afterwards. Inputs of at most one chunk are
padded to a bucket size (the next power of two), so a stream of ragged inputs compiles a
handful of times, not once per size; longer inputs pad their last chunk to the full chunk,
so that a held-out set of any length compiles once. Sizes are rounded up to a multiple of
the device count. The padding cannot change a real row's log-density:
every batched solve controls each point's own error (:func:`cnfax.batch_max_norm`).

Reported likelihoods use the exact trace (never an estimate): :func:`evaluation_flow`.
"""

from __future__ import annotations

import functools
from collections.abc import Callable

import diffrax
import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from jax.sharding import Mesh

from cnfax.core.flow import CNF
from cnfax.core.trace import Exact
from cnfax.data.preprocess import to_data_units
from cnfax.objectives import batch_parts
from cnfax.parallel import (
    DATA,
    data_mesh,
    data_parallel_log_prob,
    gather,
    local_rows,
    replicate,
    shard_batch,
)

CHUNK = 2048  # rows per compiled solve (the largest bucket)


def pid_controller(tol: float) -> diffrax.PIDController:
    """PID step-size control at rtol = atol = ``tol``."""
    return diffrax.PIDController(rtol=tol, atol=tol)


def evaluation_flow(flow: CNF, *, tol: float | None = None, throw: bool = True) -> CNF:
    """The same parameters with the exact trace (reported likelihoods are never estimates),
    no backward counting, and optionally PID control at rtol = atol = ``tol``."""
    changes = {"trace": Exact(), "count_backward": False, "throw": throw}
    if tol is not None:
        changes["stepsize_controller"] = pid_controller(tol)
    return flow.replace(**changes)


def in_chunks(fn: Callable, *arrays, chunk: int = CHUNK) -> list:
    """``fn`` of consecutive slices of at most ``chunk`` rows of the row-aligned
    ``arrays`` (None entries pass through as None), as a list."""
    n = len(arrays[0])
    for a in arrays:
        if a is not None and len(a) != n:
            raise ValueError(f"row counts differ: {n} and {len(a)}")
    return [
        fn(*(None if a is None else a[i : i + chunk] for a in arrays)) for i in range(0, n, chunk)
    ]


def pad_rows(rows: np.ndarray, size: int) -> np.ndarray:
    """``rows`` padded to ``size`` with copies of the first row."""
    return np.concatenate([rows, np.repeat(rows[:1], size - len(rows), axis=0)])


def bucket_size(n: int, chunk: int = CHUNK, multiple: int = 1) -> int:
    """The padded size of a chunk of n <= chunk rows: the next power of two (at most
    ``chunk``), rounded up to a multiple of ``multiple`` (the device count)."""
    size = min(chunk, 1 << max(0, (n - 1).bit_length()))
    return -(-size // multiple) * multiple


@functools.partial(jax.jit, static_argnames=("graphdef", "mesh"))
def _sharded_log_prob(graphdef, state, x, condition, mesh: Mesh):
    return data_parallel_log_prob(nnx.merge(graphdef, state), x, mesh, condition=condition)


def log_prob_in_chunks(
    flow: CNF, x, condition=None, *, mesh: Mesh | None = None, chunk: int | None = None
) -> tuple[np.ndarray, int]:
    """log p_flow of each row of x (n, dim), or log p(x_i | condition_i) with a condition
    of shape (n, c); float64 (n,), and the NFE of the costliest chunk. Each chunk is padded
    to its bucket size and sharded over the mesh's devices (all devices by default). Rows
    are cast to JAX's default float on the host (a cast on the device would compile once
    per input size). ``chunk`` defaults to :data:`CHUNK`."""
    chunk = CHUNK if chunk is None else chunk
    mesh = data_mesh() if mesh is None else mesh
    devices = mesh.shape[DATA]
    x = np.asarray(x)
    # One chunk: its bucket; several: every chunk at the full size (one compilation).
    fixed = None if len(x) <= chunk else bucket_size(chunk, chunk, devices)
    replicate(flow, mesh)
    graphdef, state = nnx.split(flow)
    dtype = jnp.result_type(float)

    def one_chunk(rows, given):
        size = fixed or bucket_size(len(rows), chunk, devices)

        def place(a):
            return shard_batch(local_rows(pad_rows(np.asarray(a), size).astype(dtype)), mesh)

        logp, stats = _sharded_log_prob(
            graphdef, state, place(rows), None if given is None else place(given), mesh
        )
        return np.asarray(gather(logp), np.float64)[: len(rows)], int(stats.nfe)

    parts = in_chunks(one_chunk, x, condition, chunk=chunk)
    if not parts:
        return np.zeros(0), 0
    return np.concatenate([p for p, _ in parts]), max(nfe for _, nfe in parts)


def held_out_nll(
    flow: CNF,
    batch,
    log_det: np.ndarray | None = None,
    mesh: Mesh | None = None,
    chunk: int | None = None,
) -> tuple[float, int]:
    """Mean NLL (nats) over the rows of ``batch`` (rows x, or a conditional batch
    ``{"x": x, "condition": y}``: then of x given y), in data units when the
    preprocessing's ``log_det`` per row is given, and the NFE of the costliest chunk."""
    x, condition = batch_parts(batch)
    logp, nfe = log_prob_in_chunks(flow, x, condition, mesh=mesh, chunk=chunk)
    if log_det is not None:
        logp = to_data_units(logp, np.asarray(log_det, np.float64))
    return -float(np.mean(logp, dtype=np.float64)), nfe


@functools.partial(nnx.jit, static_argnames=("target",))
def _forward_log_densities(flow: CNF, z0, target: Callable):
    z, log_q, stats = flow.forward_log_prob_and_stats(z0)
    return z, log_q, jnp.asarray(target(z)), stats.success, stats.nfe


def forward_log_densities_in_chunks(
    flow: CNF, target: Callable, z0, *, mesh: Mesh | None = None, chunk: int | None = None
) -> tuple[np.ndarray, np.ndarray, np.ndarray, int]:
    """The draws z = T(z0) of base draws z0 (n, dim), with log q(z) (carried along the same
    forward solve) and log p~(z) of a target: float64 (n, dim), (n,), (n,), and the NFE of
    the costliest chunk. Chunks are padded and sharded as in :func:`log_prob_in_chunks`.
    A chunk whose solve failed (with ``throw=False``) gets log q = NaN, so that nothing
    computed from it looks finite; a target that returns the wrong shape is a ValueError
    naming it."""
    chunk = CHUNK if chunk is None else chunk
    mesh = data_mesh() if mesh is None else mesh
    devices = mesh.shape[DATA]
    z0 = np.asarray(z0)
    if z0.ndim != 2 or z0.shape[1] != flow.dim:
        raise ValueError(f"the base draws must have shape (n, {flow.dim}), got {z0.shape}")
    fixed = None if len(z0) <= chunk else bucket_size(chunk, chunk, devices)
    replicate(flow, mesh)
    dtype = jnp.result_type(float)

    def one_chunk(rows):
        size = fixed or bucket_size(len(rows), chunk, devices)
        placed = shard_batch(local_rows(pad_rows(rows, size).astype(dtype)), mesh)
        z, log_q, log_p, success, nfe = _forward_log_densities(flow, placed, target)
        if log_p.shape != (size,):
            raise ValueError(
                f"the target log-density must return one value per draw, shape ({size},) "
                f"for draws of shape {(size, flow.dim)}; got shape {log_p.shape}"
            )
        n = len(rows)
        log_q = np.asarray(gather(log_q), np.float64)[:n]
        if not bool(success):
            log_q = np.full_like(log_q, np.nan)
        z = np.asarray(gather(z), np.float64)[:n]
        return z, log_q, np.asarray(gather(log_p), np.float64)[:n], int(nfe)

    parts = in_chunks(one_chunk, z0, chunk=chunk)
    if not parts:
        return np.zeros((0, flow.dim)), np.zeros(0), np.zeros(0), 0
    z, log_q, log_p, nfe = zip(*parts, strict=True)
    return np.concatenate(z), np.concatenate(log_q), np.concatenate(log_p), max(nfe)


# --------------------------------------------------------------- any conditional model


def as_rows(a, width: int, name: str) -> np.ndarray:
    """``a`` as float64 rows (n, width); one point (width,) becomes one row."""
    a = np.asarray(a, np.float64)
    if a.ndim == 1:
        a = a[None]
    if a.ndim != 2 or a.shape[1] != width:
        raise ValueError(f"{name} must have shape (n, {width}) or ({width},), got {a.shape}")
    return a


def batched_log_prob(model, theta: np.ndarray, condition: np.ndarray, chunk: int = 20_000):
    """log q(theta_i | condition_i) of any model with ``log_prob(theta, condition=)`` for
    row-aligned theta (n, d) and condition (n, c), in calls of at most ``chunk`` rows;
    float64 (n,)."""
    if len(theta) != len(condition):
        raise ValueError(f"{len(theta)} points but {len(condition)} conditions")

    def call(t, c):
        return np.asarray(model.log_prob(t, condition=c), np.float64).reshape(-1)

    out = in_chunks(call, theta, condition, chunk=chunk)
    return np.concatenate(out) if out else np.zeros(0)


def batched_sample(model, key, condition: np.ndarray, chunk: int = 20_000) -> np.ndarray:
    """One draw theta_i ~ q(. | condition_i) per row of condition (n, c), in calls of at
    most ``chunk`` rows (the i-th call with the key ``fold_in(key, i)``); float64 (n, d)."""
    calls = iter(range(len(condition)))

    def call(part):
        key_i = jax.random.fold_in(key, next(calls))
        return np.asarray(model.sample(key_i, len(part), condition=part), np.float64)

    return np.concatenate(in_chunks(call, condition, chunk=chunk))


def numpy_rng(key) -> np.random.Generator:
    """A numpy generator seeded by a JAX key (typed or raw uint32)."""
    if jax.dtypes.issubdtype(getattr(key, "dtype", None), jax.dtypes.prng_key):
        key = jax.random.key_data(key)
    return np.random.default_rng(np.asarray(key, np.uint32).ravel().tolist())
