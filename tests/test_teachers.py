"""The teacher comparison in the deep toy (``tracer-theory teachers``, issue 14 item 4): the
kernel teacher of any kernel, replay-SD's regularizer and batches, the quick study run once
through the CLI with its reported numbers against its run files (NumPy means, an argmax, an
interpolation written here), the pretrained model's gray accuracy and the linear twins in
closed form, its resume and the choice of λ on the validation split alone, and its bad input.
(The summary's arithmetic by hand: test_teachers_reference.py.)"""

import contextlib
import io
import json
import pickle
import shutil

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
    quick_teachers_config,
    run_teachers,
)
from tracer_theory.dynamics.schedules import BetaKernel, GridKernel, kernel_teacher
from tracer_theory.linear.problem import contrastive_target

LOG_VALUES = (0.0, 1.5, -0.5, 0.7)


# --- the kernel teacher -----------------------------------------------------------------------

@pytest.mark.parametrize("steps", [1, 37])
def test_kernel_teacher_weights_against_numpy(steps):
    """``ω_t = κ(τ_t)/Σ_{j≤t} κ(τ_j)``, ``τ_k = (k + ½)/(steps + 1)``, 0 past the horizon; κ the
    exponential of the log-values' linear interpolation, or τ^(a−1)(1 − τ)^(b−1) (NumPy)."""
    tau = (np.arange(steps + 1) + 0.5) / (steps + 1)
    kernels = [(GridKernel(np.asarray(LOG_VALUES)),
                np.exp(np.interp(tau, np.linspace(0, 1, len(LOG_VALUES)), LOG_VALUES))),
               (BetaKernel(0.5, 2.0), tau**-0.5 * (1 - tau))]
    for kernel, kappa in kernels:
        weights = np.asarray(KernelTeacher(kernel)(steps).weights(steps + 3))
        np.testing.assert_allclose(weights[:steps], (kappa / np.cumsum(kappa))[1:], rtol=1e-12)
        assert np.all(weights[steps:] == 0)


@pytest.mark.parametrize("kernel", [GridKernel(np.asarray(LOG_VALUES)), BetaKernel(0.5, 2.0)],
                         ids=["grid", "beta"])
@pytest.mark.parametrize("steps", [1, 37])
def test_kernel_teacher_gives_the_weights_of_kernel_teacher(kernel, steps):
    """The deep strategies' ``KernelTeacher`` against the dynamics' ``kernel_teacher`` (the
    code against itself; the reference is the test above)."""
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


# --- the quick study end to end ---------------------------------------------------------------

@pytest.fixture(scope="module")
def quick_study(tmp_path_factory):
    """The quick study through the CLI (WMA SD, designed-kernel SD and replay-SD at two λs and
    Direct FT, one seed), its finetuning runs counted: ``(argv, kernel file, out folder,
    printed text, payload, the seeds of the runs)``."""
    tmp = tmp_path_factory.mktemp("teachers")
    out, kernel = tmp / "t", tmp / "designed_kernel.json"
    kernel.write_text(json.dumps({"log_values": list(LOG_VALUES)}))
    argv = ["teachers", "--quick", "--kernel", str(kernel), "--strategies", "wma_sd",
            "designed_sd", "replay_sd", "--out", str(out), "--quiet"]
    calls, original = [], teachers.finetune_on

    def counted(*args, **kwargs):
        calls.append(kwargs["seed"])
        return original(*args, **kwargs)

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(teachers, "finetune_on", counted)
        with contextlib.redirect_stdout(io.StringIO()) as text:
            code = cli.main(argv)
    assert code == 0
    payload = json.loads((out / "teachers_head_quick.json").read_text())
    return argv, kernel, out, text.getvalue(), payload, calls


def _records(out):
    """``{(name, λ key or None): record}`` of the quick study's seed-0 run files."""
    found = {}
    for path in (out / "teachers_head_quick").glob("seed0_*.json"):
        name, _, lam = path.stem.removeprefix("seed0_").partition("_lam")
        found[name, lam or None] = json.loads(path.read_text())
    return found


QUICK_NAMES = ("wma_sd", "designed_sd", "replay_sd")


def _lam_keys(payload):
    """The study's λ grid as the keys of its files and summary, in λ order."""
    return [f"{lam:g}" for lam in sorted(payload["config"]["lambdas"])]


