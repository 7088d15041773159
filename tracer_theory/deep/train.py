"""Pretraining and finetuning of the toy CLIP: one jitted step for every strategy.

A finetuning run is fully described by a ``FinetuneConfig`` (a frozen, hashable value). The
teacher of the self-distillation strategies is the shared ``tracer_theory.teacher`` driven by the
shared schedules (static, EMA, WMA): the same objects as in the linear theory.
"""

from __future__ import annotations

import dataclasses
import functools
import json
from pathlib import Path
from typing import Any, Literal

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import optax
from jaxtyping import Array, Float, Int, PRNGKeyArray, PyTree
from tqdm.auto import tqdm

from ..dynamics.schedules import Schedule, ema_teacher, static_teacher, wma_teacher
from ..dynamics.teacher import TeacherState, mix, teacher
from .clip import CLIP, CLIPPreset
from .losses import (
    clip_loss,
    cross_entropy,
    cross_frobenius,
    kl_distillation,
    multi_view_distillation,
)
from .metrics import argmax_agreement, mean_kl, parameter_distance, squared_distance
from .model import ToyCLIP, normalize
from .parallel import Mesh, replicate, shard_batch

Objective = Literal["head", "prompts"]
STRATEGIES = ("direct", "l2sp", "weight_decay", "static_sd", "ema_sd", "wma_sd", "lp_ft",
              "low_lr", "proj_only", "data_hybrid")
SD_STRATEGIES = ("static_sd", "ema_sd", "wma_sd")


