"""Teacher schedules: ``step -> ω_step`` callables (THEORY §4).

The teacher starts at ``T_0 = W_0`` and at step ``t ≥ 1`` moves to
``T_t = (1 − ω_t) T_{t−1} + ω_t W_t``. A schedule gives ``ω_t``:

* ``static_teacher()``: ``ω_t = 0`` (the teacher stays at ``W_0``);
* ``ema_teacher(m)``: ``ω_t = 1 − m_t``, ``m_t = m`` or linearly warmed up to ``m``;
* ``kernel_teacher(T, κ)`` / ``wma_teacher(T, a, b)``: ``ω_t = κ(τ_t) / Σ_{j≤t} κ(τ_j)`` with
  ``τ_k = (k + 0.5)/(T + 1)``, so ``T_t`` is exactly the κ-weighted average of ``W_0..W_t``.
  The ratio is formed in log space (a cumulative log-sum-exp of ``log κ``), so it is exact to
  rounding however peaked the kernel: no weight underflows or overflows.

Every schedule is an equinox module whose hyper-parameters are array fields, so a schedule built
inside ``jax.vmap`` (over ``momentum``, ``a``, ``b``) is a batch of schedules. ``schedule(step)``
works with a traced integer step; ``schedule.weights(n)`` returns ``ω_1..ω_n`` in one vectorised
computation and agrees with ``schedule(t)`` exactly (bit for bit outside an enclosing ``jit``;
inside one, XLA may fuse operations differently, e.g. into multiply-adds).
"""

from __future__ import annotations

from collections.abc import Callable
from functools import partial

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, ArrayLike, Float, Int

from .._validation import as_fraction, as_int, as_real_array, as_scalar, ensure, is_traced, show

_GRID = "the grid τ_k = (k + 0.5)/(horizon + 1), k = 0..horizon"


class Schedule(eqx.Module):
    """Base class: the teacher's mixing weight ``ω_t`` as a function of the step ``t ≥ 1``
    (THEORY §4.2); ``weights(T)`` gives ``ω_1..ω_T``, shape (T,).

    A subclass implements ``at`` (the formula, for integer steps ``≥ 1``, values validated when
    the schedule is built) or overrides ``__call__``; the solvers check the weights they use
    (``ω`` outside ``[0, 1]``, NaN or complex is refused).
    """

    def __call__(self, step: Int[ArrayLike, "*s"]) -> Float[Array, "*s"]:
        """``ω_step`` for an integer ``step ≥ 1`` (traced allowed; arrays act elementwise).

        Refuses ``step < 1`` (a ``ValueError``; a run-time error when traced) and non-integer
        steps, then evaluates ``at``.
        """
        return _at_steps(step, self.at)

    def at(self, step: Int[Array, "*s"]) -> Float[Array, "*s"]:
        """``ω_step`` for an integer array ``step ≥ 1``, unchecked: for callers that count the
        steps themselves (the teacher update), so no run-time check sits in a training step."""
        raise NotImplementedError

    def weights(self, num_steps: int) -> Float[Array, " num_steps"]:
        """``ω_1..ω_{num_steps}`` (shape (num_steps,)), equal to ``self(t)`` for each ``t``."""
        return self(jnp.arange(1, static_count("num_steps", num_steps) + 1))


class StaticSchedule(Schedule):
    """``ω_t = 0``: the teacher is frozen at ``W_0`` (static SD, THEORY §4.2, §4.6)."""

    def at(self, step):
        return jnp.zeros(jnp.shape(step), _float_dtype())

    def weights(self, num_steps):
        return jnp.zeros(static_count("num_steps", num_steps), _float_dtype())


