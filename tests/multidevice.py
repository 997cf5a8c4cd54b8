"""Checks that need 4 devices; tests/test_parallel.py runs this file in a subprocess with
XLA_FLAGS=--xla_force_host_platform_device_count=4 (the flag must precede JAX's start).
The whole `make train` path on 4 devices runs there too, as experiments/train.py.

    python tests/multidevice.py RUN_DIR
"""

import json
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

import cnfax
from cnfax.evaluation import held_out_nll
from cnfax.objectives import MaximumLikelihood
from cnfax.parallel import data_mesh, data_parallel_loss_and_grad, shard_batch
from cnfax.run.config import Config
from cnfax.train import train


def check_sharded_gradient_is_the_mean_of_per_shard_gradients():
    mesh = data_mesh()
    field = cnfax.ConcatSquashMLP(2, (16, 16), rngs=nnx.Rngs(0))
    flow = cnfax.CNF(field, t1=0.5, trace=cnfax.Hutchinson("rademacher"), learn_t1=True)
    x = jax.random.normal(jax.random.key(1), (64, 2))
    key = jax.random.key(2)
    step = nnx.jit(data_parallel_loss_and_grad, static_argnames=("objective", "mesh"))
    loss, stats, _, grads = step(
        MaximumLikelihood(), flow, shard_batch(np.asarray(x), mesh), key, mesh
    )
    # One jitted per-shard gradient, the shard and its key as arguments: compiled once.
    shard_grad = nnx.jit(lambda f, p, k: nnx.grad(lambda g: -jnp.mean(g.log_prob(p, key=k)))(f))
    per_shard = [
        shard_grad(flow, part, jax.random.fold_in(key, i)) for i, part in enumerate(jnp.split(x, 4))
    ]
    expected = jax.tree.map(lambda *g: sum(g) / 4, *per_shard)
    flat = lambda t: jnp.concatenate([jnp.ravel(v) for v in jax.tree.leaves(t)])  # noqa: E731
    error = float(jnp.linalg.norm(flat(grads) - flat(expected)) / jnp.linalg.norm(flat(expected)))
    assert error <= 1e-5, error
    assert bool(stats.success) and int(stats.nfe) > 0
    return error


def check_indivisible_batch_is_refused(run_dir):
    try:
        train(Config(batch_size=30, iters=1, run_dir=str(run_dir / "indivisible")))
    except ValueError as problem:
        assert "does not divide over 4 devices" in str(problem), problem
        return str(problem)
    raise AssertionError("a batch of 30 over 4 devices was accepted")


def check_held_out_nll_over_several_chunks_equals_the_unsharded_mean():
    """Several sharded chunks and a padded last one (700 rows in chunks of 256 over 4
    devices) give the mean of log_prob computed on one device, row for row."""
    field = cnfax.ConcatSquashMLP(2, (16,), rngs=nnx.Rngs(3))
    flow = cnfax.CNF(field, t1=0.5)
    x = np.asarray(jax.random.normal(jax.random.key(4), (700, 2)))
    log_det = np.linspace(-1.0, 1.0, 700)
    nll, _ = held_out_nll(flow, x, log_det, chunk=256)
    reference = -np.mean(np.asarray(flow.log_prob(jnp.asarray(x)), np.float64) + log_det)
    assert abs(nll - reference) <= 1e-5 * (1 + abs(reference)), (nll, reference)
    return nll - reference


if __name__ == "__main__":
    assert jax.device_count() == 4, jax.devices()
    out = Path(sys.argv[1])
    report = {
        "gradient_relative_error": check_sharded_gradient_is_the_mean_of_per_shard_gradients(),
        "indivisible": check_indivisible_batch_is_refused(out),
        "held_out_gap": check_held_out_nll_over_several_chunks_equals_the_unsharded_mean(),
    }
    print(json.dumps(report))
