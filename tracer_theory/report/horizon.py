"""The long-horizon study's figures (``tracer-theory horizon``, notebook 03), read from the JSON
it writes: forgetting against the horizon T with the linear theory's prediction beside it, and
the gap and forgetting curves over training on one time axis."""

from __future__ import annotations

from typing import Any

import numpy as np

from .result import Result
from .style import color, label, subplots

TEACHERS = ("static_sd", "ema_sd", "ema999_sd", "wma_sd")
CLAIM = ("an EMA teacher collapses onto the student, so over long horizons EMA SD's forgetting "
         "grows toward Direct FT's, while the WMA teacher keeps a gap and forgets less")


def _title(setting: str) -> str:
    objective, _, noise = setting.partition("_noise")
    return f"{objective} objective, label noise {float(noise):g}"


def _findings(payload: dict[str, Any]) -> tuple[str, bool]:
    """The measured verdicts in one sentence per setting, and whether they bear the claim out
    (EMA SD's forgetting rises with T and WMA SD is below EMA SD at the longest T, in every
    setting)."""
    horizons = payload["config"]["horizons"]
    summary = payload["summary"]
    agrees, parts = True, []
    for setting, per in summary.items():
        if "ema_sd" not in per or "wma_sd" not in per:
            continue
        ema = [per["ema_sd"][str(t)]["forgetting"]["mean"] for t in horizons]
        wma = per["wma_sd"][str(horizons[-1])]["forgetting"]["mean"]
        rises = ema[-1] > ema[0]
        below = wma < ema[-1]
        agrees &= rises and below
        parts.append(f"{_title(setting)}: {label('ema_sd')} {ema[0]:.1f} → {ema[-1]:.1f} points "
                     f"from T={horizons[0]} to T={horizons[-1]}, {label('wma_sd')} {wma:.1f} at "
                     f"T={horizons[-1]}")
    return "; ".join(parts), agrees


def forgetting_figure(payload: dict[str, Any]) -> Result:
    """Forgetting (gray zero-shot accuracy drop, points; mean ± std over seeds) against the
    horizon T (log scale) per strategy, one panel per (objective, label noise); the linear
    theory's prediction dashed."""
    summary, theory = payload["summary"], payload["theory"]
    settings = list(summary)
    fig, axes = subplots(1, len(settings), figsize=(4.6 * len(settings), 4.0), squeeze=False)
    for ax, setting in zip(axes[0], settings, strict=True):
        for name, per_t in summary[setting].items():
            ts = [int(t) for t in per_t]
            mean = [per_t[str(t)]["forgetting"]["mean"] for t in ts]
            std = [per_t[str(t)]["forgetting"]["std"] for t in ts]
            hue, name_label = color(name), label(name, full=True)
            ax.errorbar(ts, mean, yerr=std, color=hue, marker="o", ms=4, capsize=2,
                        label=name_label)
            pred = [theory[setting][name][str(t)]["predicted_forgetting"] for t in ts]
            ax.plot(ts, pred, color=hue, ls="--", lw=1, alpha=0.8)
        ax.set_xscale("log")
        ax.set_xlabel("finetuning horizon T (steps)")
        ax.set_title(_title(setting), fontsize=10)
        ax.grid(alpha=0.3)
    axes[0][0].set_ylabel("forgetting (points); dashed: linear theory")
    axes[0][-1].legend(fontsize=7, loc="best")
    fig.tight_layout()
    finding, agrees = _findings(payload)
    return Result(fig, CLAIM, finding, agrees, {"settings": settings})


def _mean_curve(curves: dict[str, Any], key: str) -> tuple[np.ndarray, np.ndarray]:
    per_seed = list(curves.values())
    steps = np.asarray(per_seed[0]["steps"])
    return steps, np.mean([np.asarray(c[key], float) for c in per_seed], axis=0)


def curves_figure(payload: dict[str, Any]) -> Result:
    """Over training, on one time axis (log steps), for the longest horizon: the teachers'
    logit-KL gap to the student (top), the forgetting on the gray probe (middle, every
    strategy) and the linear theory's gap ``‖(W − T)X_I‖`` (bottom); one column per setting."""
    curves, theory = payload["curves"], payload["theory"]
    longest = str(payload["config"]["horizons"][-1])
    settings = list(curves)
    fig, axes = subplots(3, len(settings), figsize=(4.6 * len(settings), 9.5), squeeze=False,
                         sharex=True)
    for j, setting in enumerate(settings):
        for name, runs in curves[setting].items():
            if longest not in runs:
                continue
            hue, name_label = color(name), label(name, full=True)
            steps, forgetting = _mean_curve(runs[longest], "forgetting")
            axes[1][j].plot(steps, forgetting, color=hue, label=name_label)
            if name in TEACHERS:
                _, kl = _mean_curve(runs[longest], "logit_kl")
                axes[0][j].plot(steps, np.maximum(kl, 1e-12), color=hue,
                                label=name_label)
                pred = theory[setting][name][longest]
                if "gap_curve" in pred:  # from the first recorded step (step 0 has no gap)
                    axes[2][j].plot(pred["curve_steps"][1:], pred["gap_curve"][1:],
                                    color=hue, label=name_label)
        axes[0][j].set_title(_title(setting), fontsize=10)
        axes[0][j].set_yscale("log")
        axes[2][j].set_yscale("log")
        for ax in axes[:, j]:
            ax.set_xscale("log")
            ax.grid(alpha=0.3)
        axes[2][j].set_xlabel("finetuning step")
    axes[0][0].set_ylabel("teacher–student logit KL")
    axes[1][0].set_ylabel("forgetting on the gray probe (points)")
    axes[2][0].set_ylabel("linear theory: ‖(W − T)X_I‖")
    axes[1][-1].legend(fontsize=7, loc="best")
    fig.tight_layout()
    finding, agrees = _findings(payload)
    return Result(fig, CLAIM, finding, agrees, {"horizon": int(longest)})


def horizon_figures(payload: dict[str, Any]) -> dict[str, Result]:
    """``{"forgetting": ..., "curves": ...}``: the study's two figures."""
    return {"forgetting": forgetting_figure(payload), "curves": curves_figure(payload)}
