"""Finetuning strategies as values (THEORY §3, §4, §6).

A strategy is a small immutable equinox module that owns everything that sets it apart from
plain finetuning:

* ``task_loss(inputs)``: the task loss (cross-entropy of the finetuning classifier, unless the
  strategy finetunes otherwise, as FLYP does);
* ``regularizer(inputs)``: the term added to the task loss, and its logged parts;
* ``phases(steps)``: which parameters train, for how many steps, at which learning-rate divisor;
* ``schedule(steps)``: its teacher schedule (self-distillation only), or ``None``;
* ``hybrid_size(batch_size)``: how many gray pretraining images each batch mixes in;
* ``linear(problem, steps)``: its counterpart in the linear theory, or a ``ValueError``.

The jitted step and the loop call these methods and never look at a strategy's name, so a new
strategy is a new subclass written anywhere (see the README). ``REGISTRY`` names the strategies
the experiments, tables and figures know, with their validation-chosen defaults
(``experiments/toy_selection_head.json``), labels and colors; ``VARIANTS`` the strategies a study
runs beside them (``entry`` finds both). Together they are the one strategy vocabulary: no other
module holds a strategy's label or color.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, NamedTuple

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import optax
from jaxtyping import Array, Float, PyTree

from ..._validation import as_real
from ...dynamics.schedules import (
    Kernel,
    Schedule,
    StaticSchedule,
    ema_teacher,
    kernel_teacher,
    static_teacher,
    wma_teacher,
)
from ...dynamics.spectral import TeacherSD, default_lr
from ...linear import strategies as linear_strategies
from ...linear.problem import LinearProblem
from ..losses import (
    clip_loss,
    cross_entropy,
    cross_frobenius,
    kl_distillation,
    multi_view_distillation,
)
from ..metrics import squared_distance
from ..models import normalize
from ..models.tangent import trainable_part
from .finetunee import Finetunee, class_logits, embed_with, image_tower

if TYPE_CHECKING:
    from ..ntk import TangentProblem


class LossInputs(NamedTuple):
    """What a regularizer may use, computed once per step by the loss: the student ``model`` (a
    ``Finetunee``), the ``batch``, the student's image ``features`` (B, width) and task
    ``logits`` (B, C), the ``pretrained`` model, the teacher's image tower and head, the frozen
    class embeddings (C, dim) and the objective (``"head"`` or ``"prompts"``)."""

    model: Finetunee
    batch: Any
    features: Float[Array, "B W"]
    logits: Float[Array, "B C"]
    pretrained: Finetunee
    teacher_tower: PyTree
    teacher_head: eqx.nn.Linear
    class_emb: Float[Array, "C D"]
    objective: str


# --- which parameters train -------------------------------------------------------------------

def head(model) -> tuple:
    """The new linear classifier alone (a linear probe)."""
    return (model.head,)


def image_side(model) -> tuple:
    """The classifier, the image tower and the image projection (the text tower stays frozen;
    a linearized tower trains its parameters, never its expansion point)."""
    return (model.head, trainable_part(model.clip.image), model.clip.image_proj)


def head_and_projection(model) -> tuple:
    """The classifier and the image projection: the image encoder stays at its pretrained
    features (the last-layer model of the theory)."""
    return (model.head, model.clip.image_proj)


def projection_side(model) -> tuple:
    """The classifier, the image projection and the image tower's last layer."""
    return (model.head, model.clip.image_proj, model.clip.last_layer())


def adamw(lr: optax.ScalarOrSchedule, weight_decay: float) -> optax.GradientTransformation:
    """AdamW (the default of every phase)."""
    return optax.adamw(lr, weight_decay=weight_decay)


def gradient_descent(lr: optax.ScalarOrSchedule, weight_decay: float
                     ) -> optax.GradientTransformation:
    """Plain gradient descent (decoupled weight decay, no momentum): the theory's optimizer."""
    return optax.chain(optax.add_decayed_weights(weight_decay), optax.sgd(lr))


