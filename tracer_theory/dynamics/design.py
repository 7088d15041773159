"""Teachers designed by gradient through the exact dynamics (THEORY §7).

A ``Family`` maps unconstrained parameters (a dict of arrays) to a strategy: the Beta(a, b) or
a free-form kernel of the WMA teacher, the EMA momentum (constant or warmed up), static SD's λ,
or one λ per task direction. Its filter factors come from the exact spectral recursion
(``TeacherSD``), so forgetting and task loss (``linear.pareto.Tradeoff``) are differentiable in
every parameter; ``design`` minimizes forgetting at a target task loss with optax and reports
how far the result sits from the oracle frontier.

Every argument is checked on the host and a bad one is named (``ValueError``; ``TypeError`` for
an argument of the wrong kind): counts are Python (or numpy) ints, never bools or floats;
targets, learning rates and penalties are finite real scalars.
"""

from __future__ import annotations

from typing import ClassVar, NamedTuple

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import optax
from jaxtyping import Array, Float, PyTree

from .._validation import as_scalar, check_instance, not_finite
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
from .schedules import BetaKernel, GridKernel, ema_teacher, kernel_teacher, static_count
from .spectral import TeacherSD, default_lr

Params = dict[str, Float[Array, "..."]]


class Family(eqx.Module):
    """A designable family: ``init(r)`` the starting parameters (λ last, as ``log_lam``, except
    for per-direction weights) and ``strategy(params, sigma_max_sq)`` the strategy they give;
    ``label`` names it in tables, sentences and figures. The families of THEORY §7.4."""

    label: ClassVar[str] = "designed teacher"

    def init(self, r: int) -> Params:
        raise NotImplementedError

    def strategy(self, params: Params, sigma_max_sq: Float[Array, ""]) -> Strategy:
        raise NotImplementedError

    def describe(self, params: Params) -> dict[str, float | list[float]]:
        """The parameters in their natural units (JSON-ready)."""
        return {k.removeprefix("log_"): np.exp(np.asarray(v)).tolist()
                for k, v in params.items()}


def _count(name: str, minimum: int):
    """A field converter: ``static_count(name, value, minimum)`` (an int ≥ ``minimum``)."""
    return lambda value: static_count(name, value, minimum)


class _Teacher(Family):
    """A moving teacher over ``steps`` GD steps of the linear twins' step (``default_lr``);
    ``steps`` a positive int."""

    steps: int = eqx.field(static=True, converter=_count("steps", 1))

    def schedule(self, params: Params):
        raise NotImplementedError

    def strategy(self, params, sigma_max_sq):
        lam = jnp.exp(params["log_lam"])
        return TeacherSD(lam, self.schedule(params), steps=self.steps,
                         lr=default_lr(sigma_max_sq, lam))


class StaticFamily(Family):
    """Static SD (teacher frozen at ``W⁰``), its λ alone (a scalar ``log_lam``; THEORY §7.4)."""

    label: ClassVar[str] = "λ alone"

    def init(self, r):
        return {"log_lam": jnp.zeros(())}

    def strategy(self, params, sigma_max_sq):
        return StaticSD(jnp.exp(params["log_lam"]))


class BetaFamily(_Teacher):
    """The WMA teacher with a Beta(a, b) kernel; starts at TRACER's Beta(0.5, 0.5). Parameters
    ``log_a``, ``log_b``, ``log_lam``, scalars (THEORY §7.4)."""

    label: ClassVar[str] = "Beta(a, b) kernel"

    def init(self, r):
        half = jnp.log(jnp.asarray(0.5))
        return {"log_a": half, "log_b": half, "log_lam": jnp.zeros(())}

    def schedule(self, params):
        return kernel_teacher(self.steps, BetaKernel(jnp.exp(params["log_a"]),
                                                     jnp.exp(params["log_b"])))


class GridFamily(_Teacher):
    """The WMA teacher with a free-form positive kernel (``GridKernel`` on ``knots ≥ 2``
    knots); starts at the arcsine kernel clipped near the ends. Parameters ``log_values``
    (knots,) and a scalar ``log_lam`` (THEORY §7.4)."""

    label: ClassVar[str] = "free-form kernel"

    knots: int = eqx.field(static=True, default=16, converter=_count("knots", 2))

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
    """The EMA teacher, a constant momentum ``m = sigmoid(logit_m)``; starts at 0.99. Parameters
    ``logit_m``, ``log_lam``, scalars (THEORY §7.4)."""

    label: ClassVar[str] = "EMA momentum"

    def init(self, r):
        return {"logit_m": jnp.log(jnp.asarray(99.0)), "log_lam": jnp.zeros(())}

    def schedule(self, params):
        return ema_teacher(jax.nn.sigmoid(params["logit_m"]))

    def describe(self, params):
        return {"momentum": float(jax.nn.sigmoid(params["logit_m"])),
                "lam": float(np.exp(params["log_lam"]))}


