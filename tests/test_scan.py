"""The scanned finetuning loop (``deep/finetune/loop.py``): a WMA SD run and pretraining against
loops written here from their definitions (the independent references); then, relationally,
against the library's step-by-step ``reference_finetune`` for every strategy, other chunk sizes,
one run per seed, an uninterrupted run (checkpoint/resume) and a shorter run (snapshots); its
input checks; and the on-device batch sampler."""

import dataclasses
from types import SimpleNamespace

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from runs import assert_identical_runs, leaves, relative_difference

from tracer_theory._cache import MAGIC
from tracer_theory.deep.finetune import REGISTRY, FinetuneConfig, Finetunee, PretrainConfig, loop
from tracer_theory.deep.finetune.checkpoints import run_header
from tracer_theory.deep.finetune.loop import (
    CURVES,
    TrainingData,
    draw_batch,
    finetune,
    finetune_seeds,
    reference_finetune,
    step_key,
)
from tracer_theory.deep.finetune.pretraining import _pretrain_batch, pretrain
from tracer_theory.deep.finetune.strategies import SelfDistill, Static
from tracer_theory.deep.models import ToyCLIP
from tracer_theory.deep.studies.experiment import quick_config
from tracer_theory.errors import DamagedArtifact, Diverged, ResumeMismatch

#: A small run: the whole file stays well under a minute on two CPU cores.
BASE = FinetuneConfig(objective="prompts", steps=8, batch_size=32, log_every=2)


@pytest.fixture(scope="module")
def toy():
    """The quick data, two pretrained toy models (keys 0 and 1) and their class embeddings."""
    data = quick_config().data()
    models, class_emb = [], []
    for k in (0, 1):
        key = jax.random.key(k)
        model = Finetunee(ToyCLIP(key=key), eqx.nn.Linear(128, 10, dtype=jnp.float32, key=key))
        models.append(model)
        class_emb.append(model.clip.class_embeddings(jnp.asarray(data.captions)))
    return SimpleNamespace(data=data, models=models, class_emb=class_emb)


def _args(toy, i: int = 0) -> dict:
    """The keyword arguments of a run of model ``i`` (every strategy gets the replay data)."""
    data = toy.data
    return dict(class_emb=toy.class_emb[i], probe=data.probe()[:16],
                gray_probe=(data.gray_val[:50], data.val_labels[:50]), hybrid=data.hybrid())


def _run(toy, name, config, i=0, seed=0, **kw):
    return finetune(toy.models[i], toy.data.color_train, toy.data.train_labels,
                    REGISTRY[name].strategy, config, **_args(toy, i), seed=seed, **kw)


def _assert_close_curves(got, want):
    assert set(got) == set(want) == set(CURVES)
    np.testing.assert_array_equal(got["steps"], want["steps"])
    for k in CURVES[1:]:
        np.testing.assert_allclose(got[k], want[k], rtol=1e-4, atol=1e-5, err_msg=k)


# --- the scanned loop is the step-by-step loop ------------------------------------------------

# Why the prompts objective: under ``head`` the image projection gets no task gradient, only the
# distillation gradient, which is ~0 (round-off) at the first steps while the teacher equals the
# student. AdamW normalizes that round-off into ±lr steps, so two float32 programs that round
# differently (a scanned program against one jitted step per dispatch) drift apart by ~lr there
# (measured with the rolled scan: relative difference 2e-3 for EMA SD under ``head``, 8e-6 under
# ``prompts``): a property of AdamW on a ~zero gradient, not of the loop. Under ``prompts`` every
# trained leaf gets a real task gradient. Direct FT has no teacher, so it is also checked under
# ``head``. (The tolerance is for programs that round differently from the reference: the
# rolled scan, up to about 8e-5.)
CASES = [(name, "prompts") for name in REGISTRY] + [("direct", "head")]


