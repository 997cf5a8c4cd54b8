"""Evaluation: held-out NLL in data units, the evaluation flow, baselines, and the report
that ``make evaluate`` prints.

Reported likelihoods use the exact trace (never an estimate), at a tolerance given here
(1e-6 by default in ``evaluate_run``). A flow models y = g(x) for the data's preprocessing
g, so its log-density is converted to data units by :func:`to_data_units`:

    log p_x(x) = log p_flow(g(x)) + log |det dg/dx|.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import time
from pathlib import Path
from typing import Literal

import diffrax
import jax
import numpy as np
from flax import nnx
from jax.sharding import Mesh

from cnfax import baselines
from cnfax.audit import audit_conditional, audit_flow
from cnfax.config import build_dataset
from cnfax.data.dataset import Dataset, SplitDataset
from cnfax.data.digits import IMAGE_SHAPE
from cnfax.data.preprocess import bits_per_dim
from cnfax.flow import CNF
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
from cnfax.plots import plot_image_grid, plot_panels, plot_trajectory
from cnfax.run import restore_flow
from cnfax.trace import Exact


def to_data_units(flow_log_prob, log_det):
    """log p_x(x) = log p_flow(g(x)) + log |det dg/dx|, per point."""
    return flow_log_prob + log_det


def evaluation_flow(flow: CNF, *, tol: float | None = None, throw: bool = True) -> CNF:
    """The same parameters with the exact trace (reported likelihoods are never estimates),
    no backward counting, and optionally PID control at rtol = atol = ``tol``."""
    changes = {"trace": Exact(), "count_backward": False, "throw": throw}
    if tol is not None:
        changes["stepsize_controller"] = diffrax.PIDController(rtol=tol, atol=tol)
    return flow.replace(**changes)


@functools.partial(jax.jit, static_argnames=("graphdef", "mesh"))
def _sharded_log_prob(graphdef, state, x, condition, mesh: Mesh):
    return data_parallel_log_prob(nnx.merge(graphdef, state), x, mesh, condition=condition)


def _pad(rows: np.ndarray, size: int) -> np.ndarray:
    """rows, padded to ``size`` with copies of the first row."""
    return np.concatenate([rows, np.repeat(rows[:1], size - len(rows), axis=0)])


def held_out_log_prob(
    flow: CNF, batch, mesh: Mesh | None = None, chunk: int = 2000
) -> tuple[np.ndarray, int]:
    """log p_flow of each row of ``batch`` (rows x, or the conditional batch
    ``{"x": x, "condition": y}``: then log p(x | y)), and the NFE of the costliest chunk.

    The rows go in chunks of one shape (one compilation), sharded over the mesh's devices;
    the last chunk is padded to that shape with copies of its first row, which are dropped.
    """
    x, condition = batch_parts(batch)
    mesh = data_mesh() if mesh is None else mesh
    devices = mesh.shape[DATA]
    size = -(-min(chunk, len(x)) // devices) * devices  # a multiple of the device count
    replicate(flow, mesh)
    graphdef, state = nnx.split(flow)
    out, nfe = [], 0
    for i in range(0, len(x), size):
        part = x[i : i + size]
        rows = shard_batch(local_rows(_pad(part, size)), mesh)
        given = None
        if condition is not None:
            given = shard_batch(local_rows(_pad(condition[i : i + size], size)), mesh)
        logp, stats = _sharded_log_prob(graphdef, state, rows, given, mesh)
        out.append(gather(logp)[: len(part)])
        nfe = max(nfe, int(stats.nfe))
    return np.concatenate(out), nfe


def held_out_nll(
    flow: CNF,
    batch,
    log_det: np.ndarray | None = None,
    mesh: Mesh | None = None,
    chunk: int = 2000,
) -> tuple[float, int]:
    """Mean NLL (nats) over the rows of ``batch`` (as in :func:`held_out_log_prob`), in
    data units when the preprocessing's ``log_det`` per row is given, and the NFE of the
    costliest chunk's solve."""
    logp, nfe = held_out_log_prob(flow, batch, mesh, chunk)
    if log_det is not None:
        logp = to_data_units(logp, np.asarray(log_det, np.float64))
    return -float(np.mean(logp, dtype=np.float64)), nfe


def score_baselines(dataset: SplitDataset) -> dict:
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
    out = {name: -float(np.mean(to_data_units(lp, test_log_det))) for name, lp in log_probs.items()}
    out["mixture validation log-likelihood per point (flow space)"] = scores
    return out


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
    coverage_pairs: int = 200
    """SBI runs: (theta*, x) pairs of the expected-coverage check"""
    coverage_draws: int = 500
    """SBI runs: posterior draws per pair in the coverage check"""
    kl_samples: int = 1000
    """SBI runs with a Monte Carlo KL (Gaussian linear): reference draws per observation"""


