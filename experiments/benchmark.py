"""Benchmark: training-step time and NFE, solver overhead, compile time, gradient memory,
log-likelihood throughput, and shared-batch against per-sample solves (the quick
sections); time to a good density (time-to-NLL); and the peer comparison with FFJORD's
PyTorch/torchdiffeq model.

    python experiments/benchmark.py                      # quick sections (make bench)
    python experiments/benchmark.py --full               # more repeats and sizes
    python experiments/benchmark.py --sections ttn       # time-to-NLL (make bench-ttn)
    python experiments/benchmark.py --sections peers     # peers (make bench-peers)
    python experiments/benchmark.py --sections ttn peers # both, sharing cnfax's runs
    python experiments/benchmark.py --sections vi        # variational inference (make bench-vi)
    python experiments/benchmark.py --sections sbi       # C2ST on sbibm's tasks (bench_sbi)

The quick sections write bench/benchmark.{json,md}: every time is a median over repeated
runs after compilation; fields are freshly initialised (not trained), so NFE here is that
of a flow at the start of training.

Time-to-NLL (bench/time_to_nll.{json,md}) runs ``experiments/train.py`` in a fresh
process for each recipe, dataset and seed, and reads its metrics: the seconds from the
command's launch (imports and compilation included, the periodic held-out evaluations
excluded) until the held-out NLL (2,000 points, exact trace, tol 1e-5) first reaches the
dataset's threshold, and the final test NLL of ``make train``'s evaluation (10,000 points,
tol 1e-6). The default recipe's compilation cache starts empty for each dataset's seed 0
(a first run, "cold") and is reused by seed 1 and by a rerun of 8gaussians seed 0 ("warm").
The peers section adds experiments/ffjord_torch.py on the same data (needs the ``peers``
extra: torch and torchdiffeq).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

import bench_sbi
import diffrax
import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

import cnfax
from cnfax.core.augmented import INVERSE, AugmentedField
from cnfax.parallel import data_mesh, replicate, shard_batch
from cnfax.run.builders import build_dataset, build_optimizer
from cnfax.run.config import Config, recipe
from cnfax.run.model import build_flow
from cnfax.train import train_step as cnfax_train_step

sys.path.insert(0, str(Path(__file__).resolve().parent))  # run as a script or imported
from benchmark_vi import VI_TARGETS, vi_markdown, vi_section  # noqa: E402

HERE = Path(__file__).resolve().parent
THRESHOLDS = {"8gaussians": 2.90, "checkerboard": 3.70, "pinwheel": 2.45}


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


# ---------------------------------------------------------------------------- time to NLL


def load_rows(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def nll_curve(rows: list[dict], launched: float) -> list[tuple[int, float, float]]:
    """(step, seconds since launch less the evaluations so far, held-out NLL) per evaluation.
    A row's clock is read after its evaluation, so that evaluation is subtracted too."""
    curve, evaluating = [], 0.0
    for row in rows:
        nll = row.get("validation_nll", row.get("test_nll"))  # test_nll: runs before the rename
        if nll is not None:
            evaluating += row["eval_seconds"]
            curve.append((row["step"], row["unix_time"] - launched - evaluating, nll))
    return curve


def first_reached(curve, threshold: float) -> tuple[int, float] | tuple[None, None]:
    """(step, seconds) of the first evaluation at or below the threshold."""
    for step, seconds, nll in curve:
        if nll <= threshold:
            return step, seconds
    return None, None


def compile_seconds(rows: list[dict]) -> list[dict]:
    """For each step function a run used (a phase, a tolerance): its first call's time less
    the median of its later calls, i.e. the time to compile it or load it from the cache."""
    out, phase = [], None
    for row in rows:
        if "step_seconds" not in row:
            continue
        if row.get("first_call"):
            phase = {"step": row["step"], "first_s": row["step_seconds"], "later": []}
            # JAX's own timings of that first call (cnfax.train.runtime.compile_seconds)
            phase["stages"] = [row.get(f"{s}_seconds") for s in ("trace", "lower", "compile")]
            out.append(phase)
        elif phase is not None:
            phase["later"].append(row["step_seconds"])
    return [
        {
            "step": p["step"],
            "first_step_s": p["first_s"],
            "median_step_s": statistics.median(p["later"]) if p["later"] else None,
            "compile_s": p["first_s"] - (statistics.median(p["later"]) if p["later"] else 0.0),
            "trace_s": p["stages"][0],
            "lower_s": p["stages"][1],
            "xla_s": p["stages"][2],
        }
        for p in out
    ]


