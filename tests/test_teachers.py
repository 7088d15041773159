"""The teacher comparison in the deep toy (``tracer-theory teachers``, issue 14 item 4): the
kernel teacher of any kernel, replay-SD's regularizer and batches, the choice of λ on the
validation split alone, the comparison at equal ID accuracy against hand-computed numbers, the
quick study end to end through the CLI (and its resume), and its bad input."""

import json
import pickle

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from tracer_theory import cli
from tracer_theory.deep.finetune import Batch, Direct, Finetunee, SelfDistill
from tracer_theory.deep.finetune.loop import TrainingData, draw_batch
from tracer_theory.deep.finetune.step import finetune_loss, in_compute_dtype
from tracer_theory.deep.finetune.strategies import (
    WMA,
    KernelTeacher,
    LossInputs,
    ReplayDistill,
    describe,
    has_teacher,
)
from tracer_theory.deep.models import ToyCLIP
from tracer_theory.deep.studies import teachers
from tracer_theory.deep.studies.arrays import ExperimentData
from tracer_theory.deep.studies.teachers import (
    TeachersConfig,
    crossings,
    format_teachers,
    quick_teachers_config,
    run_teachers,
    select_lambda,
    summarize,
    verdicts,
)
from tracer_theory.dynamics.schedules import BetaKernel, GridKernel, kernel_teacher
from tracer_theory.report.teachers import teachers_figure

LOG_VALUES = (0.0, 1.5, -0.5, 0.7)


# --- the kernel teacher -----------------------------------------------------------------------

@pytest.mark.parametrize("kernel", [GridKernel(np.asarray(LOG_VALUES)), BetaKernel(0.5, 2.0)],
                         ids=["grid", "beta"])
@pytest.mark.parametrize("steps", [1, 37, 100])
def test_kernel_teacher_gives_the_weights_of_kernel_teacher(kernel, steps):
    ours = KernelTeacher(kernel)(steps)
    np.testing.assert_array_equal(ours.weights(steps + 3),
                                  kernel_teacher(steps, kernel).weights(steps + 3))
    assert float(ours(steps)) == float(kernel_teacher(steps, kernel)(steps))


def test_kernel_teacher_of_the_arcsine_kernel_is_wma():
    for steps in (5, 100):
        np.testing.assert_array_equal(KernelTeacher(BetaKernel(0.5, 0.5))(steps).weights(steps),
                                      WMA(0.5, 0.5)(steps).weights(steps))


def test_designed_teacher_is_a_static_describable_value():
    make = lambda v: SelfDistill(1.0, KernelTeacher(GridKernel(np.asarray(v))))  # noqa: E731
    strategy = make(LOG_VALUES)
    # equal and hashable by the kernel's values (a static value of the jitted step)
    assert strategy == make(LOG_VALUES) and hash(strategy) == hash(make(LOG_VALUES))
    assert strategy != make((0.0, 1.5, -0.5, 0.8))
    assert pickle.loads(pickle.dumps(strategy)) == strategy
    assert not jax.tree.leaves(eqx.filter(strategy, eqx.is_array))  # no array to go static
    # JSON-ready, and naming the kernel and its values (the resume keys)
    text = json.dumps(describe(strategy))
    assert json.loads(text)["teacher"] == {"type": "KernelTeacher", "kind": "GridKernel",
                                           "values": [["log_values", list(LOG_VALUES)]]}
    assert has_teacher(strategy)
    np.testing.assert_array_equal(strategy.teacher.kernel.log_values, np.asarray(LOG_VALUES))
    with pytest.raises(TypeError, match="Kernel"):
        KernelTeacher(lambda tau: tau)


# --- replay-SD --------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def toy():
    """A float64 toy CLIP (width 16, dim 8) with a head, the quick data and a batch of 4
    finetuning and 6 gray pretraining images."""
    key = jax.random.key(0)
    clip = ToyCLIP(width=16, dim=8, key=key)
    model = in_compute_dtype(Finetunee(clip, eqx.nn.Linear(16, 10, key=key)), "float64")
    data = ExperimentData(quick=True)
    tokens, labels = data.hybrid()[1:]
    batch = Batch(jnp.asarray(data.color_train[:4], jnp.float64),
                  jnp.asarray(data.train_labels[:4]), jnp.asarray(data.gray_train[10:16],
                                                                  jnp.float64),
                  jnp.asarray(tokens[10:16]), jnp.asarray(labels[10:16]))
    return model, data, batch