class Phase(NamedTuple):
    """``steps`` ``optimizer`` steps on the leaves ``trainable(model)`` selects, at the run's
    learning rate divided by ``lr_divisor``."""

    steps: int
    trainable: Callable[[Any], tuple] = image_side
    lr_divisor: float = 1.0
    optimizer: Callable[[optax.ScalarOrSchedule, float], optax.GradientTransformation] = adamw


def _floats(tree: PyTree) -> PyTree:
    return eqx.filter(tree, eqx.is_inexact_array)


# --- the strategies ---------------------------------------------------------------------------

class Strategy(eqx.Module):
    """Plain finetuning of the image side; subclasses override what they change."""

    def task_loss(self, inputs: LossInputs) -> Float[Array, ""]:
        """The task loss; here the cross-entropy of the finetuning classifier's logits."""
        return cross_entropy(inputs.logits, inputs.batch.labels)

    def with_prompts(self, prompts: np.ndarray) -> Strategy:
        """This strategy for a task whose class prompts are ``prompts`` (C, P, L) token ids;
        here itself (FLYP binds its class captions)."""
        return self

    def regularizer(self, inputs: LossInputs) -> tuple[Float[Array, ""], dict[str, Array]]:
        """``(term, logged parts)`` added to the task loss; here 0."""
        return jnp.zeros((), inputs.logits.dtype), {}

    def phases(self, steps: int) -> tuple[Phase, ...]:
        """The run's phases; here one phase of ``steps`` on the image side."""
        return (Phase(steps),)

    def schedule(self, steps: int) -> Schedule | None:
        """The teacher schedule over a run of ``steps`` (``None``: no teacher)."""
        return None

    def hybrid_size(self, batch_size: int) -> int:
        """Gray pretraining images per batch of ``batch_size``; here 0."""
        return 0

    def linear(self, problem: LinearProblem | TangentProblem, steps: int
               ) -> linear_strategies.Strategy:
        """The linear-theory strategy with the same λ (and teacher over ``steps``, its
        gradient-descent step set by the curvature of ``problem``: the last-layer linear
        problem or the tangent model's)."""
        raise ValueError(f"{type(self).__name__} has no counterpart in the linear theory")

    def describe(self) -> dict[str, Any]:
        """The strategy as JSON-ready values (its type and fields)."""
        return describe(self)


class Direct(Strategy):
    """Direct finetuning: the task loss alone."""

    def linear(self, problem, steps):
        return linear_strategies.DirectFT()


class L2SP(Strategy):
    """``λ/2 ‖θ − θ⁰‖²`` on the image tower (and the new head when ``penalize_head``, as the
    original toy does, anchored at its initialization)."""

    lam: float = 10.0
    penalize_head: bool = False

    def __check_init__(self):
        _non_negative("lam", self.lam)

    def regularizer(self, inputs):
        params, anchor = image_tower(inputs.model), image_tower(inputs.pretrained)
        if self.penalize_head:
            params, anchor = (params, inputs.model.head), (anchor, inputs.pretrained.head)
        return 0.5 * self.lam * squared_distance(_floats(params), _floats(anchor)), {}

    def linear(self, problem, steps):
        return linear_strategies.L2SP(self.lam)


class WeightDecay(Strategy):
    """``λ/2 ‖θ‖²`` on the image tower (decay toward 0, not toward the pretrained weights)."""

    lam: float = 1e-4

    def __check_init__(self):
        _non_negative("lam", self.lam)

    def regularizer(self, inputs):
        params = _floats(image_tower(inputs.model))
        return 0.5 * self.lam * squared_distance(params, jax.tree.map(jnp.zeros_like, params)), {}

    def linear(self, problem, steps):
        return linear_strategies.WeightDecay(self.lam)


