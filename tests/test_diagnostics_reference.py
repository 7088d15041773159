"""Collapse diagnostics against an independent reference: the definitions of
``CollapseDiagnostics`` written as a plain Python loop over one hand-built or random gap curve,
for the stored-curve function and for the running trace fed in blocks. Curves on a grid of
eighths make exact ties and exact halves of the peak; steps start away from 0 and are unevenly
spaced; one curve's half-life lies between the steps where it falls to 0.55 and to 0.5 of its
peak, so a moved threshold changes the number."""

import itertools
import math
from types import SimpleNamespace

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import tracer_theory as tt
from tracer_theory.dynamics.diagnostics import trace_end, trace_start, trace_update

FIELDS = ("peak", "peak_step", "half_life", "normalized_auc", "final")


def reference(gap, steps, stop=None):
    """The diagnostics of one curve by their definitions, as a loop: the records up to ``stop``
    (all NaN if one is not finite); the first largest gap; the first later record at or below
    half of it; the trapezoid area over ``peak × (stop − steps[0])``; the last gap over the
    peak."""
    steps = [float(s) for s in steps]
    stop = steps[-1] if stop is None else float(stop)
    records = [(s, float(g)) for s, g in zip(steps, gap, strict=True) if s <= stop]
    if not all(math.isfinite(g) for _, g in records):
        return dict.fromkeys(FIELDS, math.nan)
    peak_step, peak = records[0]
    for s, g in records:
        if g > peak:
            peak_step, peak = s, g
    half_life = math.inf
    for s, g in records:
        if s > peak_step and g <= 0.5 * peak:
            half_life = s - peak_step
            break
    area = 0.0
    for (s0, g0), (s1, g1) in itertools.pairwise(records):
        area += 0.5 * (g0 + g1) * (s1 - s0)
    span = stop - steps[0]
    return {"peak": peak, "peak_step": peak_step, "half_life": half_life,
            "normalized_auc": area / (peak * span) if peak > 0 and span > 0 else 0.0,
            "final": records[-1][1] / peak if peak > 0 else 0.0}


#: Uneven steps that start at 3 (exact in binary): 3, 3.25, 3.75, 4.5, 5.5, 5.75, 6.25, ...
STEPS = 3.0 + np.r_[0.0, np.cumsum(0.25 * (1 + np.arange(29) % 4))]


def hand_curves():
    """``(gap (C, 30), stop (C,))``: the hand-built cases, each named."""
    s = STEPS
    cases = [
        # peak 2 at s[2]; ≤ 0.55·peak = 1.1 first at s[4], ≤ 0.5·peak = 1 first at s[6]
        ([0.2, 1.0, 2.0, 1.5, 1.08, 1.02, 0.9, 0.7, 0.5], s[-1]),
        ([0.0, 4.0, 2.0, 1.0, 1.0], s[-1]),  # exactly half the peak at the next record
        ([0.1, 0.3, 1.0, 2.0, 1.2, 0.9], s[-1]),  # records ≤ half the peak before it
        ([2.0, 1.5, 2.0, 0.9, 1.8], s[-1]),  # the first record is the peak; a later tie
        ([0.0, 2.0, 1.5, 2.0, 0.9, 1.8], s[-1]),  # a tie with the peak inside the curve
        ([0.0, 2.0, 0.5, 3.0, 2.0, 4.0, 2.5, 1.9], s[-1]),  # halves, then higher peaks
        ([0.0, 1.0, 0.9, 0.8], s[-1]),  # never halves
        ([0.0, 1.0, 0.4, 0.2, 0.1, np.nan], s[4]),  # NaN past stop: ignored
        ([0.0, 1.0, np.nan, 0.2], s[-1]),  # NaN within stop: all NaN
        ([1.5, 3.0, 1.0, 0.5], s[0]),  # stop at the first record: one record
        ([0.0, 4.0, 3.0, 1.0, 0.5], 0.5 * (s[3] + s[4])),  # stop between two records
        (np.zeros(30), s[-1]),  # flat zero: no peak to normalize by
    ]
    gap = np.stack([np.r_[g, np.full(30 - len(g), g[-1] if np.isfinite(g[-1]) else 0.1)]
                    for g, _ in cases])
    return gap, np.array([stop for _, stop in cases])