@dataclasses.dataclass(frozen=True)
class FinetuneConfig:
    """Everything that defines one finetuning run (hashable, so it is static under ``jit``).

    ``lam`` is the weight of the SD losses (shared by static, EMA and WMA SD); ``l2_lam`` and
    ``wd_lam`` those of L2-SP (toward the pretrained weights) and weight decay (toward 0);
    ``momentum`` the EMA teacher's; ``distill`` ``"multiview"`` (FD + CRD + ICL + CKD in the
    embedding space, TRACER's loss) or ``"kl"`` (KL toward the teacher's classifier logits at
    ``temperature``, the original toy's); ``rho`` the cross-Frobenius weight; ``hybrid`` the
    fraction of each batch drawn from the gray pretraining data (``data_hybrid``);
    ``low_lr_factor`` the learning-rate divisor of ``low_lr``; ``lp_fraction`` the share of
    steps spent on the linear probe in ``lp_ft``; ``penalize_head`` whether L2 covers the new
    head too (the original toy does).
    """

    # lr, lam, l2_lam and wd_lam: chosen on the validation split by `tracer-theory toy --select`
    # (head objective, seed 0; output in experiments/toy_selection_head.json).
    strategy: str = "direct"
    objective: Objective = "head"
    steps: int = 100
    batch_size: int = 128
    lr: float = 3e-3
    weight_decay: float = 0.0
    lam: float = 1.0
    l2_lam: float = 10.0
    wd_lam: float = 1e-4
    momentum: float = 0.99
    distill: Literal["multiview", "kl"] = "multiview"
    temperature: float = 1.0
    rho: float = 0.0
    hybrid: float = 0.25
    low_lr_factor: float = 10.0
    lp_fraction: float = 0.5
    penalize_head: bool = False
    log_every: int = 10
    warmup_steps: int = 0
    cosine: bool = False
    accumulate: int = 1
    compute_dtype: Literal["float32", "bfloat16"] = "float32"

    def __post_init__(self) -> None:
        if self.strategy not in STRATEGIES:
            raise ValueError(f"strategy must be one of {STRATEGIES}, got {self.strategy!r}")
        if self.objective not in ("head", "prompts"):
            raise ValueError(f"objective must be 'head' or 'prompts', got {self.objective!r}")
        _check_training(self)
        for name in ("steps", "batch_size", "log_every"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        for name in ("lr", "low_lr_factor", "temperature"):
            if not getattr(self, name) > 0:
                raise ValueError(f"{name} must be > 0, got {getattr(self, name)}")
        for name in ("lam", "l2_lam", "wd_lam", "rho", "weight_decay"):
            if not getattr(self, name) >= 0:
                raise ValueError(f"{name} must be >= 0, got {getattr(self, name)}")
        if not 0 <= self.momentum < 1:
            raise ValueError(f"momentum must be in [0, 1), got {self.momentum}")
        if not 0 <= self.hybrid < 1:
            raise ValueError(f"hybrid must be in [0, 1), got {self.hybrid}")
        if not 0 < self.lp_fraction < 1:
            raise ValueError(f"lp_fraction must be in (0, 1), got {self.lp_fraction}")

    def schedule(self) -> Schedule:
        """The teacher schedule of the SD strategies (WMA over the whole run)."""
        if self.strategy == "ema_sd":
            return ema_teacher(self.momentum)
        if self.strategy == "wma_sd":
            return wma_teacher(self.steps)
        return static_teacher()


def _check_training(config: FinetuneConfig | PretrainConfig) -> None:
    """Checks shared by both configs: schedule, accumulation and compute dtype."""
    if config.warmup_steps < 0 or config.warmup_steps > config.steps:
        raise ValueError(f"warmup_steps must be in [0, steps = {config.steps}], "
                         f"got {config.warmup_steps}")
    if config.accumulate < 1 or config.batch_size % config.accumulate:
        raise ValueError(f"accumulate must be >= 1 and divide batch_size = {config.batch_size}, "
                         f"got {config.accumulate}")
    if config.compute_dtype not in ("float32", "bfloat16"):
        raise ValueError(f"compute_dtype must be 'float32' or 'bfloat16', "
                         f"got {config.compute_dtype!r}")


def learning_rate(config: FinetuneConfig | PretrainConfig, lr: float) -> optax.ScalarOrSchedule:
    """``lr``, or linear warm-up over ``warmup_steps`` then cosine decay to 0 (``cosine``)."""
    if config.cosine:
        return optax.warmup_cosine_decay_schedule(0.0, lr, max(config.warmup_steps, 1),
                                                  max(config.steps, config.warmup_steps + 1))
    if config.warmup_steps:
        return optax.linear_schedule(0.0, lr, config.warmup_steps)
    return lr


def in_compute_dtype(tree: PyTree, dtype: str) -> PyTree:
    """``tree`` with its float arrays cast to ``dtype`` (a no-op for float32 leaves at
    float32); gradients flow back through the cast to the float32 parameters."""
    target = jnp.dtype(dtype)
    return jax.tree.map(lambda x: x.astype(target) if eqx.is_inexact_array(x)
                        and x.dtype != target else x, tree)


def accumulated_value_and_grad(loss, model: PyTree, batch: PyTree, accumulate: int):
    """``((value, aux), grads)`` of ``loss(model, batch)`` averaged over ``accumulate`` equal
    micro-batches (split along axis 0 of every batch leaf) run in a ``lax.scan``."""
    value_and_grad = eqx.filter_value_and_grad(loss, has_aux=True)
    if accumulate == 1:
        return value_and_grad(model, batch)
    micro = jax.tree.map(lambda x: x.reshape(accumulate, x.shape[0] // accumulate,
                                             *x.shape[1:]), batch)
    (v0, a0), g0 = eqx.filter_eval_shape(value_and_grad, model,
                                         jax.tree.map(lambda x: x[0], micro))
    zeros = jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), ((v0, a0), g0))

    def body(total, mb):
        out = value_and_grad(model, mb)
        return jax.tree.map(lambda t, o: t + o / accumulate, total, out), None

    total, _ = jax.lax.scan(body, zeros, micro)
    return total


class Finetunee(eqx.Module):
    """The model being finetuned: the CLIP and a fresh linear classifier on image features."""

    clip: ToyCLIP
    head: eqx.nn.Linear


class Batch(eqx.Module):
    """One finetuning batch; ``hybrid_*`` hold the gray pretraining images mixed in (maybe 0)."""

    images: Float[Array, "B 3 28 28"]
    labels: Int[Array, " B"]
    hybrid_images: Float[Array, "H 3 28 28"]
    hybrid_tokens: Int[Array, "H L"]
    hybrid_labels: Int[Array, " H"]


def image_tower(model: Finetunee) -> PyTree:
    """The part a teacher tracks: the image encoder and its projection."""
    return (model.clip.image, model.clip.image_proj)


