"""Collapse diagnostics of a teacher–student gap curve, for linear and deep runs alike."""

from __future__ import annotations

import equinox as eqx
import jax.numpy as jnp
from jaxtyping import Array, ArrayLike, Float


class CollapseDiagnostics(eqx.Module):
    """How fast and how far a teacher–student gap collapses.

    ``peak`` the largest gap and ``peak_step`` where it occurs; ``half_life`` the number of steps
    from the peak until the gap first falls to half the peak (``inf`` if it never does);
    ``normalized_auc`` the area under the gap curve over steps, divided by ``peak × span``
    (1 for a gap that stays at its peak, → 0 for an instant collapse); ``final`` the last gap
    divided by the peak. Arrays carry any leading batch shape of the input.
    """

    peak: Float[Array, "*b"]
    peak_step: Float[Array, "*b"]
    half_life: Float[Array, "*b"]
    normalized_auc: Float[Array, "*b"]
    final: Float[Array, "*b"]


def collapse_diagnostics(gap: Float[ArrayLike, "*b R"], steps: Float[ArrayLike, " R"],
                         stop: Float[ArrayLike, "*b"] | None = None) -> CollapseDiagnostics:
    """Diagnostics of ``gap`` (..., R) recorded at increasing ``steps`` (R,); see the class.

    ``stop`` (optional, one per curve) ignores the records after that step, for runs of
    different lengths stacked into one array.
    """
    gap, steps = jnp.asarray(gap), jnp.asarray(steps)
    if steps.ndim != 1 or gap.shape[-1] != steps.shape[0] or steps.shape[0] < 2:
        raise ValueError(f"gap (..., R) and steps (R,) must agree with R >= 2, got gap "
                         f"{gap.shape} and steps {steps.shape}")
    steps = steps.astype(gap.dtype)
    stop = steps[-1] if stop is None else jnp.asarray(stop, gap.dtype)
    stop = jnp.broadcast_to(stop, gap.shape[:-1])[..., None]
    valid = jnp.broadcast_to(steps, gap.shape) <= stop  # (..., R)
    masked = jnp.where(valid, gap, -jnp.inf)
    i_peak = jnp.argmax(masked, axis=-1)
    peak = jnp.max(masked, axis=-1)
    peak_step = steps[i_peak]
    idx = jnp.broadcast_to(jnp.arange(gap.shape[-1]), gap.shape)
    below = valid & (gap <= 0.5 * peak[..., None]) & (idx > i_peak[..., None])
    first = jnp.argmax(below, axis=-1)
    half_life = jnp.where(jnp.any(below, axis=-1), steps[first] - peak_step, jnp.inf)
    both = valid[..., 1:] & valid[..., :-1]
    widths = jnp.broadcast_to(jnp.diff(steps), both.shape)
    area = jnp.sum(jnp.where(both, 0.5 * (gap[..., 1:] + gap[..., :-1]) * widths, 0.0), axis=-1)
    span = stop[..., 0] - steps[0]
    last = jnp.sum(valid, axis=-1) - 1
    final_gap = jnp.take_along_axis(gap, last[..., None], axis=-1)[..., 0]
    ok = (peak > 0) & (span > 0)
    safe_peak = jnp.where(peak > 0, peak, 1.0)
    return CollapseDiagnostics(
        peak=peak, peak_step=peak_step, half_life=half_life,
        normalized_auc=jnp.where(ok, area / (safe_peak * jnp.where(span > 0, span, 1.0)), 0.0),
        final=jnp.where(peak > 0, final_gap / safe_peak, 0.0))
