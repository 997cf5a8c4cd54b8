"""What ``make evaluate`` adds for conditional runs: simulation-based inference scored
against the reference posterior, and the digits given their labels.

- SBI tasks (:mod:`cnfax.data.sbi`): for the 10 fixed observations of the run's seed, the
  mean KL(reference || model) (:func:`cnfax.evaluation.posterior_checks.kl_to_reference`;
  marked unavailable for a task without a reference posterior, SLCP), the
  expected coverage over 200 (theta*, x) pairs, the same two for the conditional Gaussian
  fitted on the run's own training simulations, the model's C2ST against reference
  posterior draws on the first ``c2st_observations`` of those observations
  (:func:`cnfax.evaluation.posterior_checks.c2st_to_reference`; unavailable without a
  reference posterior), and pictures (two moons: posteriors next to the reference;
  coverage curves).
- Digits given labels: the generative classifier argmax_y p(x | y) p(y) on the test
  images (p(y): training label frequencies) and a 10 x 10 grid of samples, one row per
  label.
"""

from __future__ import annotations

from pathlib import Path

import jax
import numpy as np

from cnfax.data.dataset import SplitDataset
from cnfax.data.digits import CLASSES
from cnfax.data.sbi import SBI_TASKS, TwoMoons, observations
from cnfax.evaluation.baselines import ConditionalGaussian
from cnfax.evaluation.generative_classifier import bayes_classifier_accuracy
from cnfax.evaluation.posterior_checks import c2st_to_reference, kl_to_reference
from cnfax.evaluation.posterior_coverage import expected_coverage
from cnfax.evaluation.posterior_plots import (
    plot_coverage,
    plot_samples_by_label,
    plot_two_moons_posteriors,
)


def sbi_report(
    model,
    dataset: SplitDataset,
    seed: int,
    run_dir: Path,
    *,
    pictures: bool,
    pairs: int = 200,
    draws: int = 500,
    kl_samples: int = 1000,
    c2st_observations: int = 3,
    c2st_draws: int = 2000,
) -> dict:
    """KL and coverage of the model and of the conditional-Gaussian baseline; the model's
    C2ST on ``c2st_observations`` observations (0: none) with ``c2st_draws`` draws each."""
    task = SBI_TASKS[dataset.name]
    theta_obs, x_obs = observations(task, seed)
    baseline = ConditionalGaussian.fit(dataset.raw("train"), dataset.conditions["train"])
    report, coverages = {}, {}
    for name, candidate in (("model", model), ("conditional Gaussian", baseline)):
        if task.has_reference:
            kl = kl_to_reference(task, candidate, x_obs, samples=kl_samples, seed=seed).as_dict()
        else:
            kl = {"unavailable": f"{dataset.name} has no reference posterior in cnfax"}
        coverage = expected_coverage(task, candidate, seed, pairs=pairs, draws=draws)
        report[name] = {"kl": kl, "coverage": coverage.as_dict()}
        coverages[name] = coverage
    if c2st_observations:
        if task.has_reference:
            xs = x_obs[:c2st_observations]
            result = c2st_to_reference(task, model, xs, draws=c2st_draws, seed=seed)
            report["model"]["c2st"] = result.as_dict()
        else:
            reason = f"{dataset.name} has no reference posterior in cnfax"
            report["model"]["c2st"] = {"unavailable": reason}
    if pictures:
        if isinstance(task, TwoMoons):
            plot_two_moons_posteriors(
                task,
                model,
                x_obs[:4],
                run_dir / "posteriors.png",
                theta_true=theta_obs[:4],
                title=f"{dataset.name}: posterior given 4 observations",
            )
        plot_coverage(coverages, run_dir / "coverage.png", title=dataset.name)
    return report


def sbi_summary(report: dict) -> str:
    lines = []
    for name, part in report.items():
        kl, coverage = part["kl"], part["coverage"]
        if "unavailable" in kl:
            kl_text = f"KL unavailable ({kl['unavailable']})"
        else:
            kl_text = f"mean KL(reference || {name}) {kl['kl_mean']:.4f} nats"
        c2st = part.get("c2st")
        if c2st is None:
            c2st_text = ""
        elif "unavailable" in c2st:
            c2st_text = f"; C2ST unavailable ({c2st['unavailable']})"
        else:
            c2st_text = (
                f"; C2ST {c2st['c2st_mean']:.3f} (0.5 is indistinguishable; "
                f"{c2st['observations']} observations x {c2st['draws']} draws)"
            )
        lines.append(
            f"  {name}: {kl_text}; coverage "
            f"max deviation {coverage['max_deviation']:.3f} (calibrated models: below "
            f"{coverage['null_max_deviation_95']:.3f} in 95%){c2st_text}"
        )
    return "\n".join(lines)


def digits_report(model, dataset: SplitDataset, seed: int, run_dir: Path, *, pictures: bool):
    """Accuracy of the generative classifier on the test images; the sample grid."""
    levels = dataset.levels
    frequencies = dataset.conditions["train"].sum(0)
    labels = dataset.conditions["test"].argmax(1)
    accuracy = bayes_classifier_accuracy(
        model, dataset.raw("test"), labels, levels, frequencies, key=jax.random.key(seed + 2)
    )
    if pictures:
        keys = jax.random.split(jax.random.key(seed + 3), CLASSES)
        samples = np.concatenate(
            [model.sample(keys[k], CLASSES, condition=np.eye(CLASSES)[k]) for k in range(CLASSES)]
        )
        images = np.clip(np.floor(samples), 0, levels - 1)
        plot_samples_by_label(images, run_dir / "samples_by_label.png", vmax=levels - 1)
    return {"classifier_accuracy": accuracy}