class EMASchedule(Schedule):
    """Exponential moving average: ``ω_t = 1 − m_t`` (THEORY §4.2; its collapse: THEORY §4.4).

    ``m_t = (1 − r_t)·warmup_from + r_t·momentum`` with ``r_t = min((t − 1)/warmup_steps, 1)``:
    update 1 uses ``warmup_from``, the momentum grows linearly over the first ``warmup_steps``
    updates and equals ``momentum`` from update ``warmup_steps + 1`` on (the official TRACER
    code's ``m_src → m_tar`` warm-up). Without either argument (or with ``warmup_steps = 0``)
    the momentum is the constant ``m_t = momentum``, for which
    ``T_t = m^t W_0 + Σ_{j=1..t} (1 − m) m^{t−j} W_j``. ``warmup_from`` and ``warmup_steps``
    go together: one without the other is refused (it would be silently ignored).
    """

    momentum: Float[Array, ""]
    warmup_from: Float[Array, ""]
    warmup_steps: Int[Array, ""]

    def __init__(self, momentum: ArrayLike, *, warmup_from: ArrayLike | None = None,
                 warmup_steps: ArrayLike | None = None):
        self.momentum = _unit_interval("momentum", momentum)
        if (warmup_from is None) != (warmup_steps is None):
            given, missing, meaning = (
                ("warmup_from", "warmup_steps", "the number of warm-up updates")
                if warmup_steps is None else
                ("warmup_steps", "warmup_from", "the momentum at update 1"))
            value = warmup_from if warmup_steps is None else warmup_steps
            raise ValueError(f"{given} = {show(value)} was given without {missing}; pass "
                             f"{missing} ({meaning}) too, or neither")
        if warmup_from is None:
            self.warmup_from = self.momentum
            self.warmup_steps = jnp.zeros_like(as_scalar("warmup_steps", 0, integer=True))
        else:
            self.warmup_from = _unit_interval("warmup_from", warmup_from)
            self.warmup_steps = as_scalar("warmup_steps", warmup_steps, minimum=0,
                                          integer=True)

    def momentum_at(self, step: Int[ArrayLike, "*s"]) -> Float[Array, "*s"]:
        """``m_step`` for integer ``step ≥ 1`` (see the class docstring); elementwise."""
        return _at_steps(step, lambda t: _ema_momentum(self, t))

    def at(self, step):
        return 1 - _ema_momentum(self, step)

    def weights(self, num_steps):
        steps = jnp.arange(1, static_count("num_steps", num_steps) + 1)
        return 1 - _ema_momentum(self, steps)


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
    """An unnormalised positive weight ``κ(τ)`` on ``(0, 1)``, evaluated through ``log κ``
    (THEORY §4.2); ``τ`` an array of any shape, ``κ(τ)`` of the same shape.

    The teacher weights ``ω_t = κ_t / Σ_{j≤t} κ_j`` are formed from ``log`` alone, in log space
    (``_log_normalize``), so sharply peaked kernels neither overflow nor underflow: ``ω`` is exact
    to rounding for any finite ``log κ``.
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
    U-shaped arcsine kernel of TRACER (THEORY §4.2). ``a`` and ``b`` are scalars.
    """

    a: Float[Array, ""]
    b: Float[Array, ""]

    def __init__(self, a: ArrayLike = 0.5, b: ArrayLike = 0.5):
        self.a = as_scalar("a", a, minimum=0.0, strict=True)
        self.b = as_scalar("b", b, minimum=0.0, strict=True)

    def log(self, tau):
        return (self.a - 1) * jnp.log(tau) + (self.b - 1) * jnp.log1p(-tau)


class GridKernel(Kernel):
    """A free-form positive kernel: ``log κ`` linear between ``G ≥ 2`` values on the knots
    ``τ = 0, 1/(G − 1), …, 1`` (``log_values``, shape (G,), real and finite, with finite
    differences between neighbouring knots; integers become the default float dtype).

    Positive for every finite ``log_values`` and differentiable in them, so a kernel's shape can
    be optimized by gradient (the designed teachers of THEORY §7.4). Only differences of
    ``log_values`` matter: the teacher weights are exact for any magnitude (``Kernel``).
    """

    log_values: Float[Array, " G"]

    def __init__(self, log_values: Float[ArrayLike, " G"]):
        values = as_real_array("log_values", log_values)
        if values.ndim != 1 or values.shape[0] < 2:
            raise ValueError(f"log_values must be a 1-D array of at least 2 knots, got shape "
                             f"{values.shape}")
        if not jnp.issubdtype(values.dtype, jnp.floating):
            values = values.astype(_float_dtype())
        ok, steps_ok = _finite_knots(values)
        values = ensure(values, ok, f"log_values must be finite, got {show(values)}")
        self.log_values = ensure(values, steps_ok, "log_values must have finite differences "
                                 "between neighbouring knots (they overflow "
                                 f"{values.dtype.name}), got {show(values)}")

    def log(self, tau):
        knots = jnp.linspace(0.0, 1.0, self.log_values.shape[0], dtype=self.log_values.dtype)
        return jnp.interp(tau, knots, self.log_values)