def _draw_pictures(flow: CNF, dataset: Dataset, held_out, run_dir: Path, title: str, key):
    if flow.dim == 2:
        plot_panels(flow, held_out, run_dir / "panels.png", key=key, title=title)
        plot_trajectory(flow, run_dir / "trajectory.png", key=key)
    elif dataset.name == "digits":
        samples = dataset.preprocessing.from_flow(np.asarray(flow.sample(key, 64)))
        images = np.clip(np.floor(samples), 0, dataset.levels - 1)
        grid = dict(shape=IMAGE_SHAPE, vmax=dataset.levels - 1)
        plot_image_grid(images, run_dir / "samples.png", title=title, **grid)
        test = dataset.raw("test")[:64]
        plot_image_grid(test, run_dir / "test_images.png", title="test images", **grid)


def _conditional_report(args, config, dataset, flow, step, run_dir) -> dict:
    """SBI's posterior checks or the digits' classifier, on the model in data units."""
    # Imported here: cnfax.density and the reports build on this module.
    from cnfax.conditional_report import digits_report, sbi_report
    from cnfax.data.sbi import SBI_TASKS
    from cnfax.density import TrainedModel
    from cnfax.run import read_data_spec

    spec = read_data_spec(run_dir)
    model = TrainedModel(flow, spec.preprocessing, config, step, spec.condition_preprocessing)
    if dataset.name in SBI_TASKS:
        report = sbi_report(
            model,
            dataset,
            config.seed,
            run_dir,
            pictures=args.pictures,
            pairs=args.coverage_pairs,
            draws=args.coverage_draws,
            kl_samples=args.kl_samples,
        )
        return {"posterior": report}
    if dataset.name == "digits":
        return digits_report(model, dataset, config.seed, run_dir, pictures=args.pictures)
    return {}


def evaluate_run(args: EvalArgs) -> dict:
    """Test NLL at tight tolerance (data units, bits/dim for discrete data), pictures, the
    invertibility / density audit and optionally the baselines; writes
    ``evaluation_<which>.json`` and prints a summary. The audit raises AssertionError."""
    config, flow, step = restore_flow(args.run_dir, args.which)
    dim = flow.dim
    dataset = build_dataset(config)
    tight = evaluation_flow(flow, tol=args.tol)
    held_out, log_det = dataset.held_out("test", args.test_size)
    start = time.perf_counter()
    nll, nfe = held_out_nll(tight, held_out, log_det)
    seconds = time.perf_counter() - start
    run_dir = Path(args.run_dir)
    x, condition = batch_parts(held_out)
    if args.pictures and condition is None:
        title = f"{config.dataset}: test NLL {nll:.3f} nats (step {step})"
        _draw_pictures(tight, dataset, x, run_dir, title, jax.random.key(config.seed + 1))
    if condition is None:
        report = audit_flow(tight, x, max_examples=args.audit_examples)
    else:
        report = audit_conditional(tight, x, condition)
    result = {
        "dataset": config.dataset,
        "step": step,
        "which": args.which,
        "test_nll": nll,
        "test_points": len(x),
        "test_nfe": nfe,
        "eval_seconds": seconds,
        "devices": jax.device_count(),
        "worst_round_trip": report.worst_round_trip,
        "worst_log_density_mismatch": report.worst_log_density,
    }
    if dataset.levels:
        result["bits_per_dim"] = bits_per_dim(nll, dim)
    if args.baselines and isinstance(dataset, SplitDataset) and condition is None:
        result["baselines"] = score_baselines(dataset)
    if condition is not None:
        result.update(_conditional_report(args, config, dataset, tight, step, run_dir))
    (run_dir / f"evaluation_{args.which}.json").write_text(json.dumps(result, indent=2))
    units = f" = {result['bits_per_dim']:.3f} bits/dim" if dataset.levels else ""
    print(
        f"{config.dataset} step {step} ({args.which}): test NLL {nll:.4f} nats{units} on "
        f"{len(x)} points (exact trace, tol {args.tol:g}, NFE {nfe}); {report.summary()}"
    )
    if "posterior" in result:
        from cnfax.conditional_report import sbi_summary

        print(sbi_summary(result["posterior"]))
    if "classifier_accuracy" in result:
        print(f"  generative classifier accuracy {result['classifier_accuracy']:.4f}")
    for name, value in result.get("baselines", {}).items():
        if isinstance(value, float):
            units = f" = {bits_per_dim(value, dim):.3f} bits/dim" if dataset.levels else ""
            print(f"  baseline {name}: test NLL {value:.4f} nats{units}")
    return result
