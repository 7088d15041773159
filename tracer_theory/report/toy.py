"""The toy experiment's figures (notebook 03), read from the JSON that ``tracer-theory toy``
writes, and their verdicts against the paper's toy table (``PAPER_TOY``)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np

from ..deep.finetune.strategies import REGISTRY, WeightDecay
from ..errors import InputError
from .result import Result
from .style import REFERENCE_LINE, color, label, subplots

PANELS = (("forgetting", "gray-MNIST forgetting (points)"),
          ("id_acc", "ColoredMNIST ID accuracy (%)"),
          ("ood_flipped_acc", "OOD accuracy, p = 0.05 (%)"),
          ("id_ece", "ID expected calibration error"))
SD = ("static_sd", "ema_sd", "wma_sd")


class PaperTable(NamedTuple):
    """The paper's toy table (MNIST → ColoredMNIST): the pretrained model's gray zero-shot
    accuracy (%) and each strategy's forgetting (points of it), listed from most to least
    forgetting, which is the ordering the paper states."""

    pretrained_zero_shot: float
    forgetting: dict[str, float]
    dynamic_momentum: float  # the paper's "dynamic SD" teacher: an EMA with this momentum


#: The paper's toy table, the one place its numbers are written. Its "dynamic SD" (an EMA
#: teacher with momentum 0.99999) is compared with our ``ema_sd``.
PAPER_TOY = PaperTable(
    pretrained_zero_shot=96.8,
    forgetting={"direct": 37.9, "l2sp": 13.6, "static_sd": 1.8, "ema_sd": 0.1},
    dynamic_momentum=0.99999,
)
#: A measured mean matches a number of the paper when it is within this many standard
#: deviations over our seeds of it (one seed has no spread, so nothing matches then).
MATCH_STDS = 2.0


def load_payload(results: str | Path, name: str) -> dict[str, Any]:
    """``<results>/<name>.json``, or the quick run's ``<name>_quick.json`` when only that exists;
    FileNotFoundError naming both otherwise, ``InputError`` naming the file when it is not a
    toy results file."""
    results = Path(results)
    for candidate in (results / f"{name}.json", results / f"{name}_quick.json"):
        if candidate.exists():
            try:
                payload = json.loads(candidate.read_text())
            except (OSError, UnicodeDecodeError, ValueError) as err:
                raise InputError(f"{candidate} is not readable JSON ({err})") from None
            missing = [k for k in ("config", "summary", "runs", "pretrained")
                       if not isinstance(payload, dict) or k not in payload]
            if missing:
                raise InputError(f"{candidate} is not a results file of `tracer-theory toy` "
                                 f"(no {', '.join(missing)})")
            return payload
    raise FileNotFoundError(f"no toy results {name}.json (or {name}_quick.json) in {results}; "
                            "run `tracer-theory toy` (or `tracer-theory toy --quick`) first, or "
                            "pass --toy-results DIR (notebooks: TRACER_TOY_RESULTS=DIR)")


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


def within(mean: float, std: float, reference: float) -> bool:
    """Whether ``mean`` (± ``std`` over seeds) matches ``reference``: |mean − reference| ≤
    ``MATCH_STDS``·std."""
    return abs(mean - reference) <= MATCH_STDS * std


def _predicts_no_orthogonal(name: str) -> bool:
    """Whether the linear theory predicts no orthogonal change for a registered strategy: all
    but weight decay, which decays toward 0 and so erases ``W⁰(I − P)`` (THEORY §3.3)."""
    return not isinstance(REGISTRY[name].strategy, WeightDecay) if name in REGISTRY else True


def _ema_momentum(payload: dict[str, Any]) -> float | None:
    """The momentum our ``ema_sd`` teacher ran with, from the payload's strategy descriptions
    (``None`` when the run has no ``ema_sd``)."""
    if "ema_sd" not in payload.get("runs", {}):
        return None
    try:
        return float(payload["config"]["strategies"]["ema_sd"]["teacher"]["momentum"])
    except (KeyError, TypeError):
        raise ValueError("the toy results name no EMA momentum for ema_sd (config → strategies "
                         "→ ema_sd → teacher → momentum): rerun `tracer-theory toy`") from None


def paper_comparison(payload: dict[str, Any]) -> dict[str, Any]:
    """The measured forgetting against ``PAPER_TOY``: the ordering verdict (every pair the
    paper orders is ordered the same way by our means), the magnitude verdict (every paper
    number matched ``within`` our seeds' spread, the pretrained zero-shot accuracy included),
    and, when a WMA teacher ran, whether it forgot less than EMA beyond that spread.

    Returns ``{"rows": {strategy: (mean, std, paper)}, "pretrained": (mean, std, paper),
    "ordering": bool, "violations": [(higher, lower)], "magnitudes": bool,
    "mismatches": [strategy], "wma_vs_ema": "less" | "tie" | "more" | None, "agrees": bool}``.
    """
    summary = payload["summary"]
    rows = {n: (*_stat(payload, n, "forgetting"), paper)
            for n, paper in PAPER_TOY.forgetting.items() if n in summary}
    pretrained = (*_stat(payload, "pretrained", "gray_acc"), PAPER_TOY.pretrained_zero_shot)
    order = list(rows)  # the paper's order, most forgetting first
    violations = [(hi, lo) for i, hi in enumerate(order) for lo in order[i + 1:]
                  if not rows[hi][0] > rows[lo][0]]
    mismatches = [n for n, (m, s, paper) in {"pretrained": pretrained, **rows}.items()
                  if not within(m, s, paper)]
    wma_vs_ema = None
    if {"wma_sd", "ema_sd"} <= set(summary):
        (wma, wma_std), (ema, ema_std) = (_stat(payload, n, "forgetting")
                                          for n in ("wma_sd", "ema_sd"))
        spread = MATCH_STDS * max(wma_std, ema_std)
        wma_vs_ema = "less" if wma < ema - spread else "more" if wma > ema + spread else "tie"
    ordering, magnitudes = len(rows) >= 2 and not violations, bool(rows) and not mismatches
    return {"rows": rows, "pretrained": pretrained, "ordering": ordering,
            "violations": violations, "magnitudes": magnitudes, "mismatches": mismatches,
            "wma_vs_ema": wma_vs_ema,
            "agrees": ordering and magnitudes and wma_vs_ema in (None, "less")}


def _paper_claim(with_wma: bool) -> str:
    names = {"ema_sd": f"dynamic SD (EMA, m = {PAPER_TOY.dynamic_momentum:g})"}
    table = " > ".join(f"{names.get(n, label(n))} {v:g}"
                       for n, v in PAPER_TOY.forgetting.items())
    return (f"in the paper's toy table forgetting is {table} points, from a pretrained "
            f"zero-shot accuracy of {PAPER_TOY.pretrained_zero_shot:g}%"
            + ("; TRACER's WMA teacher forgets less than EMA" if with_wma else "")
            + " (THEORY §6)")


def _paper_finding(payload: dict[str, Any], comparison: dict[str, Any]) -> str:
    rows, seeds = comparison["rows"], len(payload["config"]["seeds"])
    momentum = _ema_momentum(payload)

    names = {} if momentum is None else {"ema_sd": f"{label('ema_sd')} (m = {momentum:g})"}

    def name(n: str) -> str:
        return names.get(n, label(n))

    def verdict(ok: bool) -> str:
        return "agrees" if ok else "disagrees"

    pairs = ", ".join(f"{name(n)} {m:.1f} ± {s:.1f} vs {paper:g}"
                      for n, (m, s, paper) in rows.items())
    m, s, paper = comparison["pretrained"]
    ours = " > ".join(f"{label(n)} {rows[n][0]:.1f}"
                      for n in sorted(rows, key=lambda n: -rows[n][0]))
    broken = ", ".join(f"{label(hi)} {rows[hi][0]:.1f} {'<' if rows[hi][0] < rows[lo][0] else '='}"
                       f" {label(lo)} {rows[lo][0]:.1f}" for hi, lo in comparison["violations"])
    values = {"pretrained": comparison["pretrained"], **rows}
    off = ", ".join(f"{'pretrained zero-shot' if n == 'pretrained' else label(n)} "
                    f"{values[n][0]:.1f} vs {values[n][2]:g}" for n in comparison["mismatches"])
    text = (f"forgetting in points, ours (mean ± std over {seeds} seed{'s' * (seeds > 1)}) vs "
            f"the paper's: {pairs}; pretrained zero-shot {m:.1f} ± {s:.1f}% vs {paper:g}%; "
            f"ordering: {verdict(comparison['ordering'])} (ours {ours}"
            + (f"; {broken}" if broken else "") + "); "
            f"magnitudes (match: within {MATCH_STDS:g} std over seeds): "
            f"{verdict(comparison['magnitudes'])}" + (f" ({off})" if off else ""))
    if comparison["wma_vs_ema"] is not None:
        (wm, ws), (em, es) = (_stat(payload, n, "forgetting") for n in ("wma_sd", "ema_sd"))
        text += (f"; WMA vs EMA: {verdict(comparison['wma_vs_ema'] == 'less')} "
                 f"({label('wma_sd')} {wm:.1f} ± {ws:.1f} vs {label('ema_sd')} {em:.1f} ± "
                 f"{es:.1f}: "
                 + {"less": "less", "more": "more",
                    "tie": f"a tie within {MATCH_STDS:g} std"}[comparison["wma_vs_ema"]] + ")")
    return text


def summary_figure(payload: dict[str, Any]) -> Result:
    """Bars (mean ± std over seeds) of forgetting, ID/OOD accuracy and ECE per strategy, with
    the paper's forgetting marked; the finding compares the forgetting with ``PAPER_TOY``
    (ordering and magnitudes separately, ``paper_comparison``)."""
    names = [k for k in payload["summary"] if k != "pretrained"]
    fig, axes = subplots(1, len(PANELS), figsize=(4.2 * len(PANELS),
                                                      0.32 * len(names) + 1.6), sharey=True)
    for ax, (metric, title) in zip(axes, PANELS, strict=True):
        stats = [_stat(payload, n, metric) for n in names]
        ax.barh(range(len(names)), [m for m, _ in stats], xerr=[s for _, s in stats],
                color=[color(n) for n in names])
        ax.set_xlabel(title)
        ax.grid(axis="x", alpha=0.3)
    paper = [(i, PAPER_TOY.forgetting[n]) for i, n in enumerate(names)
             if n in PAPER_TOY.forgetting]
    if paper:
        axes[0].plot([v for _, v in paper], [i for i, _ in paper], "kD", ms=5,
                     label="paper's toy table")
        axes[0].legend(fontsize=8, loc="lower right")
    axes[0].set_yticks(range(len(names)), [label(n) for n in names])
    axes[0].invert_yaxis()
    fig.suptitle(figure_title(payload))
    fig.tight_layout()
    comparison = paper_comparison(payload)
    return Result(fig, _paper_claim(comparison["wma_vs_ema"] is not None),
                  _paper_finding(payload, comparison),
                  comparison["agrees"], comparison)


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
            ax.semilogy(steps, mean, "o-", ms=3, color=color(name), label=label(name))
            # ± std, its lower edge kept within a decade of the mean on the log axis
            ax.fill_between(steps, np.maximum(mean - std, mean / 10), mean + std,
                            color=color(name), alpha=0.2)
        kept = [r["gap"]["logit_kl"]["final_over_peak"] for r in records]
        ratios[name] = (float(np.mean(kept)), float(np.std(kept)))
    axes[0].set(xlabel="finetuning steps", ylabel="‖θ_student − θ_teacher‖ (image tower)",
                title="teacher–student parameter distance")
    axes[1].set(xlabel="finetuning steps", ylabel="KL(teacher ‖ student) of zero-shot logits",
                title="teacher–student zero-shot logit KL")
    for ax in axes:
        ax.grid(alpha=0.3, which="both")
        ax.legend()
    fig.suptitle(figure_title(payload))
    fig.tight_layout()
    text = "final logit-KL gap over its peak (mean ± std over seeds): " + ", ".join(
        f"{label(n)} {m:.2f} ± {sd:.2f}" for n, (m, sd) in ratios.items())
    agrees = False
    if {"ema_sd", "wma_sd"} <= set(ratios):
        (wma, wma_std), (ema, ema_std) = ratios["wma_sd"], ratios["ema_sd"]
        margin = MATCH_STDS * max(wma_std, ema_std)
        agrees = wma > ema + margin
        text += (f"; WMA keeps more of its gap than EMA: {'agrees' if agrees else 'disagrees'} "
                 f"(difference {wma - ema:+.2f}, "
                 + ("beyond" if agrees else "within") + f" {MATCH_STDS:g} std = {margin:.2f})")
    return Result(fig, "in the deep model too, the EMA teacher tracks the student (its gap "
                       "shrinks) while the WMA teacher keeps a gap (THEORY §4, §6)",
                  text, agrees, {"final_over_peak": ratios})


def _per_seed(payload: dict[str, Any], strategy: str, metric: str) -> np.ndarray:
    return np.array([float(r[metric]) for r in payload["runs"][strategy].values()])


def decomposition_figure(payload: dict[str, Any]) -> Result:
    """Task-subspace vs orthogonal change of the image projection (the deep ``W_I``) per
    strategy, against the linear theory's prediction (orthogonal change 0 except weight decay).
    Strategies that leave the projection exactly unchanged (no gradient reaches it under the
    objective) say nothing about its geometry and are left out of the verdict, which asks every
    other strategy but weight decay for an orthogonal share within ``MATCH_STDS`` std over
    seeds of 0."""
    names = [n for n in payload["runs"] if "proj_task_change" in next(iter(
        payload["runs"][n].values()))]
    task = np.array([_stat(payload, n, "proj_task_change")[0] for n in names])
    orth = np.array([_stat(payload, n, "proj_orthogonal_change")[0] for n in names])
    moved = task + orth > 0
    share = {}  # per strategy that moved the projection: (mean, std) over seeds
    for n in (n for n, m in zip(names, moved, strict=True) if m):
        t, o = _per_seed(payload, n, "proj_task_change"), _per_seed(payload, n,
                                                                     "proj_orthogonal_change")
        per_seed = o / np.where(t + o > 0, t + o, np.nan)
        share[n] = (float(np.nanmean(per_seed)), float(np.nanstd(per_seed)))
    fig, axes = subplots(1, 2, figsize=(13, 4.6))
    x = np.arange(len(names))
    axes[0].bar(x - 0.2, task, 0.4, color=[color(n) for n in names],
                label="task subspace ‖ΔW_I P‖")
    axes[0].bar(x + 0.2, orth, 0.4, color=[color(n) for n in names], alpha=0.45, hatch="//",
                label="orthogonal ‖ΔW_I (I − P)‖")
    axes[0].set(ylabel="change / ‖W_I⁰‖", title="measured change of the image projection")
    axes[0].legend()
    axes[1].bar([names.index(n) for n in share], [m for m, _ in share.values()],
                yerr=[sd for _, sd in share.values()], color=[color(n) for n in share],
                label="measured (mean ± std)")
    zero = [i for i, n in enumerate(names) if n in share and _predicts_no_orthogonal(n)]
    axes[1].plot(zero, np.zeros(len(zero)), "k_", ms=20, mew=2,
                 label="linear theory (0; weight decay > 0)")
    for i in np.flatnonzero(~moved):
        axes[1].annotate("unchanged", (i, 0), xytext=(0, 4), textcoords="offset points",
                         rotation=90, ha="center", va="bottom", fontsize=8,
                         color=REFERENCE_LINE)
    axes[1].set(ylabel="orthogonal share of the change",
                title="orthogonal share: deep model vs linear prediction")
    top = max((m + sd for m, sd in share.values()), default=1.0)
    axes[1].set_ylim(0, 1.3 * top)  # headroom for the legend
    axes[1].legend()
    for ax in axes:
        ax.set_xticks(x, [label(n) for n in names], rotation=35, ha="right")
        ax.set_xlim(-0.6, len(names) - 0.4)
        ax.grid(axis="y", alpha=0.3)
    fig.suptitle(figure_title(payload))
    fig.tight_layout()
    kept = {n: v for n, v in share.items() if _predicts_no_orthogonal(n)}
    off = {n: v for n, v in kept.items() if not within(*v, 0.0)}
    unchanged = [label(n) for n, m in zip(names, moved, strict=True) if not m]
    text = (f"the projection does not move at all under {', '.join(unchanged)} (no gradient "
            "reaches it under this objective); " if unchanged else "")
    if kept:
        text += ("where it moves, its orthogonal share is "
                 + ", ".join(f"{label(n)} {m:.2f} ± {sd:.2f}" for n, (m, sd) in kept.items())
                 + f" against the linear theory's 0 (match: within {MATCH_STDS:g} std over "
                 f"seeds): {'disagrees' if off else 'agrees'}"
                 + (" (the features move during finetuning, which the linearization holds "
                    "fixed)" if off else ""))
    else:
        text += "no strategy but weight decay moves it, so there is nothing to compare"
    return Result(fig, "outside weight decay, finetuning moves W_I only inside the task subspace "
                       "of the pretrained features (THEORY §3, linearized)",
                  text, bool(kept) and not off,
                  {"names": names, "task": task, "orthogonal": orth, "share": share,
                   "unchanged": [n for n, m in zip(names, moved, strict=True) if not m]})
