"""One jitted finetuning step for every strategy: the task loss plus the strategy's
regularizer, one optimizer update, and one update of the shared teacher (THEORY §4)."""

from __future__ import annotations

import functools

import equinox as eqx
import jax
import jax.numpy as jnp
import optax
from jaxtyping import Array, Float, PyTree

from ...dynamics.schedules import Schedule, StaticSchedule
from ...dynamics.teacher import TeacherState, teacher
from ..metrics import argmax_agreement, mean_kl, parameter_distance
from .config import FinetuneConfig, learning_rate
from .finetunee import Batch, Finetunee, embed_with, image_tower, logits_from_features
from .strategies import LossInputs, Phase, Strategy


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


def trainable_mask(model: Finetunee, phase: Phase) -> PyTree:
    """Boolean pytree shaped like ``model``: True on the floating leaves of
    ``phase.trainable(model)`` (the leaves the optimizer updates); the text tower never trains."""
    false = jax.tree.map(lambda _: False, model)
    parts = tuple(jax.tree.map(eqx.is_inexact_array, p) for p in phase.trainable(model))
    return eqx.tree_at(phase.trainable, false, replace=parts)


def finetune_loss(model: Finetunee, batch: Batch, strategy: Strategy, objective: str, *,
                  pretrained: Finetunee, teacher_tower: PyTree, class_emb: Float[Array, "C D"],
                  teacher_head: eqx.nn.Linear) -> tuple[Array, dict[str, Array]]:
    """The task loss plus ``strategy``'s regularizer; returns ``(loss, parts)``."""
    features = model.clip.image_features(batch.images)  # one encoder pass for every term
    logits = logits_from_features(model, features, class_emb, objective)
    inputs = LossInputs(model, batch, features, logits, pretrained, teacher_tower, teacher_head,
                        class_emb, objective)
    task = strategy.task_loss(inputs)
    reg, parts = strategy.regularizer(inputs)
    return task + reg, {"task": task, **parts, "reg": reg}


class TrainState(eqx.Module):
    model: Finetunee
    opt_state: PyTree
    teacher: TeacherState


@functools.lru_cache(maxsize=64)
def phase_optimizer(config: FinetuneConfig, phase: Phase) -> optax.GradientTransformation:
    """The phase's optimizer (AdamW unless it says otherwise) at ``config.lr /
    phase.lr_divisor`` on the leaves ``phase`` trains (the others get zero updates); one object
    per (config, phase), so a jitted program compiles once."""
    chosen = phase.optimizer(learning_rate(config, config.lr / phase.lr_divisor),
                             config.weight_decay)
    return optax.multi_transform({True: chosen, False: optax.set_to_zero()},
                                 functools.partial(trainable_mask, phase=phase))


def start_phase(model: Finetunee, teacher_state: TeacherState, phase: Phase,
                config: FinetuneConfig) -> tuple[TrainState, optax.GradientTransformation]:
    """The state and optimizer at the start of ``phase``: fresh optimizer state on the phase's
    trainable leaves at ``config.lr / phase.lr_divisor``, the teacher carried over."""
    optimizer = phase_optimizer(config, phase)
    state = TrainState(model, optimizer.init(eqx.filter(model, eqx.is_inexact_array)),
                       teacher_state)
    return state, optimizer


def start(model: Finetunee, strategy: Strategy, config: FinetuneConfig
          ) -> tuple[TrainState, optax.GradientTransformation, Schedule | None]:
    """``(state, optimizer, schedule)`` at step 0 of ``strategy``'s first phase: the teacher
    at ``model``'s image tower and the schedule over ``config.steps`` (built once here). A
    static teacher, or none, never moves from the pretrained tower: its state holds no copy
    (``params`` ``None``) and ``teacher_tower`` reads the pretrained model's."""
    schedule = strategy.schedule(config.steps)
    if moves(schedule):
        teacher_state = teacher(schedule).init(image_tower(model))
    else:
        teacher_state = TeacherState(jnp.zeros((), jnp.int32), None)
    state, optimizer = start_phase(model, teacher_state, strategy.phases(config.steps)[0],
                                   config)
    return state, optimizer, schedule


@eqx.filter_jit
def train_step(state: TrainState, batch: Batch, strategy: Strategy, schedule: Schedule | None,
               config: FinetuneConfig, optimizer: optax.GradientTransformation,
               pretrained: Finetunee, class_emb: Float[Array, "C D"],
               teacher_head: eqx.nn.Linear) -> tuple[TrainState, dict[str, Array]]:
    """One optimizer step, then the teacher update ``teacher(schedule).update`` (the shared
    ``T ← (1 − ω)T + ωW`` on the image tower; skipped for no or a static teacher)."""
    dtype = config.compute_dtype
    # Everything not differentiated is cast once per step, outside the micro-batch loop; the
    # student is cast inside the loss so its gradients reach the float32 parameters.
    fixed = in_compute_dtype((pretrained, teacher_tower(state, pretrained), class_emb,
                              teacher_head), dtype)

    def loss(model, batch):
        value, parts = finetune_loss(in_compute_dtype(model, dtype), batch, strategy,
                                     config.objective, pretrained=fixed[0],
                                     teacher_tower=fixed[1], class_emb=fixed[2],
                                     teacher_head=fixed[3])
        return value.astype(jnp.float32), jax.tree.map(lambda p: p.astype(jnp.float32), parts)

    (value, parts), grads = accumulated_value_and_grad(
        loss, state.model, in_compute_dtype(batch, dtype), config.accumulate)
    params = eqx.filter(state.model, eqx.is_inexact_array)
    updates, opt_state = optimizer.update(eqx.filter(grads, eqx.is_inexact_array),
                                          state.opt_state, params)
    model = eqx.apply_updates(state.model, updates)
    teacher_state = state.teacher
    if moves(schedule):
        teacher_state = teacher(schedule).update(image_tower(model), state.teacher)
    return TrainState(model, opt_state, teacher_state), {"loss": value, **parts}


def moves(schedule: Schedule | None) -> bool:
    """Whether a teacher of ``schedule`` ever leaves the pretrained weights (not a static or
    absent one)."""
    return schedule is not None and not isinstance(schedule, StaticSchedule)


def teacher_tower(state: TrainState, pretrained: Finetunee) -> PyTree:
    """The teacher's image tower: the state's, or the pretrained model's for a teacher that
    never moves (which keeps no copy)."""
    return image_tower(pretrained) if state.teacher.params is None else state.teacher.params


@eqx.filter_jit
def gap_metrics(model: Finetunee, teacher_tower: PyTree, probe: Float[Array, "B C H W"],
                class_emb: Float[Array, "K D"]) -> dict[str, Array]:
    """Teacher–student gap: parameter distance, zero-shot logit KL and argmax agreement."""
    student_logits = model.clip.scale * model.clip.embed_images(probe) @ class_emb.T
    teacher_logits = model.clip.scale * embed_with(teacher_tower, probe) @ class_emb.T
    return {"param_distance": parameter_distance(eqx.filter(image_tower(model), eqx.is_array),
                                                 eqx.filter(teacher_tower, eqx.is_array)),
            "logit_kl": mean_kl(teacher_logits, student_logits),
            "agreement": argmax_agreement(teacher_logits, student_logits)}
