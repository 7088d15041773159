"""Finetuning strategies as small immutable values (THEORY §3).

A strategy knows two things, each written once:

* ``penalty(problem, w)``: what it adds to the data term ``½‖W X_I − Y‖²``; the reference
  gradient-descent iteration (``linear.gd``) minimises exactly that objective;
* ``filter(sigma_sq)``: its closed form in the eigenbasis of ``X_I X_Iᵀ``, the filter factor
  ``f_i`` by which the converged solution moves from its ``anchor`` (``W⁰``, or 0 for weight
  decay) toward the least-squares solution in direction ``i``.

Strategies are equinox modules, so a batch of them (``jax.vmap`` over ``lam``) is free.
"""

from __future__ import annotations

from typing import ClassVar, Literal

import equinox as eqx
import jax
import jax.numpy as jnp
from jaxtyping import Array, ArrayLike, Float, Int

from .._validation import as_scalar, as_vector, ensure, ensure_entries, show
from .problem import LinearProblem, pretraining_features
from .spectrum import Spectrum

Anchor = Literal["pretrained", "zero"]


class Strategy(eqx.Module):
    """Base class: a finetuning strategy with a closed form in the task eigenbasis (THEORY §3.1).

    ``filter`` maps ``σ_i²`` (r,) to the filter factors ``f_i`` (r,); ``penalty`` is what it
    adds to the data term (THEORY §3.2); ``curvature`` (r,) bounds its GD step.
    """

    anchor: ClassVar[Anchor] = "pretrained"

    def filter(self, sigma_sq: Float[Array, " r"]) -> Float[Array, " r"]:
        """Filter factor per direction, given ``σ_i²`` (shape (r,)); returns shape (r,)."""
        raise NotImplementedError

    def penalty(self, problem: LinearProblem, w: Float[Array, "k d_I"]) -> Float[Array, ""]:
        """The regulariser added to ``½‖W X_I − Y‖²`` (0 for unregularised strategies)."""
        return jnp.zeros((), problem.dtype)

    def curvature(self, sigma_sq: Float[Array, " r"]) -> Float[Array, " r"]:
        """Hessian eigenvalues of the objective along each ``u_i``, shape (r,).

        Gradient descent is stable for ``lr < 2/max(curvature)`` and converges at the rate set
        by the smallest curvature among the directions that move.
        """
        return sigma_sq

    #: Curvature of the objective on the orthogonal complement, where those directions move
    #: under GD from ``W⁰`` (weight decay: λ); ``None`` where they never move.
    def orthogonal_curvature(self) -> Float[Array, ""] | None:
        return None

    def check(self, sigma_sq: Float[Array, " r"]) -> Float[Array, " r"]:
        """Validate problem-dependent hyper-parameters against ``σ_i²``; returns its input."""
        return sigma_sq

    def solution(self, problem: LinearProblem, spec: Spectrum, anchor: Float[Array, "k d_I"],
                 residual: Float[Array, "k n"]) -> tuple[Float[Array, "k d_I"], Array]:
        """The converged encoder (k, d_I) and the filter factors (r,) it was built from.

        ``anchor`` is ``anchor_of(problem, self)`` and ``residual`` is ``Y − anchor·X_I``.
        Here: the anchor moved by ``filter`` in the task eigenbasis; a strategy that is not a
        per-direction filter (``ReplaySD``) overrides this and returns no factors (shape (0,)).
        """
        from .closed_forms import from_filter, masked_filter  # closed_forms imports this module

        f = masked_filter(spec, self)
        return from_filter(problem, spec, f, anchor, residual=residual), f


class DirectFT(Strategy):
    """Plain finetuning to convergence: ``W⁰(I − P) + Y X⁺``, ``f_i = 1`` (THEORY §3.2)."""

    def filter(self, sigma_sq):
        return jnp.ones_like(sigma_sq)


class StaticSD(Strategy):
    """Self-distillation toward the frozen pretrained model: penalty ``(λ/2)‖(W − W⁰) X_I‖²``.

    Closed form ``W⁰(I − P/(1+λ)) + Y X⁺/(1+λ)``, ``f_i = 1/(1+λ)`` (THEORY §3.2); ``lam`` a
    scalar ≥ 0.
    """

    lam: Float[Array, ""]

    def __init__(self, lam: ArrayLike = 1.0):
        self.lam = as_scalar("lam", lam, minimum=0.0)

    def filter(self, sigma_sq):
        return jnp.ones_like(sigma_sq) / (1 + self.lam)

    def curvature(self, sigma_sq):
        return (1 + self.lam) * sigma_sq

    def penalty(self, problem, w):
        return 0.5 * self.lam * jnp.sum(((w - problem.w0) @ problem.x_img) ** 2)


