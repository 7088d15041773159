"""The quick long-horizon study end to end (``tracer-theory horizon --quick``, run once for the
module), and every number it reports against an independent computation in the test: the
evaluations of the pretrained model (read back from the run's folder) and of runs finetuned to
each horizon, scans of the logged curves, the linear dynamics solved directly, and NumPy's
seed statistics."""

import contextlib
import dataclasses
import io
import json
from pathlib import Path
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from tracer_theory import cli
from tracer_theory.deep.finetune.loop import finetune_on
from tracer_theory.deep.finetune.strategies import L2SP, entry
from tracer_theory.deep.studies import experiment
from tracer_theory.deep.studies.arrays import ExperimentData
from tracer_theory.deep.studies.evaluation import evaluate
from tracer_theory.deep.studies.experiment import ExperimentConfig, pretrained_model
from tracer_theory.deep.studies.horizon import METRICS, noisy_labels, quick_horizon_config
from tracer_theory.deep.studies.theory import ZeroShotProbe, linear_problem, predicted_forgetting
from tracer_theory.dynamics.schedules import static_teacher
from tracer_theory.dynamics.spectral import spectral_dynamics
from tracer_theory.linear.closed_forms import solve
from tracer_theory.linear.spectrum import spectrum

#: The study's strategies here: Direct FT, one EMA teacher, the WMA teacher and L2-SP.
NAMES = ("direct", "ema_sd", "wma_sd", "l2sp")
NOISE = 0.25
OBJECTIVE = "head"
SETTING = f"{OBJECTIVE}_noise{NOISE:g}"
SEED = 0
CONFIG = quick_horizon_config(strategies=NAMES, label_noise=(NOISE,))
HORIZONS = CONFIG.horizons
#: Runs the test repeats itself, each to one horizon: (strategy, T).
RERUNS = (("direct", HORIZONS[0]), ("direct", HORIZONS[-1]), ("ema_sd", HORIZONS[0]))
GAPS = ("param_distance", "logit_kl", "agreement")


class Study(NamedTuple):
    out: Path
    argv: list[str]
    text: str
    payload: dict[str, Any]


class Rebuilt(NamedTuple):
    data: ExperimentData
    pretrained: Any
    labels: np.ndarray
    class_emb: Any
    before: dict[str, float]  # evaluate() of the pretrained model
    probe_before: float  # zero-shot accuracy (%) on the curves' gray probe, by NumPy


@pytest.fixture(scope="module")
def study(tmp_path_factory) -> Study:
    """The quick study through the CLI, once for this file."""
    out = tmp_path_factory.mktemp("horizon") / "h"
    argv = ["horizon", "--quick", "--strategies", *NAMES, "--label-noise", str(NOISE),
            "--out", str(out), "--quiet"]
    text = io.StringIO()
    with contextlib.redirect_stdout(text):
        assert cli.main(argv) == 0
    return Study(out, argv, text.getvalue(),
                 json.loads((out / f"{CONFIG.name}.json").read_text()))


def _zero_shot_acc(clip, images: np.ndarray, labels: np.ndarray, class_emb) -> float:
    """Zero-shot accuracy (%) by NumPy: the argmax of image embeddings · class embeddings."""
    emb = np.asarray(clip.embed_images(jnp.asarray(images)), np.float64)
    logits = emb @ np.asarray(class_emb, np.float64).T
    return 100 * float(np.mean(np.argmax(logits, axis=1) == labels))


@pytest.fixture(scope="module")
def rebuilt(study) -> Rebuilt:
    """The seed's pretrained model read back from the run's folder (pretraining again is
    refused), the noisy labels, and its accuracies before finetuning."""
    data = ExperimentData(None, "toy", quick=True)
    config = ExperimentConfig(seeds=(SEED,), pretrain=CONFIG.pretrain, quick=True)

    def refuse(*args, **kwargs):
        raise AssertionError("the pretrained model must be read back, not pretrained again")

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(experiment, "pretrain", refuse)
        pretrained = pretrained_model(config, data, study.out, SEED, progress=False)
    class_emb = pretrained.clip.class_embeddings(jnp.asarray(data.captions))
    images, labels = data.gray_probe()
    return Rebuilt(data, pretrained, noisy_labels(data, NOISE, SEED), class_emb,
                   evaluate(pretrained, data, OBJECTIVE),
                   _zero_shot_acc(pretrained.clip, images, labels, class_emb))


