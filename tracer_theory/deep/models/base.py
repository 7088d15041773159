"""The dual-encoder interface every CLIP here shares (toy CNN and transformer alike): image and
text towers, bias-free projections into one normalized space, a learnable logit scale, and the
zero-shot classifier, written once.

Parameters are float32 whatever ``jax_enable_x64`` says, like the float32 images they see.
"""

from __future__ import annotations

import abc

import equinox as eqx
import jax
import jax.numpy as jnp
from jaxtyping import Array, Float, Int

DTYPE = jnp.float32


class DualEncoder(eqx.Module):
    """What every CLIP here shares: image and text towers with bias-free projections into one
    normalized space and a learnable logit scale. Subclasses hold the fields ``image_proj``,
    ``text_proj`` and ``log_scale`` and give ``image_features`` and ``embed_texts``; the
    zero-shot classifier and the logits are written once, here. (The fields are not declared
    here: a base declaration would move them first in the subclass's field order and so change
    the leaf order of saved checkpoints.)"""

    @abc.abstractmethod
    def image_features(self, images: Float[Array, "B C H W"]) -> Float[Array, "B width"]:
        """``X_I``: image features before the projection, batch-first."""

    @abc.abstractmethod
    def embed_texts(self, tokens: Int[Array, "B L"]) -> Float[Array, "B dim"]:
        """Normalized text embeddings."""

    def embed_images(self, images: Float[Array, "B C H W"]) -> Float[Array, "B dim"]:
        """Normalized image embeddings, shape (B, dim)."""
        return normalize(jax.vmap(self.image_proj)(self.image_features(images)))

    def class_embeddings(self, prompts: Int[Array, "C P L"], *, batch: int | None = None
                         ) -> Float[Array, "C dim"]:
        """Zero-shot classifier: the normalized mean of each class's normalized prompt
        embeddings, (C, dim). ``batch``: classes embedded per call (memory bounded by
        ``batch · P`` texts, e.g. 1,000 classes × 80 templates); the result is the same."""
        c, p, length = prompts.shape
        if batch is None:
            emb = self.embed_texts(prompts.reshape(c * p, length)).reshape(c, p, -1)
            return normalize(emb.mean(axis=1))
        if isinstance(batch, bool) or not isinstance(batch, int) or batch < 1:
            raise ValueError(f"batch must be a positive int (classes per call), got {batch!r}")
        return jnp.concatenate([self.class_embeddings(prompts[i:i + batch])
                                for i in range(0, c, batch)])

    @property
    def scale(self) -> Float[Array, ""]:
        """The logit scale ``exp(log_scale)``, clipped at 100 as in CLIP."""
        return jnp.minimum(jnp.exp(self.log_scale), jnp.asarray(100.0, self.log_scale.dtype))

    def zero_shot_logits(self, images: Float[Array, "B C H W"],
                         prompts: Int[Array, "C P L"]) -> Float[Array, "B C"]:
        """``scale · image embedding · class embedding`` for every image and class; (B, C)."""
        return self.scale * self.embed_images(images) @ self.class_embeddings(prompts).T


def normalize(x: Float[Array, "B D"]) -> Float[Array, "B D"]:
    """Rows scaled to unit L2 norm (safe at 0)."""
    return x / jnp.maximum(jnp.linalg.norm(x, axis=-1, keepdims=True), 1e-12)
