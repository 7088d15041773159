"""Training the transformer CLIP: the same step on 1 and 2 devices, gradient accumulation, bf16,
resumable checkpoints, bad input, and the pieces of the theory-vs-measurement comparison.

conftest.py gives this process two host CPU devices (``--xla_force_host_platform_device_count``).
"""

import dataclasses

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.stats

import tracer_theory as tt
from tracer_theory.deep.data.prompts import TRAIN_TEMPLATES, prompt_tokens
from tracer_theory.deep.finetune import checkpoints, pretraining, step, strategies as S
from tracer_theory.deep.finetune.config import FinetuneConfig, PretrainConfig
from tracer_theory.deep.finetune.finetunee import Batch, Finetunee, image_tower
from tracer_theory.deep.finetune.step import start, train_step
from tracer_theory.deep.models.clip import CLIP, CLIPPreset, clip_tokens
from tracer_theory.deep.parallel import data_mesh, replicate, shard_batch
from tracer_theory.deep.studies.theory import clip_config, compare
from tracer_theory.dynamics.spectral import TeacherSD
from tracer_theory.linear import strategies as linear
from tracer_theory.linear.random import random_problem

B = 8
#: A one-block CLIP: the mechanics under test (sharding, accumulation, dtypes, checkpoints) do
#: not depend on depth, and one block compiles in half the time of the tiny preset's two.
SMALLEST = CLIPPreset(name="test", image_size=28, patch_size=7, width=32, layers=1, heads=2,
                      text_width=32, text_layers=1, text_heads=2, dim=16)


@pytest.fixture(scope="module")
def tiny():
    key = jax.random.key(0)
    clip = CLIP(SMALLEST, key=key)
    model = Finetunee(clip, eqx.nn.Linear(32, 10, dtype=jnp.float32,
                                          key=jax.random.fold_in(key, 1)))
    rng = np.random.default_rng(0)
    batch = Batch(jnp.asarray(rng.random((B, 3, 28, 28), np.float32)),
                  jnp.asarray(rng.integers(10, size=B)), jnp.zeros((0, 3, 28, 28), jnp.float32),
                  jnp.zeros((0, 9), jnp.int32), jnp.zeros((0,), jnp.int64))
    class_emb = clip.class_embeddings(jnp.asarray(clip_tokens(prompt_tokens(TRAIN_TEMPLATES))))
    return model, batch, class_emb


_STARTS = {}


def _steps(tiny, config, mesh=None, n=2, strategy=None):
    """``n`` train steps of ``strategy`` (WMA SD by default) from the same start; returns
    (losses, final state). One optimizer object per config, so the jitted step compiles once
    per (config, sharding)."""
    model, batch, class_emb = tiny
    strategy = S.REGISTRY["wma_sd"].strategy if strategy is None else strategy
    if (config, strategy) not in _STARTS:
        _STARTS[config, strategy] = start(model, strategy, config)
    state, optimizer, schedule = _STARTS[config, strategy]
    if mesh is not None:
        state, batch = replicate(state, mesh), shard_batch(batch, mesh)
    losses = []
    for _ in range(n):
        state, parts = train_step(state, batch, strategy, schedule, config, optimizer, model,
                                  class_emb, model.head)
        losses.append(float(parts["loss"]))
    return np.asarray(losses), state


def _max_diff(a, b) -> float:
    leaves = jax.tree.leaves(jax.tree.map(lambda x, y: jnp.max(jnp.abs(x - y)),
                                          eqx.filter(a, eqx.is_inexact_array),
                                          eqx.filter(b, eqx.is_inexact_array)))
    return max(float(v) for v in leaves)


WMA = FinetuneConfig(batch_size=B, steps=4, warmup_steps=1, cosine=True)


def _norm_diff(a, b) -> float:
    """Frobenius norm of a − b over every float leaf."""
    leaves = jax.tree.leaves(jax.tree.map(lambda x, y: jnp.sum((x - y) ** 2),
                                          eqx.filter(a, eqx.is_inexact_array),
                                          eqx.filter(b, eqx.is_inexact_array)))
    return float(np.sqrt(sum(float(v) for v in leaves)))