def test_quick_study_runs_every_point_once(quick_study):
    _, _, out, text, payload, calls = quick_study
    assert calls == [0] * (3 * 2 + 1)  # three strategies at two λs, and Direct FT
    records = _records(out)
    assert set(records) == {(n, lam) for n in QUICK_NAMES for lam in _lam_keys(payload)} | {
        ("direct", None)}
    assert (out / "teachers_head_quick" / "linear_twins.json").exists()  # computed once
    designed = payload["config"]["strategies"]["designed_sd"]["strategy"]["teacher"]
    assert designed["values"] == [["log_values", list(LOG_VALUES)]]
    assert payload["summary"]["equal_id"]["strategies"]["wma_sd"]["reference"]
    assert any(v.startswith("Answer: designed-kernel SD") for v in payload["verdicts"])
    assert "EMA SD" not in " ".join(payload["verdicts"])  # not run, so not compared
    assert "forget @ eq. ID" in text and "Paper:" in text
    assert (out / "figures" / "teachers_head_quick.png").exists()


def test_quick_study_chooses_the_argmax_of_the_validation_records(quick_study):
    """λ: the first highest validation score (the mean of ID and gray validation accuracy) of
    the seed-0 run files, in λ order."""
    _, _, out, _, payload, _ = quick_study
    records, keys = _records(out), _lam_keys(payload)
    for name in QUICK_NAMES:
        scores = [records[name, lam]["validation"] for lam in keys]
        for v in scores:
            assert v["score"] == pytest.approx(0.5 * (v["id_val_acc"] + v["gray_val_acc"]),
                                               rel=1e-12)
        best = keys[int(np.argmax([v["score"] for v in scores]))]
        chosen = payload["selection"][name]
        assert chosen["key"] == best and chosen["lam"] == float(best) and chosen["seed"] == 0
        assert chosen["scores"] == dict(zip(keys, scores, strict=True))
        assert payload["summary"]["strategies"][name]["key"] == best


def test_quick_study_reports_the_records(quick_study):
    """The curves, the chosen point and Direct FT: mean and std by NumPy of the run files'
    test metrics; the equal-ID rows by linear interpolation written here on those files."""
    _, _, out, _, payload, _ = quick_study
    records, summary, keys = _records(out), payload["summary"], _lam_keys(payload)
    assert len(keys) == 2 and payload["config"]["seeds"] == [0]  # what the references assume

    def stats(*runs, metric):
        values = [r["test"][metric] for r in runs]
        return {"mean": np.mean(values), "std": np.std(values), "seeds": values}

    for name in QUICK_NAMES:
        row = summary["strategies"][name]
        assert list(row["curve"]) == keys
        for lam in keys:
            for metric in ("forgetting", "id_acc", "gray_acc"):
                got = row["curve"][lam][metric]
                assert {k: got[k] for k in ("mean", "std", "seeds")} == stats(
                    records[name, lam], metric=metric)
        chosen = payload["selection"][name]["key"]
        assert row["chosen"]["forgetting"]["mean"] == records[name, chosen]["test"]["forgetting"]
    assert summary["direct"]["forgetting"]["mean"] == records["direct", None]["test"][
        "forgetting"]
    # at equal ID accuracy: the reference's chosen run's ID accuracy, each other strategy's
    # two runs interpolated there (or nothing outside them)
    ref_key = payload["selection"]["wma_sd"]["key"]
    target = records["wma_sd", ref_key]["test"]["id_acc"]
    equal = summary["equal_id"]
    assert equal["id_acc"] == target
    assert equal["strategies"]["wma_sd"]["forgetting"]["seeds"] == [
        records["wma_sd", ref_key]["test"]["forgetting"]]
    for name in ("designed_sd", "replay_sd"):
        (id_a, f_a), (id_b, f_b) = ((records[name, lam]["test"]["id_acc"],
                                     records[name, lam]["test"]["forgetting"])
                                    for lam in keys)
        row = equal["strategies"][name]
        if id_a == target:
            assert row["forgetting"]["seeds"] == [f_a]
        elif min(id_a, id_b) < target < max(id_a, id_b):
            t = (target - id_a) / (id_b - id_a)
            np.testing.assert_allclose(row["forgetting"]["seeds"], [f_a + t * (f_b - f_a)],
                                       rtol=1e-12)
            lam_a, lam_b = (float(k) for k in keys)  # λ on the log scale
            np.testing.assert_allclose(row["lam"], lam_a * (lam_b / lam_a) ** t, rtol=1e-12)
        elif id_b == target:
            assert row["forgetting"]["seeds"] == [f_b]
        else:
            assert row["forgetting"] is None


