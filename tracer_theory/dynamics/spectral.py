"""Exact student–teacher dynamics in the eigenbasis of ``X_I X_Iᵀ`` (THEORY §4).

In direction i, with ``s = lr·σ_i²``, the student and teacher coefficients follow

    a_{t+1} = a_t − s[(a_t − 1) + λ(a_t − b_t)],     b_{t+1} = (1 − ω_{t+1}) b_t + ω_{t+1} a_{t+1}

from ``a_0 = b_0 = 0``, and ``W_t = W⁰ + Σ_i a_t^{(i)} (W_FT − W⁰) u_i u_iᵀ`` (likewise ``T_t``
with ``b``). The fixed-point iteration replaces the student step by its optimum,
``a_{k+1} = (1 + λ b_k)/(1 + λ)``. Both are scans over O(#directions) scalars, nested so that the
summaries are computed only at the recorded steps and reverse mode keeps O(√steps) states.

The scan carries the deviations ``e = 1 − a`` and ``f = 1 − b`` (from 1), the same recursion
written so that the geometric tail of a collapsing gap keeps full relative precision instead of
cancelling in ``a − b`` near 1.
"""

from __future__ import annotations

import math
from typing import Literal

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, ArrayLike, Bool, Float, Int

from .._validation import (
    all_finite,
    as_real_array,
    as_scalar,
    check_instance,
    ensure,
    ensure_each,
    is_traced,
    not_finite,
    show,
)
from ..linear.closed_forms import direct_ft_columns, fit_floor, from_filter
from ..linear.problem import LinearProblem, contrastive_target
from ..linear.spectrum import Spectrum, spectrum as compute_spectrum
from ..linear.strategies import Strategy
from .schedules import Schedule, static_count

Rule = Literal["gd", "fixed_point"]

#: Steps per iteration of the step loops (``lax.scan(unroll=...)``): fewer loop iterations.
_UNROLL = 2


class TaskGeometry(eqx.Module):
    """What the trajectory summaries need from a problem, computed once from its spectrum.

    Fields: ``sigma_sq`` (r,) σ_i² (0 where masked); ``weight`` (r,) ``‖(W_FT − W⁰)u_i‖²``;
    ``w0_norm`` ``‖W⁰‖_F``; ``loss_floor`` ``½‖W_FT X_I − Y‖²``, the part of the loss no encoder
    can fit.
    """

    sigma_sq: Float[Array, " r"]
    weight: Float[Array, " r"]
    w0_norm: Float[Array, ""]
    loss_floor: Float[Array, ""]


def task_geometry(problem: LinearProblem, spec: Spectrum) -> TaskGeometry:
    """The ``TaskGeometry`` of ``problem`` from its spectrum."""
    return TaskGeometry(sigma_sq=spec.sigma_sq,
                        weight=jnp.sum(direct_ft_columns(problem, spec) ** 2, axis=0),
                        w0_norm=jnp.linalg.norm(problem.w0), loss_floor=fit_floor(problem, spec))


class Summary(eqx.Module):
    """Per-step scalars of a student–teacher run; every field has shape (R,) (R recorded steps).
    The summaries of THEORY §4.3.

    ``gap`` ``‖(W_t − T_t)X_I‖_F``; ``bias`` the task-subspace bias
    ``‖(W_t − W_FT)P‖/‖(W⁰ − W_FT)P‖`` (1 at W⁰, 0 at Direct FT, λ/(1+λ) for converged static
    SD); ``distance`` ``‖W_t − W⁰‖/‖W⁰‖``; ``loss`` ``½‖W_t X_I − Y‖²``.
    """

    gap: Float[Array, " R"]
    bias: Float[Array, " R"]
    distance: Float[Array, " R"]
    loss: Float[Array, " R"]


