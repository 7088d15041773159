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

from .._validation import (
    all_finite,
    as_int,
    as_real_array,
    as_vector,
    check_instance,
    ensure,
    ensure_each,
    ensure_entries,
    is_traced,
    not_finite,
    show,
    with_deferred_checks,
)
from .closed_forms import anchor_of, direct_ft_columns, fit_floor, problem_spectrum
from .problem import (
    LinearProblem,
    contrastive_target,
    pretraining_features,
    unchecked_fit_loss,
    unchecked_forgetting,
)
from .spectrum import Spectrum
from .strategies import Strategy

#: What to rescale when a quantity of the Pareto analysis overflows.
_RESCALE = "rescale x_img, x_txt, w0, w_txt or x_pre"


class Tradeoff(eqx.Module):
    """Task loss and forgetting as quadratics in the filter factors ``f`` (r,) (THEORY §7.1).

    Fields: ``d`` (r,) the task curvature ``σ_i²‖c_i‖²`` (0 where masked); ``floor`` the task
    loss of Direct FT, ``½‖W_FT X_I − Y‖²``; ``a`` (r, r) the forgetting form
    ``(CᵀC) ∘ (Uᵀ X_pre X_preᵀ U)`` (0 on masked rows and columns, and on task directions
    orthogonal to ``X_pre`` within round-off); ``forgetting_scale``
    ``(‖C‖_F² + ‖W⁰‖_F²)‖X_pre‖_F²``, which bounds every filter's forgetting and sets the
    round-off of a forgetting computed from ``W = W⁰ + ΔW``.
    """

    d: Float[Array, " r"]
    floor: Float[Array, ""]
    a: Float[Array, "r r"]
    forgetting_scale: Float[Array, ""]

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
    """Returns the ``Tradeoff`` (THEORY §7.1) of a problem with pretraining features
    (``problem.x_pre`` (d_I, m)): ``d`` (r,), ``a`` (r, r). A form that overflows the problem's
    dtype is refused, naming it."""
    x_pre = pretraining_features(problem)
    t = _tradeoff(problem, problem_spectrum(problem, spectrum), x_pre)
    dtype = problem.dtype
    return ensure_each(t, [
        (all_finite(t.d), not_finite("tradeoff: the task curvature d = σ²‖c‖²", dtype,
                                     _RESCALE)),
        (all_finite(t.floor), not_finite("tradeoff: the floor (Direct FT's task loss)", dtype,
                                         _RESCALE)),
        (all_finite(t.a), not_finite("tradeoff: the forgetting form A", dtype, _RESCALE)),
        (all_finite(t.forgetting_scale), not_finite(
            "tradeoff: the forgetting scale (‖C‖² + ‖W⁰‖²)‖X_pre‖²", dtype, _RESCALE)),
    ])


@eqx.filter_jit
def _tradeoff(problem: LinearProblem, spec: Spectrum, x_pre: Array) -> Tradeoff:
    cols = direct_ft_columns(problem, spec)  # (k, r), 0 where masked
    pre = spec.u.T @ x_pre  # (r, m)
    # A task direction whose component of X_pre is round-off is orthogonal to it.
    size = jnp.sqrt(jnp.sum(x_pre**2))
    reached = jnp.linalg.norm(pre, axis=1) > max(x_pre.shape) * jnp.finfo(pre.dtype).eps * size
    mask = (spec.mask & reached).astype(spec.s.dtype)
    a = (cols.T @ cols) * (pre @ pre.T) * mask[:, None] * mask[None, :]
    return Tradeoff(d=spec.sigma_sq * jnp.sum(cols**2, axis=0), floor=fit_floor(problem, spec),
                    a=a, forgetting_scale=(jnp.sum(cols**2) + jnp.sum(problem.w0**2)) * size**2)


class ParetoCurve(eqx.Module):
    """Points of a (task loss, forgetting) curve, each field shape (G,): ``param`` (the grid
    value, or the oracle's ``ν``), ``task_loss``, ``forgetting`` (THEORY §7.1)."""

    param: Float[Array, " G"]
    task_loss: Float[Array, " G"]
    forgetting: Float[Array, " G"]


