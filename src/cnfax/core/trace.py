"""Divergence estimators: tr(df/dz) for a batched vector field.

A CNF's log-density obeys d log p(z(t))/dt = -tr(df/dz). Both estimators here take a
function ``fn: z -> f(z)`` acting row-wise on ``z`` of shape ``(..., d)`` and return the
field value together with the divergence of each row, shape ``(...)``.

- :class:`Exact` builds the Jacobian's diagonal from ``d`` Jacobian-vector products,
  tr(J) = sum_i e_i^T J e_i.
- :class:`Hutchinson` uses tr(J) = E[eps^T J eps] for noise with E[eps eps^T] = I
  (Hutchinson, 1989), averaged over ``probes`` draws. It costs one JVP per probe,
  independent of ``d``. The noise is *not* sampled here: the CNF draws it once per solve
  and passes it through ``args``, so that every stage of the forward solve and the whole
  backward (adjoint) solve see the same realisation; resampling inside the vector field
  would make the ODE random and its adjoint wrong.

Both also return an estimate of the squared Jacobian Frobenius norm ||J||_F^2, which
RNODE regularises and which costs nothing extra given the products already formed.
"""

from __future__ import annotations

import abc
import dataclasses
from collections.abc import Callable
from typing import Literal, NamedTuple

import jax
import jax.numpy as jnp

Array = jax.Array


UNROLL_UP_TO = 16


def _jvps(fn: Callable[[Array], Array], z: Array, tangents: Array, unroll: bool):
    """f(z) and the Jacobian-vector products J t_k for tangents of shape (k, ..., d).

    Unrolled, the k JVPs are written out one by one (XLA shares their primal computation);
    otherwise one ``linearize`` is applied to all k under ``vmap``. Same numbers; the
    unrolled form's reverse pass (the adjoint's backward solve) is several times faster
    on CPU, as it keeps plain matrix products where vmap makes batched ones (README,
    benchmark), while its graph grows with k.
    """
    if unroll:
        pairs = [jax.jvp(fn, (z,), (t,)) for t in tangents]
        return pairs[0][0], jnp.stack([jvp for _, jvp in pairs])
    value, lin = jax.linearize(fn, z)
    return value, jax.vmap(lin)(tangents)


class Divergence(NamedTuple):
    """What a trace estimator returns for a batch of points ``z`` of shape ``(..., d)``."""

    value: Array  # f(z), shape (..., d)
    trace: Array  # tr(df/dz) per row, shape (...)
    frobenius_sq: Array  # ||df/dz||_F^2 per row (exact, or its unbiased estimate), (...)


class TraceEstimator(abc.ABC):
    """Computes f(z) and tr(df/dz) row-wise. Subclass to add an estimator."""

    @abc.abstractmethod
    def sample_noise(self, key: Array | None, shape: tuple[int, ...], dtype) -> Array | None:
        """Noise for one solve over points of ``shape`` = (..., d); None if not needed."""

    @abc.abstractmethod
    def __call__(self, fn: Callable[[Array], Array], z: Array, noise: Array | None) -> Divergence:
        """Evaluate ``fn`` at ``z`` and its divergence, using ``noise`` from sample_noise."""

    @property
    def needs_key(self) -> bool:
        return False


@dataclasses.dataclass(frozen=True)
class Exact(TraceEstimator):
    """Exact divergence from ``d`` forward-mode Jacobian-vector products: column i of the
    (row-wise) Jacobian is the JVP with e_i, and its i-th entry is dF_i/dz_i. Cost: about
    d field evaluations' worth of JVPs. Use for d up to a few tens, and always for
    reported likelihoods.

    Args:
        unroll_up_to: write the d JVPs out one by one for d up to this, else vmap one
            linearization over them (see ``_jvps``).
    """

    unroll_up_to: int = UNROLL_UP_TO

    def sample_noise(self, key, shape, dtype):
        return None

    def __call__(self, fn, z, noise=None):
        d = z.shape[-1]
        eye = jnp.eye(d, dtype=z.dtype).reshape(d, *([1] * (z.ndim - 1)), d)
        basis = jnp.broadcast_to(eye, (d, *z.shape))  # basis[i] = e_i in every row
        # columns[i, ..., j] = dF_j / dz_i
        value, columns = _jvps(fn, z, basis, unroll=d <= self.unroll_up_to)
        trace = jnp.einsum("i...i->...", columns)
        frobenius_sq = jnp.sum(columns**2, axis=(0, -1))
        return Divergence(value, trace, frobenius_sq)


@dataclasses.dataclass(frozen=True)
class Hutchinson(TraceEstimator):
    """Hutchinson's unbiased estimator tr(J) ~ (1/k) sum_j eps_j^T J eps_j.

    Args:
        noise: "rademacher" (entries +-1; lowest variance among such estimators) or
            "gaussian" (standard normal entries).
        probes: number k of independent noise vectors per point, averaged.
        unroll_up_to: write the k JVPs out one by one for k up to this, else vmap one
            linearization over them (see ``_jvps``).

    Var[eps^T J eps] is 2 ||J_sym||_F^2 - 2 sum_i J_ii^2 for Rademacher noise and
    2 ||J_sym||_F^2 for Gaussian noise, with J_sym = (J + J^T)/2; both shrink as 1/k.
    """

    noise: Literal["rademacher", "gaussian"] = "rademacher"
    probes: int = 1
    unroll_up_to: int = UNROLL_UP_TO

    def __post_init__(self):
        noise, probes = self.noise, self.probes
        if noise not in ("rademacher", "gaussian"):
            raise ValueError(f"Hutchinson noise must be 'rademacher' or 'gaussian', got {noise!r}")
        if not isinstance(probes, int) or probes < 1:
            raise ValueError(f"Hutchinson probes must be a positive integer, got {probes!r}")

    @property
    def needs_key(self) -> bool:
        return True

    def sample_noise(self, key, shape, dtype):
        if key is None:
            raise ValueError(
                "The Hutchinson trace estimator needs a PRNG key: pass key=jax.random.key(...)"
            )
        full_shape = (self.probes, *shape)
        if self.noise == "rademacher":
            return jax.random.rademacher(key, full_shape, dtype=dtype)
        return jax.random.normal(key, full_shape, dtype=dtype)

    def __call__(self, fn, z, noise):
        value, jvps = _jvps(fn, z, noise, unroll=len(noise) <= self.unroll_up_to)  # J eps_j
        trace = jnp.mean(jnp.sum(jvps * noise, axis=-1), axis=0)
        # E|J eps|^2 = tr(J^T J E[eps eps^T]) = ||J||_F^2 for either noise.
        frobenius_sq = jnp.mean(jnp.sum(jvps**2, axis=-1), axis=0)
        return Divergence(value, trace, frobenius_sq)
