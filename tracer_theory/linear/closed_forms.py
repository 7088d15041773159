"""Closed-form solutions of every strategy from one SVD (THEORY §3).

Every strategy's converged solution is

    W = A + Σ_i f_i · (Y − A X_I) v_i / σ_i · u_iᵀ,

with anchor ``A = W⁰`` (``A = 0`` for weight decay) and the strategy's filter factors ``f_i``.
The orthogonal part ``A(I − P)`` is therefore kept exactly for every ``W⁰``-anchored strategy.
"""

from __future__ import annotations

import equinox as eqx
import jax.numpy as jnp
from jaxtyping import Array, Float

from .._validation import all_finite, check_instance, ensure_each, not_finite
from .problem import LinearProblem, contrastive_target
from .spectrum import Spectrum, spectrum as compute_spectrum
from .strategies import Strategy


def anchor_of(problem: LinearProblem, strategy: Strategy) -> Float[Array, "k d_I"]:
    """The point the strategy shrinks toward: ``W⁰``, or zeros for weight decay."""
    return problem.w0 if strategy.anchor == "pretrained" else jnp.zeros_like(problem.w0)


def masked_filter(spec: Spectrum, strategy: Strategy) -> Float[Array, " r"]:
    """The strategy's filter factors (r,), 0 below the rank tolerance, in the spectrum's
    dtype (a float64 λ never changes a float32 problem's)."""
    sigma_sq = strategy.check(spec.sigma_sq)
    return jnp.where(spec.mask, strategy.filter(sigma_sq), 0.0).astype(spec.s.dtype)


_filter = eqx.filter_jit(masked_filter)


def from_filter(problem: LinearProblem, spec: Spectrum, f: Float[Array, " r"],
                anchor: Float[Array, "k d_I"], *,
                residual: Float[Array, "k n"] | None = None) -> Float[Array, "k d_I"]:
    """``A + Σ_i f_i (Y − A X_I) v_i/σ_i u_iᵀ``: the encoder with filter factors ``f`` (r,) from
    anchor ``A`` (k, d_I). Every closed form and every spectral trajectory ends here.
    ``residual`` is ``Y − A X_I`` (k, n) when the caller has it already."""
    if residual is None:
        residual = contrastive_target(problem) - anchor @ problem.x_img  # (k, n)
    coef = (residual @ spec.v) * (f * spec.inv_s)[None, :]  # (k, r)
    return anchor + coef @ spec.u.T


def direct_ft_columns(problem: LinearProblem, spec: Spectrum) -> Float[Array, "k r"]:
    """``c_i = (Y − W⁰X_I) v_i / σ_i`` (0 below the rank tolerance), shape (k, r): Direct FT
    moves ``W⁰`` by ``Σ_i c_i u_iᵀ``, and a filter ``f`` by ``Σ_i f_i c_i u_iᵀ``."""
    residual = contrastive_target(problem) - problem.w0 @ problem.x_img
    return (residual @ spec.v) * spec.inv_s[None, :]


def fit_floor(problem: LinearProblem, spec: Spectrum) -> Float[Array, ""]:
    """``½‖W_FT X_I − Y‖²``: the part of the data term no encoder can fit (Direct FT's loss)."""
    w_ft = from_filter(problem, spec, spec.mask.astype(spec.s.dtype), problem.w0)
    return 0.5 * jnp.sum((w_ft @ problem.x_img - contrastive_target(problem)) ** 2)


@eqx.filter_jit
def _solve(problem: LinearProblem, strategy: Strategy, spec: Spectrum):
    """The closed form, and whether its target, residual and result are finite (to report
    which one overflowed)."""
    y = contrastive_target(problem)
    anchor = anchor_of(problem, strategy)
    residual = y - anchor @ problem.x_img
    w, f = strategy.solution(problem, spec, anchor, residual)
    return w, (all_finite(y), all_finite(residual), all_finite(f), all_finite(w))


def problem_spectrum(problem: LinearProblem, spec: Spectrum | None) -> Spectrum:
    """``spectrum(problem)``, or ``spec`` once checked to be that (a ``TypeError`` or
    ``ValueError`` naming ``problem`` or ``spectrum`` otherwise)."""
    check_instance("problem", problem, LinearProblem)
    if spec is None:
        return compute_spectrum(problem)
    check_instance("spectrum", spec, Spectrum)
    return spec.check_matches(problem)


def checked_spectrum(problem: LinearProblem, strategy: Strategy,
                     spec: Spectrum | None) -> Spectrum:
    check_instance("problem", problem, LinearProblem)
    check_instance("strategy", strategy, Strategy)
    spec = problem_spectrum(problem, spec)
    strategy.check(spec.sigma_sq)  # eager ValueError for concrete hyper-parameters
    return spec


def result_checks(problem: LinearProblem, strategy: Strategy, where: str,
                  finite: tuple[Array, ...]) -> list[tuple[Array, str]]:
    """``(ok, message)`` pairs naming which of ``Y``, ``Y − A X_I``, ``f`` and ``W`` overflowed."""
    name, dtype = type(strategy).__name__, problem.dtype
    anchor = "W⁰ X_I" if strategy.anchor == "pretrained" else "0"
    return list(zip(finite, [
        not_finite(f"{where}: the contrastive target Y = W_T⁰ X_T C", dtype,
                   "rescale x_txt or w_txt"),
        not_finite(f"{where}: the fit residual Y − {anchor}", dtype,
                   "rescale x_img, w0, x_txt or w_txt"),
        not_finite(f"{where}: a filter factor of {name}", dtype,
                   f"{name}.filter must return finite values for σ_i² in the problem's range"),
        not_finite(f"{where}: the {name} solution W", dtype,
                   "rescale x_img, x_txt, w0 or w_txt (the solution grows like ‖Y‖/σ_min)"),
    ], strict=True))


def solve(problem: LinearProblem, strategy: Strategy, *,
          spectrum: Spectrum | None = None) -> Float[Array, "k d_I"]:
    """Returns the strategy's converged (or, for ``StoppedGD``, step-t) encoder, shape (k, d_I):
    the closed form ``W = A + Σ_i f_i (Y − A X_I) v_i/σ_i u_iᵀ`` of THEORY §3.1 and §3.2.

    Pass a precomputed ``spectrum`` to reuse one SVD across many strategies; it must be
    ``tt.spectrum(problem)`` (another problem's is refused). Jit-compiled; differentiable in the
    strategy's hyper-parameters and in the problem's arrays. A result that overflows the
    problem's dtype is refused with an error naming what overflowed, never returned as Inf/NaN.
    """
    spec = checked_spectrum(problem, strategy, spectrum)
    w, finite = _solve(problem, strategy, spec)
    return ensure_each(w, result_checks(problem, strategy, "solve", finite))


def filter_factors(problem: LinearProblem, strategy: Strategy, *,
                   spectrum: Spectrum | None = None) -> Float[Array, " r"]:
    """Returns the filter factors ``f_i`` of the strategy in the eigenbasis of ``X_I X_Iᵀ``,
    shape (r,) (THEORY §3.1; each strategy's ``f_i`` in THEORY §3.2).

    Ordered like ``spectrum(problem).s`` (descending σ_i); 0 in directions below the rank
    tolerance. For weight decay they are relative to the anchor 0 (see ``WeightDecay``).
    Non-finite factors (a custom ``Strategy.filter`` that overflows) are refused.
    """
    spec = checked_spectrum(problem, strategy, spectrum)
    f = _filter(spec, strategy)
    return ensure_each(f, result_checks(problem, strategy, "filter_factors",
                                        (True, True, all_finite(f), True)))
