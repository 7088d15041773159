"""Teachers designed by gradient through the exact dynamics (THEORY §7).

A ``Family`` maps unconstrained parameters (a dict of arrays) to a strategy: the Beta(a, b) or
a free-form kernel of the WMA teacher, the EMA momentum (constant or warmed up), static SD's λ,
or one λ per task direction. Its filter factors come from the exact spectral recursion
(``TeacherSD``), so forgetting and task loss (``linear.pareto.Tradeoff``) are differentiable in
every parameter; ``design`` minimizes forgetting at a target task loss with optax and reports
how far the result sits from the oracle frontier.
"""

from __future__ import annotations

from typing import NamedTuple

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import optax
from jaxtyping import Array, Float, PyTree

from .._validation import check_instance
from ..linear.closed_forms import masked_filter
from ..linear.pareto import (
    Frontier,
    Tradeoff,
    frontier as compute_frontier,
    oracle_forgetting,
    tradeoff,
)
from ..linear.problem import LinearProblem
from ..linear.spectrum import Spectrum, spectrum as compute_spectrum
from ..linear.strategies import DirectionalSD, StaticSD, Strategy
from .schedules import BetaKernel, GridKernel, ema_teacher, kernel_teacher
from .spectral import TeacherSD, default_lr

Params = dict[str, Float[Array, "..."]]


class Family(eqx.Module):
    """A designable family: ``init(r)`` the starting parameters (λ last, as ``log_lam``, except
    for per-direction weights) and ``strategy(params, sigma_max_sq)`` the strategy they give."""

    def init(self, r: int) -> Params:
        raise NotImplementedError

    def strategy(self, params: Params, sigma_max_sq: Float[Array, ""]) -> Strategy:
        raise NotImplementedError

    def describe(self, params: Params) -> dict[str, float | list[float]]:
        """The parameters in their natural units (JSON-ready)."""
        return {k.removeprefix("log_"): np.exp(np.asarray(v)).tolist()
                for k, v in params.items()}


class _Teacher(Family):
    """A moving teacher over ``steps`` GD steps of the linear twins' step (``default_lr``)."""

    steps: int = eqx.field(static=True)

    def schedule(self, params: Params):
        raise NotImplementedError

    def strategy(self, params, sigma_max_sq):
        lam = jnp.exp(params["log_lam"])
        return TeacherSD(lam, self.schedule(params), steps=self.steps,
                         lr=default_lr(sigma_max_sq, lam))


class StaticFamily(Family):
    """Static SD (teacher frozen at ``W⁰``), its λ alone."""

    def init(self, r):
        return {"log_lam": jnp.zeros(())}

    def strategy(self, params, sigma_max_sq):
        return StaticSD(jnp.exp(params["log_lam"]))


class BetaFamily(_Teacher):
    """The WMA teacher with a Beta(a, b) kernel; starts at TRACER's Beta(0.5, 0.5)."""

    def init(self, r):
        half = jnp.log(jnp.asarray(0.5))
        return {"log_a": half, "log_b": half, "log_lam": jnp.zeros(())}

    def schedule(self, params):
        return kernel_teacher(self.steps, BetaKernel(jnp.exp(params["log_a"]),
                                                     jnp.exp(params["log_b"])))


class GridFamily(_Teacher):
    """The WMA teacher with a free-form positive kernel (``GridKernel`` on ``knots`` knots);
    starts at the arcsine kernel clipped near the ends."""

    knots: int = eqx.field(static=True, default=16)

    def init(self, r):
        tau = jnp.clip(jnp.linspace(0.0, 1.0, self.knots), 0.02, 0.98)
        return {"log_values": -0.5 * jnp.log(tau * (1 - tau)), "log_lam": jnp.zeros(())}

    def schedule(self, params):
        return kernel_teacher(self.steps, GridKernel(params["log_values"]))

    def describe(self, params):
        values = np.asarray(params["log_values"])
        return {"log_values": (values - values.max()).tolist(),
                "lam": float(np.exp(params["log_lam"]))}


class EMAFamily(_Teacher):
    """The EMA teacher, a constant momentum ``m = sigmoid(logit_m)``; starts at 0.99."""

    def init(self, r):
        return {"logit_m": jnp.log(jnp.asarray(99.0)), "log_lam": jnp.zeros(())}

    def schedule(self, params):
        return ema_teacher(jax.nn.sigmoid(params["logit_m"]))

    def describe(self, params):
        return {"momentum": float(jax.nn.sigmoid(params["logit_m"])),
                "lam": float(np.exp(params["log_lam"]))}


class ScheduledEMAFamily(_Teacher):
    """The EMA teacher with its momentum warmed up linearly from ``m₀`` to ``m`` over
    ``warmup_steps`` updates (the official code's schedule); starts at 0.9 → 0.99."""

    warmup_steps: int = eqx.field(static=True, default=100)

    def init(self, r):
        return {"logit_m0": jnp.log(jnp.asarray(9.0)), "logit_m": jnp.log(jnp.asarray(99.0)),
                "log_lam": jnp.zeros(())}

    def schedule(self, params):
        return ema_teacher(jax.nn.sigmoid(params["logit_m"]),
                           warmup_from=jax.nn.sigmoid(params["logit_m0"]),
                           warmup_steps=self.warmup_steps)

    def describe(self, params):
        return {"momentum_from": float(jax.nn.sigmoid(params["logit_m0"])),
                "momentum": float(jax.nn.sigmoid(params["logit_m"])),
                "warmup_steps": self.warmup_steps, "lam": float(np.exp(params["log_lam"]))}


