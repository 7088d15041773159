"""The figure of a ``tracer-theory finetune`` run set, read from its ``summary.json``: forgetting
against in-distribution accuracy per strategy with the WiSE-FT curve, and (with ``--theory``)
the predicted against the measured forgetting."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from .result import Result
from .style import color, label, subplots


def _accuracy_metric(payload: dict[str, Any]) -> str:
    """The accuracy the figure plots: the first in-distribution set's (else the first non-proxy
    set's, else the first proxy set's zero-shot accuracy)."""
    evals = payload["task"]["evals"]
    for role in ("id", "shifted"):
        for name, r in evals.items():
            if r == role:
                return f"{name}_acc"
    return f"{payload['proxy']}_zs_acc"


def task_figure(payload: dict[str, Any]) -> Result:
    """Forgetting (x) against accuracy (y), mean ± std over seeds, one point per strategy, the
    WiSE-FT α grid joined from the pretrained model to Direct FT; a second panel with the
    theory's predicted forgetting against the measured one when the payload has it."""
    summary, metric = payload["summary"], _accuracy_metric(payload)
    theory = payload.get("theory")
    fig, axes = subplots(1, 2 if theory else 1, figsize=(11 if theory else 5.8, 4.4),
                         squeeze=False)
    ax = axes[0][0]
    points = {}
    for name, metrics in summary.items():
        if name == "pretrained" or metric not in metrics:
            continue
        (f, fs), (a, as_) = metrics["forgetting"], metrics[metric]
        points[name] = (f, a)
        if not name.startswith("wise_ft"):
            ax.errorbar(f, a, xerr=fs, yerr=as_, fmt="o", color=color(name), label=label(name),
                        capsize=2)
    wise = sorted((float(n[8:-1]), p) for n, p in points.items() if n.startswith("wise_ft"))
    if wise and "direct" in points:
        curve = [*(p for _, p in wise), points["direct"]]
        ax.plot([p[0] for p in curve], [p[1] for p in curve], "--", marker="s", ms=3,
                color=color("wise_ft"),
                label=f"{label('wise_ft')} α = {', '.join(f'{a:g}' for a, _ in wise)}")
    ax.set_xlabel(f"forgetting: zero-shot accuracy drop on {payload['proxy']!r} (points)")
    ax.set_ylabel(metric.replace("_acc", "") + " accuracy (%)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    finding = ", ".join(f"{label(n)} {p[0]:.1f}" for n, p in points.items()
                        if not n.startswith("wise_ft"))
    if theory:
        tx = axes[0][1]
        for point in theory["points"]:
            tx.plot(point["predicted_forgetting"], point["measured_forgetting"], "o",
                    color=color(point["strategy"]), label=label(point["strategy"]))
        tx.set_xlabel("predicted forgetting (linear theory at the checkpoint, points)")
        tx.set_ylabel("measured forgetting (points)")
        rho = theory["spearman_predicted_forgetting"]
        tx.set_title(f"Spearman ρ = {'n/a' if rho is None else f'{rho:+.2f}'} "
                     f"({len(theory['points'])} strategies)")
        tx.grid(alpha=0.3)
        tx.legend(fontsize=7)
    checkpoint = Path(payload["checkpoint"]).name if payload["checkpoint"] else "checkpoint"
    fig.suptitle(f"{checkpoint} finetuned on {payload['task']['name']}, "
                 f"seeds {list(payload['config']['seeds'])}", fontsize=9)
    fig.tight_layout()
    regularized = [n for n in ("l2sp", "static_sd", "ema_sd", "wma_sd") if n in points]
    agrees = "direct" in points and all(points["direct"][0] >= points[n][0] for n in regularized)
    return Result(fig, "Direct FT forgets more than the regularized strategies (L2-SP, "
                       "self-distillation)", f"forgetting (points): {finding}", agrees,
                  {"points": points})


__all__ = ["task_figure"]
