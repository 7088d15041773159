"""Argument checks shared by every public constructor and solver.

Concrete values are checked eagerly and fail with a ``ValueError`` that names the argument, also
when they are converted inside ``jit`` (a constant is checked on the host at trace time). Traced
values (inside ``jit``/``vmap``/``grad``) cannot be inspected in Python, so the same condition is
attached to the value with ``eqx.error_if`` and fails when the computation runs. That run-time
check is a host callback, and JAX never writes a program holding one to its persistent
compilation cache: solvers that build strategies or schedules from traced values inside their
own compiled loop (``sweep``, ``pareto``) collect those conditions with ``with_deferred_checks``
instead and act on them after the run.
"""

from __future__ import annotations

import contextvars
from collections.abc import Callable, Sequence
from typing import Any

import equinox as eqx
import jax
import jax.extend
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, ArrayLike, PyTree

#: Floating dtypes the solvers support (LAPACK's SVD has no float16/bfloat16 kernels).
SUPPORTED_FLOATS = (jnp.float32, jnp.float64)


def is_traced(x: object) -> bool:
    """True when ``x`` is an abstract value inside a jax transformation."""
    return isinstance(x, jax.core.Tracer)


def show(x: object) -> str:
    """A value for an error message: the number, or ``<traced>`` inside a transformation."""
    if is_traced(x):
        return "<traced>"
    arr = np.asarray(x)
    if arr.ndim == 0 and arr.dtype.kind in "fiub":
        return repr({"f": float, "b": bool}.get(arr.dtype.kind, int)(arr))
    return repr(x)


#: While ``with_deferred_checks`` runs: the trace it runs at and the conditions collected there.
_DEFERRED: contextvars.ContextVar[tuple[object, list[Array]] | None] = contextvars.ContextVar(
    "tracer_theory_deferred_checks", default=None)


def _trace_state() -> object:
    return jax.extend.core.get_opaque_trace_state(convention="flax")


def with_deferred_checks(fn: Callable[..., Any], *args: Any) -> tuple[Any, Array]:
    """``fn(*args)`` with the library's checks of traced values *at this trace level* collected
    instead of compiled as run-time checks: ``(its result, whether every one held)``, a 0-d
    bool the caller returns from the same trace and acts on. Concrete checks still raise at
    once, and a check inside a transformation ``fn`` opens itself (an inner ``jit``, ``vmap``,
    ``scan``) stays a run-time check: its value belongs to that inner trace. (A program with a
    run-time check holds a host callback, and JAX never caches such a program.)"""
    checks: list[Array] = []
    token = _DEFERRED.set((_trace_state(), checks))
    try:
        out = fn(*args)
    finally:
        _DEFERRED.reset(token)
    return out, jnp.all(jnp.stack([jnp.asarray(True), *checks]))


def _defer(ok: ArrayLike) -> bool:
    """Collect ``ok`` when ``with_deferred_checks`` runs at the current trace level; whether it
    was collected."""
    open_block = _DEFERRED.get()
    if open_block is None or open_block[0] != _trace_state():
        return False
    open_block[1].append(jnp.all(jnp.asarray(ok)))
    return True


def ensure(x: Array, ok: ArrayLike, message: str) -> Array:
    """Return ``x`` unchanged if ``ok`` holds everywhere, else fail with ``message``.

    Raises ``ValueError`` when ``ok`` is concrete (also for a traced ``x``: the condition is
    known now); attaches a run-time check when ``ok`` is traced. A run-time check is a host
    callback, and JAX never caches a program that holds one.
    """
    if is_traced(ok):
        return x if _defer(ok) else eqx.error_if(x, ~jnp.all(jnp.asarray(ok)), message)
    if not bool(np.all(np.asarray(ok))):
        raise ValueError(message)
    return x


def ensure_each(x: PyTree, checks: Sequence[tuple[ArrayLike, str]]) -> PyTree:
    """``ensure`` for several ``(ok, message)`` pairs at once; the first failing one is reported.

    ``x`` may be any pytree (a result to return). Concrete conditions are fetched from the
    device together, in one transfer, and raise a ``ValueError``; traced ones become a single
    run-time check attached to every leaf of ``x``.
    """
    passed = _passed([ok for ok, _ in checks])  # one dispatch, one transfer
    messages = [message for _, message in checks]
    if is_traced(passed):
        if _defer(passed):
            return x
        return eqx.branched_error_if(x, ~jnp.all(passed), jnp.argmin(passed), messages)
    for ok, message in zip(np.asarray(passed), messages, strict=True):
        if not ok:
            raise ValueError(message)
    return x


@jax.jit
def _passed(oks: list[ArrayLike]) -> Array:
    """Whether each condition holds everywhere, stacked: shape (len(oks),)."""
    return jnp.stack([jnp.all(jnp.asarray(ok)) for ok in oks])