def test_quick_study_table_states_the_records(quick_study):
    """The printed table's row of each strategy: its chosen λ, the validation score there, and
    forgetting, ID and gray accuracy of that run (two decimals), and its forgetting at equal ID
    accuracy; Direct FT's row."""
    _, _, out, text, payload, _ = quick_study
    records = _records(out)
    labels = {"wma_sd": "WMA SD Beta(0.5, 0.5)", "designed_sd": "designed-kernel SD",
              "replay_sd": "replay SD", "direct": "Direct FT"}
    rows = {line[:24].strip(): [float(x) for x in line[24:].replace("±", " ").split()
                                if x != "—"]
            for line in text.splitlines()
            if line[:24].strip() in labels.values() and not line.startswith(" ")}
    equal = payload["summary"]["equal_id"]["strategies"]
    for name in QUICK_NAMES:
        label = labels[name]
        key = payload["selection"][name]["key"]
        run = records[name, key]
        expected = [float(key), run["validation"]["score"], run["test"]["forgetting"], 0.0,
                    run["test"]["id_acc"], 0.0, run["test"]["gray_acc"], 0.0]
        if equal[name]["forgetting"] is not None:
            expected += [equal[name]["forgetting"]["mean"], 0.0]
        np.testing.assert_allclose(rows[label], expected, rtol=0, atol=0.005 + 1e-9)
    direct = records["direct", None]["test"]
    np.testing.assert_allclose(rows["Direct FT"], [direct["forgetting"], 0.0, direct["id_acc"],
                                                   0.0, direct["gray_acc"], 0.0],
                               rtol=0, atol=0.005 + 1e-9)


@pytest.fixture(scope="module")
def pretrained(quick_study):
    """The quick study's seed-0 pretrained model (from its checkpoint) and the quick data."""
    from tracer_theory.deep.studies.experiment import pretrained_model

    config = quick_teachers_config(kernel=LOG_VALUES, names=QUICK_NAMES)
    data = ExperimentData(None, "toy", True)
    return pretrained_model(config.experiment(), data, quick_study[2], 0, False), data


def _gray_accuracy(clip, data):
    """``w -> `` zero-shot gray test accuracy (%) with image projection ``w`` and the
    pretrained features: argmax over the class embeddings of the normalized embeddings."""
    features = np.asarray(clip.image_features(jnp.asarray(data.gray_test)), np.float64)
    classes = np.asarray(clip.class_embeddings(jnp.asarray(data.captions)), np.float64)
    labels = np.asarray(data.test_labels)

    def accuracy(w):
        emb = features @ np.asarray(w, np.float64).T
        emb /= np.linalg.norm(emb, axis=1, keepdims=True)
        return 100 * np.mean(np.argmax(emb @ classes.T, axis=1) == labels)

    return accuracy


def test_quick_study_forgetting_is_the_gray_accuracy_drop(quick_study, pretrained):
    """Every run: forgetting = pretrained gray accuracy − finetuned gray accuracy, the former
    the pretrained model's zero-shot accuracy computed here."""
    model, data = pretrained
    before = _gray_accuracy(model.clip, data)(model.clip.image_proj.weight)
    for at, record in _records(quick_study[2]).items():
        test = record["test"]
        assert test["pretrained_gray_acc"] == pytest.approx(before, abs=1e-4), at
        assert test["forgetting"] == test["pretrained_gray_acc"] - test["gray_acc"], at