@jax.jit
def _finite_knots(values: Float[Array, " G"]) -> tuple[Array, Array]:
    """(every value finite, every difference of neighbours finite): one dispatch."""
    return jnp.all(jnp.isfinite(values)), jnp.all(jnp.isfinite(jnp.diff(values)))


def beta_kernel(a: ArrayLike, b: ArrayLike) -> BetaKernel:
    """``κ(τ) ∝ τ^(a−1) (1 − τ)^(b−1)``, the Beta(a, b) density; ``a, b > 0`` (arrays allowed).
    Returns a ``BetaKernel`` (THEORY §4.2)."""
    return BetaKernel(a, b)


def arcsine_kernel() -> BetaKernel:
    """``κ(τ) ∝ 1/√(τ(1 − τ))`` = Beta(1/2, 1/2): weight on both ends of the trajectory, TRACER's
    default. Returns a ``BetaKernel`` (THEORY §4.2)."""
    return BetaKernel(0.5, 0.5)


def uniform_kernel() -> BetaKernel:
    """``κ(τ) = 1`` = Beta(1, 1): the teacher is the running arithmetic mean. Returns a
    ``BetaKernel`` (THEORY §4.2)."""
    return BetaKernel(1.0, 1.0)


def linear_ramp_kernel() -> BetaKernel:
    """``κ(τ) ∝ τ`` = Beta(2, 1): later students weigh more. Returns a ``BetaKernel``
    (THEORY §4.2)."""
    return BetaKernel(2.0, 1.0)


