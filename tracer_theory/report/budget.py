"""The error budget's figure (``tracer-theory budget``), read from the JSON it writes: per
objective, the forgetting of every point at each rung of the ladder (closed form, last layer →
real network), and the share of the parameter change in the tangent model's task subspace."""

from __future__ import annotations

from typing import Any

import numpy as np

from ..deep.finetune.strategies import REGISTRY
from ..deep.studies.budget import GD, RUNG_LABELS, largest_step
from .result import Result
from .style import INK, REFERENCE_LINE, subplots

CLAIM = ("the linear theory's closed form (last layer linear, features fixed) predicts how much "
         "each strategy forgets: at least its ranking of the points (Spearman ρ ≥ 0.5 with the "
         "measured forgetting, in every objective)")


def _finding(payload: dict[str, Any]) -> tuple[str, bool]:
    """Per objective: R0's and R0''s Spearman ρ with the measurement (R4), R0's mean error, and
    the step of the ladder that moves the prediction most; whether R0 ranks the points (ρ ≥
    0.5 everywhere)."""
    parts, agrees = [], True
    for objective, s in payload["summary"].items():
        rho = s["spearman_with_R4"]
        first, last = largest_step(s)
        move = s["mean_abs_step"][f"{first}->{last}"]
        agrees &= rho["R0"] is not None and rho["R0"] >= 0.5
        tangent = _fmt(rho["R0'"])
        parts.append(f"{objective}: R0 ρ = {_fmt(rho['R0'])}, mean |R0 − R4| = "
                     f"{s['mean_abs_error']['R0']:.1f} points; R0' ρ = {tangent}; "
                     f"largest step {first}→{last} ({move:.1f} points)")
    return "; ".join(parts), agrees


def _fmt(value: float | None) -> str:
    return "undefined" if value is None else f"{value:+.2f}"


def budget_figure(payload: dict[str, Any]) -> Result:
    """Top row: forgetting (points, mean ± std over seeds) at each rung, one line per point
    (registered λ solid, the λ grid dotted; colors of the strategy registry). Bottom row: the
    share of the parameter change in the tangent model's task subspace for the tangent model
    trained by gradient descent (the control) and by AdamW (R2), and the real network (R3), per
    point at its registered λ. One column per objective."""
    summary = payload["summary"]
    objectives = list(summary)
    fig, axes = subplots(2, len(objectives), figsize=(5.6 * len(objectives), 8.0),
                         squeeze=False, height_ratios=(3, 2))
    for j, objective in enumerate(objectives):
        s = summary[objective]
        rungs = s["rungs"]
        x = np.arange(len(rungs))
        ax = axes[0][j]
        registered = []
        for label, point in s["points"].items():
            entry = REGISTRY[point["strategy"]]
            main = label == point["strategy"]
            mean = [point[r]["forgetting"][0] for r in rungs]
            std = [point[r]["forgetting"][1] for r in rungs]
            if main:
                registered.append((point, entry))
                ax.errorbar(x, mean, yerr=std, color=entry.color, marker="o", ms=4, capsize=2,
                            label=entry.label)
            else:
                ax.plot(x, mean, color=entry.color, ls=":", lw=1, marker=".", alpha=0.7)
        ax.set_xticks(x, [f"{r}\n{RUNG_LABELS[r]}".replace(", ", ",\n") for r in rungs],
                      fontsize=7)
        ax.axhline(0, color=REFERENCE_LINE, lw=0.8)
        grid = any(label != point["strategy"] for label, point in s["points"].items())
        ax.set_title(f"{objective} objective" + (" (dotted: λ grid)" if grid else ""),
                     fontsize=10)
        ax.grid(alpha=0.3)
        bars = axes[1][j]
        width = 0.27
        for i, (point, entry) in enumerate(registered):
            for k, (rung, alpha, hatch) in enumerate(((GD, 1.0, "//"), ("R2", 1.0, None),
                                                      ("R3", 0.45, None))):
                frac = point.get(rung, {}).get("task_fraction")
                if frac is not None:
                    bars.bar(i + (k - 1) * width, frac[0], width, yerr=frac[1],
                             color=entry.color, alpha=alpha, hatch=hatch, edgecolor=INK,
                             lw=0.5)
        bars.set_xticks(np.arange(len(registered)),
                        [e.label for _, e in registered], fontsize=7, rotation=20)
        bars.set_ylim(0, 1.05)
        bars.axhline(1, color=REFERENCE_LINE, ls="--", lw=0.8)
        bars.set_title("task-subspace share: tangent by GD (hatched), by AdamW (R2), "
                       "network (R3, light)", fontsize=8)
        bars.grid(alpha=0.3, axis="y")
    axes[0][0].set_ylabel("forgetting: gray zero-shot drop (points)")
    axes[1][0].set_ylabel("share of ‖Δθ‖² in the row space of J")
    axes[0][-1].legend(fontsize=7, loc="best")
    fig.suptitle(f"error budget, {payload['config']['model']} model: from the closed form to the "
                 f"real network", fontsize=11)
    fig.tight_layout()
    finding, agrees = _finding(payload)
    return Result(fig, CLAIM, finding, agrees, {"objectives": objectives})