def _inputs(model, pretrained, batch):
    zeros = jnp.zeros((batch.images.shape[0], 10), jnp.float64)
    return LossInputs(model, batch, None, zeros, pretrained, None, None, None, "head")


def test_replay_regularizer_is_zero_at_the_pretrained_model(toy):
    model, _, batch = toy
    strategy = ReplayDistill(2.5, 0.25)
    reg, parts = strategy.regularizer(_inputs(model, model, batch))
    assert float(reg) == 0.0 and float(parts["replay_distance"]) == 0.0


@eqx.filter_jit
def _replay_value_and_grads(strategy, model, pretrained, batch):
    """The regularizer, its gradients w.r.t. the student and the pretrained model, and the
    features of the replay images (one compiled program)."""
    def reg(both):
        return strategy.regularizer(_inputs(*both, batch))[0]

    value, grads = eqx.filter_value_and_grad(reg)((model, pretrained))
    return value, grads, pretrained.clip.image_features(batch.hybrid_images)


def test_replay_gradient_on_the_projection_is_the_closed_form(toy):
    model, _, batch = toy
    lam = 2.5
    delta = 0.1 * jax.random.normal(jax.random.key(3), model.clip.image_proj.weight.shape,
                                    jnp.float64)
    moved = eqx.tree_at(lambda m: m.clip.image_proj.weight, model,
                        model.clip.image_proj.weight + delta)
    reg, (grads, frozen), x = _replay_value_and_grads(ReplayDistill(lam, 0.25), moved, model,
                                                      batch)
    b = x.shape[0]  # x (B, width): the encoder did not move
    # λ/B Σ ‖Δ x_i‖² and its gradient 2λ/B Σ (Δ x_i) x_iᵀ
    np.testing.assert_allclose(float(reg), lam / b * float(jnp.sum((x @ delta.T) ** 2)),
                               rtol=1e-10)
    np.testing.assert_allclose(grads.clip.image_proj.weight, 2 * lam / b * (x @ delta.T).T @ x,
                               rtol=1e-9, atol=1e-12)
    # the pretrained side is under stop_gradient
    assert all(float(jnp.max(jnp.abs(g))) == 0.0 for g in jax.tree.leaves(frozen))


def test_replay_task_loss_sees_the_finetuning_images_alone(toy):
    model, data, batch = toy
    moved = eqx.tree_at(lambda m: m.clip.image_proj.weight, model,
                        1.1 * model.clip.image_proj.weight)
    emb = model.clip.class_embeddings(jnp.asarray(data.captions))
    kw = dict(pretrained=model, teacher_tower=None, class_emb=emb, teacher_head=model.head)
    _, direct = finetune_loss(moved, batch, Direct(), "head", **kw)
    _, replay = finetune_loss(moved, batch, ReplayDistill(1.0, 0.25), "head", **kw)
    other = eqx.tree_at(lambda b: b.hybrid_images, batch, batch.hybrid_images[::-1] * 0.5)
    _, replay_other = finetune_loss(moved, other, ReplayDistill(1.0, 0.25), "head", **kw)
    assert float(direct["task"]) == float(replay["task"]) == float(replay_other["task"])
    assert float(replay["reg"]) > 0 and float(replay["reg"]) != float(replay_other["reg"])


def test_replay_mixes_the_stated_count_of_gray_images(toy):
    _, data, _ = toy
    assert ReplayDistill(1.0, 0.25).hybrid_size(64) == 16
    assert ReplayDistill(1.0, 0.3).hybrid_size(10) == 3
    training = TrainingData.of(data.color_train, data.train_labels, data.hybrid())
    batch = draw_batch(training, jax.random.key(1), 64, ReplayDistill(1.0, 0.25).hybrid_size(64))
    assert batch.images.shape[0] == batch.labels.shape[0] == 48
    assert batch.hybrid_images.shape[0] == batch.hybrid_tokens.shape[0] == 16
    hybrid = np.asarray(batch.hybrid_images)
    np.testing.assert_array_equal(hybrid[:, 0], hybrid[:, 1])  # gray: equal channels
    assert not np.array_equal(np.asarray(batch.images)[:, 0], np.asarray(batch.images)[:, 1])
    for bad in (0.0, 1.0, -0.1):
        with pytest.raises(ValueError, match="fraction"):
            ReplayDistill(1.0, bad)