@pytest.mark.parametrize(("name", "objective"), CASES, ids=[f"{n}-{o}" for n, o in CASES])
def test_scanned_loop_equals_the_reference_loop(toy, name, objective):
    config = dataclasses.replace(BASE, objective=objective)
    strategy = REGISTRY[name].strategy
    data = toy.data
    got = _run(toy, name, config, chunk=5)
    want = reference_finetune(toy.models[0], data.color_train, data.train_labels, strategy,
                              config, **_args(toy), seed=0)
    assert relative_difference(got.model, want.model, toy.models[0]) < 1e-4
    _assert_close_curves(got.curves, want.curves)
    np.testing.assert_array_equal(got.curves["steps"], [2, 4, 6, 8])
    assert not got.snapshots


# --- against a loop written here --------------------------------------------------------------

def _wma_weights(horizon: int) -> np.ndarray:
    """The Beta(½, ½) kernel on the grid τ_k = (k + ½)/(horizon + 1), k = 0..horizon."""
    tau = (np.arange(horizon + 1) + 0.5) / (horizon + 1)
    return 1 / np.sqrt(tau * (1 - tau))


def _arrays(module) -> list[np.ndarray]:
    return [np.asarray(x, np.float64) for x in jax.tree.leaves(eqx.filter(module, eqx.is_array))]


def _with_arrays(module, arrays):
    """``module`` with its array leaves replaced by ``arrays`` (float32)."""
    arrays_of, static = eqx.partition(module, eqx.is_array)
    leaves32 = [jnp.asarray(np.asarray(a, np.float32)) for a in arrays]
    return eqx.combine(jax.tree.unflatten(jax.tree.structure(arrays_of), leaves32), static)


def _log_softmax_kl(p_logits, q_logits):
    """``mean_rows KL(σ(p) ‖ σ(q))``."""
    log_p, log_q = jax.nn.log_softmax(p_logits), jax.nn.log_softmax(q_logits)
    return jnp.mean(jnp.sum(jnp.exp(log_p) * (log_p - log_q), axis=1))


def _unit(x):
    return x / jnp.linalg.norm(x, axis=1, keepdims=True)


