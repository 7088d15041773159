"""Losses of the deep experiments: CLIP's InfoNCE, cross-entropy, and the distillation terms of
TRACER's multi-view loss (after CLIP-KD's FD, CRD, ICL and CKD), plus the cross-Frobenius term.

All take batch-first arrays; embeddings are L2-normalized rows; ``scale`` is the logit scale.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
from jaxtyping import Array, Float, Int


def _soft_cross_entropy(logits: Float[Array, "B C"], targets: Float[Array, "B C"]) -> Array:
    return -jnp.mean(jnp.sum(targets * jax.nn.log_softmax(logits, axis=-1), axis=-1))


def _kl_rows(p_logits: Float[Array, "B C"], q_logits: Float[Array, "B C"]) -> Array:
    """Mean over rows of KL(softmax p ‖ softmax q)."""
    log_p = jax.nn.log_softmax(p_logits, axis=-1)
    log_q = jax.nn.log_softmax(q_logits, axis=-1)
    return jnp.mean(jnp.sum(jnp.exp(log_p) * (log_p - log_q), axis=-1))


def cross_entropy(logits: Float[Array, "B C"], labels: Int[Array, " B"]) -> Array:
    """Mean softmax cross-entropy ``−log softmax(logits)[label]``."""
    log_p = jax.nn.log_softmax(logits, axis=-1)
    return -jnp.mean(jnp.take_along_axis(log_p, labels[:, None], axis=-1))


def _targets(n: int, labels: Int[Array, " B"] | None, dtype) -> Float[Array, "B B"]:
    """The diagonal, or uniform weights over the pairs that share a label."""
    if labels is None:
        return jnp.eye(n, dtype=dtype)
    same = (labels[:, None] == labels[None, :]).astype(dtype)
    return same / jnp.sum(same, axis=-1, keepdims=True)


def clip_loss(img: Float[Array, "B D"], txt: Float[Array, "B D"], scale: Array,
              labels: Int[Array, " B"] | None = None) -> Array:
    """Symmetric InfoNCE on ``logits = scale · img txtᵀ``: ½(CE rows + CE columns).

    Targets are the diagonal, or, with ``labels``, uniform over every pair of the same label
    (a batch of digits holds many images of one class: multi-positive InfoNCE).
    """
    logits = scale * img @ txt.T
    targets = _targets(img.shape[0], labels, logits.dtype)
    return 0.5 * (_soft_cross_entropy(logits, targets) + _soft_cross_entropy(logits.T, targets.T))


def feature_distillation(s: Float[Array, "B D"], t: Float[Array, "B D"]) -> Array:
    """FD: ``mean_i ‖s_i − t_i‖²`` (= 2 − 2 cos for unit rows)."""
    return jnp.mean(jnp.sum((s - t) ** 2, axis=-1))


def contrastive_relational_distillation(s_img, s_txt, t_img, t_txt, scale) -> Array:
    """CRD: KL(teacher ‖ student) of the in-batch image→text and text→image similarity
    distributions, averaged: ``½[KL(σ(c·T_I T_Tᵀ) ‖ σ(c·S_I S_Tᵀ)) + (transposed)]``."""
    t_logits, s_logits = scale * t_img @ t_txt.T, scale * s_img @ s_txt.T
    return 0.5 * (_kl_rows(t_logits, s_logits) + _kl_rows(t_logits.T, s_logits.T))


def interactive_contrastive_loss(s_img, s_txt, t_img, t_txt, scale,
                                 labels: Int[Array, " B"] | None = None) -> Array:
    """ICL: InfoNCE of student images against teacher texts and of student texts against teacher
    images, averaged; diagonal positives, or every same-label pair with ``labels``."""
    targets = _targets(s_img.shape[0], labels, s_img.dtype)
    return 0.5 * (_soft_cross_entropy(scale * s_img @ t_txt.T, targets)
                  + _soft_cross_entropy(scale * s_txt @ t_img.T, targets))


def cross_knowledge_distillation(s_img, s_txt, t_img, t_txt, scale) -> Array:
    """CKD: KL(σ(c·T_I T_Tᵀ) ‖ σ(c·S_I T_Tᵀ)) + KL(σ(c·T_T T_Iᵀ) ‖ σ(c·S_T T_Iᵀ)), averaged: the
    student's modality scored against the teacher's other modality."""
    return 0.5 * (_kl_rows(scale * t_img @ t_txt.T, scale * s_img @ t_txt.T)
                  + _kl_rows(scale * t_txt @ t_img.T, scale * s_txt @ t_img.T))


class DistillWeights(NamedTuple):
    fd: float = 1.0
    crd: float = 1.0
    icl: float = 1.0
    ckd: float = 1.0


EQUAL_WEIGHTS = DistillWeights()


def multi_view_distillation(student: tuple[Array, Array], teacher: tuple[Array, Array],
                            scale: Array, weights: DistillWeights = EQUAL_WEIGHTS,
                            labels: Int[Array, " B"] | None = None
                            ) -> tuple[Array, dict[str, Array]]:
    """TRACER's multi-view distillation: weighted FD (image and text) + CRD + ICL + CKD between
    student and teacher ``(image, text)`` embeddings, each (B, D). ``labels`` makes ICL's
    positives every same-label pair (batches of class prompts repeat their texts).
    Returns ``(total, {"fd": …, "crd": …, "icl": …, "ckd": …})``."""
    (s_img, s_txt), (t_img, t_txt) = student, teacher
    parts = {"fd": feature_distillation(s_img, t_img) + feature_distillation(s_txt, t_txt),
             "crd": contrastive_relational_distillation(s_img, s_txt, t_img, t_txt, scale),
             "icl": interactive_contrastive_loss(s_img, s_txt, t_img, t_txt, scale, labels),
             "ckd": cross_knowledge_distillation(s_img, s_txt, t_img, t_txt, scale)}
    total = sum(getattr(weights, k) * v for k, v in parts.items())
    return total, parts


def cross_frobenius(w_img: Float[Array, "k d_I"], w_txt: Float[Array, "k d_T"]) -> Array:
    """``‖W_Iᵀ W_T‖_F`` of the two projection heads (THEORY §2); the caller multiplies by ρ."""
    return jnp.linalg.norm(w_img.T @ w_txt)


def kl_distillation(student_logits: Float[Array, "B C"], teacher_logits: Float[Array, "B C"],
                    temperature: float) -> Array:
    """Hinton's ``T² · mean KL(σ(t/T) ‖ σ(s/T))``."""
    return temperature**2 * _kl_rows(teacher_logits / temperature,
                                     student_logits / temperature)