class ScheduledEMAFamily(_Teacher):
    """The EMA teacher with its momentum warmed up linearly from ``m₀`` to ``m`` over
    ``warmup_steps ≥ 1`` updates (the official code's schedule); starts at 0.9 → 0.99. (Without
    a warm-up ``m₀`` would do nothing: that is ``EMAFamily``.) Parameters ``logit_m0``,
    ``logit_m``, ``log_lam``, scalars (THEORY §7.4)."""

    label: ClassVar[str] = "warmed-up EMA"

    warmup_steps: int = eqx.field(static=True, default=100, converter=_count("warmup_steps", 1))

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
    Its λ is the whole parameter vector ``log_lams`` (r,): ``design`` calibrates a common offset
    (THEORY §7.4)."""

    label: ClassVar[str] = "per-direction λ"

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
    forgetting at that task loss (``oracle``), their ratio, the optimizer's ``history`` (task
    loss and forgetting per step, shape (steps, 2)), and whether the task loss ``reached`` the
    target (within 0.1% of its excess over the floor). The result of THEORY §7.4."""

    params: PyTree
    task_loss: float
    forgetting: float
    oracle: float
    ratio: float
    history: np.ndarray
    reached: bool = True


def _shift_lam(params: Params, shift: Array) -> Params:
    key = "log_lam" if "log_lam" in params else "log_lams"
    return {**params, key: params[key] + shift}


#: ``calibrate`` bisects the shift of log λ over ``[−_LOG_LAM_RANGE, _LOG_LAM_RANGE]``.
_LOG_LAM_RANGE = 30.0


def calibrate(family: Family, params: Params, target: float, spec: Spectrum,
              tradeoff_: Tradeoff, iterations: int = 60) -> Params:
    """``params`` with λ (log-shifted) so that the task loss equals ``target`` (bisection in
    log λ over ±30, ``iterations ≥ 1`` halvings; more λ, more task loss).

    ``params`` must have the keys and shapes of ``family.init(r)``; ``target`` a finite real
    number. A target outside what shifting λ reaches (below the family's task loss at
    ``λ·e⁻³⁰``, e.g. too few GD steps to fit the task, or above it at ``λ·e³⁰``) gives the
    nearer end of the bracket: check the task loss (``design`` reports it as ``reached``).
    """
    check_instance("family", family, Family)
    check_instance("spec", spec, Spectrum)
    check_instance("tradeoff_", tradeoff_, Tradeoff)
    target = float(as_scalar("target", target))
    iterations = static_count("iterations", iterations, 1)
    _check_params(family, params, int(spec.s.shape[0]))
    loss = eqx.filter_jit(lambda p: metrics(family, p, spec, tradeoff_)[0])
    low, high = -_LOG_LAM_RANGE, _LOG_LAM_RANGE
    for _ in range(iterations):
        mid = 0.5 * (low + high)
        if float(loss(_shift_lam(params, jnp.asarray(mid)))) < target:
            low = mid
        else:
            high = mid
    return _shift_lam(params, jnp.asarray(0.5 * (low + high)))


def _check_params(family: Family, params: object, r: int) -> None:
    """A ``ValueError`` unless ``params`` is a dict with the keys and shapes of
    ``family.init(r)`` (and finite entries)."""
    expected = {k: jnp.shape(v) for k, v in family.init(r).items()}
    got = ({k: jnp.shape(v) for k, v in params.items()} if isinstance(params, dict)
           else type(params).__name__)
    if got != expected:
        raise ValueError(f"params must have the keys and shapes of {type(family).__name__}"
                         f".init({r}), {expected}, got {got}")
    for key, value in params.items():
        host = np.asarray(value)
        if host.dtype.kind != "f" or not np.all(np.isfinite(host)):
            raise ValueError(f"params[{key!r}] must be finite real numbers, got {value!r}")


