"""The model being finetuned (a CLIP and a new linear classifier), its batches, and the
finetuning classifier every loss and evaluation shares."""

from __future__ import annotations

from typing import Literal

import equinox as eqx
import jax
from jaxtyping import Array, Float, Int, PyTree

from ..models import DualEncoder, normalize

Objective = Literal["head", "prompts"]


class Finetunee(eqx.Module):
    """The model being finetuned: a CLIP and a fresh linear classifier on its image features."""

    clip: DualEncoder
    head: eqx.nn.Linear


class Batch(eqx.Module):
    """One finetuning batch; ``hybrid_*`` hold the gray pretraining images mixed in (maybe 0)."""

    images: Float[Array, "B C H W"]
    labels: Int[Array, " B"]
    hybrid_images: Float[Array, "H C H W"]
    hybrid_tokens: Int[Array, "H L"]
    hybrid_labels: Int[Array, " H"]


def image_tower(model: Finetunee) -> PyTree:
    """The part a teacher tracks: the image encoder and its projection."""
    return (model.clip.image, model.clip.image_proj)


def embed_with(tower: PyTree, images: Float[Array, "B C H W"]) -> Float[Array, "B D"]:
    """Normalized image embeddings (B, dim) of ``images`` through an image ``tower``."""
    image, proj = tower
    return normalize(jax.vmap(lambda x: proj(image(x)))(images))


def class_logits(model: Finetunee, images: Float[Array, "B C H W"],
                 class_emb: Float[Array, "K D"], objective: Objective) -> Float[Array, "B K"]:
    """The finetuning classifier: the head on image features, or the frozen prompt embeddings."""
    return logits_from_features(model, model.clip.image_features(images), class_emb, objective)


def logits_from_features(model: Finetunee, features: Float[Array, "B W"],
                         class_emb: Float[Array, "K D"], objective: Objective
                         ) -> Float[Array, "B K"]:
    """``class_logits`` from already computed image features (B, width)."""
    if objective == "head":
        return jax.vmap(model.head)(features)
    return model.clip.scale * normalize(jax.vmap(model.clip.image_proj)(features)) @ class_emb.T
