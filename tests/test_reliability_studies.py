"""No silent wrong answers from the studies: one keyed cache (results, checkpoints, pretrained
models, Gram caches, linear twins) reused only for the same settings and refused in one line
when damaged, every flag checked before setup, and no empty or partial results file."""

import dataclasses
import json

import numpy as np
import pytest

from tracer_theory import cli
from tracer_theory._cache import (
    MAGIC,
    check_whole,
    keyed_header,
    load_keyed,
    read_keyed,
    read_record,
    write_keyed,
    write_record,
)
from tracer_theory.deep.finetune.checkpoints import save_run
from tracer_theory.deep.studies import budget, horizon, teachers
from tracer_theory.deep.studies.arrays import ExperimentData
from tracer_theory.deep.studies.experiment import (
    pretrained_path,
    quick_config,
    run_experiment,
)
from tracer_theory.errors import DamagedArtifact, ResumeMismatch

KEY = {"seed": 0, "training": {"lr": 0.003, "steps": 8}}


# --- the keyed cache --------------------------------------------------------------------------

def test_keyed_artifact_round_trip_and_refusals(tmp_path):
    path = tmp_path / "a.bin"
    write_keyed(path, KEY, lambda f: f.write(b"payload" * 100))
    assert read_keyed(path, KEY) == b"payload" * 100
    assert keyed_header(path)["key"] == KEY
    assert read_keyed(tmp_path / "none.bin", KEY) is None
    other = {"seed": 0, "training": {"lr": 0.001, "steps": 8}}
    with pytest.raises(ResumeMismatch, match=r"a\.bin was written for other settings "
                                             r"\(training\.lr: 0\.003 → 0\.001\).*--overwrite"):
        read_keyed(path, other)
    assert read_keyed(path, other, replace=True) is None  # the caller makes it anew
    raw = path.read_bytes()
    damaged = {"truncated": raw[:-10], "corrupted": raw[:-1] + bytes([raw[-1] ^ 0xFF]),
               "keyed-artifact header": raw[len(MAGIC):], "unreadable header": MAGIC + raw[8:20]}
    for why, content in damaged.items():
        path.write_bytes(content)
        with pytest.raises(DamagedArtifact, match=rf"a\.bin is damaged.*{why}.*--overwrite.*"
                                                  "delete that file"):
            read_keyed(path, KEY)
        assert read_keyed(path, KEY, replace=True) is None


def test_check_whole_refuses_a_damaged_artifact_whatever_its_key(tmp_path):
    path = tmp_path / "seed0_gram_x.npz"
    write_keyed(path, {"any": "key"}, lambda f: f.write(b"x" * 100))
    check_whole(path)  # whole: nothing to refuse
    path.write_bytes(path.read_bytes()[:-1])
    with pytest.raises(DamagedArtifact, match=r"seed0_gram_x\.npz is damaged.*truncated"):
        check_whole(path)


def test_a_payload_that_cannot_be_parsed_is_damaged(tmp_path):
    path = tmp_path / "a.npz"
    write_keyed(path, KEY, lambda f: f.write(b"not an npz"))
    with pytest.raises(DamagedArtifact, match=r"a\.npz is damaged.*cannot be read back"):
        load_keyed(path, KEY, lambda f: np.load(f)["x"])


@pytest.mark.parametrize("content", ['{"config": {"seed": 0}', "[1, 2]", "{}",
                                     "[" * 100_000 + "]" * 100_000, "\xff\xfe"])
def test_a_malformed_record_is_damaged(tmp_path, content):
    path = tmp_path / "r.json"
    path.write_text(content, encoding="latin-1")
    with pytest.raises(DamagedArtifact, match=r"r\.json is damaged"):
        read_record(path, KEY)


def test_a_record_missing_a_field_is_damaged_and_overwrite_reruns_it(tmp_path):
    path = tmp_path / "r.json"
    write_record(path, KEY, {"curves": [1]})
    assert read_record(path, KEY, fields=("curves",))["curves"] == [1]
    with pytest.raises(DamagedArtifact, match=r"missing field\(s\) \['horizons'\]"):
        read_record(path, KEY, fields=("horizons", "curves"))
    assert read_record(path, KEY, overwrite=True, fields=("horizons",)) is None


# --- the studies' artifacts, checked before any work ------------------------------------------

@pytest.fixture(scope="module")
def data():
    return ExperimentData(quick=True)


def test_horizon_refuses_a_leftover_checkpoint_of_other_horizons(tmp_path, data):
    # the first run asked for horizons 4 and 12 and was interrupted after its step-8
    # checkpoint; the rerun asks for 4 and 6 in the same folder: the T = 6 run would resume a
    # model trained 8 steps. It is refused, before any work, naming the checkpoint.
    first = horizon.quick_horizon_config(strategies=("direct",), horizons=(4, 12))
    second = horizon.quick_horizon_config(strategies=("direct",), horizons=(4, 6))
    path, key, _ = horizon._where(first, data, tmp_path, "head", 0.0, 0, "direct", 12)
    assert path == horizon._where(second, data, tmp_path, "head", 0.0, 0, "direct", 6)[0]
    save_run(path.with_suffix(".ckpt"), {"w": np.zeros(2, np.float32)}, 8, {"run": key})
    with pytest.raises(ResumeMismatch, match=r"seed0_direct\.ckpt was written for other "
                                             r"settings.*horizons: \[4, 12\] → \[4, 6\]"):
        horizon.run_horizon(second, tmp_path, progress=False)
    assert not list(tmp_path.glob("pretrained_*"))  # nothing was pretrained first