def _compile_cell(phase: dict) -> str:
    """A step function's compile time, with JAX's trace / lower / XLA split when logged."""
    cell = f"{phase['compile_s']:.1f}"
    if phase.get("trace_s") is not None:
        cell += f" ({phase['trace_s']:.2f} / {phase['lower_s']:.2f} / {phase['xla_s']:.2f})"
    return cell


def train_run(flags: list[str], run_dir: Path, threshold: float) -> dict:
    """``experiments/train.py`` in a fresh process (train, then make train's evaluation);
    its time to the threshold, final test NLL, compile times and step times."""
    shutil.rmtree(run_dir, ignore_errors=True)
    command = [sys.executable, str(HERE / "train.py"), *flags, "--run-dir", str(run_dir)]
    command += ["--no-pictures"]
    launched = time.time()
    done = subprocess.run(command, capture_output=True, text=True)
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(command)} failed:\n{done.stderr[-3000:]}")
    rows = load_rows(run_dir)
    curve = nll_curve(rows, launched)
    step, seconds = first_reached(curve, threshold)
    evaluation = json.loads((run_dir / "evaluation_latest.json").read_text())
    steps = [r["step_seconds"] for r in rows if "step_seconds" in r and not r.get("first_call")]
    return {
        "flags": flags,
        "threshold": threshold,
        "seconds_to_threshold": seconds,
        "step_at_threshold": step,
        "final_test_nll": evaluation["test_nll"],
        "final_test_nfe": evaluation["test_nfe"],
        "training_seconds": curve[-1][1],
        "median_step_s": statistics.median(steps) if steps else None,
        "compile": compile_seconds(rows),
        "curve": curve,
    }


def time_to_nll(datasets, seeds, recipes, out: Path, eval_every: int) -> list[dict]:
    """Each recipe on each dataset and seed, one fresh process each (see the docstring)."""
    cache_root = out / "jax-cache"
    shutil.rmtree(cache_root, ignore_errors=True)
    runs = []
    for dataset in datasets:
        for name in recipes:
            for seed in seeds:
                flags = ["--recipe", name, "--dataset", dataset, "--seed", str(seed)]
                flags += ["--eval-every", str(eval_every)]
                cache = ""
                if recipe(name).compilation_cache:
                    # Seed 0 starts from an empty cache; later seeds reuse what it compiled.
                    cache = str(cache_root / dataset)
                    if seed == seeds[0]:
                        shutil.rmtree(cache, ignore_errors=True)
                    flags += ["--compilation-cache", cache]
                run_dir = out / "runs" / f"{name}-{dataset}-{seed}"
                run = train_run(flags, run_dir, THRESHOLDS[dataset])
                run.update(recipe=name, dataset=dataset, seed=seed)
                run["cache"] = "none" if not cache else ("cold" if seed == seeds[0] else "warm")
                runs.append(run)
                print(json.dumps({k: v for k, v in run.items() if k != "curve"}), flush=True)
    return runs


def rerun(first: dict, out: Path) -> dict:
    """The same command as ``first`` again, in a fresh process: with the compilation cache
    that the first run filled (if its recipe has one)."""
    run = train_run(first["flags"], out / "runs" / "rerun", first["threshold"])
    run.update(recipe=first["recipe"], dataset=first["dataset"], seed=first["seed"])
    run["cache"] = "none" if first["cache"] == "none" else "warm (rerun)"
    print(json.dumps({k: v for k, v in run.items() if k != "curve"}), flush=True)
    return run


# ---------------------------------------------------------------------------- peers


