"""Scoring a trained run: the report of ``make evaluate`` (:mod:`~cnfax.evaluation.report`),
the Hypothesis audit, the classical baselines, the posterior checks of simulation-based
inference, the digits' generative classifier, and the pictures.

The held-out NLL itself is :func:`cnfax.scoring.held_out_nll` (training logs it too).
"""

from cnfax.evaluation.report import EvalArgs, evaluate_run
from cnfax.scoring import evaluation_flow, held_out_nll

__all__ = ["EvalArgs", "evaluate_run", "evaluation_flow", "held_out_nll"]
