"""Evaluate a training run: exact-trace test NLL at tight tolerance on held-out points (in
data units, with bits/dim for discrete data), pictures, the invertibility / density audit,
and optionally the classical baselines scored by the same code. Prints a one-line summary.

    python experiments/evaluate.py --run-dir runs/default [--which best] [--test-size 10000]
    python experiments/evaluate.py --run-dir runs/digits --which best --baselines
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
import numpy as np
import tyro

from cnfax import baselines
from cnfax.audit import audit_flow
from cnfax.data.dataset import make_dataset
from cnfax.data.digits import IMAGE_SHAPE
from cnfax.data.preprocess import bits_per_dim
from cnfax.data.tabular import DataError
from cnfax.plots import plot_image_grid, plot_panels, plot_trajectory
from cnfax.trace import Exact
from cnfax.train import held_out_nll, load_run


@dataclasses.dataclass(frozen=True)
class EvalArgs:
    run_dir: str = "runs/default"
    which: Literal["latest", "best"] = "latest"
    test_size: int = 10_000
    """held-out points of a toy density (finite datasets use their whole test split)"""
    tol: float = 1e-6
    """rtol = atol of the evaluation solve"""
    audit_examples: int = 10
    pictures: bool = True
    baselines: bool = False
    """also score a diagonal Gaussian, a full Gaussian and a Gaussian mixture"""


def score_baselines(dataset) -> dict:
    """Test NLL (nats, data units) of the classical baselines, fitted on the training split
    (one dequantised copy, for discrete data) in the flow's space."""
    train, _ = dataset.prepare(dataset.raw("train"), np.random.default_rng([dataset.seed, 8]))
    validation, _ = dataset.held_out("validation")
    test, test_log_det = dataset.held_out("test")
    train, validation, test = (a.astype(np.float64) for a in (train, validation, test))
    mixture, scores = baselines.gaussian_mixture(train, validation, seed=dataset.seed)
    log_probs = {
        "diagonal Gaussian": baselines.diagonal_gaussian_log_prob(train, test),
        "full-covariance Gaussian": baselines.full_gaussian_log_prob(train, test),
        f"Gaussian mixture ({mixture.n_components} components)": mixture.score_samples(test),
    }
    out = {name: -float(np.mean(lp + test_log_det)) for name, lp in log_probs.items()}
    out["mixture validation log-likelihood per point (flow space)"] = scores
    return out


def evaluate_run(args: EvalArgs) -> dict:
    config, flow, step = load_run(args.run_dir, args.which)
    dim = flow.dim
    dataset = make_dataset(config.dataset, config.seed, config.data)
    tight = flow.replace(
        trace=Exact(),
        count_backward=False,
        throw=True,
        stepsize_controller=diffrax.PIDController(rtol=args.tol, atol=args.tol),
    )
    held_out, log_det = dataset.held_out("test", args.test_size)
    start = time.perf_counter()
    flow_nll, nfe = held_out_nll(tight, held_out)
    nll = flow_nll - float(np.mean(log_det))
    seconds = time.perf_counter() - start
    run_dir = Path(args.run_dir)
    key = jax.random.key(config.seed + 1)
    if args.pictures and dim == 2:
        title = f"{config.dataset}: test NLL {nll:.3f} nats (step {step})"
        plot_panels(tight, held_out, run_dir / "panels.png", key=key, title=title)
        plot_trajectory(tight, run_dir / "trajectory.png", key=key)
    elif args.pictures and config.dataset == "digits":
        samples = dataset.preprocessing.from_flow(np.asarray(tight.sample(key, 64)))
        images = np.clip(np.floor(samples), 0, dataset.levels - 1)
        plot_image_grid(
            images,
            run_dir / "samples.png",
            shape=IMAGE_SHAPE,
            vmax=dataset.levels - 1,
            title=f"cnfax samples (step {step})",
        )
        plot_image_grid(
            dataset.raw("test")[:64],
            run_dir / "test_images.png",
            shape=IMAGE_SHAPE,
            vmax=dataset.levels - 1,
            title="test images",
        )
    report = audit_flow(tight, held_out, max_examples=args.audit_examples)
    result = {
        "dataset": config.dataset,
        "step": step,
        "which": args.which,
        "test_nll": nll,
        "test_points": len(held_out),
        "test_nfe": nfe,
        "eval_seconds": seconds,
        "worst_round_trip": report.worst_round_trip,
        "worst_log_density_mismatch": report.worst_log_density,
    }
    if dataset.levels:
        result["bits_per_dim"] = bits_per_dim(nll, dim)
    if args.baselines and dataset.splits is not None:
        result["baselines"] = score_baselines(dataset)
    (run_dir / f"evaluation_{args.which}.json").write_text(json.dumps(result, indent=2))
    units = f" = {result['bits_per_dim']:.3f} bits/dim" if dataset.levels else ""
    print(
        f"{config.dataset} step {step} ({args.which}): test NLL {nll:.4f} nats{units} on "
        f"{len(held_out)} points (exact trace, tol {args.tol:g}, NFE {nfe}); {report.summary()}"
    )
    for name, value in result.get("baselines", {}).items():
        if isinstance(value, float):
            units = f" = {bits_per_dim(value, dim):.3f} bits/dim" if dataset.levels else ""
            print(f"  baseline {name}: test NLL {value:.4f} nats{units}")
    return result


def main(argv=None) -> int:
    args = tyro.cli(EvalArgs, args=argv)
    try:
        evaluate_run(args)
    except DataError as problem:
        print(f"error: {problem}", file=sys.stderr)
        return 2
    except AssertionError as failure:
        print(f"AUDIT FAILED: {failure}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
