"""Evaluation of a finetuned model: gray zero-shot retention, ColoredMNIST ID/OOD accuracy and
calibration, the 2×2 zero-shot view, validation scores, WiSE-FT and the gap summary."""

from __future__ import annotations

from typing import Any

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np

from ...dynamics.diagnostics import collapse_diagnostics
from ...dynamics.teacher import mix
from ..finetune.finetunee import Finetunee, class_logits
from ..metrics import accuracy, expected_calibration_error
from ..models import DualEncoder
from .arrays import P_FLIPPED, P_NEUTRAL, P_TRAIN, ExperimentData


@eqx.filter_jit
def _logits_zero_shot(clip: DualEncoder, images, class_emb):
    return clip.scale * clip.embed_images(images) @ class_emb.T


@eqx.filter_jit
def _logits_task(model: Finetunee, images, class_emb, objective):
    return class_logits(model, images, class_emb, objective)


def chunked(fn, images: np.ndarray, size: int = 500) -> np.ndarray:
    """``fn`` over ``images`` in chunks of ``size``, concatenated (NumPy)."""
    return np.concatenate([np.asarray(fn(jnp.asarray(images[i:i + size])))
                           for i in range(0, len(images), size)])


def _scores(logits: np.ndarray, labels: np.ndarray) -> dict[str, float]:
    probs = jax.nn.softmax(jnp.asarray(logits), axis=-1)
    return {"acc": 100 * float(accuracy(jnp.asarray(logits), jnp.asarray(labels))),
            "ece": float(expected_calibration_error(probs, jnp.asarray(labels), n_bins=15))}


def evaluate(model: Finetunee, data: ExperimentData, objective: str) -> dict[str, float]:
    """Gray zero-shot accuracy/ECE, ColoredMNIST ID and OOD accuracy/ECE through the finetuning
    classifier, and the 2×2 (ID/OOD images × ID/OOD prompts) zero-shot accuracies."""
    clip = model.clip
    emb_train = clip.class_embeddings(jnp.asarray(data.captions))
    emb_held = clip.class_embeddings(jnp.asarray(data.held_out))
    out: dict[str, float] = {}
    gray = _scores(chunked(lambda x: _logits_zero_shot(clip, x, emb_train), data.gray_test),
                   data.test_labels)
    out["gray_acc"], out["gray_ece"] = gray["acc"], gray["ece"]
    for p, key in ((P_TRAIN, "id"), (P_FLIPPED, "ood_flipped"), (P_NEUTRAL, "ood_neutral")):
        s = _scores(chunked(lambda x: _logits_task(model, x, emb_train, objective),
                            data.color_test[p]), data.test_labels)
        out[f"{key}_acc"], out[f"{key}_ece"] = s["acc"], s["ece"]
    for img_key, images in (("id_images", data.color_test[P_TRAIN]),
                            ("ood_images", data.gray_test)):
        for prompt_key, emb in (("id_prompts", emb_train), ("ood_prompts", emb_held)):
            logits = chunked(lambda x, e=emb: _logits_zero_shot(clip, x, e), images)
            out[f"zs_{img_key}_{prompt_key}"] = _scores(logits, data.test_labels)["acc"]
    return out


def validation_scores(model: Finetunee, data: ExperimentData, objective: str
                      ) -> dict[str, float]:
    """ID accuracy on the colored validation split (p = 0.95) and gray zero-shot validation
    accuracy, and their mean (the selection score: task performance and retention alike)."""
    emb = model.clip.class_embeddings(jnp.asarray(data.captions))
    task = chunked(lambda x: _logits_task(model, x, emb, objective), data.color_val)
    gray = chunked(lambda x: _logits_zero_shot(model.clip, x, emb), data.gray_val)
    id_acc = _scores(task, data.val_labels)["acc"]
    gray_acc = _scores(gray, data.val_labels)["acc"]
    return {"id_val_acc": id_acc, "gray_val_acc": gray_acc, "score": 0.5 * (id_acc + gray_acc)}


def wise_ft(pretrained: Finetunee, finetuned: Finetunee, alpha: float) -> Finetunee:
    """WiSE-FT: ``(1 − α)·θ_pretrained + α·θ_finetuned`` on every floating leaf (the new head
    comes from the finetuned model, as in the WiSE-FT paper's linear-classifier variant)."""
    mixed = mix(pretrained, finetuned, alpha)
    return eqx.tree_at(lambda m: m.head, mixed, finetuned.head)


def gap_summary(curves: dict[str, np.ndarray]) -> dict[str, Any]:
    """The logged gap curves with their collapse diagnostics (half-life, normalized AUC,
    final over peak, final) for the parameter distance and the logit KL. A gap that never
    halves has no half-life: ``None`` (JSON ``null``; the diagnostics' ``inf``)."""
    steps = np.r_[0, curves["steps"]]
    out: dict[str, Any] = {"curves": {k: np.asarray(v).tolist() for k, v in curves.items()}}
    for key in ("param_distance", "logit_kl"):
        if len(curves[key]) < 1:
            continue
        gap = np.r_[0.0, curves[key]]
        d = collapse_diagnostics(jnp.asarray(gap), jnp.asarray(steps))
        half = float(d.half_life)
        out[key] = {"half_life": half if np.isfinite(half) else None,
                    "normalized_auc": float(d.normalized_auc),
                    "final_over_peak": float(d.final), "final": float(gap[-1])}
    if len(curves["agreement"]):
        out["agreement"] = {"final": float(curves["agreement"][-1])}
    return out
