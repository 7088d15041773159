"""One SVD of ``X_I``: the task subspace, its projector and the pseudo-inverse (THEORY §1, §3).

Rank tolerance (the only one in the package): a singular value counts as non-zero when

    σ_i > rtol · σ_max,   rtol = max(d_I, n) · eps(dtype)   by default,

the convention of ``numpy.linalg.matrix_rank`` and ``numpy.linalg.pinv``. Directions below it are
masked out (filter factor 0, no pseudo-inverse contribution) instead of being sliced away, so the
shapes stay static and everything stays ``jit``/``vmap``-able.

A spectrum is only valid for the matrix it was computed from. ``Spectrum.check_matches`` (run by
every solver that accepts ``spectrum=``) refuses one of another shape or dtype, and one of other
data of the same shape: it checks the factorization itself on two fixed random probe vectors,
``X_I G ≈ U diag(s) Vᵀ G`` (two matrix–vector products, O(d_I·n), far cheaper than the SVD).
"""

from __future__ import annotations

import math

import equinox as eqx
import jax
import jax.numpy as jnp
from jaxtyping import Array, Bool, Float

from .._validation import (
    as_float_matrix,
    as_fraction,
    check_instance,
    ensure,
    ensure_each,
    is_traced,
)
from .problem import LinearProblem


