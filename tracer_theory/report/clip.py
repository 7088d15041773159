"""The CLIP experiment's comparison figure: forgetting predicted by the linear theory against
the forgetting measured, per strategy and λ."""

from __future__ import annotations

from typing import Any

from .result import Result
from .style import color, label, subplots
from .toy import figure_title


def theory_figure(payload: dict[str, Any]) -> Result:
    """Scatter of predicted vs measured forgetting (accuracy drop) and of the predicted logit
    change vs measured forgetting; one point per (strategy, λ), seed-averaged."""
    theory = payload["theory"]
    fig, axes = subplots(1, 2, figsize=(12, 4.6))
    seen = set()
    for t in theory["points"]:
        name = t["strategy"]
        kwargs = {"label": label(name)} if name not in seen else {}
        seen.add(name)
        for ax, key in zip(axes, ("predicted_forgetting", "predicted_logit_change"),
                           strict=True):
            ax.plot(t[key], t["measured_forgetting"], "o", color=color(name), ms=7, **kwargs)
            if t["lam_field"]:
                ax.annotate(f"{t['lam']:g}", (t[key], t["measured_forgetting"]), fontsize=7,
                            xytext=(4, 3), textcoords="offset points")
    rho_acc, rho_logit = (theory["spearman_predicted_forgetting"],
                          theory["spearman_predicted_logit_change"])

    def fmt(v):
        return "n/a" if v is None else f"{v:+.2f}"

    axes[0].set(xlabel="predicted forgetting (points, linearized W_I, features fixed)",
                ylabel="measured forgetting (points)",
                title=f"accuracy drop: Spearman ρ = {fmt(rho_acc)}")
    axes[1].set(xlabel="predicted relative change of the gray zero-shot logits",
                ylabel="measured forgetting (points)",
                title=f"logit change: Spearman ρ = {fmt(rho_logit)}")
    for ax in axes:
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=8)
    fig.suptitle(figure_title(payload) + " — linear theory vs measurement (labels: λ)")
    fig.tight_layout()
    return Result(fig, "the linearized closed forms predict where forgetting happens, so they "
                       "should rank the strategies' forgetting (THEORY §3)",
                  f"Spearman ρ over {len(theory['points'])} (strategy, λ) points: accuracy drop "
                  f"{fmt(rho_acc)}, logit change {fmt(rho_logit)}",
                  rho_acc is not None and rho_acc > 0.5, {"theory": theory})