def pareto(problem: LinearProblem,
           strategies: Callable[[Array], Strategy] | Mapping[str, Callable[[Array], Strategy]],
           grid: ArrayLike | Mapping[str, ArrayLike], *,
           spectrum: Spectrum | None = None) -> ParetoCurve | dict[str, ParetoCurve]:
    """Each strategy's (task loss, forgetting) curve over its grid (THEORY §7.1).

    ``strategies`` is a family ``value -> Strategy`` (e.g. ``tt.L2SP``, or
    ``lambda lam: tt.TeacherSD(lam, tt.wma_teacher(T), steps=T, lr=lr)``) and ``grid`` a
    non-empty 1-D array of its values (λ, a horizon-free momentum, a kernel parameter …); or
    mappings of names to both. Every point is the strategy's closed form (``tt.solve``), so any
    strategy works, filters or not. Returns a ``ParetoCurve`` (or a dict of them) with
    ``param`` the grid.

    Every grid value of every family is checked on the host before anything is compiled: the
    family must build a ``Strategy`` from it whose hyper-parameters suit the problem
    (``Strategy.check``); a bad one is refused naming the grid, the index and the value. A point
    whose task loss or forgetting overflows the problem's dtype is refused likewise.
    """
    pretraining_features(problem)
    spec = problem_spectrum(problem, spectrum)
    if isinstance(strategies, Mapping):
        if not isinstance(grid, Mapping) or set(grid) != set(strategies):
            raise ValueError("with a mapping of strategies, grid must be a mapping with the same "
                             f"names, got strategies {sorted(strategies)} and grid "
                             f"{sorted(grid) if isinstance(grid, Mapping) else type(grid)}")
        named = {name: (f"[{name!r}]", family, grid[name]) for name, family in strategies.items()}
    else:
        named = {None: ("", strategies, grid)}
    values = {name: _grid(spec, label, family, g)  # every value checked before compiling
              for name, (label, family, g) in named.items()}
    curves = {name: _curve(problem, spec, label, family, values[name])
              for name, (label, family, _) in named.items()}
    return curves if isinstance(strategies, Mapping) else curves[None]


def _grid(spec: Spectrum, label: str, family: Callable, grid: ArrayLike) -> Array:
    """``grid`` as a 1-D array once ``family`` builds a valid strategy from each value."""
    if not callable(family):
        raise TypeError(f"strategies{label} must be a callable value -> Strategy, got "
                        f"{family!r}")
    values = as_vector(f"grid{label}", grid)
    if is_traced(values):
        return values  # the strategies check themselves when the computation runs
    sigma_sq = spec.sigma_sq
    for i, value in enumerate(values):
        where = f"grid{label}[{i}] = {show(value)}"
        try:
            strategy = family(value)
            if not isinstance(strategy, Strategy):
                raise TypeError(f"strategies{label} must return a Strategy, got "
                                f"{type(strategy).__name__} for {where}")
            strategy.check(sigma_sq)
        except ValueError as err:
            raise ValueError(f"{where} is refused by strategies{label}: {err}") from None
    return values


def _curve(problem, spec, label, family, values) -> ParetoCurve:
    loss, forgot, accepted = _points(problem, spec, family, values)
    # a concrete grid was checked value by value on the host (``_grid``); a traced one here
    values, loss, forgot = ensure((values, loss, forgot), accepted,
                                  f"pareto: strategies{label} refuses a value of grid{label} "
                                  "(a check of the strategy it builds fails)")
    finite = jnp.isfinite(loss) & jnp.isfinite(forgot)
    message = not_finite(f"pareto: the point of strategies{label} at grid{label}{{index}} = "
                         "{value} (its task loss or forgetting)", problem.dtype, _RESCALE)
    values = ensure_entries(values, finite, message)  # names the grid value when concrete
    loss, forgot = ensure((loss, forgot), finite, message.replace("{index} = {value}", ""))
    return ParetoCurve(param=values, task_loss=loss, forgetting=forgot)


@eqx.filter_jit
def _points(problem, spec, family, values):
    y = contrastive_target(problem)

    def one(value):
        # the strategy's checks collected, not compiled as run-time checks (host callbacks,
        # which keep a program out of the persistent compilation cache)
        strategy, accepted = with_deferred_checks(family, value)
        anchor = anchor_of(problem, strategy)
        w, _ = strategy.solution(problem, spec, anchor, y - anchor @ problem.x_img)
        return unchecked_fit_loss(problem, w), unchecked_forgetting(problem, w), accepted

    return jax.lax.map(one, values)


# --- the oracle -------------------------------------------------------------------------------

def _lead(v: Array, ndim: int) -> Array:
    """``v`` (r,) with ``ndim − 1`` leading unit axes (explicit broadcasting)."""
    return v.reshape((1,) * (ndim - 1) + (-1,))