def summarize(geometry: TaskGeometry, e: Float[Array, " r"], f: Float[Array, " r"]) -> Summary:
    """Summary scalars (shape ()) of the state with deviations ``e = 1 − a``, ``f = 1 − b``."""
    g, c = geometry.sigma_sq, geometry.weight
    total = jnp.sum(c)
    safe_total = jnp.where(total > 0, total, 1.0)
    return Summary(gap=jnp.sqrt(jnp.sum(g * (e - f) ** 2 * c)),
                   bias=jnp.where(total > 0, jnp.sqrt(jnp.sum(e**2 * c) / safe_total), 0.0),
                   distance=jnp.sqrt(jnp.sum((1 - e) ** 2 * c)) / geometry.w0_norm,
                   loss=geometry.loss_floor + 0.5 * jnp.sum(e**2 * g * c))


def coefficient_step(e: Array, f: Array, s: Array, lam: Array, omega: Array,
                     rule: Rule) -> tuple[Array, Array]:
    """One step on the deviations ``e = 1 − a``, ``f = 1 − b``: the GD recursion
    (``rule="gd"``: ``e' = e − s(e + λ(e − f))``) or the fixed-point one (``e' = λf/(1 + λ)``),
    then the teacher ``f' = (1 − ω) f + ω e'``."""
    if rule == "gd":
        e_next = e - s * (e + lam * (e - f))
    else:
        e_next = lam * f / (1 + lam)
    return e_next, (1 - omega) * f + omega * e_next


def checkpointed_scan(body, carry, xs, *, unroll: int = 1):
    """``lax.scan(body, carry, xs)``, same results, with reverse-mode memory O(√n) carries.

    The n iterations run as an outer scan over ``⌊n/b⌋`` blocks of ``b = ⌊√n⌋`` iterations, each
    block a ``jax.checkpoint``-ed inner scan, then a plain scan over the ``n mod b < b`` left over.
    Reverse mode stores the carry at the block boundaries and recomputes one block at a time (one
    more forward pass): memory O((n/b + b)·|carry|) besides the stacked outputs. ``xs`` is a
    pytree of arrays with leading length n.
    """
    n = jax.tree.leaves(xs)[0].shape[0]
    b = math.isqrt(n)
    if b < 2:
        return jax.lax.scan(body, carry, xs, unroll=unroll)
    nb = n // b
    head = jax.tree.map(lambda x: x[:nb * b].reshape(nb, b, *x.shape[1:]), xs)
    block = jax.checkpoint(lambda c, x: jax.lax.scan(body, c, x, unroll=unroll), prevent_cse=False)
    carry, ys = jax.lax.scan(block, carry, head)
    ys = jax.tree.map(lambda y: y.reshape(nb * b, *y.shape[2:]), ys)
    if n == nb * b:
        return carry, ys
    carry, tail = jax.lax.scan(body, carry, jax.tree.map(lambda x: x[nb * b:], xs), unroll=unroll)
    return carry, jax.tree.map(lambda y, t: jnp.concatenate([y, t]), ys, tail)


def coefficient_run(s: Float[Array, " r"], lam: Float[ArrayLike, ""], omegas: Float[Array, " T"],
                    *, rule: Rule = "gd", e: Float[Array, " r"] | None = None,
                    f: Float[Array, " r"] | None = None,
                    active: Bool[Array, " T"] | None = None,
                    ) -> tuple[Float[Array, " r"], Float[Array, " r"]]:
    """The deviations ``(e, f)`` (r,) after the steps ``omegas`` (T,), from ``e = f = 1``
    (``a = b = 0``) unless given. Where ``active`` (T,) is False the state is frozen.

    A ``checkpointed_scan``: reverse-mode memory O(√T·r), not O(T·r).
    """
    e = jnp.ones_like(s) if e is None else e
    f = jnp.ones_like(s) if f is None else f

    def step(carry, xs):
        omega, on = xs
        e_next, f_next = coefficient_step(*carry, s, lam, omega, rule)
        if on is None:
            return (e_next, f_next), None
        return (jnp.where(on, e_next, carry[0]), jnp.where(on, f_next, carry[1])), None

    (e, f), _ = checkpointed_scan(step, (e, f), (omegas, active), unroll=_UNROLL)
    return e, f


