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


def test_reproduce_runs_every_stage_and_summarizes(tmp_path, monkeypatch, capsys):
    """The wiring of `tracer-theory reproduce`, with each stage replaced by a cheap stand-in
    (the stages themselves are tested on their own): claims → toy plans → figures → summary."""
    from tracer_theory.claims.registry import Row
    from tracer_theory.deep import experiment
    from tracer_theory.report import toy

    calls = {"toy": []}
    monkeypatch.setattr(cli, "claim_cases", lambda ids=None: [("C1", "a"), ("C1", "b")])

    def claims(ids=None, progress=None):
        progress("C1", "a")
        return [Row("C1", "a", "q", 0.0, 1.0), Row("C1", "b", "q", 2.0, 1.0)]

    def run_toy(config, out, progress=True):
        calls["toy"].append(config.name)
        return toy.load_payload(ROOT / registry.REFERENCE_TOY_RESULTS, config.name)

    def generate(out, quick=False, toy_results=None):
        calls["figures"] = (out, quick, toy_results)
        figure = registry.spec("toy_fair_head")
        result = registry.make("toy_fair_head")
        yield figure, result, []

    monkeypatch.setattr(cli, "run_claims", claims)
    monkeypatch.setattr(experiment, "run_toy", run_toy)
    monkeypatch.setattr(registry, "generate", generate)
    code = cli.main(["reproduce", "--quiet", "--toy-out", str(tmp_path / "toy"),
                     "--figures", str(tmp_path / "figs")])
    text = capsys.readouterr().out
    assert code == 1  # one claim row failed
    assert "1/2 rows PASS" in text and "FAIL C1 b" in text
    assert calls["toy"] == ["fair_head", "paper_head", "fair_prompts"]
    assert calls["figures"] == (str(tmp_path / "figs"), False, str(tmp_path / "toy"))
    assert "toy_fair_head" in text and "== toy fair_prompts" in text