class Frontier(eqx.Module):
    """The oracle frontier (THEORY §7.2) in its own eigenbasis: ``kappa`` (r,) the eigenvalues of
    ``D^{-1/2}AD^{-1/2}`` (0 on directions that cost no forgetting), ``beta`` (r,)
    ``Qᵀ D^{1/2} 1``, ``basis`` (r, r) ``D^{-1/2}Q`` (maps ``h`` to filter factors), ``floor``
    and ``forgetting_scale`` (the ``Tradeoff``'s).

    Its methods take ``ν ∈ [0, ∞]`` (``ν = ∞``: the least-forgetting point)."""

    kappa: Float[Array, " r"]
    beta: Float[Array, " r"]
    basis: Float[Array, "r r"]
    floor: Float[Array, ""]
    forgetting_scale: Float[Array, ""]

    def _shrunk(self, nu_kappa: Float[Array, "*p r"]) -> Float[Array, "*p r"]:
        """``h_j = β_j/(1 + 2νκ_j)`` from the products ``νκ_j`` (``β_j`` where ``κ_j = 0``)."""
        kappa = _lead(self.kappa, nu_kappa.ndim)
        costly = kappa > 0
        shrink = jnp.where(costly, 1 / (1 + 2 * jnp.where(costly, nu_kappa, 0.0)), 1.0)
        return _lead(self.beta, nu_kappa.ndim) * shrink

    def _h(self, nu: Float[ArrayLike, "*p"]) -> Float[Array, "*p r"]:
        nu = jnp.asarray(nu)
        return self._shrunk(nu[..., None] * _lead(self.kappa, nu.ndim + 1))

    def _task_loss_of(self, h: Float[Array, "*p r"]) -> Float[Array, "*p"]:
        return self.floor + 0.5 * jnp.sum((_lead(self.beta, h.ndim) - h) ** 2, axis=-1)

    def _forgetting_of(self, h: Float[Array, "*p r"]) -> Float[Array, "*p"]:
        return jnp.sum(_lead(self.kappa, h.ndim) * h**2, axis=-1)

    def task_loss(self, nu: Float[ArrayLike, "*p"]) -> Float[Array, "*p"]:
        """The oracle's task loss at ``ν`` (``ν = 0``: Direct FT; ``ν = ∞``: least forgetting)."""
        return self._task_loss_of(self._h(nu))

    def forgetting(self, nu: Float[ArrayLike, "*p"]) -> Float[Array, "*p"]:
        """The oracle's (least) forgetting at ``ν``."""
        return self._forgetting_of(self._h(nu))

    def filters(self, nu: Float[ArrayLike, "*p"]) -> Float[Array, "*p r"]:
        """The oracle's filter factors at ``ν``, ordered like ``spectrum(problem).s``."""
        return self._h(nu) @ self.basis.T

    @property
    def most_task_loss(self) -> Float[Array, ""]:
        """Task loss of the least-forgetting oracle point (forgetting 0, ``ν = ∞``): ``W⁰``'s
        unless some task direction costs no forgetting."""
        return self.task_loss(jnp.inf)

    def nu_at(self, task_loss: Float[ArrayLike, " p"]) -> Float[Array, " p"]:
        """``ν`` at which the oracle's task loss is ``task_loss`` (bisection in log ν; 0 at or
        below ``floor``, ``inf`` at or above ``most_task_loss``). Unchecked: see
        ``oracle_forgetting``."""
        return _level(self, jnp.atleast_1d(jnp.asarray(task_loss, self.kappa.dtype)))[0]


@eqx.filter_jit
def _level(front: Frontier, task_loss: Float[Array, " p"]
           ) -> tuple[Float[Array, " p"], Float[Array, "p r"]]:
    """``ν`` and the oracle's ``h`` (p, r) at each target task loss. The bisection runs in
    ``μ = log(ν κ_max)`` and ``h`` comes from the products ``ν κ_j = e^μ κ_j/κ_max``, so neither
    overflows even where ``ν`` itself does not fit the dtype."""
    top = jnp.max(front.kappa)
    top = jnp.where(top > 0, top, 1.0)
    unit = front.kappa / top

    def loss_at(mu):
        return front._task_loss_of(front._shrunk(jnp.exp(mu)[:, None] * unit[None, :]))

    def bisect(_, bounds):
        low, high = bounds
        mid = 0.5 * (low + high)
        below = loss_at(mid) < task_loss
        return jnp.where(below, mid, low), jnp.where(below, high, mid)

    low, high = jax.lax.fori_loop(0, 200, bisect, (jnp.full_like(task_loss, -80.0),
                                                   jnp.full_like(task_loss, 80.0)))
    at_end = task_loss >= front.most_task_loss
    at_floor = task_loss <= front.floor
    scaled = jnp.where(at_floor, 0.0, jnp.where(at_end, jnp.inf, jnp.exp(0.5 * (low + high))))
    return scaled / top, front._shrunk(scaled[:, None] * unit[None, :])