def trainable_mask(model: Finetunee, config: FinetuneConfig, phase: str = "main") -> PyTree:
    """Boolean pytree: which leaves the optimizer updates. The text tower is always frozen."""
    false = jax.tree.map(lambda _: False, model)
    floats = eqx.is_inexact_array
    if phase == "probe" or config.strategy == "proj_only":
        parts = (lambda m: m.head,) if phase == "probe" else (
            lambda m: m.head, lambda m: m.clip.image_proj, lambda m: m.clip.last_layer())
    else:
        parts = (lambda m: m.head, lambda m: m.clip.image, lambda m: m.clip.image_proj)
    mask = false
    for part in parts:
        mask = eqx.tree_at(part, mask, replace=jax.tree.map(floats, part(model)))
    return mask


def class_logits(model: Finetunee, images: Float[Array, "B 3 28 28"],
                 class_emb: Float[Array, "C D"], objective: Objective) -> Float[Array, "B C"]:
    """The finetuning classifier: the head on image features, or the frozen prompt embeddings."""
    return logits_from_features(model, model.clip.image_features(images), class_emb, objective)


def logits_from_features(model: Finetunee, features: Float[Array, "B W"],
                         class_emb: Float[Array, "C D"], objective: Objective
                         ) -> Float[Array, "B C"]:
    """``class_logits`` from already computed image features (B, width)."""
    if objective == "head":
        return jax.vmap(model.head)(features)
    return model.clip.scale * project(model, features) @ class_emb.T


def project(model: Finetunee, features: Float[Array, "B W"]) -> Float[Array, "B D"]:
    """Normalized image embeddings from image features (B, width)."""
    return normalize(jax.vmap(model.clip.image_proj)(features))


def _embed_with(tower: PyTree, images: Float[Array, "B 3 28 28"]) -> Float[Array, "B D"]:
    image, proj = tower
    return normalize(jax.vmap(lambda x: proj(image(x)))(images))


def finetune_loss(model: Finetunee, batch: Batch, config: FinetuneConfig, *,
                  pretrained: Finetunee, teacher_tower: PyTree, class_emb: Float[Array, "C D"],
                  teacher_head: eqx.nn.Linear) -> tuple[Array, dict[str, Array]]:
    """The task loss plus the strategy's regulariser; returns ``(loss, parts)``."""
    features = model.clip.image_features(batch.images)  # one encoder pass for every term
    logits = logits_from_features(model, features, class_emb, config.objective)
    task = cross_entropy(logits, batch.labels)
    parts = {"task": task}
    reg = jnp.zeros((), task.dtype)
    params = eqx.filter(image_tower(model), eqx.is_inexact_array)
    if config.penalize_head:
        params = (params, eqx.filter(model.head, eqx.is_inexact_array))
    if config.strategy == "l2sp":
        anchor = eqx.filter(image_tower(pretrained), eqx.is_inexact_array)
        if config.penalize_head:
            anchor = (anchor, eqx.filter(pretrained.head, eqx.is_inexact_array))
        reg = 0.5 * config.l2_lam * squared_distance(params, anchor)
    elif config.strategy == "weight_decay":
        reg = 0.5 * config.wd_lam * squared_distance(params, jax.tree.map(jnp.zeros_like, params))
    elif config.strategy in SD_STRATEGIES:
        if config.distill == "kl":
            teacher_model = eqx.tree_at(lambda m: (m.clip.image, m.clip.image_proj, m.head),
                                        model, (*teacher_tower, teacher_head))
            t_logits = jax.lax.stop_gradient(class_logits(teacher_model, batch.images, class_emb,
                                                          config.objective))
            reg = config.lam * kl_distillation(logits, t_logits, config.temperature)
        else:
            s_img = project(model, features)
            t_img = jax.lax.stop_gradient(_embed_with(teacher_tower, batch.images))
            txt = jax.lax.stop_gradient(class_emb[batch.labels])  # frozen text tower
            reg, views = multi_view_distillation((s_img, txt), (t_img, txt),
                                                 jax.lax.stop_gradient(model.clip.scale),
                                                 labels=batch.labels)
            reg = config.lam * reg
            parts.update(views)
        if config.rho > 0:
            reg = reg + config.rho * cross_frobenius(model.clip.image_proj.weight,
                                                     model.clip.text_proj.weight)
    if config.strategy == "data_hybrid":
        img = model.clip.embed_images(batch.hybrid_images)
        txt = jax.lax.stop_gradient(model.clip.embed_texts(batch.hybrid_tokens))
        reg = clip_loss(img, txt, model.clip.scale, labels=batch.hybrid_labels)
    parts["reg"] = reg
    return task + reg, parts


