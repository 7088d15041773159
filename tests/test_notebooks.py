"""The notebooks run the way notebooks/README.md says (``jupytext --to ipynb --execute``, then
``jupyter nbconvert --to html``), headless and in quick mode, in a copy of the checkout whose
package they import: each writes its figures and findings, and nothing git would track is left."""

import json
import subprocess
from pathlib import Path

import nbformat
import pytest
from checkout import ROOT, copy_environment, git_copy, untracked_or_modified

from tracer_theory._paths import FIGURES_OUT
from tracer_theory.report import registry, toy

NOTEBOOKS = sorted((ROOT / "notebooks").glob("[0-9][0-9]_*.py"))
#: The notebooks README's two commands, run in the copy's root.
COMMANDS = ("jupytext --to ipynb --execute notebooks/0*.py",
            "jupyter nbconvert --to html notebooks/0*.ipynb")


@pytest.fixture(scope="module")
def executed(tmp_path_factory):
    """The copy (a new git repository of this checkout's tracked files) after both commands,
    and each notebook's printed text by its number (``"01"``, …)."""
    copy = git_copy(tmp_path_factory.mktemp("checkout"))
    # notebook 03 in quick mode would otherwise run the quick toy (tested in test_toy)
    env = copy_environment(copy, TRACER_QUICK="1",
                           TRACER_TOY_RESULTS=str(copy / "experiments/results/toy"))
    env.pop("TRACER_FIGURES", None)
    for command in COMMANDS:
        done = subprocess.run(command, shell=True, cwd=copy, env=env, capture_output=True,
                              text=True)
        assert done.returncode == 0, f"{command}:\n{done.stderr[-3000:]}"
    texts = {}
    for path in NOTEBOOKS:
        notebook = nbformat.read(copy / "notebooks" / f"{path.stem}.ipynb", as_version=4)
        texts[path.name[:2]] = "\n".join(
            out.get("text", "") for cell in notebook.cells if cell.cell_type == "code"
            for out in cell.get("outputs", []))
    return copy, texts


def _figures(copy: Path) -> set[str]:
    return {p.name for p in (copy / FIGURES_OUT).iterdir()}


def _files(names) -> set[str]:
    return {f"{n}{ext}" for n in names for ext in (".png", ".pdf")}


def test_there_is_a_notebook_for_every_figure_group():
    assert [p.name[:2] for p in NOTEBOOKS] == ["01", "02", "03", "04"]
    assert {f.notebook for f in registry.FIGURES} == {"01", "02", "03"}


def test_the_readme_names_these_commands_and_every_notebook():
    readme = (ROOT / "notebooks" / "README.md").read_text()
    assert all(command in readme for command in COMMANDS)
    assert all(f"`{path.name}`" in readme for path in NOTEBOOKS)


def test_nothing_git_would_track_is_left_behind(executed):
    copy, _ = executed
    assert untracked_or_modified(copy) == ""
    # and the notebooks did write, where the README says: executed copies, pages, figures
    for path in NOTEBOOKS:
        assert (copy / "notebooks" / f"{path.stem}.ipynb").is_file()
        assert (copy / "notebooks" / f"{path.stem}.html").stat().st_size > 10_000
    assert _figures(copy)


@pytest.mark.parametrize("number", ["01", "02", "03"])
def test_each_figure_is_saved_with_its_computed_finding(executed, number):
    copy, texts = executed
    expected = [f.name for f in registry.FIGURES if f.notebook == number]
    assert _files(expected) <= _figures(copy)
    # every figure is followed by its computed finding
    assert texts[number].count("Paper: ") == texts[number].count("Measured: ") == len(expected)


def test_toy_notebook_prints_the_toy_results_it_reads(executed):
    copy, texts = executed
    assert "results in" in texts["03"]
    payload = toy.load_payload(copy / "experiments/results/toy", "fair_head")
    assert f"{payload['summary']['direct']['forgetting'][0]:.2f}" in texts["03"]


def test_horizon_notebook_shows_the_committed_study(executed):
    copy, texts = executed
    payload = json.loads((copy / "experiments/results/horizon/horizon.json").read_text())
    # the linear mechanism computed in the open, the stored table and verdicts, both figures
    assert "final gap / peak gap" in texts["04"]
    row = payload["summary"]["head_noise0"]["ema_sd"]["3000"]["forgetting"]
    assert f"{row['mean']:.1f} ± {row['std']:.1f}" in texts["04"]
    assert payload["verdicts"]["head_noise0"][0] in texts["04"]
    assert _files(f"horizon_{n}" for n in ("forgetting", "curves")) <= _figures(copy)
    assert texts["04"].count("Paper: ") == 2


def test_every_figure_written_is_one_a_notebook_makes(executed):
    copy, _ = executed
    made = [f.name for f in registry.FIGURES] + ["horizon_forgetting", "horizon_curves"]
    assert _figures(copy) == _files(made)
