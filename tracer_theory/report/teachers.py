"""The teacher-comparison study's figure (``tracer-theory teachers``), read from the JSON it
writes: forgetting against ID accuracy, one curve per strategy over its λ grid (seed means with
the seed std as error bars), the validation-chosen point of each circled, Direct FT as a point,
and the equal-ID-accuracy line of the comparison."""

from __future__ import annotations

from typing import Any

from matplotlib.lines import Line2D

from ..deep.studies.teachers import comparisons
from .result import Result
from .style import COLORS, FALLBACK, REFERENCE_LINE, SPARE_COLORS, label, subplots

CLAIM = ("(the hypothesis this study tests, not a claim of the paper) a teacher designed on the "
         "linearization forgets less in the real network than WMA Beta(0.5, 0.5) and EMA SD at "
         "equal ID accuracy")


def _label(name: str) -> str:
    """A strategy's label with its hyperparameters spelled out (``WMA SD Beta(0.5, 0.5)``)."""
    return label(name, full=True)


def _finding(summary: dict[str, Any]) -> tuple[str, bool]:
    """The comparisons in words, and whether the designed teacher forgets less than both WMA
    SD and EMA SD at equal ID accuracy (on every seed)."""
    parts, agrees = [], False
    for name, against in comparisons(summary).items():
        if against is None:
            parts.append(f"{_label(name)}: not run" + (" (no designed kernel given, so the "
                                                        "claim is untested)"
                                                        if name == "designed_sd" else ""))
            continue
        phrases = {"less": "forgets less than", "more": "forgets more than",
                   "unclear": "is not clearly different from",
                   None: "is not comparable (ID range) with"}
        words = ", ".join(f"{phrases[w]} {_label(o)}" for o, (_, w) in against.items())
        parts.append(f"{_label(name)} {words}")
        if name == "designed_sd":
            agrees = bool(against) and all(w == "less" for _, w in against.values())
    if "equal_id" in summary:
        parts.append(f"at ID accuracy {summary['equal_id']['id_acc']:.2f}%")
    return "; ".join(parts) or "no comparison", agrees


def teachers_figure(payload: dict[str, Any]) -> Result:
    """Forgetting (gray zero-shot accuracy drop, points) against ID test accuracy (%), one curve
    per strategy over its λ grid in λ order (seed mean ± std on both axes), the
    validation-chosen λ circled, Direct FT a cross, and the equal-ID line (the reference's
    chosen point) dotted."""
    summary = payload["summary"]
    fig, ax = subplots(1, 1, figsize=(7.0, 5.0))
    spare = iter(SPARE_COLORS)
    colors = {name: COLORS.get(name) or next(spare, FALLBACK) for name in summary["strategies"]}
    for name, row in summary["strategies"].items():
        color = colors[name]
        curve = row["curve"]
        x = [m["id_acc"]["mean"] for m in curve.values()]
        y = [m["forgetting"]["mean"] for m in curve.values()]
        ax.errorbar(x, y, xerr=[m["id_acc"]["std"] for m in curve.values()],
                    yerr=[m["forgetting"]["std"] for m in curve.values()], color=color,
                    marker="o", ms=4, capsize=2, lw=1.2, label=_label(name))
        for lam, xi, yi in zip(curve, x, y, strict=True):
            ax.annotate(f"λ={lam}", (xi, yi), xytext=(7, 5), textcoords="offset points",
                        fontsize=6, color=color)
        chosen = row["chosen"]
        ax.scatter([chosen["id_acc"]["mean"]], [chosen["forgetting"]["mean"]], s=160,
                   facecolors="none", edgecolors=color, linewidths=2, zorder=5)
    if "direct" in summary:
        d = summary["direct"]
        ax.errorbar([d["id_acc"]["mean"]], [d["forgetting"]["mean"]], xerr=[d["id_acc"]["std"]],
                    yerr=[d["forgetting"]["std"]], color=COLORS["direct"], marker="X", ms=8,
                    capsize=2, ls="none", label=_label("direct"))
    handles, labels = ax.get_legend_handles_labels()
    handles.append(Line2D([], [], ls="none", marker="o", ms=11, mfc="none", mec=FALLBACK, mew=2))
    labels.append("validation-chosen λ")
    if "equal_id" in summary:
        e = summary["equal_id"]
        ax.axvline(e["id_acc"], color=REFERENCE_LINE, ls=":", lw=1)
        handles.append(Line2D([], [], color=REFERENCE_LINE, ls=":", lw=1))
        labels.append(f"equal ID accuracy ({_label(e['reference'])}, "
                      f"λ = {e['reference_lam']:g})")
        for name, row in e["strategies"].items():
            if row["forgetting"] is not None and not row.get("reference"):
                ax.plot([e["id_acc"]], [row["forgetting"]["mean"]], ls="none", marker="D",
                        ms=6, mfc="white", mec=colors[name], mew=1.5, zorder=6)
        handles.append(Line2D([], [], ls="none", marker="D", ms=6, mfc="white", mec=FALLBACK,
                              mew=1.5))
        labels.append("interpolated at equal ID accuracy")
    ax.legend(handles, labels, fontsize=7, loc="best")
    ax.set_xlabel("ID test accuracy (%)")
    ax.set_ylabel("forgetting (gray zero-shot test accuracy drop, points)")
    seeds = payload.get("config", {}).get("seeds")
    ax.set_title("forgetting vs ID accuracy over the λ grid"
                 + (f" ({len(seeds)} seed{'s' * (len(seeds) > 1)})" if seeds else ""),
                 fontsize=10)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    finding, agrees = _finding(summary)
    return Result(fig, CLAIM, finding, agrees,
                  {"strategies": list(summary["strategies"]),
                   "id_acc": summary.get("equal_id", {}).get("id_acc")})