def test_wma_sd_run_matches_a_loop_written_here(toy):
    """WMA SD, the registered strategy, against its definition written here: AdamW (optax's)
    on the image side, cross-entropy through the prompts plus λ times TRACER's distillation
    (FD + CRD + ICL + CKD) toward the teacher, the Beta(½, ½)-weighted mean of the student's
    image towers so far; the text tower stays. The batches are the loop's sampler's (its
    properties are tested below); the model, the logged loss and teacher distance are the hand
    loop's. (The run is the one ``test_scanned_loop_equals_the_reference_loop`` makes: its
    programs are compiled once.)"""
    data, model, class_emb = toy.data, toy.models[0], toy.class_emb[0]
    lam, steps = REGISTRY["wma_sd"].strategy.lam, BASE.steps
    run = _run(toy, "wma_sd", BASE, chunk=5)

    held, seed_key = TrainingData.of(data.color_train, data.train_labels), jax.random.key(0)
    scale = model.clip.scale

    def embed(tower, x):
        image, proj = tower
        return _unit(jax.vmap(lambda v: proj(image(v)))(x))

    def loss(trained, teacher, x, y):
        _, image, proj = trained  # the head is not on the prompts' path
        s_img, t_img = embed((image, proj), x), embed(teacher, x)
        txt = class_emb[y]  # the frozen text embeddings: the student's and the teacher's
        same = (y[:, None] == y[None, :]).astype(s_img.dtype)
        positives = same / same.sum(1, keepdims=True)
        task = -jnp.mean(jax.nn.log_softmax(scale * s_img @ class_emb.T)[jnp.arange(len(y)), y])
        fd = jnp.mean(jnp.sum((s_img - t_img) ** 2, axis=1))  # + 0 for the equal texts
        image_to_text = _log_softmax_kl(scale * t_img @ txt.T, scale * s_img @ txt.T)
        crd = 0.5 * (image_to_text + _log_softmax_kl(scale * txt @ t_img.T, scale * txt @ s_img.T))
        icl = -0.5 * jnp.mean(jnp.sum(positives * (jax.nn.log_softmax(scale * s_img @ txt.T)
                                                   + jax.nn.log_softmax(scale * txt @ t_img.T)),
                                      axis=1))
        ckd = 0.5 * image_to_text  # its text-to-image half compares the teacher with itself
        return task + lam * (fd + crd + icl + ckd)

    adamw = optax.adamw(BASE.lr, weight_decay=BASE.weight_decay)

    @eqx.filter_jit
    def step(trained, opt, teacher, t, held):
        batch = draw_batch(held, step_key(seed_key, t), BASE.batch_size, 0)
        value, grad = eqx.filter_value_and_grad(loss)(trained, teacher, batch.images,
                                                      batch.labels)
        updates, opt = adamw.update(grad, opt, eqx.filter(trained, eqx.is_array))
        return value, eqx.apply_updates(trained, updates), opt

    trained = (model.head, model.clip.image, model.clip.image_proj)
    opt = adamw.init(eqx.filter(trained, eqx.is_array))
    kappa, logged = _wma_weights(steps), {}
    # the teacher: Σ_{j≤t} κ_j W_j / Σ_{j≤t} κ_j over the student's image towers W_0..W_t
    total = [kappa[0] * a for a in _arrays(trained[1:])]
    for t in range(1, steps + 1):
        teacher = _with_arrays(trained[1:], [a / kappa[:t].sum() for a in total])
        value, trained, opt = step(trained, opt, teacher, jnp.int32(t), held)
        student = _arrays(trained[1:])
        total = [a + kappa[t] * w for a, w in zip(total, student, strict=True)]
        if t % BASE.log_every == 0:
            distance = np.sqrt(sum(np.sum((w - a / kappa[:t + 1].sum()) ** 2)
                                   for a, w in zip(total, student, strict=True)))
            logged[t] = (float(value), distance)
    want = eqx.tree_at(lambda m: (m.head, m.clip.image, m.clip.image_proj), model, trained)
    assert relative_difference(run.model, want, model) < 1e-4
    for a, b in zip(leaves((model.head, model.clip.text, model.clip.text_proj)),
                    leaves((run.model.head, run.model.clip.text, run.model.clip.text_proj)),
                    strict=True):
        np.testing.assert_array_equal(a, b)  # frozen; the head gets no gradient (prompts)
    np.testing.assert_array_equal(run.curves["steps"], list(logged))
    loss_want, distance_want = np.array(list(logged.values())).T
    np.testing.assert_allclose(run.curves["loss"], loss_want, rtol=1e-5)
    assert np.all(distance_want > 0)  # the teacher lags the student
    np.testing.assert_allclose(run.curves["param_distance"], distance_want, rtol=1e-3)


# --- the chunk size does not change the result ------------------------------------------------

def _program() -> str:
    """The loop's program on this backend: one step per call on CPU, a scan of blocks else."""
    return "_run_step" if loop.stepwise() else "_run_blocks"


def _counting(monkeypatch) -> list:
    """Count the calls of the loop's program (whatever its arguments)."""
    name = _program()
    calls, original = [], getattr(loop, name)

    def counted(*args, **kwargs):
        calls.append(None)
        return original(*args, **kwargs)

    monkeypatch.setattr(loop, name, counted)
    return calls


@pytest.mark.parametrize("name", ["ema_sd", "lp_ft"])
def test_chunk_size_does_not_change_the_run(toy, name):
    # EMA SD carries a moving teacher; LP-FT has two phases (4 + 4 steps) with two optimizers.
    # (Where ``stepwise()``, on CPU, every call is one step whatever the chunk, which then only
    # sets the checkpoints; the rolled programs, where the chunk changes the calls, are checked
    # below.)
    small, large = (_run(toy, name, BASE, chunk=c) for c in (3, 100))
    assert_identical_runs(small, large)


