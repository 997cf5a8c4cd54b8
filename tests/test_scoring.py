"""The one chunked log-density loop: padding never changes a row, one compiled shape per
held-out set, the data-units conversion, and the evaluation flow."""

import logging

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

import cnfax
from cnfax.data.preprocess import to_data_units
from cnfax.scoring import bucket_size, evaluation_flow, held_out_nll, in_chunks


def test_held_out_nll_pads_every_chunk_to_one_shape_and_converts_to_data_units(caplog):
    """300 and 179 rows in chunks of 128: one compiled shape for both, and the mean equals
    -mean(log p_flow + log_det) computed row by row."""
    flow = cnfax.CNF(cnfax.ConcatSquashMLP(2, (8,), rngs=nnx.Rngs(0)), t1=0.5)
    x = np.asarray(jax.random.normal(jax.random.key(1), (300, 2)))
    jax.clear_caches()  # equal flows share compiled code: count this test's own
    log_det = np.linspace(-2.0, 1.0, 300)
    reference = -np.mean(to_data_units(np.asarray(flow.log_prob(jnp.asarray(x))), log_det))
    with jax.log_compiles(True), caplog.at_level(logging.WARNING):
        nll, nfe = held_out_nll(flow, x, log_det, chunk=128)
        nll_179, _ = held_out_nll(flow, x[:179], log_det[:179], chunk=128)
    shapes = {
        r.getMessage().split("with global shapes")[1][:200]
        for r in caplog.records
        if "Compiling jit(_sharded_log_prob)" in r.getMessage()
    }
    assert len(shapes) == 1, shapes
    assert abs(nll - reference) <= 1e-5 * (1 + abs(reference)) and nfe > 0
    reference_179 = -np.mean(
        to_data_units(np.asarray(flow.log_prob(jnp.asarray(x[:179]))), log_det[:179])
    )
    assert abs(nll_179 - reference_179) <= 1e-5 * (1 + abs(reference_179))


def test_the_evaluation_flow_uses_the_exact_trace_at_the_given_tolerance():
    field = cnfax.ConcatSquashMLP(2, (8,), rngs=nnx.Rngs(0))
    flow = cnfax.CNF(field, trace=cnfax.Hutchinson(), throw=False, count_backward=True)
    tight = evaluation_flow(flow, tol=1e-7)
    assert tight.trace == cnfax.Exact() and tight.options.throw
    assert not tight.options.count_backward
    assert tight.options.stepsize_controller.rtol == 1e-7
    assert tight.blocks[0] is flow.blocks[0]  # the same parameters


def test_in_chunks_covers_every_row_once_in_order():
    seen = in_chunks(lambda a, b: (a.tolist(), b), np.arange(10), None, chunk=4)
    assert [rows for rows, _ in seen] == [[0, 1, 2, 3], [4, 5, 6, 7], [8, 9]]
    assert all(b is None for _, b in seen)


def test_bucket_sizes_are_powers_of_two_rounded_to_the_devices():
    assert [bucket_size(n, 64) for n in (1, 2, 3, 5, 64)] == [1, 2, 4, 8, 64]
    assert bucket_size(5, 64, multiple=4) == 8 and bucket_size(1, 64, multiple=4) == 4
    assert bucket_size(100, 64) == 64


def test_forward_densities_in_chunks_equal_one_solve_and_mark_a_failed_solve_nan():
    """7 base draws in chunks of 3 (the last padded): the same z, log q and log p~ as one
    forward solve of all 7; with a step budget of 2 the solve fails, and log q is NaN."""
    from cnfax.scoring import forward_log_densities_in_chunks

    flow = cnfax.CNF(cnfax.ConcatSquashMLP(2, (8,), rngs=nnx.Rngs(0)), t1=0.5)

    def target(z):
        return -0.5 * jnp.sum(z**2, axis=-1)

    z0 = np.asarray(jax.random.normal(jax.random.key(2), (7, 2)))
    z, log_q, log_p, nfe = forward_log_densities_in_chunks(flow, target, z0, chunk=3)
    z_ref, log_q_ref, _ = flow.forward_log_prob_and_stats(jnp.asarray(z0))
    np.testing.assert_allclose(z, np.asarray(z_ref), atol=1e-5)
    np.testing.assert_allclose(log_q, np.asarray(log_q_ref), atol=1e-5)
    np.testing.assert_allclose(log_p, np.asarray(target(jnp.asarray(z))), atol=1e-5)
    assert nfe > 0
    starved = flow.replace(max_steps=2, throw=False)
    _, log_q, _, _ = forward_log_densities_in_chunks(starved, target, z0, chunk=3)
    assert np.all(np.isnan(log_q))
