"""Collapse diagnostics of a teacher–student gap curve, for linear and deep runs alike."""

from __future__ import annotations

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, ArrayLike, Bool, Float

from .._validation import ensure, is_traced


class CollapseDiagnostics(eqx.Module):
    """How fast and how far a teacher–student gap collapses (the collapse of THEORY §4.4, as
    measured in THEORY §6.3).

    ``peak`` the largest gap and ``peak_step`` where it occurs; ``half_life`` the number of steps
    from the peak until the gap first falls to half the peak (``inf`` if it never does);
    ``normalized_auc`` the area under the gap curve over steps, divided by ``peak × span``
    (1 for a gap that stays at its peak, → 0 for an instant collapse); ``final`` the last gap
    divided by the peak. Arrays carry any leading batch shape of the input.

    A curve with a NaN or ±Inf among its records (a diverged run) has no meaningful
    diagnostics: every field of that curve is NaN, never a number that reads as a collapse.
    """

    peak: Float[Array, "*b"]
    peak_step: Float[Array, "*b"]
    half_life: Float[Array, "*b"]
    normalized_auc: Float[Array, "*b"]
    final: Float[Array, "*b"]


def collapse_diagnostics(gap: Float[ArrayLike, "*b R"], steps: Float[ArrayLike, " R"],
                         stop: Float[ArrayLike, "*b"] | None = None) -> CollapseDiagnostics:
    """Diagnostics of ``gap`` (..., R) recorded at increasing ``steps`` (R,); see the class.
    Returns a ``CollapseDiagnostics`` whose fields have the leading shape ``...`` of ``gap``
    (THEORY §4.4, §6.3).

    ``stop`` (optional, one per curve) ignores the records after that step, for runs of
    different lengths stacked into one array; it must be finite and at least ``steps[0]``.
    ``steps`` must be finite and strictly increasing. Curves with a non-finite gap among their
    records (up to ``stop``) get NaN diagnostics.
    """
    gap = _real("gap", gap)
    if not jnp.issubdtype(gap.dtype, jnp.floating):
        gap = gap.astype(jnp.result_type(float))
    steps = _real("steps", steps)
    if steps.ndim != 1 or gap.ndim < 1 or gap.shape[-1] != steps.shape[0] or steps.shape[0] < 2:
        raise ValueError(f"gap (..., R) and steps (R,) must agree with R >= 2, got gap "
                         f"{gap.shape} and steps {steps.shape}")
    steps = steps.astype(gap.dtype)
    steps = ensure(steps, jnp.isfinite(steps) & jnp.concatenate(
        [jnp.ones(1, bool), steps[1:] > steps[:-1]]),
        f"steps must be finite and strictly increasing, got {_show_array(steps)}")
    if stop is not None:
        stop = _real("stop", stop).astype(gap.dtype)
        try:
            stop = jnp.broadcast_to(stop, gap.shape[:-1])
        except ValueError:
            raise ValueError(f"stop must be a scalar or one value per curve "
                             f"{gap.shape[:-1]}, got shape {stop.shape}") from None
        stop = ensure(stop, jnp.isfinite(stop) & (stop >= steps[0]),
                      f"stop must be finite and >= steps[0], got {_show_array(stop)}")
    return unchecked_collapse_diagnostics(gap, steps, stop)


class GapTrace(eqx.Module):
    """The running state of ``collapse_diagnostics`` over a gap curve seen a block of records at
    a time (``trace_start``, ``trace_update``, ``trace_end``): O(1) memory, not the whole curve.

    Fields (any batch shape): ``peak`` the largest finite gap so far and ``peak_step`` its
    (first) step; ``half_step`` the first later step whose gap is ``≤ peak/2`` (``inf`` while
    there is none); ``area`` the trapezoid area so far; ``last_gap``, ``last_step`` the latest
    record within ``stop``; ``broken`` whether a non-finite gap was seen within ``stop``.
    """

    peak: Float[Array, "*b"]
    peak_step: Float[Array, "*b"]
    half_step: Float[Array, "*b"]
    area: Float[Array, "*b"]
    last_gap: Float[Array, "*b"]
    last_step: Float[Array, "*b"]
    broken: Bool[Array, "*b"]


def trace_start(gap: Float[Array, "*b"], step: Float[ArrayLike, "*b"]) -> GapTrace:
    """The trace after the first record ``gap`` at ``step`` (which must be within ``stop``)."""
    bad = ~jnp.isfinite(gap)
    gap = jnp.where(bad, 0, gap)
    step = jnp.broadcast_to(jnp.asarray(step, gap.dtype), gap.shape)
    return GapTrace(peak=gap, peak_step=step, half_step=jnp.full_like(gap, jnp.inf),
                    area=jnp.zeros_like(gap), last_gap=gap, last_step=step, broken=bad)


