"""The toy experiment's figures (notebook 03), read from the JSON that ``run_toy`` writes."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from .result import Result
from .style import color, label, subplots

PANELS = (("forgetting", "gray-MNIST forgetting (points)"),
          ("id_acc", "ColoredMNIST ID accuracy (%)"),
          ("ood_flipped_acc", "OOD accuracy, p = 0.05 (%)"),
          ("id_ece", "ID expected calibration error"))
SD = ("static_sd", "ema_sd", "wma_sd")


def load_payload(results: str | Path, name: str) -> dict[str, Any]:
    """``<results>/<name>.json``, or the quick run's ``<name>_quick.json`` when only that exists;
    FileNotFoundError naming both otherwise."""
    results = Path(results)
    for candidate in (results / f"{name}.json", results / f"{name}_quick.json"):
        if candidate.exists():
            return json.loads(candidate.read_text())
    raise FileNotFoundError(f"no toy results {name}.json (or {name}_quick.json) in {results}; "
                            "run `tracer-theory toy` (or `tracer-theory toy --quick`) first")


def figure_title(payload: dict[str, Any]) -> str:
    config = payload["config"]
    seeds = config["seeds"]
    model = config.get("pretrain", {}).get("model", "toy")
    name = "toy CLIP" if model == "toy" else f"CLIP ({model} preset)"
    return (f"{name}, protocol {config['protocol']}, objective {config['objective']}, "
            f"seed{'s' if len(seeds) > 1 else ''} {', '.join(map(str, seeds))}"
            f"{' (quick)' if config.get('quick') else ''}")


def _stat(payload: dict[str, Any], strategy: str, metric: str) -> tuple[float, float]:
    mean, std = payload["summary"].get(strategy, {}).get(metric, (float("nan"), 0.0))
    return float(mean), float(std)


def summary_figure(payload: dict[str, Any]) -> Result:
    """Bars (mean ± std over seeds) of forgetting, ID/OOD accuracy and ECE per strategy."""
    names = [k for k in payload["summary"] if k != "pretrained"]
    fig, axes = subplots(1, len(PANELS), figsize=(4.2 * len(PANELS),
                                                      0.32 * len(names) + 1.6), sharey=True)
    for ax, (metric, title) in zip(axes, PANELS, strict=True):
        stats = [_stat(payload, n, metric) for n in names]
        ax.barh(range(len(names)), [m for m, _ in stats], xerr=[s for _, s in stats],
                color=[color(n) for n in names])
        ax.set_xlabel(title)
        ax.grid(axis="x", alpha=0.3)
    axes[0].set_yticks(range(len(names)), [label(n) for n in names])
    axes[0].invert_yaxis()
    fig.suptitle(figure_title(payload))
    fig.tight_layout()
    forget = {n: _stat(payload, n, "forgetting") for n in ("direct", "ema_sd", "wma_sd")
              if n in payload["summary"]}
    text = ", ".join(f"{label(n)} {m:.1f} ± {s:.1f}" for n, (m, s) in forget.items())
    if "wma_sd" in forget:
        claim = ("WMA SD (TRACER) forgets less of the pretraining task than Direct FT and EMA "
                 "SD (THEORY §6)")
        agrees = forget["wma_sd"][0] < forget["direct"][0] and (
            forget["wma_sd"][0] <= forget["ema_sd"][0])
    else:  # the original toy's strategies: no WMA teacher
        claim = "EMA SD forgets less of the pretraining task than Direct FT (THEORY §6)"
        agrees = forget["ema_sd"][0] < forget["direct"][0]
    ood = {n: _stat(payload, n, "ood_flipped_acc")[0] for n in forget}
    return Result(fig, claim,
                  f"forgetting in points: {text}; OOD accuracy "
                  + ", ".join(f"{label(n)} {v:.1f}%" for n, v in ood.items()),
                  bool(agrees), {"forgetting": forget, "ood": ood})


def gap_curves_figure(payload: dict[str, Any]) -> Result:
    """Teacher–student gap (parameter distance and zero-shot logit KL) over finetuning steps
    for the static, EMA and WMA teachers, mean ± std over seeds, log scale."""
    runs = payload["runs"]
    fig, axes = subplots(1, 2, figsize=(12, 4.3))
    ratios = {}
    for name in (n for n in SD if n in runs):
        records = list(runs[name].values())
        steps = np.asarray(records[0]["gap"]["curves"]["steps"])
        for ax, key in zip(axes, ("param_distance", "logit_kl"), strict=True):
            curves = np.array([r["gap"]["curves"][key] for r in records])
            mean, std = curves.mean(0), curves.std(0)
            ax.semilogy(steps, np.maximum(mean, 1e-12), "o-", ms=3, color=color(name),
                        label=label(name))
            ax.fill_between(steps, np.maximum(mean - std, 1e-12), mean + std,
                            color=color(name), alpha=0.2)
        ratios[name] = float(np.mean([r["gap"]["logit_kl"]["final_over_peak"]
                                      for r in records]))
    axes[0].set(xlabel="finetuning steps", ylabel="‖θ_student − θ_teacher‖ (image tower)",
                title="teacher–student parameter distance")
    axes[1].set(xlabel="finetuning steps", ylabel="KL(teacher ‖ student) of zero-shot logits",
                title="teacher–student zero-shot logit KL")
    for ax in axes:
        ax.grid(alpha=0.3, which="both")
        ax.legend()
    fig.suptitle(figure_title(payload))
    fig.tight_layout()
    has = {"ema_sd", "wma_sd"} <= set(ratios)
    return Result(fig, "in the deep model too, the EMA teacher tracks the student (its gap "
                       "shrinks) while the WMA teacher keeps a gap (THEORY §4, §6)",
                  "final logit-KL gap over its peak: "
                  + ", ".join(f"{label(n)} {v:.2f}" for n, v in ratios.items()),
                  bool(has and ratios["wma_sd"] > ratios["ema_sd"]), {"final_over_peak": ratios})


def decomposition_figure(payload: dict[str, Any]) -> Result:
    """Task-subspace vs orthogonal change of the image projection (the deep ``W_I``) per
    strategy, against the linear theory's prediction (orthogonal change 0 except weight decay)."""
    names = [n for n in payload["runs"] if "proj_task_change" in next(iter(
        payload["runs"][n].values()))]
    task = np.array([_stat(payload, n, "proj_task_change")[0] for n in names])
    orth = np.array([_stat(payload, n, "proj_orthogonal_change")[0] for n in names])
    share = orth / np.maximum(task + orth, 1e-30)
    fig, axes = subplots(1, 2, figsize=(13, 4.3))
    x = np.arange(len(names))
    axes[0].bar(x - 0.2, task, 0.4, color=[color(n) for n in names], label="task subspace")
    axes[0].bar(x + 0.2, orth, 0.4, color=[color(n) for n in names], alpha=0.45, hatch="//",
                label="orthogonal")
    axes[0].set(ylabel="‖ΔW_I·P‖ / ‖W_I⁰‖ (solid), ‖ΔW_I(I − P)‖ / ‖W_I⁰‖ (hatched)",
                title="measured change of the image projection")
    axes[0].legend()
    axes[1].bar(x, share, color=[color(n) for n in names], label="measured")
    predicted = np.array([np.nan if n == "weight_decay" else 0.0 for n in names])
    axes[1].plot(x, predicted, "k_", ms=20, mew=2, label="linear theory (0; weight decay > 0)")
    axes[1].set(ylabel="orthogonal share of the change", ylim=(0, 1),
                title="orthogonal share: deep model vs linear prediction")
    axes[1].legend()
    for ax in axes:
        ax.set_xticks(x, [label(n) for n in names], rotation=35, ha="right")
        ax.grid(axis="y", alpha=0.3)
    fig.suptitle(figure_title(payload))
    fig.tight_layout()
    kept = {n: s for n, s in zip(names, share, strict=True) if n != "weight_decay"}
    return Result(fig, "outside weight decay, finetuning moves W_I only inside the task subspace "
                       "of the pretrained features (THEORY §3, linearized)",
                  f"the orthogonal share of the projection's change is "
                  f"{min(kept.values()):.2f}..{max(kept.values()):.2f} across strategies "
                  "(features move during finetuning, which the linearization holds fixed)",
                  max(kept.values()) < 0.25, {"names": names, "task": task, "orthogonal": orth})