class MultiView(eqx.Module):
    """TRACER's distillation in the embedding space: FD + CRD + ICL + CKD between the student's
    and the teacher's image embeddings, paired with the frozen class text embeddings."""

    def __call__(self, inputs: LossInputs) -> tuple[Array, dict[str, Array]]:
        model, batch = inputs.model, inputs.batch
        student = normalize(jax.vmap(model.clip.image_proj)(inputs.features))
        teacher = jax.lax.stop_gradient(embed_with(inputs.teacher_tower, batch.images))
        text = jax.lax.stop_gradient(inputs.class_emb[batch.labels])  # frozen text tower
        return multi_view_distillation((student, text), (teacher, text),
                                       jax.lax.stop_gradient(model.clip.scale),
                                       labels=batch.labels)


class KLDistill(eqx.Module):
    """KL from the teacher's task logits (teacher tower and the never-trained head) to the
    student's at ``temperature``: the original toy's distillation."""

    temperature: float = 1.0

    def __call__(self, inputs: LossInputs) -> tuple[Array, dict[str, Array]]:
        teacher_model = eqx.tree_at(lambda m: (m.clip.image, m.clip.image_proj, m.head),
                                    inputs.model, (*inputs.teacher_tower, inputs.teacher_head))
        t_logits = jax.lax.stop_gradient(class_logits(teacher_model, inputs.batch.images,
                                                      inputs.class_emb, inputs.objective))
        return kl_distillation(inputs.logits, t_logits, self.temperature), {}


class Static(eqx.Module):
    """A teacher that stays at the pretrained model (``static_teacher``)."""

    def __call__(self, steps: int) -> Schedule:
        return static_teacher()


class EMA(eqx.Module):
    """An EMA teacher of ``momentum`` (``ema_teacher``), built in the dtype of the run."""

    momentum: float = 0.99

    def __call__(self, steps: int) -> Schedule:
        return ema_teacher(self.momentum)


class WMA(eqx.Module):
    """TRACER's WMA teacher over the whole run: a Beta(a, b) kernel (``wma_teacher``)."""

    a: float = 0.5
    b: float = 0.5

    def __call__(self, steps: int) -> Schedule:
        return wma_teacher(steps, self.a, self.b)


class KernelTeacher(eqx.Module):
    """A kernel teacher over the whole run for any ``Kernel`` (``kernel_teacher``): e.g. a
    designed free-form kernel ``GridKernel(log_values)``, or ``BetaKernel(a, b)``.

    A strategy is a static value of the jitted step (hashed, compared, never traced), so the
    teacher keeps the kernel as plain Python values: its type (``kind``) and its fields
    (``values``: ``(name, value)`` pairs, arrays as nested tuples of numbers), and rebuilds it
    as ``kind(**fields)`` (``kernel``). It is equal, hashes and pickles by them, and
    ``describe`` gives them (the resume keys). The kernel is checked on the τ grid when the
    teacher is made, not in training."""

    kind: type
    values: tuple[tuple[str, Any], ...]

    def __init__(self, kernel: Kernel):
        if not isinstance(kernel, Kernel):
            raise TypeError(f"kernel must be a Kernel (GridKernel, BetaKernel, …), got "
                            f"{kernel!r}")
        self.kind = type(kernel)
        self.values = tuple((f.name, _frozen(getattr(kernel, f.name)))
                            for f in dataclasses.fields(kernel))
        rebuilt = self.kernel
        same = jax.tree.structure(rebuilt) == jax.tree.structure(kernel) and all(
            np.array_equal(np.asarray(a), np.asarray(b))
            for a, b in zip(jax.tree.leaves(rebuilt), jax.tree.leaves(kernel), strict=True))
        if not same:
            raise TypeError(f"{self.kind.__name__} cannot be rebuilt from its fields by "
                            f"{self.kind.__name__}(**fields); KernelTeacher needs a kernel "
                            "that can")
        kernel_teacher(2, rebuilt)  # a ValueError now for a kernel that cannot be normalized

    @property
    def kernel(self) -> Kernel:
        """The kernel, rebuilt from its fields."""
        return self.kind(**{name: _thawed(value) for name, value in self.values})

    def __call__(self, steps: int) -> Schedule:
        return kernel_teacher(steps, self.kernel)


