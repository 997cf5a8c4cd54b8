"""Evaluate a training run: exact-trace test NLL at tight tolerance on held-out points,
pictures, and the invertibility / density audit. Prints a one-line summary.

    python experiments/evaluate.py --run-dir runs/default [--which best] [--test-size 10000]
"""

from __future__ import annotations

import dataclasses
import json
import sys
import time
from pathlib import Path
from typing import Literal

import diffrax
import jax
import tyro

from cnfax.audit import audit_flow
from cnfax.data.toy import held_out_set
from cnfax.plots import plot_panels, plot_trajectory
from cnfax.trace import Exact
from cnfax.train import held_out_nll, load_run


@dataclasses.dataclass(frozen=True)
class EvalArgs:
    run_dir: str = "runs/default"
    which: Literal["latest", "best"] = "latest"
    test_size: int = 10_000
    """held-out points (drawn from the test stream, never seen in training)"""
    tol: float = 1e-6
    """rtol = atol of the evaluation solve"""
    audit_examples: int = 10
    pictures: bool = True


def evaluate_run(args: EvalArgs) -> dict:
    config, flow, step = load_run(args.run_dir, args.which)
    tight = flow.replace(
        trace=Exact(),
        count_backward=False,
        throw=True,
        stepsize_controller=diffrax.PIDController(rtol=args.tol, atol=args.tol),
    )
    held_out = held_out_set(config.dataset, config.seed, args.test_size)
    start = time.perf_counter()
    nll, nfe = held_out_nll(tight, held_out)
    seconds = time.perf_counter() - start
    run_dir = Path(args.run_dir)
    if args.pictures:
        key = jax.random.key(config.seed + 1)
        plot_panels(
            tight,
            held_out,
            run_dir / "panels.png",
            key=key,
            title=f"{config.dataset}: test NLL {nll:.3f} nats (step {step})",
        )
        plot_trajectory(tight, run_dir / "trajectory.png", key=key)
    report = audit_flow(tight, held_out, max_examples=args.audit_examples)
    result = {
        "dataset": config.dataset,
        "step": step,
        "which": args.which,
        "test_nll": nll,
        "test_points": args.test_size,
        "test_nfe": nfe,
        "eval_seconds": seconds,
        "worst_round_trip": report.worst_round_trip,
        "worst_log_density_mismatch": report.worst_log_density,
    }
    (run_dir / f"evaluation_{args.which}.json").write_text(json.dumps(result, indent=2))
    print(
        f"{config.dataset} step {step} ({args.which}): test NLL {nll:.4f} nats on "
        f"{args.test_size} points (exact trace, tol {args.tol:g}, NFE {nfe}); "
        f"{report.summary()}"
    )
    return result


def main(argv=None) -> int:
    args = tyro.cli(EvalArgs, args=argv)
    try:
        evaluate_run(args)
    except AssertionError as failure:
        print(f"AUDIT FAILED: {failure}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
