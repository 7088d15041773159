"""Geometric decomposition of a finetuned encoder (THEORY §3).

``W − W⁰ = (W − W⁰)P + (W − W⁰)(I − P)``: a task-subspace part and an orthogonal part. The
measured filter factor in direction ``u_i`` is the coefficient of ``(W − W⁰)u_i`` along the
Direct-FT change ``(W_FT − W⁰)u_i``; for every ``W⁰``-anchored closed form it equals the
strategy's ``f_i`` and the residual off that line is 0.
"""

from __future__ import annotations

import equinox as eqx
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, Float

from .._validation import all_finite, as_float_matrix, check_instance, ensure_each, not_finite
from .problem import LinearProblem, contrastive_target
from .spectrum import Spectrum, spectrum as compute_spectrum


class Decomposition(eqx.Module):
    """Task/orthogonal split of ``W − W⁰`` (THEORY §3.5).

    Fields: ``task`` (k, d_I) ``= (W − W⁰)P``; ``orthogonal`` (k, d_I) ``= (W − W⁰)(I − P)``;
    ``task_norm`` and ``orthogonal_norm`` their Frobenius norms divided by ``‖W⁰‖``;
    ``filter_factors`` (r,) the measured ``f_i``; ``off_filter`` (r,) the norm of the part of
    ``(W − W⁰)u_i`` not along ``(W_FT − W⁰)u_i``, relative to ``‖(W_FT − W⁰)u_i‖``.
    """

    task: Float[Array, "k d_I"]
    orthogonal: Float[Array, "k d_I"]
    task_norm: Float[Array, ""]
    orthogonal_norm: Float[Array, ""]
    filter_factors: Float[Array, " r"]
    off_filter: Float[Array, " r"]


@eqx.filter_jit
def _decompose(problem: LinearProblem, w: Float[Array, "k d_I"], spec: Spectrum):
    delta = w - problem.w0
    um = spec.u * spec.mask[None, :]
    task = (delta @ um) @ um.T
    orthogonal = delta - task
    w0_norm = jnp.linalg.norm(problem.w0)
    # Direct-FT change along u_i: (Y − W⁰X_I) v_i / σ_i, columns of a (k, r) matrix.
    y = contrastive_target(problem)
    residual = y - problem.w0 @ problem.x_img
    ft_cols = (residual @ spec.v) * spec.inv_s[None, :]
    cols = delta @ spec.u  # (k, r): (W − W⁰) u_i
    ft_sq = jnp.sum(ft_cols**2, axis=0)
    safe = jnp.where(spec.mask & (ft_sq > 0), ft_sq, 1.0)
    coef = jnp.where(spec.mask, jnp.sum(cols * ft_cols, axis=0) / safe, 0.0)
    off = jnp.linalg.norm(cols - coef[None, :] * ft_cols, axis=0) / jnp.sqrt(safe)
    out = Decomposition(task=task, orthogonal=orthogonal,
                        task_norm=jnp.linalg.norm(task) / w0_norm,
                        orthogonal_norm=jnp.linalg.norm(orthogonal) / w0_norm,
                        filter_factors=coef, off_filter=jnp.where(spec.mask, off, 0.0))
    split = jnp.all(jnp.stack([all_finite(leaf) for leaf in (task, orthogonal, out.task_norm,
                                                               out.orthogonal_norm)]))
    measured = all_finite(coef) & all_finite(out.off_filter)
    return out, (all_finite(y), all_finite(residual), split, measured)


def decompose(problem: LinearProblem, w: Float[Array, "k d_I"], *,
              spectrum: Spectrum | None = None) -> Decomposition:
    """Split ``w − W⁰`` (``w`` (k, d_I)) into its task-subspace and orthogonal parts
    (THEORY §3.5); returns a ``Decomposition``.

    ``spectrum``, if given, must be ``tt.spectrum(problem)``. Parts that overflow the problem's
    dtype are refused with an error naming them.
    """
    check_instance("problem", problem, LinearProblem)
    if np.shape(w) != problem.w0.shape:
        raise ValueError(f"w must have the shape of w0 {problem.w0.shape}, got {np.shape(w)}")
    w = as_float_matrix("w", w, "(k, d_I)")
    if spectrum is None:
        spec = compute_spectrum(problem)
    else:
        check_instance("spectrum", spectrum, Spectrum)
        spec = spectrum.check_matches(problem)
    out, finite = _decompose(problem, w, spec)
    dtype = problem.dtype
    return ensure_each(out, list(zip(finite, [
        not_finite("decompose: the contrastive target Y = W_T⁰ X_T C", dtype,
                   "rescale x_txt or w_txt"),
        not_finite("decompose: the Direct-FT residual Y − W⁰ X_I", dtype,
                   "rescale x_img, w0, x_txt or w_txt"),
        not_finite("decompose: the task/orthogonal split of w − w0 (or its norm)", dtype,
                   "rescale w and w0"),
        not_finite("decompose: a measured filter factor of (w − w0)u_i against the Direct-FT "
                   "change", dtype, "rescale w, w0 or the data"),
    ], strict=True)))
