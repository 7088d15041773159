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
import jax.numpy as jnp
from jaxtyping import Array, ArrayLike, Float, Int

from .._validation import as_scalar, ensure, show
from .problem import LinearProblem, pretraining_features
from .spectrum import Spectrum

Anchor = Literal["pretrained", "zero"]


class Strategy(eqx.Module):
    """Base class: a finetuning strategy with a closed form in the task eigenbasis."""

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
    """Plain finetuning to convergence: ``W⁰(I − P) + Y X⁺``, ``f_i = 1``."""

    def filter(self, sigma_sq):
        return jnp.ones_like(sigma_sq)


class StaticSD(Strategy):
    """Self-distillation toward the frozen pretrained model: penalty ``(λ/2)‖(W − W⁰) X_I‖²``.

    Closed form ``W⁰(I − P/(1+λ)) + Y X⁺/(1+λ)``, ``f_i = 1/(1+λ)``.
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

    Closed form ``(Y X_Iᵀ + λW⁰)(X_I X_Iᵀ + λI)⁻¹``, ``f_i = σ_i²/(σ_i² + λ)``.
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
    """L2 toward zero: penalty ``(λ/2)‖W‖²``, ``λ > 0``.

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

    Closed form ``W = W⁰ + (Y − W⁰X_I) X_Iᵀ (X_I X_Iᵀ + λ X_pre X_preᵀ)⁺`` (THEORY §7): not a
    per-direction filter (it moves ``W`` outside the task subspace wherever ``X_pre`` does), so
    ``filter`` is refused. ``X_pre = X_I`` gives static SD; its λ-curve is the Pareto frontier
    of forgetting against task loss over all encoders. GD on its objective needs
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
        x, x_pre = problem.x_img, pretraining_features(problem)
        hessian = x @ x.T + self.lam * (x_pre @ x_pre.T)  # (d_I, d_I)
        # The minimum-norm minimizer: the one gradient descent from W⁰ converges to.
        w = anchor + (residual @ x.T) @ jnp.linalg.pinv(hessian, hermitian=True)
        return w, jnp.zeros((0,), spec.s.dtype)


class DirectionalSD(Strategy):
    """Static SD with one weight per task direction: penalty
    ``½ Σ_i λ_i σ_i² ‖(W − W⁰) u_i‖²``, ``f_i = 1/(1 + λ_i)``; ``lams`` (r,) ≥ 0, ordered like
    ``spectrum(problem).s``. Every filter in ``(0, 1]`` is one of these: the family a designer
    of per-direction weights searches (THEORY §7)."""

    lams: Float[Array, " r"]

    def __init__(self, lams: ArrayLike):
        lams = jnp.asarray(lams)
        if lams.ndim != 1:
            raise ValueError(f"lams must be a 1-D array (one λ per task direction), got shape "
                             f"{lams.shape}")
        self.lams = ensure(lams, jnp.all(jnp.isfinite(lams) & (lams >= 0)),
                           "lams must be finite and >= 0")

    def filter(self, sigma_sq):
        if self.lams.shape != sigma_sq.shape:
            raise ValueError(f"lams has {self.lams.shape[0]} entries but the problem has "
                             f"{sigma_sq.shape[0]} task directions (r = min(d_I, n))")
        return 1 / (1 + self.lams)

    def penalty(self, problem, w):
        from .spectrum import spectrum  # one SVD, never cached on the value

        spec = spectrum(problem)
        moved = (w - problem.w0) @ spec.u  # (k, r)
        return 0.5 * jnp.sum(self.lams * spec.sigma_sq * jnp.sum(moved**2, axis=0))

    def curvature(self, sigma_sq):
        return (1 + self.lams) * sigma_sq