def frontier(problem: LinearProblem, *, spectrum: Spectrum | None = None) -> Frontier:
    """Returns the oracle ``Frontier`` (THEORY §7.2) of a problem with pretraining features
    (one eigendecomposition). A frontier that overflows the problem's dtype is refused, naming
    what overflowed."""
    front = _frontier(tradeoff(problem, spectrum=spectrum))
    return ensure_each(front, [
        (all_finite(front.kappa) & all_finite(front.beta) & all_finite(front.basis),
         not_finite("frontier: the whitened forgetting form D^{-1/2} A D^{-1/2}", problem.dtype,
                    _RESCALE))])


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
    return Frontier(kappa=kappa, beta=q.T @ root, basis=inv_root[:, None] * q, floor=t.floor,
                    forgetting_scale=t.forgetting_scale)


def _as_frontier(problem: LinearProblem | Frontier,
                 spectrum: Spectrum | None = None) -> Frontier:
    """``problem`` if it is a ``Frontier``, else ``frontier(problem)``."""
    if isinstance(problem, Frontier):
        if spectrum is not None:
            raise ValueError("spectrum is only used with a LinearProblem, not with a Frontier")
        return problem
    if not isinstance(problem, LinearProblem):
        raise TypeError(f"problem must be a LinearProblem or a Frontier, got "
                        f"{type(problem).__name__}")
    return frontier(problem, spectrum=spectrum)


def oracle_forgetting(problem: LinearProblem | Frontier,
                      task_loss: Float[ArrayLike, " p"]) -> Float[Array, " p"]:
    """Returns the least forgetting any per-direction filter reaches at a task loss
    ≤ ``task_loss`` (shape (p,), or a scalar for a scalar): THEORY §7.2. Refuses a target
    that is not finite or lies below the unregularized optimum (Direct FT's task loss,
    ``frontier.floor``), naming the first such entry and its value; 0 at or above
    ``most_task_loss``. Pass a ``Frontier`` to reuse one."""
    front = _as_frontier(problem)
    target = as_real_array("task_loss", task_loss)
    floor = front.floor
    tolerance = 1e-9 * jnp.maximum(jnp.maximum(jnp.abs(floor), front.most_task_loss), 1e-300)
    optimum = show(floor) if is_traced(floor) else f"{float(floor):.6g}"
    target = ensure_entries(target, jnp.isfinite(target) & (target >= floor - tolerance),
                            "task_loss{index} must be finite and at least the unregularized "
                            f"optimum (Direct FT's task loss {optimum}), got {{value}}")
    _, h = _level(front, jnp.ravel(target).astype(front.kappa.dtype))
    out = front._forgetting_of(h).reshape(target.shape)
    return ensure(out, all_finite(out), not_finite(
        "oracle_forgetting: the oracle's forgetting", out.dtype, _RESCALE))


def _levels(n_points: int) -> np.ndarray:
    """``n_points`` levels in [0, 1], both ends included: the interior half geometric (from
    1e-6), half even."""
    inner = n_points - 2
    even = (inner + 1) // 2
    return np.sort(np.concatenate([[0.0, 1.0], np.logspace(-6, 0, inner - even + 1)[:-1],
                                   np.linspace(0, 1, even + 2)[1:-1]]))


def oracle_frontier(problem: LinearProblem | Frontier, n_points: int = 50, *,
                    spectrum: Spectrum | None = None) -> ParetoCurve:
    """Returns the oracle frontier (THEORY §7.2) over all per-direction filter factors as a
    ``ParetoCurve`` of ``n_points`` (an int ≥ 2) task losses spanning its whole range: the
    first at Direct FT's (``floor``, ``ν = 0``), the last at the least-forgetting point's
    (``Frontier.most_task_loss``, forgetting 0, ``ν = ∞``), the ones between spaced half
    geometrically and half evenly in the excess over the floor. ``param`` holds each point's
    ``ν``: its last entry is ``inf`` (the ν → ∞ end itself, not an overflow); task loss and
    forgetting are finite or refused."""
    n_points = as_int("n_points", n_points, minimum=2)
    front = _as_frontier(problem, spectrum)
    levels = jnp.asarray(_levels(n_points), front.kappa.dtype)
    most = front.most_task_loss
    targets = jnp.where(levels >= 1, most, front.floor + levels * (most - front.floor))
    nu, h = _level(front, targets)
    loss, forgot = front._task_loss_of(h), front._forgetting_of(h)
    return ensure_each(ParetoCurve(param=nu, task_loss=loss, forgetting=forgot), [
        (all_finite(loss) & all_finite(forgot), not_finite(
            "oracle_frontier: a task loss or forgetting", loss.dtype, _RESCALE))])