def test_rolled_program_is_chunk_independent_and_the_reference(toy, monkeypatch):
    """The accelerator path, on CPU: with ``stepwise()`` false every call is a rolled
    ``lax.scan`` over the blocks of a chunk (rounded up to whole log intervals), so here the
    chunk size does change the programs (two calls of one block against one call of two
    blocks), and not the result; which is also the step-by-step reference's. (Convolutions in
    loop bodies are slow on CPU: a small batch and probe, no gray probe.)"""
    monkeypatch.setattr(loop, "stepwise", lambda: False)
    calls = _counting(monkeypatch)
    config = dataclasses.replace(BASE, steps=4, batch_size=8)
    strategy, data = REGISTRY["ema_sd"].strategy, toy.data
    args = dict(class_emb=toy.class_emb[0], probe=data.probe()[:4], seed=0)
    runs = {}
    for chunk in (2, 100):
        calls.clear()
        runs[chunk] = finetune(toy.models[0], data.color_train, data.train_labels, strategy,
                               config, chunk=chunk, **args)
        runs[chunk] = (runs[chunk], len(calls))
    (small, n_small), (large, n_large) = runs[2], runs[100]
    assert (n_small, n_large) == (2, 1)
    assert_identical_runs(small, large)
    want = reference_finetune(toy.models[0], data.color_train, data.train_labels, strategy,
                              config, **args)
    assert relative_difference(large.model, want.model, toy.models[0]) < 1e-4
    _assert_close_curves(large.curves, want.curves)
    assert np.isnan(large.curves["gray_acc"]).all()  # no gray probe


# --- several seeds in one program are the runs of each seed ----------------------------------

def test_finetune_seeds_equals_one_run_per_seed(toy):
    config = dataclasses.replace(BASE, steps=4)
    strategy = REGISTRY["ema_sd"].strategy
    args = _args(toy)
    del args["class_emb"]
    both = finetune_seeds(toy.models, toy.data.color_train, toy.data.train_labels, strategy,
                          config, class_emb=toy.class_emb, seeds=(0, 1), stops=(2,), **args)
    assert len(both.model) == len(both.curves) == 2 and list(both.snapshots) == [2]
    for i, seed in enumerate((0, 1)):
        alone = _run(toy, "ema_sd", config, i=i, seed=seed, stops=(2,))
        assert relative_difference(both.model[i], alone.model, toy.models[i]) < 1e-4
        assert relative_difference(both.snapshots[2][i], alone.snapshots[2],
                                    toy.models[i]) < 1e-4
        _assert_close_curves(both.curves[i], alone.curves)
    # the two seeds are two different runs (models and batches), not one run copied
    assert not np.allclose(both.curves[0]["loss"], both.curves[1]["loss"])


# --- checkpoint and resume --------------------------------------------------------------------

def test_interrupted_run_resumes_to_the_uninterrupted_result(toy, tmp_path, monkeypatch):
    # LP-FT over 10 steps: a linear probe for 5 steps, then finetuning for 5. Logging every 5
    # steps, chunks of 5 (a whole log interval on either backend) and a stop at 4, the chunks are
    # (0, 4], (4, 5] | (5, 10], each followed by a checkpoint; interrupting the first program
    # call after step 5 leaves the checkpoint at the phase boundary, which must resume into
    # phase 2 with its fresh optimizer state.
    strategy = REGISTRY["lp_ft"].strategy
    assert [p.steps for p in strategy.phases(10)] == [5, 5]
    config = dataclasses.replace(BASE, steps=10, log_every=5)
    path = tmp_path / "run.ckpt"
    kw = dict(chunk=5, stops=(4,), checkpoint=path)
    per_chunk = (4, 1, 5) if loop.stepwise() else (1, 1, 1)  # program calls in each chunk
    calls, original = [], getattr(loop, _program())

    def interrupted(*args, **kwargs):
        calls.append(None)
        if len(calls) == per_chunk[0] + per_chunk[1] + 1:
            raise KeyboardInterrupt
        return original(*args, **kwargs)

    monkeypatch.setattr(loop, _program(), interrupted)
    with pytest.raises(KeyboardInterrupt):
        _run(toy, "lp_ft", config, **kw)
    step, info = run_header(path)
    assert (step, info["phase"]) == (5, 0)
    assert (tmp_path / "run.ckpt.step4").exists()

    calls.clear()
    resumed = _run(toy, "lp_ft", config, **kw)
    assert len(calls) == per_chunk[2]  # resumed at step 5, not from the start

    monkeypatch.setattr(loop, _program(), original)
    calls = _counting(monkeypatch)
    whole = _run(toy, "lp_ft", config, chunk=5, stops=(4,))
    assert len(calls) == sum(per_chunk) and list(whole.snapshots) == [4]
    assert_identical_runs(resumed, whole)
    np.testing.assert_array_equal(whole.curves["steps"], [5, 10])

    # a finished checkpoint is the finished run: nothing runs again
    calls.clear()
    assert run_header(path)[0] == 10
    again = _run(toy, "lp_ft", config, **kw)
    assert calls == []
    assert_identical_runs(again, whole)