class KernelSchedule(Schedule):
    """Kernel-weighted trajectory average over ``horizon`` steps (TRACER's WMA teacher,
    THEORY §4.2; its bias law: THEORY §4.7).

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
        _check_kernel(kernel)
        self.kernel = kernel
        if any(is_traced(leaf) for leaf in jax.tree.leaves(kernel)):
            self.table = _kernel_table(kernel, self.horizon, self.horizon)[0]  # checked a, b
        else:
            self.table = _omegas(kernel, self.horizon, self.horizon)  # fail now, not in training

    def _table(self) -> Float[Array, " horizon+1"]:
        # One table serves both __call__ and weights, so the two agree bit for bit.
        if self.table.dtype != _float_dtype():
            return _kernel_table(self.kernel, self.horizon, self.horizon)[0]
        return self.table

    def at(self, step):
        return _look_up(self._table(), step)

    def weights(self, num_steps):
        return _pad(self._table(), static_count("num_steps", num_steps))


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
    """``ω_t = 0``: the teacher stays at the pretrained weights ``W_0``. Returns a
    ``StaticSchedule`` (THEORY §4.2)."""
    return StaticSchedule()


def ema_teacher(momentum: ArrayLike, *, warmup_from: ArrayLike | None = None,
                warmup_steps: ArrayLike | None = None) -> EMASchedule:
    """EMA teacher, ``ω_t = 1 − m_t``; ``momentum``, ``warmup_from`` in [0, 1).

    ``m_t`` warms up linearly from ``warmup_from`` to ``momentum`` over the first
    ``warmup_steps`` updates (integer ≥ 0); give both or neither. Returns an ``EMASchedule``
    (THEORY §4.2).
    """
    return EMASchedule(momentum, warmup_from=warmup_from, warmup_steps=warmup_steps)


def kernel_teacher(horizon: int, kernel: Callable[[Array], Array]) -> KernelSchedule:
    """Teacher = κ-weighted average of the student trajectory over ``horizon`` steps.

    ``kernel`` maps an array of ``τ ∈ (0, 1)`` to non-negative weights elementwise (a ``Kernel``
    or any callable); it is checked on the τ grid now. ``ω_t = 0`` past ``horizon``. Returns a
    ``KernelSchedule`` (THEORY §4.2).
    """
    return KernelSchedule(horizon, kernel)


def wma_teacher(horizon: int, a: ArrayLike = 0.5, b: ArrayLike = 0.5) -> KernelSchedule:
    """TRACER's WMA teacher: returns ``kernel_teacher(horizon, beta_kernel(a, b))``, a
    ``KernelSchedule`` (THEORY §4.2).

    ``a``, ``b`` may be traced, e.g. ``jax.vmap(lambda a: wma_teacher(100, a, a).weights(100))``.
    """
    return KernelSchedule(horizon, BetaKernel(a, b))


def kernel_weights(kernel: Callable[[Array], Array], horizon: Int[ArrayLike, ""],
                   num_steps: int) -> Float[Array, " num_steps"]:
    """``ω_1..ω_{num_steps}`` of the kernel teacher; ``horizon`` may be traced.

    ``ω_t = κ(τ_t)/Σ_{j=0..t} κ(τ_j)``, ``τ_k = (k + 0.5)/(horizon + 1)``, for ``t ≤ horizon``
    and ``ω_t = 0`` past it. ``num_steps`` is a static int (any value ≥ 0; take it ≥ the largest
    horizon of a sweep). O(num_steps) via a prefix scan in log space. Returns shape (num_steps,)
    (THEORY §4.2).
    """
    _check_kernel(kernel)
    num_steps = static_count("num_steps", num_steps)
    horizon = as_scalar("horizon", horizon, minimum=1, integer=True)
    return _omegas(kernel, horizon, num_steps)[1:]


def _check_kernel(kernel: object) -> None:
    if not callable(kernel):
        raise TypeError(f"kernel must be a callable τ -> weight, got {kernel!r}")


def _omegas(kernel, horizon, length: int) -> Float[Array, " length+1"]:
    """``ω_0..ω_length`` of the kernel teacher, with the kernel's values checked on the grid."""
    omega, values, log_kappa = _kernel_table(kernel, horizon, length)
    if is_traced(log_kappa):
        # Float reductions, not boolean all(): under vmap XLA constant-folds the latter for
        # seconds. The max of log κ is NaN for a NaN or negative weight, +inf for an infinite
        # one, −inf when every weight is 0.
        top = jnp.max(log_kappa)
        checks = [(top < jnp.inf, f"kernel must return finite, non-negative weights on {_GRID}; "
                                  "got NaN, Inf or a negative one"),
                  (top > -jnp.inf, f"kernel weights must have a positive sum on {_GRID}; they "
                                   "are all zero (or subnormal, which XLA flushes to zero)")]
        for ok, message in checks:
            omega = ensure(omega, ok, message)
        return omega
    if isinstance(kernel, Kernel):
        _check_log_values(np.asarray(values))
    else:
        _check_kernel_values(np.asarray(values))
    return omega


def _check_log_values(log_kappa: np.ndarray) -> None:
    """Eager ``ValueError``s for ``log κ_0..log κ_length`` of a ``Kernel`` that cannot be
    normalized: NaN or ``+inf`` somewhere, or every weight 0 (``−inf``)."""
    bad = np.isnan(log_kappa) | (log_kappa == np.inf)
    if bad.any():
        k = int(np.argmax(bad))
        raise ValueError(f"kernel must return finite weights on {_GRID}; got κ(τ_{k}) = "
                         f"{float(np.exp(log_kappa[k]))!r} (log κ = {float(log_kappa[k])!r})")
    if not (log_kappa > -np.inf).any():
        raise ValueError(f"kernel weights must have a positive sum on {_GRID}; they are all "
                         "zero (log κ = -inf)")


