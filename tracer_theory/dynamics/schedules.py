"""Teacher schedules: ``step -> ω_step`` callables (THEORY §4).

The teacher starts at ``T_0 = W_0`` and at step ``t ≥ 1`` moves to
``T_t = (1 − ω_t) T_{t−1} + ω_t W_t``. A schedule gives ``ω_t``:

* ``static_teacher()``: ``ω_t = 0`` (the teacher stays at ``W_0``);
* ``ema_teacher(m)``: ``ω_t = 1 − m_t``, ``m_t = m`` or linearly warmed up to ``m``;
* ``kernel_teacher(T, κ)`` / ``wma_teacher(T, a, b)``: ``ω_t = κ(τ_t) / Σ_{j≤t} κ(τ_j)`` with
  ``τ_k = (k + 0.5)/(T + 1)``, so ``T_t`` is exactly the κ-weighted average of ``W_0..W_t``.

Every schedule is an equinox module whose hyper-parameters are array fields, so a schedule built
inside ``jax.vmap`` (over ``momentum``, ``a``, ``b``) is a batch of schedules. ``schedule(step)``
works with a traced integer step; ``schedule.weights(n)`` returns ``ω_1..ω_n`` in one vectorised
computation and agrees with ``schedule(t)`` exactly (bit for bit outside an enclosing ``jit``;
inside one, XLA may fuse operations differently, e.g. into multiply-adds).
"""

from __future__ import annotations

import operator
from collections.abc import Callable
from functools import partial

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, ArrayLike, Float, Int

from .._validation import as_scalar, ensure, is_traced, show

_GRID = "the grid τ_k = (k + 0.5)/(horizon + 1), k = 0..horizon"


class Schedule(eqx.Module):
    """Base class: the teacher's mixing weight ``ω_t`` as a function of the step ``t ≥ 1``."""

    def __call__(self, step: Int[ArrayLike, "*s"]) -> Float[Array, "*s"]:
        """``ω_step`` for an integer ``step ≥ 1`` (traced allowed; arrays act elementwise)."""
        raise NotImplementedError

    def weights(self, num_steps: int) -> Float[Array, " num_steps"]:
        """``ω_1..ω_{num_steps}`` (shape (num_steps,)), equal to ``self(t)`` for each ``t``."""
        return self(jnp.arange(1, _static_count("num_steps", num_steps) + 1))


class StaticSchedule(Schedule):
    """``ω_t = 0``: the teacher is frozen at ``W_0``."""

    def __call__(self, step):
        return jnp.zeros(jnp.shape(step), _float_dtype())


class EMASchedule(Schedule):
    """Exponential moving average: ``ω_t = 1 − m_t``.

    ``m_t = (1 − r_t)·warmup_from + r_t·momentum`` with ``r_t = min((t − 1)/warmup_steps, 1)``:
    update 1 uses ``warmup_from``, the momentum grows linearly over the first ``warmup_steps``
    updates and equals ``momentum`` from update ``warmup_steps + 1`` on (the official TRACER
    code's ``m_src → m_tar`` warm-up). ``warmup_steps = 0`` (or no ``warmup_from``) gives the
    constant ``m_t = momentum``, for which ``T_t = m^t W_0 + Σ_{j=1..t} (1 − m) m^{t−j} W_j``.
    """

    momentum: Float[Array, ""]
    warmup_from: Float[Array, ""]
    warmup_steps: Int[Array, ""]

    def __init__(self, momentum: ArrayLike, *, warmup_from: ArrayLike | None = None,
                 warmup_steps: ArrayLike = 0):
        self.momentum = _unit_interval("momentum", momentum)
        steps = as_scalar("warmup_steps", warmup_steps, minimum=0, integer=True)
        if warmup_from is None:
            self.warmup_from = self.momentum
            self.warmup_steps = jnp.zeros_like(steps)
        else:
            self.warmup_from = _unit_interval("warmup_from", warmup_from)
            self.warmup_steps = steps

    def momentum_at(self, step: Int[ArrayLike, "*s"]) -> Float[Array, "*s"]:
        """``m_step`` (see the class docstring); arrays act elementwise."""
        return _ema_momentum(self, jnp.asarray(step))

    def __call__(self, step):
        return 1 - self.momentum_at(step)