class TrainState(eqx.Module):
    model: Finetunee
    opt_state: PyTree
    teacher: TeacherState


def make_optimizer(config: FinetuneConfig, mask: PyTree, lr: float) -> optax.GradientTransformation:
    """AdamW on the masked leaves (others get zero updates)."""
    adamw = optax.adamw(learning_rate(config, lr), weight_decay=config.weight_decay)
    return optax.multi_transform({True: adamw, False: optax.set_to_zero()}, mask)


def effective_lr(config: FinetuneConfig) -> float:
    return config.lr / config.low_lr_factor if config.strategy == "low_lr" else config.lr


@eqx.filter_jit
def train_step(state: TrainState, batch: Batch, config: FinetuneConfig,
               optimizer: optax.GradientTransformation, pretrained: Finetunee,
               class_emb: Float[Array, "C D"], teacher_head: eqx.nn.Linear,
               omega: Float[Array, ""]) -> tuple[TrainState, dict[str, Array]]:
    """One optimizer step and one teacher update ``T ← (1 − ω)T + ωW`` (``mix``: a single fused
    pass over the image tower). ``ω`` comes from the run's precomputed schedule weights, so an
    EMA and a WMA teacher cost the same."""

    dtype = config.compute_dtype
    # Everything not differentiated is cast once per step, outside the micro-batch loop; the
    # student is cast inside the loss so its gradients reach the float32 parameters.
    fixed = in_compute_dtype((pretrained, state.teacher.params, class_emb, teacher_head), dtype)

    def loss(model, batch):
        value, parts = finetune_loss(in_compute_dtype(model, dtype), batch, config,
                                     pretrained=fixed[0], teacher_tower=fixed[1],
                                     class_emb=fixed[2], teacher_head=fixed[3])
        return value.astype(jnp.float32), jax.tree.map(lambda p: p.astype(jnp.float32), parts)

    (value, parts), grads = accumulated_value_and_grad(
        loss, state.model, in_compute_dtype(batch, dtype), config.accumulate)
    params = eqx.filter(state.model, eqx.is_inexact_array)
    updates, opt_state = optimizer.update(eqx.filter(grads, eqx.is_inexact_array),
                                          state.opt_state, params)
    model = eqx.apply_updates(state.model, updates)
    teacher_state = state.teacher
    if config.strategy in ("ema_sd", "wma_sd"):
        teacher_state = TeacherState(state.teacher.step + 1,
                                     mix(state.teacher.params, image_tower(model), omega))
    return TrainState(model, opt_state, teacher_state), {"loss": value, **parts}


def gap_metrics(model: Finetunee, teacher_tower: PyTree, probe: Float[Array, "B 3 28 28"],
                class_emb: Float[Array, "C D"]) -> dict[str, Array]:
    """Teacher–student gap: parameter distance, zero-shot logit KL and argmax agreement."""
    student_logits = model.clip.scale * model.clip.embed_images(probe) @ class_emb.T
    teacher_logits = model.clip.scale * _embed_with(teacher_tower, probe) @ class_emb.T
    return {"param_distance": parameter_distance(eqx.filter(image_tower(model), eqx.is_array),
                                                 eqx.filter(teacher_tower, eqx.is_array)),
            "logit_kl": mean_kl(teacher_logits, student_logits),
            "agreement": argmax_agreement(teacher_logits, student_logits)}


_gap_metrics = eqx.filter_jit(gap_metrics)