def _check_kernel_values(kappa: np.ndarray) -> None:
    """Eager ``ValueError``s for weights ``κ_0..κ_length`` of a plain callable that cannot be
    normalized (the log-space normalization handles any positive normal weights)."""
    where = f"on {_GRID}"
    bad = ~np.isfinite(kappa)
    if bad.any():
        k = int(np.argmax(bad))
        raise ValueError(f"kernel must return finite weights {where}; got κ(τ_{k}) = "
                         f"{float(kappa[k])!r}")
    if (kappa < 0).any():
        k = int(np.argmax(kappa < 0))
        raise ValueError(f"kernel must return non-negative weights {where}; got κ(τ_{k}) = "
                         f"{kappa[k]:.3g}")
    if not (kappa > 0).any():
        raise ValueError(f"kernel weights must have a positive sum {where}; they are all zero")
    first = int(np.argmax(kappa > 0))
    tiny = np.finfo(kappa.dtype).tiny
    if kappa[first] < tiny:
        raise ValueError(
            f"kernel weights are too small to normalize in {kappa.dtype}: the first positive "
            f"one, κ(τ_{first}) = {kappa[first]:.3g}, is subnormal (below {tiny:.3g}, the "
            f"smallest normal {kappa.dtype}) and XLA flushes subnormals to 0, which would "
            "freeze the teacher; scale the kernel up, or give a Kernel (its log κ is exact)")


@eqx.filter_jit
def _kernel_table(kernel, horizon, length: int):
    """``(ω_0..ω_length, the kernel's values, log κ_0..log κ_length)``: the one formula.

    ``log κ_k = log κ(τ_k)`` for ``k ≤ horizon`` (``Kernel.log``, or the log of a plain
    callable's weights, NaN for a negative one), ``−inf`` past it; ``ω`` from
    ``_log_normalize``, with ``ω_0 = 1`` (``T_0 = W_0``). The values are the kernel's own output
    (``log κ`` for a ``Kernel``, ``κ`` otherwise), for the eager checks.
    """
    dtype = _float_dtype()
    k = jnp.arange(length + 1)
    valid = k <= horizon
    tau = (k.astype(dtype) + 0.5) / jnp.asarray(horizon + 1, dtype)
    tau = jnp.where(valid, tau, 0.5)  # keep the kernel inside (0, 1) where it is masked out
    if isinstance(kernel, Kernel):
        values = _real_weights(kernel.log(tau), tau.shape, dtype)
        log_kappa = values
    else:
        values = _real_weights(kernel(tau), tau.shape, dtype)
        positive = values > 0
        log_kappa = jnp.where(positive, jnp.log(jnp.where(positive, values, 1)),
                              jnp.where(values == 0, -jnp.inf, jnp.nan))
    log_kappa = jnp.where(valid, log_kappa, -jnp.inf)
    return _log_normalize(log_kappa), values, log_kappa


def _log_normalize(log_kappa: Float[Array, " n"]) -> Float[Array, " n"]:
    """``ω_t = κ_t / Σ_{j≤t} κ_j`` from ``log κ`` (``−inf`` for a weight 0), in log space.

    The cumulative log-sum-exp ``L_t = log Σ_{j≤t} κ_j`` is carried as a pair: the running
    maximum ``m_t = max_{j≤t} log κ_j`` and the scaled sum ``s_t = Σ_{j≤t} exp(log κ_j − m_t)``
    (in ``[1, t + 1]``: it neither overflows nor underflows), combined by
    ``lax.associative_scan``; then ``ω_t = exp(log κ_t − m_t)/s_t``, exact to rounding for any
    finite ``log κ`` (exactly ``1/(t + 1)`` for a constant kernel). ``m`` is a shift that cancels,
    so it carries no gradient. ``ω_t = 0`` while every weight so far is 0, and below the
    smallest normal number (the same table on every backend, flushing or not).
    """
    finite = log_kappa > -jnp.inf
    shift = jax.lax.stop_gradient(jnp.where(finite, log_kappa, -jnp.inf))
    scaled = jnp.exp(jnp.where(finite, log_kappa - jnp.where(finite, shift, 0), -jnp.inf))
    top, total = jax.lax.associative_scan(_combine, (shift, scaled))
    some = total > 0
    exponent = log_kappa - jnp.where(some, top, 0)  # −inf or ≤ 0; never NaN
    omega = jnp.where(some, jnp.exp(exponent) / jnp.where(some, total, 1), 0)
    return jnp.where(omega >= jnp.finfo(omega.dtype).tiny, omega, 0)


