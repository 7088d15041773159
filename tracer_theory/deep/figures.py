"""The toy experiment's summary figure: forgetting and accuracies per strategy, seed error bars."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt

PANELS = (("forgetting", "gray-MNIST forgetting (points)"),
          ("id_acc", "ColoredMNIST ID accuracy (%)"),
          ("ood_flipped_acc", "OOD accuracy, p = 0.05 (%)"))


def toy_summary_figure(payload: dict[str, Any], path: str | Path) -> list[Path]:
    """Bar charts (mean ± std over seeds) of ``PANELS`` for every strategy; writes PNG and PDF
    next to ``path`` (its suffix is ignored) and returns both paths."""
    summary = {k: v for k, v in payload["summary"].items() if k != "pretrained"}
    names = list(summary)
    fig, axes = plt.subplots(1, len(PANELS), figsize=(5 * len(PANELS), 0.35 * len(names) + 1.5),
                             sharey=True)
    for ax, (metric, label) in zip(axes, PANELS, strict=True):
        means = [summary[n].get(metric, [float("nan")] * 2)[0] for n in names]
        stds = [summary[n].get(metric, [0.0, 0.0])[1] for n in names]
        ax.barh(range(len(names)), means, xerr=stds, color="tab:blue", alpha=0.8)
        ax.set_xlabel(label)
        ax.grid(axis="x", alpha=0.3)
    axes[0].set_yticks(range(len(names)), names)
    axes[0].invert_yaxis()
    config = payload["config"]
    fig.suptitle(f"toy CLIP, protocol {config['protocol']}, objective {config['objective']}, "
                 f"{len(config['seeds'])} seed(s)")
    fig.tight_layout()
    base = Path(path).with_suffix("")
    base.parent.mkdir(parents=True, exist_ok=True)
    out = [base.with_suffix(".png"), base.with_suffix(".pdf")]
    for p in out:
        fig.savefig(p, dpi=120, metadata={"CreationDate": None} if p.suffix == ".pdf" else None)
    plt.close(fig)
    return out