def coefficient_scan(s: Float[Array, " r"], lam: Float[ArrayLike, ""],
                     omegas: Float[Array, " steps"], summary_fn, *, rule: Rule = "gd",
                     active: Bool[Array, " steps"] | None = None, record_every: int = 1):
    """Run the recursion over ``omegas`` (ω_1..ω_T) from ``a = b = 0`` (``e = f = 1``).

    ``summary_fn(e, f)`` is evaluated at step 0 and after every ``record_every`` steps (which must
    divide T) and stacked: length ``T/record_every + 1``. Where ``active`` is False the state is
    frozen (a run shorter than the scan). Returns ``(e_T, f_T, stacked summaries)``: the final
    deviations and the summaries. A ``checkpointed_scan`` over the records, each a
    ``coefficient_run`` (no summary between records): reverse-mode memory O(√T·r) plus the
    summaries, not O(T·r).
    """
    steps = omegas.shape[0]
    if record_every < 1 or steps % record_every:
        raise ValueError(f"record_every must be a positive int dividing {steps}, got "
                         f"{record_every!r}")
    chunks = jax.tree.map(lambda x: x.reshape(steps // record_every, record_every),
                          (omegas, active))

    def record(carry, chunk):
        carry = coefficient_run(s, lam, chunk[0], rule=rule, e=carry[0], f=carry[1],
                                active=chunk[1])
        return carry, summary_fn(*carry)

    ones = jnp.ones_like(s)
    (e, f), ys = checkpointed_scan(record, (ones, ones), chunks)
    first = jax.tree.map(lambda x: x[None], summary_fn(ones, ones))
    return e, f, jax.tree.map(lambda x0, xs: jnp.concatenate([x0, xs]), first, ys)


class DynamicsResult(eqx.Module):
    """A student–teacher run: summaries at ``steps`` (R,) and the final matrices (k, d_I):
    ``summary`` a ``Summary``, ``student`` ``W_T`` and ``teacher`` ``T_T`` (THEORY §4.1, §4.3)."""

    steps: Int[Array, " R"]
    summary: Summary
    student: Float[Array, "k d_I"]
    teacher: Float[Array, "k d_I"]


def stability_bound(sigma_max_sq: ArrayLike, lam: ArrayLike) -> Array:
    """Returns the largest stable student step: ``lr < 2/(σ_max²(1 + λ))`` (THEORY §4.1).

    ``sigma_max_sq`` finite and > 0, ``lam`` finite and ≥ 0 (scalars or arrays, broadcast
    together; the result has their shape).
    """
    sigma_max_sq = as_real_array("sigma_max_sq", sigma_max_sq)
    lam = as_real_array("lam", lam)
    sigma_max_sq = ensure(sigma_max_sq, jnp.isfinite(sigma_max_sq) & (sigma_max_sq > 0),
                          f"sigma_max_sq must be finite > 0, got {show(sigma_max_sq)}")
    lam = ensure(lam, jnp.isfinite(lam) & (lam >= 0), f"lam must be finite >= 0, got {show(lam)}")
    bound = unchecked_stability_bound(sigma_max_sq, lam)
    return ensure(bound, jnp.isfinite(bound) & (bound > 0),
                  f"stability_bound: σ_max²(1 + λ) overflows {bound.dtype.name}, so the bound "
                  "2/(σ_max²(1 + λ)) underflows to 0; rescale sigma_max_sq or lam")


def unchecked_stability_bound(sigma_max_sq: ArrayLike, lam: ArrayLike) -> Array:
    """``stability_bound`` without the argument checks (for values already validated)."""
    return 2.0 / (jnp.asarray(sigma_max_sq) * (1 + jnp.asarray(lam)))


def default_lr(sigma_max_sq: ArrayLike, lam: ArrayLike) -> Array:
    """The student step of the deep strategies' linear twins and of the designed teachers:
    half the stability bound, ``1/(σ_max²(1 + λ))`` (unchecked)."""
    return 0.5 * unchecked_stability_bound(sigma_max_sq, lam)


def schedule_weights(schedule: Schedule, steps: int, dtype: object) -> Float[Array, " steps"]:
    """``ω_1..ω_steps`` of ``schedule`` in ``dtype``, checked: real, finite and in ``[0, 1]``
    (a custom ``Schedule`` may return anything). A run-time check when traced."""
    omegas = jnp.asarray(schedule.weights(steps))
    name = type(schedule).__name__
    if omegas.shape != (steps,):
        raise ValueError(f"schedule.weights({steps}) of {name} must have shape ({steps},), got "
                         f"{omegas.shape}")
    if not (jnp.issubdtype(omegas.dtype, jnp.floating)
            or jnp.issubdtype(omegas.dtype, jnp.integer)):
        raise ValueError(f"schedule {name} must give real weights ω_t, got dtype "
                         f"{omegas.dtype}")
    omegas = omegas.astype(dtype)
    ok = _in_unit_interval(omegas)
    where = ""
    if not is_traced(omegas):
        host = np.asarray(ok)
        if not host.all():
            t = int(np.argmin(host))
            where = f": ω_{t + 1} = {float(omegas[t])!r}"
    return ensure(omegas, ok, f"schedule {name} must give teacher weights ω_t in [0, 1]{where}")


@jax.jit
def _in_unit_interval(omegas: Array) -> Array:
    """``0 ≤ ω ≤ 1`` elementwise, False for NaN (one dispatch for the checks)."""
    return (omegas >= 0) & (omegas <= 1)


def check_run(problem: LinearProblem, schedule: Schedule, lam: ArrayLike, lr: ArrayLike | None,
              steps: int, record_every: int, *,
              rule: Rule = "gd") -> tuple[Array, Array | None, int, int]:
    """Validate the shared arguments of the dynamics solvers; returns ``(lam, lr, steps,
    record_every)``. ``lr`` is required for ``rule="gd"`` and unused (``None``) otherwise."""
    check_instance("problem", problem, LinearProblem)
    check_instance("schedule", schedule, Schedule)
    lam = as_scalar("lam", lam, minimum=0.0)
    if rule == "gd":
        lr = as_scalar("lr", lr, minimum=0.0, strict=True)
    steps = static_count("steps", steps, 1)
    record_every = static_count("record_every", record_every, 1)
    if steps % record_every:
        raise ValueError(f"record_every must be a positive int dividing steps = {steps}, "
                         f"got {record_every!r}")
    return lam, lr, steps, record_every


def check_stable(value: Array, lr: Array, lam: Array, sigma_sq: Array) -> Array:
    """``value`` after checking ``lr·σ_max²·(1 + λ) < 2``."""
    ok, bound = _stability(lr, lam, sigma_sq)
    return ensure(value, ok, f"lr must be below the stability bound 2/(σ_max²(1+λ)) = "
                             f"{show(bound)} for this problem and λ, got lr = {show(lr)}")


@jax.jit
def _stability(lr: Array, lam: Array, sigma_sq: Array) -> tuple[Array, Array]:
    """``(lr < bound, bound)`` with the stability bound of ``σ_max² = max sigma_sq``."""
    bound = unchecked_stability_bound(jnp.max(sigma_sq), lam)
    return lr < bound, bound


def checked_result(run: tuple[DynamicsResult, Array], where: str,
                   problem: LinearProblem) -> DynamicsResult:
    """The result of ``run = (result, target_finite)`` if the target ``Y``, the matrices and the
    summaries are finite; else an error naming what overflowed (a run-time check when traced)."""
    result, target_finite = run
    dtype, hint = problem.dtype, "rescale the problem's arrays (x_img, x_txt, w0, w_txt)"
    parts = [("the final student W", result.student), ("the final teacher T", result.teacher)]
    parts += [(f"summary.{name}", getattr(result.summary, name))
              for name in ("gap", "bias", "distance", "loss")]
    messages = [not_finite(f"{where}: the contrastive target Y = W_T⁰ X_T C", dtype,
                           "rescale x_txt or w_txt")]
    messages += [not_finite(f"{where}: {what}", dtype, hint) for what, _ in parts]
    oks = _finite_each([value for _, value in parts])  # one dispatch for the reductions
    return ensure_each(result, list(zip([target_finite, *oks], messages, strict=True)))


@jax.jit
def _finite_each(values: list[Array]) -> list[Array]:
    """``all_finite(v)`` for each of ``values``."""
    return [all_finite(v) for v in values]


@eqx.filter_jit
def _spectral(problem, spec, lam, lr, omegas, record_every: int, rule: Rule):
    geometry = task_geometry(problem, spec)
    s = (lr if lr is not None else 1.0) * geometry.sigma_sq
    e, f, summary = coefficient_scan(s, lam, omegas, lambda e, f: summarize(geometry, e, f),
                                     rule=rule, record_every=record_every)
    mask = spec.mask.astype(spec.s.dtype)
    steps = jnp.arange(omegas.shape[0] + 1)[::record_every]
    result = DynamicsResult(steps=steps, summary=summary,
                            student=from_filter(problem, spec, (1 - e) * mask, problem.w0),
                            teacher=from_filter(problem, spec, (1 - f) * mask, problem.w0))
    return result, all_finite(contrastive_target(problem))


def spectral_dynamics(problem: LinearProblem, lam: ArrayLike, schedule: Schedule, *, steps: int,
                      lr: ArrayLike, record_every: int = 1,
                      spectrum: Spectrum | None = None) -> DynamicsResult:
    """The coupled student–teacher GD dynamics solved exactly per direction (THEORY §4.3).

    ``steps`` student steps of size ``lr`` with self-distillation weight ``lam`` toward a
    teacher driven by ``schedule``. Summaries at steps ``0, record_every, …, steps``.
    O(steps · r) work, r = min(d_I, n); reverse mode (``jax.grad``) keeps O(√steps · r) states.
    Returns a ``DynamicsResult``: summaries (R,) for R = steps/record_every + 1 records, final
    student and teacher (k, d_I). ``spectrum``, if given, must be ``tt.spectrum(problem)``;
    weights ω_t outside ``[0, 1]`` and results that overflow are refused.
    """
    lam, lr, steps, record_every = check_run(problem, schedule, lam, lr, steps, record_every)
    spec = compute_spectrum(problem) if spectrum is None else spectrum.check_matches(problem)
    lr = check_stable(lr, lr, lam, spec.sigma_sq)
    omegas = schedule_weights(schedule, steps, problem.dtype)
    return checked_result(_spectral(problem, spec, lam, lr, omegas, record_every, "gd"),
                          "spectral_dynamics", problem)


def fixed_point(problem: LinearProblem, lam: ArrayLike, schedule: Schedule, *, steps: int,
                record_every: int = 1, spectrum: Spectrum | None = None) -> DynamicsResult:
    """The fixed-point iteration: the student solved to optimality at each teacher update.

    ``W_{k+1} = W⁰(I − P) + (Y X⁺ + λ T_k P)/(1 + λ)`` (static SD anchored at ``T_k``), then the
    teacher update with ``ω_{k+1}``. The coefficient ``a_k`` is the same in every direction
    (THEORY §4.5). Same arguments as ``spectral_dynamics`` without ``lr``; returns a
    ``DynamicsResult`` (summaries (R,), final matrices (k, d_I)).
    """
    lam, _, steps, record_every = check_run(problem, schedule, lam, None, steps, record_every,
                                            rule="fixed_point")
    spec = compute_spectrum(problem) if spectrum is None else spectrum.check_matches(problem)
    omegas = schedule_weights(schedule, steps, problem.dtype)
    return checked_result(_spectral(problem, spec, lam, None, omegas, record_every,
                                    "fixed_point"), "fixed_point", problem)


def two_by_two_rate(s: Float[ArrayLike, "*r"], lam: ArrayLike,
                    omega: ArrayLike) -> Float[Array, "*r"]:
    """Returns the spectral radius ``ρ(M(s))`` of the 2×2 recursion of ``(a − 1, b − 1)`` at
    constant ``ω``, per ``s``, shaped like the broadcast inputs (THEORY §4.4).

    ``M = [[1 − s(1+λ), sλ], [ω(1 − s(1+λ)), 1 − ω + ωsλ]]``; the teacher–student gap of an EMA
    teacher (ω = 1 − m) decays like ``max_i ρ(M_i)^t``. ``s`` finite, ``lam`` finite ≥ 0 and
    ``omega`` in ``[0, 1]`` (arrays broadcast together).
    """
    s, lam, omega = (as_real_array(name, value) for name, value in
                     (("s", s), ("lam", lam), ("omega", omega)))
    s = ensure(s, jnp.isfinite(s), f"s must be finite, got {show(s)}")
    lam = ensure(lam, jnp.isfinite(lam) & (lam >= 0), f"lam must be finite >= 0, got {show(lam)}")
    omega = ensure(omega, (omega >= 0) & (omega <= 1),
                   f"omega must be in [0, 1], got {show(omega)}")
    try:
        s, lam, omega = jnp.broadcast_arrays(s, lam, omega)
    except ValueError:
        raise ValueError(f"s, lam and omega must broadcast together, got shapes {s.shape}, "
                         f"{lam.shape} and {omega.shape}") from None
    p = 1 - s * (1 + lam)
    m = jnp.stack([jnp.stack([p, s * lam], -1),
                   jnp.stack([omega * p, 1 - omega + omega * s * lam], -1)], -2)
    rate = jnp.max(jnp.abs(jnp.linalg.eigvals(m)), axis=-1)
    return ensure(rate, all_finite(rate), not_finite(
        "two_by_two_rate: the spectral radius", rate.dtype, "s·(1 + λ) is too large; rescale s "
        "or lam"))


class TeacherSD(Strategy):
    """Self-distillation toward a moving teacher, ``steps`` GD steps of size ``lr`` (THEORY §4.8).

    Its filter factors are the exact spectral coefficients ``a_T^{(i)}``, so ``tt.solve`` and
    ``tt.filter_factors`` give the finite-horizon EMA-SD / WMA-SD solution without simulation.
    Differentiable in λ, ``lr`` and the schedule; reverse mode keeps O(√steps · r) states.
    ``lam`` and ``lr`` are scalars; the coefficients are those of THEORY §4.3.
    """

    lam: Float[Array, ""]
    schedule: Schedule
    lr: Float[Array, ""]
    steps: int = eqx.field(static=True)

    def __init__(self, lam: ArrayLike, schedule: Schedule, *, steps: int, lr: ArrayLike):
        check_instance("schedule", schedule, Schedule)
        steps = static_count("steps", steps)
        self.lam = as_scalar("lam", lam, minimum=0.0)
        self.lr = as_scalar("lr", lr, minimum=0.0, strict=True)
        self.schedule, self.steps = schedule, steps
        if steps:  # a custom schedule's weights fail here, not inside a solve
            schedule_weights(schedule, steps, jnp.result_type(float))

    def filter(self, sigma_sq):
        if self.steps == 0:
            return jnp.zeros_like(sigma_sq)
        omegas = schedule_weights(self.schedule, self.steps, sigma_sq.dtype)
        e, _ = coefficient_run(self.lr * sigma_sq, self.lam, omegas)
        return 1 - e

    def curvature(self, sigma_sq):
        return (1 + self.lam) * sigma_sq

    def check(self, sigma_sq):
        return check_stable(sigma_sq, self.lr, self.lam, sigma_sq)
