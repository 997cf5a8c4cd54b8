"""The experiment's config: every bad option is named before anything compiles, cross-field
rules and the objects' own checks alike; CLI flags keep their names; old runs still load."""

import dataclasses
import json

import jax.numpy as jnp
import numpy as np
import pytest
import tyro
from hypothesis import given
from hypothesis import strategies as st

from cnfax.run.builders import build_optimizer
from cnfax.run.config import Config


@pytest.mark.parametrize(
    "change, message",
    [
        (dict(dataset="spirals"), "dataset 'spirals'.*8gaussians"),
        (dict(solver="rk45"), "solver 'rk45'.*dopri5"),
        (dict(rtol=0.0), "rtol must be positive"),
        (dict(batch_size=0), "batch_size must be positive"),
        (dict(t1=-1.0), "t1 must be a positive"),
        (dict(objective="flow-matching", learn_t1=True), "fixed end time"),
        (dict(objective="flow-matching", kinetic_energy_weight=0.1), "apply to --objective mle"),
        (dict(kinetic_energy_weight=-1.0), "kinetic_energy_weight must be non-negative"),
        (dict(t1_penalty_weight=0.1), "t1_penalty needs --learn-t1"),
        (dict(objective="flow-matching", coupling="sinkhorn"), "coupling must be"),
        (dict(trace="hutchinson", probes=0), "probes must be a positive integer"),
        (dict(max_steps=0), "max_steps must be a positive integer"),
        (dict(hidden=(8, 0)), "hidden widths must be positive"),
    ],
)
def test_bad_configs_are_refused_before_anything_compiles(change, message):
    with pytest.raises(ValueError, match=message):
        dataclasses.replace(Config(), **change).validate()


@given(
    dataset=st.sampled_from(["8gaussians", "moons", "spiral"]),
    solver=st.sampled_from(["dopri5", "tsit5", "rk45"]),
    adjoint=st.sampled_from(["backsolve", "checkpoint", "direct"]),
    rtol=st.floats(-1, 1e-3),
    batch_size=st.integers(-2, 512),
    t1=st.floats(-1, 2),
)
def test_config_validation_accepts_or_names_every_problem(
    dataset, solver, adjoint, rtol, batch_size, t1
):
    config = dataclasses.replace(
        Config(),
        dataset=dataset,
        solver=solver,
        adjoint=adjoint,
        rtol=rtol,
        batch_size=batch_size,
        t1=t1,
    )
    expected = {
        "dataset": dataset == "spiral",
        "solver": solver == "rk45",
        "adjoint": adjoint == "direct",
        "rtol": not rtol > 0,
        "batch_size": batch_size < 1,
        "t1": not t1 > 0,
    }
    try:
        config.validate()
    except ValueError as error:
        named = {name for name in expected if name in str(error)}
        assert named == {name for name, bad in expected.items() if bad}
    else:
        assert not any(expected.values())


def test_weight_fields_keep_their_cli_flags():
    config = tyro.cli(
        Config, args=["--kinetic-energy", "0.1", "--jacobian-norm", "0.2", "--t1-penalty", "0.3"]
    )
    assert (config.kinetic_energy_weight, config.jacobian_norm_weight) == (0.1, 0.2)
    assert config.t1_penalty_weight == 0.3


def test_a_config_saved_before_the_weights_were_renamed_still_loads():
    raw = json.loads(Config().to_json())
    for name in ("kinetic_energy", "jacobian_norm", "t1_penalty"):
        raw[name] = raw.pop(f"{name}_weight")
    raw["kinetic_energy"] = 0.25
    assert Config.from_json(json.dumps(raw)).kinetic_energy_weight == 0.25


def test_a_config_saved_before_the_whitening_loads_unwhitened_and_a_new_one_keeps_its_choice():
    """make evaluate rebuilds the data from config.json: a run saved before the whitening
    existed was trained unwhitened, so its config must not take today's default."""
    raw = json.loads(Config(dataset="sbi-two-moons").to_json())
    assert raw.pop("whiten") is True
    assert Config.from_json(json.dumps(raw)).whiten is False
    assert Config.from_json(Config(dataset="sbi-two-moons").to_json()).whiten is True


def test_a_config_saved_before_the_truncation_loads_with_the_logit_map():
    """Likewise a run saved before the prior box became a truncation mapped it by its
    logit; a new config keeps the truncation."""
    raw = json.loads(Config(dataset="sbi-two-moons").to_json())
    assert raw.pop("bounded_by") == "truncation"
    assert Config.from_json(json.dumps(raw)).bounded_by == "logit"
    assert Config.from_json(Config(dataset="sbi-two-moons").to_json()).bounded_by == "truncation"


def test_an_sbi_run_validates_every_ten_epochs_and_stops_after_three_without_progress():
    """At 10^3 simulations (800 training pairs, 4 steps an epoch at batch 256) the default
    validates every 40 steps and stops after 3 validations without a lower NLL; at 10^4
    (8,000 pairs) the interval is capped at 250, as for every other dataset, whose
    default never stops; options given are kept."""
    small = Config(dataset="sbi-gaussian-linear", simulations=1000)
    assert small.schedule(800) == (40, 3)
    assert Config(dataset="sbi-two-moons").schedule(8000) == (250, 3)
    assert Config(dataset="sbi-two-moons").schedule(30) == (10, 3)  # at least 10 steps
    assert Config().schedule(None) == (250, 0)
    assert Config(dataset="digits").schedule(1437) == (250, 0)
    assert dataclasses.replace(small, eval_every=7, patience=0).schedule(800) == (7, 0)


def test_an_sbi_run_defaults_to_the_wider_decayed_field_and_keeps_options_given():
    """The defaults that depend on the data (Config.resolved): an sbi-* dataset's field is
    96 wide with AdamW's decay at 0.1 (SBI_DEFAULTS), any other dataset's 64 wide with none;
    options given are never replaced, and the run directory keeps the resolved values."""
    sbi, plain = Config(dataset="sbi-slcp"), Config()
    assert (sbi.model_spec().hidden, sbi.resolved().weight_decay) == ((96, 96, 96), 0.1)
    assert (plain.model_spec().hidden, plain.resolved().weight_decay) == ((64, 64, 64), 0.0)
    given = Config(dataset="sbi-slcp", hidden=(8,), weight_decay=0.0).resolved()
    assert (given.hidden, given.weight_decay) == ((8,), 0.0)
    saved = json.loads(sbi.to_json())
    assert (saved["hidden"], saved["weight_decay"]) == ([96, 96, 96], 0.1)
    assert Config.from_json(sbi.to_json()) == sbi.resolved()
    # a variational run trains no posterior, whatever --dataset's (unused) value
    assert Config(dataset="sbi-slcp", target="u1").model_spec().hidden == (64, 64, 64)


def test_the_optimizer_decays_the_weights_of_an_sbi_run_only():
    """The resolved decay reaches AdamW: one step on a zero gradient shrinks a weight by
    lr x 0.1 of itself with an sbi-* dataset (the first step's learning rate is --lr), and
    leaves it with the plain default."""
    weights = {"w": jnp.ones(3)}
    for config, shrink in ((Config(dataset="sbi-two-moons"), 1e-2 * 0.1), (Config(), 0.0)):
        optimizer = build_optimizer(config)
        updates, _ = optimizer.update({"w": jnp.zeros(3)}, optimizer.init(weights), weights)
        np.testing.assert_allclose(updates["w"], -shrink * weights["w"], rtol=1e-6, atol=1e-12)
