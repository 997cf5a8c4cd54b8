"""Evaluate a training run: exact-trace test NLL at tight tolerance on held-out points (in
data units, with bits/dim for discrete data), pictures, the invertibility / density audit,
and optionally the classical baselines scored by the same code. Prints a one-line summary.

    python experiments/evaluate.py --run-dir runs/default [--which best] [--test-size 10000]
    python experiments/evaluate.py --run-dir runs/digits --which best --baselines

Exit status: 0, 1 when the audit fails, 2 for unusable data or a run directory that
cannot be read (missing, no run, a damaged config.json or data.json, no checkpoint, no
checkpoint that restores): one line on stderr, no traceback.
"""

from __future__ import annotations

import sys
import warnings

import matplotlib
import tyro

from cnfax.data.tabular import DataError
from cnfax.evaluation import EvalArgs, evaluate_run
from cnfax.evaluation.audit import AuditFailed
from cnfax.run.directory import RunDirectoryError


def _one_line_warning(message, category, filename, lineno, file=None, line=None):
    print(f"warning: {message}", file=sys.stderr)


def main(argv=None) -> int:
    matplotlib.use("Agg")  # pictures go to files; the library itself picks no backend
    warnings.showwarning = _one_line_warning  # e.g. a damaged checkpoint, skipped
    args = tyro.cli(EvalArgs, args=argv)
    try:
        evaluate_run(args)
    except (DataError, RunDirectoryError) as problem:
        print(f"error: {problem}", file=sys.stderr)
        return 2
    except AuditFailed as failure:
        print(f"AUDIT FAILED: {failure}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