def design(problem: LinearProblem, family: Family, target_task_loss: float, *,
           steps: int = 300, learning_rate: float = 0.05, penalty: float = 1e3,
           spectrum: Spectrum | None = None, frontier: Frontier | None = None) -> Design:
    """Minimize forgetting at ``target_task_loss`` over the family's parameters (THEORY §7.4).

    Starts from ``family.init`` with λ calibrated to the target, then ``steps`` Adam steps on
    ``log forgetting + penalty·max(0, (task loss − target)/(target − floor))²``; returns a
    ``Design``: the best point whose task loss is within 0.1% of the target's excess over the
    floor (else the last), with the oracle's forgetting at its task loss.

    Arguments are checked on the host: ``target_task_loss`` finite and strictly between the
    unregularized optimum and the task loss of ``W⁰`` (else refused); ``steps`` an int ≥ 0
    (0: the calibrated start alone); ``learning_rate`` and ``penalty`` finite > 0;
    ``spectrum`` and ``frontier`` those of ``problem``. A target inside that range that the
    family cannot reach (below its task loss at λ → 0, e.g. too few GD ``steps`` to fit the
    task) is not refused: the result is the family's closest point, with ``reached = False``
    and its task loss above the target. An Adam step that leaves the family's range (e.g. λ or
    a Beta parameter overflowing at a large ``learning_rate``) or non-finite metrics fail with
    a ``ValueError`` naming them.
    """
    check_instance("problem", problem, LinearProblem)
    check_instance("family", family, Family)
    target = float(as_scalar("target_task_loss", target_task_loss))
    steps = static_count("steps", steps)
    learning_rate = float(as_scalar("learning_rate", learning_rate, minimum=0.0, strict=True))
    penalty = float(as_scalar("penalty", penalty, minimum=0.0, strict=True))
    if spectrum is not None:
        check_instance("spectrum", spectrum, Spectrum)
    if frontier is not None:
        check_instance("frontier", frontier, Frontier)
    spec = compute_spectrum(problem) if spectrum is None else spectrum.check_matches(problem)
    trade = tradeoff(problem, spectrum=spec)
    front = compute_frontier(problem, spectrum=spec) if frontier is None else frontier
    floor, most = float(trade.floor), float(trade.most_task_loss)
    _check_frontier(front, floor, most, int(spec.s.shape[0]))
    if not floor < target < most:
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
    for k in range(steps):
        try:
            new, state, (loss, forgot) = step(params, state)
        except eqx.EquinoxRuntimeError as err:  # a check inside the strategy, on traced values
            raise _left_range(family, params, spec, k, learning_rate, err) from None
        loss, forgot = float(loss), float(forgot)  # metrics of `params`, before the update
        _check_metrics(loss, forgot, f"after Adam step {k}", problem.dtype)
        history.append((loss, forgot))
        if loss <= target + 1e-3 * scale and forgot < best_forgot:
            best, best_forgot = params, forgot
        params = new
    if not np.isfinite(best_forgot):
        best = params
    try:
        loss, forgot = (float(v) for v in eqx.filter_jit(metrics)(family, best, spec, trade))
    except eqx.EquinoxRuntimeError as err:
        raise _left_range(family, best, spec, steps, learning_rate, err) from None
    _check_metrics(loss, forgot, "at the result", problem.dtype)
    oracle = float(oracle_forgetting(front, max(loss, floor)))
    return Design(params=jax.tree.map(np.asarray, best), task_loss=loss, forgetting=forgot,
                  oracle=oracle, ratio=_ratio(forgot, oracle),
                  history=np.asarray(history, dtype=float).reshape(-1, 2),
                  reached=loss <= target + 1e-3 * scale)


def _check_frontier(front: Frontier, floor: float, most: float, r: int) -> None:
    """A ``ValueError`` unless ``front`` has this problem's rank, floor and task loss of W⁰ (to
    √ε of the task loss of W⁰: they come from separately compiled programs)."""
    tolerance = float(np.sqrt(jnp.finfo(front.kappa.dtype).eps)) * most
    same = (jnp.shape(front.kappa) == (r,)
            and abs(float(front.floor) - floor) <= tolerance
            and abs(float(front.most_task_loss) - most) <= tolerance)
    if not same:
        raise ValueError(f"frontier is not this problem's: its floor and task loss of W⁰ are "
                         f"{float(front.floor):.6g} and {float(front.most_task_loss):.6g} over "
                         f"{jnp.shape(front.kappa)[0]} directions, the problem's {floor:.6g} and "
                         f"{most:.6g} over {r}; pass frontier=tt.frontier(problem)")


def _check_metrics(loss: float, forgot: float, when: str, dtype: object) -> None:
    for what, value in (("task loss", loss), ("forgetting", forgot)):
        if not np.isfinite(value):
            raise ValueError(not_finite(f"design: the {what} {when}", dtype,
                                        "rescale the problem's arrays or lower learning_rate"))


def _ratio(forgot: float, oracle: float) -> float:
    """``forgot/oracle``; 1 where both are 0 (W⁰'s task loss, where nothing is forgotten)."""
    if oracle > 0:
        return forgot / oracle
    if forgot > 0:
        raise ValueError(f"design: the result forgets {forgot:.6g} at a task loss where the "
                         "oracle forgets nothing, so its ratio to the oracle is infinite")
    return 1.0


def _left_range(family: Family, params: Params, spec: Spectrum, done: int,
                learning_rate: float, err: Exception) -> ValueError:
    """The ``ValueError`` for a compiled step that failed a check: the family's strategy at
    ``params``, built eagerly, names the parameter out of range."""
    where = (f"design: Adam step {done} (learning_rate = {learning_rate:g}) moved the "
             f"parameters of {type(family).__name__} out of its range")
    try:
        family.strategy(jax.tree.map(jnp.asarray, params), spec.sigma_max_sq)
    except ValueError as cause:
        return ValueError(f"{where}: {cause}; lower learning_rate")
    return ValueError(f"{where}: {str(err).strip().splitlines()[-1]}; lower learning_rate")
