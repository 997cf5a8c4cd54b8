"""Train a CNF on a 2-D toy density, the 8x8 digits, or your own matrix; then evaluate,
draw the pictures and check the flow.

    python experiments/train.py --help
    python experiments/train.py --dataset checkerboard --run-dir runs/checkerboard
    python experiments/train.py --data my_data.csv --run-dir runs/mine

    python experiments/train.py --recipe ffjord       # FFJORD's recipe, as cnfax had it

Running again with the same --run-dir resumes from the latest checkpoint. --recipe NAME
(default or ffjord: cnfax.config.RECIPES) sets the starting values that the other options
then change.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import sys
import warnings

import jax
import tyro

from cnfax.config import RECIPES, Config, recipe
from cnfax.data.toy import TOY_DATASETS
from cnfax.evaluation import EvalArgs, evaluate_run
from cnfax.train import TrainingFailed, train


def initialize_distributed() -> None:
    """Join a multi-host run when CNFAX_COORDINATOR (host:port of process 0),
    CNFAX_NUM_PROCESSES and CNFAX_PROCESS_ID are set; a no-op otherwise."""
    if "CNFAX_COORDINATOR" in os.environ:
        jax.distributed.initialize(
            coordinator_address=os.environ["CNFAX_COORDINATOR"],
            num_processes=int(os.environ["CNFAX_NUM_PROCESSES"]),
            process_id=int(os.environ["CNFAX_PROCESS_ID"]),
        )


def _one_line_warning(message, category, filename, lineno, file=None, line=None):
    print(f"warning: {message}", file=sys.stderr)


def main(argv=None) -> int:
    warnings.showwarning = _one_line_warning  # e.g. discrete columns of --data
    initialize_distributed()
    # --recipe picks the defaults that the other flags then override.
    first = argparse.ArgumentParser(add_help=False)
    first.add_argument("--recipe", choices=sorted(RECIPES), default="default")
    known, rest = first.parse_known_args(argv)
    description = (
        f"{Config.__doc__}\n\n--recipe {{{','.join(sorted(RECIPES))}}}: the defaults below "
        f"(default: default; now: {known.recipe})"
    )
    config = tyro.cli(Config, args=rest, default=recipe(known.recipe), description=description)
    if config.data and config.dataset == Config.dataset:  # --data alone means tabular
        config = dataclasses.replace(config, dataset="tabular")
    try:
        config.validate()
        final = train(config)
    except KeyboardInterrupt:
        return 130
    except TrainingFailed as failure:
        print(f"error: training stopped: {failure}", file=sys.stderr)
        return 1
    except ValueError as problem:  # bad options, unusable data, a clashing run directory
        print(f"error: {problem}", file=sys.stderr)
        return 2
    print(
        f"trained {config.dataset} for {final.get('step')} steps: "
        f"test NLL {final.get('test_nll', float('nan')):.4f} nats "
        f"({final.get('wall_time', 0):.0f} s)"
    )
    finite = config.dataset not in TOY_DATASETS  # finite data: the best by validation NLL
    args = EvalArgs(config.run_dir, "best" if finite else "latest", pictures=config.pictures)
    try:
        evaluate_run(args)
    except AssertionError as failure:
        print(f"AUDIT FAILED: {failure}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