def _combine(left: tuple[Array, Array], right: tuple[Array, Array]) -> tuple[Array, Array]:
    """Sum of two ``(max, scaled sum)`` pairs: ``Σ = e^m s``, rescaled to the larger max."""
    (m1, s1), (m2, s2) = left, right
    m = jnp.maximum(m1, m2)
    return m, s1 * _rescale(m1, m) + s2 * _rescale(m2, m)


def _rescale(m_part: Array, m: Array) -> Array:
    """``exp(m_part − m)``, exactly 1 where they are equal (also both ``−inf``)."""
    return jnp.exp(jnp.where(m_part == m, 0, m_part - m))


def _real_weights(values: object, shape: tuple[int, ...], dtype: object) -> Array:
    """The kernel's output on the grid, broadcast to ``shape``, as a float array (at least
    ``dtype``); refuses complex or other non-real values, and shapes that do not broadcast (at
    trace time)."""
    try:
        values = jnp.asarray(values)
    except (TypeError, ValueError) as err:
        raise ValueError(f"kernel must return real weights on {_GRID}, got "
                         f"{type(values).__name__}: {err}") from None
    if not (jnp.issubdtype(values.dtype, jnp.floating)
            or jnp.issubdtype(values.dtype, jnp.integer) or values.dtype == jnp.bool_):
        raise ValueError(f"kernel must return real weights on {_GRID}, got dtype "
                         f"{values.dtype}")
    try:
        values = jnp.broadcast_to(values, shape)
    except ValueError:
        raise ValueError(f"kernel must map the grid τ of shape {shape} to weights of the same "
                         f"shape, got shape {values.shape}") from None
    return values.astype(jnp.promote_types(values.dtype, dtype))


def _at_steps(step: object, omega_fn: Callable[[Array], Array]) -> Array:
    """``omega_fn(step)`` for integer steps ``≥ 1``: a ``ValueError`` for concrete bad steps, a
    run-time check on the result for traced ones."""
    message = "step must be >= 1 (teacher updates are numbered 1, 2, …)"
    if isinstance(step, bool | np.bool_):
        raise ValueError(f"step must be an integer, got {step!r}")
    if isinstance(step, int | np.integer):
        if step < 1:
            raise ValueError(f"{message}, got {int(step)}")
        return omega_fn(jnp.asarray(step))
    if not is_traced(step):
        try:
            step = jnp.asarray(step)
        except TypeError as err:
            raise ValueError(f"step must be an integer, got {step!r}: {err}") from None
    if not jnp.issubdtype(step.dtype, jnp.integer):
        raise ValueError(f"step must be an integer, got dtype {step.dtype}")
    if is_traced(step):
        return ensure(omega_fn(step), step >= 1, message)
    host = np.asarray(step)
    if host.size and host.min() < 1:
        raise ValueError(f"{message}, got {host.min()}")
    return omega_fn(step)


def _float_dtype():
    """The default floating dtype (float64 when ``jax_enable_x64`` is on, else float32)."""
    return jnp.result_type(float)


def _unit_interval(name: str, value: ArrayLike) -> Array:
    as_scalar(name, value)  # a finite real scalar (its message first), then in [0, 1):
    return as_fraction(name, value, closed=False)  # the value as given, checked now if concrete


def static_count(name: str, value: object, minimum: int = 0) -> int:
    """``value`` as a Python int ``≥ minimum`` (a count of steps, knots, …), else a
    ``ValueError`` naming ``name``: Python and numpy integers pass; bools, floats (even 2.0),
    strings, ``None`` and traced values are refused, and so are counts past the largest index
    of the default integer dtype (int32 without ``jax_enable_x64``)."""
    if is_traced(value):
        raise ValueError(f"{name} must be a static Python int, got a traced value")
    count = as_int(name, value, minimum=minimum)
    index = jnp.result_type(int)
    if count >= jnp.iinfo(index).max:
        raise ValueError(f"{name} must be below {jnp.iinfo(index).max} (steps are indexed in "
                         f"{jnp.dtype(index).name}), got {count}")
    return count



def _static_horizon(value: object) -> int:
    if is_traced(value):
        raise ValueError("horizon must be a static Python int here; for a traced horizon use "
                         "kernel_weights(kernel, horizon, num_steps)")
    return static_count("horizon", value, 1)
