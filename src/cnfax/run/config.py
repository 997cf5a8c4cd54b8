"""The command line of ``make train``: every option, and the named recipes.

``Config`` is a plain dataclass: experiments/train.py turns it into a command line with
tyro (``--help`` lists every option and its default), and the run directory keeps it as
``config.json``. The model's part of it (:class:`cnfax.run.model.ModelSpec`) is all that
loading reads; the rest (data files, optimizer, loop) matters to training and evaluation.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
from pathlib import Path
from typing import Annotated, Literal

import tyro
from flax import nnx

from cnfax.core.augmented import SolveOptions
from cnfax.core.checks import check_end_time
from cnfax.data.bounds import parse_bounds
from cnfax.data.sbi import SBI_TASKS
from cnfax.data.toy import TOY_DATASETS
from cnfax.objectives import FlowMatching
from cnfax.run.model import ADJOINTS, CONFIG, FIELDS, SOLVERS, ModelSpec, build_field, build_trace
from cnfax.run.target_problem import check_target

DATASETS = [*TOY_DATASETS, "digits", "tabular", *SBI_TASKS]
CACHE_VARIABLE = "CNFAX_COMPILATION_CACHE"


def default_compilation_cache() -> str:
    """$CNFAX_COMPILATION_CACHE where it is set ("" for no cache: the test suite sets it),
    else ~/.cache/cnfax/jax."""
    return os.environ.get(CACHE_VARIABLE, "~/.cache/cnfax/jax")


_RENAMED = ("kinetic_energy", "jacobian_norm", "t1_penalty")


@dataclasses.dataclass(frozen=True)
class Config:
    """Train a CNF on a toy density, the digits or a user's matrix (FFJORD's 2-D toy model
    with the measured recipe of docs/benchmark.md by default; --recipe ffjord for FFJORD's
    own training), or fit one to an unnormalised density by variational inference
    (--target). Fields named ``*_weight`` weigh a regulariser; the integrals themselves
    (``kinetic_energy``, ``jacobian_frobenius``) are metrics."""

    dataset: str = "8gaussians"
    """a 2-D toy (8gaussians, checkerboard, 2spirals, pinwheel, swissroll, circles, moons,
    rings), digits (scikit-learn's 8x8 images), tabular (with --data), or a simulation-based
    inference task (sbi-two-moons, sbi-gaussian-linear: the posterior p(theta | x))"""
    target: str | None = None
    """variational inference instead of data: fit q to this unnormalised density by the
    reverse KL (u1-u4, funnel, mixture, gaussian50, logistic: cnfax.targets.TARGETS, or
    module:function, a log-density z (n, d) -> (n,) with a .dim); the data options are
    refused with it. Each step is --batch-size base draws; the validation is the ELBO,
    log Z_hat and ESS of --eval-size fixed draws, and the best checkpoint the highest ELBO"""
    estimator: Literal["standard", "stl"] = "standard"
    """with --target: the reverse KL's gradient, as computed (standard) or sticking the
    landing (stl: the score term dropped, a second solve per step; cnfax.ReverseKL)"""
    data: str | None = None
    """a .npy or .csv matrix (rows are samples) to train on; implies --dataset tabular"""
    dequantize: bool = False
    """with --data: add uniform noise U[0, 1) to integer-valued columns (counts, categories),
    whose likelihood is otherwise unbounded; the model is then a density of x + u"""
    condition_columns: tuple[str, ...] = ()
    """with --data: columns (header names or 0-based indices) to condition on; the model is
    p(other columns | these)"""
    bounds: tuple[str, ...] = ()
    """with --data: one lo:hi per modelled column, either side empty for none (0:1, 0:, :),
    mapped to R before standardisation (cnfax.data.bounds): draws stay inside, and the
    log-density is -inf outside"""
    conditional: bool = False
    """with --dataset digits: model p(image | label), the label one-hot"""
    simulations: int = 10_000
    """with an sbi-* dataset: simulated (theta, x) pairs to learn p(theta | x) from"""
    whiten: bool = True
    """with an sbi-* dataset: the flow models theta less its least-squares regression on x,
    whitened (cnfax.data.whitening), so that an untrained flow is that conditional Gaussian"""
    bounded_by: Literal["truncation", "logit"] = "truncation"
    """with an sbi-* dataset whose prior is a box: truncation (the flow models theta
    itself; draws outside the box are rejected and log p is -inf there, as sbi's NPE) or
    logit (the box's logit map: draws inside by construction; cnfax.data.truncation)"""
    iters: int = 1500
    """training iterations"""
    batch_size: int = 256
    lr: float = 1e-2
    lr_schedule: Literal["constant", "cosine"] = "cosine"
    """constant, or cosine decay to 0 at --iters (after the warm-up)"""
    warmup_steps: int = 0
    """linear warm-up of the learning rate from 0 over this many steps"""
    seed: int = 0
    run_dir: str = "runs/default"
    """where config, metrics, checkpoints and pictures go; an existing run is resumed"""
    field: Literal["concatsquash", "residual"] = "concatsquash"
    """FFJORD's ConcatSquash MLP, or the residual field (Fourier time features in every
    block, zero-initialised output: cnfax.ResidualField)"""
    hidden: tuple[int, ...] | None = None
    """layer widths (the residual field: one width, len(hidden) blocks; default: 64 64 64,
    with an sbi-* dataset 96 96 96: SBI_DEFAULTS)"""
    frequencies: int = 16
    """the residual field's Fourier time frequencies"""
    activation: str = "tanh"
    """concatsquash: tanh, softplus, swish, elu; residual: silu, gelu, softplus, tanh"""
    t1: float = 0.5
    learn_t1: bool = False
    objective: Literal["mle", "flow-matching", "fm-then-mle"] = "mle"
    """maximum likelihood through the solve, simulation-free flow matching, or flow
    matching for the first --switch-step steps and maximum likelihood after them"""
    switch_step: int = 400
    """with --objective fm-then-mle: the step at which maximum likelihood takes over"""
    kinetic_energy_weight: Annotated[float | None, tyro.conf.arg(name="kinetic-energy")] = None
    """RNODE weight on int |f|^2 dt in maximum-likelihood steps (default: 0.01 there, none
    with --objective flow-matching, where it is refused)"""
    jacobian_norm_weight: Annotated[float | None, tyro.conf.arg(name="jacobian-norm")] = None
    """RNODE weight on int ||df/dz||_F^2 dt in maximum-likelihood steps (default: 0.01
    there, none with --objective flow-matching, where it is refused)"""
    t1_penalty_weight: Annotated[float, tyro.conf.arg(name="t1-penalty")] = 0.0
    """weight on the sum of learned end times (with --learn-t1)"""
    sigma_min: float = 1e-4
    """flow matching: width of the path's end around each data point"""
    coupling: Literal["independent", "ot"] = "independent"
    """flow matching: independent pairs, or minibatch optimal-transport pairs"""
    time_exponent: float = 0.0
    """flow matching: tau has density (1 + alpha) tau^alpha (0: uniform; FMPE uses > 0,
    more pairs near the data)"""
    trace: Literal["exact", "hutchinson"] = "exact"
    """divergence in training (evaluation always uses the exact trace)"""
    noise: Literal["rademacher", "gaussian"] = "rademacher"
    probes: int = 1
    """Hutchinson noise vectors per point, averaged"""
    solver: str = "dopri5"
    rtol: float = 1e-3
    """relative tolerance of the training solves (the validation NLL is solved at --eval-tol,
    make evaluate at 1e-6)"""
    atol: float = 1e-3
    loose_tol: float | None = None
    """train at rtol = atol = loose_tol before --tight-step, then at --rtol/--atol: a young
    model needs no tight solve (each tolerance is one more compiled step)"""
    tight_step: int = 0
    """with --loose-tol: the step from which training uses --rtol/--atol"""
    eval_tol: float | None = 1e-5
    """rtol = atol of the held-out NLL logged during training (default: --rtol/--atol);
    make evaluate always uses its own, 1e-6"""
    adjoint: Literal["backsolve", "checkpoint"] = "backsolve"
    num_blocks: int = 1
    weight_decay: float | None = None
    """AdamW's decoupled decay: each step shrinks a weight by lr x weight_decay of itself
    (default: 0, with an sbi-* dataset 0.1: SBI_DEFAULTS)"""
    grad_clip: float = 10.0
    """clip the global gradient norm to this (0 disables)"""
    eval_every: int | None = None
    """steps between validations (default: 250; with an sbi-* dataset, 10 epochs of its
    training split where that is fewer, at least 10 steps: a small simulation budget
    overfits within a few hundred steps)"""
    ckpt_every: int = 250
    keep: int = 3
    """checkpoints kept (the best by validation NLL is kept as well)"""
    eval_size: int = 2000
    """validation points for the validation NLL logged during training"""
    log_every: int = 10
    max_steps: int = 4096
    """step budget of each solve; a solve that runs out fails its training step"""
    ema_decay: float = 0.995
    """exponential moving average of the weights (0: none; cnfax.train.ema): the averaged
    weights are what is evaluated, selected, checkpointed and loaded"""
    patience: int | None = None
    """stop after this many validation evaluations without a lower validation NLL (with
    --target: a higher held-out ELBO) (0: never; the default, except with an sbi-*
    dataset: 3, some 20-30 epochs, as sbi stops after 20); the best checkpoint holds the
    best weights"""
    max_failures: int = 10
    """stop after this many consecutive failed steps (non-finite loss or failed solve)"""
    pictures: bool = True
    count_backward: bool = False
    """count the backward solve's field evaluations (logged as nfe_backward); the count is a
    host callback, which keeps the compiled step out of the compilation cache"""
    compilation_cache: str = dataclasses.field(default_factory=default_compilation_cache)
    """directory of JAX's persistent compilation cache ("" for none; default
    $CNFAX_COMPILATION_CACHE, else ~/.cache/cnfax/jax): a repeated or resumed run loads its
    compiled steps from there instead of compiling them again"""

    def validate(self) -> Config:
        """Raise ValueError naming each bad option (and the valid choices); return self.

        Here live the rules across options and the names looked up in tables; the values
        that the flow, trace, solver options and objective check themselves are checked by
        building those objects, so each rule is written once."""
        problems = []
        # The loop's own settings, which no object checks, first: the rules relative to
        # --iters below only apply (and are only reported) once --iters itself is valid.
        counts = ("iters", "batch_size", "num_blocks", "eval_every", "ckpt_every", "keep")
        for name in (*counts, "eval_size", "log_every", "max_failures"):
            if getattr(self, name) is not None and getattr(self, name) < 1:
                problems.append(f"{name} must be positive, got {getattr(self, name)}")
        iters_ok = self.iters >= 1
        if iters_ok and not 0 <= self.warmup_steps < self.iters:
            problems.append(f"warmup_steps must be in [0, iters), got {self.warmup_steps}")
        for name, table in (
            ("dataset", DATASETS),
            ("solver", SOLVERS),
            ("adjoint", ADJOINTS),
        ):
            if getattr(self, name) not in table:
                problems.append(f"{name} {getattr(self, name)!r} (choose from {sorted(table)})")
        activations = FIELDS.get(self.field)
        if activations is None:
            problems.append(f"field {self.field!r} (choose from {sorted(FIELDS)})")
        elif self.activation not in activations:
            problems.append(
                f"activation {self.activation!r} of the {self.field} field (choose from "
                f"{sorted(activations)})"
            )
        if self.target is not None:
            problems.extend(_target_clashes(self))
        elif self.estimator != Config.estimator:
            problems.append("--estimator goes with --target (the reverse KL's gradient)")
        if (self.dataset == "tabular") != bool(self.data):
            problems.append("--data PATH goes with dataset 'tabular' (and only with it)")
        if self.condition_columns and not self.data:
            problems.append("--condition-columns goes with --data")
        if self.bounds:
            if not self.data:
                problems.append("--bounds goes with --data")
            try:
                parse_bounds(self.bounds)
            except ValueError as problem:
                problems.append(str(problem))
        if self.conditional and self.dataset != "digits":
            problems.append("--conditional goes with --dataset digits (p(image | label))")
        if self.simulations < 10:
            problems.append(f"simulations must be at least 10, got {self.simulations}")
        if self.dequantize and not self.data:
            problems.append("--dequantize goes with --data (the digits are always dequantised)")
        if self.objective == "flow-matching":
            if self.kinetic_energy_weight or self.jacobian_norm_weight or self.t1_penalty_weight:
                problems.append(
                    "kinetic_energy, jacobian_norm and t1_penalty apply to --objective mle"
                )
        if self.t1_penalty_weight and not self.learn_t1:
            problems.append("t1_penalty needs --learn-t1")
        if iters_ok and self.objective == "fm-then-mle" and not 0 <= self.switch_step < self.iters:
            problems.append(
                f"switch_step must be in [0, iters) with fm-then-mle, got {self.switch_step}"
            )
        if self.loose_tol is None and self.tight_step:
            problems.append("--tight-step goes with --loose-tol")
        if iters_ok and self.loose_tol is not None and not 0 <= self.tight_step <= self.iters:
            problems.append(f"tight_step must be in [0, iters], got {self.tight_step}")
        for name in ("lr", "rtol", "atol", "loose_tol", "eval_tol"):
            if getattr(self, name) is not None and not getattr(self, name) > 0:
                problems.append(f"{name} must be positive, got {getattr(self, name)}")
        if not 0 <= self.ema_decay < 1:
            problems.append(f"ema_decay must be in [0, 1), got {self.ema_decay}")
        if self.patience is not None and self.patience < 0:
            problems.append(f"patience must be non-negative, got {self.patience}")
        if (self.weight_decay or 0) < 0 or self.grad_clip < 0:
            problems.append("weight_decay and grad_clip must be non-negative")

        # The objects' own checks, collected rather than restated.
        def flow_matching_model(c):
            if c.objective in ("flow-matching", "fm-then-mle"):
                matching = FlowMatching(
                    sigma_min=c.sigma_min, coupling=c.coupling, time_exponent=c.time_exponent
                )
                matching.check_model(c.num_blocks, c.is_conditional, c.learn_t1)

        for check in (
            build_objective,
            flow_matching_model,
            build_trace,
            lambda c: check_end_time(c.t1),
            lambda c: SolveOptions.create(max_steps=c.max_steps),
            lambda c: _check_field(c.resolved()),
            lambda c: c.target is None or check_target(c.target),
        ):
            try:
                check(self)
            except ValueError as problem:
                problems.append(str(problem))
        if problems:  # a bad --target is met by two checks: say it once
            raise ValueError("invalid config: " + "; ".join(dict.fromkeys(problems)))
        return self

    def model_spec(self) -> ModelSpec:
        """The model's part of these options (what loading reads)."""
        names = [f.name for f in dataclasses.fields(ModelSpec)]
        resolved = self.resolved()
        return ModelSpec(**{name: getattr(resolved, name) for name in names})

    def resolved(self) -> Config:
        """These options with the defaults that depend on the data filled in where they
        were left out (None): :data:`SBI_DEFAULTS` for an sbi-* dataset, else
        :data:`PLAIN_DEFAULTS`. A run directory keeps the resolved options, so a later
        change of these defaults does not change what an old run loads as."""
        sbi = self.dataset in SBI_TASKS and self.target is None
        table = SBI_DEFAULTS if sbi else PLAIN_DEFAULTS
        filled = {name: value for name, value in table.items() if getattr(self, name) is None}
        return dataclasses.replace(self, **filled) if filled else self

    @property
    def is_conditional(self) -> bool:
        """Whether the data comes with conditions (the flow models p(x | y))."""
        return bool(self.condition_columns) or self.conditional or self.dataset in SBI_TASKS

    def schedule(self, train_rows: int | None) -> tuple[int, int]:
        """(steps between validations, patience in validations): the options, or where
        left out their defaults (``train_rows``: the training split's size, None for a
        stream). Small simulation budgets overfit fast: at 10^3 simulations (800 training
        pairs, 3 steps an epoch) Gaussian linear's validation NLL was lowest at step 40
        and 7 nats worse by step 250, the first validation at 250-step intervals."""
        sbi = self.dataset in SBI_TASKS and train_rows is not None
        epochs = 10 * math.ceil(train_rows / self.batch_size) if sbi else 250
        eval_every = self.eval_every or max(10, min(250, epochs))
        patience = self.patience if self.patience is not None else (3 if sbi else 0)
        return eval_every, patience

    def to_json(self) -> str:
        return json.dumps(dataclasses.asdict(self.resolved()), indent=2)

    @classmethod
    def from_json(cls, text: str) -> Config:
        raw = json.loads(text)
        raw["hidden"] = None if raw.get("hidden") is None else tuple(raw["hidden"])
        raw["condition_columns"] = tuple(raw.get("condition_columns", ()))
        raw["bounds"] = tuple(raw.get("bounds", ()))
        for old in _RENAMED:  # runs saved before the weights were named as weights
            if old in raw:
                raw[f"{old}_weight"] = raw.pop(old)
        # runs saved before the conditional whitening trained without it: evaluating them
        # with today's default would score their flow on other inputs than it learnt
        raw.setdefault("whiten", False)
        raw.setdefault("bounded_by", "logit")  # and before the truncation, with the map
        return cls(**raw)

    @classmethod
    def load(cls, run_dir: str | Path) -> Config:
        return cls.from_json((Path(run_dir) / CONFIG).read_text())


from cnfax.run.builders import build_objective  # noqa: E402 (builders read Config)


def _target_clashes(config: Config) -> list[str]:
    """The options that --target refuses: a target replaces the data, and the reverse KL
    the data objectives and their regularisers."""
    given = [
        flag
        for flag, on in (
            ("--dataset", config.dataset != Config.dataset),
            ("--data", bool(config.data)),
            ("--dequantize", config.dequantize),
            ("--condition-columns", bool(config.condition_columns)),
            ("--conditional", config.conditional),
            ("--objective", config.objective != Config.objective),
            ("--kinetic-energy", bool(config.kinetic_energy_weight)),
            ("--jacobian-norm", bool(config.jacobian_norm_weight)),
            ("--t1-penalty", bool(config.t1_penalty_weight)),
        )
        if on
    ]
    if not given:
        return []
    return [
        f"--target {config.target!r} fits q to a density by the reverse KL, without data: "
        f"{', '.join(given)} cannot go with it"
    ]


def _check_field(config: Config) -> None:
    """The field's own checks (widths, frequencies), by building a 1-D one."""
    if config.field in FIELDS and config.activation in FIELDS[config.field]:
        build_field(config, 1, 0, nnx.Rngs(0))


# Named starting points for a Config. "default" is Config() itself: maximum likelihood with
# training solves at rtol = atol = 1e-3, lr 1e-2 with cosine decay, RNODE's regularisers at
# 0.01 (they keep a flow trained at that rate smooth and invertible), an EMA of the weights
# (0.995), the validation NLL at 1e-5, no host callback (so the compiled steps go into the
# persistent compilation cache), chosen from the measurements in docs/benchmark.md (issue
# 19: 1.9x / 2.4x faster to a good density than FFJORD's recipe on 8gaussians /
# checkerboard, and a lower final NLL). "fast" is its earlier name. "ffjord" is FFJORD's
# recipe as cnfax trained it before that work: maximum likelihood at 1e-5 throughout, a
# constant learning rate, no regulariser or average, backward evaluations counted, no
# compilation cache.
FFJORD = dict(
    objective="mle",
    iters=1500,
    batch_size=256,
    lr=3e-3,
    lr_schedule="constant",
    warmup_steps=0,
    rtol=1e-5,
    atol=1e-5,
    loose_tol=None,
    tight_step=0,
    eval_tol=None,
    kinetic_energy_weight=0.0,
    jacobian_norm_weight=0.0,
    weight_decay=1e-5,
    ema_decay=0.0,
    count_backward=True,
    compilation_cache="",
)
RECIPES = {"default": {}, "fast": {}, "ffjord": FFJORD}

# The defaults that depend on the data (Config.resolved). Posteriors of simulators are
# learnt from a fixed, small set of pairs, and overfit: on SLCP at 10^4 simulations the
# plain default's validation NLL stopped falling from step 1000. AdamW's decay at 0.1
# with a wider field (96 per layer) lowered sbibm's C2ST there from 0.890 to 0.860 over
# its 10 observations, in 222-267 s of training, but its posteriors there are overconfident
# (coverage deviation 0.150, against 0.085 before; docs/results.md, "The sbi defaults").
PLAIN_DEFAULTS = dict(hidden=(64, 64, 64), weight_decay=0.0)
SBI_DEFAULTS = dict(hidden=(96, 96, 96), weight_decay=0.1)


def recipe(name: str, **changes) -> Config:
    """The Config of a named recipe (:data:`RECIPES`), with ``changes`` on top."""
    if name not in RECIPES:
        raise ValueError(f"recipe {name!r} (choose from {sorted(RECIPES)})")
    return dataclasses.replace(Config(), **{**RECIPES[name], **changes})
