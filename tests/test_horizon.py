"""The long-horizon study (``tracer-theory horizon``): label noise, the half-forgetting step, the
seed statistics, and bad input. The quick study end to end, with every number it reports
against an independent computation: tests/test_horizon_reference.py."""

import numpy as np
import pytest

from tracer_theory import cli
from tracer_theory.deep.data.mnist import flip_labels
from tracer_theory.deep.studies.arrays import ExperimentData
from tracer_theory.deep.studies.horizon import (
    STRATEGIES,
    HorizonConfig,
    half_step,
    noisy_labels,
    quick_horizon_config,
    summarize,
    summarize_theory,
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


def _half_step_by_scan(steps, forgetting, horizon):
    """The first step ≤ horizon whose forgetting is at least half the forgetting at the last
    step ≤ horizon (None when that is not positive), by a plain loop."""
    kept = [(int(s), float(f)) for s, f in zip(steps, forgetting, strict=True) if s <= horizon]
    if not kept or kept[-1][1] <= 0:
        return None
    for s, f in kept:
        if 2 * f >= kept[-1][1]:
            return float(s)
    raise AssertionError("unreachable")


def test_half_forgetting_step_matches_a_plain_scan_on_random_curves():
    """``half_step`` against a plain loop, on curves of small integers (ties with the half-way
    value are common), at horizons on and between the logged steps."""
    rng = np.random.default_rng(0)
    for _ in range(300):
        n = int(rng.integers(1, 7))
        steps = np.arange(1, n + 1) * 10
        forgetting = rng.integers(-2, 9, size=n).astype(float)
        horizon = int(rng.integers(5, 10 * n + 6))
        assert half_step(steps, forgetting, horizon) == _half_step_by_scan(
            steps, forgetting, horizon), (steps, forgetting, horizon)


def test_summary_is_the_numpy_mean_and_std_over_three_seeds():
    """``summarize`` against ``np.mean``/``np.std`` over the seeds (``None`` values left out),
    on made-up records of three seeds; the curves are not summarized."""
    rng = np.random.default_rng(1)
    records = {"s": {name: {t: {str(seed): {"forgetting": float(rng.normal()),
                                            "half_forgetting_step": [None, 2.0, 6.0][seed],
                                            "final_loss": float(rng.normal()),
                                            "curves": {"loss": [1.0, 2.0]}}
                                for seed in range(3)}
                            for t in ("4", "8")}
                     for name in ("direct", "ema_sd")}}
    summary = summarize(records, quick_horizon_config())
    for name, per_t in records["s"].items():
        for t, per_seed in per_t.items():
            cell = summary["s"][name][t]
            assert "curves" not in cell
            for key in ("forgetting", "half_forgetting_step", "final_loss"):
                values = [r[key] for r in per_seed.values()]
                finite = [v for v in values if v is not None]
                assert cell[key]["seeds"] == values
                np.testing.assert_allclose([cell[key]["mean"], cell[key]["std"]],
                                           [np.mean(finite), np.std(finite)], rtol=1e-12)


def test_theory_summary_is_the_seed_mean_of_every_prediction():
    """``summarize_theory`` against ``np.mean`` over two seeds of each prediction and of the
    gap curves, step by step."""
    config = quick_horizon_config(strategies=("ema_sd", "l2sp"))
    rng = np.random.default_rng(2)

    def prediction(teacher, t):
        row = {"predicted_forgetting": float(rng.normal()),
               "predicted_logit_change": float(rng.normal())}
        if teacher:
            steps = list(range(0, t + 1, 2))
            row |= {"gap": float(rng.normal()), "bias": float(rng.normal()),
                    "curve_steps": steps, "gap_curve": rng.normal(size=len(steps)).tolist()}
        return row

    theory = {"s": {seed: {name: {str(t): prediction(name == "ema_sd", t)
                                  for t in config.horizons}
                           for name in config.strategies}
                    for seed in ("0", "1")}}
    summary = summarize_theory(theory, config)["s"]
    for name in config.strategies:
        for t in map(str, config.horizons):
            rows = [theory["s"][seed][name][t] for seed in ("0", "1")]
            for key in rows[0]:
                if key == "curve_steps":
                    assert summary[name][t][key] == rows[0][key]
                    continue
                want = np.mean([r[key] for r in rows], axis=0)
                np.testing.assert_allclose(summary[name][t][key], want, rtol=1e-12)
            assert set(summary[name][t]) == set(rows[0])


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


def test_only_the_wma_teacher_runs_once_per_horizon():
    from tracer_theory.deep.studies.horizon import _runs

    config = HorizonConfig(horizons=(10, 30))
    for name in STRATEGIES:
        expected = [(10, (10,)), (30, (30,))] if name == "wma_sd" else [(30, (10, 30))]
        assert _runs(config, name) == expected, name