# --- snapshots --------------------------------------------------------------------------------

def test_snapshot_is_the_model_of_the_shorter_run(toy):
    # Direct FT at a constant learning rate with no teacher: the 12-step run passes through the
    # 6-step run (same batches, same steps), so its snapshot at step 6 is that run's model.
    config = dataclasses.replace(BASE, objective="head", log_every=3)
    long = _run(toy, "direct", dataclasses.replace(config, steps=12), stops=(6,))
    short = _run(toy, "direct", dataclasses.replace(config, steps=6))
    assert list(long.snapshots) == [6] and not short.snapshots
    for x, y in zip(leaves(long.snapshots[6]), leaves(short.model), strict=True):
        np.testing.assert_array_equal(x, y)
    # and the longer run logged the same curve up to step 6
    np.testing.assert_array_equal(long.curves["steps"], [3, 6, 9, 12])
    for k in CURVES:
        np.testing.assert_array_equal(long.curves[k][:2], short.curves[k], err_msg=k)
    assert relative_difference(long.model, short.model, toy.models[0]) > 0.1


# --- keyed checkpoints and divergence ---------------------------------------------------------

def test_a_checkpoint_of_another_run_is_refused_before_any_step(toy, tmp_path, monkeypatch):
    # a 4-step run leaves its checkpoint; asking the same file for an 8-step run (the horizon
    # study's bug: a model trained 8 steps reported as T = 6) is refused, naming what differs
    path = tmp_path / "run.ckpt"
    short = dataclasses.replace(BASE, steps=4)
    _run(toy, "direct", short, checkpoint=path, checkpoint_key={"horizons": [4]})
    calls = _counting(monkeypatch)
    with pytest.raises(ResumeMismatch, match=r"run\.ckpt was written for other settings.*"
                                             r"training\.steps: 4 → 8.*--overwrite"):
        _run(toy, "direct", BASE, checkpoint=path, checkpoint_key={"horizons": [4]})
    with pytest.raises(ResumeMismatch, match=r"run\.horizons: \[4\] → \[4, 12\]"):
        _run(toy, "direct", short, checkpoint=path, checkpoint_key={"horizons": [4, 12]})
    with pytest.raises(ResumeMismatch, match="arguments"):  # other data: another fingerprint
        finetune(toy.models[1], toy.data.color_train, toy.data.train_labels,
                 REGISTRY["direct"].strategy, short, **_args(toy, 1), seed=0, checkpoint=path,
                 checkpoint_key={"horizons": [4]})
    assert calls == []  # refused before any step
    # overwrite: the other run's checkpoint is ignored and the run starts afresh
    fresh = _run(toy, "direct", BASE, checkpoint=path, checkpoint_key={"horizons": [4]},
                 overwrite=True)
    assert run_header(path)[0] == 8
    monkeypatch.undo()
    assert_identical_runs(fresh, _run(toy, "direct", BASE))


