"""The reproducibility envelope (``report/envelope.py``): differences against a hand-made
perturbation of the committed toy tables, a flipping verdict made inconclusive only for the
results it was measured on, and its bad input."""

import json
import re
import shutil

import pytest

from tracer_theory import _paths
from tracer_theory.errors import InputError
from tracer_theory.report import envelope, registry


@pytest.fixture
def tables(tmp_path):
    """Copies of the committed toy tables (and nothing else) in ``tmp_path/base``."""
    base = tmp_path / "base"
    base.mkdir()
    for name in envelope.TABLES:
        shutil.copy(_paths.reference_toy_results() / f"{name}.json", base)
    return base


def _perturbed(base, out, table, strategy, seed, metric, by):
    """A copy of ``base`` with one seed's ``metric`` moved ``by`` and its seed mean with it."""
    shutil.copytree(base, out)
    path = out / f"{table}.json"
    payload = json.loads(path.read_text())
    payload["runs"][strategy][seed][metric] += by
    payload["summary"][strategy][metric][0] += by / len(payload["runs"][strategy])
    path.write_text(json.dumps(payload))
    return out


def test_differences_find_the_one_planted_change(tables, tmp_path):
    other = _perturbed(tables, tmp_path / "other", "paper_head", "static_sd", "1", "id_acc", 2.5)
    found = envelope.differences(tables, other)
    seeds = len(json.loads((tables / "paper_head.json").read_text())["runs"]["static_sd"])
    for table, rows in found.items():
        for metric, row in rows.items():
            if (table, metric) == ("paper_head", "id_acc"):
                assert row == {"mean": pytest.approx(2.5 / seeds), "seed": pytest.approx(2.5),
                               "where": ["static_sd", "1"]}
            else:
                assert row == {"mean": 0.0, "seed": 0.0, "where": None}, (table, metric)


def test_a_flipping_verdict_is_inconclusive_only_for_the_results_measured(tables):
    plain = registry.make("toy_gap_curves", toy_results=tables)
    assert plain.agrees in (True, False)
    record = envelope.measure(tables, tables, "the same folder twice")
    assert not any(v["flips"] for v in record["verdicts"].values())
    assert record["verdicts"]["toy_gap_curves"]["base"] == plain.agrees
    record["verdicts"]["toy_gap_curves"]["flips"] = True  # as a rerun on another CPU found
    (tables / envelope.FILE).write_text(json.dumps(record))
    result = registry.make("toy_gap_curves", toy_results=tables)
    assert result.agrees is None and "inconclusive: the verdict flips" in result.finding
    assert "Inconclusive" in result.report()
    assert registry.make("toy_fair_head", toy_results=tables).agrees is not None
    # other results in the same folder: the record does not apply
    path = tables / "fair_head.json"
    path.write_text(path.read_text() + "\n")
    assert envelope.flipped(tables) == {}
    assert registry.make("toy_gap_curves", toy_results=tables).agrees == plain.agrees


def test_the_committed_envelope_names_the_committed_tables():
    """The envelope beside the committed results was measured on them (else it is ignored)."""
    folder = _paths.reference_toy_results()
    record = json.loads((folder / envelope.FILE).read_text())
    assert set(record["base_sha256"]) == set(envelope.TABLES)
    flips = {n for n, v in record["verdicts"].items() if v["base"] != v["other"]}
    assert set(envelope.flipped(folder)) == flips


def test_bad_tables_and_a_bad_record_name_the_file(tables, tmp_path):
    (tables / "fair_prompts.json").write_text("{not json")
    with pytest.raises(InputError, match=r"fair_prompts\.json"):
        envelope.differences(tables, tables)
    (tables / envelope.FILE).write_text(json.dumps({"label": "x"}))
    with pytest.raises(InputError, match=re.escape(envelope.FILE)):
        envelope.flipped(tables)
    with pytest.raises(InputError, match=r"fair_head\.json"):
        envelope.differences(tmp_path / "nowhere", tables)


def test_the_script_names_a_folder_that_holds_no_toy_results(tables, tmp_path, capsys):
    """experiments/envelope.py: a usage error naming the file, not a traceback."""
    import importlib.util

    path = _paths.REPO_ROOT / "experiments" / "envelope.py"
    spec = importlib.util.spec_from_file_location("envelope_script", path)
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    with pytest.raises(SystemExit) as exit_:
        script.main([str(tmp_path / "nowhere"), str(tables), "--label", "x"])
    assert exit_.value.code == 2
    assert "nowhere/fair_head.json" in capsys.readouterr().err
