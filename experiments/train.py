"""Train a CNF on a 2-D toy density, the 8x8 digits, or your own matrix; then evaluate,
draw the pictures and check the flow.

    python experiments/train.py --help
    python experiments/train.py --dataset checkerboard --run-dir runs/checkerboard
    python experiments/train.py --data my_data.csv --run-dir runs/mine
    python experiments/train.py --target u1 --run-dir runs/u1   # variational inference

    python experiments/train.py --recipe ffjord       # FFJORD's recipe, as cnfax had it

Multi-valued options take their values separated by spaces or by commas:
--hidden 64 64 and --hidden 64,64, --condition-columns age income and
--condition-columns age,income are the same, and so are --bounds 0: -1:1 and
--bounds 0:,-1:1 (one lo:hi per modelled column of --data, either side empty for no bound).

Running again with the same --run-dir resumes from the latest checkpoint; a run directory
has one trainer at a time (a second one is refused while the first holds its lock).
--recipe NAME (default, fast (the same) or ffjord: cnfax.run.config.RECIPES) sets the
starting values that the other options then change.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import re
import sys
import types
import typing
import warnings

import jax
import matplotlib
import tyro

from cnfax.data.toy import TOY_DATASETS
from cnfax.evaluation import EvalArgs, evaluate_run
from cnfax.evaluation.audit import AuditFailed
from cnfax.run.config import RECIPES, Config, recipe
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


def list_flags(cls) -> set[str]:
    """The flags of the multi-valued (tuple) fields of a dataclass, e.g. ``--hidden``."""
    hints = typing.get_type_hints(cls, include_extras=True)
    flags = set()
    for field in dataclasses.fields(cls):
        hint = hints[field.name]
        if typing.get_origin(hint) is typing.Annotated:
            hint = typing.get_args(hint)[0]
        if typing.get_origin(hint) in (typing.Union, types.UnionType):  # tuple | None
            hint = next(arg for arg in typing.get_args(hint) if arg is not type(None))
        if typing.get_origin(hint) is tuple:
            flags |= {f"--{field.name.replace('_', '-')}", f"--{field.name}"}
    return flags


def split_commas(argv: list[str], cls=Config) -> list[str]:
    """The command line with the values of ``cls``'s multi-valued options split at commas,
    so that ``--hidden 64,64`` reads as ``--hidden 64 64`` (both forms mix, and
    ``--hidden=64,64`` works too). An empty item (``a,,b``, ``a,``) is a ValueError."""
    flags, out, flag = list_flags(cls), [], None
    for token in argv:
        if token.startswith("-") and not _is_value(token):
            name, equals, value = token.partition("=")
            flag = name if name in flags else None
            if not (flag and equals):
                out.append(token)
                continue
            out.append(name)
            token = value
        if flag is None:
            out.append(token)
            continue
        items = token.split(",")
        if not all(item.strip() for item in items):
            raise ValueError(
                f"{flag} {token!r}: an empty item; give the values separated by spaces or "
                f"commas (e.g. {flag} a b, or {flag} a,b)"
            )
        out.extend(item.strip() for item in items)
    return out


def _is_value(token: str) -> bool:
    """Whether a token that starts with "-" is a value, not a flag: a number (-3, -1e-3,
    -inf) or a bound that starts with one (--bounds -1:1, -2.5:)."""
    try:
        float(re.split("[:,]", token)[0])
    except ValueError:
        return False
    return True


def parse_args(argv=None) -> Config:
    """The Config of a command line (``--recipe`` first, then tyro); tyro exits on unknown
    flags and on --help; ValueError for an empty item of a multi-valued option."""
    argv = split_commas(sys.argv[1:] if argv is None else list(argv))
    # --recipe picks the defaults that the other flags then override.
    first = argparse.ArgumentParser(add_help=False)
    first.add_argument("--recipe", choices=sorted(RECIPES), default="default")
    known, rest = first.parse_known_args(argv)
    description = (
        f"{Config.__doc__}\n\n--recipe {{{','.join(sorted(RECIPES))}}}: the defaults below "
        f"(default: default; now: {known.recipe}). Multi-valued options take values "
        "separated by spaces or commas."
    )
    config = tyro.cli(Config, args=rest, default=recipe(known.recipe), description=description)
    if config.data and config.dataset == Config.dataset:  # --data alone means tabular
        config = dataclasses.replace(config, dataset="tabular")
    return config


def main(argv=None) -> int:
    matplotlib.use("Agg")  # pictures go to files; the library itself picks no backend
    warnings.showwarning = _one_line_warning  # e.g. discrete columns of --data
    initialize_distributed()
    try:
        config = parse_args(argv)
    except ValueError as problem:  # an empty item in a multi-valued option
        print(f"error: {problem}", file=sys.stderr)
        return 2
    try:
        config.validate()
        final = train(config)
    except KeyboardInterrupt:
        return 130
    except TrainingFailed as failure:
        print(f"error: training stopped: {failure}", file=sys.stderr)
        return 1
    except ValueError as problem:  # bad options, unusable data, a clashing or busy run dir
        print(f"error: {problem}", file=sys.stderr)
        return 2
    nan = float("nan")
    if config.target is None:
        validation = f"validation NLL {final.get('validation_nll', nan):.4f} nats"
    else:
        validation = (
            f"held-out ELBO {final.get('elbo', nan):.4f}, ESS fraction "
            f"{final.get('ess_fraction', nan):.3f}"
        )
    print(
        f"trained {config.target or config.dataset} for {final.get('step')} steps: "
        f"{validation} ({final.get('wall_time', 0):.0f} s)"
    )
    # Finite data: the best by validation NLL; a target: the best by held-out ELBO.
    finite = config.target is not None or config.dataset not in TOY_DATASETS
    args = EvalArgs(config.run_dir, "best" if finite else "latest", pictures=config.pictures)
    try:
        evaluate_run(args)
    except AuditFailed as failure:
        print(f"AUDIT FAILED: {failure}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
