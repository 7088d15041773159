"""Every figure of the notebooks, listed once: ``tracer-theory figures`` writes them, the
notebooks show them, and ``figures/README.md`` is generated from this list."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, NamedTuple

from .._paths import TOY_RESULTS_IN_REPO, reference_toy_results
from . import envelope, theory, toy
from .result import Result
from .style import save


class FigureSpec(NamedTuple):
    """A figure: its file stem, the notebook showing it, one line on what it shows, and how it
    is made: ``make(quick)`` for a theory figure, ``make(payload)`` for a toy figure (``payload``
    the toy results named by ``toy_results``). Functions taking a ``toy_results`` folder read
    the committed reference run (``reference_toy_results()``) when it is ``None``."""

    name: str
    notebook: str
    what: str
    make: Callable[..., Result]
    toy_results: str | None = None


FIGURES: tuple[FigureSpec, ...] = (
    FigureSpec("contrastive_target", "01", "contrast matrix, target Y, and the trace-form MMCL "
               "loss against its least-squares form over random W",
               theory.contrastive_target_figure),
    FigureSpec("closed_forms_gd", "01", "gradient descent on each strategy's objective "
               "converging to its closed form (relative distance vs steps, log–log)",
               theory.closed_forms_figure),
    FigureSpec("decomposition", "01", "task-subspace vs orthogonal change per strategy: weight "
               "decay alone changes the orthogonal complement", theory.decomposition_figure),
    FigureSpec("filter_factors", "01", "filter factors f_i against σ_i² for Direct FT, stopped "
               "GD, L2-SP at several λ, static, EMA and WMA SD", theory.filter_factors_figure),
    FigureSpec("wma_kernel", "02", "Beta(0.5, 0.5) kernel, teacher weights ω_t and the final "
               "teacher's weight on each student step (WMA vs EMA)", theory.wma_kernel_figure),
    FigureSpec("teacher_gap", "02", "teacher–student gap over training for static, EMA and WMA "
               "teachers (log scale: EMA collapses)", theory.teacher_gap_figure),
    FigureSpec("bias_vs_horizon", "02", "WMA-SD task-subspace bias against the horizon, log–log, "
               "fitted exponents vs −1/(2(1+λ))", theory.bias_vs_horizon_figure),
    FigureSpec("sweep_heatmap", "02", "(λ, horizon) heatmaps of bias and gap persistence from "
               "one jitted sweep", theory.sweep_heatmap_figure),
    FigureSpec("kernels", "02", "Beta(0.5,0.5), uniform, linear-ramp and Beta(2,2) kernels: "
               "shape, gap over a run, bias against horizon", theory.kernels_figure),
    FigureSpec("toy_fair_head", "03", "toy CLIP (fair protocol, head objective): forgetting, ID "
               "and OOD accuracy, ECE per strategy, mean ± std over seeds", toy.summary_figure,
               "fair_head"),
    FigureSpec("toy_paper_head", "03", "the same under the original toy's recipe",
               toy.summary_figure, "paper_head"),
    FigureSpec("toy_fair_prompts", "03", "the same with the FLYP-style prompts objective",
               toy.summary_figure, "fair_prompts"),
    FigureSpec("toy_gap_curves", "03", "teacher–student gap (parameter distance, logit KL) over "
               "finetuning for static, EMA and WMA teachers in the toy CLIP",
               toy.gap_curves_figure, "fair_head"),
    FigureSpec("toy_decomposition", "03", "task vs orthogonal change of the toy CLIP's image "
               "projection per strategy against the linear prediction",
               toy.decomposition_figure, "fair_head"),
)


def spec(name: str) -> FigureSpec:
    """The figure called ``name``; ValueError listing the names otherwise."""
    for figure in FIGURES:
        if figure.name == name:
            return figure
    raise ValueError(f"unknown figure {name!r}; figures: {[f.name for f in FIGURES]}")


def make(name: str, *, quick: bool = False, toy_results: str | Path | None = None) -> Result:
    """Build one figure (not saved): a theory figure from scratch, a toy figure from the toy
    results folder (default: the committed reference run)."""
    figure = spec(name)
    if figure.toy_results is None:
        return figure.make(quick)
    folder = reference_toy_results() if toy_results is None else toy_results
    result = figure.make(toy.load_payload(folder, figure.toy_results))
    reason = envelope.flipped(folder).get(name)
    if reason is not None:  # either verdict is within rounding: neither is one
        result = result._replace(agrees=None, finding=f"{result.finding}; inconclusive: {reason}")
    return result


def show(name: str, *, quick: bool = False, out: str | Path = "figures",
         toy_results: str | Path | None = None) -> tuple[Result, list[Path]]:
    """For notebooks: make figure ``name``, save it under ``out`` and return it with its paths."""
    result = make(name, quick=quick, toy_results=toy_results)
    return result, save(result.figure, Path(out) / name)


def generate(out: str | Path = "figures", *, quick: bool = False,
             toy_results: str | Path | None = None, names: tuple[str, ...] | None = None
             ) -> Iterator[tuple[FigureSpec, Result, list[Path]]]:
    """Make and save each figure (PNG and PDF under ``out``), yielding ``(spec, result, paths)``
    as it goes; then write ``out/README.md``. Toy figures whose results are missing raise (a
    missing reference run before any figure is made)."""
    selected = [f for f in FIGURES if names is None or f.name in names]
    if toy_results is None and any(f.toy_results is not None for f in selected):
        toy_results = reference_toy_results()
    for stem in {f.toy_results for f in selected if f.toy_results is not None}:
        toy.load_payload(toy_results, stem)  # bad or missing results fail before any figure
    for figure in selected:
        yield figure, *show(figure.name, quick=quick, out=out, toy_results=toy_results)
    if names is None:
        (Path(out) / "README.md").write_text(readme())


def listed_files(text: str) -> set[str]:
    """The file names a figures README lists (``name.png`` and ``name.pdf`` per row)."""
    names = set()
    for line in text.splitlines():
        if line.startswith("| `"):
            stem = line.split("`")[1].removesuffix(".png/.pdf")
            names |= {f"{stem}.png", f"{stem}.pdf"}
    return names


def readme() -> str:
    """``figures/README.md``: one row per figure with what it shows and the command behind it."""
    rows = [f"| `{f.name}.png/.pdf` | {f.notebook} | {f.what} | "
            + ("`tracer-theory figures`" if f.toy_results is None else
               f"`tracer-theory figures` from `{f.toy_results}.json` of `tracer-theory toy`")
            + " |" for f in FIGURES]
    return "\n".join([
        "# Figures",
        "",
        "Written by `tracer-theory figures` (generated from `tracer_theory/report/registry.py`; "
        "do not edit by hand).",
        "Theory figures are computed from seeded problems in float64; toy figures are read from "
        f"the toy experiment's results (default: the committed 3-seed run in "
        f"`{TOY_RESULTS_IN_REPO}`, `--toy-results results/toy` for your own run).",
        "",
        "| file | notebook | what it shows | made by |",
        "|---|---|---|---|",
        *rows,
        "",
    ])


def summary_lines(results: list[tuple[FigureSpec, Result, Any]]) -> list[str]:
    """One line per figure: name, whether the measured numbers agree with the paper's claim,
    the finding; then, when some disagree, what that means."""
    words = {True: "agrees", False: "disagrees", None: "inconclusive"}
    lines = [f"{f.name:20s} {words[r.agrees]:12s}  {r.finding}" for f, r, _ in results]
    if not all(r.agrees for _, r, _ in results):
        lines.append(DISAGREES)
    return lines


#: What a figure that disagrees means.
DISAGREES = ("('disagrees' is a finding about the paper's claim, measured and reported with its "
             "numbers, not a failure of the run; 'inconclusive': the verdict flips on a rerun "
             "that differs only in rounding, see its finding)")