@pytest.fixture(scope="module")
def reruns(rebuilt) -> dict[tuple[str, int], Any]:
    """``{(strategy, T): model}``: finetuned here in a run of exactly T steps (no snapshots)."""
    r = rebuilt
    models = {}
    for name, t in RERUNS:
        ft = dataclasses.replace(CONFIG.finetune, objective=OBJECTIVE, steps=t)
        run = finetune_on(r.data.task(), r.pretrained, entry(name).strategy, ft,
                          class_emb=r.class_emb, prompts=r.data.captions, labels=r.labels,
                          seed=SEED, chunk=CONFIG.chunk)
        models[name, t] = run.model
    return models


@pytest.fixture(scope="module")
def predictions(rebuilt) -> dict[str, dict[int, dict[str, Any]]]:
    """``{strategy: {T: prediction}}`` of the linearization built here: ``spectral_dynamics``
    with the strategy's own λ and schedule (Direct FT: λ = 0, the static teacher) at half the
    stability bound ``1/(σ_max²(1 + λ_SD))`` (σ_max by NumPy), L2-SP's closed form by
    ``solve``; the predicted forgetting of the final image projection."""
    r = rebuilt
    with jax.enable_x64(True):  # as the study's (the same compiled programs)
        problem = linear_problem(r.pretrained, r.data, labels=r.labels)
        probe = ZeroShotProbe.of(r.pretrained, r.data)
        w0, spec = np.asarray(problem.w0), spectrum(problem)
        sigma_max_sq = float(np.linalg.norm(np.asarray(problem.x_img), 2)) ** 2
        lr = 1 / (sigma_max_sq * (1 + entry("static_sd").strategy.lam))
        out: dict[str, dict[int, dict[str, Any]]] = {}
        for name in NAMES:
            strategy = entry(name).strategy
            for t in HORIZONS:
                if isinstance(strategy, L2SP):
                    w = np.asarray(solve(problem, strategy.linear(problem, t), spectrum=spec))
                    row: dict[str, Any] = {}
                else:
                    lam, schedule = ((0.0, static_teacher()) if name == "direct"
                                     else (strategy.lam, strategy.schedule(t)))
                    res = spectral_dynamics(problem, lam, schedule, steps=t, lr=lr,
                                            record_every=CONFIG.finetune.log_every, spectrum=spec)
                    w = np.asarray(res.student)
                    row = {"gap": float(res.summary.gap[-1]), "bias": float(res.summary.bias[-1]),
                           "gap_curve": np.asarray(res.summary.gap),
                           "curve_steps": np.asarray(res.steps)}
                out.setdefault(name, {})[t] = row | predicted_forgetting(probe, w0, w)
    return out


def _record(study: Study, name: str, t: int) -> dict[str, Any]:
    return study.payload["runs"][SETTING][name][str(t)][str(SEED)]


def _curves(study: Study, name: str, t: int) -> dict[str, list]:
    """The logged curves that horizon ``t`` was read from: the run of length ``t`` where there
    is one (a horizon-dependent teacher), else the run to the longest horizon."""
    runs = study.payload["curves"][SETTING][name]
    return runs[str(t) if str(t) in runs else str(HORIZONS[-1])][str(SEED)]


def _index(steps: list, t: int) -> int:
    """Position of step ``t`` in the logged ``steps``, by a plain scan."""
    for i, s in enumerate(steps):
        if s == t:
            return i
    raise AssertionError(f"step {t} was not logged: {steps}")


def _half_step_by_scan(steps: list, forgetting: list, t: int) -> float | None:
    """The first logged step ≤ t whose forgetting is at least half the forgetting at t (None
    when nothing was forgotten at t)."""
    kept = [(s, f) for s, f in zip(steps, forgetting, strict=True) if s <= t]
    if not kept or kept[-1][1] <= 0:
        return None
    for s, f in kept:
        if 2 * f >= kept[-1][1]:
            return float(s)
    raise AssertionError("unreachable: the last record reaches half of itself")


def test_run_configuration_equals_the_one_rebuilt_here(study):
    """Code against itself: the references below rebuild the run from ``CONFIG``; it must be
    the configuration the CLI ran."""
    assert study.payload["config"] == CONFIG.describe()


