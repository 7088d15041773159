"""Every notebook runs headless (nbclient) in quick mode and writes its figures."""

import json
from pathlib import Path

import jupytext
import nbclient
import pytest

from tracer_theory._paths import reference_toy_results
from tracer_theory.report import registry, toy

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOKS = sorted((ROOT / "notebooks").glob("[0-9][0-9]_*.py"))


def _execute(path: Path, env: dict[str, str], monkeypatch) -> str:
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    notebook = jupytext.read(path)
    nbclient.NotebookClient(notebook, timeout=600, kernel_name="python3",
                            resources={"metadata": {"path": str(path.parent)}}).execute()
    return "\n".join(out.get("text", "") for cell in notebook.cells if cell.cell_type == "code"
                     for out in cell.get("outputs", []))


def test_there_is_a_notebook_for_every_figure_group():
    assert [p.name[:2] for p in NOTEBOOKS] == ["01", "02", "03", "04"]
    assert {f.notebook for f in registry.FIGURES} == {"01", "02", "03"}


@pytest.mark.parametrize("path", NOTEBOOKS[:2], ids=lambda p: p.stem)
def test_theory_notebook_runs_headless_and_writes_its_figures(path, tmp_path, monkeypatch):
    text = _execute(path, {"TRACER_QUICK": "1", "TRACER_FIGURES": str(tmp_path)}, monkeypatch)
    expected = [f.name for f in registry.FIGURES if f.notebook == path.name[:2]]
    written = {p.name for p in tmp_path.iterdir()}
    assert written == {f"{n}{ext}" for n in expected for ext in (".png", ".pdf")}
    # every figure is followed by its computed finding
    assert text.count("Paper: ") == text.count("Measured: ") == len(expected)


def test_toy_notebook_reads_the_toy_results(tmp_path, monkeypatch):
    results = reference_toy_results()
    text = _execute(NOTEBOOKS[2], {"TRACER_QUICK": "1", "TRACER_FIGURES": str(tmp_path),
                                   "TRACER_TOY_RESULTS": str(results)}, monkeypatch)
    assert "results in" in text
    # the tables printed are the stored run's, and every toy figure was written
    payload = toy.load_payload(results, "fair_head")
    assert f"{payload['summary']['direct']['forgetting'][0]:.2f}" in text
    expected = [f.name for f in registry.FIGURES if f.notebook == "03"]
    assert {p.name for p in tmp_path.iterdir()} == {f"{n}{e}" for n in expected
                                                   for e in (".png", ".pdf")}
    assert text.count("Paper: ") == len(expected)


def test_horizon_notebook_shows_the_committed_study(tmp_path, monkeypatch):
    results = ROOT / "experiments" / "results" / "horizon" / "horizon.json"
    text = _execute(NOTEBOOKS[3], {"TRACER_QUICK": "1", "TRACER_FIGURES": str(tmp_path),
                                   "TRACER_HORIZON_RESULTS": str(results)}, monkeypatch)
    payload = json.loads(results.read_text())
    # the linear mechanism computed in the open, the stored table and verdicts, both figures
    assert "final gap / peak gap" in text
    row = payload["summary"]["head_noise0"]["ema_sd"]["3000"]["forgetting"]
    assert f"{row['mean']:.1f} ± {row['std']:.1f}" in text
    assert payload["verdicts"]["head_noise0"][0] in text
    assert {p.name for p in tmp_path.iterdir()} == {f"horizon_{n}{e}" for n in
                                                   ("forgetting", "curves")
                                                   for e in (".png", ".pdf")}
    assert text.count("Paper: ") == 2