def _frozen(value: Any) -> Any:
    """``value`` as hashable Python data: an array as nested tuples of numbers."""
    if isinstance(value, jax.Array | np.ndarray | np.generic):
        return _tuples(np.asarray(value).tolist())
    return value


def _tuples(value: Any) -> Any:
    return tuple(_tuples(v) for v in value) if isinstance(value, list) else value


def _thawed(value: Any) -> Any:
    """A ``_frozen`` array (nested tuples, or a float) back as a NumPy array; other values
    unchanged."""
    return np.asarray(value) if isinstance(value, tuple | float) else value


class SelfDistill(Strategy):
    """Self-distillation toward a teacher: ``λ·distill(student, teacher)`` (+ ``ρ`` times the
    cross-Frobenius term). The teacher is the shared ``tracer_theory.teacher`` driven by
    ``teacher``: a function ``steps -> Schedule`` of the run's length (``Static()``,
    ``EMA(m)``, ``WMA(a, b)``, ``KernelTeacher(kernel)``) or a ready
    ``Schedule``. Static, EMA, WMA and any kernel teacher are this one strategy with different
    schedules."""

    lam: float = 1.0
    teacher: Schedule | Callable[[int], Schedule] = dataclasses.field(default_factory=Static)
    distill: Callable[[LossInputs], tuple[Array, dict]] = dataclasses.field(
        default_factory=MultiView)
    rho: float = 0.0

    def __check_init__(self):
        _non_negative("lam", self.lam)
        _non_negative("rho", self.rho)

    def schedule(self, steps):
        return self.teacher if isinstance(self.teacher, Schedule) else self.teacher(steps)

    def regularizer(self, inputs):
        reg, parts = self.distill(inputs)
        reg = self.lam * reg
        if self.rho > 0:
            clip = inputs.model.clip
            reg = reg + self.rho * cross_frobenius(clip.image_proj.weight, clip.text_proj.weight)
        return reg, parts

    def linear(self, problem, steps):
        schedule = self.schedule(steps)
        if isinstance(schedule, StaticSchedule):
            return linear_strategies.StaticSD(self.lam)
        return TeacherSD(self.lam, schedule, steps=steps,
                         lr=float(default_lr(problem.sigma_max_sq, self.lam)))


class Wrapped(Strategy):
    """``strategy`` with its phases changed by ``phase``; its loss, teacher, replay and
    linear counterpart unchanged."""

    strategy: eqx.AbstractVar[Strategy]

    def phase(self, phase: Phase) -> Phase:
        raise NotImplementedError

    def task_loss(self, inputs):
        return self.strategy.task_loss(inputs)

    def with_prompts(self, prompts):
        return dataclasses.replace(self, strategy=self.strategy.with_prompts(prompts))

    def regularizer(self, inputs):
        return self.strategy.regularizer(inputs)

    def phases(self, steps):
        return tuple(self.phase(p) for p in self.strategy.phases(steps))

    def schedule(self, steps):
        return self.strategy.schedule(steps)

    def hybrid_size(self, batch_size):
        return self.strategy.hybrid_size(batch_size)

    def linear(self, problem, steps):
        return self.strategy.linear(problem, steps)


class Restricted(Wrapped):
    """``strategy`` with every phase training only the leaves ``trainable`` selects (by
    default the head and the image projection: the encoder keeps its pretrained features, the
    last-layer model of the linear theory)."""

    strategy: Strategy
    trainable: Callable[[Any], tuple] = head_and_projection

    def phase(self, phase):
        return phase._replace(trainable=self.trainable)