def cnfax_step_timings(batch_sizes, repeats) -> list[dict]:
    """Seconds of cnfax's training step (the default recipe's, cnfax.train.train_step) of a
    freshly initialised model at each batch size, as the peer measures its own."""
    rows = []
    mesh = data_mesh()
    for batch in batch_sizes:
        config = dataclasses.replace(recipe("default"), batch_size=batch)
        flow = build_flow(config, 2)
        optimizer = nnx.Optimizer(flow, build_optimizer(config), wrt=nnx.Param)
        replicate(flow, mesh)
        replicate(optimizer, mesh)
        x = shard_batch(np.asarray(jax.random.normal(jax.random.key(1), (batch, 2))), mesh)
        key = jax.random.key(2)

        def step(flow=flow, optimizer=optimizer, x=x, key=key):
            return jax.block_until_ready(cnfax_train_step(flow, optimizer, x, key, mesh))

        start = time.perf_counter()
        _, stats, _ = step()
        first = time.perf_counter() - start
        seconds = median_time(step, repeats)
        rows.append(
            {"batch": batch, "step_s": seconds, "nfe_forward": int(stats.nfe), "first_s": first}
        )
    return rows


def peer_data(dataset: str, seed: int, iters: int, path: Path) -> None:
    """The batches and held-out points cnfax's run of (dataset, seed) sees, for the peer."""
    data = build_dataset(Config(dataset=dataset, seed=seed))
    train = np.stack([data.train_batch(step, 256) for step in range(iters)])
    held_out, _ = data.held_out("validation", 2000)
    path.parent.mkdir(parents=True, exist_ok=True)
    np.savez(path, train=train, held_out=held_out)


def peer_run(flags: list[str], out: Path) -> dict:
    command = [sys.executable, str(HERE / "ffjord_torch.py"), *flags, "--out", str(out)]
    launched = time.time()
    done = subprocess.run(command, capture_output=True, text=True)
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(command)} failed:\n{done.stderr[-3000:]}")
    result = json.loads(out.read_text())
    result["launched"] = launched
    return result


def peers(datasets, seed, iters, eval_every, repeats, batches, out: Path) -> dict:
    """FFJORD's PyTorch model: step times at each batch size (beside cnfax's), and its time
    to each dataset's threshold on cnfax's data for ``seed`` (stopping there)."""
    timings = peer_run(
        ["--step-batches", *map(str, batches), "--repeats", str(repeats)], out / "peer-steps.json"
    )
    result = {
        "torch": timings["torch"],
        "torch_threads": timings["threads"],
        "peer_steps": timings["step_timings"],
        "cnfax_steps": cnfax_step_timings(batches, repeats),
        "runs": [],
    }
    for dataset in datasets:
        data = out / "peer-data" / f"{dataset}-{seed}.npz"
        peer_data(dataset, seed, iters, data)
        flags = ["--data", str(data), "--threshold", str(THRESHOLDS[dataset])]
        flags += ["--eval-every", str(eval_every), "--seed", str(seed)]
        run = peer_run(flags, out / f"peer-{dataset}-{seed}.json")
        curve = nll_curve(run["curve"], run["launched"])
        step, seconds = first_reached(curve, THRESHOLDS[dataset])
        steps = [r["step_seconds"] for r in run["curve"]]
        entry = {
            "dataset": dataset,
            "seed": seed,
            "seconds_to_threshold": seconds,
            "step_at_threshold": step,
            "steps_run": curve[-1][0] if curve else 0,
            "seconds_run": curve[-1][1] if curve else None,
            "median_step_s": statistics.median(steps) if steps else None,
            "nfe_last": [run["curve"][-1]["nfe_forward"], run["curve"][-1]["nfe_backward"]]
            if run["curve"]
            else None,
            "curve": curve,
        }
        result["runs"].append(entry)
        print(json.dumps({k: v for k, v in entry.items() if k != "curve"}), flush=True)
    return result


def _seconds(value) -> str:
    return "not reached" if value is None else f"{value:.1f}"


