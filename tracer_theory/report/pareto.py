"""The forgetting–fit figure (``tracer-theory pareto``), read from the JSON it writes: per
problem, every strategy's (task loss, forgetting) curve over λ, the oracle frontier over
per-direction filters, and the paper's and the designed teachers at the target task loss."""

from __future__ import annotations

from typing import Any

import numpy as np

from ..deep.studies.pareto import DESIGNED, label_of
from .result import Result
from .style import HIGHLIGHT, INK, REFERENCE_LINE, color, subplots

CLAIM = ("the WMA teacher with a U-shaped Beta(0.5, 0.5) kernel regularizes better than an EMA "
         "teacher; no claim is made on how far any teacher is from the best achievable "
         "trade-off")
MARKERS = {"beta": "^", "grid": "*", "ema": "v", "scheduled_ema": "<", "directional": "D"}


def _finding(payload: dict[str, Any]) -> tuple[str, bool]:
    """Per problem: the paper's WMA and EMA teachers over the oracle at the target, the best
    designed teacher, replay-SD; whether WMA forgets less than EMA everywhere."""
    parts, agrees = [], True
    for name, r in payload["problems"].items():
        at, designed = r["at_target"], r["designed"]
        best = min((k for k in DESIGNED if k in designed), key=lambda k: designed[k]["ratio"])
        agrees &= at["wma_sd"]["ratio"] <= at["ema_sd"]["ratio"]
        parts.append(f"{name}: WMA {at['wma_sd']['ratio']:.2f}×, EMA {at['ema_sd']['ratio']:.2f}×"
                     f" the oracle; best designed {label_of(best)} {designed[best]['ratio']:.2f}×; "
                     f"{label_of('replay_sd')} {at['replay_sd']['ratio']:.2g}×")
    return "; ".join(parts), agrees


def pareto_figure(payload: dict[str, Any]) -> Result:
    """One column per problem. Top: forgetting (log) against the task loss as the fraction of
    the way from Direct FT's (0) to W⁰'s (1): each strategy's λ curve, the oracle frontier
    (black) and, at the target task loss (dotted), the paper's teachers (circles) and the
    designed ones (red markers). Bottom: each curve's forgetting over the oracle's at the same
    task loss (1 = on the frontier; replay-SD goes below it)."""
    problems = payload["problems"]
    fig, axes = subplots(2, len(problems), figsize=(4.3 * len(problems), 7.6), squeeze=False,
                         height_ratios=(3, 2))
    for j, (name, r) in enumerate(problems.items()):
        floor, span = r["floor"], r["w0_task_loss"] - r["floor"]

        def fraction(values, floor=floor, span=span):
            return (np.asarray(values) - floor) / span

        top, bottom = axes[0][j], axes[1][j]
        oracle = r["oracle"]
        top.plot(fraction(oracle["task_loss"]), oracle["forgetting"], color=INK, lw=2.4,
                 label="oracle (per-direction filters)", zorder=3)
        for key, curve in r["curves"].items():
            style = {"color": color(key), "lw": 1.4,
                     "ls": "--" if key == "replay_sd" else "-", "label": label_of(key)}
            top.plot(fraction(curve["task_loss"]), curve["forgetting"], **style)
            bottom.plot(fraction(curve["task_loss"]), curve["ratio"], **style)
        for ax in (top, bottom):
            ax.axvline(fraction(r["target"]), color=REFERENCE_LINE, ls=":", lw=1)
            ax.set_xlim(0, 1)
            ax.set_yscale("log")
        for key, point in r["at_target"].items():
            top.plot(fraction([point["task_loss"]]), [point["forgetting"]], "o",
                     color=color(key), ms=6, mec=INK, mew=0.6, zorder=4)
        for key, point in r["designed"].items():
            for ax, value in ((top, point["forgetting"]), (bottom, point["ratio"])):
                ax.plot(fraction([point["task_loss"]]), [value], MARKERS[key], color=HIGHLIGHT,
                        ms=8 if key == "grid" else 6, mec=INK, mew=0.6, zorder=5,
                        label=f"designed: {label_of(key)}")
        bottom.axhline(1.0, color=INK, lw=1.2)
        positive = [v for c in r["curves"].values() for v in c["forgetting"] if v > 0]
        top.set_ylim(max(min(positive), 1e-4 * max(positive)), 2 * max(positive))
        bottom.set_ylim(0.03, 100)
        top.set_title(f"{name} (T = {r['steps']})", fontsize=10)
        bottom.set_xlabel("task loss: Direct FT (0) → W⁰ (1)")
        if j == 0:
            top.set_ylabel("forgetting ‖(W − W⁰) X_pre‖²")
            bottom.set_ylabel("forgetting / oracle's")
    axes[0][0].legend(fontsize=7, loc="lower left")
    fig.tight_layout()
    finding, agrees = _finding(payload)
    return Result(fig, CLAIM, finding, agrees, {"problems": list(problems)})
