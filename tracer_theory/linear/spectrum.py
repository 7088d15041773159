"""One SVD of ``X_I``: the task subspace, its projector and the pseudo-inverse (THEORY §1, §3).

Rank tolerance (the only one in the package): a singular value counts as non-zero when

    σ_i > rtol · σ_max,   rtol = max(d_I, n) · eps(dtype)   by default,

the convention of ``numpy.linalg.matrix_rank`` and ``numpy.linalg.pinv``. Directions below it are
masked out (filter factor 0, no pseudo-inverse contribution) instead of being sliced away, so the
shapes stay static and everything stays ``jit``/``vmap``-able.
"""

from __future__ import annotations

import equinox as eqx
import jax
import jax.numpy as jnp
from jaxtyping import Array, Bool, Float

from .._validation import as_float_matrix, check_instance
from .problem import LinearProblem


class Spectrum(eqx.Module):
    """Thin SVD ``X_I = U diag(s) Vᵀ`` with its rank mask; ``r = min(d_I, n)``.

    Fields: ``u`` (d_I, r), ``s`` (r,) descending, ``v`` (n, r), ``mask`` (r,) True where
    ``s`` is above the rank tolerance.
    """

    u: Float[Array, "d_I r"]
    s: Float[Array, " r"]
    v: Float[Array, "n r"]
    mask: Bool[Array, " r"]

    @property
    def sigma_sq(self) -> Float[Array, " r"]:
        """Eigenvalues ``σ_i²`` of ``X_I X_Iᵀ`` on the task subspace (0 where masked)."""
        return jnp.where(self.mask, self.s**2, 0.0)

    @property
    def inv_s(self) -> Float[Array, " r"]:
        """``1/σ_i`` on the task subspace, 0 where masked (safe for gradients)."""
        safe = jnp.where(self.mask, self.s, 1.0)
        return jnp.where(self.mask, 1.0 / safe, 0.0)

    @property
    def rank(self) -> Array:
        return jnp.sum(self.mask)

    @property
    def sigma_max_sq(self) -> Float[Array, ""]:
        return self.s[0] ** 2

    def projector(self) -> Float[Array, "d_I d_I"]:
        """``P = X_I X_Iᵀ (X_I X_Iᵀ)⁺``, the projector onto ``range(X_I)``."""
        um = self.u * self.mask[None, :]
        return um @ um.T

    def pinv(self) -> Float[Array, "n d_I"]:
        """``X⁺``, the Moore–Penrose pseudo-inverse of ``X_I``."""
        return (self.v * self.inv_s[None, :]) @ self.u.T

    def check_matches(self, problem: LinearProblem) -> Spectrum:
        """Raise ``ValueError`` unless this is the spectrum of an ``X_I`` of ``problem``'s shape."""
        check_instance("spectrum", self, Spectrum)
        d, n = problem.x_img.shape
        if self.u.shape[0] != d or self.v.shape[0] != n:
            raise ValueError(f"spectrum was computed for X_I of shape ({self.u.shape[0]}, "
                             f"{self.v.shape[0]}) but the problem has X_I of shape ({d}, {n}); "
                             "pass spectrum=tt.spectrum(problem)")
        return self


@eqx.filter_jit
def _svd(x: Float[Array, "d n"], rtol: float) -> Spectrum:
    u, s, vt = jnp.linalg.svd(x, full_matrices=False)
    mask = s > rtol * s[0]
    return Spectrum(u=u, s=s, v=vt.T, mask=mask)


def spectrum(problem: LinearProblem, rtol: float | None = None) -> Spectrum:
    """The SVD of ``problem.x_img`` with rank mask (see module docstring for ``rtol``).

    Compute it once and pass it to ``solve``/``filter_factors`` to reuse it across strategies.
    """
    check_instance("problem", problem, LinearProblem)
    return spectrum_of(problem.x_img, rtol)


def spectrum_of(x: Float[Array, "d n"], rtol: float | None = None) -> Spectrum:
    """The rank-masked SVD of any feature matrix ``x`` (d, n), e.g. a deep layer's inputs."""
    x = as_float_matrix("x", x, "(d, n)")
    if rtol is None:
        rtol = max(x.shape) * float(jnp.finfo(x.dtype).eps)
    elif not (0.0 <= float(rtol) < 1.0):
        raise ValueError(f"rtol must be in [0, 1), got {rtol}")
    return _svd(x, jax.numpy.asarray(rtol, dtype=x.dtype))
