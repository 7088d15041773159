"""What the notebooks share: their settings (from the environment, so the test suite can run
them headless in quick mode) and one call that makes, saves and shows a figure with its finding.

``TRACER_QUICK=1`` shortens horizons; ``TRACER_FIGURES`` is the output folder (default
``<repo>/results/figures``, ignored by git; `tracer-theory figures` regenerates the committed
``figures/``); ``TRACER_TOY_RESULTS`` the toy results folder (default: the committed
reference run, or ``<repo>/results/toy`` in quick mode). ``<repo>`` is the folder holding the
package (``tracer_theory/..``), wherever the notebook runs.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import NamedTuple

from .._paths import FIGURES_OUT, REPO_ROOT, TOY_OUT, TOY_RESULTS_IN_REPO
from .registry import show
from .result import Result


class Settings(NamedTuple):
    quick: bool
    figures: Path
    toy_results: Path


def settings() -> Settings:
    """The notebook's settings from ``TRACER_QUICK``, ``TRACER_FIGURES``, ``TRACER_TOY_RESULTS``."""
    quick = os.environ.get("TRACER_QUICK", "0") == "1"
    default_toy = REPO_ROOT / (TOY_OUT if quick else TOY_RESULTS_IN_REPO)
    return Settings(quick, Path(os.environ.get("TRACER_FIGURES", REPO_ROOT / FIGURES_OUT)),
                    Path(os.environ.get("TRACER_TOY_RESULTS", default_toy)))


def figure(name: str, config: Settings | None = None) -> Result:
    """Make figure ``name``, save it (PNG + PDF), display the PNG and print the finding."""
    from IPython.display import Image, display

    config = settings() if config is None else config
    result, paths = show(name, quick=config.quick, out=config.figures,
                         toy_results=config.toy_results)
    display(Image(filename=str(paths[0])))
    print(result.report())
    return result