def trace_update(trace: GapTrace, gaps: Float[Array, " K *b"], steps: Float[ArrayLike, " K *b"],
                 stop: Float[ArrayLike, "*b"]) -> GapTrace:
    """The trace after K more records ``gaps`` at ``steps`` (increasing, after the previous
    records; (K,) or one per curve); records past ``stop`` are ignored. The definitions of
    ``CollapseDiagnostics``, vectorized over the K records."""
    steps = jnp.asarray(steps, gaps.dtype)
    if steps.ndim == 1:
        steps = steps.reshape((-1,) + (1,) * (gaps.ndim - 1))
    steps = jnp.broadcast_to(steps, gaps.shape)
    stop = jnp.broadcast_to(jnp.asarray(stop, gaps.dtype), gaps.shape[1:])
    valid = steps <= stop[None]  # a prefix of the records: steps increase
    bad = ~jnp.isfinite(gaps)
    gaps = jnp.where(bad, 0, gaps)
    masked = jnp.where(valid, gaps, -jnp.inf)
    i_max = jnp.argmax(masked, axis=0)  # the first maximum of the block
    # A new peak only if strictly larger (the first maximum of the whole curve); then the search
    # for the half-way step starts again after it, else it goes on over the whole block.
    block_peak = jnp.max(masked, axis=0)
    new_peak = block_peak > trace.peak
    peak = jnp.where(new_peak, block_peak, trace.peak)
    at = jnp.arange(gaps.shape[0]).reshape((-1,) + (1,) * (gaps.ndim - 1))
    below = valid & (~new_peak[None] | (at > i_max[None])) & (gaps <= 0.5 * peak[None])
    half_step = jnp.where(new_peak, jnp.inf, trace.half_step)
    first = _take(steps, jnp.argmax(below, axis=0))
    half_step = jnp.where(jnp.isinf(half_step) & jnp.any(below, axis=0), first, half_step)
    previous_gap = jnp.concatenate([trace.last_gap[None], gaps[:-1]])
    previous_step = jnp.concatenate([trace.last_step[None], steps[:-1]])
    area = jnp.sum(jnp.where(valid, 0.5 * (gaps + previous_gap) * (steps - previous_step), 0.0),
                   axis=0)
    last = jnp.sum(valid, axis=0) - 1
    any_valid = last >= 0
    last = jnp.maximum(last, 0)
    return GapTrace(
        peak=peak, peak_step=jnp.where(new_peak, _take(steps, i_max), trace.peak_step),
        half_step=half_step, area=trace.area + area,
        last_gap=jnp.where(any_valid, _take(gaps, last), trace.last_gap),
        last_step=jnp.where(any_valid, _take(steps, last), trace.last_step),
        broken=trace.broken | jnp.any(valid & bad, axis=0))


def _take(x: Array, i: Array) -> Array:
    """``x[i_b, b]`` for each trailing index b: (K, *b) and (*b) → (*b)."""
    return jnp.take_along_axis(x, i[None], axis=0)[0]


def trace_end(trace: GapTrace, first_step: Float[ArrayLike, "*b"],
              stop: Float[ArrayLike, "*b"]) -> CollapseDiagnostics:
    """The ``CollapseDiagnostics`` of a traced curve whose first record was at ``first_step``
    (the same whether the curve was traced in one block or many, the area up to round-off)."""
    dtype = trace.peak.dtype
    span = jnp.asarray(stop, dtype) - jnp.asarray(first_step, dtype)
    peak = trace.peak
    ok = (peak > 0) & (span > 0)
    safe_peak = jnp.where(peak > 0, peak, 1.0)
    out = CollapseDiagnostics(
        peak=peak, peak_step=trace.peak_step, half_life=trace.half_step - trace.peak_step,
        normalized_auc=jnp.where(ok, trace.area / (safe_peak * jnp.where(span > 0, span, 1.0)),
                                 0.0),
        final=jnp.where(peak > 0, trace.last_gap / safe_peak, 0.0))
    return jax.tree.map(lambda x: jnp.where(trace.broken, jnp.nan, x).astype(dtype), out)


@eqx.filter_jit
def unchecked_collapse_diagnostics(gap: Array, steps: Array,
                                   stop: Array | None) -> CollapseDiagnostics:
    """``collapse_diagnostics`` on checked arrays (also traced): the whole curve as one block of
    the running trace (``trace_start``, ``trace_update``, ``trace_end``), the one place the
    definitions are written."""
    stop = jnp.broadcast_to(steps[-1] if stop is None else stop, gap.shape[:-1])
    trace = trace_start(gap[..., 0], steps[0])
    trace = trace_update(trace, jnp.moveaxis(gap[..., 1:], -1, 0), steps[1:], stop)
    return trace_end(trace, steps[0], stop)


def _real(name: str, value: ArrayLike) -> Array:
    """``value`` as a real (integer or floating) jax array, else a ``ValueError`` naming it."""
    if not is_traced(value):
        try:
            value = jnp.asarray(value)
        except (TypeError, ValueError) as err:
            raise ValueError(f"{name} must be a real array, got {type(value).__name__}: "
                             f"{err}") from None
    if not (jnp.issubdtype(value.dtype, jnp.floating) or jnp.issubdtype(value.dtype, jnp.integer)):
        raise ValueError(f"{name} must be a real array, got dtype {value.dtype}")
    return value


def _show_array(x: Array) -> str:
    return "<traced>" if is_traced(x) else np.array2string(np.asarray(x), threshold=8)
