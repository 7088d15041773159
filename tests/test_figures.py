"""`tracer-theory figures`: writes exactly the files figures/README.md lists, deterministically."""

from pathlib import Path

import pytest

from tracer_theory import cli
from tracer_theory.report import registry

ROOT = Path(__file__).resolve().parents[1]


def test_figures_command_writes_exactly_the_listed_files(tmp_path, capsys):
    assert cli.main(["figures", "--quick", "--quiet", "--out", str(tmp_path)]) == 0
    listed = registry.listed_files((ROOT / "figures" / "README.md").read_text())
    written = {p.name for p in tmp_path.iterdir()} - {"README.md"}
    assert written == listed
    assert len(listed) == 2 * len(registry.FIGURES)
    # the committed README is the generated one, and so are the committed figures' names
    assert (tmp_path / "README.md").read_text() == (ROOT / "figures" / "README.md").read_text()
    assert {p.name for p in (ROOT / "figures").iterdir()} - {"README.md"} == listed
    text = capsys.readouterr().out
    for figure in registry.FIGURES:
        assert figure.name in text


def test_figures_are_deterministic(tmp_path):
    paths = [registry.show("wma_kernel", quick=True, out=tmp_path / name)[1] for name in "ab"]
    for first, second in zip(*paths, strict=True):
        assert first.read_bytes() == second.read_bytes()


def test_unknown_figure_and_missing_toy_results_are_clear_errors(tmp_path):
    with pytest.raises(ValueError, match="unknown figure 'nope'"):
        registry.make("nope")
    with pytest.raises(FileNotFoundError, match="run `tracer-theory toy"):
        registry.make("toy_fair_head", toy_results=tmp_path)