# --- selection and the comparison at equal ID accuracy, by hand -------------------------------

def test_lambda_is_the_best_validation_score_first_on_ties():
    scores = {"0.3": {"score": 80.0}, "1": {"score": 82.0}, "3": {"score": 82.0},
              "10": {"score": 70.0}}
    assert select_lambda(scores) == "1"


def test_crossings_in_grid_order():
    assert crossings([90.0, 88.0, 91.0], 89.0) == [(0, 0.5), (1, pytest.approx(1 / 3))]
    assert crossings([90.0, 88.0], 88.0) == [(1, 0.0)]
    assert crossings([90.0, 88.0], 87.0) == []


def _records(ids, forgets):
    """``{λ key: {seed: record}}`` from per-λ (seed 0, seed 1) ID accuracies and forgettings."""
    return {lam: {str(s): {"test": {"id_acc": i[s], "forgetting": f[s], "gray_acc": 90 - f[s]}}
                  for s in range(2)}
            for lam, i, f in zip(("0.3", "1", "3"), ids, forgets, strict=True)}


def _hand_payload():
    runs = {"wma_sd": _records([(90, 92), (88, 90), (85, 87)], [(10, 12), (6, 8), (4, 4)]),
            "ema_sd": _records([(92, 94), (90, 90), (86, 88)], [(14, 16), (10, 12), (8, 8)]),
            "designed_sd": _records([(90, 90), (87, 89), (84, 86)], [(6, 7), (4, 5), (2, 3)]),
            "replay_sd": _records([(95, 95), (94, 94), (93, 93)], [(1, 1), (1, 1), (1, 1)])}
    scores = {lam: {"score": 50.0} for lam in ("0.3", "1", "3")}
    selection = {name: {"key": "1", "lam": 1.0, "scores": scores} for name in runs}
    direct = {"0": {"test": {"id_acc": 95, "forgetting": 40, "gray_acc": 50}},
              "1": {"test": {"id_acc": 96, "forgetting": 42, "gray_acc": 48}}}
    summary = summarize(runs, selection, direct)
    return {"summary": summary, "selection": selection, "verdicts": verdicts(summary),
            "config": {"seeds": [0, 1]}}


def test_summary_and_verdicts_by_hand():
    payload = _hand_payload()
    summary = payload["summary"]
    wma = summary["strategies"]["wma_sd"]["chosen"]
    assert wma["forgetting"]["mean"] == 7 and wma["forgetting"]["std"] == 1
    assert wma["forgetting"]["seeds"] == [6, 8] and wma["id_acc"]["mean"] == 89
    assert summary["direct"]["forgetting"]["mean"] == 41
    equal = summary["equal_id"]
    assert equal["id_acc"] == 89 and equal["reference"] == "wma_sd"
    rows = equal["strategies"]
    assert rows["wma_sd"]["forgetting"]["seeds"] == [6, 8]  # the reference's own point
    # EMA: ID means 90 → 87 between λ = 1 and 3, t = 1/3: 2/3·(10, 12) + 1/3·(8, 8)
    ema = rows["ema_sd"]
    assert ema["between"] == ["1", "3"] and ema["weight"] == pytest.approx(1 / 3)
    np.testing.assert_allclose(ema["forgetting"]["seeds"], [28 / 3, 32 / 3])
    assert ema["forgetting"]["mean"] == pytest.approx(10)
    assert ema["forgetting"]["std"] == pytest.approx(2 / 3)
    assert ema["lam"] == pytest.approx(3 ** (1 / 3))  # log-scale, for information
    # designed: 90 → 88 between λ = 0.3 and 1, t = 1/2: (5, 6)
    designed = rows["designed_sd"]
    np.testing.assert_allclose(designed["forgetting"]["seeds"], [5, 6])
    # replay's ID accuracy never falls to 89: not extrapolated
    assert rows["replay_sd"]["forgetting"] is None
    assert rows["replay_sd"]["id_range"] == [93, 95]
    lines = payload["verdicts"]
    vs_wma = next(v for v in lines if v.startswith("designed-kernel SD vs WMA"))
    assert "5.50 ± 0.50" in vs_wma and "7.00 ± 1.00" in vs_wma
    assert "difference -1.50 ± 0.50 (lower on 2/2 seeds)" in vs_wma
    assert vs_wma.endswith("forgets less")
    vs_ema = next(v for v in lines if v.startswith("designed-kernel SD vs EMA"))
    assert "10.00 ± 0.67" in vs_ema and vs_ema.endswith("forgets less")
    assert ("Answer: designed-kernel SD forgets less at equal ID accuracy than WMA SD "
            "Beta(0.5, 0.5) and EMA SD (0.99)") in lines
    replay = [v for v in lines if v.startswith("replay SD vs")]
    assert len(replay) == 2 and all("not comparable" in v and "[93.00, 95.00]" in v
                                    for v in replay)
    assert "forgets less at equal ID accuracy than none of them" in lines[-1]
    text = format_teachers(payload)
    assert "designed-kernel SD" in text and "5.50 ± 0.50" in text
    result = teachers_figure(payload)
    assert result.agrees and "less than WMA SD" in result.finding