def ttn_markdown(results: dict) -> str:
    lines = [
        f"Machine: {results['machine']}; JAX {results['jax']}; load average before "
        f"{results['load_before']}, after {results['load_after']}.",
        "",
    ]
    runs = results.get("runs", [])
    if runs:
        lines += [
            "| recipe | dataset | seed | cache | time to threshold (s) | step | "
            "final test NLL | training s | median step ms | compile s (first step: trace / "
            "lower / XLA or cache) |",
            "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
        ]
        for r in runs:
            compiles = " + ".join(_compile_cell(c) for c in r["compile"])
            lines.append(
                f"| {r['recipe']} | {r['dataset']} | {r['seed']} | {r['cache']} | "
                f"{_seconds(r['seconds_to_threshold'])} | {r['step_at_threshold']} | "
                f"{r['final_test_nll']:.3f} | {r['training_seconds']:.1f} | "
                f"{1e3 * r['median_step_s']:.1f} | {compiles} |"
            )
        lines += ["", "| dataset (threshold) | " + " | ".join(results["recipes"]) + " | ratio |"]
        lines += ["| --- " * (len(results["recipes"]) + 2) + "|"]
        for dataset in results["datasets"]:
            means = []
            for name in results["recipes"]:
                times = [
                    r["seconds_to_threshold"]
                    for r in runs
                    if r["dataset"] == dataset
                    and r["recipe"] == name
                    and r["cache"] != "warm (rerun)"
                ]
                ok = times and all(t is not None for t in times)
                means.append(statistics.mean(times) if ok else None)
            ratio = (
                f"{means[0] / means[-1]:.1f}x"
                if len(means) > 1 and None not in (means[0], means[-1])
                else "n/a"
            )
            cells = " | ".join(_seconds(m) for m in means)
            lines.append(f"| {dataset} ({THRESHOLDS[dataset]}) | {cells} | {ratio} |")
    peers_result = results.get("peers")
    if peers_result:
        lines += [
            "",
            f"Peer: PyTorch {peers_result['torch']} ({peers_result['torch_threads']} threads) "
            "with torchdiffeq, FFJORD's toy model.",
            "",
            "| training step, fresh init | cnfax ms (NFE fwd) | peer ms (NFE fwd / bwd) | "
            "peer / cnfax |",
            "| --- | --- | --- | --- |",
        ]
        for c, p in zip(peers_result["cnfax_steps"], peers_result["peer_steps"], strict=True):
            lines.append(
                f"| batch {c['batch']} | {1e3 * c['step_s']:.1f} ({c['nfe_forward']}) | "
                f"{1e3 * p['step_s']:.1f} ({p['nfe_forward']} / {p['nfe_backward']}) | "
                f"{p['step_s'] / c['step_s']:.1f}x |"
            )
        lines += [
            "",
            "| dataset | peer time to threshold (s) | peer steps | peer median step ms | "
            "peer / cnfax ffjord recipe | peer / cnfax default |",
            "| --- | --- | --- | --- | --- | --- |",
        ]
        for p in peers_result["runs"]:
            cells = []
            for name in ("ffjord", "default"):
                same = [
                    r
                    for r in runs
                    if r["recipe"] == name
                    and r["dataset"] == p["dataset"]
                    and r["seed"] == p["seed"]
                ]
                mine = same[0]["seconds_to_threshold"] if same else None
                theirs = p["seconds_to_threshold"]
                if theirs is None and mine is not None:
                    cells.append(f"> {p['seconds_run'] / mine:.1f}x")
                elif None in (theirs, mine):
                    cells.append("n/a")
                else:
                    cells.append(f"{theirs / mine:.1f}x")
            reached = _seconds(p["seconds_to_threshold"])
            if p["seconds_to_threshold"] is None:
                reached += f" (> {p['seconds_run']:.0f})"
            lines.append(
                f"| {p['dataset']} | {reached} | {p['step_at_threshold'] or p['steps_run']} | "
                f"{1e3 * p['median_step_s']:.0f} | {cells[0]} | {cells[1]} |"
            )
    return "\n".join(lines) + "\n"


