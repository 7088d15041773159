"""Comparisons of finetuning runs (``loop.Run``) shared by the loop's tests."""

from __future__ import annotations

import equinox as eqx
import jax
import numpy as np

from tracer_theory.deep.finetune.loop import CURVES


def leaves(model) -> list[np.ndarray]:
    """Every inexact array leaf of ``model``, as NumPy."""
    return [np.asarray(x) for x in jax.tree.leaves(eqx.filter(model, eqx.is_inexact_array))]


def relative_difference(a, b, start) -> float:
    """‖a − b‖ / ‖a − start‖ over all parameters (how far apart two runs ended, relative to how
    far they moved)."""
    diff = sum(float(np.sum((x - y).astype(np.float64) ** 2))
               for x, y in zip(leaves(a), leaves(b), strict=True))
    moved = sum(float(np.sum((x - y).astype(np.float64) ** 2))
                for x, y in zip(leaves(a), leaves(start), strict=True))
    assert moved > 0, "the run did not move the model"
    return (diff / moved) ** 0.5


def assert_identical_runs(a, b) -> None:
    """Bit-identical runs: every parameter, every curve and every snapshot."""
    for x, y in zip(leaves(a.model), leaves(b.model), strict=True):
        np.testing.assert_array_equal(x, y)
    assert set(a.curves) == set(b.curves) == set(CURVES)
    for k in CURVES:
        np.testing.assert_array_equal(a.curves[k], b.curves[k], err_msg=k)
    assert set(a.snapshots) == set(b.snapshots)
    for step in a.snapshots:
        for x, y in zip(leaves(a.snapshots[step]), leaves(b.snapshots[step]), strict=True):
            np.testing.assert_array_equal(x, y)