@eqx.filter_jit
def _ema_momentum(schedule: EMASchedule, step: Array) -> Array:
    dtype = jnp.result_type(schedule.momentum, schedule.warmup_from)
    done = step - 1 >= schedule.warmup_steps  # also true for warmup_steps = 0
    # (t − 1)·(1/W), not (t − 1)/W: XLA turns a division by a broadcast scalar into a
    # multiplication by its reciprocal, which would make vector and scalar calls differ.
    inverse = 1 / jnp.maximum(schedule.warmup_steps, 1).astype(dtype)
    ratio = jnp.where(done, 1, (step - 1).astype(dtype) * inverse).astype(dtype)
    # An interpolation, so that ratio = 1 gives `momentum` exactly.
    return (1 - ratio) * schedule.warmup_from + ratio * schedule.momentum


class Kernel(eqx.Module):
    """An unnormalised positive weight ``κ(τ)`` on ``(0, 1)``, evaluated through ``log κ``.

    ``kernel_weights`` uses ``log`` and shifts by the maximum over the grid before ``exp``, so
    sharply peaked kernels neither overflow nor underflow; the shift cancels in ``ω``.
    """

    def log(self, tau: Float[Array, "*s"]) -> Float[Array, "*s"]:
        """``log κ(τ)`` elementwise; ``−inf`` means weight 0."""
        raise NotImplementedError

    def __call__(self, tau: Float[Array, "*s"]) -> Float[Array, "*s"]:
        """``κ(τ)`` elementwise."""
        return jnp.exp(self.log(tau))


class BetaKernel(Kernel):
    """Beta(a, b) density up to its normaliser: ``κ(τ) = τ^(a−1) (1 − τ)^(b−1)``, ``a, b > 0``.

    ``a = b = 1`` is uniform, ``a = 2, b = 1`` the linear ramp ``κ ∝ τ``, ``a = b = 1/2`` the
    U-shaped arcsine kernel of TRACER.
    """

    a: Float[Array, ""]
    b: Float[Array, ""]

    def __init__(self, a: ArrayLike = 0.5, b: ArrayLike = 0.5):
        self.a = as_scalar("a", a, minimum=0.0, strict=True)
        self.b = as_scalar("b", b, minimum=0.0, strict=True)

    def log(self, tau):
        return (self.a - 1) * jnp.log(tau) + (self.b - 1) * jnp.log1p(-tau)


def beta_kernel(a: ArrayLike, b: ArrayLike) -> BetaKernel:
    """``κ(τ) ∝ τ^(a−1) (1 − τ)^(b−1)``, the Beta(a, b) density; ``a, b > 0`` (arrays allowed)."""
    return BetaKernel(a, b)


def arcsine_kernel() -> BetaKernel:
    """``κ(τ) ∝ 1/√(τ(1 − τ))`` = Beta(1/2, 1/2): weight on both ends of the trajectory."""
    return BetaKernel(0.5, 0.5)


def uniform_kernel() -> BetaKernel:
    """``κ(τ) = 1`` = Beta(1, 1): the teacher is the running arithmetic mean."""
    return BetaKernel(1.0, 1.0)


def linear_ramp_kernel() -> BetaKernel:
    """``κ(τ) ∝ τ`` = Beta(2, 1): later students weigh more."""
    return BetaKernel(2.0, 1.0)


