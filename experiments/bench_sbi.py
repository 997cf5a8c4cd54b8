"""The SBI section of the benchmark (``python experiments/benchmark.py --sections sbi``):
cnfax's default ``make train`` on sbibm tasks at a few simulation budgets, scored by
sbibm's C2ST against sbibm's own reference posterior samples on sbibm's observations.

For each task and budget N: one run of ``make train``'s default recipe
(``--dataset TASK --simulations N``, seed 0, pictures off) in this process, timed; its
best checkpoint by validation NLL is loaded (:func:`cnfax.load`); for each sbibm
observation i (``--sbi-observations``, 1-5 by default) the model draws ``--sbi-draws``
samples given sbibm's x_i, and :func:`cnfax.evaluation.c2st.c2st` scores them against as
many of sbibm's 10,000 reference draws for x_i (experiments/sbibm_reference.py: the
sbibm 1.1.0 wheel, cached). sbibm's protocol is 10,000 draws of each. Draws outside the
prior are rejected before C2ST, as sbi does: cnfax's model rejects them itself (the prior
box as a truncation, :mod:`cnfax.data.truncation`), the peers' here. Reported for each
method: the fraction of its draws inside the prior per observation (cnfax: the flow's
raw draws, ``support_mass`` from as many; the peers: what the rejection here kept, 1 by
construction, since sbi's posterior rejects its own draws outside the prior first).
Gaussian linear's prior is all of R^10.

sbi 0.27.0's NPE (experiments/peer_sbi.py: neural spline flow, sbi's default training),
trained on the same simulations, is scored the same way beside each cnfax run when
``import sbi`` works (``make bench-sbi`` installs the optional ``peers`` extra);
otherwise the table says it did not run.
"""

from __future__ import annotations

import dataclasses
import json
import time
from pathlib import Path

import jax
import numpy as np
import peer_sbi
import sbibm_reference

import cnfax
from cnfax.data.sbi import SBI_TASKS
from cnfax.evaluation.c2st import c2st
from cnfax.run.config import recipe
from cnfax.train import train

TASKS = ["sbi-two-moons", "sbi-gaussian-linear"]
SIMULATIONS = [1_000, 10_000]
OBSERVATIONS = [1, 2, 3, 4, 5]


def inside_prior(task_name: str, theta: np.ndarray) -> np.ndarray:
    """Which rows of theta lie in the prior's support (all rows for a prior on R^d)."""
    box = SBI_TASKS[task_name].prior_box
    return np.ones(len(theta), bool) if box is None else box.contains(theta)


def score_model(model, task_name: str, observations, draws: int, seed: int) -> dict:
    """C2ST of ``draws`` model draws (outside the prior rejected, drawn again until enough
    are inside) against as many of sbibm's reference draws, per sbibm observation."""
    per_observation, rejected, prior_mass = [], [], []
    for i in observations:
        x_o = sbibm_reference.observation(task_name, i)
        reference = sbibm_reference.reference_samples(task_name, i)[:draws]
        key = jax.random.fold_in(jax.random.key(seed), i)
        kept, dropped, round_ = [], 0, 0
        while sum(len(k) for k in kept) < draws:
            theta = model.sample(jax.random.fold_in(key, round_), draws, condition=x_o)
            inside = inside_prior(task_name, theta)
            kept.append(theta[inside])
            dropped += int(np.sum(~inside))
            round_ += 1
            if round_ > 20:
                raise RuntimeError(f"{task_name} observation {i}: draws keep leaving the prior")
        samples = np.concatenate(kept)[:draws]
        per_observation.append(c2st(reference, samples, seed=1))
        rejected.append(dropped)
        if isinstance(model, cnfax.TrainedModel):  # its sample() has rejected already
            prior_mass.append(model.support_mass(jax.random.fold_in(key, 1000), x_o, n=draws))
        else:
            prior_mass.append(1 - dropped / (round_ * draws))
    return {
        "c2st_mean": float(np.mean(per_observation)),
        "c2st_std": float(np.std(per_observation)),
        "c2st_per_observation": per_observation,
        "rejected_draws": rejected,
        "prior_mass": prior_mass,
    }