def test_quick_study_writes_every_field(study):
    payload, out = study.payload, study.out
    horizons = [str(t) for t in HORIZONS]
    logged = list(range(CONFIG.finetune.log_every, HORIZONS[-1] + 1, CONFIG.finetune.log_every))
    assert set(payload["summary"]) == {SETTING}
    for name in NAMES:
        for t in horizons:
            row = payload["summary"][SETTING][name][t]
            for key in (*METRICS, "half_forgetting_step", "final_loss"):
                assert key in row, (name, t, key)
            if name in ("ema_sd", "wma_sd"):
                for key in GAPS:
                    assert f"gap_{key}" in row, (name, t, key)
            assert np.isfinite(payload["theory"][SETTING][name][t]["predicted_forgetting"])
        # whole curves: one run to the longest T, but one run per T for WMA
        runs = payload["curves"][SETTING][name]
        assert set(runs) == (set(horizons) if name == "wma_sd" else {horizons[-1]})
        curves = runs[horizons[-1]][str(SEED)]
        assert curves["steps"] == logged
        for key in ("loss", *GAPS, "gray_acc", "forgetting"):
            assert len(curves[key]) == len(logged), key
    assert payload["verdicts"][SETTING] and entry("wma_sd").label in study.text
    assert (out / "figures" / f"{CONFIG.name}_forgetting.png").exists()
    assert (out / "figures" / f"{CONFIG.name}_curves.png").exists()
    # resuming reads the finished runs and writes the same summary
    stamps = sorted(p.stat().st_mtime_ns for p in (out / CONFIG.name).rglob("*.json"))
    with contextlib.redirect_stdout(io.StringIO()):
        assert cli.main(study.argv) == 0
    again = json.loads((out / f"{CONFIG.name}.json").read_text())
    assert again["summary"] == payload["summary"]
    assert sorted(p.stat().st_mtime_ns for p in (out / CONFIG.name).rglob("*.json")) == stamps
    assert not list(out.rglob("*.ckpt"))


def test_forgetting_is_the_drop_from_the_evaluated_pretrained_accuracy(study, rebuilt):
    """Forgetting at every (strategy, T) = gray accuracy of ``evaluate(pretrained)`` (computed
    here) − the gray accuracy after."""
    for name in NAMES:
        for t in HORIZONS:
            record = _record(study, name, t)
            np.testing.assert_allclose(record["forgetting"],
                                       rebuilt.before["gray_acc"] - record["gray_acc"],
                                       rtol=0, atol=1e-9, err_msg=f"{name} T={t}")


def test_metrics_at_a_horizon_match_a_run_of_that_length(study, rebuilt, reruns):
    """Every metric at (strategy, T), the horizons read from a longer run's snapshot included,
    against ``evaluate`` of a model finetuned here for exactly T steps; the forgetting against
    ``evaluate`` of the pretrained model too."""
    for (name, t), model in reruns.items():
        after = evaluate(model, rebuilt.data, OBJECTIVE)
        record = _record(study, name, t)
        for key in METRICS:
            if key != "forgetting":
                np.testing.assert_allclose(record[key], after[key], rtol=0, atol=1e-9,
                                           err_msg=f"{name} T={t} {key}")
        np.testing.assert_allclose(record["forgetting"],
                                   rebuilt.before["gray_acc"] - after["gray_acc"],
                                   rtol=0, atol=1e-9, err_msg=f"{name} T={t}")


def test_forgetting_curve_is_the_drop_of_the_probe_accuracy(study, rebuilt, reruns):
    """The logged forgetting = the pretrained model's zero-shot accuracy on the gray probe (by
    NumPy here) − the logged probe accuracy; at step T the latter is the NumPy zero-shot
    accuracy of the model finetuned here for T steps."""
    for name in NAMES:
        for per_seed in study.payload["curves"][SETTING][name].values():
            curves = per_seed[str(SEED)]
            np.testing.assert_allclose(curves["forgetting"],
                                       rebuilt.probe_before - np.asarray(curves["gray_acc"]),
                                       rtol=0, atol=1e-9, err_msg=name)
    images, labels = rebuilt.data.gray_probe()
    for (name, t), model in reruns.items():
        curves = _curves(study, name, t)
        after = _zero_shot_acc(model.clip, images, labels, rebuilt.class_emb)
        np.testing.assert_allclose(curves["forgetting"][_index(curves["steps"], t)],
                                   rebuilt.probe_before - after, rtol=0, atol=1e-9,
                                   err_msg=f"{name} T={t}")


def test_half_forgetting_step_matches_a_scan_of_the_logged_curve(study):
    """The half-forgetting step of every (strategy, T) against a plain scan of the curve."""
    for name in NAMES:
        for t in HORIZONS:
            curves = _curves(study, name, t)
            expected = _half_step_by_scan(curves["steps"], curves["forgetting"], t)
            assert _record(study, name, t)["half_forgetting_step"] == expected, (name, t)