class KernelSchedule(Schedule):
    """Kernel-weighted trajectory average over ``horizon`` steps (TRACER's WMA teacher).

    ``ω_t = κ(τ_t) / Σ_{j=0..t} κ(τ_j)`` with ``τ_k = (k + 0.5)/(horizon + 1)`` for
    ``1 ≤ t ≤ horizon``, so that ``T_t = Σ_{j≤t} κ(τ_j) W_j / Σ_{j≤t} κ(τ_j)`` exactly.

    !!! note "Clamp past the horizon"
        ``ω_t = 0`` for ``t > horizon``: once the average over the whole horizon is complete the
        teacher is frozen at ``T_horizon``.

    (Should a prefix ``κ(τ_0..τ_t)`` be all zero, ``ω_t = 0`` there: the teacher stays at
    ``W_0`` until the first positive weight, from which on the identity above holds.)
    ``horizon`` is a static Python int. The table ``ω_0..ω_horizon`` is computed once, at
    construction (O(horizon)), in the default float dtype of that moment, so a call costs O(1);
    under a different default dtype (``jax.enable_x64``) it is recomputed in that dtype. For a
    traced horizon use ``kernel_weights``.
    """

    kernel: Callable[[Array], Array]
    horizon: int = eqx.field(static=True)
    table: Float[Array, " horizon+1"] = eqx.field(repr=False)

    def __init__(self, horizon: int, kernel: Callable[[Array], Array]):
        self.horizon = _static_horizon(horizon)
        if not callable(kernel):
            raise TypeError(f"kernel must be a callable τ -> weight, got {kernel!r}")
        self.kernel = kernel
        if any(is_traced(leaf) for leaf in jax.tree.leaves(kernel)):
            self.table = _kernel_table(kernel, self.horizon, self.horizon)[0]
        else:
            self.table = _omegas(kernel, self.horizon, self.horizon)  # fail now, not in training

    def _table(self) -> Float[Array, " horizon+1"]:
        # One table serves both __call__ and weights, so the two agree bit for bit.
        if self.table.dtype != _float_dtype():
            return _kernel_table(self.kernel, self.horizon, self.horizon)[0]
        return self.table

    def __call__(self, step):
        return _look_up(self._table(), jnp.asarray(step))

    def weights(self, num_steps):
        return _pad(self._table(), _static_count("num_steps", num_steps))


@jax.jit
def _look_up(table: Float[Array, " n+1"], step: Array) -> Array:
    """``table[step]`` for ``0 ≤ step ≤ n``, 0 past ``n``."""
    horizon = table.shape[0] - 1
    value = table[jnp.clip(step, 0, horizon)]
    return jnp.where(step > horizon, jnp.zeros((), table.dtype), value)


@partial(jax.jit, static_argnums=1)
def _pad(table: Float[Array, " n+1"], num_steps: int) -> Array:
    """``table[1..num_steps]``, zero-padded past ``n``."""
    head = table[1:num_steps + 1]
    return jnp.concatenate([head, jnp.zeros(num_steps - head.shape[0], table.dtype)])


def static_teacher() -> StaticSchedule:
    """``ω_t = 0``: the teacher stays at the pretrained weights ``W_0``."""
    return StaticSchedule()


def ema_teacher(momentum: ArrayLike, *, warmup_from: ArrayLike | None = None,
                warmup_steps: ArrayLike = 0) -> EMASchedule:
    """EMA teacher, ``ω_t = 1 − m_t``; ``momentum``, ``warmup_from`` in [0, 1).

    ``m_t`` warms up linearly from ``warmup_from`` to ``momentum`` over the first
    ``warmup_steps`` updates (integer ≥ 0); see ``EMASchedule``.
    """
    return EMASchedule(momentum, warmup_from=warmup_from, warmup_steps=warmup_steps)


def kernel_teacher(horizon: int, kernel: Callable[[Array], Array]) -> KernelSchedule:
    """Teacher = κ-weighted average of the student trajectory over ``horizon`` steps.

    ``kernel`` maps an array of ``τ ∈ (0, 1)`` to non-negative weights elementwise (a ``Kernel``
    or any callable); it is checked on the τ grid now. ``ω_t = 0`` past ``horizon``.
    """
    return KernelSchedule(horizon, kernel)


def wma_teacher(horizon: int, a: ArrayLike = 0.5, b: ArrayLike = 0.5) -> KernelSchedule:
    """TRACER's WMA teacher: ``kernel_teacher(horizon, beta_kernel(a, b))`` (THEORY §4).

    ``a``, ``b`` may be traced, e.g. ``jax.vmap(lambda a: wma_teacher(100, a, a).weights(100))``.
    """
    return KernelSchedule(horizon, BetaKernel(a, b))


def kernel_weights(kernel: Callable[[Array], Array], horizon: Int[ArrayLike, ""],
                   num_steps: int) -> Float[Array, " num_steps"]:
    """``ω_1..ω_{num_steps}`` of the kernel teacher; ``horizon`` may be traced.

    ``ω_t = κ(τ_t)/Σ_{j=0..t} κ(τ_j)``, ``τ_k = (k + 0.5)/(horizon + 1)``, for ``t ≤ horizon``
    and ``ω_t = 0`` past it. ``num_steps`` is a static int (any value ≥ 0; take it ≥ the largest
    horizon of a sweep). O(num_steps) via a prefix sum. Returns shape (num_steps,).
    """
    num_steps = _static_count("num_steps", num_steps)
    horizon = as_scalar("horizon", horizon, minimum=1, integer=True)
    return _omegas(kernel, horizon, num_steps)[1:]