def finetune(pretrained: Finetunee, images: np.ndarray, labels: np.ndarray,
             config: FinetuneConfig, *, class_emb: Float[Array, "C D"], probe: np.ndarray,
             hybrid: tuple[np.ndarray, np.ndarray, np.ndarray] | None, seed: int,
             progress: str | None = None, mesh: Mesh | None = None
             ) -> tuple[Finetunee, dict[str, np.ndarray]]:
    """Finetune ``pretrained`` on ``images`` (N, 3, 28, 28) / ``labels`` (N,) with ``config``.

    ``hybrid`` = (gray images, caption tokens, labels) for ``data_hybrid``; ``probe`` a fixed batch
    for the gap metrics, logged every ``config.log_every`` steps. Returns the finetuned model and
    the logged curves (``steps``, ``param_distance``, ``logit_kl``, ``agreement``, ``loss``).
    ``mesh``: a device mesh (``parallel.data_mesh``) to split each batch over (data parallel).
    """
    rng = np.random.default_rng(seed)
    schedule = config.schedule()
    omegas = np.asarray(schedule.weights(config.steps), np.float32)  # ω_1..ω_steps, once
    teacher_head = pretrained.head
    phases = [("main", config.steps)]
    if config.strategy == "lp_ft":
        probe_steps = max(1, int(config.lp_fraction * config.steps))
        phases = [("probe", probe_steps), ("main", config.steps - probe_steps)]
    model = pretrained
    tower_teacher = teacher(schedule).init(image_tower(pretrained))
    n_hybrid = round(config.hybrid * config.batch_size) if config.strategy == "data_hybrid" else 0
    curves: dict[str, list] = {"steps": [], "param_distance": [], "logit_kl": [],
                               "agreement": [], "loss": []}
    probe = jnp.asarray(probe)
    step = 0
    bar = tqdm(total=config.steps, desc=progress, leave=False, disable=progress is None)
    for phase, phase_steps in phases:
        mask = trainable_mask(model, config, phase)
        lr = effective_lr(config) / (config.low_lr_factor if phase == "main"
                                     and config.strategy == "lp_ft" else 1.0)
        optimizer = make_optimizer(config, mask, lr)
        state = TrainState(model, optimizer.init(eqx.filter(model, eqx.is_inexact_array)),
                           tower_teacher)
        if mesh is not None:
            state = replicate(state, mesh)
        for _ in range(phase_steps):
            batch = _sample(rng, images, labels, config.batch_size - n_hybrid, hybrid, n_hybrid)
            if mesh is not None:
                batch = shard_batch(batch, mesh)
            state, parts = train_step(state, batch, config, optimizer, pretrained, class_emb,
                                      teacher_head, jnp.asarray(omegas[step]))
            step += 1
            if step % config.log_every == 0 or step == config.steps:
                gaps = _gap_metrics(state.model, state.teacher.params, probe, class_emb)
                curves["steps"].append(step)
                curves["loss"].append(float(parts["loss"]))
                for key, value in gaps.items():
                    curves[key].append(float(value))
            bar.update(1)
        model, tower_teacher = state.model, state.teacher
    bar.close()
    return model, {k: np.asarray(v) for k, v in curves.items()}


def _sample(rng: np.random.Generator, images, labels, n: int, hybrid, n_hybrid: int) -> Batch:
    idx = rng.choice(len(labels), size=n, replace=False)
    if n_hybrid:
        h_img, h_tok, h_lab = hybrid
        hidx = rng.choice(len(h_lab), size=n_hybrid, replace=False)
        h = (h_img[hidx], h_tok[hidx], h_lab[hidx])
    else:
        length = hybrid[1].shape[1] if hybrid is not None else 8
        h = (np.zeros((0, *images.shape[1:]), images.dtype), np.zeros((0, length), np.int32),
             np.zeros((0,), labels.dtype))
    return Batch(jnp.asarray(images[idx]), jnp.asarray(labels[idx]), *map(jnp.asarray, h))


# --- pretraining -------------------------------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class PretrainConfig:
    """Contrastive pretraining on gray digits with random training-template captions.

    ``model`` is ``"toy"`` (``ToyCLIP`` of ``width``/``dim``) or a CLIP preset name
    (``tracer_theory.deep.clip.PRESETS``: ``"tiny"``, ``"small"``, ``"base"``) or a
    ``CLIPPreset``, whose sizes come from the preset. ``checkpoint_every`` > 0 saves the run
    every that many steps, so an interrupted pretraining resumes where it stopped and ends
    bit-identical.
    """

    steps: int = 600
    batch_size: int = 128
    lr: float = 1e-3
    weight_decay: float = 1e-4
    width: int = 128
    dim: int = 64
    model: str | CLIPPreset = "toy"
    warmup_steps: int = 0
    cosine: bool = False
    accumulate: int = 1
    compute_dtype: Literal["float32", "bfloat16"] = "float32"
    checkpoint_every: int = 0

    def __post_init__(self) -> None:
        _check_training(self)
        if self.model != "toy":
            from .clip import preset

            preset(self.model)  # ValueError naming the unknown preset


