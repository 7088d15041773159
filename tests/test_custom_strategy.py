"""The README's custom-strategy example runs end to end: a teacher with a user's own kernel and
a new regularizer, written outside the package, through the experiment, the evaluation and the
theory-vs-measurement comparison."""

import re
from pathlib import Path

import numpy as np
import pytest

from tracer_theory.deep.finetune.strategies import REGISTRY

README = Path(__file__).resolve().parents[1] / "README.md"


def _example() -> str:
    blocks = re.findall(r"```python\n(# custom_strategy\.py.*?)```", README.read_text(), re.S)
    assert len(blocks) == 1, "README must hold exactly one custom_strategy.py example"
    return blocks[0]


def test_readme_custom_strategy_runs_end_to_end(tmp_path, capsys):
    code = _example()
    assert len(code.strip().splitlines()) <= 35
    namespace: dict = {}
    exec(compile(code.replace('"results/custom"', repr(str(tmp_path))), "README", "exec"),
         namespace)
    payload = namespace["payload"]
    assert set(payload["runs"]) == {"late_sd", "anchor"}
    for name in ("late_sd", "anchor"):
        record = payload["runs"][name]["0"]
        assert record["forgetting"] == pytest.approx(
            payload["pretrained"]["0"]["gray_acc"] - record["gray_acc"])
    assert "gap" in payload["runs"]["late_sd"]["0"]  # a teacher: its gap is logged
    assert "gap" not in payload["runs"]["anchor"]["0"]
    # only the strategy with a linear counterpart enters the comparison
    assert [p["strategy"] for p in payload["theory"]["points"]] == ["late_sd"]
    assert np.isfinite(payload["theory"]["points"][0]["predicted_forgetting"])
    out = capsys.readouterr().out
    assert "late_sd" in out and "anchor" in out
    # the user's kernel drives the teacher: ω_t = κ(τ_t)/Σ_{j≤t} κ(τ_j) with κ(τ) = τ²
    schedule = namespace["late_sd"].schedule(6)
    tau = (np.arange(7) + 0.5) / 7
    kappa = tau**2
    np.testing.assert_allclose(schedule.weights(6), (kappa / np.cumsum(kappa))[1:], rtol=1e-12)
    assert "late_sd" not in REGISTRY  # nothing was registered in the library


def test_registry_strategies_have_one_name_each():
    names = [entry.label for entry in REGISTRY.values()]
    assert len(set(names)) == len(names)
    assert len({entry.color for entry in REGISTRY.values()}) == len(REGISTRY)
