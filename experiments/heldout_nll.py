"""Held-out NLL of an SBI run's posterior: a cheaper score than C2ST for choosing a recipe.

    python experiments/heldout_nll.py TASK SIMULATIONS RUN_DIR [option=value ...]

trains ``make train``'s default recipe with the options given (Config fields, e.g.
``bounded_by=logit``) on ``--dataset TASK --simulations SIMULATIONS``, then scores the
best and the latest checkpoints by -mean log q(theta | x) over 5,000 fresh pairs from the
task's joint (a fixed stream). Its excess over the true posterior's NLL is the mean
KL(p(theta | x) || q(theta | x)) over x ~ p(x), so two recipes' difference is their
difference in mean KL; the true posterior's NLL is printed where it is known in closed
form (Gaussian linear and mixture). For a model truncated to the prior's box the log q
is the restricted density, not renormalised, an upper bound on the normalised one's
NLL; ``mass_inside`` is the fraction of one draw per pair inside the box, whose
-log is a lower bound (Jensen) on what renormalising would subtract on average.
``c2st_observations=[1,2,3]`` (not a Config field) also scores the best checkpoint by
``make bench-sbi``'s C2ST on those sbibm observations (10,000 draws each).
"""

from __future__ import annotations

import ast
import json
import sys
import time

import jax
import numpy as np

import cnfax
from cnfax.data.sbi import SBI_TASKS
from cnfax.run.config import recipe
from cnfax.train import train


def main(task_name: str, simulations: str, run_dir: str, *options: str) -> dict:
    changes = {}
    for option in options:
        name, value = option.split("=", 1)
        try:
            changes[name] = ast.literal_eval(value)
        except (ValueError, SyntaxError):
            changes[name] = value  # a string such as logit
    c2st_observations = changes.pop("c2st_observations", None)
    config = recipe(
        "default",
        dataset=task_name,
        simulations=int(simulations),
        run_dir=run_dir,
        pictures=False,
        **changes,
    ).validate()
    start = time.perf_counter()
    train(config)
    out = {"task": task_name, "simulations": int(simulations), "options": changes}
    out["training_seconds"] = round(time.perf_counter() - start, 1)
    task = SBI_TASKS[task_name]
    theta, x = task.joint(np.random.default_rng(12345), 5000)
    models = {}
    for which in ("best", "latest"):
        model = models[which] = cnfax.load(run_dir, which=which)
        log_q = np.asarray(model.log_prob(theta, condition=x), np.float64)
        out[f"nll_{which}"] = float(-np.mean(log_q))
        out[f"nll_{which}_standard_error"] = float(np.std(log_q) / np.sqrt(len(log_q)))
    if task.prior_box is not None:
        # the flow's own draws, one per pair, before the sampler's rejection
        raw = model._draw(jax.random.key(1), len(x), model._condition(x, len(x)))
        out["mass_inside"] = float(np.mean(task.prior_box.contains(raw)))
    if task_name in ("sbi-gaussian-linear", "sbi-gaussian-mixture"):
        true = [
            task.reference_log_posterior(t[None], x_i)[0] for t, x_i in zip(theta, x, strict=True)
        ]
        out["nll_true"] = float(-np.mean(true))
    if c2st_observations:
        import bench_sbi  # experiments/ is this script's directory

        score = bench_sbi.score_model(models["best"], task_name, c2st_observations, 10_000, seed=0)
        out.update({k: score[k] for k in ("c2st_mean", "c2st_per_observation", "prior_mass")})
    print(json.dumps(out))
    return out


if __name__ == "__main__":
    main(*sys.argv[1:])