@pytest.mark.parametrize("damage", ["truncate", "flip", "old format"])
def test_a_damaged_checkpoint_is_one_error_naming_the_file(toy, tmp_path, damage):
    path = tmp_path / "run.ckpt"
    short = dataclasses.replace(BASE, steps=2)
    _run(toy, "direct", short, checkpoint=path)
    raw = path.read_bytes()
    path.write_bytes({"truncate": raw[:-100],
                      "flip": raw[:-50] + bytes([raw[-50] ^ 1]) + raw[-49:],
                      "old format": raw[len(MAGIC):]}[damage])
    with pytest.raises(DamagedArtifact, match=r"run\.ckpt is damaged.*--overwrite.*delete"):
        _run(toy, "direct", short, checkpoint=path)
    _run(toy, "direct", short, checkpoint=path, overwrite=True)  # the way out
    assert run_header(path)[0] == 2


def test_training_that_goes_non_finite_stops_at_once_naming_step_strategy_and_values(
        toy, tmp_path):
    path = tmp_path / "run.ckpt"
    # λ = 3e38 is finite in float32 but the distillation term overflows at the first step
    # (with AdamW a λ of 1e30 does not diverge: its steps are normalized)
    huge = SelfDistill(3e38, Static())
    with pytest.raises(Diverged, match=r"SelfDistill finetuning went non-finite at step 1: the "
                                       r"loss is inf \(lam = 3e\+38.*lr = 0\.003\)"):
        finetune(toy.models[0], toy.data.color_train, toy.data.train_labels, huge, BASE,
                 **_args(toy), seed=0, checkpoint=path)
    assert not path.exists()  # nothing was checkpointed
    # an unstable learning rate: finite loss at step 1, then the parameters blow up
    with pytest.raises(Diverged, match=r"went non-finite (at|by) step [2-8].*lr = 1e\+30"):
        _run(toy, "direct", dataclasses.replace(BASE, lr=1e30))
    # a λ that is Inf in float32 is refused before training, naming the field and the dtype
    with pytest.raises(ValueError, match=r"SelfDistill\.lam = 1e\+300 overflows float32"):
        finetune(toy.models[0], toy.data.color_train, toy.data.train_labels,
                 SelfDistill(1e300, Static()), BASE, **_args(toy), seed=0)


@pytest.mark.parametrize("lam", [float("inf"), float("nan"), -1.0, "1", True])
def test_strategy_values_are_checked_at_construction(lam):
    with pytest.raises(ValueError, match="lam must be"):
        SelfDistill(lam, Static())


# --- bad input --------------------------------------------------------------------------------

@pytest.mark.parametrize("chunk", [0, -1, 2.5, True])
def test_finetune_rejects_a_bad_chunk(toy, chunk):
    with pytest.raises(ValueError, match="chunk"):
        _run(toy, "direct", BASE, chunk=chunk)


@pytest.mark.parametrize("stops", [(0,), (9,), (3, -2)])
def test_finetune_rejects_stops_outside_the_run(toy, stops):
    with pytest.raises(ValueError, match="stops"):
        _run(toy, "direct", BASE, stops=stops)


def test_finetune_seeds_rejects_mismatched_lengths(toy):
    args = _args(toy)
    del args["class_emb"]
    strategy, data = REGISTRY["direct"].strategy, toy.data
    bad = [dict(pretrained=toy.models, class_emb=toy.class_emb, seeds=(0,)),
           dict(pretrained=toy.models[:1], class_emb=toy.class_emb, seeds=(0, 1)),
           dict(pretrained=toy.models, class_emb=toy.class_emb[:1], seeds=(0, 1)),
           dict(pretrained=[], class_emb=[], seeds=())]
    for case in bad:
        with pytest.raises(ValueError, match="same non-zero length"):
            finetune_seeds(case["pretrained"], data.color_train, data.train_labels, strategy,
                           BASE, class_emb=case["class_emb"], seeds=case["seeds"], **args)


