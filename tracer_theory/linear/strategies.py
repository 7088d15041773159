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
from .problem import LinearProblem

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