class Spectrum(eqx.Module):
    """Thin SVD ``X_I = U diag(s) Vᵀ`` with its rank mask; ``r = min(d_I, n)`` (THEORY §1).

    Fields: ``u`` (d_I, r), ``s`` (r,) descending, ``v`` (n, r), ``mask`` (r,) True where
    ``s`` is above the rank tolerance. Valid only for the ``X_I`` (and dtype) it was computed
    from: the solvers refuse it for any other (``check_matches``).
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
        """Return this spectrum if it is the SVD of ``problem.x_img``, else raise ``ValueError``.

        Refuses a spectrum of another shape or dtype, and one whose factorization does not
        reproduce ``X_I`` on two fixed random probes (``probe_residual`` above
        ``identity_tolerance``): the spectrum of other data of the same shape. With traced
        arrays (inside ``jit``/``vmap``) the last check runs with the computation.
        """
        check_instance("spectrum", self, Spectrum)
        check_instance("problem", problem, LinearProblem)
        x = problem.x_img
        d, n = x.shape
        r = min(d, n)
        shapes = (self.u.shape, self.s.shape, self.v.shape, self.mask.shape)
        if shapes != ((d, r), (r,), (n, r), (r,)):
            raise ValueError(
                f"spectrum has u {self.u.shape}, s {self.s.shape} and v {self.v.shape}, but the "
                f"problem's x_img of shape ({d}, {n}) needs u ({d}, {r}), s ({r},) and v "
                f"({n}, {r}): it was computed for another X_I; pass spectrum=tt.spectrum(problem)")
        dtypes = {a.dtype for a in (self.u, self.s, self.v)}
        if dtypes != {x.dtype} or self.mask.dtype != jnp.bool_:
            raise ValueError(
                f"spectrum has dtype {self.s.dtype} but the problem's x_img has dtype {x.dtype}; "
                "a spectrum is only valid in the dtype it was computed in: pass "
                "spectrum=tt.spectrum(problem)")
        residual = probe_residual(x, self)
        tol = identity_tolerance(x.shape, x.dtype)
        by = "" if is_traced(residual) else f" by a relative {float(residual):.2g}"
        s = ensure(self.s, residual <= tol,
                   f"spectrum is not the SVD of this problem's x_img: U diag(s) Vᵀ misses x_img "
                   f"on random probes{by}, more than the {tol:.1e} of a genuine SVD, so it was "
                   "computed from other data; pass spectrum=tt.spectrum(problem)")
        return self if s is self.s else eqx.tree_at(lambda spec: spec.s, self, s)


#: Number of random probe vectors of the identity check.
_PROBES = 2


def identity_tolerance(shape: tuple[int, int], dtype: object) -> float:
    """Largest ``probe_residual`` accepted from a genuine SVD: ``8·max(d, n)·eps(dtype)``, at
    most 0.1 (the scale of the rank tolerance).

    Measured residuals of LAPACK's SVD are a few eps for well-conditioned data and up to
    ``0.2·max(d, n)·eps`` for wide rank-deficient ones (constant or duplicated columns, n up
    to 3·10⁵); the spectrum of other data gives about 1.
    """
    return min(8 * max(shape) * float(jnp.finfo(dtype).eps), 0.1)


@eqx.filter_jit
def probe_residual(x: Float[Array, "d n"], spec: Spectrum) -> Float[Array, ""]:
    """``‖X G − U diag(s) Vᵀ G‖_F / (‖s‖ √m)`` for a fixed standard-normal ``G`` (n, m = 2).

    For the SVD of ``x``, ``‖s‖ = ‖X‖_F`` and ``E‖X G‖_F² = m ‖X‖_F²``: this is the residual
    relative to the probes' own size, a few eps. The spectrum of any other matrix gives about 1
    (or more, when its ``‖s‖`` is smaller than ``‖X‖_F``). Everything is scaled by ``σ_max`` of
    the spectrum (no overflow), and the products run at full precision (no TF32 or bf16 passes
    on accelerators). One pass over ``x``: O(d·n + r·(d + n)).
    """
    highest = jax.lax.Precision.HIGHEST
    g = jax.random.normal(jax.random.key(0), (x.shape[1], _PROBES), x.dtype)
    scale = spec.s[0]
    scale = jnp.where(jnp.isfinite(scale) & (scale > 0), scale, 1).astype(x.dtype)
    g = g / scale
    direct = jnp.matmul(x, g, precision=highest)  # (d, m)
    coef = spec.s[:, None] * jnp.matmul(spec.v.T, g, precision=highest)  # (r, m)
    factored = jnp.matmul(spec.u, coef, precision=highest)
    size = jnp.linalg.norm(spec.s / scale) * math.sqrt(_PROBES)
    error = jnp.linalg.norm(direct - factored)
    return jnp.where(size > 0, error / jnp.where(size > 0, size, 1), error)


@eqx.filter_jit
def _svd(x: Float[Array, "d n"], rtol: float) -> Spectrum:
    u, s, vt = jnp.linalg.svd(x, full_matrices=False)
    mask = s > rtol * s[0]
    return Spectrum(u=u, s=s, v=vt.T, mask=mask)


def spectrum(problem: LinearProblem, rtol: float | None = None) -> Spectrum:
    """The SVD of ``problem.x_img`` (d_I, n) with rank mask (THEORY §1; see the module
    docstring for ``rtol``). Returns a ``Spectrum``: ``u`` (d_I, r), ``s`` (r,), ``v`` (n, r).

    Compute it once and pass it to ``solve``/``filter_factors`` to reuse it across strategies.
    """
    check_instance("problem", problem, LinearProblem)
    return _spectrum("x_img", problem.x_img, rtol)


def spectrum_of(x: Float[Array, "d n"], rtol: float | None = None) -> Spectrum:
    """The rank-masked SVD of any feature matrix ``x`` (d, n), e.g. a deep layer's inputs."""
    return _spectrum("x", as_float_matrix("x", x, "(d, n)"), rtol)


def _spectrum(name: str, x: Float[Array, "d n"], rtol: float | None) -> Spectrum:
    if rtol is None:
        rtol = max(x.shape) * float(jnp.finfo(x.dtype).eps)
    else:
        rtol = as_fraction("rtol", rtol, closed=False)
    spec = _svd(x, jnp.asarray(rtol, dtype=x.dtype))
    # σ_max² sets every step size and filter factor: it must be a finite number.
    factors = ensure_each((spec.u, spec.s, spec.v), [
        (jnp.isfinite(spec.s), f"the SVD of {name} did not converge (its singular values are "
                               "not finite)"),
        (jnp.isfinite(spec.sigma_max_sq),
         f"{name} is too large: its largest squared singular value σ_max² overflows "
         f"{x.dtype.name}; rescale {name}")])
    return Spectrum(u=factors[0], s=factors[1], v=factors[2], mask=spec.mask)