def test_horizon_refuses_a_result_missing_a_field(tmp_path, data):
    config = horizon.quick_horizon_config(strategies=("direct",))
    path, key, _ = horizon._where(config, data, tmp_path, "head", 0.0, 0, "direct", 8)
    write_record(path, key, {"curves": {}})  # no "horizons"
    code, err = _cli(["horizon", "--quick", "--strategies", "direct", "--out", str(tmp_path)])
    assert code == cli.EXIT_INPUT and "seed0_direct.json is damaged" in err
    assert "missing field(s) ['horizons']" in err and "Traceback" not in err


def test_horizons_that_are_not_logged_steps_are_refused_naming_the_flag(tmp_path):
    code, err = _cli(["horizon", "--quick", "--horizons", "4", "7", "--out", str(tmp_path)])
    assert code == cli.EXIT_USAGE
    assert "--horizons must be multiples of the logging interval log_every = 2" in err
    assert not tmp_path.exists() or not any(tmp_path.iterdir())


def test_teachers_refuses_a_result_missing_validation(tmp_path, data):
    config = teachers.quick_teachers_config(names=("wma_sd",), baseline=False)
    name, lam, strategy = config.plan()[0]
    key = teachers._key(data, 0, config, strategy, config.training())
    write_record(tmp_path / config.name / teachers._stem(0, name, lam), key,
                 {"test": {}, "curves": {}})
    with pytest.raises(DamagedArtifact, match=r"missing field\(s\) \['validation'\]"):
        teachers.run_teachers(config, tmp_path, progress=False)


@pytest.mark.parametrize("damage", ["truncate", "garbage"])
def test_a_damaged_pretrained_model_is_refused_before_any_work(tmp_path, data, damage, capsys):
    config = quick_config()
    path = pretrained_path(config, data, tmp_path, 0)
    path.parent.mkdir(parents=True, exist_ok=True)
    if damage == "truncate":
        write_keyed(path, {"k": 1}, lambda f: f.write(b"x" * 1000))
        path.write_bytes(path.read_bytes()[:-500])
    else:
        path.write_bytes(b"\x00" * 64)
    with pytest.raises(DamagedArtifact, match=rf"{path.name} is damaged"):
        run_experiment(config, tmp_path, progress=False, data=data)
    assert not (tmp_path / config.name).exists()


# --- flags checked before setup ---------------------------------------------------------------

def _cli(argv):
    import contextlib
    import io

    err = io.StringIO()
    with contextlib.redirect_stderr(err):
        code = cli.main(argv)
    return code, err.getvalue()


def test_cli_strategy_choices_are_the_studies_own():
    parser = cli.build_parser()
    actions = {a.dest: a for a in parser._subparsers._group_actions[0].choices["budget"]._actions}
    assert tuple(actions["strategies"].choices) == budget.STRATEGIES
    actions = {a.dest: a for a in parser._subparsers._group_actions[0].choices["horizon"]._actions}
    assert tuple(actions["strategies"].choices) == tuple(horizon.STRATEGIES)


@pytest.mark.parametrize(("argv", "message"), [
    (["budget", "--quick", "--strategies", "lp_ft"], "argument --strategies: invalid choice"),
    (["teachers", "--quick", "--lambdas", "1e300"],
     "--lambdas must be λ ≥ 0 that float32 (the training dtype) holds (≤ 3.4e+38), got [1e+300]"),
    (["pareto", "--quick", "--random"], "--random and --models name no problem"),
    (["pareto", "--quick", "--random", "flat", "--design-steps", "0"],
     "--design-steps must be a positive integer"),
])
def test_bad_flags_are_usage_errors_before_any_file_is_written(tmp_path, argv, message):
    out = tmp_path / "out"
    code, err = _cli([*argv, "--out", str(out)])
    assert code == cli.EXIT_USAGE and message in err and "Traceback" not in err
    assert not out.exists()


@pytest.mark.parametrize(("content", "code", "message"), [
    ('{"log_values": ' + "[" * 50_000 + "]" * 50_000 + "}", cli.EXIT_INPUT,
     "is not a JSON file"),
    ('{"log_values": [0, 1' + "0" * 400 + "]}", cli.EXIT_INPUT, "at least 2 finite numbers"),
    ('{"log_values": [0, 1e39]}', cli.EXIT_USAGE, "float32 (the training dtype) holds"),
])
def test_bad_kernel_files_name_the_flag(tmp_path, content, code, message):
    kernel = tmp_path / "kernel.json"
    kernel.write_text(content)
    got, err = _cli(["teachers", "--quick", "--kernel", str(kernel), "--out",
                     str(tmp_path / "out")])
    assert got == code and "--kernel" in err and message in err and "Traceback" not in err


def test_teachers_config_refuses_values_that_overflow_float32():
    with pytest.raises(ValueError, match=r"--kernel log_values must be .* float32 .* got "
                                         r"\[0\.0, 1e\+39\]"):
        teachers.quick_teachers_config(kernel=(0.0, 1e39))
    ok = teachers.quick_teachers_config(kernel=(0.0, 1e3))  # large but representable
    assert dataclasses.replace(ok).kernel == (0.0, 1e3)


def test_linear_twins_are_keyed_by_data_and_pretraining(data):
    config = teachers.quick_teachers_config()
    key = teachers._twins_key(config, data)
    assert key["pretrained"]["data"] == data.fingerprint
    other = teachers.quick_teachers_config(
        pretrain=dataclasses.replace(config.pretrain, steps=31))
    assert teachers._twins_key(other, data) != key
    assert json.loads(json.dumps(key)) == key