def cnfax_run(task_name: str, simulations: int, out: Path, iters: int | None) -> dict:
    """make train's default on ``simulations`` pairs; the training seconds and the run."""
    run_dir = out / f"{task_name}-{simulations}"
    changes = dict(dataset=task_name, simulations=simulations, run_dir=str(run_dir))
    changes["pictures"] = False
    if iters is not None:
        changes["iters"] = iters
    config = recipe("default", **changes).validate()
    start = time.perf_counter()
    final = train(config)
    seconds = time.perf_counter() - start
    model = cnfax.load(run_dir, which="best")
    return {
        "config": {k: v for k, v in dataclasses.asdict(config).items() if k in changes},
        "iters": config.iters,
        "training_seconds": seconds,
        "validation_nll": final.get("validation_nll"),
        "model": model,
    }


def sbi_peer_status() -> str | None:
    """None when sbi imports (the peer can run), else why it cannot."""
    try:
        import sbi  # noqa: F401
    except ImportError as error:
        return f"not run: sbi is not installed here ({error})"
    return None


def sbi_section(
    out: Path,
    tasks=TASKS,
    simulations=SIMULATIONS,
    observations=OBSERVATIONS,
    draws: int = 10_000,
    iters: int | None = None,
    peers=("npe",),
) -> dict:
    """Every (task, budget) of cnfax's default, and beside it each of ``peers`` (names of
    :data:`peer_sbi.PEERS`), scored; writes out/sbi.{json,md}."""
    unknown = sorted(set(peers) - set(peer_sbi.PEERS))
    if unknown:
        raise ValueError(f"unknown peers {unknown}; choose from {sorted(peer_sbi.PEERS)}")
    results = {
        "protocol": (
            f"C2ST (sbibm 1.1.0's classifier) of {draws} model draws against {draws} of "
            f"sbibm's reference draws, sbibm observations {list(observations)}"
        ),
        "runs": [],
    }
    peer = sbi_peer_status()
    labels = {name: f"sbi {name.upper()}" for name in peers}  # the rows' method
    if not peers:
        results["peers"] = "none asked for (--sbi-peers with no names)"
    else:
        results["peers"] = peer or f"run beside each cnfax run (rows {list(labels.values())})"

    def save():
        (out / "sbi.json").write_text(json.dumps(results, indent=2))
        (out / "sbi.md").write_text(sbi_markdown(results))

    for task_name in tasks:
        for n in simulations:
            methods = [
                ("cnfax default", lambda t=task_name, n=n: cnfax_run(t, n, out / "sbi", iters))
            ]
            if peer is None:
                for name, label in labels.items():
                    train_peer = peer_sbi.PEERS[name]
                    methods.append((label, lambda t=task_name, n=n, f=train_peer: f(t, n, 0)))
            for method, run_method in methods:
                run = run_method()
                model = run.pop("model")
                row = {"task": task_name, "simulations": n, "method": method, **run}
                row.update(score_model(model, task_name, observations, draws, seed=0))
                results["runs"].append(row)
                print(json.dumps({k: v for k, v in row.items() if k != "config"}), flush=True)
                save()
    save()
    return results


def sbi_markdown(results: dict) -> str:
    lines = [
        f"Protocol: {results['protocol']}.",
        "",
        "| task | simulations | method | iters | C2ST mean (std) | per observation | "
        "raw draws inside the prior (lowest) | training s |",
        "| --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for r in results["runs"]:
        per = ", ".join(f"{v:.3f}" for v in r["c2st_per_observation"])
        lines.append(
            f"| {r['task']} | {r['simulations']} | {r['method']} | {r['iters']} | "
            f"{r['c2st_mean']:.3f} ({r['c2st_std']:.3f}) | {per} | "
            f"{_lowest_mass(r)} | {r['training_seconds']:.0f} |"
        )
    lines += ["", f"sbi's methods: {results['peers']}."]
    return "\n".join(lines) + "\n"


def _lowest_mass(row: dict) -> str:
    """The lowest fraction of raw draws inside the prior over the observations (runs
    recorded before it was measured: their rejected-draw count)."""
    if "prior_mass" in row:
        return f"{min(row['prior_mass']):.3f}"
    return f"{sum(row['rejected_draws'])} rejected"
