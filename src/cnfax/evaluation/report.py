"""The report of ``make evaluate``: test NLL at tight tolerance in data units (bits/dim for
discrete data), the pictures, the audit, the baselines and, for conditional runs, the
posterior checks or the digits' classifier; for a --target run, the importance
diagnostics instead (:mod:`cnfax.evaluation.variational_report`).

Reported likelihoods use the exact trace (never an estimate), at rtol = atol = 1e-6 by
default, through :func:`cnfax.scoring.held_out_nll`. A flow models y = g(x) for the
data's preprocessing g, so its log-density is converted to data units by
:func:`cnfax.data.preprocess.to_data_units`: log p_x(x) = log p_flow(g(x)) + log |det dg/dx|.
"""

from __future__ import annotations

import dataclasses
import json
import time
from pathlib import Path
from typing import Literal

import jax
import numpy as np

from cnfax.core.flow import CNF
from cnfax.data.dataset import Dataset, SplitDataset
from cnfax.data.digits import IMAGE_SHAPE
from cnfax.data.preprocess import bits_per_dim, to_data_units
from cnfax.evaluation import baselines
from cnfax.evaluation.audit import audit_conditional, audit_flow
from cnfax.evaluation.plots import plot_image_grid, plot_panels, plot_trajectory
from cnfax.loading import TrainedModel
from cnfax.objectives import batch_parts
from cnfax.run.builders import build_dataset
from cnfax.run.config import Config
from cnfax.run.directory import RunDirectoryError, read_data_spec, restore_flow
from cnfax.scoring import evaluation_flow, held_out_nll


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
    """held-out points of a toy density (finite datasets use their whole test split), or
    a --target run's draws from q"""
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
    c2st_observations: int = 3
    """SBI runs: observations of the C2ST against reference posterior draws (0: none)"""
    c2st_draws: int = 2000
    """SBI runs: model draws and reference draws per observation of the C2ST (its
    classifier's cost grows with draws and dimension: measured on 2 CPU cores, about 64 s
    per observation at 2,000 draws in 10-D, 27 s at 1,000; seconds in 2-D)"""
    sbibm_protocol: bool = False
    """SBI runs: the C2ST as sbibm reports it, 10 observations x 10,000 draws (overrides
    the two above)"""


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
    from cnfax.data.sbi import SBI_TASKS
    from cnfax.evaluation.conditional_report import digits_report, sbi_report

    data = read_data_spec(run_dir)
    model = TrainedModel(
        flow, data.preprocessing, config.model_spec(), step, data.condition_preprocessing
    )
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
            c2st_observations=10 if args.sbibm_protocol else args.c2st_observations,
            c2st_draws=10_000 if args.sbibm_protocol else args.c2st_draws,
        )
        return {"posterior": report}
    if dataset.name == "digits":
        return digits_report(model, dataset, config.seed, run_dir, pictures=args.pictures)
    return {}


def evaluate_run(args: EvalArgs) -> dict:
    """Test NLL at tight tolerance (data units, bits/dim for discrete data), pictures, the
    invertibility / density audit and optionally the baselines; writes
    ``evaluation_<which>.json`` and prints a summary. The audit raises AuditFailed; a run
    directory that cannot be read raises RunDirectoryError."""
    _, flow, step = restore_flow(args.run_dir, args.which)
    try:
        config = Config.load(args.run_dir)
    except (TypeError, KeyError, ValueError) as error:  # valid JSON, but not the options
        raise RunDirectoryError(
            f"{Path(args.run_dir) / 'config.json'} is damaged ({error!r}): expected the "
            "options that make train writes"
        ) from error
    run_dir = Path(args.run_dir)
    if config.target is not None:  # variational inference: no data, the importance weights
        from cnfax.evaluation.variational_report import variational_report

        result = variational_report(args, config, flow, step, run_dir)
        (run_dir / f"evaluation_{args.which}.json").write_text(json.dumps(result, indent=2))
        return result
    dim = flow.dim
    dataset = build_dataset(config)
    tight = evaluation_flow(flow, tol=args.tol)
    held_out, log_det = dataset.held_out("test", args.test_size)
    start = time.perf_counter()
    nll, nfe = held_out_nll(tight, held_out, log_det)
    seconds = time.perf_counter() - start
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
    if args.baselines and dataset.finite and condition is None:
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
        from cnfax.evaluation.conditional_report import sbi_summary

        print(sbi_summary(result["posterior"]))
    if "classifier_accuracy" in result:
        print(f"  generative classifier accuracy {result['classifier_accuracy']:.4f}")
    for name, value in result.get("baselines", {}).items():
        if isinstance(value, float):
            units = f" = {bits_per_dim(value, dim):.3f} bits/dim" if dataset.levels else ""
            print(f"  baseline {name}: test NLL {value:.4f} nats{units}")
    return result
