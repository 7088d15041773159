"""What the notebooks share: their settings (from the environment, so the test suite can run
them headless in quick mode) and one call that makes, saves and shows a figure with its finding.

``TRACER_QUICK=1`` shortens horizons; ``TRACER_FIGURES`` is the output folder (default
``<repo>/figures``); ``TRACER_TOY_RESULTS`` the toy results folder (default: the committed
reference run, or ``<repo>/results/toy`` in quick mode).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import NamedTuple

from .registry import REFERENCE_TOY_RESULTS, show
from .result import Result


class Settings(NamedTuple):
    quick: bool
    figures: Path
    toy_results: Path


def repo_root() -> Path:
    """The folder holding ``pyproject.toml``: the working directory or one of its parents."""
    here = Path.cwd().resolve()
    for folder in (here, *here.parents):
        if (folder / "pyproject.toml").exists() and (folder / "tracer_theory").is_dir():
            return folder
    return here


def settings() -> Settings:
    """The notebook's settings from ``TRACER_QUICK``, ``TRACER_FIGURES``, ``TRACER_TOY_RESULTS``."""
    root = repo_root()
    quick = os.environ.get("TRACER_QUICK", "0") == "1"
    default_toy = root / ("results/toy" if quick else REFERENCE_TOY_RESULTS)
    return Settings(quick, Path(os.environ.get("TRACER_FIGURES", root / "figures")),
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