class GradientDescent(Wrapped):
    """``strategy`` trained by plain gradient descent in place of AdamW, at the run's learning
    rate times ``lr_scale`` (warm-up and decay as configured)."""

    strategy: Strategy
    lr_scale: float

    def __check_init__(self):
        _positive("lr_scale", self.lr_scale)

    def phase(self, phase):
        return phase._replace(optimizer=gradient_descent,
                              lr_divisor=phase.lr_divisor / self.lr_scale)


class LPFT(Strategy):
    """Linear probe, then finetuning: the head alone for ``probe_fraction`` of the steps, then
    the image side at the learning rate divided by ``lr_divisor``."""

    probe_fraction: float = 0.5
    lr_divisor: float = 10.0

    def __check_init__(self):
        if not 0 < self.probe_fraction < 1:
            raise ValueError(f"probe_fraction must be in (0, 1), got {self.probe_fraction}")
        _positive("lr_divisor", self.lr_divisor)

    def phases(self, steps):
        probe = max(1, int(self.probe_fraction * steps))
        return (Phase(probe, head), Phase(steps - probe, image_side, self.lr_divisor))


class LowLR(Strategy):
    """Plain finetuning at the learning rate divided by ``divisor``."""

    divisor: float = 10.0

    def __check_init__(self):
        _positive("divisor", self.divisor)

    def phases(self, steps):
        return (Phase(steps, image_side, self.divisor),)


class ProjectionOnly(Strategy):
    """Only the classifier, the image projection and the image tower's last layer train."""

    def phases(self, steps):
        return (Phase(steps, projection_side),)


def both_towers(model) -> tuple:
    """The classifier, the image tower and projection, and the text tower and projection."""
    return (*image_side(model), model.clip.text, model.clip.text_proj)


class FLYP(Strategy):
    """FLYP-style finetuning ("finetune like you pretrain", Goyal et al. 2023): the task loss is
    the pretraining contrastive loss (``losses.clip_loss``, the pairs of one class positives)
    between each image and the caption of its class, ``tokens`` (C, L) (the first template's,
    bound by ``with_prompts``), with both towers training. The finetuned classifier is the
    zero-shot one of the finetuned towers (the ``prompts`` objective); with the ``head``
    objective the new head also trains as a linear probe on the detached features."""

    tokens: tuple[tuple[int, ...], ...] | None = None

    def with_prompts(self, prompts):
        first = np.asarray(prompts)[:, 0]
        return dataclasses.replace(self, tokens=tuple(tuple(int(t) for t in row)
                                                      for row in first))

    def task_loss(self, inputs):
        if self.tokens is None:
            raise ValueError("FLYP needs its class captions: FLYP().with_prompts(prompts) with "
                             "the task's (C, P, L) prompt tokens (run_task binds them)")
        clip, batch = inputs.model.clip, inputs.batch
        captions = jnp.asarray(self.tokens, jnp.int32)[batch.labels]
        img = normalize(jax.vmap(clip.image_proj)(inputs.features))
        loss = clip_loss(img, clip.embed_texts(captions), clip.scale, labels=batch.labels)
        if inputs.objective == "head":  # the head as a probe: it does not move the encoder
            probe = jax.vmap(inputs.model.head)(jax.lax.stop_gradient(inputs.features))
            loss = loss + cross_entropy(probe, batch.labels)
        return loss

    def phases(self, steps):
        return (Phase(steps, both_towers),)


class DataHybrid(Strategy):
    """A ``fraction`` of every batch is gray pretraining images with their captions, trained
    with the pretraining contrastive loss (replay)."""

    fraction: float = 0.25

    def __check_init__(self):
        if not 0 <= self.fraction < 1:
            raise ValueError(f"fraction must be in [0, 1), got {self.fraction}")

    def hybrid_size(self, batch_size):
        return round(self.fraction * batch_size)

    def regularizer(self, inputs):
        clip, batch = inputs.model.clip, inputs.batch
        img = clip.embed_images(batch.hybrid_images)
        txt = jax.lax.stop_gradient(clip.embed_texts(batch.hybrid_tokens))
        return clip_loss(img, txt, clip.scale, labels=batch.hybrid_labels), {}