def test_final_loss_and_gaps_are_the_logged_values_at_the_horizon(study):
    """The final loss and teacher–student gaps at T against the logged curves at the position
    of step T (found by a scan); strategies without a teacher report no gap."""
    for name in NAMES:
        teacher = entry(name).strategy.schedule(1) is not None
        for t in HORIZONS:
            curves, record = _curves(study, name, t), _record(study, name, t)
            i = _index(curves["steps"], t)
            assert record["final_loss"] == curves["loss"][i], (name, t)
            for key in GAPS:
                if teacher:
                    assert record[f"gap_{key}"] == curves[key][i], (name, t, key)
                else:
                    assert f"gap_{key}" not in record, (name, t, key)


def test_theory_matches_the_linear_dynamics_solved_here(study, predictions):
    """Every prediction against ``spectral_dynamics`` (or L2-SP's ``solve``) on a
    linearization built here with the noisy labels, each strategy's own λ, schedule and T."""
    theory = study.payload["theory"][SETTING]
    for name in NAMES:
        for t in HORIZONS:
            got, want = theory[name][str(t)], predictions[name][t]
            for key in ("predicted_forgetting", "predicted_logit_change", "gap", "bias"):
                if key in want:
                    np.testing.assert_allclose(got[key], want[key], rtol=1e-9, atol=1e-12,
                                               err_msg=f"{name} T={t} {key}")
            if "gap_curve" in want:
                np.testing.assert_allclose(got["gap_curve"], want["gap_curve"], rtol=1e-9,
                                           atol=1e-12, err_msg=f"{name} T={t}")
                np.testing.assert_array_equal(got["curve_steps"], want["curve_steps"])
            else:
                assert "gap" not in got and "gap_curve" not in got, (name, t)


def test_summary_is_the_numpy_mean_and_std_over_seeds(study):
    """Each summary cell against ``np.mean``/``np.std`` of the per-seed values in ``runs``
    (``None`` values left out; ``None`` when every seed's is)."""
    summary, runs = study.payload["summary"], study.payload["runs"]
    assert set(summary) == set(runs)
    for setting, per_name in runs.items():
        for name, per_t in per_name.items():
            for t, per_seed in per_t.items():
                cell = summary[setting][name][t]
                for key in ("final_loss", "half_forgetting_step", *METRICS,
                            *(f"gap_{k}" for k in GAPS if f"gap_{k}" in cell)):
                    values = [r[key] for r in per_seed.values()]
                    finite = [v for v in values if v is not None]
                    assert cell[key]["seeds"] == values, (name, t, key)
                    if not finite:
                        assert cell[key]["mean"] is None and cell[key]["std"] is None
                        continue
                    np.testing.assert_allclose([cell[key]["mean"], cell[key]["std"]],
                                               [np.mean(finite), np.std(finite)], rtol=1e-12,
                                               atol=1e-12, err_msg=f"{name} T={t} {key}")


def test_verdicts_quote_the_measured_and_predicted_forgetting(study, predictions):
    """The verdicts' numbers against the seed means of ``runs`` and the predictions made here;
    WMA's "below EMA" horizons against a comparison of those means."""
    lines = study.payload["verdicts"][SETTING]
    runs = study.payload["runs"][SETTING]

    def measured(name, t):
        return float(np.mean([r["forgetting"] for r in runs[name][str(t)].values()]))

    first, last = HORIZONS[0], HORIZONS[-1]
    label = entry("ema_sd").full_label
    (line,) = [s for s in lines if s.startswith(f"measured: {label} ")]
    for value in (measured("ema_sd", first), measured("ema_sd", last), measured("direct", last)):
        assert f"{value:.1f}" in line, (value, line)
    (line,) = [s for s in lines if s.startswith(f"predicted: {label} ")]
    for value in (predictions["ema_sd"][first]["predicted_forgetting"],
                  predictions["ema_sd"][last]["predicted_forgetting"],
                  predictions["direct"][last]["predicted_forgetting"]):
        assert f"{value:.1f}" in line, (value, line)
    below = [t for t in HORIZONS if measured("wma_sd", t) < measured("ema_sd", t)]
    p_below = [t for t in HORIZONS if predictions["wma_sd"][t]["predicted_forgetting"]
               < predictions["ema_sd"][t]["predicted_forgetting"]]
    wma = entry("wma_sd").full_label
    (line,) = [s for s in lines if s.startswith(f"measured: {wma} ")]
    assert f"{below or 'none'} (" in line, (below, line)
    for t in HORIZONS:
        assert f"T={t}: {measured('wma_sd', t):.1f} vs {measured('ema_sd', t):.1f}" in line
    (line,) = [s for s in lines if s.startswith(f"predicted: {wma} ")]
    assert line.endswith(f"{p_below or 'none'}"), (p_below, line)