class DirectionalFamily(Family):
    """Static SD with one λ per task direction (``DirectionalSD``); starts at λ = 1 everywhere.
    Its λ is the whole parameter vector: ``design`` calibrates a common offset."""

    def init(self, r):
        return {"log_lams": jnp.zeros((r,))}

    def strategy(self, params, sigma_max_sq):
        return DirectionalSD(jnp.exp(params["log_lams"]))


def metrics(family: Family, params: Params, spec: Spectrum,
            tradeoff_: Tradeoff) -> tuple[Float[Array, ""], Float[Array, ""]]:
    """``(task loss, forgetting)`` of the family's strategy at ``params``: differentiable."""
    f = masked_filter(spec, family.strategy(params, spec.sigma_max_sq))
    return tradeoff_.task_loss(f), tradeoff_.forgetting(f)


class Design(NamedTuple):
    """A designed teacher: its ``params``, ``task_loss``, ``forgetting``, the oracle's
    forgetting at that task loss (``oracle``), their ratio, and the optimizer's ``history``
    (task loss and forgetting per step, shape (steps, 2))."""

    params: PyTree
    task_loss: float
    forgetting: float
    oracle: float
    ratio: float
    history: np.ndarray


def _shift_lam(params: Params, shift: Array) -> Params:
    key = "log_lam" if "log_lam" in params else "log_lams"
    return {**params, key: params[key] + shift}


def calibrate(family: Family, params: Params, target: float, spec: Spectrum,
              tradeoff_: Tradeoff, iterations: int = 60) -> Params:
    """``params`` with λ (log-shifted) so that the task loss equals ``target`` (bisection in
    log λ over ±30; more λ, more task loss)."""
    loss = eqx.filter_jit(lambda p: metrics(family, p, spec, tradeoff_)[0])
    low, high = -30.0, 30.0
    for _ in range(iterations):
        mid = 0.5 * (low + high)
        if float(loss(_shift_lam(params, jnp.asarray(mid)))) < target:
            low = mid
        else:
            high = mid
    return _shift_lam(params, jnp.asarray(0.5 * (low + high)))


def design(problem: LinearProblem, family: Family, target_task_loss: float, *,
           steps: int = 300, learning_rate: float = 0.05, penalty: float = 1e3,
           spectrum: Spectrum | None = None, frontier: Frontier | None = None) -> Design:
    """Minimize forgetting at ``target_task_loss`` over the family's parameters.

    Starts from ``family.init`` with λ calibrated to the target, then ``steps`` Adam steps on
    ``log forgetting + penalty·max(0, (task loss − target)/(target − floor))²``; returns the
    best point whose task loss is within 0.1% of the target's excess over the floor (else the
    last), with the oracle's forgetting at its task loss. Refuses a target below the
    unregularized optimum or at/above the task loss of ``W⁰``.
    """
    check_instance("problem", problem, LinearProblem)
    check_instance("family", family, Family)
    spec = compute_spectrum(problem) if spectrum is None else spectrum.check_matches(problem)
    trade = tradeoff(problem, spectrum=spec)
    front = compute_frontier(problem, spectrum=spec) if frontier is None else frontier
    floor, most = float(trade.floor), float(trade.most_task_loss)
    target = float(target_task_loss)
    if not np.isfinite(target) or not floor < target < most:
        raise ValueError(f"target_task_loss must lie strictly between the unregularized optimum "
                         f"(Direct FT's task loss {floor:.6g}) and the task loss of W⁰ "
                         f"({most:.6g}); got {target!r}")
    scale = target - floor
    params = calibrate(family, family.init(int(spec.s.shape[0])), target, spec, trade)

    def objective(p):
        loss, forgot = metrics(family, p, spec, trade)
        excess = jnp.maximum(loss - target, 0.0) / scale
        return jnp.log(forgot) + penalty * excess**2, (loss, forgot)

    optimizer = optax.adam(learning_rate)

    @eqx.filter_jit
    def step(p, state):
        (_, aux), grads = jax.value_and_grad(objective, has_aux=True)(p)
        updates, state = optimizer.update(grads, state, p)
        return optax.apply_updates(p, updates), state, aux

    state = optimizer.init(params)
    best, best_forgot, history = params, np.inf, []
    for _ in range(steps):
        new, state, (loss, forgot) = step(params, state)
        loss, forgot = float(loss), float(forgot)  # metrics of `params`, before the update
        history.append((loss, forgot))
        if loss <= target + 1e-3 * scale and forgot < best_forgot:
            best, best_forgot = params, forgot
        params = new
    if not np.isfinite(best_forgot):
        best = params
    loss, forgot = (float(v) for v in eqx.filter_jit(metrics)(family, best, spec, trade))
    oracle = float(oracle_forgetting(front, max(loss, floor)))
    return Design(params=jax.tree.map(np.asarray, best), task_loss=loss, forgetting=forgot,
                  oracle=oracle, ratio=forgot / oracle if oracle > 0 else np.inf,
                  history=np.asarray(history))
