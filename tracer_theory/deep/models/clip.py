"""The standard CLIP architecture (Radford et al. 2021) in equinox, at small scale.

A Vision Transformer image tower (patch embedding, class token, pre-LayerNorm transformer, the
class token's output after ``ln_post``) and a causal text transformer pooled at the end-of-text
token, each followed by a bias-free linear projection into a shared normalized embedding space,
and a learnable logit scale. ``CLIP`` has exactly the public interface of ``ToyCLIP``
(:mod:`.model`), so the finetuning code runs on either model unchanged.

As for the toy model, the image features before ``image_proj`` play ``X_I`` of THEORY §1,
``image_proj`` plays ``W_I`` and ``text_proj`` plays ``W_T``. Parameters are float32 whatever
``jax_enable_x64`` says; the forward pass computes in the parameters' dtype (inputs are cast to
it), so a model whose float leaves were cast to bfloat16 runs in bfloat16.

Text uses the project's word vocabulary (:mod:`.prompts`) plus one end-of-text id, ``EOT``, the
largest id, so that the end-of-text position is the argmax of the ids, as in CLIP.
"""

from __future__ import annotations

import dataclasses
import functools
import math

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, Bool, Float, Int, PRNGKeyArray

from ..._validation import ensure, is_traced
from ..data.prompts import END_OF_TEXT, MAX_TOKENS, PAD, VOCAB, tokenize
from .base import DTYPE, DualEncoder, normalize

#: End-of-text id: one past the last word id, hence the largest id.
EOT = END_OF_TEXT
#: Number of token ids (words, pad and end-of-text).
VOCAB_SIZE = len(VOCAB) + 1
#: Token sequence length of CLIP's text tower: the words and the end-of-text id.
CLIP_CONTEXT = MAX_TOKENS + 1

_POSITIVE_FIELDS = ("image_size", "patch_size", "channels", "width", "layers", "heads",
                    "mlp_ratio", "text_width", "text_layers", "text_heads", "context", "dim",
                    "vocab_size")


def quick_gelu(x: Array) -> Array:
    """OpenAI CLIP's activation ``x·σ(1.702x)``."""
    return x * jax.nn.sigmoid(1.702 * x)


#: The MLP activations by name: ``"gelu_tanh"`` (``jax.nn.gelu``'s tanh approximation, this
#: toolkit's own presets), ``"gelu"`` (exact, open_clip/LAION weights) and ``"quick_gelu"``
#: (OpenAI's weights).
ACTIVATIONS = {"gelu_tanh": functools.partial(jax.nn.gelu, approximate=True),
               "gelu": functools.partial(jax.nn.gelu, approximate=False),
               "quick_gelu": quick_gelu}
#: CLIP's byte-level BPE vocabulary size and text context (OpenAI and open_clip).
CLIP_VOCAB_SIZE, CLIP_TEXT_CONTEXT = 49408, 77


