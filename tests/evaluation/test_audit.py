"""The audit: a flow that inverts passes with its worst errors reported; one that does not
(four Euler steps) fails with one AuditFailed that names every failure."""

import diffrax
import numpy as np
import pytest
from flax import nnx

import cnfax
from cnfax.evaluation.audit import ROUND_TRIP_THRESHOLD, AuditFailed, audit_flow

FIELD = cnfax.ConcatSquashMLP(2, (16,), rngs=nnx.Rngs(0))
DATA = np.random.default_rng(0).normal(size=(50, 2)).astype(np.float32)


def test_a_flow_solved_at_tight_tolerance_passes_and_reports_its_worst_errors():
    flow = cnfax.CNF(FIELD, t1=1.0, stepsize_controller=diffrax.PIDController(rtol=1e-6, atol=1e-6))
    report = audit_flow(flow, DATA, max_examples=2)
    assert report.examples >= 2
    assert 0 < report.worst_round_trip <= ROUND_TRIP_THRESHOLD
    assert "audit: worst round trip" in report.summary()


def test_a_flow_that_does_not_invert_fails_with_one_assertion_error():
    """Four Euler steps: forward and inverse are not each other's inverse (Euler's error
    is first order), so round trips miss by far more than the threshold."""
    flow = cnfax.CNF(
        FIELD,
        t1=1.0,
        solver=diffrax.Euler(),
        stepsize_controller=diffrax.ConstantStepSize(),
        dt0=0.25,
    )
    with pytest.raises(AuditFailed, match="round trip error|failures: .*round trip"):
        audit_flow(flow, DATA, max_examples=2)


def test_the_audit_check_survives_python_dash_o():
    """The audit's verdict is an explicit raise, not an assert that ``python -O`` drops."""
    import subprocess
    import sys

    code = (
        "from cnfax.evaluation.audit import AuditFailed, _check\n"
        "try:\n    _check(1.0, 0.0)\nexcept AuditFailed as e:\n    print('raised', e)\n"
    )
    done = subprocess.run([sys.executable, "-O", "-c", code], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.startswith("raised round trip error")