def all_finite(x: ArrayLike) -> Array:
    """True when every entry of ``x`` is finite (a 0-d boolean array)."""
    return jnp.all(jnp.isfinite(x))


def not_finite(what: str, dtype: object, hint: str) -> str:
    """The message for a result that overflowed: names ``what`` and says what to rescale."""
    return f"{what} is not finite: it overflowed {jnp.dtype(dtype).name}; {hint}"


def _condition(value: object, arr: Array, condition) -> ArrayLike:
    """``condition(arr, jnp)``; when that is traced although ``value`` was concrete (a constant
    converted inside ``jit``), ``condition`` of the value on the host in ``arr``'s dtype, so that
    the check runs now and no run-time check is compiled for a constant."""
    ok = condition(arr, jnp)
    if is_traced(ok) and not is_traced(value):
        ok = condition(np.asarray(value).astype(arr.dtype), np)
    return ok


def _to_array(name: str, value: object, what: str) -> Array:
    if is_traced(value) or isinstance(value, jax.Array):
        return value  # type: ignore[return-value]
    if isinstance(value, int | float) and not isinstance(value, bool):
        _fits(name, np.asarray(value))
        try:
            return jnp.asarray(value)  # weakly typed: adopts the problem's dtype
        except OverflowError as err:
            raise ValueError(f"{name} is out of range: {err}") from None
    try:
        host = np.asarray(value)
    except (TypeError, ValueError, OverflowError) as err:
        raise ValueError(f"{name} must be {what}, got {type(value).__name__}: {err}") from None
    if host.dtype.kind not in "biufc":
        raise ValueError(f"{name} must be {what}, got a value of dtype {host.dtype}")
    _fits(name, host)
    try:
        return jnp.asarray(host)
    except OverflowError as err:
        raise ValueError(f"{name} is out of range: {err}") from None


def _fits(name: str, host: np.ndarray) -> None:
    """A ``ValueError`` when a finite float of ``host`` would overflow the dtype JAX stores it
    in (float64 becomes float32 without ``jax_enable_x64``), before the cast turns it into Inf."""
    if host.dtype.kind != "f":
        return
    target = jax.dtypes.canonicalize_dtype(host.dtype)
    if target == host.dtype or host.size == 0:
        return
    finite = np.abs(host[np.isfinite(host)])
    largest = float(np.finfo(target).max)
    if finite.size and float(finite.max()) > largest:
        raise ValueError(f"{name} holds {float(finite.max()):g}, which overflows "
                         f"{np.dtype(target).name} (the largest is {largest:.4g}; enable "
                         "jax_enable_x64 for float64)")


def as_float_matrix(name: str, value: ArrayLike, expected: str) -> Array:
    """Convert ``value`` to a 2-D float32/float64 jax array or raise a ``ValueError`` naming it.

    ``expected`` describes the wanted shape, e.g. ``"(d_I, n)"``. The dtype is kept as given
    (numpy float64 stays float64 when x64 is enabled); other dtypes are refused, not cast.
    """
    arr = _to_array(name, value, f"a 2-D array of shape {expected}")
    if arr.ndim != 2:
        raise ValueError(f"{name} must be a 2-D array of shape {expected}, got shape {arr.shape}")
    if arr.dtype not in SUPPORTED_FLOATS:
        raise ValueError(f"{name} must have dtype float32 or float64, got {arr.dtype}")
    if arr.size == 0:
        raise ValueError(f"{name} must not be empty, got shape {arr.shape}")
    return ensure(arr, _condition(value, arr, lambda v, xp: xp.isfinite(v)),
                  f"{name} contains NaN or Inf; all entries must be finite")


def as_scalar(name: str, value: ArrayLike, *, minimum: float | None = None,
              strict: bool = False, integer: bool = False) -> Array:
    """Convert a hyper-parameter to a 0-d real array, checking finiteness and a lower bound.

    ``strict`` makes the bound exclusive (``value > minimum``). ``integer`` requires an integer
    value (a step count). Returns a 0-d array (weakly typed for Python numbers).
    """
    arr = _real_scalar(name, value, integer=integer)

    def condition(v, xp):
        ok = xp.isfinite(v) if not integer else xp.asarray(True)
        if minimum is not None:
            ok = ok & ((v > minimum) if strict else (v >= minimum))
        return ok

    relation = "" if minimum is None else f" {'>' if strict else '>='} {minimum}"
    return ensure(arr, _condition(value, arr, condition),
                  f"{name} must be finite{relation}, got {show(value)}")


