"""Where the committed results live: found from the package's location, not the working
directory, so commands and notebooks work from anywhere. Imports nothing heavy (no matplotlib:
the CLI's ``verify`` reads it)."""

from __future__ import annotations

from pathlib import Path

#: The repository holding the package: ``tracer_theory/..`` (a checkout, or site-packages).
REPO_ROOT = Path(__file__).resolve().parents[1]
#: The committed reference run of the toy experiment (3 seeds), relative to ``REPO_ROOT``.
TOY_RESULTS_IN_REPO = "experiments/results/toy"
#: Where runs write unless told otherwise (relative to the working directory for the commands,
#: to ``REPO_ROOT`` for the notebooks); ignored by git: the toy results and the figures.
TOY_OUT = "results/toy"
FIGURES_OUT = "results/figures"


def reference_toy_results() -> Path:
    """``REPO_ROOT / TOY_RESULTS_IN_REPO``; FileNotFoundError naming that path and the flag to
    set when it is missing (the package does not sit in a checkout of its repository)."""
    path = REPO_ROOT / TOY_RESULTS_IN_REPO
    if not path.is_dir():
        raise FileNotFoundError(
            f"the committed toy results {path} are missing (tracer_theory is not running from a "
            "checkout of its repository); pass --toy-results DIR (notebooks: set "
            "TRACER_TOY_RESULTS=DIR), DIR a results folder of `tracer-theory toy`")
    return path
