"""The variational-inference section of the benchmark (issue 21): ``python
experiments/benchmark.py --sections vi`` (make bench-vi), writing bench/vi.{json,md}.

For each target (u1-u4, funnel, mixture, gaussian50, logistic), ``experiments/train.py
--target T`` runs in a fresh process (make train's options, with --eval-every for the
curve), and make train's own evaluation gives the figures: on 10,000 fresh draws of the
best checkpoint (highest held-out ELBO), with the exact trace at tol 1e-6, the ESS
fraction, |log Z_hat - log Z| and KL(q || p) = log Z - ELBO where log Z is known, log
Z_hat +- its standard error where it is not (logistic), and the modes covered (mixture:
>= 1 % of the draws nearest a mode). Training seconds exclude the periodic held-out
evaluations; target evaluations are the draws at which training evaluated log p~ and its
gradient: --iters x --batch-size (the held-out evaluations are not counted). cnfax's
training seconds count from the process's launch (imports and compilation included);
flowjax's from the call of its fit (compilation included, imports not).

Time to ESS 0.9 (u1): the seconds from launching ``make train --target u1`` (imports and
compilation included) to the first logged held-out ESS fraction >= 0.9, with and
without the held-out evaluations' own time.

Beside each, flowjax's flows fitted by ``ElboLoss`` with ``fit_to_key_based_loss`` in
the same command, when flowjax is importable (the ``peers`` extra), with the same number
of target evaluations (steps x num_samples = iters x batch size): a masked autoregressive
flow and a block neural autoregressive flow, both with ``invert=False`` (the direction
flowjax's documentation advises for variational fitting: sampling and its log-density in
one pass), flowjax's default sizes and learning rate (Adam, 5e-4); the one with the higher ELBO
on 10,000 fresh draws is reported ("best flow": the objective both fit, and the lower
KL(q || p); the ESS of a q that has dropped modes can look good), each scored by the
same :func:`cnfax.importance.diagnose`.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

from cnfax.importance import diagnose
from cnfax.targets import resolve_target

HERE = Path(__file__).resolve().parent
VI_TARGETS = ["u1", "u2", "u3", "u4", "funnel", "mixture", "gaussian50", "logistic"]
ESS_GOAL = 0.9  # the goal for u1, timed from the launch of make train --target u1


def vi_curve(rows: list[dict], launched: float) -> list[dict]:
    """Per held-out evaluation: step, seconds since launch (with and without the
    evaluations so far; a row's clock is read after its own evaluation), ELBO, ESS."""
    curve, evaluating = [], 0.0
    for row in rows:
        if "ess_fraction" in row:
            evaluating += row["eval_seconds"]
            since = row["unix_time"] - launched
            curve.append(
                {
                    "step": row["step"],
                    "seconds": since,
                    "seconds_less_evaluations": since - evaluating,
                    "elbo": row["elbo"],
                    "ess_fraction": row["ess_fraction"],
                }
            )
    return curve


def first_ess(curve: list[dict], goal: float = ESS_GOAL) -> dict | None:
    """The first evaluation whose ESS fraction reaches ``goal``, or None."""
    return next((point for point in curve if point["ess_fraction"] >= goal), None)


def cnfax_vi_run(target: str, flags: list[str], run_dir: Path) -> dict:
    """make train --target in a fresh process, then its own evaluation (module docstring)."""
    shutil.rmtree(run_dir, ignore_errors=True)
    command = [sys.executable, str(HERE / "train.py"), "--target", target, *flags]
    command += ["--run-dir", str(run_dir), "--no-pictures"]
    launched = time.time()
    done = subprocess.run(command, capture_output=True, text=True)
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(command)} failed:\n{done.stderr[-3000:]}")
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    evaluation = json.loads((run_dir / "evaluation_best.json").read_text())
    config = json.loads((run_dir / "config.json").read_text())
    curve = vi_curve(rows, launched)
    reached = first_ess(curve)
    figures = {k: evaluation.get(k) for k in FIGURES}
    return {
        "target": target,
        "flags": flags,
        **figures,
        "modes_covered": (evaluation.get("mode_coverage") or {}).get("covered"),
        "modes": (evaluation.get("mode_coverage") or {}).get("modes"),
        "best_step": evaluation["step"],
        "training_seconds": curve[-1]["seconds_less_evaluations"] if curve else None,
        "target_evaluations": config["iters"] * config["batch_size"],
        "rejected_steps": max((r.get("rejected_steps_total", 0) for r in rows), default=0),
        "seconds_to_ess_goal": None if reached is None else reached["seconds"],
        "seconds_to_ess_goal_less_evaluations": (
            None if reached is None else reached["seconds_less_evaluations"]
        ),
        "curve": curve,
    }


FIGURES = ("ess_fraction", "log_z_error", "kl", "log_z_hat", "log_z_hat_se", "elbo", "log_z")