def _omegas(kernel, horizon, length: int) -> Float[Array, " length+1"]:
    """``ω_0..ω_length`` of the kernel teacher, with the kernel's values checked on the grid."""
    omega, kappa = _kernel_table(kernel, horizon, length)
    xp = jnp if is_traced(kappa) else np
    kappa = kappa if is_traced(kappa) else np.asarray(kappa)
    # Float reductions, not boolean all(): under vmap XLA constant-folds the latter for seconds.
    total = xp.sum(kappa)
    omega = ensure(omega, xp.isfinite(total),
                   f"kernel must return finite weights on {_GRID}; got NaN or Inf")
    omega = ensure(omega, xp.min(kappa) >= 0,
                   f"kernel must return non-negative weights on {_GRID}; got a negative one")
    return ensure(omega, total > 0,
                  f"kernel weights must have a positive sum on {_GRID}; they are all zero")


@eqx.filter_jit
def _kernel_table(kernel, horizon, length: int):
    """``(ω_0..ω_length, κ_0..κ_length)``; ``ω_0 = 1`` (``T_0 = W_0``). The one formula.

    ``κ_k = κ(τ_k)`` for ``k ≤ horizon`` (max-shifted in log space for a ``Kernel``), 0 past
    it; ``ω_t = κ_t / Σ_{j≤t} κ_j`` with the prefix sums from ``lax.associative_scan``.
    """
    dtype = _float_dtype()
    k = jnp.arange(length + 1)
    valid = k <= horizon
    tau = (k.astype(dtype) + 0.5) / jnp.asarray(horizon + 1, dtype)
    tau = jnp.where(valid, tau, 0.5)  # keep the kernel inside (0, 1) where it is masked out
    if isinstance(kernel, Kernel):
        log_kappa = jnp.where(valid, kernel.log(tau), -jnp.inf)
        shift = jax.lax.stop_gradient(jnp.max(log_kappa))
        kappa = jnp.exp(log_kappa - jnp.where(jnp.isfinite(shift), shift, 0))
    else:
        kappa = jnp.broadcast_to(jnp.asarray(kernel(tau)), tau.shape)
        kappa = kappa.astype(jnp.promote_types(kappa.dtype, dtype))
        kappa = jnp.where(valid, kappa, 0)
    # A parallel prefix sum: jnp.cumsum lowers to a full-length reduce_window on CPU whose mask
    # XLA constant-folds for seconds at 10⁵ steps; this is O(n log n) with tree-ordered sums.
    total = jax.lax.associative_scan(jnp.add, kappa)
    positive = total > 0
    return jnp.where(positive, kappa / jnp.where(positive, total, 1), 0), kappa


def _float_dtype():
    """The default floating dtype (float64 when ``jax_enable_x64`` is on, else float32)."""
    return jnp.result_type(float)


def _unit_interval(name: str, value: ArrayLike) -> Array:
    arr = as_scalar(name, value)
    return ensure(arr, (arr >= 0) & (arr < 1), f"{name} must be in [0, 1), got {show(value)}")


def _static_int(name: str, value: object) -> int:
    if is_traced(value):
        raise ValueError(f"{name} must be a static Python int, got a traced value")
    if isinstance(value, bool):
        raise ValueError(f"{name} must be an integer, got {value!r}")
    try:
        return operator.index(value)
    except TypeError:
        raise ValueError(f"{name} must be an integer, got {value!r}") from None


def _static_count(name: str, value: object) -> int:
    count = _static_int(name, value)
    if count < 0:
        raise ValueError(f"{name} must be >= 0, got {count}")
    return count


def _static_horizon(value: object) -> int:
    if is_traced(value):
        raise ValueError("horizon must be a static Python int here; for a traced horizon use "
                         "kernel_weights(kernel, horizon, num_steps)")
    horizon = _static_int("horizon", value)
    if horizon < 1:
        raise ValueError(f"horizon must be >= 1, got {horizon}")
    return horizon
