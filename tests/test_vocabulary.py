"""One strategy vocabulary: every strategy's label and color comes from the registry
(``deep/finetune/strategies.py``: ``REGISTRY`` and its ``VARIANTS``), every other color a figure
uses from ``report/style.py``; no other module of the package holds a color or a strategy label.
No JAX compiles: the source is read as text and the registry's values are only looked at."""

from __future__ import annotations

import itertools
import re
from pathlib import Path

import pytest

import tracer_theory
from tracer_theory.deep.finetune.strategies import REGISTRY, VARIANTS, Entry, entry
from tracer_theory.report import style

PACKAGE = Path(tracer_theory.__file__).parent
#: The two modules allowed to hold colors and strategy labels.
ALLOWED = {Path("deep/finetune/strategies.py"), Path("report/style.py")}
HEX = re.compile(r"#[0-9a-fA-F]{6}\b")
#: A color written by name or gray level (``color="black"``, ``mec="0.2"``); a hollow marker's
#: ``"none"`` and ``"white"`` fill are no color of the vocabulary.
NAMED = re.compile(r"""\b(color|c|mec|mfc|edgecolor|facecolor|ecolor)\s*=\s*"""
                   r"""["'](?!none["']|white["'])""")
VOCABULARY = REGISTRY | VARIANTS


def _sources() -> dict[Path, str]:
    files = {path.relative_to(PACKAGE): path.read_text(encoding="utf-8")
             for path in sorted(PACKAGE.rglob("*.py"))}
    assert ALLOWED <= set(files)
    return {path: text for path, text in files.items() if path not in ALLOWED}


def test_no_color_code_outside_the_registry_and_the_style_module():
    found = [f"{path}:{n}: {line.strip()}" for path, text in _sources().items()
             for n, line in enumerate(text.splitlines(), 1)
             if HEX.search(line) or NAMED.search(line)]
    assert not found, "colors outside the registry and report/style.py:\n" + "\n".join(found)


def test_no_strategy_label_is_written_as_a_display_label_outside_them():
    # a legend label (``label="EMA SD ..."``) or a name → label mapping (``"ema_sd": "EMA SD"``)
    labels = {e.label for e in VOCABULARY.values()} | {e.full_label for e in VOCABULARY.values()}
    alternatives = "|".join(re.escape(t) for t in sorted(labels, key=len, reverse=True))
    written = re.compile(rf"""(label\s*=\s*f?|["'][a-z0-9_]+["']\s*:\s*f?)["'](?:{alternatives})""")
    found = [f"{path}:{n}: {line.strip()}" for path, text in _sources().items()
             for n, line in enumerate(text.splitlines(), 1) if written.search(line)]
    assert not found, "strategy labels outside the registry:\n" + "\n".join(found)


def test_the_vocabulary_has_one_color_and_one_label_per_strategy():
    assert not set(REGISTRY) & set(VARIANTS)  # a variant never shadows a registered name
    for name, e in VOCABULARY.items():
        assert isinstance(e, Entry) and HEX.fullmatch(e.color), name
    for (a, ea), (b, eb) in itertools.combinations(VOCABULARY.items(), 2):
        assert ea.color.lower() != eb.color.lower(), (a, b)
        assert ea.label != eb.label and ea.full_label != eb.full_label, (a, b)
    # the colors the style adds (rows that are no strategy, spare and marking colors) are new
    strategy_colors = {e.color.lower() for e in VOCABULARY.values()}
    extra = [style.COLORS[n] for n in style.COLORS if n not in VOCABULARY]
    for color in (*extra, *style.SPARE_COLORS, style.FALLBACK, style.REFERENCE_LINE,
                  style.HIGHLIGHT):
        assert color.lower() not in strategy_colors, color
    # the style's maps are the registry's
    for name, e in VOCABULARY.items():
        assert style.color(name) == e.color and style.label(name) == e.label
        assert style.label(name, full=True) == e.full_label


def test_entry_finds_registered_strategies_and_variants_and_names_an_unknown_one():
    assert entry("wma_sd") is REGISTRY["wma_sd"]
    assert entry("ema999_sd") is VARIANTS["ema999_sd"]
    # a full label spells out what tells a strategy from its variants (the EMA momentum);
    # without a detail it is the label
    for name in ("ema_sd", "ema999_sd"):
        momentum = entry(name).strategy.teacher.momentum
        assert f"({momentum:g})" in entry(name).full_label, name
    assert entry("ema_sd").full_label != entry("ema_sd").label
    assert entry("direct").full_label == entry("direct").label
    with pytest.raises(ValueError, match="nope"):
        entry("nope")