def flowjax_vi(target_name: str, steps: int, batch_size: int, draws: int, seed: int):
    """flowjax's MAF and BNAF fitted by ElboLoss with steps x batch_size target
    evaluations (module docstring); the better one's figures (by ELBO), with both under
    "all", or None without flowjax."""
    try:
        import jax
        import jax.numpy as jnp
        from flowjax.distributions import Normal
        from flowjax.flows import block_neural_autoregressive_flow, masked_autoregressive_flow
        from flowjax.train import fit_to_key_based_loss
        from flowjax.train.losses import ElboLoss
    except ImportError:
        return None
    target = resolve_target(target_name)
    dim = target.dim

    def one_point(z):  # ElboLoss evaluates its target at one point (and vmaps it)
        return target(z[None])[0]

    builders = {
        "masked autoregressive flow": masked_autoregressive_flow,
        "block neural autoregressive flow": block_neural_autoregressive_flow,
    }
    log_z = getattr(target, "log_normalizer", None)
    results = []
    for name, build in builders.items():
        key, fit_key, sample_key = jax.random.split(jax.random.key(seed), 3)
        flow = build(key, base_dist=Normal(jnp.zeros(dim)), invert=False)
        loss = ElboLoss(one_point, num_samples=batch_size)
        started = time.perf_counter()
        fitted, losses = fit_to_key_based_loss(
            fit_key, flow, loss_fn=loss, steps=steps, show_progress=False
        )
        seconds = time.perf_counter() - started
        z, log_q = fitted.sample_and_log_prob(sample_key, (draws,))
        found = diagnose(np.asarray(target(z), np.float64), np.asarray(log_q, np.float64), log_z)
        entry = {
            "flow": name,
            "ess_fraction": found.ess_fraction,
            "log_z_error": found.log_z_error,
            "kl": found.kl,
            "log_z_hat": found.log_z_hat,
            "log_z_hat_se": found.log_z_hat_se,
            "elbo": found.elbo,
            "log_z": found.log_z,
            "training_seconds": seconds,  # compilation included
            "target_evaluations": steps * batch_size,
            "final_loss": losses[-1] if losses else None,
        }
        modes = getattr(target, "modes", None)
        if modes is not None:
            from cnfax.evaluation.variational_report import mode_coverage

            coverage = mode_coverage(modes, np.asarray(z, np.float64))
            entry.update(modes_covered=coverage["covered"], modes=coverage["modes"])
        results.append(entry)
    # The best by ELBO, the objective both fit (= the lowest KL(q || p) where log Z is
    # known); not by ESS, which a q that has dropped modes can overstate.
    finite = [r for r in results if np.isfinite(r["elbo"])]
    best = max(finite, key=lambda r: r["elbo"]) if finite else results[0]
    return {**best, "all": results}


def vi_section(targets, iters, batch_size, eval_every, out: Path, flowjax: bool = True) -> dict:
    """cnfax (and flowjax where importable) on each target; writes out/vi.{json,md}."""
    flags = ["--batch-size", str(batch_size), "--eval-every", str(eval_every)]
    if iters is not None:
        flags += ["--iters", str(iters)]
    results = {"command": " ".join(["python", "experiments/benchmark.py", *sys.argv[1:]])}
    results["runs"] = []
    for target in targets:
        run = cnfax_vi_run(target, flags, out / "vi" / target)
        if flowjax:
            steps = run["target_evaluations"] // batch_size
            run["flowjax"] = flowjax_vi(target, steps, batch_size, 10_000, seed=0)
        results["runs"].append(run)
        print(json.dumps({k: v for k, v in run.items() if k != "curve"}, default=str), flush=True)
        (out / "vi.json").write_text(json.dumps(results, indent=2))
        (out / "vi.md").write_text(vi_markdown(results))
    return results


def _cell(value, digits: int = 3) -> str:
    if value is None:
        return "-"
    if isinstance(value, float) and not np.isfinite(value):
        return "nan"
    return f"{value:.{digits}f}" if isinstance(value, float) else str(value)


def _log_z_cell(figures: dict) -> str:
    """|log Z_hat - log Z| where log Z is known, else log Z_hat +- its standard error."""
    if figures.get("log_z") is not None:
        return _cell(figures["log_z_error"], 4)
    return f"{_cell(figures['log_z_hat'], 2)} +- {_cell(figures['log_z_hat_se'], 2)}"


def vi_markdown(results: dict) -> str:
    lines = [
        "| target | ESS fraction | abs(log Z_hat - log Z) (or log Z_hat +- se) | KL(q, p) |"
        " modes covered | training s | target evaluations |",
        "|---|---|---|---|---|---|---|",
    ]
    for run in results["runs"]:
        peer = run.get("flowjax")
        modes = f"{run['modes_covered']} of {run['modes']}" if run.get("modes") else "-"

        def pair(mine, theirs, peer=peer):
            return mine if peer is None else f"{mine} / {theirs}"

        peer_modes = "-"
        if peer is not None and peer.get("modes"):
            peer_modes = f"{peer['modes_covered']} of {peer['modes']}"
        peer = peer or {}
        cells = [
            pair(_cell(run["ess_fraction"]), _cell(peer.get("ess_fraction"))),
            pair(_log_z_cell(run), _log_z_cell(peer) if peer else "-"),
            pair(_cell(run["kl"]), _cell(peer.get("kl"))),
            pair(modes, peer_modes),
            pair(_cell(run["training_seconds"], 1), _cell(peer.get("training_seconds"), 1)),
            str(run["target_evaluations"]),
        ]
        lines.append(f"| {run['target']} | " + " | ".join(cells) + " |")
    peers = [r for r in results["runs"] if r.get("flowjax")]
    note = (
        "Cells are cnfax / flowjax's best flow (by ELBO) where flowjax ran."
        if peers
        else "flowjax is not importable here: cnfax's figures only (install the peers extra)."
    )
    lines += ["", note]
    for run in results["runs"]:
        if run["target"] == "u1":
            seconds = run["seconds_to_ess_goal"]
            lines.append(
                f"\nTime from launching make train --target u1 to a held-out ESS fraction >= "
                f"{ESS_GOAL}: "
                + (
                    "not reached"
                    if seconds is None
                    else f"{seconds:.1f} s "
                    f"({run['seconds_to_ess_goal_less_evaluations']:.1f} s less the held-out "
                    "evaluations)"
                )
            )
    return "\n".join(lines) + "\n"
