"""Train a CNF on a 2-D toy density, the 8x8 digits, or your own matrix; then evaluate,
draw the pictures and check the flow.

    python experiments/train.py --help
    python experiments/train.py --dataset checkerboard --run-dir runs/checkerboard
    python experiments/train.py --data my_data.csv --run-dir runs/mine

Running again with the same --run-dir resumes from the latest checkpoint.
"""

from __future__ import annotations

import dataclasses
import os
import sys

import jax
import tyro
from evaluate import main as evaluate_main

from cnfax.experiment import Config
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


def main(argv=None) -> int:
    initialize_distributed()
    config = tyro.cli(Config, args=argv)
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
    eval_args = ["--run-dir", config.run_dir, "--test-size", "10000"]
    if config.dataset in ("digits", "tabular"):  # finite data: the best by validation NLL
        eval_args += ["--which", "best"]
    if not config.pictures:
        eval_args.append("--no-pictures")
    return evaluate_main(eval_args)


if __name__ == "__main__":
    sys.exit(main())
