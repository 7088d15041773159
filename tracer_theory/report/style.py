"""One look for every figure: a color and a label per strategy, the colors that mark no
strategy, and deterministic saving. The only place, with the strategy registry, that holds a
color or a label."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from matplotlib.figure import Figure

from .._io import writer
from ..deep.finetune.strategies import REGISTRY, VARIANTS

_ENTRIES = REGISTRY | VARIANTS
#: One color and one label per strategy, shared by the linear-theory, toy and CLIP figures: the
#: deep strategies' and their variants' from the registry, plus the rows that are no registered
#: strategy.
COLORS: dict[str, str] = {name: entry.color for name, entry in _ENTRIES.items()} | {
    "stopped_gd": "#ff7f0e", "wise_ft": "#ff9896", "pretrained": "#000000"}
LABELS: dict[str, str] = {name: entry.label for name, entry in _ENTRIES.items()} | {
    "stopped_gd": "stopped GD", "wise_ft": "WiSE-FT", "pretrained": "pretrained"}
#: The labels with the hyperparameters the registry spells out (``EMA SD (0.99)``), for figures
#: that show variants of one strategy side by side.
FULL_LABELS: dict[str, str] = LABELS | {name: entry.full_label
                                        for name, entry in _ENTRIES.items()}
#: Colors of the teacher kernels (THEORY §4) in the kernel comparisons.
KERNEL_COLORS: dict[str, str] = {"Beta(0.5,0.5)": COLORS["wma_sd"], "uniform": "#17becf",
                                 "linear ramp": "#bcbd22", "Beta(2,2)": "#e377c2"}
#: Colors that mark no strategy: a name the vocabulary does not know, a reference line, a
#: highlighted point (the designed teachers), and spare colors, in order, for the strategies of
#: a study that the vocabulary does not know.
FALLBACK = "#333333"
REFERENCE_LINE = "#999999"
#: Outlines, and a bound every strategy is measured against (the oracle frontier, a ratio of 1).
INK = "#000000"
HIGHLIGHT = "#e41a1c"
SPARE_COLORS = ("#7b4173", "#637939", "#843c39", "#3182bd", "#636363")
DPI = 120


def color(name: str) -> str:
    """The color of a strategy name; ``wise_ft(0.5)``-style names use their base's color."""
    return COLORS.get(name.split("(")[0], FALLBACK)


def label(name: str, *, full: bool = False) -> str:
    """The display label of a strategy name (``wise_ft(0.5)`` → ``WiSE-FT (0.5)``); ``full``:
    with the hyperparameters the registry spells out (``ema_sd`` → ``EMA SD (0.99)``)."""
    base, _, rest = name.partition("(")
    return ((FULL_LABELS if full else LABELS).get(base, base)
            + (f" ({rest.rstrip(')')})" if rest else ""))


def subplots(*shape: int, figsize: tuple[float, float], **kwargs: Any) -> tuple[Figure, Any]:
    """A ``Figure`` and its axes, made without pyplot: no global figure registry, no backend
    switch, nothing to close."""
    fig = Figure(figsize=figsize)
    return fig, fig.subplots(*shape, **kwargs)


def save(fig: Figure, stem: str | Path) -> list[Path]:
    """Write ``stem.png`` and ``stem.pdf`` (no timestamps, so reruns give the same bytes);
    close the figure; returns both paths."""
    base = Path(stem)
    out = [base.with_name(base.name + ".png"), base.with_name(base.name + ".pdf")]
    if not writer():  # a multi-process run: process 0 writes
        return out
    base.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out[0], dpi=DPI, metadata={"Software": None})
    fig.savefig(out[1], metadata={"CreationDate": None, "Producer": None, "Creator": None})
    return out