@pytest.mark.parametrize("chunk", [0, -1, 2.5, True])
def test_pretrain_rejects_a_bad_chunk(toy, chunk):
    data = toy.data
    with pytest.raises(ValueError, match="chunk"):
        pretrain(data.gray_train, data.train_labels, data.captions,
                 PretrainConfig(steps=4, batch_size=16), key=jax.random.key(0), seed=0,
                 chunk=chunk)


# --- pretraining ------------------------------------------------------------------------------

def test_pretraining_chunk_size_does_not_change_the_model(toy):
    data = toy.data
    config = PretrainConfig(steps=4, batch_size=16)
    start = ToyCLIP(width=config.width, dim=config.dim, key=jax.random.key(0))
    models = [pretrain(data.gray_train, data.train_labels, data.captions, config,
                       key=jax.random.key(0), seed=0, chunk=c) for c in (2, 100)]
    for x, y in zip(leaves(models[0]), leaves(models[1]), strict=True):
        np.testing.assert_array_equal(x, y)
    # and the pretraining did train: the fresh model of the same key is another
    assert any(not np.array_equal(x, s) for x, s in zip(leaves(models[0]), leaves(start),
                                                        strict=True))


def test_pretraining_matches_an_adamw_loop_written_here(toy):
    """Pretraining against its definition written here: AdamW (optax's) on the symmetric
    InfoNCE of the image and caption embeddings, every pair of one digit a positive. The batches
    are the pretraining sampler's, checked here to be distinct images of the set each with a
    caption of its digit. (The run is ``test_pretraining_chunk_size_does_not_change_the_model``'s
    first: its programs are compiled once.)"""
    data = toy.data
    config, key = PretrainConfig(steps=4, batch_size=16), jax.random.key(0)
    images, labels, captions = data.gray_train, data.train_labels, data.captions
    got = pretrain(images, labels, captions, config, key=key, seed=0, chunk=2)

    def loss(m, x, tokens, y):
        z = m.scale * m.embed_images(x) @ m.embed_texts(tokens).T
        same = (y[:, None] == y[None, :]).astype(z.dtype)
        positives = same / same.sum(1, keepdims=True)
        return -0.5 * (jnp.sum(positives * jax.nn.log_softmax(z, axis=1))
                       + jnp.sum(positives.T * jax.nn.log_softmax(z.T, axis=1))) / len(y)

    adamw = optax.adamw(config.lr, weight_decay=config.weight_decay)

    @eqx.filter_jit
    def step(m, opt, t, arrays):
        x, tokens, y = _pretrain_batch(*arrays, jax.random.fold_in(seed_key, t),
                                       config.batch_size)
        grad = eqx.filter_grad(loss)(m, x, tokens, y)
        updates, opt = adamw.update(grad, opt, eqx.filter(m, eqx.is_array))
        return eqx.apply_updates(m, updates), opt, (x, tokens, y)

    start = ToyCLIP(width=config.width, dim=config.dim, key=key)  # what pretraining starts from
    model, opt = start, adamw.init(eqx.filter(start, eqx.is_array))
    arrays = (jnp.asarray(images), jnp.asarray(labels, jnp.int32), jnp.asarray(captions))
    seed_key = jax.random.key(0)
    label_of = {image.tobytes(): label for image, label in zip(images, labels, strict=True)}
    for t in range(1, config.steps + 1):
        model, opt, (x, tokens, y) = step(model, opt, jnp.int32(t), arrays)
        rows = [row.tobytes() for row in np.asarray(x)]  # distinct images of the set ...
        assert len(set(rows)) == config.batch_size and set(rows) <= set(label_of)
        np.testing.assert_array_equal(y, [label_of[r] for r in rows])  # ... with their labels
        assert all(any(np.array_equal(row, c) for c in captions[label])  # and digit's captions
                   for row, label in zip(np.asarray(tokens), np.asarray(y), strict=True))
    assert relative_difference(got, model, start) < 1e-4