def test_mixed_seeds_are_not_a_verdict():
    payload = _hand_payload()
    runs = {"wma_sd": _records([(90, 92), (88, 90), (85, 87)], [(10, 12), (6, 8), (4, 4)]),
            "designed_sd": _records([(90, 90), (87, 89), (84, 86)], [(6, 9), (4, 9), (2, 3)])}
    selection = {n: payload["selection"][n] for n in runs}
    lines = verdicts(summarize(runs, selection))
    vs_wma = next(v for v in lines if v.startswith("designed-kernel SD vs WMA"))
    assert "(lower on 1/2 seeds)" in vs_wma and vs_wma.endswith("is not clearly different")
    assert "replay SD: not run" in lines


# --- the quick study end to end ---------------------------------------------------------------

@pytest.fixture
def count_runs(monkeypatch):
    """Counts the finetuning runs of the study."""
    calls = []
    original = teachers.finetune_on

    def counted(*args, **kwargs):
        calls.append(kwargs["seed"])
        return original(*args, **kwargs)

    monkeypatch.setattr(teachers, "finetune_on", counted)
    return calls


def test_quick_study_end_to_end_chooses_on_validation_and_resumes(tmp_path, capsys, count_runs):
    out = tmp_path / "t"
    kernel = tmp_path / "designed_kernel.json"
    kernel.write_text(json.dumps({"log_values": list(LOG_VALUES)}))
    argv = ["teachers", "--quick", "--kernel", str(kernel), "--strategies", "wma_sd",
            "designed_sd", "replay_sd", "--out", str(out), "--quiet"]
    assert cli.main(argv) == 0
    text = capsys.readouterr().out
    assert len(count_runs) == 3 * 2 + 1  # three strategies at two λs, and Direct FT
    payload = json.loads((out / "teachers_head_quick.json").read_text())
    run_dir = out / "teachers_head_quick"
    assert len(list(run_dir.glob("seed*.json"))) == 7
    assert (run_dir / "linear_twins.json").exists()  # the linear twins, computed once
    designed = payload["config"]["strategies"]["designed_sd"]["strategy"]["teacher"]
    assert designed["values"] == [["log_values", list(LOG_VALUES)]]
    # The linear twins: one prediction per point; more λ, less linear forgetting (replay-SD's
    # closed form moves monotonically toward W⁰); the sentence carries the stated ρ.
    theory = payload["theory"]
    assert len(theory["points"]) == 7
    replay = [p["linear_forgetting"] for p in theory["points"] if p["strategy"] == "replay_sd"]
    assert replay[0] > replay[1] > 0
    assert f"{theory['spearman']['linear_forgetting']:+.2f}" in payload["verdicts"][-1]
    for name in ("wma_sd", "designed_sd", "replay_sd"):
        chosen = payload["selection"][name]
        # the scores λ was chosen from are the seed-0 runs' validation scores, nothing else
        for lam in ("0.3", "3"):
            record = json.loads((run_dir / f"seed0_{name}_lam{lam}.json").read_text())
            assert chosen["scores"][lam] == record["validation"]
            assert set(record["validation"]) == {"id_val_acc", "gray_val_acc", "score"}
            assert np.isfinite(record["test"]["forgetting"])
        assert chosen["key"] == max(chosen["scores"], key=lambda k: chosen["scores"][k]["score"])
        row = payload["summary"]["strategies"][name]
        assert row["key"] == chosen["key"] and set(row["curve"]) == {"0.3", "3"}
    assert payload["summary"]["equal_id"]["strategies"]["wma_sd"]["reference"]
    assert any(v.startswith("Answer: designed-kernel SD") for v in payload["verdicts"])
    assert "EMA SD" not in " ".join(payload["verdicts"])  # not run, so not compared
    assert "forget @ eq. ID" in text and "Paper:" in text
    assert (out / "figures" / "teachers_head_quick.png").exists()

    # resuming (the CLI's study) reruns nothing and rewrites no run
    config = quick_teachers_config(kernel=LOG_VALUES,
                                   names=("wma_sd", "designed_sd", "replay_sd"))
    stamps = sorted(p.stat().st_mtime_ns for p in run_dir.glob("*.json"))
    assert run_teachers(config, out, progress=False)["summary"] == payload["summary"]
    assert len(count_runs) == 7
    assert sorted(p.stat().st_mtime_ns for p in run_dir.glob("*.json")) == stamps

    # the test numbers never move the choice; the validation scores do
    for path in run_dir.glob("seed0_*_lam*.json"):
        record = json.loads(path.read_text())
        record["test"] = {k: -v for k, v in record["test"].items()}
        path.write_text(json.dumps(record))
    again = run_teachers(config, out, progress=False)
    assert {n: s["key"] for n, s in again["selection"].items()} == \
        {n: s["key"] for n, s in payload["selection"].items()}
    assert again["summary"] != payload["summary"]
    loser = {n: "3" if s["key"] == "0.3" else "0.3" for n, s in payload["selection"].items()}
    for name, lam in loser.items():
        path = run_dir / f"seed0_{name}_lam{lam}.json"
        record = json.loads(path.read_text())
        record["validation"]["score"] = 1e6
        path.write_text(json.dumps(record))
    flipped = run_teachers(config, out, progress=False)
    assert {n: s["key"] for n, s in flipped["selection"].items()} == loser
    assert len(count_runs) == 7

    # another kernel in the same folder is refused before any training
    kernel.write_text(json.dumps({"log_values": [0.0, 0.0]}))
    capsys.readouterr()
    assert cli.main(argv) == cli.EXIT_INPUT
    assert "written for other settings" in capsys.readouterr().err
    assert len(count_runs) == 7


