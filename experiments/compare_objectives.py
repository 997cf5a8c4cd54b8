"""Maximum likelihood, maximum likelihood + RNODE, and flow matching on the same field.

For each dataset, trains the three (one after another, so that their times compare),
evaluates each with the exact trace (10,000 held-out points, tol 1e-6), and writes
bench/objectives.{json,md}: final test NLL, NFE of a test solve, and the training time to
come within 0.05 nats of the maximum-likelihood run's final NLL.

    python experiments/compare_objectives.py [--datasets 8gaussians checkerboard pinwheel]

Training time is wall time less the time spent on the periodic held-out evaluations
(which every method makes at the same interval), read from each run's metrics.jsonl.
The threshold uses the NLL those evaluations log (2,000 points, training tolerance).
"""

from __future__ import annotations

import dataclasses
import json
import shutil
import sys
from pathlib import Path

import tyro

from cnfax.evaluation import EvalArgs, evaluate_run
from cnfax.run.config import Config, recipe
from cnfax.train import train

MARGIN = 0.05  # nats


@dataclasses.dataclass(frozen=True)
class CompareArgs:
    datasets: tuple[str, ...] = ("8gaussians", "checkerboard", "pinwheel")
    root: str = "runs/objectives"
    out: str = "bench/objectives"
    fresh: bool = False
    """delete earlier runs first (otherwise finished runs are reused)"""


def method_configs(dataset: str, root: str) -> dict[str, Config]:
    # FFJORD's recipe (--recipe ffjord) for every method, as docs/results.md measured them.
    common = dict(dataset=dataset, eval_every=100, ckpt_every=500)
    return {
        "maximum likelihood": recipe("ffjord", run_dir=f"{root}/{dataset}-mle", **common),
        "maximum likelihood + RNODE (λ = 0.01)": recipe(
            "ffjord",
            run_dir=f"{root}/{dataset}-rnode",
            kinetic_energy_weight=0.01,
            jacobian_norm_weight=0.01,
            **common,
        ),
        "maximum likelihood + RNODE (λ = 0.1)": recipe(
            "ffjord",
            run_dir=f"{root}/{dataset}-rnode0.1",
            kinetic_energy_weight=0.1,
            jacobian_norm_weight=0.1,
            **common,
        ),
        "flow matching (OT pairs)": recipe(
            "ffjord",
            run_dir=f"{root}/{dataset}-fm",
            objective="flow-matching",
            coupling="ot",
            iters=20000,  # a flow-matching step costs one field evaluation and its gradient
            lr=1e-3,
            **{**common, "eval_every": 250},
        ),
    }


def training_curve(run_dir: str) -> list[tuple[float, float, int]]:
    """(training seconds, test NLL, test NFE) at each periodic evaluation."""
    rows = [json.loads(line) for line in (Path(run_dir) / "metrics.jsonl").read_text().splitlines()]
    curve, evaluating = [], 0.0
    for row in rows:
        if "validation_nll" in row:
            evaluating += row["eval_seconds"]
            curve.append(
                (row["wall_time"] - evaluating, row["validation_nll"], row["validation_nfe"])
            )
    return curve


def main(argv=None) -> int:
    args = tyro.cli(CompareArgs, args=argv)
    results = []
    for dataset in args.datasets:
        configs = method_configs(dataset, args.root)
        for name, config in configs.items():
            if args.fresh:
                shutil.rmtree(config.run_dir, ignore_errors=True)
            train(dataclasses.replace(config, pictures=False))
            evaluation = evaluate_run(EvalArgs(run_dir=config.run_dir, audit_examples=5))
            curve = training_curve(config.run_dir)
            results.append(
                {
                    "dataset": dataset,
                    "method": name,
                    "iters": config.iters,
                    "test_nll": evaluation["test_nll"],
                    "test_nfe_eval_tol": evaluation["test_nfe"],
                    "test_nfe_train_tol": curve[-1][2],
                    "curve": curve,
                    "config": dataclasses.asdict(config),
                }
            )
        reference = [r for r in results if r["dataset"] == dataset][0]
        threshold = reference["curve"][-1][1] + MARGIN
        for r in results:
            if r["dataset"] == dataset:
                reached = [seconds for seconds, nll, _ in r["curve"] if nll <= threshold]
                r["seconds_to_threshold"] = reached[0] if reached else None
                r["total_training_seconds"] = r["curve"][-1][0]
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".json").write_text(json.dumps(results, indent=2))
    lines = [
        "| dataset | method | iters | test NLL (nats) | test NFE (tol 1e-5) | "
        "test NFE (tol 1e-6) | time to MLE + 0.05 nats (s) | training time (s) |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in results:
        reached = r["seconds_to_threshold"]
        lines.append(
            f"| {r['dataset']} | {r['method']} | {r['iters']} | {r['test_nll']:.3f} | "
            f"{r['test_nfe_train_tol']} | {r['test_nfe_eval_tol']} | "
            f"{'not reached' if reached is None else f'{reached:.0f}'} | "
            f"{r['total_training_seconds']:.0f} |"
        )
    out.with_suffix(".md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