def _real_scalar(name: str, value: ArrayLike, *, integer: bool = False) -> Array:
    """``value`` as a 0-d real (or ``integer``) array; refuses other shapes and dtypes."""
    kind = "an integer" if integer else "a real number"
    arr = _to_array(name, value, kind)
    if arr.ndim != 0:
        raise ValueError(f"{name} must be a scalar, got shape {arr.shape}")
    if arr.dtype == jnp.bool_ or (integer and not jnp.issubdtype(arr.dtype, jnp.integer)):
        raise ValueError(f"{name} must be {kind}, got {value!r} of dtype {arr.dtype}")
    if not (jnp.issubdtype(arr.dtype, jnp.integer) or jnp.issubdtype(arr.dtype, jnp.floating)):
        raise ValueError(f"{name} must be {kind}, got {value!r} of dtype {arr.dtype}")
    return arr


def as_fraction(name: str, value: ArrayLike, *, closed: bool = True) -> Array:
    """A real scalar in ``[0, 1]`` (``closed``) or ``[0, 1)``, e.g. a mixing weight; NaN and
    ±Inf are outside and refused with the same message."""
    arr = _real_scalar(name, value)
    inside = _condition(value, arr, lambda v, xp: (v >= 0) & ((v <= 1) if closed else (v < 1)))
    return ensure(arr, inside, f"{name} must be in [0, 1{']' if closed else ')'}, "
                               f"got {show(value)}")


def check_instance(name: str, value: object, cls: type) -> None:
    """Raise ``TypeError`` naming ``name`` unless ``value`` is a ``cls``."""
    if not isinstance(value, cls):
        raise TypeError(f"{name} must be a {cls.__name__}, got {type(value).__name__}")


def as_real_array(name: str, value: ArrayLike) -> Array:
    """``value`` as a real (floating or integer) jax array of any shape, else a ``ValueError``
    naming ``name``; traced values pass through (their dtype is still checked)."""
    arr = _to_array(name, value, "real numbers")
    if not (jnp.issubdtype(arr.dtype, jnp.floating) or jnp.issubdtype(arr.dtype, jnp.integer)):
        raise ValueError(f"{name} must be real numbers, got dtype {arr.dtype}")
    return arr


def as_vector(name: str, value: ArrayLike) -> Array:
    """``value`` as a non-empty 1-D real jax array (a grid, one weight per direction), else a
    ``ValueError`` naming ``name``; traced values pass through (shape and dtype still checked)."""
    arr = as_real_array(name, value)
    if arr.ndim != 1 or arr.shape[0] == 0:
        raise ValueError(f"{name} must be a non-empty 1-D array, got shape {arr.shape}")
    return arr


def ensure_entries(x: Array, ok: ArrayLike, message: str) -> Array:
    """``ensure`` for an array whose entries must each satisfy ``ok`` (``x``'s shape).

    ``message`` names the argument and holds the placeholders ``{index}`` and ``{value}``, e.g.
    ``"lams{index} must be finite and >= 0, got {value}"``. Concrete: a ``ValueError`` for the
    first bad entry (``lams[2] must be finite and >= 0, got nan``). Traced: a run-time check
    with the index left out and ``<traced>`` for the value.
    """
    if is_traced(ok):
        if _defer(ok):
            return x
        text = message.replace("{index}", "").replace("{value}", "<traced>")
        return eqx.error_if(x, ~jnp.all(jnp.asarray(ok)), text)
    bad = np.argwhere(~np.broadcast_to(np.asarray(ok, dtype=bool), np.shape(x)))
    if len(bad):  # (count, ndim): (1, 0) for a failing scalar
        where = tuple(int(i) for i in bad[0])
        index = f"[{', '.join(map(str, where))}]" if where else ""
        value = show(np.asarray(x)[where])
        raise ValueError(message.replace("{index}", index).replace("{value}", value))
    return x


def as_int(name: str, value: object, *, minimum: int) -> int:
    """A concrete integer ``>= minimum`` (a size, a count, a seed) as a Python int, else a
    ``ValueError`` naming ``name``; bools, floats and strings are refused, not rounded."""
    if isinstance(value, bool) or not isinstance(value, int | np.integer):
        raise ValueError(f"{name} must be an int, got {show(value)}")
    if value < minimum:
        kind = {0: "a non-negative int", 1: "a positive int"}.get(minimum, f"an int >= {minimum}")
        raise ValueError(f"{name} must be {kind}, got {show(value)}")
    return int(value)


def as_real(name: str, value: object, *, minimum: float) -> float:
    """A concrete finite real number ``>= minimum`` (a host-side setting, e.g. a decay rate) as
    a Python float, else a ``ValueError`` naming ``name`` and showing the value given."""
    try:
        host = np.asarray(value)
    except (TypeError, ValueError, OverflowError) as err:
        raise ValueError(f"{name} must be a real number, got {type(value).__name__}: {err}") \
            from None
    if host.ndim != 0 or host.dtype.kind not in "iuf":
        raise ValueError(f"{name} must be a real number, got {value!r}")
    number = float(host)
    if not (np.isfinite(number) and number >= minimum):
        raise ValueError(f"{name} must be >= {minimum:g} and finite, got {show(value)}")
    return number
