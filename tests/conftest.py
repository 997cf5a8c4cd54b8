"""Hypothesis profiles, chosen by CNFAX_HYPOTHESIS_PROFILE (default `ci` if CI=true, else `dev`).

- ci: few examples, derandomised (reproducible on the 2-core CI machine).
- dev: a few more, random.
- accelerator: many examples, for GPU runs where each solve is cheap.
Every profile has deadline=None: the first example of a test compiles.
"""

import os

from hypothesis import HealthCheck, settings

_common = dict(
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
    print_blob=True,
)
settings.register_profile("ci", max_examples=4, derandomize=True, **_common)
settings.register_profile("dev", max_examples=8, **_common)
settings.register_profile("accelerator", max_examples=60, **_common)

_default = "ci" if os.environ.get("CI", "").lower() in ("1", "true", "yes") else "dev"
settings.load_profile(os.environ.get("CNFAX_HYPOTHESIS_PROFILE", _default))