def test_two_devices_give_the_same_steps_as_one(tiny):
    assert len(jax.devices()) >= 2, "conftest should force two host devices"
    loss_1, state_1 = _steps(tiny, WMA)
    loss_2, state_2 = _steps(tiny, WMA, data_mesh(2))
    assert state_2.model.clip.image_proj.weight.sharding.num_devices == 2
    np.testing.assert_allclose(loss_2, loss_1, rtol=1e-5)
    # Adam's early updates are ±lr wherever a gradient is ~0, so float32 round-off in the
    # cross-device sum can flip a few such coordinates; the updates agree as a whole.
    start = tiny[0]
    assert _norm_diff(state_2.model, state_1.model) < 1e-2 * _norm_diff(state_1.model, start)
    assert _norm_diff(state_1.teacher.params, image_tower(start)) > 0  # the teacher moved ...
    assert _norm_diff(state_2.teacher.params, state_1.teacher.params) < 1e-2 * _norm_diff(
        state_1.teacher.params, image_tower(start))  # ... the same way on both meshes


def test_gradient_accumulation_equals_the_full_batch():
    rng = np.random.default_rng(2)
    w = {"w": jnp.asarray(rng.standard_normal((3, 4)), jnp.float32)}
    data = (jnp.asarray(rng.standard_normal((8, 4)), jnp.float32),
            jnp.asarray(rng.standard_normal((8, 3)), jnp.float32))

    def loss(params, batch):
        x, y = batch
        residual = x @ params["w"].T - y
        return jnp.mean(residual**2), {"max": jnp.max(jnp.abs(residual))}

    (v1, _), g1 = step.accumulated_value_and_grad(loss, w, data, 1)
    (v4, _), g4 = step.accumulated_value_and_grad(loss, w, data, 4)
    np.testing.assert_allclose(v4, v1, rtol=1e-6)
    np.testing.assert_allclose(g4["w"], g1["w"], rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(g1["w"], jax.grad(lambda p: loss(p, data)[0])(w)["w"], rtol=1e-6)


def test_bfloat16_steps_equal_float32_steps_and_keep_float32_parameters(tiny):
    loss_32, _ = _steps(tiny, WMA)
    loss_16, state = _steps(tiny, dataclasses.replace(WMA, compute_dtype="bfloat16"))
    assert np.isfinite(loss_16).all()
    np.testing.assert_allclose(loss_16, loss_32, rtol=5e-2)
    assert state.model.clip.image_proj.weight.dtype == jnp.float32


def test_pretraining_resumes_bit_identically(tmp_path, monkeypatch):
    rng = np.random.default_rng(1)
    images = rng.random((40, 3, 28, 28), np.float32)
    labels = rng.integers(10, size=40)
    captions = clip_tokens(prompt_tokens(TRAIN_TEMPLATES))
    config = PretrainConfig(model=SMALLEST, steps=4, batch_size=B, checkpoint_every=2,
                            warmup_steps=1, cosine=True)
    key = jax.random.key(3)
    whole = pretraining.pretrain(images, labels, captions, config, key=key, seed=0,
                     checkpoint=tmp_path / "a.run")
    # interrupt a second run in its third one-step chunk (its checkpoint holds step 2), then resume
    original, calls = pretraining._pretrain_chunk, []

    def interrupted(*args, **kwargs):
        calls.append(1)
        if len(calls) == 3:
            raise KeyboardInterrupt
        return original(*args, **kwargs)

    monkeypatch.setattr(pretraining, "_pretrain_chunk", interrupted)
    with pytest.raises(KeyboardInterrupt):
        pretraining.pretrain(images, labels, captions, config, key=key, seed=0,
                             checkpoint=tmp_path / "b.run", chunk=1)
    monkeypatch.setattr(pretraining, "_pretrain_chunk", original)
    _, at, _ = checkpoints.load_run(tmp_path / "b.run", (whole, None))
    assert at == 2
    resumed = pretraining.pretrain(images, labels, captions, config, key=key, seed=0,
                       checkpoint=tmp_path / "b.run")
    assert _max_diff(resumed, whole) == 0.0
    # save → load gives identical outputs
    (loaded, _), _, _ = checkpoints.load_run(tmp_path / "a.run", (whole, None))
    tokens = jnp.asarray(captions[:, 0])
    np.testing.assert_array_equal(np.asarray(loaded.embed_texts(tokens)),
                                  np.asarray(whole.embed_texts(tokens)))
    np.testing.assert_array_equal(np.asarray(loaded.embed_images(jnp.asarray(images[:4]))),
                                  np.asarray(whole.embed_images(jnp.asarray(images[:4]))))


def test_bad_configurations_and_batches_are_clear_errors(tiny):
    with pytest.raises(ValueError, match="unknown preset 'huge'"):
        PretrainConfig(model="huge")
    with pytest.raises(ValueError, match="accumulate must be >= 1 and divide batch_size"):
        FinetuneConfig(batch_size=8, accumulate=3)
    with pytest.raises(ValueError, match="compute_dtype"):
        FinetuneConfig(compute_dtype="float16")
    with pytest.raises(ValueError, match="warmup_steps"):
        PretrainConfig(steps=10, warmup_steps=20)
    with pytest.raises(ValueError, match="devices must be in"):
        data_mesh(len(jax.local_devices()) + 1)
    with pytest.raises(ValueError, match="batch size 7 is not divisible by the 2 devices"):
        shard_batch(np.zeros((7, 3)), data_mesh(2))


def test_linear_counterparts_share_the_deep_hyperparameters():
    """``strategy.linear()`` gives the linear strategy the theory comparison always used: the
    same λ, and for a moving teacher the exact finite-horizon dynamics of the same schedule over
    the run's steps at half the stability bound."""
    with jax.enable_x64(True):
        problem = random_problem(d_img=12, n=6, d_txt=5, k=4, seed=0)
        steps = clip_config("tiny").finetune.steps
        registry = {name: entry.strategy for name, entry in S.REGISTRY.items()}
        assert registry["direct"].linear(problem, steps) == linear.DirectFT()
        for name, twin in (("l2sp", linear.L2SP), ("weight_decay", linear.WeightDecay)):
            deep = dataclasses.replace(registry[name], lam=0.3)
            assert deep.linear(problem, steps) == twin(0.3), name
        static = dataclasses.replace(registry["static_sd"], lam=0.3)
        assert static.linear(problem, steps) == linear.StaticSD(0.3)
        sigma_max_sq = float(np.linalg.svd(np.asarray(problem.x_img), compute_uv=False)[0]) ** 2
        teachers = (("wma_sd", S.WMA(2.0, 3.0), tt.wma_teacher(steps, 2.0, 3.0)),
                    ("ema_sd", S.EMA(0.9), tt.ema_teacher(0.9)))
        for name, teacher, expected in teachers:
            deep = dataclasses.replace(registry[name], lam=0.7, teacher=teacher)
            got = deep.linear(problem, steps)
            assert isinstance(got, TeacherSD) and got.steps == steps and got.lam == 0.7
            np.testing.assert_array_equal(got.schedule.weights(steps), expected.weights(steps))
            # half the stability bound 2/(σ_max²(1 + λ))
            assert got.lr == pytest.approx(0.5 * 2 / (sigma_max_sq * 1.7), rel=1e-12)
        for name in ("lp_ft", "low_lr", "proj_only", "data_hybrid"):
            with pytest.raises(ValueError, match="no counterpart in the linear theory"):
                registry[name].linear(problem, steps)


def test_compare_ranks_like_scipy_and_a_hand_example():
    measured, predicted = [1.0, 2.0, 3.0, 4.0], [2.0, 1.0, 4.0, 3.0]
    rows = [{"seed": 0, "strategy": s, "lam_field": "", "lam": 0.0, "measured_forgetting": m,
             "predicted_forgetting": p, "predicted_logit_change": m}
            for s, m, p in zip("abcd", measured, predicted, strict=True)]
    result = compare(rows)
    # Σd² = 4 over n = 4 points: ρ = 1 − 6·4/(4·15) = 0.6
    assert result["spearman_predicted_forgetting"] == pytest.approx(0.6)
    assert result["spearman_predicted_forgetting"] == pytest.approx(
        scipy.stats.spearmanr(predicted, measured).statistic)
    assert result["spearman_predicted_logit_change"] == pytest.approx(1.0)