def load_average() -> str:
    return " ".join(f"{x:.2f}" for x in os.getloadavg())


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--full", action="store_true", help="more repeats and sizes")
    parser.add_argument("--out", default="bench", help="output directory")
    parser.add_argument(
        "--sections",
        nargs="+",
        choices=["quick", "ttn", "peers", "vi", "sbi"],
        default=["quick"],
        help="quick: the step, solver, memory and throughput tables; ttn: time to NLL; "
        "peers: FFJORD's PyTorch model beside cnfax; vi: variational inference beside "
        "flowjax (experiments/benchmark_vi.py); sbi: C2ST against sbibm's reference "
        "samples (experiments/bench_sbi.py)",
    )
    parser.add_argument("--sbi-tasks", nargs="+", default=bench_sbi.TASKS)
    parser.add_argument("--sbi-simulations", type=int, nargs="+", default=bench_sbi.SIMULATIONS)
    parser.add_argument("--sbi-observations", type=int, nargs="+", default=bench_sbi.OBSERVATIONS)
    parser.add_argument("--sbi-draws", type=int, default=10_000, help="C2ST draws of each")
    parser.add_argument("--sbi-iters", type=int, default=None, help="default: make train's")
    parser.add_argument(
        "--sbi-peers",
        nargs="*",
        default=["npe"],
        choices=sorted(bench_sbi.peer_sbi.PEERS),
        help="sbi 0.27.0's methods beside cnfax (none: --sbi-peers with no names)",
    )
    parser.add_argument("--datasets", nargs="+", default=list(THRESHOLDS))
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    parser.add_argument("--recipes", nargs="+", default=["ffjord", "default"])
    parser.add_argument("--eval-every", type=int, default=25)
    parser.add_argument("--peer-datasets", nargs="+", default=list(THRESHOLDS))
    parser.add_argument("--peer-iters", type=int, default=1500)
    parser.add_argument("--vi-targets", nargs="+", default=VI_TARGETS)
    parser.add_argument("--vi-iters", type=int, default=None, help="default: make train's")
    parser.add_argument("--vi-batch-size", type=int, default=256)
    parser.add_argument("--vi-eval-every", type=int, default=50)
    parser.add_argument("--no-flowjax", action="store_true", help="vi: cnfax's runs only")
    args = parser.parse_args(argv)
    repeats = 10 if args.full else 3
    out = Path(args.out)
    out.mkdir(exist_ok=True)
    if "ttn" in args.sections or "peers" in args.sections:
        slow_sections(args, out, repeats)
    if "vi" in args.sections:
        results = vi_section(
            args.vi_targets,
            args.vi_iters,
            args.vi_batch_size,
            args.vi_eval_every,
            out,
            flowjax=not args.no_flowjax,
        )
        print(vi_markdown(results))
    if "sbi" in args.sections:
        results = bench_sbi.sbi_section(
            out,
            args.sbi_tasks,
            args.sbi_simulations,
            args.sbi_observations,
            args.sbi_draws,
            args.sbi_iters,
            args.sbi_peers,
        )
        print(bench_sbi.sbi_markdown(results))
    if "quick" not in args.sections:
        return 0
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
    (out / "benchmark.json").write_text(json.dumps(results, indent=2))
    table = markdown(results)
    (out / "benchmark.md").write_text(table)
    print(table)
    return 0


def slow_sections(args, out: Path, repeats: int) -> None:
    """Time to NLL and/or the peers; writes bench/time_to_nll.{json,md} as it goes."""
    results = {
        "machine": f"{platform.machine()} {os.cpu_count()} CPUs",
        "jax": jax.__version__,
        "load_before": load_average(),
        "datasets": args.datasets,
        "recipes": args.recipes,
        "command": " ".join(["python", "experiments/benchmark.py", *sys.argv[1:]]),
    }
    ttn_dir = out / "time_to_nll"

    def save():
        results["load_after"] = load_average()
        (out / "time_to_nll.json").write_text(json.dumps(results, indent=2))
        (out / "time_to_nll.md").write_text(ttn_markdown(results))

    if "ttn" in args.sections:
        results["runs"] = time_to_nll(
            args.datasets, args.seeds, args.recipes, ttn_dir, args.eval_every
        )
        save()
        first = [r for r in results["runs"] if r["cache"] == "cold"]
        if first:
            results["runs"].append(rerun(first[0], ttn_dir))
            save()
    if "peers" in args.sections:
        missing = [
            d for d in args.peer_datasets if d not in args.datasets or "ttn" not in args.sections
        ]
        if missing:  # cnfax's runs to compare with, in this same command
            results.setdefault("runs", [])
            results["runs"] += time_to_nll(missing, [0], args.recipes, ttn_dir, args.eval_every)
        results["peers"] = peers(
            args.peer_datasets,
            0,
            args.peer_iters,
            args.eval_every,
            repeats,
            [100, 256, 1000],
            ttn_dir,
        )
        save()
    save()
    print(ttn_markdown(results))


if __name__ == "__main__":
    raise SystemExit(main())
