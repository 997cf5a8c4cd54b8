"""Benchmark: training-step time and NFE, solver overhead, compile time, gradient memory,
log-likelihood throughput, and shared-batch against per-sample solves.

    python experiments/benchmark.py            # quick mode (make bench)
    python experiments/benchmark.py --full     # more repeats and sizes

Writes bench/benchmark.json and bench/benchmark.md. Every time is a median over repeated
runs after compilation. Fields are freshly initialised (not trained), so NFE here is that
of a flow at the start of training.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time
from pathlib import Path

import diffrax
import jax
import jax.numpy as jnp
import optax
from flax import nnx

import cnfax
from cnfax.augmented import INVERSE, AugmentedField


def median_time(fn, repeats: int) -> float:
    """Median wall time of fn() (which must block), after one warm-up call."""
    fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def make_flow(dim, hidden, trace, **kwargs):
    field = cnfax.ConcatSquashMLP(dim, hidden, activation="tanh", rngs=nnx.Rngs(0))
    return cnfax.CNF(field, t1=0.5, trace=trace, **kwargs)


def make_step(flow):
    optimizer = nnx.Optimizer(flow, optax.adam(1e-3), wrt=nnx.Param)

    @nnx.jit
    def step(flow, optimizer, x, key):
        def loss(flow):
            logp, stats = flow.log_prob_and_stats(x, key=key)
            return -jnp.mean(logp), stats

        (value, stats), grads = nnx.value_and_grad(loss, has_aux=True)(flow)
        optimizer.update(flow, grads)
        return value, stats

    return optimizer, step


def training_step(dim, hidden, batch, trace_name, repeats):
    """(a) and (c): step time, NFE forward/backward, first-call (compile) time."""
    trace = cnfax.Exact() if trace_name == "exact" else cnfax.Hutchinson("rademacher")
    flow = make_flow(dim, hidden, trace, count_backward=True)
    optimizer, step = make_step(flow)
    x = jax.random.normal(jax.random.key(1), (batch, dim))
    key = jax.random.key(2)
    start = time.perf_counter()
    jax.block_until_ready(step(flow, optimizer, x, key))
    first_call = time.perf_counter() - start
    cnfax.backward_evaluations.reset()
    _, stats = jax.block_until_ready(step(flow, optimizer, x, key))
    nfe_backward = cnfax.backward_evaluations.count
    seconds = median_time(lambda: jax.block_until_ready(step(flow, optimizer, x, key)), repeats)
    return {
        "config": f"d={dim} hidden={'-'.join(map(str, hidden))} batch={batch} {trace_name}",
        "step_ms": 1e3 * seconds,
        "nfe_forward": int(stats.nfe),
        "nfe_backward": nfe_backward,
        "first_step_s": first_call,
    }


def solver_overhead(dim, hidden, batch, repeats):
    """(b): one log_prob solve / (NFE x one augmented-field evaluation in a jitted loop)."""
    flow = make_flow(dim, hidden, cnfax.Exact())
    x = jax.random.normal(jax.random.key(1), (batch, dim))
    solve = nnx.jit(lambda f, x: f.log_prob_and_stats(x))
    _, stats = solve(flow, x)
    t_solve = median_time(lambda: jax.block_until_ready(solve(flow, x)), repeats)

    graphdef, state = nnx.split(flow.blocks[0])
    term = AugmentedField(graphdef, flow.trace, INVERSE, True, False)
    args = (state, jnp.asarray(0.5), None)
    loops = 200

    @jax.jit
    def many_evaluations(y):
        def body(i, y):
            dy = term(jnp.asarray(0.5), y, args)
            return jax.tree.map(lambda a, b: a + 1e-6 * b, y, dy)  # a true data dependency

        return jax.lax.fori_loop(0, loops, body, y)

    y0 = {"z": x, "delta_logp": jnp.zeros(batch)}
    t_eval = median_time(lambda: jax.block_until_ready(many_evaluations(y0)), repeats) / loops
    nfe = int(stats.nfe)
    return {
        "config": f"d={dim} hidden={'-'.join(map(str, hidden))} batch={batch} exact",
        "solve_ms": 1e3 * t_solve,
        "nfe": nfe,
        "eval_us": 1e6 * t_eval,
        "overhead": t_solve / (nfe * t_eval),
    }


def gradient_memory(steps_list, dim, hidden, batch, trace_name):
    """(d): XLA's temporary buffer size for one gradient, against fixed RK4 step counts."""
    rows = []
    x = jax.random.normal(jax.random.key(1), (batch, dim))
    trace = cnfax.Exact() if trace_name == "exact" else cnfax.Hutchinson("rademacher")
    key = jax.random.key(2)
    for adjoint_name, adjoint in [
        ("backsolve", diffrax.BacksolveAdjoint()),
        ("checkpoint", diffrax.RecursiveCheckpointAdjoint()),
    ]:
        for steps in steps_list:
            flow = make_flow(
                dim,
                hidden,
                trace,
                solver=cnfax.RK4(),
                stepsize_controller=diffrax.ConstantStepSize(),
                dt0=0.5 / steps,
                adjoint=adjoint,
                max_steps=steps + 1,
            )
            graphdef, params = nnx.split(flow)

            def loss(params, x, graphdef=graphdef):
                return -jnp.mean(nnx.merge(graphdef, params).log_prob(x, key=key))

            compiled = jax.jit(jax.grad(loss)).lower(params, x).compile()
            memory = compiled.memory_analysis()
            temp = getattr(memory, "temp_size_in_bytes", None) if memory is not None else None
            rows.append(
                {
                    "config": f"d={dim} batch={batch} {trace_name}",
                    "adjoint": adjoint_name,
                    "solver_steps": steps,
                    "temp_MiB": None if temp is None else temp / 2**20,
                }
            )
    return rows


