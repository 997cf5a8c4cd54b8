"""Evaluate a training run: exact-trace test NLL at tight tolerance on held-out points (in
data units, with bits/dim for discrete data), pictures, the invertibility / density audit,
and optionally the classical baselines scored by the same code. Prints a one-line summary.

    python experiments/evaluate.py --run-dir runs/default [--which best] [--test-size 10000]
    python experiments/evaluate.py --run-dir runs/digits --which best --baselines

Exit status: 0, 1 when the audit fails, 2 for unusable data or a missing run.
"""

from __future__ import annotations

import sys

import tyro

from cnfax.data.tabular import DataError
from cnfax.evaluation import EvalArgs, evaluate_run


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
