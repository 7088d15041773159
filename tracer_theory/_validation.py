"""Argument checks shared by every public constructor and solver.

Concrete values are checked eagerly and fail with a ``ValueError`` that names the argument.
Traced values (inside ``jit``/``vmap``/``grad``) cannot be inspected in Python, so the same
condition is attached to the value with ``eqx.error_if`` and fails when the computation runs.
"""

from __future__ import annotations

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, ArrayLike


def is_traced(x: object) -> bool:
    """True when ``x`` is an abstract value inside a jax transformation."""
    return isinstance(x, jax.core.Tracer)


def ensure(x: Array, ok: ArrayLike, message: str) -> Array:
    """Return ``x`` unchanged if ``ok`` holds everywhere, else fail with ``message``.

    Raises ``ValueError`` when ``ok`` is concrete; attaches a run-time check otherwise.
    """
    if is_traced(ok) or is_traced(x):
        return eqx.error_if(x, ~jnp.all(jnp.asarray(ok)), message)
    if not bool(np.all(np.asarray(ok))):
        raise ValueError(message)
    return x


def as_float_matrix(name: str, value: ArrayLike, expected: str) -> Array:
    """Convert ``value`` to a 2-D floating jax array or raise a ``ValueError`` naming ``name``.

    ``expected`` describes the wanted shape, e.g. ``"(d_I, n)"``. The dtype is kept as given
    (numpy float64 stays float64 when x64 is enabled); integer or complex input is refused.
    """
    arr = jnp.asarray(value)
    if arr.ndim != 2:
        raise ValueError(f"{name} must be a 2-D array of shape {expected}, got shape {arr.shape}")
    if not jnp.issubdtype(arr.dtype, jnp.floating):
        raise ValueError(f"{name} must have a floating dtype, got {arr.dtype}")
    if arr.size == 0:
        raise ValueError(f"{name} must not be empty, got shape {arr.shape}")
    return ensure(arr, jnp.isfinite(arr), f"{name} contains NaN or Inf; all entries must be finite")


def as_scalar(name: str, value: ArrayLike, *, minimum: float | None = None,
              strict: bool = False, integer: bool = False) -> Array:
    """Convert a hyper-parameter to a 0-d array, checking finiteness and a lower bound.

    ``strict`` makes the bound exclusive (``value > minimum``). ``integer`` requires an integer
    value (a step count). Returns a 0-d array (weakly typed for Python numbers).
    """
    arr = jnp.asarray(value)
    if arr.ndim != 0:
        raise ValueError(f"{name} must be a scalar, got shape {arr.shape}")
    if integer and not jnp.issubdtype(arr.dtype, jnp.integer):
        raise ValueError(f"{name} must be an integer, got {value!r} of dtype {arr.dtype}")
    ok = jnp.isfinite(arr) if not integer else jnp.asarray(True)
    relation = ""
    if minimum is not None:
        ok = ok & ((arr > minimum) if strict else (arr >= minimum))
        relation = f" {'>' if strict else '>='} {minimum}"
    shown = value if is_traced(value) else np.asarray(value).item()
    return ensure(arr, ok, f"{name} must be finite{relation}, got {shown}")
