"""The long-horizon study (``tracer-theory horizon``): label noise, the half-forgetting step,
the quick study end to end through the CLI, and its bad input."""

import json

import numpy as np
import pytest

from tracer_theory import cli
from tracer_theory.deep.data.mnist import flip_labels
from tracer_theory.deep.studies.arrays import ExperimentData
from tracer_theory.deep.studies.horizon import (
    METRICS,
    STRATEGIES,
    HorizonConfig,
    half_step,
    noisy_labels,
)


@pytest.mark.parametrize("fraction", [0.0, 0.1, 0.25, 0.5])
def test_label_noise_flips_the_stated_fraction_to_other_classes(fraction):
    labels = np.random.default_rng(0).integers(10, size=20_000)
    noisy, flipped = flip_labels(labels, fraction, seed=1)
    n = len(labels)
    # binomial tolerance: 5 standard deviations
    assert abs(flipped.mean() - fraction) <= 5 * np.sqrt(fraction * (1 - fraction) / n) + 1e-12
    np.testing.assert_array_equal(noisy != labels, flipped)  # a flip never keeps the class
    np.testing.assert_array_equal(noisy[~flipped], labels[~flipped])
    if fraction:  # the new class is uniform over the other nine
        shift = (noisy[flipped] - labels[flipped]) % 10
        counts = np.bincount(shift, minlength=10)[1:]
        expected = flipped.sum() / 9
        assert np.all(np.abs(counts - expected) < 5 * np.sqrt(expected))


def test_label_noise_touches_only_the_training_split():
    data = ExperimentData(quick=True)
    test, val = data.test_labels.copy(), data.val_labels.copy()
    noisy = noisy_labels(data, 0.25, seed=0)
    assert 0.15 < np.mean(noisy != data.train_labels) < 0.35
    np.testing.assert_array_equal(data.test_labels, test)
    np.testing.assert_array_equal(data.val_labels, val)
    np.testing.assert_array_equal(noisy_labels(data, 0.25, seed=0), noisy)  # deterministic
    assert not np.array_equal(noisy_labels(data, 0.25, seed=1), noisy)


@pytest.mark.parametrize("bad", [-0.1, 1.0, 1.5, float("nan"), True])
def test_label_noise_outside_the_unit_interval_is_refused(bad):
    with pytest.raises(ValueError, match="label noise"):
        flip_labels(np.zeros(4, int), bad, seed=0)


def test_half_forgetting_step_by_hand():
    steps = np.array([10, 20, 30, 40])
    forgetting = np.array([1.0, 3.0, 5.0, 6.0])
    assert half_step(steps, forgetting, 40) == 20  # half of 6 is first reached at step 20
    assert half_step(steps, forgetting, 30) == 20  # half of 5 = 2.5: step 20
    assert half_step(steps, forgetting, 10) == 10
    assert half_step(steps, np.array([1.0, 0.5, 0.0, -1.0]), 40) is None


@pytest.mark.parametrize(("field", "value", "flag"), [
    ("horizons", (0, 10), "--horizons"), ("horizons", (-5,), "--horizons"),
    ("horizons", (100, 10), "--horizons"), ("horizons", (10, 10), "--horizons"),
    ("label_noise", (1.0,), "--label-noise"), ("label_noise", (-0.5,), "--label-noise"),
    ("chunk", 0, "--chunk"), ("chunk", -3, "--chunk"), ("strategies", ("nope",), "--strategies"),
    ("objectives", ("both",), "--objectives"), ("only", (("head", 0.5),), "--only"),
    ("only", (("prompts", 0.0),), "--only")])
def test_bad_study_settings_name_the_flag(field, value, flag):
    base = {"objectives": ("head",)} if field == "only" else {}
    HorizonConfig(**base)  # the base itself is valid
    with pytest.raises(ValueError, match=flag):
        HorizonConfig(**(base | {field: value}))


@pytest.mark.parametrize("argv", [["--horizons", "0", "5"], ["--horizons", "8", "4"],
                                  ["--label-noise", "1"], ["--chunk", "0"],
                                  ["--only", "head"], ["--only", "prompts:0"]])
def test_cli_bad_input_is_a_usage_error(argv, tmp_path, capsys):
    code = cli.main(["horizon", "--quick", "--out", str(tmp_path), "--quiet", *argv])
    assert code == cli.EXIT_USAGE
    assert argv[0] in capsys.readouterr().err


def test_quick_study_writes_every_field(tmp_path, capsys):
    out = tmp_path / "h"
    argv = ["horizon", "--quick", "--strategies", "direct", "ema_sd", "wma_sd",
            "--label-noise", "0.25", "--out", str(out), "--quiet"]
    assert cli.main(argv) == 0
    text = capsys.readouterr().out
    payload = json.loads((out / "horizon_quick.json").read_text())
    horizons = payload["config"]["horizons"]
    assert horizons == [4, 8]
    setting = "head_noise0.25"
    assert set(payload["summary"]) == {setting}
    for name in ("direct", "ema_sd", "wma_sd"):
        for t in map(str, horizons):
            row = payload["summary"][setting][name][t]
            for key in (*METRICS, "half_forgetting_step", "final_loss"):
                assert key in row, (name, t, key)
            if name != "direct":
                for key in ("gap_param_distance", "gap_logit_kl", "gap_agreement"):
                    assert key in row, (name, t, key)
            assert np.isfinite(payload["theory"][setting][name][t]["predicted_forgetting"])
        # whole curves: one run to T = 8 for Direct and EMA, one run per T for WMA
        runs = payload["curves"][setting][name]
        assert set(runs) == ({"4", "8"} if name == "wma_sd" else {"8"})
        curves = runs["8"]["0"]
        for key in ("steps", "loss", "param_distance", "logit_kl", "agreement", "gray_acc",
                    "forgetting"):
            assert len(curves[key]) == len(curves["steps"]) == 4, key
    # Direct FT at T = 4 is the snapshot of the T = 8 run: its logged curve up to step 4
    # is the T = 4 run's, and its half-forgetting step lies within it
    assert payload["summary"][setting]["direct"]["4"]["half_forgetting_step"]["mean"] in (
        None, 2.0, 4.0)
    assert payload["verdicts"][setting] and "WMA SD" in text
    assert (out / "figures" / "horizon_quick_forgetting.png").exists()
    assert (out / "figures" / "horizon_quick_curves.png").exists()
    # resuming reads the finished runs and writes the same summary
    stamps = sorted(p.stat().st_mtime_ns for p in (out / "horizon_quick").rglob("*.json"))
    assert cli.main(argv) == 0
    again = json.loads((out / "horizon_quick.json").read_text())
    assert again["summary"] == payload["summary"]
    assert sorted(p.stat().st_mtime_ns for p in (out / "horizon_quick").rglob("*.json")) == stamps
    assert not list(out.rglob("*.ckpt"))


def test_only_the_wma_teacher_runs_once_per_horizon():
    from tracer_theory.deep.studies.horizon import _runs

    config = HorizonConfig(horizons=(10, 30))
    for name in STRATEGIES:
        expected = [(10, (10,)), (30, (30,))] if name == "wma_sd" else [(30, (10, 30))]
        assert _runs(config, name) == expected, name