class L2SP(Strategy):
    """L2 toward the pretrained weights: penalty ``(λ/2)‖W − W⁰‖²``.

    Closed form ``(Y X_Iᵀ + λW⁰)(X_I X_Iᵀ + λI)⁻¹``, ``f_i = σ_i²/(σ_i² + λ)`` (THEORY §3.2);
    ``lam`` a scalar ≥ 0.
    """

    lam: Float[Array, ""]

    def __init__(self, lam: ArrayLike = 1.0):
        self.lam = as_scalar("lam", lam, minimum=0.0)

    def filter(self, sigma_sq):
        return sigma_sq / (sigma_sq + self.lam)

    def penalty(self, problem, w):
        return 0.5 * self.lam * jnp.sum((w - problem.w0) ** 2)

    def curvature(self, sigma_sq):
        return sigma_sq + self.lam


class WeightDecay(Strategy):
    """L2 toward zero: penalty ``(λ/2)‖W‖²``, ``λ > 0`` a scalar (THEORY §3.2, §3.3).

    Closed form ``Y X_Iᵀ (X_I X_Iᵀ + λI)⁻¹``: anchored at 0, ``f_i = σ_i²/(σ_i² + λ)`` toward
    ``Y X⁺``, and the orthogonal part of ``W⁰`` is erased. (``λ = 0`` is refused: gradient
    descent from ``W⁰`` then converges to Direct FT, not to the ``λ → 0`` limit ``Y X⁺``.)
    """

    anchor: ClassVar[Anchor] = "zero"
    lam: Float[Array, ""]

    def __init__(self, lam: ArrayLike = 1.0):
        self.lam = as_scalar("lam", lam, minimum=0.0, strict=True)

    def filter(self, sigma_sq):
        return sigma_sq / (sigma_sq + self.lam)

    def penalty(self, problem, w):
        return 0.5 * self.lam * jnp.sum(w**2)

    def curvature(self, sigma_sq):
        return sigma_sq + self.lam

    def orthogonal_curvature(self):
        return self.lam


class StoppedGD(Strategy):
    """Plain gradient descent from ``W⁰`` stopped after ``steps`` steps of size ``lr``.

    ``f_i = 1 − (1 − lr·σ_i²)^steps``; requires ``0 < lr < 2/σ_max²`` (checked per problem).
    ``steps`` and ``lr`` are scalars (THEORY §3.4).
    """

    steps: Int[Array, ""]
    lr: Float[Array, ""]

    def __init__(self, steps: ArrayLike, lr: ArrayLike):
        self.steps = as_scalar("steps", steps, minimum=0, integer=True)
        self.lr = as_scalar("lr", lr, minimum=0.0, strict=True)

    def filter(self, sigma_sq):
        s = self.lr * sigma_sq
        small = s < 1
        # 1 − (1 − s)^t as −expm1(t·log1p(−s)) where 1 − s > 0 (accurate for tiny s); an integer
        # power where 1 − s ≤ 0 (the oscillating but stable regime 1 ≤ s < 2).
        from_log = -jnp.expm1(self.steps * jnp.log1p(-jnp.where(small, s, 0.0)))
        from_pow = 1 - jnp.where(small, 0.0, 1 - s) ** self.steps
        return jnp.where(small, from_log, from_pow)

    def check(self, sigma_sq):
        bound = 2.0 / jnp.max(sigma_sq)
        return ensure(sigma_sq, self.lr < bound,
                      f"lr must be below the stability bound 2/σ_max² = {show(bound)} for this "
                      f"problem, got lr = {show(self.lr)}")