def throughput(dim, hidden, batch, repeats):
    """(e): exact log-likelihood points per second."""
    flow = make_flow(dim, hidden, cnfax.Exact())
    x = jax.random.normal(jax.random.key(1), (batch, dim))
    solve = nnx.jit(lambda f, x: f.log_prob(x))
    seconds = median_time(lambda: jax.block_until_ready(solve(flow, x)), repeats)
    return {
        "config": f"d={dim} hidden={'-'.join(map(str, hidden))} batch={batch} exact",
        "points_per_s": batch / seconds,
    }


def shared_vs_per_sample(batch, repeats):
    """(f): the batch as one state (per-point max norm) against one vmapped solve per point."""
    rows = []
    x = 2.0 * jax.random.normal(jax.random.key(1), (batch, 2))
    for mode in ("shared", "per-sample"):
        flow = make_flow(2, (64, 64, 64), cnfax.Exact(), per_sample=mode == "per-sample")
        solve = nnx.jit(lambda f, x: f.log_prob_and_stats(x))
        _, stats = solve(flow, x)
        seconds = median_time(
            lambda solve=solve, flow=flow: jax.block_until_ready(solve(flow, x)), repeats
        )
        rows.append({"mode": mode, "batch": batch, "nfe": int(stats.nfe), "ms": 1e3 * seconds})
    return rows


def markdown(results) -> str:
    lines = [
        f"Machine: {results['machine']}; JAX {results['jax']} on {results['backend']}; "
        f"mode: {results['mode']}.",
        "",
    ]
    lines += [
        "| (a) training step | ms | NFE fwd | NFE bwd | (c) first step s |",
        "| --- | --- | --- | --- | --- |",
    ]
    lines += [
        f"| {r['config']} | {r['step_ms']:.1f} | {r['nfe_forward']} | {r['nfe_backward']} "
        f"| {r['first_step_s']:.1f} |"
        for r in results["training_step"]
    ]
    lines += [
        "",
        "| (b) solver overhead | solve ms | NFE | one evaluation us | overhead |",
        "| --- | --- | --- | --- | --- |",
    ]
    lines += [
        f"| {r['config']} | {r['solve_ms']:.2f} | {r['nfe']} | {r['eval_us']:.1f} "
        f"| {r['overhead']:.2f} |"
        for r in results["solver_overhead"]
    ]
    lines += [
        "",
        "| (d) gradient memory | adjoint | solver steps | XLA temp MiB |",
        "| --- | --- | --- | --- |",
    ]
    lines += [
        f"| {r['config']} | {r['adjoint']} | {r['solver_steps']} | "
        f"{'n/a' if r['temp_MiB'] is None else format(r['temp_MiB'], '.1f')} |"
        for r in results["gradient_memory"]
    ]
    lines += ["", "| (e) exact log-likelihood | points/s |", "| --- | --- |"]
    lines += [f"| {r['config']} | {r['points_per_s']:.0f} |" for r in results["throughput"]]
    lines += ["", "| (f) batch solve | batch | NFE | ms |", "| --- | --- | --- | --- |"]
    lines += [
        f"| {r['mode']} | {r['batch']} | {r['nfe']} | {r['ms']:.1f} |"
        for r in results["shared_vs_per_sample"]
    ]
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--full", action="store_true", help="more repeats and sizes")
    parser.add_argument("--out", default="bench", help="output directory")
    args = parser.parse_args(argv)
    repeats = 10 if args.full else 3
    toy = (64, 64, 64)
    results = {
        "machine": f"{platform.machine()} {platform.processor() or ''} "
        f"{jax.device_count()}x {jax.devices()[0].device_kind}".strip(),
        "jax": jax.__version__,
        "backend": jax.default_backend(),
        "mode": "full" if args.full else "quick",
    }
    configs = [
        (2, toy, 100, "exact"),
        (2, toy, 100, "hutchinson"),
        (2, toy, 1000, "exact"),
        (2, toy, 1000, "hutchinson"),
        (64, (256, 256, 256), 500, "hutchinson"),
    ]
    results["training_step"] = [training_step(*c, repeats) for c in configs]
    print(json.dumps(results["training_step"], indent=1), flush=True)
    results["solver_overhead"] = [
        solver_overhead(2, toy, 1000, repeats),
        solver_overhead(64, (256, 256, 256), 500, repeats),
    ]
    print(json.dumps(results["solver_overhead"], indent=1), flush=True)
    steps = [16, 64, 256] if not args.full else [16, 64, 256, 1024]
    results["gradient_memory"] = gradient_memory(steps, 2, toy, 256, "exact") + gradient_memory(
        steps, 64, (256, 256, 256), 500, "hutchinson"
    )
    results["throughput"] = [
        throughput(2, toy, 10_000, repeats),
        throughput(64, (256, 256, 256), 1000 if args.full else 200, repeats),
    ]
    results["shared_vs_per_sample"] = shared_vs_per_sample(1000, repeats)
    out = Path(args.out)
    out.mkdir(exist_ok=True)
    (out / "benchmark.json").write_text(json.dumps(results, indent=2))
    table = markdown(results)
    (out / "benchmark.md").write_text(table)
    print(table)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