def make_clip(config: PretrainConfig, key: PRNGKeyArray) -> ToyCLIP | CLIP:
    """A freshly initialized model of ``config.model``."""
    if config.model == "toy":
        return ToyCLIP(width=config.width, dim=config.dim, key=key)
    return CLIP(config.model, key=key)


@eqx.filter_jit
def _pretrain_step(model, opt_state, images, tokens, labels, optimizer, accumulate: int = 1,
                   compute_dtype: str = "float32"):
    def loss(m, batch):
        m = in_compute_dtype(m, compute_dtype)
        images, tokens, labels = batch
        images = images.astype(compute_dtype)
        value = clip_loss(m.embed_images(images), m.embed_texts(tokens), m.scale, labels=labels)
        return value.astype(jnp.float32), ()

    (value, _), grads = accumulated_value_and_grad(loss, model, (images, tokens, labels),
                                                   accumulate)
    updates, opt_state = optimizer.update(grads, opt_state, eqx.filter(model, eqx.is_array))
    return eqx.apply_updates(model, updates), opt_state, value


def pretrain(images: np.ndarray, labels: np.ndarray, captions: np.ndarray,
             config: PretrainConfig, *, key: PRNGKeyArray, seed: int,
             progress: str | None = None, mesh: Mesh | None = None,
             checkpoint: str | Path | None = None) -> ToyCLIP | CLIP:
    """Contrastive pretraining (symmetric multi-positive InfoNCE) on ``images`` (N, 3, H, W).

    ``captions`` (10, P, L): caption tokens per digit; each image gets a random one per step.
    ``mesh``: a 1-D device mesh (``parallel.data_mesh``) over which each batch is split; the
    model is replicated (data parallel). ``checkpoint``: where to save/resume the run every
    ``config.checkpoint_every`` steps (the model, the optimizer state and the sampler state).
    """
    model = make_clip(config, key)
    optimizer = _pretrain_optimizer(config)
    opt_state = optimizer.init(eqx.filter(model, eqx.is_array))
    rng = np.random.default_rng(seed)
    start = 0
    if checkpoint is not None and Path(checkpoint).exists():
        model, opt_state, start, rng = load_run(checkpoint, (model, opt_state))
    if mesh is not None:
        model, opt_state = replicate((model, opt_state), mesh)
    for step in tqdm(range(start, config.steps), desc=progress, leave=False,
                     disable=progress is None, initial=start, total=config.steps):
        idx = rng.choice(len(labels), size=config.batch_size, replace=False)
        which = rng.integers(captions.shape[1], size=config.batch_size)
        batch = (images[idx], captions[labels[idx], which], labels[idx])
        batch = shard_batch(batch, mesh) if mesh is not None else tuple(map(jnp.asarray, batch))
        model, opt_state, _ = _pretrain_step(model, opt_state, *batch, optimizer,
                                             config.accumulate, config.compute_dtype)
        done = step + 1
        if (checkpoint is not None and config.checkpoint_every
                and (done % config.checkpoint_every == 0 or done == config.steps)):
            save_run(checkpoint, (model, opt_state), done, rng)
    return model


@functools.lru_cache(maxsize=16)
def _pretrain_optimizer(config: PretrainConfig) -> optax.GradientTransformation:
    """AdamW of a pretraining config, one object per config so the jitted step compiles once."""
    return optax.adamw(learning_rate(config, config.lr), weight_decay=config.weight_decay)


def save_run(path: str | Path, tree: PyTree, step: int, rng: np.random.Generator) -> None:
    """Atomically write ``tree`` (equinox leaves) with the step and the sampler's state."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb") as f:
        header = json.dumps({"step": step, "rng": rng.bit_generator.state}).encode()
        f.write(len(header).to_bytes(8, "little") + header)
        eqx.tree_serialise_leaves(f, tree)
    tmp.replace(path)


def load_run(path: str | Path, like: PyTree) -> tuple[Any, Any, int, np.random.Generator]:
    """The ``(model, opt_state, step, rng)`` that ``save_run`` wrote; ``like`` gives the
    structure."""
    with open(path, "rb") as f:
        size = int.from_bytes(f.read(8), "little")
        header = json.loads(f.read(size))
        model, opt_state = eqx.tree_deserialise_leaves(f, like)
    rng = np.random.default_rng()
    rng.bit_generator.state = header["rng"]
    return model, opt_state, int(header["step"]), rng