def test_quick_study_linear_twins_against_numpy(quick_study, pretrained):
    """Each point's linear twin on the study's linearization: Direct FT ``W⁰ + R X⁺``,
    replay-SD ``W⁰ + R Xᵀ(X Xᵀ + 2λ X_pre X_preᵀ)⁺``, the teachers as the student–teacher matrix
    recursion with their kernel's weights; its ‖(W − W⁰)X_pre‖² and zero-shot drop (features
    held fixed) computed here, and the Spearman ρ against the measured seed-mean forgetting by
    ranks computed here."""
    from test_teachers_reference import spearman

    from tracer_theory.deep.studies.theory import linear_problem

    _, _, out, _, payload, _ = quick_study
    model, data = pretrained
    record = json.loads((out / "teachers_head_quick" / "linear_twins.json").read_text())
    problem = linear_problem(model, data, n=record["config"]["n"], n_pre=record["config"]["n_pre"])
    x, w0, x_pre = (np.asarray(a) for a in (problem.x_img, problem.w0, problem.x_pre))
    y = np.asarray(contrastive_target(problem))
    steps = payload["config"]["finetune"]["steps"]
    tau = (np.arange(steps + 1) + 0.5) / (steps + 1)
    knots = np.linspace(0, 1, len(LOG_VALUES))
    kernels = {"wma_sd": tau**-0.5 * (1 - tau) ** -0.5,
               "designed_sd": np.exp(np.interp(tau, knots, LOG_VALUES))}
    top = np.linalg.norm(x, 2) ** 2

    def twin(name, lam):
        if name == "direct":
            return w0 + (y - w0 @ x) @ np.linalg.pinv(x)
        if name == "replay_sd":
            hessian = x @ x.T + 2 * lam * x_pre @ x_pre.T
            return w0 + (y - w0 @ x) @ x.T @ np.linalg.pinv(hessian)
        omegas = (kernels[name] / np.cumsum(kernels[name]))[1:]
        lr = 1 / (top * (1 + lam))
        w = t = w0
        for omega in omegas:
            w = w - lr * ((w @ x - y) + lam * (w - t) @ x) @ x.T
            t = (1 - omega) * t + omega * w
        return w

    accuracy = _gray_accuracy(model.clip, data)
    points = payload["theory"]["points"]
    assert [(p["strategy"], p["lam"]) for p in points] == [
        *((n, float(lam)) for n in QUICK_NAMES for lam in _lam_keys(payload)), ("direct", None)]
    for p in points:
        w = twin(p["strategy"], p["lam"])
        np.testing.assert_allclose(p["linear_forgetting"], np.sum(((w - w0) @ x_pre) ** 2),
                                   rtol=1e-6)
        drop = accuracy(w0) - accuracy(w)  # within one image (round-off at a near tie)
        assert abs(p["predicted_drop"] - drop) <= 100 / len(data.test_labels) + 1e-9, p
    records = _records(out)
    measured = [records[p["strategy"], None if p["lam"] is None else f"{p['lam']:g}"]["test"][
        "forgetting"] for p in points]  # one seed: its own
    assert [p["measured"] for p in points] == measured
    for key in ("linear_forgetting", "predicted_drop"):
        rho = spearman([p[key] for p in points], measured)
        assert payload["theory"]["spearman"][key] == pytest.approx(rho, abs=1e-12)
        assert f"{rho:+.2f}" in payload["verdicts"][-1]


def test_quick_study_resumes_and_chooses_on_validation_alone(quick_study, tmp_path,
                                                             count_runs, capsys):
    """On a copy of the study's folder: resuming reruns nothing and rewrites no run; test
    numbers never move the choice, validation scores do; another kernel is refused."""
    argv, kernel, source, _, payload, _ = quick_study
    out = tmp_path / "t"
    shutil.copytree(source, out)
    run_dir = out / "teachers_head_quick"
    config = quick_teachers_config(kernel=LOG_VALUES, names=QUICK_NAMES)
    stamps = sorted(p.stat().st_mtime_ns for p in run_dir.glob("*.json"))
    assert run_teachers(config, out, progress=False)["summary"] == payload["summary"]
    assert sorted(p.stat().st_mtime_ns for p in run_dir.glob("*.json")) == stamps

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
    assert count_runs == []

    # another kernel in the same folder is refused before any training
    other = tmp_path / "kernel.json"
    other.write_text(json.dumps({"log_values": [0.0, 0.0]}))
    moved = [str(other) if a == str(kernel) else str(out) if a == str(source) else a
             for a in argv]
    assert cli.main(moved) == cli.EXIT_INPUT
    assert "written for other settings" in capsys.readouterr().err
    assert count_runs == []


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
    """Every compared strategy at every λ of the grid, then Direct FT; WMA SD's teacher the
    Beta(0.5, 0.5) kernel, replay-SD at the configured fraction."""
    config = TeachersConfig(kernel=LOG_VALUES)
    assert list(config.compared()) == ["wma_sd", "ema_sd", "designed_sd", "replay_sd"]
    plan = config.plan()
    lams = config.lambdas
    assert [(n, lam) for n, lam, _ in plan] == [
        *((n, lam) for n in config.compared() for lam in lams), ("direct", None)]
    assert plan[0][2] == SelfDistill(lams[0], WMA(0.5, 0.5))
    assert plan[-2][2] == ReplayDistill(lams[-1], config.replay_fraction)
    assert plan[-1][2] == Direct()
    assert "designed_sd" not in TeachersConfig().compared()  # no kernel: skipped
    training = config.training()  # the finetuning config, its objective the study's
    assert training.lr == config.finetune.lr and training.objective == config.objective
    json.dumps(config.describe())
