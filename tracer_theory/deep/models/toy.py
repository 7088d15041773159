"""The toy CLIP in equinox: a small CNN image encoder, a bag-of-words text encoder, linear
projection heads into a shared normalized embedding space and a learnable logit scale.

The image projection ``image_proj`` plays ``W_I`` of THEORY §1 and the image features before it
play ``X_I``; ``text_proj`` plays ``W_T``.
"""

from __future__ import annotations

import equinox as eqx
import jax
import jax.numpy as jnp
from jaxtyping import Array, Float, Int, PRNGKeyArray

from ..data.prompts import PAD, VOCAB
from .base import DTYPE, DualEncoder, normalize


class ImageEncoder(eqx.Module):
    """Two strided convolutions and a dense layer: (3, 28, 28) → features (width,)."""

    conv1: eqx.nn.Conv2d
    conv2: eqx.nn.Conv2d
    dense: eqx.nn.Linear

    def __init__(self, width: int, *, key: PRNGKeyArray):
        k1, k2, k3 = jax.random.split(key, 3)
        self.conv1 = eqx.nn.Conv2d(3, 16, 5, stride=2, padding=2, dtype=DTYPE, key=k1)
        self.conv2 = eqx.nn.Conv2d(16, 32, 5, stride=2, padding=2, dtype=DTYPE, key=k2)
        self.dense = eqx.nn.Linear(32 * 7 * 7, width, dtype=DTYPE, key=k3)

    def __call__(self, image: Float[Array, "3 28 28"]) -> Float[Array, " width"]:
        h = jax.nn.relu(self.conv1(image))
        h = jax.nn.relu(self.conv2(h))
        return jax.nn.relu(self.dense(h.reshape(-1)))


class TextEncoder(eqx.Module):
    """Word embeddings, mean over the non-pad tokens, one dense layer: (L,) ids → (width,)."""

    embedding: eqx.nn.Embedding
    dense: eqx.nn.Linear

    def __init__(self, width: int, *, key: PRNGKeyArray):
        k1, k2 = jax.random.split(key)
        self.embedding = eqx.nn.Embedding(len(VOCAB), width, dtype=DTYPE, key=k1)
        self.dense = eqx.nn.Linear(width, width, dtype=DTYPE, key=k2)

    def __call__(self, tokens: Int[Array, " L"]) -> Float[Array, " width"]:
        mask = (tokens != PAD).astype(self.embedding.weight.dtype)
        vectors = jax.vmap(self.embedding)(tokens)
        mean = (mask @ vectors) / jnp.maximum(mask.sum(), 1.0)
        return jax.nn.relu(self.dense(mean))


class ToyCLIP(DualEncoder):
    """Image and text towers with projections into a ``dim``-dimensional embedding space."""

    image: ImageEncoder
    image_proj: eqx.nn.Linear
    text: TextEncoder
    text_proj: eqx.nn.Linear
    log_scale: Float[Array, ""]

    def __init__(self, *, width: int = 128, dim: int = 64, key: PRNGKeyArray):
        k1, k2, k3, k4 = jax.random.split(key, 4)
        self.image = ImageEncoder(width, key=k1)
        self.image_proj = eqx.nn.Linear(width, dim, use_bias=False, dtype=DTYPE, key=k2)
        self.text = TextEncoder(width, key=k3)
        self.text_proj = eqx.nn.Linear(width, dim, use_bias=False, dtype=DTYPE, key=k4)
        self.log_scale = jnp.log(jnp.asarray(1 / 0.07, DTYPE))

    def last_layer(self) -> eqx.nn.Linear:
        """The image tower's last layer (unfrozen with the projection by ``proj_only``)."""
        return self.image.dense

    def image_features(self, images: Float[Array, "B 3 28 28"]) -> Float[Array, "B width"]:
        """``X_I``: image features before the projection, batch-first."""
        return jax.vmap(self.image)(images)

    def embed_texts(self, tokens: Int[Array, "B L"]) -> Float[Array, "B dim"]:
        """Normalized text embeddings."""
        return normalize(jax.vmap(lambda t: self.text_proj(self.text(t)))(tokens))
