"""The report of ``make evaluate`` on a variational (``--target``) run.

The flow's draws z_i = T(z0_i) of ``--test-size`` fixed base draws (the test stream of
:mod:`cnfax.run.target_problem`, never seen in training or validation) give log q(z_i)
along the same forward solve, with the exact trace at rtol = atol = ``--tol`` (1e-6),
in padded chunks (:func:`cnfax.scoring.forward_log_densities_in_chunks`), and the
importance diagnostics of their weights w_i = p~(z_i) / q(z_i)
(:func:`cnfax.importance.diagnose`): ELBO, log Z_hat with its standard error, the ESS
fraction, and |log Z_hat - log Z| and KL(q || p) where log Z is known.

Modes (targets with ``modes``, e.g. ``mixture``): a draw belongs to its nearest mode
(Euclidean), and a mode is *covered* when at least :data:`COVERED_SHARE` (1 %) of the
draws belong to it. With k = 8 modes, an exact sampler puts 1/8 of the draws at each;
a mode reverse KL has dropped gets almost none (its share of q is then exponentially
small), so the 1 % line separates the two without being met by chance: with 10,000
draws, a covered mode's count has a standard deviation of about 33 around 1,250, far
from the 100 that the line asks for.

Also: the invertibility / density audit around the draws (:func:`audit_flow`), the
pictures (2-d targets: target and model densities, samples over the target's contours;
any target: ELBO and ESS against the step), written to the run directory.
"""

from __future__ import annotations

import time
from pathlib import Path

import jax
import numpy as np

from cnfax.core.flow import CNF
from cnfax.evaluation.audit import audit_flow
from cnfax.evaluation.plots import plot_trajectory
from cnfax.evaluation.variational_plots import plot_target_panels, plot_training_curves
from cnfax.importance import diagnose
from cnfax.run.directory import METRICS
from cnfax.run.target_problem import build_problem
from cnfax.scoring import evaluation_flow, forward_log_densities_in_chunks

COVERED_SHARE = 0.01  # a mode is covered when at least this share of the draws is nearest it


def mode_coverage(modes: np.ndarray, z: np.ndarray, share: float = COVERED_SHARE) -> dict:
    """How many of ``modes`` (k, d) the draws z (n, d) cover (module docstring): the count
    of draws nearest each mode, and the modes with at least ``share`` of them."""
    modes = np.asarray(modes, np.float64)
    nearest = np.argmin(np.sum((z[:, None, :] - modes[None]) ** 2, axis=-1), axis=-1)
    counts = np.bincount(nearest, minlength=len(modes))
    covered = counts >= share * len(z)
    return {
        "modes": len(modes),
        "covered": int(np.sum(covered)),
        "draws_nearest_each": counts.tolist(),
        "rule": f"a mode is covered when at least {share:.0%} of the draws are nearest it",
    }


def variational_report(args, config, flow: CNF, step: int, run_dir: Path) -> dict:
    """The report of a --target run (module docstring), as a dict for
    ``evaluation_<which>.json``. The audit raises AuditFailed."""
    problem = build_problem(config.target, config.seed)
    tight = evaluation_flow(flow, tol=args.tol, throw=False)  # a failed chunk: NaN log q
    z0, _ = problem.held_out("test", args.test_size)
    started = time.perf_counter()
    z, log_q, log_p, nfe = forward_log_densities_in_chunks(tight, problem.target, z0)
    seconds = time.perf_counter() - started
    found = diagnose(log_p, log_q, problem.log_normalizer)
    result = {
        "target": config.target,
        "dim": problem.dim,
        "step": step,
        "which": args.which,
        "draws": found.n,
        "tol": args.tol,
        "elbo": found.elbo,
        "log_z_hat": found.log_z_hat,
        "log_z_hat_se": found.log_z_hat_se,
        "ess_fraction": found.ess_fraction,
        "log_z": found.log_z,
        "log_z_error": found.log_z_error,
        "kl": found.kl,
        "non_finite_draws": int(np.sum(~np.isfinite(log_p - log_q))),
        "eval_nfe": nfe,
        "eval_seconds": seconds,
        "devices": jax.device_count(),
    }
    modes = getattr(problem.target, "modes", None)
    if modes is not None:
        result["mode_coverage"] = mode_coverage(modes, z)
    finite = np.all(np.isfinite(z), axis=1)
    audit = audit_flow(tight.replace(throw=True), z[finite], max_examples=args.audit_examples)
    result["worst_round_trip"] = audit.worst_round_trip
    result["worst_log_density_mismatch"] = audit.worst_log_density
    if args.pictures:
        result["pictures"] = _draw(tight, problem, z, found, step, run_dir, config.seed)
    print(summary(result) + f"; {audit.summary()}")
    return result


def _draw(tight, problem, z, found, step, run_dir: Path, seed: int) -> list[str]:
    title = f"{problem.name}: ESS fraction {found.ess_fraction:.3f}, ELBO {found.elbo:.3f}"
    title += f" (step {step})"
    drawn = []
    if problem.dim == 2:
        drawn.append(
            plot_target_panels(tight, problem.target, z, run_dir / "target_panels.png", title=title)
        )
        drawn.append(
            plot_trajectory(tight, run_dir / "trajectory.png", key=jax.random.key(seed + 1))
        )
    curves = plot_training_curves(
        run_dir / METRICS, run_dir / "training_curves.png", log_z=found.log_z, title=problem.name
    )
    if curves is not None:
        drawn.append(curves)
    return [Path(p).name for p in drawn]


def summary(result: dict) -> str:
    """One line of the report's figures."""
    known = ""
    if result["log_z"] is not None:
        known = (
            f" (log Z {result['log_z']:.4f}: error {result['log_z_error']:.4f}, "
            f"KL(q || p) {result['kl']:.4f})"
        )
    line = (
        f"{result['target']} step {result['step']} ({result['which']}): ELBO "
        f"{result['elbo']:.4f}, log Z_hat {result['log_z_hat']:.4f} +- "
        f"{result['log_z_hat_se']:.4f}{known}, ESS fraction {result['ess_fraction']:.3f} "
        f"on {result['draws']} draws (exact trace, tol {result['tol']:g}, NFE "
        f"{result['eval_nfe']})"
    )
    if "mode_coverage" in result:
        coverage = result["mode_coverage"]
        line += f"; modes covered {coverage['covered']} of {coverage['modes']} (>= 1% of draws)"
    if result["non_finite_draws"]:
        line += f"; WARNING: {result['non_finite_draws']} draws with a non-finite log weight"
    return line