def test_pretraining_checkpoints_are_keyed_and_divergence_stops_it(toy, tmp_path):
    data, path = toy.data, tmp_path / "pre.run"
    args = (data.gray_train, data.train_labels, data.captions)
    config = PretrainConfig(steps=4, batch_size=16, checkpoint_every=2)
    pretrain(*args, config, key=jax.random.key(0), seed=0, checkpoint=path)
    with pytest.raises(ResumeMismatch, match=r"pre\.run was written for other settings.*"
                                             r"config\.lr: 0\.001 → 0\.002"):
        pretrain(*args, dataclasses.replace(config, lr=2e-3), key=jax.random.key(0), seed=0,
                 checkpoint=path)
    with pytest.raises(Diverged, match=r"pretraining \(seed 0\) went non-finite (at|by) step "
                                       r"[1-4].*lr = 1e\+30"):
        pretrain(*args, dataclasses.replace(config, lr=1e30), key=jax.random.key(0), seed=0)


# --- the batch sampler ------------------------------------------------------------------------

def test_batches_are_drawn_without_replacement_and_differ_by_step():
    # every image encodes its index (and its label is that index too), so a batch names what it
    # drew; the replay images are offset by 1000
    n, m, size, n_hybrid = 40, 12, 16, 4
    images = np.arange(n, dtype=np.float32).reshape(n, 1, 1, 1) * np.ones((1, 1, 2, 2),
                                                                           np.float32)
    hybrid = (1000 + np.arange(m, dtype=np.float32).reshape(m, 1, 1, 1) * np.ones(
        (1, 1, 2, 2), np.float32), np.arange(m)[:, None] * np.ones((1, 8), np.int32),
        np.arange(m, dtype=np.int32))
    data = TrainingData.of(images, np.arange(n), hybrid)
    seed_key = jax.random.key(0)
    drawn, seen = [], set()
    for step in range(1, 31):
        batch = draw_batch(data, step_key(seed_key, jnp.int32(step)), size, n_hybrid)
        idx = np.asarray(batch.images)[:, 0, 0, 0].astype(int)
        hidx = np.asarray(batch.hybrid_images)[:, 0, 0, 0].astype(int) - 1000
        assert idx.shape == (size - n_hybrid,) and hidx.shape == (n_hybrid,)
        assert len(set(idx)) == len(idx), f"step {step} drew {sorted(idx)}"
        assert len(set(hidx)) == len(hidx), f"step {step} drew replay {sorted(hidx)}"
        assert idx.min() >= 0 and idx.max() < n and hidx.min() >= 0 and hidx.max() < m
        np.testing.assert_array_equal(np.asarray(batch.labels), idx)  # images keep their labels
        np.testing.assert_array_equal(np.asarray(batch.hybrid_labels), hidx)
        np.testing.assert_array_equal(np.asarray(batch.hybrid_tokens), np.repeat(hidx[:, None],
                                                                                 8, 1))
        # the batch depends on the step alone: drawn again, it is the same
        again = draw_batch(data, step_key(seed_key, jnp.int32(step)), size, n_hybrid)
        np.testing.assert_array_equal(np.asarray(again.images), np.asarray(batch.images))
        drawn.append(frozenset(idx))
        seen |= set(idx)
    assert len(set(drawn)) == len(drawn), "two steps drew the same batch"
    assert seen == set(range(n)), "30 batches of 12 out of 40 should cover every image"
    # another seed draws other batches
    other = draw_batch(data, step_key(jax.random.key(1), jnp.int32(1)), size, n_hybrid)
    assert frozenset(np.asarray(other.images)[:, 0, 0, 0].astype(int)) != drawn[0]
    # without replay the hybrid part is empty
    plain = draw_batch(TrainingData.of(images, np.arange(n)), seed_key, size, 0)
    assert plain.images.shape[0] == size and plain.hybrid_images.shape[0] == 0
    assert len(set(np.asarray(plain.images)[:, 0, 0, 0].tolist())) == size