#: The ratio resolves task losses down to this many eps of ``most_task_loss`` (about the
#: round-off of a task loss computed there), and forgettings down to the square of this many
#: eps times ``forgetting_scale`` (measured: filters whose forgetting is 0 in exact arithmetic
#: come out below 16·eps²·forgetting_scale).
_RESOLUTION = 2.0**10
_FORGETTING_ROUND_OFF = 64.0


def frontier_ratio(problem: LinearProblem | Frontier,
                   curve: ParetoCurve) -> Float[Array, " G"]:
    """Returns each point's forgetting over the oracle's at the same task loss, shape (G,),
    finite (THEORY §7.2).

    ≥ 1 for every per-direction filter; below 1 only for strategies that leave the task
    subspace (``ReplaySD``). Task losses below the floor (round-off) count as the floor.

    At the least-forgetting end the oracle forgets nothing and a task loss is only known to
    round-off, so forgettings are resolved down to ``F_res``, the larger of the oracle's
    forgetting at task loss ``most_task_loss − δ`` (``δ = 2¹⁰·eps·most_task_loss``) and the
    round-off of a forgetting, ``(64·eps)²·forgetting_scale``: the ratio is
    ``max(F, F_res)/max(F_oracle, F_res)``. A point that forgets no more than ``F_res`` where
    the oracle forgets nothing (``W⁰``, ``StoppedGD`` at 0 steps, ``L2SP(1e300)``, any filter
    when ``X_pre`` misses the task directions) has ratio 1; one that forgets more has
    ``F/F_res``, large and finite. A ratio that is still not finite (``F_res = 0``: nothing to
    resolve against) is refused, naming the point. ``curve`` must hold finite task losses and
    forgettings ≥ 0 of equal shape (G,).
    """
    front = _as_frontier(problem)
    check_instance("curve", curve, ParetoCurve)
    loss = as_vector("curve.task_loss", curve.task_loss)
    forgot = as_vector("curve.forgetting", curve.forgetting)
    if loss.shape != forgot.shape:
        raise ValueError(f"curve.task_loss has shape {loss.shape} but curve.forgetting has "
                         f"{forgot.shape}: a ParetoCurve holds one of each per point")
    loss = ensure_entries(loss, jnp.isfinite(loss),
                          "curve.task_loss{index} must be finite, got {value}")
    forgot = ensure_entries(forgot, jnp.isfinite(forgot) & (forgot >= 0),
                            "curve.forgetting{index} must be finite and >= 0, got {value}")
    dtype = front.kappa.dtype
    ratio = _ratio(front, loss.astype(dtype), forgot.astype(dtype))
    return ensure_entries(ratio, jnp.isfinite(ratio), (
        "frontier_ratio: curve point {index} forgets where the oracle forgets nothing and there "
        "is no forgetting scale to resolve it against, so its ratio is {value}; compare "
        "curve.forgetting directly"))


@eqx.filter_jit
def _ratio(front: Frontier, loss: Float[Array, " G"], forgot: Float[Array, " G"]
           ) -> Float[Array, " G"]:
    most = front.most_task_loss
    edge = most - _RESOLUTION * jnp.finfo(loss.dtype).eps * jnp.abs(most)
    targets = jnp.maximum(jnp.concatenate([loss, edge[None]]), front.floor)
    oracle = front._forgetting_of(_level(front, targets)[1])
    round_off = (_FORGETTING_ROUND_OFF * jnp.finfo(loss.dtype).eps) ** 2 * front.forgetting_scale
    best, resolution = oracle[:-1], jnp.maximum(oracle[-1], round_off)
    ratio = jnp.maximum(forgot, resolution) / jnp.maximum(best, resolution)
    return jnp.where((forgot == 0) & (best == 0), 1.0, ratio)
