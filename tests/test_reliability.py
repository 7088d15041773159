"""No silent wrong answers from the experiment layer and the CLI: resume only what was run with
the same data and configuration, results identical whether resumed or not, one-line errors with
distinct exit codes that name the flag or file, checks before long work, no empty folders."""

import dataclasses
import json
import os
import stat

import pytest

from tracer_theory import cli
from tracer_theory.deep.finetune import Direct, registered
from tracer_theory.deep.studies.experiment import quick_config, run_experiment, toy_configs
from tracer_theory.deep.studies.protocols import Fair
from tracer_theory.errors import ResumeMismatch

#: Two strategies keep the resume tests short; the code path is the full experiment's.
SMALL = Fair(strategies=tuple(registered(("direct", "static_sd")).items()))


@pytest.fixture(scope="module")
def small_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("resume")
    config = quick_config(protocol=SMALL)
    data = config.data()
    return config, data, out, run_experiment(config, out, progress=False, data=data)


def test_resumed_results_are_byte_identical_to_a_fresh_run(small_run, tmp_path):
    config, data, out, _ = small_run
    summary = (out / f"{config.name}.json").read_bytes()
    run_experiment(config, out, progress=False, data=data)  # resumes every run
    assert (out / f"{config.name}.json").read_bytes() == summary
    # an interrupted run (one finished file) resumed in a fresh folder gives the same bytes
    fresh = tmp_path / "fresh"
    (fresh / config.name).mkdir(parents=True)
    name = f"seed0_{next(iter(SMALL.strategies))[0]}.json"
    (fresh / config.name / name).write_bytes((out / config.name / name).read_bytes())
    for ckpt in out.glob("pretrained_*.eqx"):
        (fresh / ckpt.name).write_bytes(ckpt.read_bytes())
    run_experiment(config, fresh, progress=False, data=data)
    assert (fresh / f"{config.name}.json").read_bytes() == summary
    payload = json.loads(summary)
    assert list(payload["runs"]) == [*(name for name, _ in SMALL.strategies),
                                     *(f"wise_ft({a:g})" for a in config.wise_alphas)]


def test_resume_refuses_other_settings_and_other_data(small_run):
    config, data, out, _ = small_run
    stamps = {f: f.stat().st_mtime_ns for f in (out / config.name).glob("*.json")}
    other_lr = dataclasses.replace(config, finetune=dataclasses.replace(config.finetune,
                                                                        lr=1e-3))
    with pytest.raises(ResumeMismatch, match=r"training\.lr: 0\.003 → 0\.001.*--overwrite"):
        run_experiment(other_lr, out, progress=False, data=data)
    other_lam = dataclasses.replace(config, protocol=Fair(strategies=(
        ("direct", Direct()), ("static_sd", dataclasses.replace(
            registered(("static_sd",))["static_sd"], lam=3.0)))))
    with pytest.raises(ResumeMismatch, match=r"strategy\.lam: 1\.0 → 3\.0"):
        run_experiment(other_lam, out, progress=False, data=data)
    other_data = config.data()
    other_data.fingerprint = "0123456789abcdef"  # what other digits give (any other split)
    with pytest.raises(ResumeMismatch, match=r"data: .* → 0123456789abcdef"):
        run_experiment(config, out, progress=False, data=other_data)
    assert {f: f.stat().st_mtime_ns for f in (out / config.name).glob("*.json")} == stamps


def test_the_data_fingerprint_follows_the_digits():
    quick = quick_config().data()
    assert quick.fingerprint == quick_config().data().fingerprint
    assert quick.fingerprint != dataclasses.replace(quick_config(), quick=False).data().fingerprint


def test_result_files_are_group_readable(small_run):
    config, _, out, _ = small_run
    for path in [out / f"{config.name}.json", *(out / config.name).glob("*.json")]:
        assert os.stat(path).st_mode & stat.S_IRGRP, path


def test_quick_honours_the_seeds_it_is_given():
    for quick in (True, False):
        assert toy_configs([("fair", "head")], quick=quick, seeds=[5, 6])[0].seeds == (5, 6)
    # without seeds: a quick run is a prefix of the full run's seeds, which has a spread
    short, full = (toy_configs([("fair", "head")], quick=q)[0].seeds for q in (True, False))
    assert 1 <= len(short) < len(full) and full[:len(short)] == short
    with pytest.raises(ValueError, match=r"seeds must be integers in \[0, 2\*\*32\)"):
        quick_config(seeds=(2**70,))


def _cli(capsys, *argv):
    code = cli.main(list(argv))
    err = capsys.readouterr().err
    return code, err


def test_cli_errors_name_the_flag_and_use_distinct_exit_codes(tmp_path, capsys):
    blocker = tmp_path / "a_file"
    blocker.write_text("x")
    # input errors (3): missing or unwritable paths, checked before any work
    code, err = _cli(capsys, "toy", "--quick", "--mnist", str(tmp_path / "nope"), "--out",
                     str(tmp_path / "r1"), "--quiet")
    assert (code, err.count("\n")) == (3, 1) and "--mnist" in err and "does not exist" in err
    code, err = _cli(capsys, "toy", "--quick", "--out", str(blocker / "sub"), "--quiet")
    assert code == 3 and "--out" in err
    code, err = _cli(capsys, "verify", "--claims", "C1", "--json", str(tmp_path), "--quiet")
    assert code == 3 and "--json" in err and "is a directory" in err
    # a malformed MNIST file: input error, and no empty results folder left behind
    bad = tmp_path / "bad.npz"
    bad.write_bytes(b"not a zip")
    code, err = _cli(capsys, "toy", "--quick", "--mnist", str(bad), "--out",
                     str(tmp_path / "r2"), "--quiet")
    assert code == 3 and "bad.npz" in err and not (tmp_path / "r2").exists()
    # usage errors (2): bad values
    assert cli.main(["toy", "--seeds", str(2**70)]) == 2  # argparse's error, returned
    assert "--seeds" in capsys.readouterr().err
    code, err = _cli(capsys, "toy", "--protocol", "nope", "--out", str(tmp_path / "r3"))
    assert code == 2 and "--protocol must be one of" in err


def test_figures_refuse_bad_toy_results_before_writing_anything(tmp_path, capsys):
    results = tmp_path / "results"
    results.mkdir()
    for name in ("fair_head", "paper_head", "fair_prompts"):
        (results / f"{name}.json").write_text("{not json")
    out = tmp_path / "figs"
    code, err = _cli(capsys, "figures", "--quick", "--quiet", "--toy-results", str(results),
                     "--out", str(out))
    assert code == 3 and ".json is not readable JSON" in err
    assert not out.exists() or not any(out.iterdir())


def test_interrupts_exit_130_with_a_resume_hint(monkeypatch, capsys):
    def interrupted(args):
        raise KeyboardInterrupt

    monkeypatch.setattr(cli, "_verify", interrupted)
    code, err = _cli(capsys, "verify", "--claims", "C1")
    assert code == 130 and "rerun the same command to resume" in err