class ReplaySD(Strategy):
    """Self-distillation toward ``W⁰`` on the pretraining features (the linear data-hybrid
    replay): penalty ``(λ/2)‖(W − W⁰) X_pre‖²``, ``λ ≥ 0``; needs ``problem.x_pre``.

    Solution ``W = W⁰ + (Y − W⁰X_I) X_Iᵀ (X_I X_Iᵀ + λ X_pre X_preᵀ)⁺`` (THEORY §7.3), the
    minimum-norm minimizer (where gradient descent from ``W⁰`` converges), computed as a
    stacked least squares that stays exact for every λ up to the dtype's largest (λ → ∞: the
    least squares fit with ``(W − W⁰) X_pre = 0``); see ``replay_step``. Not a per-direction
    filter (it moves ``W`` outside the task subspace wherever ``X_pre`` does), so ``filter``
    is refused. ``X_pre = X_I`` gives static SD; its λ-curve is the Pareto frontier of
    forgetting against task loss over all encoders. GD on its objective needs
    ``lr < 2/λ_max(X_I X_Iᵀ + λ X_pre X_preᵀ)``, which ``curvature`` (task directions only)
    does not bound.
    """

    lam: Float[Array, ""]

    def __init__(self, lam: ArrayLike = 1.0):
        self.lam = as_scalar("lam", lam, minimum=0.0)

    def filter(self, sigma_sq):
        raise ValueError("ReplaySD is not a per-direction filter: its solution leaves the task "
                         "subspace where X_pre does; use tt.solve(problem, ReplaySD(lam))")

    def penalty(self, problem, w):
        return 0.5 * self.lam * jnp.sum(((w - problem.w0) @ pretraining_features(problem)) ** 2)

    def solution(self, problem, spec, anchor, residual):
        step = replay_step(problem.x_img, pretraining_features(problem), residual, self.lam,
                           spec.s[0])
        return anchor + step, jnp.zeros((0,), spec.s.dtype)


def replay_step(x: Float[Array, "d_I n"], x_pre: Float[Array, "d_I m"],
                residual: Float[Array, "k n"], lam: Float[Array, ""],
                sigma_max: Float[Array, ""]) -> Float[Array, "k d_I"]:
    """The minimum-norm ``ΔW`` (k, d_I) minimizing ``½‖ΔW X − R‖² + (λ/2)‖ΔW X_pre‖²``.

    In the basis ``U`` of left singular vectors of ``X_pre`` (values ``s_i``, 0 below
    ``max(d_I, m)·eps·s_max``), ``ΔW = Y Uᵀ`` solves ``min ½‖Y M − R‖² + ½Σ ω_i²‖y_i‖²`` with
    ``M = Uᵀ X`` and ``ω_i = √λ s_i``: the least squares ``Y [M, diag(ω)] ≈ [R, 0]``. It is
    solved with ``Y = Z T``, ``t_i = 1/hypot(1, ρ_i)``, ``ρ_i = ω_i/σ_max``, which keeps every
    row of ``[T M, diag(ω t)]`` at most ``σ_max`` long, so no task direction falls below the
    pseudo-inverse's cutoff however large λ is (forming ``X Xᵀ + λ X_pre X_preᵀ`` loses them
    beyond λ ≈ 1/eps). That pseudo-inverse is accurate relative to ``σ_max`` only, so the rows
    with ``ρ_i > 1`` (small ``y_i``) are refined by two Jacobi steps of the normal equations.
    Exact to round-off, relative to ``‖ΔW‖``, from λ = 0 (``R X⁺``) to λ → ∞, where
    ``y_i → 0`` on range(X_pre) leaves the fit with ``ΔW X_pre = 0``; a λ beyond the dtype's
    range counts as ∞.

    ``U``, ``V``, ``T`` and the Jacobi weights carry no gradient: the minimizer (a fixed point
    of the Jacobi step) does not depend on them, so the derivatives in ``x``, ``x_pre`` and λ
    are exact (``Uᵀ X_pre V`` is ``diag(s)`` in value and carries its derivative).
    """
    d, m = x_pre.shape
    dtype = x.dtype
    sg = jax.lax.stop_gradient
    # U (d, d) spans R^{d_I}, range(X_pre) first: pad X_pre to d columns when m < d.
    padded = jnp.pad(x_pre, ((0, 0), (0, max(d - m, 0))))
    u, s, vt = sg(jnp.linalg.svd(padded, full_matrices=False))
    kept = s > max(d, m) * jnp.finfo(dtype).eps * s[0]
    s = jnp.where(kept, s, 0.0)
    moved = (u.T @ padded) @ vt.T
    pre = jnp.diag(s) + (moved - sg(moved))  # Uᵀ X_pre V: diag(s) in value, exact derivative
    scale = jnp.where(sigma_max > 0, sigma_max, 1.0)
    root = jnp.sqrt(lam).astype(dtype)  # inf where λ exceeds the dtype: the λ → ∞ limit
    finite_root = jnp.where(jnp.isfinite(root), root, 0.0)
    safe_s = jnp.where(kept, s, 1.0)
    rho = jnp.where(kept, root * (safe_s / scale), 0.0)  # ω_i/σ_max
    big = rho > 1
    inv_rho = 1 / jnp.where(big, rho, 1.0)
    t = sg(jnp.where(big, inv_rho / jnp.hypot(1.0, inv_rho), 1 / jnp.hypot(1.0, rho)))
    # √λ·t_i, without forming √λ·(something tiny): σ_max/(s_i·hypot(1, 1/ρ_i)) where ρ_i > 1.
    weight = sg(jnp.where(big, scale / (safe_s * jnp.hypot(1.0, inv_rho)), finite_root * t))
    # The weights carry no gradient: √λ/stop_gradient(√λ) (= 1) restores the one in λ.
    unit = jnp.where(finite_root > 0, finite_root / sg(jnp.where(finite_root > 0, finite_root,
                                                                 1.0)), 1.0)
    data = u.T @ x  # M, (d, n)
    stacked = jnp.concatenate([t[:, None] * data, (weight * unit)[:, None] * pre], axis=1)
    rtol = max(stacked.shape) * jnp.finfo(dtype).eps  # stacked: (d, n + d), rows ≤ σ_max
    y = (residual @ jnp.linalg.pinv(stacked, rtol=rtol)[: x.shape[1]]) * t[None, :]  # (k, d)
    # The pseudo-inverse is accurate relative to σ_max only: rows with ρ_i > 1 (small y_i) take
    # two Jacobi steps of the normal equations, y_i ← y_i − g_i/h_i, h_i = ‖M_i‖² + ω_i², which
    # make them accurate relative to themselves. 1/h_i and λ/h_i come from ρ_i and
    # m_i = ‖M_i‖²/σ_max² (nothing overflows; λ/h_i → 0 sends y_i → 0).
    norms = jnp.sum(data**2, axis=1) / scale**2
    inv_h, lam_over_h = sg((jnp.where(big, 1 / (rho**2 + norms), 0.0) / scale**2,
                            jnp.where(big, 1 / (1 + norms * inv_rho**2), 0.0) / safe_s**2))
    for _ in range(2):
        fit = (y @ data - residual) @ data.T  # (k, d)
        penalty = (y @ pre) @ pre.T  # Y diag(s²) in value
        y = y - inv_h[None, :] * fit - (lam_over_h * unit**2)[None, :] * penalty
    return y @ u.T


