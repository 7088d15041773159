"""Forgetting against task fit: each strategy's curve and the oracle frontier (THEORY §7).

With pretraining features ``X_pre`` (``problem.x_pre``), the forgetting ``‖(W − W⁰)X_pre‖²``
and the task loss ``½‖W X_I − Y‖²`` of an encoder ``W = W⁰ + Σ_i f_i c_i u_iᵀ`` (filter
factors ``f``, ``c_i = (Y − W⁰X_I)v_i/σ_i``) are quadratics in ``f``:

    task loss  = floor + ½ Σ_i d_i (1 − f_i)²,        d_i = σ_i² ‖c_i‖²,
    forgetting = fᵀ A f,                               A = (CᵀC) ∘ (Uᵀ X_pre X_preᵀ U),

so the best trade-off any per-direction filter can reach (the oracle frontier) minimizes
``fᵀAf + (1/(2ν))·Σ d_i(1 − f_i)²`` over ``ν ∈ [0, ∞]``: in the eigenbasis ``(κ_j, q_j)`` of
``D^{-1/2} A D^{-1/2}``, with ``β = Qᵀ D^{1/2} 1``, the minimizer has ``h_j = β_j/(1 + 2νκ_j)``
and

    task loss − floor = ½ Σ_j β_j² (2νκ_j/(1 + 2νκ_j))²,   forgetting = Σ_j κ_j β_j²/(1 + 2νκ_j)²,

one eigendecomposition for the whole frontier and a bisection in ``ν`` per target task loss.
``ReplaySD`` reaches the frontier over all encoders (not only filters), which lies on or below.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, ArrayLike, Float

from .._validation import as_real_array, check_instance
from .closed_forms import anchor_of, direct_ft_columns, fit_floor
from .problem import (
    LinearProblem,
    contrastive_target,
    pretraining_features,
    unchecked_fit_loss,
    unchecked_forgetting,
)
from .spectrum import Spectrum, spectrum as compute_spectrum
from .strategies import Strategy


class Tradeoff(eqx.Module):
    """Task loss and forgetting as quadratics in the filter factors ``f`` (r,).

    Fields: ``d`` (r,) the task curvature ``σ_i²‖c_i‖²`` (0 where masked); ``floor`` the task
    loss of Direct FT, ``½‖W_FT X_I − Y‖²``; ``a`` (r, r) the forgetting form
    ``(CᵀC) ∘ (Uᵀ X_pre X_preᵀ U)`` (0 on masked rows and columns).
    """

    d: Float[Array, " r"]
    floor: Float[Array, ""]
    a: Float[Array, "r r"]

    def task_loss(self, f: Float[Array, "*g r"]) -> Float[Array, "*g"]:
        """``floor + ½ Σ_i d_i (1 − f_i)²`` per row of ``f``."""
        d = self.d.reshape((1,) * (jnp.ndim(f) - 1) + (-1,))
        return self.floor + 0.5 * jnp.sum(d * (1 - f) ** 2, axis=-1)

    def forgetting(self, f: Float[Array, "*g r"]) -> Float[Array, "*g"]:
        """``fᵀ A f`` per row of ``f``."""
        return jnp.einsum("...i,ij,...j->...", f, self.a, f)

    @property
    def most_task_loss(self) -> Float[Array, ""]:
        """The task loss of ``W⁰`` (``f = 0``)."""
        return self.task_loss(jnp.zeros_like(self.d))


def tradeoff(problem: LinearProblem, *, spectrum: Spectrum | None = None) -> Tradeoff:
    """The ``Tradeoff`` of a problem with pretraining features (``problem.x_pre``)."""
    check_instance("problem", problem, LinearProblem)
    x_pre = pretraining_features(problem)
    spec = compute_spectrum(problem) if spectrum is None else spectrum.check_matches(problem)
    return _tradeoff(problem, spec, x_pre)


@eqx.filter_jit
def _tradeoff(problem: LinearProblem, spec: Spectrum, x_pre: Array) -> Tradeoff:
    cols = direct_ft_columns(problem, spec)  # (k, r), 0 where masked
    pre = spec.u.T @ x_pre  # (r, m)
    mask = spec.mask.astype(spec.s.dtype)
    a = (cols.T @ cols) * (pre @ pre.T) * mask[:, None] * mask[None, :]
    return Tradeoff(d=spec.sigma_sq * jnp.sum(cols**2, axis=0), floor=fit_floor(problem, spec),
                    a=a)


class ParetoCurve(eqx.Module):
    """Points of a (task loss, forgetting) curve, each field shape (G,): ``param`` (the grid
    value, or the oracle's ``ν``), ``task_loss``, ``forgetting``."""

    param: Float[Array, " G"]
    task_loss: Float[Array, " G"]
    forgetting: Float[Array, " G"]


def pareto(problem: LinearProblem,
           strategies: Callable[[Array], Strategy] | Mapping[str, Callable[[Array], Strategy]],
           grid: ArrayLike | Mapping[str, ArrayLike], *,
           spectrum: Spectrum | None = None) -> ParetoCurve | dict[str, ParetoCurve]:
    """Each strategy's (task loss, forgetting) curve over its grid.

    ``strategies`` is a family ``value -> Strategy`` (e.g. ``tt.L2SP``, or
    ``lambda lam: tt.TeacherSD(lam, tt.wma_teacher(T), steps=T, lr=lr)``) and ``grid`` a 1-D
    array of its values (λ, a horizon-free momentum, a kernel parameter …); or mappings of
    names to both. Every point is the strategy's closed form (``tt.solve``), so any strategy
    works, filters or not. Returns a ``ParetoCurve`` (or a dict of them) with ``param`` the grid.
    """
    check_instance("problem", problem, LinearProblem)
    pretraining_features(problem)
    spec = compute_spectrum(problem) if spectrum is None else spectrum.check_matches(problem)
    if isinstance(strategies, Mapping):
        if not isinstance(grid, Mapping) or set(grid) != set(strategies):
            raise ValueError("with a mapping of strategies, grid must be a mapping with the same "
                             f"names, got strategies {sorted(strategies)} and grid "
                             f"{sorted(grid) if isinstance(grid, Mapping) else type(grid)}")
        return {name: _curve(problem, spec, family, grid[name], name)
                for name, family in strategies.items()}
    return _curve(problem, spec, strategies, grid, "strategies")


def _curve(problem, spec, family, grid, name) -> ParetoCurve:
    if not callable(family):
        raise TypeError(f"{name} must be a callable value -> Strategy, got {family!r}")
    values = as_real_array(f"grid of {name}", grid)
    if values.ndim != 1 or values.shape[0] == 0:
        raise ValueError(f"the grid of {name} must be a non-empty 1-D array, got shape "
                         f"{values.shape}")
    family(values[0]).check(spec.sigma_sq)  # eager errors on the first value
    loss, forgot = _points(problem, spec, family, values)
    return ParetoCurve(param=values, task_loss=loss, forgetting=forgot)


@eqx.filter_jit
def _points(problem, spec, family, values):
    y = contrastive_target(problem)

    def one(value):
        strategy = family(value)
        anchor = anchor_of(problem, strategy)
        w, _ = strategy.solution(problem, spec, anchor, y - anchor @ problem.x_img)
        return unchecked_fit_loss(problem, w), unchecked_forgetting(problem, w)

    return jax.lax.map(one, values)


# --- the oracle -------------------------------------------------------------------------------

class Frontier(eqx.Module):
    """The oracle frontier in its own eigenbasis: ``kappa`` (r,) the eigenvalues of
    ``D^{-1/2}AD^{-1/2}`` (0 on directions that cost no forgetting), ``beta`` (r,)
    ``Qᵀ D^{1/2} 1``, ``basis`` (r, r) ``D^{-1/2}Q`` (maps ``h`` to filter factors), ``floor``."""

    kappa: Float[Array, " r"]
    beta: Float[Array, " r"]
    basis: Float[Array, "r r"]
    floor: Float[Array, ""]

    def _h(self, nu: Float[Array, "*p"]) -> Float[Array, "*p r"]:
        nu = jnp.asarray(nu)
        lead = (1,) * nu.ndim
        kappa, beta = self.kappa.reshape((*lead, -1)), self.beta.reshape((*lead, -1))
        shrink = jnp.where(kappa > 0, 1 / (1 + 2 * nu[..., None] * kappa), 1.0)
        return beta * shrink

    def task_loss(self, nu: Float[ArrayLike, "*p"]) -> Float[Array, "*p"]:
        """The oracle's task loss at ``ν`` (``ν = 0``: Direct FT; ``ν = ∞``: least forgetting)."""
        h = self._h(nu)
        return self.floor + 0.5 * jnp.sum((self.beta.reshape((1,) * (h.ndim - 1) + (-1,)) - h)
                                          ** 2, axis=-1)

    def forgetting(self, nu: Float[ArrayLike, "*p"]) -> Float[Array, "*p"]:
        """The oracle's (least) forgetting at ``ν``."""
        h = self._h(nu)
        return jnp.sum(self.kappa.reshape((1,) * (h.ndim - 1) + (-1,)) * h**2, axis=-1)

    def filters(self, nu: Float[ArrayLike, "*p"]) -> Float[Array, "*p r"]:
        """The oracle's filter factors at ``ν``, ordered like ``spectrum(problem).s``."""
        return self._h(nu) @ self.basis.T

    @property
    def most_task_loss(self) -> Float[Array, ""]:
        """Task loss of the least-forgetting oracle point (forgetting 0, ``ν = ∞``)."""
        return self.task_loss(jnp.inf)

    def nu_at(self, task_loss: Float[Array, " p"]) -> Float[Array, " p"]:
        """``ν`` at which the oracle's task loss is ``task_loss`` (bisection in log ν; ``inf``
        at or above ``most_task_loss``). Unchecked: see ``oracle_forgetting``."""
        return _nu_at(self, task_loss)


@eqx.filter_jit
def _nu_at(front: Frontier, task_loss: Float[Array, " p"]) -> Float[Array, " p"]:
    def bisect(_, bounds):
        low, high = bounds
        mid = 0.5 * (low + high)
        below = front.task_loss(jnp.exp(mid)) < task_loss
        return jnp.where(below, mid, low), jnp.where(below, high, mid)

    scale = jnp.max(front.kappa)
    scale = jnp.where(scale > 0, scale, 1.0)
    low = jnp.full_like(task_loss, -80.0) - jnp.log(scale)
    high = jnp.full_like(task_loss, 80.0) - jnp.log(scale)
    low, high = jax.lax.fori_loop(0, 200, bisect, (low, high))
    nu = jnp.exp(0.5 * (low + high))
    nu = jnp.where(task_loss >= front.most_task_loss, jnp.inf, nu)
    return jnp.where(task_loss <= front.floor, 0.0, nu)


def frontier(problem: LinearProblem, *, spectrum: Spectrum | None = None) -> Frontier:
    """The oracle ``Frontier`` of a problem with pretraining features (one eigendecomposition)."""
    return _frontier(tradeoff(problem, spectrum=spectrum))


@eqx.filter_jit
def _frontier(t: Tradeoff) -> Frontier:
    scale = jnp.max(t.d)
    active = t.d > t.d.shape[0] * jnp.finfo(t.d.dtype).eps * scale
    root = jnp.where(active, jnp.sqrt(jnp.where(active, t.d, 1.0)), 0.0)
    inv_root = jnp.where(active, 1 / jnp.where(active, root, 1.0), 0.0)
    kappa, q = jnp.linalg.eigh(t.a * inv_root[:, None] * inv_root[None, :])
    # Round-off eigenvalues count as free directions (the whitened form is PSD).
    kappa = jnp.where(kappa > t.d.shape[0] * jnp.finfo(t.d.dtype).eps * jnp.max(jnp.abs(kappa)),
                      kappa, 0.0)
    return Frontier(kappa=kappa, beta=q.T @ root, basis=inv_root[:, None] * q, floor=t.floor)


def oracle_forgetting(problem: LinearProblem | Frontier,
                      task_loss: Float[ArrayLike, " p"]) -> Float[Array, " p"]:
    """The least forgetting any per-direction filter reaches at a task loss ≤ ``task_loss``
    (shape (p,), or a scalar for a scalar). Refuses a target below the unregularized optimum
    (Direct FT's task loss, ``frontier.floor``). Pass a ``Frontier`` to reuse one."""
    front = problem if isinstance(problem, Frontier) else frontier(problem)
    target = as_real_array("task_loss", task_loss)
    floor = np.asarray(front.floor)
    low = np.asarray(target)
    tolerance = 1e-9 * max(abs(float(floor)), float(np.asarray(front.most_task_loss)), 1e-300)
    if np.any(~np.isfinite(low)) or np.any(low < floor - tolerance):
        bad = float(np.min(low)) if np.all(np.isfinite(low)) else float("nan")
        raise ValueError(f"task_loss must be finite and at least the unregularized optimum "
                         f"(Direct FT's task loss {float(floor):.6g}); got {bad:.6g}")
    flat = jnp.atleast_1d(target).astype(front.kappa.dtype)
    out = front.forgetting(front.nu_at(flat))
    return out.reshape(target.shape)


def oracle_frontier(problem: LinearProblem, n_points: int = 50, *,
                    spectrum: Spectrum | None = None) -> ParetoCurve:
    """The oracle frontier over all per-direction filter factors, at ``n_points`` task losses
    from Direct FT's (``floor``) to the least-forgetting point's, half spaced geometrically and
    half evenly in the excess over the floor. ``param`` holds each point's ``ν``."""
    if not isinstance(n_points, int) or isinstance(n_points, bool) or n_points < 2:
        raise ValueError(f"n_points must be an int >= 2, got {n_points!r}")
    front = frontier(problem, spectrum=spectrum)
    excess = front.most_task_loss - front.floor
    half = (n_points - 1) // 2
    levels = jnp.sort(jnp.concatenate([
        jnp.zeros(1, excess.dtype), jnp.logspace(-6, 0, n_points - 1 - half, dtype=excess.dtype),
        jnp.linspace(0, 1, half + 2, dtype=excess.dtype)[1:-1]]))
    nu = front.nu_at(front.floor + levels * excess)
    return ParetoCurve(param=nu, task_loss=front.task_loss(nu), forgetting=front.forgetting(nu))


def frontier_ratio(problem: LinearProblem | Frontier,
                   curve: ParetoCurve) -> Float[Array, " G"]:
    """Each point's forgetting over the oracle's at the same task loss (≥ 1 for every
    per-direction filter; ``inf`` where the oracle forgets nothing and the point does)."""
    front = problem if isinstance(problem, Frontier) else frontier(problem)
    best = oracle_forgetting(front, jnp.maximum(curve.task_loss, front.floor))
    return curve.forgetting / best