class ReplayDistill(Strategy):
    """Replay self-distillation, the deep counterpart of the linear theory's replay-SD: a
    ``fraction`` of every batch (``round(fraction · batch_size)`` images) is gray pretraining
    images, on which the student's image embedding is pulled toward the frozen pretrained
    model's: ``λ · mean_i ‖P φ(x_i) − P⁰ φ⁰(x_i)‖²`` over the replay images ``x_i``, with ``φ``
    the image features and ``P`` the image projection (the embedding before normalization: the
    ``W x`` of the linear model; the pretrained side under ``stop_gradient``). The task loss
    sees the finetuning images alone. In the linear model the minimizer is
    ``W = (Y X_Iᵀ + λ W⁰ X_pre X_preᵀ)(X_I X_Iᵀ + λ X_pre X_preᵀ)⁻¹``."""

    lam: float = 1.0
    fraction: float = 0.25

    def __check_init__(self):
        _non_negative("lam", self.lam)
        if not 0 < self.fraction < 1:
            raise ValueError(f"fraction must be in (0, 1), got {self.fraction}")

    def hybrid_size(self, batch_size):
        return round(self.fraction * batch_size)

    def regularizer(self, inputs):
        images = inputs.batch.hybrid_images
        if images.shape[0] == 0:  # a batch too small to hold a replay image
            return jnp.zeros((), inputs.logits.dtype), {}
        student = replay_embeddings(inputs.model, images)
        anchor = jax.lax.stop_gradient(replay_embeddings(inputs.pretrained, images))
        distance = jnp.mean(jnp.sum((student - anchor) ** 2, axis=-1))
        return self.lam * distance, {"replay_distance": distance}

    def linear(self, problem, steps):
        # λ·mean‖ΔW x‖² is (λ'/2)‖ΔW X_pre‖² with λ' = 2λ on X_pre scaled by 1/√m (as
        # ``linear_problem`` scales it); the problem must carry X_pre.
        return linear_strategies.ReplaySD(2 * self.lam)


def replay_embeddings(model: Finetunee, images: Float[Array, "B C H W"]) -> Float[Array, "B D"]:
    """The image embeddings before normalization, ``P φ(x)`` (B, dim): what ``ReplayDistill``
    compares."""
    clip = model.clip
    return jax.vmap(clip.image_proj)(clip.image_features(images))


def _positive(name: str, value: float) -> None:
    if not as_real(name, value, minimum=0.0) > 0:
        raise ValueError(f"{name} must be > 0, got {value}")


def _non_negative(name: str, value: float) -> None:
    as_real(name, value, minimum=0.0)


def describe(value: Any) -> Any:
    """JSON-ready description of a strategy (or any equinox value): type and fields,
    recursively; arrays become numbers or lists, functions their qualified name."""
    if isinstance(value, eqx.Module):
        fields = {f.name: describe(getattr(value, f.name)) for f in dataclasses.fields(value)
                  if f.repr}
        return {"type": type(value).__name__, **fields}
    if isinstance(value, jax.Array | np.ndarray):
        return np.asarray(value).tolist()
    if callable(value):
        return getattr(value, "__qualname__", type(value).__name__)
    return value


# --- the registry -----------------------------------------------------------------------------

class Entry(NamedTuple):
    """A strategy of the vocabulary: its value (with the default hyperparameters; ``None`` for a
    variant its study builds from its own settings), display label, color (one color per
    strategy in every figure) and ``detail``: the hyperparameters that tell it from its
    variants, spelled out by ``full_label``."""

    strategy: Strategy | None
    label: str
    color: str
    detail: str = ""

    @property
    def full_label(self) -> str:
        """The label with its ``detail`` (``"EMA SD (0.99)"``): for a table or figure that shows
        variants of one strategy side by side."""
        return f"{self.label} {self.detail}" if self.detail else self.label