@dataclasses.dataclass(frozen=True, kw_only=True)
class CLIPPreset:
    """Sizes of a CLIP (keyword-only): image tower (``image_size``, ``patch_size``,
    ``channels``, ``width``, ``layers``, ``heads``, ``mlp_ratio``), text tower (``text_width``,
    ``text_layers``, ``text_heads``, token ``context`` and ``vocab_size``), the embedding
    ``dim`` and the MLP ``activation`` (a name of ``ACTIVATIONS``).
    """

    name: str
    image_size: int
    patch_size: int
    channels: int = 3
    width: int
    layers: int
    heads: int
    mlp_ratio: int = 4
    text_width: int
    text_layers: int
    text_heads: int
    context: int = CLIP_CONTEXT
    dim: int
    vocab_size: int = VOCAB_SIZE
    activation: str = "gelu_tanh"

    def __post_init__(self):
        if not isinstance(self.name, str) or not self.name:
            raise ValueError(f"name must be a non-empty string, got {self.name!r}")
        for field in _POSITIVE_FIELDS:
            value = getattr(self, field)
            if not isinstance(value, int | np.integer) or isinstance(value, bool) or value <= 0:
                raise ValueError(f"{field} must be a positive integer, got {value!r}")
        if self.image_size % self.patch_size:
            raise ValueError(f"image_size ({self.image_size}) must be divisible by patch_size "
                             f"({self.patch_size})")
        if self.width % self.heads:
            raise ValueError(f"width ({self.width}) must be divisible by heads ({self.heads})")
        if self.text_width % self.text_heads:
            raise ValueError(f"text_width ({self.text_width}) must be divisible by text_heads "
                             f"({self.text_heads})")
        if self.activation not in ACTIVATIONS:
            raise ValueError(f"activation must be one of {sorted(ACTIVATIONS)}, "
                             f"got {self.activation!r}")
        if self.vocab_size < VOCAB_SIZE:
            raise ValueError(f"vocab_size must be >= {VOCAB_SIZE} (the project's words, pad and "
                             f"end-of-text), got {self.vocab_size}")
        if self.context < CLIP_CONTEXT:
            raise ValueError(f"context must be >= MAX_TOKENS + 1 = {CLIP_CONTEXT} (the words and "
                             f"the end-of-text id), got {self.context}")

    @property
    def patches(self) -> int:
        """Number of image patches, ``(image_size / patch_size)²``."""
        return (self.image_size // self.patch_size) ** 2


PRESETS: dict[str, CLIPPreset] = {
    preset.name: preset
    for preset in (
        CLIPPreset(name="tiny", image_size=28, patch_size=7, width=64, layers=2, heads=4,
                   text_width=64, text_layers=2, text_heads=4, dim=64),
        CLIPPreset(name="small", image_size=28, patch_size=4, width=256, layers=6, heads=8,
                   text_width=256, text_layers=4, text_heads=4, dim=128),
        # ViT-B/16 image tower and CLIP's 12-layer, 512-wide text tower; only the vocabulary and
        # the context are ours (tiny), which removes ~25M embedding parameters of the original.
        CLIPPreset(name="base", image_size=224, patch_size=16, width=768, layers=12, heads=12,
                   text_width=512, text_layers=12, text_heads=8, dim=512),
        # the standard architectures with CLIP's 49,408-id, 77-token text tower, named as
        # open_clip names them: exact GELU (open_clip/LAION) or QuickGELU (OpenAI's weights)
        *(CLIPPreset(name=f"{name}{suffix}", image_size=224, patch_size=patch, width=width,
                     layers=layers, heads=width // 64, text_width=text, text_layers=12,
                     text_heads=text // 64, dim=dim, context=CLIP_TEXT_CONTEXT,
                     vocab_size=CLIP_VOCAB_SIZE, activation=activation)
          for name, patch, width, layers, text, dim in (("ViT-B-32", 32, 768, 12, 512, 512),
                                                         ("ViT-B-16", 16, 768, 12, 512, 512),
                                                         ("ViT-L-14", 14, 1024, 24, 768, 768))
          for suffix, activation in (("", "gelu"), ("-quickgelu", "quick_gelu"))),
    )
}


def preset(name: str | CLIPPreset) -> CLIPPreset:
    """The preset called ``name`` (one of ``PRESETS``), or ``name`` itself if it is a preset."""
    if isinstance(name, CLIPPreset):
        return name
    if name not in PRESETS:
        raise ValueError(f"unknown preset {name!r}; choose one of {sorted(PRESETS)}")
    return PRESETS[name]


_as_preset = preset  # ``CLIP.__init__``'s argument is also called ``preset``


# --------------------------------------------------------------------------------------------
# Tokens


def clip_tokens(tokens: np.ndarray) -> np.ndarray:
    """CLIP token ids from word ids: the words, ``EOT`` at the first pad position, 0 after.

    ``tokens`` is what ``prompts.tokenize``/``prompts.prompt_tokens`` return: any leading shape,
    last axis ``MAX_TOKENS``, ids in ``[0, len(VOCAB))``, padded with 0 at the end. Returns int32
    of the same leading shape with last axis ``MAX_TOKENS + 1``.
    """
    tokens = np.asarray(tokens)
    if tokens.ndim == 0 or tokens.shape[-1] != MAX_TOKENS:
        raise ValueError(f"tokens must have last axis MAX_TOKENS = {MAX_TOKENS}, "
                         f"got shape {tokens.shape}")
    if tokens.dtype.kind not in "iu":
        raise ValueError(f"tokens must be integer word ids, got dtype {tokens.dtype}")
    if tokens.size and (tokens.min() < 0 or tokens.max() >= len(VOCAB)):
        raise ValueError(f"tokens must be word ids in [0, {len(VOCAB)}), got values in "
                         f"[{tokens.min()}, {tokens.max()}]")
    out = np.zeros((*tokens.shape[:-1], CLIP_CONTEXT), np.int32)
    out[..., :MAX_TOKENS] = tokens
    positions = np.arange(CLIP_CONTEXT)
    first_pad = np.argmax(out == PAD, axis=-1)[..., None]  # the last column is always a pad
    if np.any(out[positions > first_pad] != PAD):
        raise ValueError("tokens must be padded with 0 at the end only (no word after a pad)")
    return np.where(positions == first_pad, EOT, out).astype(np.int32)


def clip_tokenize(text: str) -> np.ndarray:
    """CLIP token ids of ``text``; shape (MAX_TOKENS + 1,) int32."""
    return clip_tokens(tokenize(text))


def _check_tokens(tokens: Int[Array, "... L"], context: int, vocab_size: int = VOCAB_SIZE
                  ) -> Int[Array, "... L"]:
    """``tokens`` if its last axis is ``context`` and its ids are in [0, vocab_size)."""
    if tokens.ndim == 0 or tokens.shape[-1] != context:
        raise ValueError(f"tokens must have last axis context = {context}, "
                         f"got shape {tokens.shape}")
    if not jnp.issubdtype(tokens.dtype, jnp.integer):
        raise ValueError(f"tokens must be integer ids, got dtype {tokens.dtype}")
    if is_traced(tokens):
        ok, found = (tokens >= 0) & (tokens < vocab_size), ""
    else:  # concrete (also a constant inside jit, where jnp would stage the comparison)
        host = np.asarray(tokens)
        ok = (host >= 0) & (host < vocab_size)
        found = f", got values in [{host.min()}, {host.max()}]" if host.size else ""
    return ensure(tokens, ok, f"tokens must be ids in [0, VOCAB_SIZE = {vocab_size}){found}")


# --------------------------------------------------------------------------------------------
# Blocks


class Attention(eqx.Module):
    """Multi-head self-attention through ``jax.nn.dot_product_attention`` (an accelerator's
    fused kernel where one applies): query, key, value and output projections with biases.

    The projections and their initialization are those of ``eqx.nn.MultiheadAttention`` (a
    model built from a key is the same model). Float64 models attend by the same formula written
    out, since ``jax.nn.dot_product_attention`` takes its softmax in float32.
    """

    query_proj: eqx.nn.Linear
    key_proj: eqx.nn.Linear
    value_proj: eqx.nn.Linear
    output_proj: eqx.nn.Linear
    num_heads: int = eqx.field(static=True)

    def __init__(self, width: int, heads: int, *, key: PRNGKeyArray):
        kq, kk, kv, ko = jax.random.split(key, 4)
        self.query_proj, self.key_proj, self.value_proj, self.output_proj = (
            eqx.nn.Linear(width, width, dtype=DTYPE, key=k) for k in (kq, kk, kv, ko))
        self.num_heads = heads

    def __call__(self, x: Float[Array, "T width"], mask: Bool[Array, "T T"] | None = None,
                 *, causal: bool = False) -> Float[Array, "T width"]:
        """Returns (T, width); position i attends to j where ``mask[i, j]`` (all if ``None``)
        and, when ``causal``, j ≤ i."""
        t, width = x.shape
        head = width // self.num_heads

        def heads(proj: eqx.nn.Linear) -> Float[Array, "T N H"]:
            return jax.vmap(proj)(x).reshape(t, self.num_heads, head)

        q, k, v = heads(self.query_proj) / math.sqrt(head), heads(self.key_proj), heads(
            self.value_proj)
        if q.dtype.itemsize > 4:  # jax.nn's softmax runs in float32: keep float64 exact
            logits = jnp.einsum("tnh,snh->nts", q, k)
            keep = jnp.ones(logits.shape[1:], bool) if mask is None else mask
            keep = keep & jnp.tri(t, dtype=bool) if causal else keep
            weights = jax.nn.softmax(jnp.where(keep, logits, -jnp.inf), axis=-1)
            out = jnp.einsum("nts,snh->tnh", weights, v)
        else:
            out = jax.nn.dot_product_attention(q, k, v, mask=None if mask is None else mask[None],
                                               scale=1.0, is_causal=causal)
        return jax.vmap(self.output_proj)(out.reshape(t, width))


class ResidualBlock(eqx.Module):
    """Pre-LayerNorm transformer block: ``x + attn(ln1(x))``, then ``x + mlp(ln2(x))``."""

    ln1: eqx.nn.LayerNorm
    attn: Attention
    ln2: eqx.nn.LayerNorm
    fc: eqx.nn.Linear
    proj: eqx.nn.Linear
    activation: str = eqx.field(static=True)

    def __init__(self, width: int, heads: int, mlp_ratio: int = 4,
                 activation: str = "gelu_tanh", *, key: PRNGKeyArray):
        k1, k2, k3 = jax.random.split(key, 3)
        self.ln1 = eqx.nn.LayerNorm(width, dtype=DTYPE)
        self.attn = Attention(width, heads, key=k1)
        self.ln2 = eqx.nn.LayerNorm(width, dtype=DTYPE)
        self.fc = eqx.nn.Linear(width, mlp_ratio * width, dtype=DTYPE, key=k2)
        self.proj = eqx.nn.Linear(mlp_ratio * width, width, dtype=DTYPE, key=k3)
        self.activation = activation

    def __call__(self, x: Float[Array, "T width"], mask: Bool[Array, "T T"] | None = None,
                 *, causal: bool = False) -> Float[Array, "T width"]:
        """Returns (T, width); position i attends to j where ``mask[i, j]`` (all if ``None``)
        and, when ``causal``, j ≤ i."""
        h = jax.vmap(self.ln1)(x)
        x = x + self.attn(h, mask, causal=causal)
        h = jax.vmap(self.ln2)(x)
        act = ACTIVATIONS[self.activation]
        return x + jax.vmap(lambda v: self.proj(act(self.fc(v))))(h)


class Transformer(eqx.Module):
    """A stack of ``ResidualBlock``s sharing one attention mask (and causality)."""

    blocks: tuple[ResidualBlock, ...]

    def __init__(self, width: int, layers: int, heads: int, mlp_ratio: int = 4,
                 activation: str = "gelu_tanh", *, key: PRNGKeyArray):
        keys = jax.random.split(key, layers)
        self.blocks = tuple(ResidualBlock(width, heads, mlp_ratio, activation, key=k)
                            for k in keys)

    def __call__(self, x: Float[Array, "T width"], mask: Bool[Array, "T T"] | None = None,
                 *, causal: bool = False) -> Float[Array, "T width"]:
        """Returns (T, width)."""
        for block in self.blocks:
            x = block(x, mask, causal=causal)
        return x


class VisionTransformer(eqx.Module):
    """ViT image tower: (C, H, W) image → the class token's output after ``ln_post``, (width,)."""

    patch_embed: eqx.nn.Conv2d
    class_embedding: Float[Array, " width"]
    positional_embedding: Float[Array, "patches_plus_1 width"]
    ln_pre: eqx.nn.LayerNorm
    transformer: Transformer
    ln_post: eqx.nn.LayerNorm
    image_shape: tuple[int, int, int] = eqx.field(static=True)

    def __init__(self, preset: CLIPPreset, *, key: PRNGKeyArray):
        k1, k2, k3, k4 = jax.random.split(key, 4)
        width, patch = preset.width, preset.patch_size
        scale = width ** -0.5
        self.patch_embed = eqx.nn.Conv2d(preset.channels, width, patch, stride=patch,
                                         use_bias=False, dtype=DTYPE, key=k1)
        self.class_embedding = scale * jax.random.normal(k2, (width,), DTYPE)
        self.positional_embedding = scale * jax.random.normal(k3, (preset.patches + 1, width),
                                                              DTYPE)
        self.ln_pre = eqx.nn.LayerNorm(width, dtype=DTYPE)
        self.transformer = Transformer(width, preset.layers, preset.heads, preset.mlp_ratio,
                                       preset.activation, key=k4)
        self.ln_post = eqx.nn.LayerNorm(width, dtype=DTYPE)
        self.image_shape = (preset.channels, preset.image_size, preset.image_size)

    def embed_patches(self, image: Float[Array, "C H W"]) -> Float[Array, "patches_plus_1 width"]:
        """The transformer's input: class token then patch embeddings, plus positions."""
        if image.shape != self.image_shape:
            raise ValueError(f"image must have shape {self.image_shape} (channels, image_size, "
                             f"image_size), got {image.shape}")
        dtype = self.class_embedding.dtype
        patches = self.patch_embed(image.astype(dtype))  # (width, H/p, W/p)
        patches = patches.reshape(patches.shape[0], -1).T  # (patches, width), row-major
        tokens = jnp.concatenate([self.class_embedding[None, :], patches], axis=0)
        return tokens + self.positional_embedding

    def __call__(self, image: Float[Array, "C H W"]) -> Float[Array, " width"]:
        """Image features before the projection (``X_I``): shape (width,)."""
        x = jax.vmap(self.ln_pre)(self.embed_patches(image))
        x = self.transformer(x)
        return self.ln_post(x[0])


class TextTransformer(eqx.Module):
    """Causal text tower: (context,) ids → ``ln_final`` output at the end-of-text token."""

    token_embedding: eqx.nn.Embedding
    positional_embedding: Float[Array, "context text_width"]
    transformer: Transformer
    ln_final: eqx.nn.LayerNorm
    context: int = eqx.field(static=True)
    vocab_size: int = eqx.field(static=True)

    def __init__(self, preset: CLIPPreset, *, key: PRNGKeyArray):
        k1, k2, k3 = jax.random.split(key, 3)
        width = preset.text_width
        weight = 0.02 * jax.random.normal(k1, (preset.vocab_size, width), DTYPE)
        self.token_embedding = eqx.nn.Embedding(weight=weight)
        self.positional_embedding = 0.01 * jax.random.normal(k2, (preset.context, width), DTYPE)
        self.transformer = Transformer(width, preset.text_layers, preset.text_heads,
                                       preset.mlp_ratio, preset.activation, key=k3)
        self.ln_final = eqx.nn.LayerNorm(width, dtype=DTYPE)
        self.context = preset.context
        self.vocab_size = preset.vocab_size

    def hidden(self, tokens: Int[Array, " context"]) -> Float[Array, "context text_width"]:
        """Per-position outputs of the causal transformer stack (before ``ln_final``)."""
        tokens = jnp.asarray(tokens)
        if tokens.shape != (self.context,):
            raise ValueError(f"tokens must have shape (context,) = ({self.context},), "
                             f"got {tokens.shape}")
        tokens = _check_tokens(tokens, self.context, self.vocab_size)
        x = jax.vmap(self.token_embedding)(tokens) + self.positional_embedding
        return self.transformer(x, causal=True)

    def __call__(self, tokens: Int[Array, " context"]) -> Float[Array, " text_width"]:
        """Text features before the projection: ``ln_final`` at the first ``EOT`` (the argmax of
        the ids, as in CLIP); shape (text_width,)."""
        hidden = self.hidden(tokens)
        return self.ln_final(hidden[jnp.argmax(tokens)])


# --------------------------------------------------------------------------------------------
# CLIP


class CLIP(DualEncoder):
    """CLIP: ViT and text transformer with projections into a ``dim``-dimensional space.

    Same interface as ``ToyCLIP``: ``image_features`` gives ``X_I``, ``image_proj`` is ``W_I``,
    ``text_proj`` is ``W_T``.
    """

    image: VisionTransformer
    image_proj: eqx.nn.Linear
    text: TextTransformer
    text_proj: eqx.nn.Linear
    log_scale: Float[Array, ""]
    preset: CLIPPreset = eqx.field(static=True)

    def __init__(self, preset: CLIPPreset | str = "tiny", *, key: PRNGKeyArray):
        if not isinstance(preset, CLIPPreset | str):
            raise TypeError(f"preset must be a CLIPPreset or a preset name, "
                            f"got {type(preset).__name__}")
        preset = _as_preset(preset)
        k1, k2, k3, k4 = jax.random.split(key, 4)
        self.image = VisionTransformer(preset, key=k1)
        self.image_proj = eqx.nn.Linear(preset.width, preset.dim, use_bias=False, dtype=DTYPE,
                                        key=k2)
        self.text = TextTransformer(preset, key=k3)
        self.text_proj = eqx.nn.Linear(preset.text_width, preset.dim, use_bias=False,
                                       dtype=DTYPE, key=k4)
        self.log_scale = jnp.log(jnp.asarray(1 / 0.07, DTYPE))
        self.preset = preset

    def last_layer(self) -> eqx.nn.LayerNorm:
        """The image tower's last layer (unfrozen with the projection by ``proj_only``):
        the ViT's ``ln_post``."""
        return self.image.ln_post

    def image_features(self, images: Float[Array, "B C H W"]) -> Float[Array, "B width"]:
        """``X_I``: image features before the projection, batch-first."""
        if images.ndim != 4:
            raise ValueError(f"images must have shape (B, *{self.image.image_shape}), "
                             f"got {images.shape}")
        return jax.vmap(self.image)(images)

    def embed_texts(self, tokens: Int[Array, "B context"]) -> Float[Array, "B dim"]:
        """Normalized text embeddings of CLIP token ids (see ``clip_tokens``); shape (B, dim)."""
        tokens = _check_tokens(jnp.asarray(tokens), self.text.context, self.text.vocab_size)
        return normalize(jax.vmap(lambda t: self.text_proj(self.text(t)))(tokens))


def resize_images(images: np.ndarray, size: int, *, chunk: int = 256) -> np.ndarray:
    """Bilinear resize of (N, C, H, W) images to (N, C, size, size) float32, ``chunk`` images at
    a time so memory stays bounded; the images themselves when ``size`` is already their size."""
    images = np.asarray(images)
    if images.ndim != 4 or images.shape[2] != images.shape[3]:
        raise ValueError(f"images must have shape (N, C, H, H), got {images.shape}")
    if not isinstance(size, int | np.integer) or isinstance(size, bool) or size <= 0:
        raise ValueError(f"size must be a positive integer, got {size!r}")
    if not isinstance(chunk, int | np.integer) or isinstance(chunk, bool) or chunk <= 0:
        raise ValueError(f"chunk must be a positive integer, got {chunk!r}")
    images = images.astype(np.float32, copy=False)
    if images.shape[2] == size:
        return images
    n, c = images.shape[:2]
    out = np.empty((n, c, size, size), np.float32)
    for start in range(0, n, chunk):
        out[start:start + chunk] = np.asarray(_resize(jnp.asarray(images[start:start + chunk]),
                                                      int(size)))
    return out


@functools.partial(jax.jit, static_argnames="size")
def _resize(images: Float[Array, "n C H H"], size: int) -> Float[Array, "n C size size"]:
    return jax.image.resize(images, (*images.shape[:2], size, size), "bilinear")


__all__ = ["ACTIVATIONS", "CLIP", "CLIP_CONTEXT", "CLIP_TEXT_CONTEXT", "CLIP_VOCAB_SIZE", "EOT",
           "PRESETS", "VOCAB_SIZE", "Attention", "CLIPPreset", "ResidualBlock", "TextTransformer",
           "Transformer", "VisionTransformer", "clip_tokenize", "clip_tokens", "preset",
           "quick_gelu", "resize_images"]