@pytest.mark.parametrize(("argv", "flag"), [
    (["--lambdas", "-1"], "--lambdas"), (["--lambdas", "3", "1"], "--lambdas"),
    (["--lambdas", "nan"], "--lambdas"), (["--strategies", "nope"], "--strategies"),
    (["--strategies", "designed_sd", "wma_sd"], "--kernel"),
    (["--strategies", "ema_sd"], "--strategies"),
    (["--strategies", "wma_sd", "wma_sd"], "--strategies"), (["--seeds", "0", "0"], "seeds")])
def test_cli_bad_input_is_a_usage_error(argv, flag, tmp_path, capsys):
    code = cli.main(["teachers", "--quick", "--out", str(tmp_path / "t"), "--quiet", *argv])
    assert code == cli.EXIT_USAGE
    assert flag in capsys.readouterr().err
    assert not (tmp_path / "t").exists()  # refused before any work


@pytest.mark.parametrize("content", [None, "not json", '{"values": [1, 2]}', '[1, 2]',
                                     '{"log_values": [1]}', '{"log_values": [1, "a"]}',
                                     '{"log_values": [0, Infinity]}'])
def test_cli_bad_kernel_file_is_an_input_error(content, tmp_path, capsys):
    path = tmp_path / "kernel.json"
    if content is not None:
        path.write_text(content)
    code = cli.main(["teachers", "--quick", "--kernel", str(path), "--out", str(tmp_path / "t"),
                     "--quiet"])
    assert code == cli.EXIT_INPUT
    assert "--kernel" in capsys.readouterr().err
    assert not (tmp_path / "t").exists()


def test_config_builds_the_default_plan():
    config = TeachersConfig(kernel=LOG_VALUES)
    assert list(config.compared()) == ["wma_sd", "ema_sd", "designed_sd", "replay_sd"]
    plan = config.plan()
    assert len(plan) == 4 * 4 + 1 and plan[-1][0] == "direct"
    assert plan[0][2] == SelfDistill(0.3, WMA(0.5, 0.5))
    assert plan[-2][2] == ReplayDistill(10.0, 0.25)
    assert "designed_sd" not in TeachersConfig().compared()  # no kernel: skipped
    assert config.training().lr == 3e-3  # the validation-chosen learning rate
    json.dumps(config.describe())