#: Every strategy the experiments, the CLI, the tables and the figures know, by name. The λs
#: were chosen on the validation split (head objective, seed 0) by `tracer-theory toy --select`.
REGISTRY: dict[str, Entry] = {
    "direct": Entry(Direct(), "Direct FT", "#d62728"),
    "l2sp": Entry(L2SP(10.0), "L2-SP", "#8c564b"),
    "weight_decay": Entry(WeightDecay(1e-4), "weight decay", "#7f7f7f"),
    "static_sd": Entry(SelfDistill(1.0, Static()), "static SD", "#9467bd"),
    "ema_sd": Entry(SelfDistill(1.0, EMA(0.99)), "EMA SD", "#1f77b4", "(0.99)"),
    "wma_sd": Entry(SelfDistill(1.0, WMA()), "WMA SD", "#2ca02c", "Beta(0.5, 0.5)"),
    "lp_ft": Entry(LPFT(), "LP-FT", "#e377c2"),
    "low_lr": Entry(LowLR(), "low lr", "#bcbd22"),
    "proj_only": Entry(ProjectionOnly(), "projection only", "#17becf"),
    "data_hybrid": Entry(DataHybrid(), "data hybrid", "#aec7e8"),
}

#: The variants a study runs beside the registry's strategies, by name: a registered strategy at
#: other hyperparameters, or a strategy the registry does not hold. Each has its own label and a
#: color that no registry entry and no other variant uses. They stay out of ``REGISTRY`` (the
#: CLI, the tables and the tests iterate over it); a study that needs a new one adds it here,
#: never a label or color of its own, and looks it up with ``entry``.
VARIANTS: dict[str, Entry] = {
    # the long-horizon study's second EMA momentum
    "ema999_sd": Entry(SelfDistill(1.0, EMA(0.999)), "EMA SD (0.999)", "#393b79"),
    # SD toward a kernel designed on the linearization; the teachers study builds it from its
    # kernel (``KernelTeacher(GridKernel(log_values))``)
    "designed_sd": Entry(None, "designed-kernel SD", "#e6550d"),
    # distillation toward the pretrained model on replayed gray pretraining images (the linear
    # theory's ReplaySD in the forgetting–fit study)
    "replay_sd": Entry(ReplayDistill(), "replay SD", "#8c6d31"),
}


def entry(name: str) -> Entry:
    """The vocabulary's entry of ``name``: the registry's, else a variant's (``VARIANTS``); a
    ``ValueError`` naming an unknown ``name``."""
    if name in REGISTRY:
        return REGISTRY[name]
    if name in VARIANTS:
        return VARIANTS[name]
    raise ValueError(f"unknown strategy {name!r}; known: {[*REGISTRY, *VARIANTS]}")


def registered(names: tuple[str, ...] | None = None) -> dict[str, Strategy]:
    """``{name: strategy}`` of the registry (all, or ``names`` in that order)."""
    names = tuple(REGISTRY) if names is None else tuple(names)
    unknown = [n for n in names if n not in REGISTRY]
    if unknown:
        raise ValueError(f"unknown strategies {unknown}; known: {list(REGISTRY)}")
    return {n: REGISTRY[n].strategy for n in names}


def has_linear(strategy: Strategy) -> bool:
    """Whether ``strategy`` has a counterpart in the linear theory (``Strategy.linear``)."""
    return type(strategy).linear is not Strategy.linear


def has_teacher(strategy: Strategy) -> bool:
    """Whether ``strategy`` distills from a teacher (its records carry the gap curves)."""
    return strategy.schedule(1) is not None

