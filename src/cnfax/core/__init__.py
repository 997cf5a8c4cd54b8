"""The CNF's mathematics, and nothing about training or files.

- :mod:`~cnfax.core.fields`: vector fields f(t, z) (FFJORD's ConcatSquash, and the modern
  time-embedded residual field);
- :mod:`~cnfax.core.trace`: divergence estimators (exact, Hutchinson);
- :mod:`~cnfax.core.augmented`: the augmented ODE (z, log p, RNODE's integrals) and one
  block's Diffrax solve;
- :mod:`~cnfax.core.flow`: :class:`CNF`, the public methods;
- :mod:`~cnfax.core.norms`: step-size error norms for batched solves;
- :mod:`~cnfax.core.solvers`: the RK4 tableau and evaluations per step;
- :mod:`~cnfax.core.stats`: solve statistics;
- :mod:`~cnfax.core.checks`: input checks made before any solve.
"""