def random_curves(count=40):
    """Random curves on a grid of eighths (ties and exact halves), rising then collapsing,
    with random stops on, between and before the last records."""
    rng = np.random.default_rng(11)
    t = np.arange(30)
    rise = rng.integers(1, 10, count)[:, None]
    shape = np.minimum(t / rise, np.exp(-(t - rise) / rng.uniform(2, 10, (count, 1))))
    gap = np.round(8 * shape * rng.uniform(0.5, 1.5, (count, 30)) * 4) / 8
    stop = np.where(rng.random(count) < 0.5, STEPS[-1],
                    STEPS[rng.integers(1, 30, count)] - rng.choice([0.0, 0.125], count))
    return gap, stop


def assert_matches_reference(out, gap, stop):
    for i in range(gap.shape[0]):
        ref = reference(gap[i], STEPS, stop[i])
        for field in FIELDS:
            got = float(np.asarray(getattr(out, field))[i])
            np.testing.assert_allclose(got, ref[field], rtol=1e-12, atol=0,
                                       err_msg=f"{field} of curve {i}")


def test_half_life_between_the_0_55_and_0_5_thresholds():
    gap, _ = hand_curves()
    d = tt.collapse_diagnostics(gap[0], STEPS)
    # by hand: the peak 2 at STEPS[2] = 3.75; 0.9 ≤ 1 first at STEPS[6] = 6.25 (while 1.08 ≤ 1.1,
    # 0.55 of the peak, already at STEPS[4] = 5.5)
    assert STEPS[2] == 3.75 and STEPS[4] == 5.5 and STEPS[6] == 6.25
    assert float(d.peak) == 2.0 and float(d.peak_step) == 3.75
    assert float(d.half_life) == 6.25 - 3.75
    assert reference(gap[0], STEPS)["half_life"] == 2.5


@pytest.mark.parametrize("curves", [hand_curves, random_curves])
def test_collapse_diagnostics_match_a_plain_loop(curves):
    gap, stop = curves()
    out = tt.collapse_diagnostics(gap, STEPS, stop=stop)
    assert_matches_reference(out, gap, stop)
    # the same curves with a batch shape of two axes, and without stop
    folded = tt.collapse_diagnostics(gap.reshape(2, -1, 30), STEPS, stop=stop.reshape(2, -1))
    assert all(np.shape(getattr(folded, field)) == (2, gap.shape[0] // 2) for field in FIELDS)
    assert_matches_reference(SimpleNamespace(**{f: np.ravel(getattr(folded, f))
                                                for f in FIELDS}), gap, stop)
    whole = tt.collapse_diagnostics(gap, STEPS)
    assert_matches_reference(whole, gap, np.full(gap.shape[0], STEPS[-1]))


@pytest.mark.parametrize("block", [1, 3, 29])
def test_online_trace_in_blocks_matches_a_plain_loop(block):
    hand, hand_stop = hand_curves()
    rand, rand_stop = random_curves(12)
    gap, stop = np.concatenate([hand, rand]), np.concatenate([hand_stop, rand_stop])
    gap_j, steps_j, stop_j = jnp.asarray(gap), jnp.asarray(STEPS), jnp.asarray(stop)
    update = jax.jit(trace_update)
    trace = trace_start(gap_j[:, 0], steps_j[0])
    for i in range(1, 30, block):
        trace = update(trace, gap_j[:, i:i + block].T, steps_j[i:i + block], stop_j)
    assert_matches_reference(trace_end(trace, steps_j[0], stop_j), gap, stop)