class DirectionalSD(Strategy):
    """Static SD with one weight per task direction: penalty
    ``½ Σ_i λ_i σ_i² ‖(W − W⁰) u_i‖²``, ``f_i = 1/(1 + λ_i)``; ``lams`` (r,) ≥ 0, ordered like
    ``spectrum(problem).s``. Every filter in ``(0, 1]`` is one of these: the family a designer
    of per-direction weights searches (THEORY §7.4). ``lams`` must be a non-empty 1-D real array
    with ``r = min(d_I, n)`` entries for the problem it is used on (checked by ``solve``,
    ``filter_factors``, ``objective`` and ``gradient_descent``)."""

    lams: Float[Array, " r"]

    def __init__(self, lams: ArrayLike):
        lams = as_vector("lams", lams)
        self.lams = ensure_entries(lams, jnp.isfinite(lams) & (lams >= 0),
                                   "lams{index} must be finite and >= 0, got {value}")

    def _checked(self, r: int) -> Float[Array, " r"]:
        """``lams`` if it has one entry per task direction (``r`` of them), else a ValueError."""
        if self.lams.shape != (r,):
            raise ValueError(f"lams has {self.lams.shape[0]} entries but the problem has {r} "
                             "task directions (r = min(d_I, n)); DirectionalSD needs one λ per "
                             "direction of spectrum(problem).s")
        return self.lams

    def filter(self, sigma_sq):
        return 1 / (1 + self._checked(sigma_sq.shape[0]))

    def check(self, sigma_sq):
        self._checked(sigma_sq.shape[0])
        return sigma_sq

    def penalty(self, problem, w):
        from .spectrum import spectrum  # one SVD, never cached on the value

        spec = spectrum(problem)
        lams = self._checked(spec.s.shape[0])
        moved = (w - problem.w0) @ spec.u  # (k, r)
        return 0.5 * jnp.sum(lams * spec.sigma_sq * jnp.sum(moved**2, axis=0))

    def curvature(self, sigma_sq):
        return (1 + self._checked(sigma_sq.shape[0])) * sigma_sq
