"""The standard CLIP (tracer_theory.deep.models.clip): shapes, causal text tower, end-of-text
pooling, the ViT class token, input checks, bfloat16 and the ViT-B/16 parameter count.

Every test uses the tiny preset and batches of 4, and the jitted probes below are compiled once
per shape, so the file runs in seconds on a laptop CPU.
"""

import dataclasses
import math

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.special

from tracer_theory.deep.data.prompts import (
    MAX_TOKENS,
    TRAIN_TEMPLATES,
    VOCAB,
    prompt_tokens,
    tokenize,
)
from tracer_theory.deep.models import ToyCLIP
from tracer_theory.deep.models.clip import (
    CLIP,
    CLIP_CONTEXT,
    EOT,
    PRESETS,
    VOCAB_SIZE,
    CLIPPreset,
    clip_tokenize,
    clip_tokens,
    preset,
    resize_images,
)

BATCH = 4
TEXTS = ("seven", "the digit seven", "the number seven written by hand",
         "the number seven written by hand the digit")  # 1, 3, 6 and MAX_TOKENS = 8 words


def word(w: str) -> int:
    return VOCAB.index(w)


@eqx.filter_jit
def forward(model, images, tokens, prompts):
    """Every public output of the model, and the text tower's per-position hidden states and
    pooled features, at once: one compilation per dtype and batch shape."""
    return {
        "image_features": model.image_features(images),
        "embed_images": model.embed_images(images),
        "embed_texts": model.embed_texts(tokens),
        "class_embeddings": model.class_embeddings(prompts),
        "zero_shot_logits": model.zero_shot_logits(images, prompts),
        "scale": model.scale,
        "hidden": jax.vmap(model.text.hidden)(tokens),
        "pooled": jax.vmap(model.text)(tokens),
    }


@pytest.fixture(scope="module")
def model():
    # An RBG key: XLA compiles its kernels far faster than threefry's, which would otherwise
    # dominate this file's run time (one compilation per parameter shape).
    return CLIP("tiny", key=jax.random.key(0, impl="rbg"))


@pytest.fixture(scope="module")
def batch():
    rng = np.random.default_rng(0)
    images = jnp.asarray(rng.random((BATCH, 3, 28, 28), dtype=np.float32))
    tokens = jnp.asarray(np.stack([clip_tokenize(t) for t in TEXTS]))
    prompts = jnp.asarray(clip_tokens(prompt_tokens(TRAIN_TEMPLATES[:2])))  # (10, 2, 9)
    return images, tokens, prompts


@pytest.fixture(scope="module")
def outputs(model, batch):
    return forward(model, *batch)


def text_probe(model, batch, tokens):
    """(hidden, pooled) of the text tower for other tokens of the same shape (no recompiling)."""
    images, _, prompts = batch
    out = forward(model, images, jnp.asarray(tokens), prompts)
    return out["hidden"], out["pooled"]


# --------------------------------------------------------------------------------------------
# Shapes, normalization, dtypes, interface


def test_output_shapes(outputs):
    tiny = PRESETS["tiny"]
    expected = {"image_features": (BATCH, tiny.width), "embed_images": (BATCH, tiny.dim),
                "embed_texts": (BATCH, tiny.dim), "class_embeddings": (10, tiny.dim),
                "zero_shot_logits": (BATCH, 10), "scale": (),
                "hidden": (BATCH, CLIP_CONTEXT, tiny.text_width),
                "pooled": (BATCH, tiny.text_width)}
    assert {k: v.shape for k, v in outputs.items()} == expected
    assert all(v.dtype == jnp.float32 for v in outputs.values())


def test_embeddings_have_unit_norm(outputs):
    for name in ("embed_images", "embed_texts", "class_embeddings"):
        np.testing.assert_allclose(np.linalg.norm(outputs[name], axis=-1), 1.0, atol=1e-5)


def test_logits_are_scaled_cosines(outputs):
    np.testing.assert_allclose(outputs["scale"], 1 / 0.07, rtol=1e-5)
    expected = outputs["scale"] * outputs["embed_images"] @ outputs["class_embeddings"].T
    np.testing.assert_allclose(outputs["zero_shot_logits"], expected, rtol=1e-5, atol=1e-5)


def test_parameters_are_float32_under_x64(model):
    assert jax.config.read("jax_enable_x64")
    leaves = jax.tree.leaves(eqx.filter(model, eqx.is_inexact_array))
    assert leaves and all(leaf.dtype == jnp.float32 for leaf in leaves)


def test_same_public_interface_as_toy_clip(model):
    public = {name for name in dir(ToyCLIP) if not name.startswith("_")}
    assert public <= set(dir(CLIP))
    for field in ("image", "image_proj", "text", "text_proj", "log_scale"):
        assert hasattr(model, field)
    assert model.image_proj.bias is None and model.text_proj.bias is None
    assert model.preset == preset("tiny")


def test_preset_object_and_name_build_the_same_model(model):
    again = eqx.filter_eval_shape(lambda: CLIP(preset("tiny"), key=jax.random.key(0)))
    assert again.preset is model.preset
    assert jax.tree.structure(again) == jax.tree.structure(model)
    def shapes(tree):
        return [(x.shape, x.dtype) for x in jax.tree.leaves(tree) if hasattr(x, "shape")]
    assert shapes(again) == shapes(model)


def test_last_layer_is_ln_post(model):
    assert model.last_layer() is model.image.ln_post


# --------------------------------------------------------------------------------------------
# Tokenizer


def test_clip_tokens_hand_written():
    the, digit, seven = word("the"), word("digit"), word("seven")
    np.testing.assert_array_equal(clip_tokenize("the digit seven"),
                                  [the, digit, seven, EOT, 0, 0, 0, 0, 0])
    np.testing.assert_array_equal(clip_tokenize("seven"), [seven, EOT, 0, 0, 0, 0, 0, 0, 0])
    np.testing.assert_array_equal(clip_tokenize(""), [EOT, 0, 0, 0, 0, 0, 0, 0, 0])
    full = clip_tokenize(TEXTS[3])
    np.testing.assert_array_equal(full, [*tokenize(TEXTS[3]), EOT])
    assert full.dtype == np.int32 and EOT == len(VOCAB) == VOCAB_SIZE - 1


def test_clip_tokens_keeps_leading_shape():
    words = prompt_tokens(TRAIN_TEMPLATES)  # (10, 5, 8)
    tokens = clip_tokens(words)
    assert tokens.shape == (10, 5, CLIP_CONTEXT) and tokens.dtype == np.int32
    assert np.all((tokens == EOT).sum(axis=-1) == 1)
    lengths = (words != 0).sum(axis=-1)
    np.testing.assert_array_equal(np.argmax(tokens, axis=-1), lengths)
    np.testing.assert_array_equal(tokens[..., :MAX_TOKENS] * (tokens[..., :MAX_TOKENS] != EOT),
                                  words)


@pytest.mark.parametrize("bad, match", [
    (np.zeros(7, np.int32), "last axis MAX_TOKENS"),
    (np.zeros(8, np.float32), "integer"),
    (np.array([1, 0, 2, 0, 0, 0, 0, 0]), "padded with 0 at the end"),
    (np.array([len(VOCAB), 0, 0, 0, 0, 0, 0, 0]), "word ids in"),
    (np.array([-1, 0, 0, 0, 0, 0, 0, 0]), "word ids in"),
])
def test_clip_tokens_rejects_bad_input(bad, match):
    with pytest.raises(ValueError, match=match):
        clip_tokens(bad)


# --------------------------------------------------------------------------------------------
# Text tower: causal mask and end-of-text pooling


def test_causal_mask_blocks_the_future(model, batch):
    _, tokens, _ = batch
    base = tokens[2]  # "the number seven written by hand", EOT at position 6
    changed_at = (2, 4, 7)
    variants = [base] + [base.at[k].set(word("two") if base[k] != word("two") else word("one"))
                         for k in changed_at]
    hidden, _ = text_probe(model, batch, jnp.stack(variants))
    for i, k in enumerate(changed_at, start=1):
        np.testing.assert_array_equal(hidden[i, :k], hidden[0, :k])  # the past is untouched
        change = np.abs(hidden[i, k:] - hidden[0, k:]).max(axis=-1)
        assert np.all(change > 1e-4), (k, change)  # the token and everything after it move


def _layer_norm(x, ln):
    mean = x.mean(-1, keepdims=True)
    var = x.var(-1, keepdims=True)
    return (x - mean) / np.sqrt(var + ln.eps) * np.asarray(ln.weight) + np.asarray(ln.bias)


def test_pooling_reads_the_end_of_text_token(model, batch):
    _, tokens, _ = batch
    hidden, pooled = text_probe(model, batch, tokens)
    for row, (text, ids) in enumerate(zip(TEXTS, np.asarray(tokens), strict=True)):
        eot = list(ids).index(EOT)
        assert eot == len(text.split())
        expected = _layer_norm(np.asarray(hidden[row, eot], np.float64), model.text.ln_final)
        np.testing.assert_allclose(pooled[row], expected, rtol=1e-4, atol=1e-4)
        others = [p for p in range(CLIP_CONTEXT) if p != eot]
        other = _layer_norm(np.asarray(hidden[row, others], np.float64), model.text.ln_final)
        assert np.abs(other - np.asarray(pooled[row])).max(axis=-1).min() > 1e-3


def test_tokens_after_end_of_text_do_not_matter(model, batch):
    _, tokens, _ = batch
    ids = np.asarray(tokens).copy()
    after = np.arange(CLIP_CONTEXT) > np.argmax(ids, axis=-1)[:, None]
    rng = np.random.default_rng(1)
    ids[after] = rng.integers(1, len(VOCAB), size=after.sum())
    assert after.sum() > 0 and not np.array_equal(ids, tokens)
    _, pooled = text_probe(model, batch, tokens)
    _, pooled_noise = text_probe(model, batch, ids)
    np.testing.assert_allclose(pooled_noise, pooled, atol=1e-6)


# --------------------------------------------------------------------------------------------
# Image tower


def test_patch_embedding_has_one_token_per_patch_plus_class(model, batch):
    images, _, _ = batch
    tiny = PRESETS["tiny"]
    count = (28 // 7) ** 2 + 1
    assert tiny.patches + 1 == count == 17
    assert model.image.positional_embedding.shape == (count, tiny.width)
    assert model.image.embed_patches(images[0]).shape == (count, tiny.width)


def test_class_token_depends_on_every_patch(model, batch):
    images, tokens, prompts = batch
    base = forward(model, images, tokens, prompts)["image_features"][0]
    perturbed = []
    for r in range(4):
        for c in range(4):
            perturbed.append(images[0].at[:, 7 * r:7 * r + 7, 7 * c:7 * c + 7].add(0.5))
    perturbed = jnp.stack(perturbed)
    for start in range(0, 16, BATCH):  # same shapes as the fixture: no new compilation
        feats = forward(model, perturbed[start:start + BATCH], tokens, prompts)["image_features"]
        change = np.abs(np.asarray(feats) - np.asarray(base)).max(axis=-1)
        assert np.all(change > 1e-4), (start, change)


def test_resize_images():
    rng = np.random.default_rng(0)
    images = rng.random((4, 3, 28, 28), dtype=np.float32)
    assert resize_images(images, 28) is images
    big = resize_images(images, 56, chunk=2)
    assert big.shape == (4, 3, 56, 56) and big.dtype == np.float32
    np.testing.assert_array_equal(resize_images(images[:2], 56), big[:2])  # chunking is exact
    constant = np.full((2, 3, 28, 28), 0.25, np.float32)
    np.testing.assert_allclose(resize_images(constant, 56), 0.25, atol=1e-6)
    np.testing.assert_allclose(big.mean(axis=(2, 3)), images.mean(axis=(2, 3)), atol=2e-2)
    with pytest.raises(ValueError, match="size must be a positive integer"):
        resize_images(images, 0)
    with pytest.raises(ValueError, match=r"images must have shape \(N, C, H, H\)"):
        resize_images(images[0], 56)


# --------------------------------------------------------------------------------------------
# Bad inputs


@pytest.mark.parametrize("shape", [(2, 3, 32, 32), (2, 1, 28, 28), (2, 3, 28, 27)])
def test_wrong_image_shape(model, shape):
    images = jnp.zeros(shape, jnp.float32)
    message = rf"image must have shape \(3, 28, 28\).*got \({shape[1]}, {shape[2]}, {shape[3]}\)"
    with pytest.raises(ValueError, match=message):
        model.embed_images(images)
    with pytest.raises(ValueError, match=message):
        eqx.filter_jit(lambda m, x: m.image_features(x))(model, images)
    with pytest.raises(ValueError, match="images must have shape"):
        model.image_features(images[0])


@pytest.mark.parametrize("bad_id", [VOCAB_SIZE, VOCAB_SIZE + 5, -1])
def test_token_ids_out_of_range(model, batch, bad_id):
    images, tokens, prompts = batch
    bad = tokens.at[1, 3].set(bad_id)
    message = rf"tokens must be ids in \[0, VOCAB_SIZE = {VOCAB_SIZE}\)"
    with pytest.raises(ValueError, match=message):  # eager: a ValueError before computing
        model.embed_texts(bad)
    with pytest.raises(ValueError, match=message):
        model.text(bad[1])
    with pytest.raises(RuntimeError, match=message):  # jitted: eqx.error_if when it runs
        jax.block_until_ready(forward(model, images, bad, prompts))


def test_constant_tokens_inside_jit(model, batch):
    """Tokens closed over by a jitted function are concrete: checked when tracing."""
    _, tokens, _ = batch
    shaped = eqx.filter_eval_shape(lambda m: m.embed_texts(tokens), model)
    assert shaped.shape == (BATCH, PRESETS["tiny"].dim)
    bad = tokens.at[0, 0].set(VOCAB_SIZE)
    with pytest.raises(ValueError, match=r"tokens must be ids in \[0, VOCAB_SIZE"):
        eqx.filter_jit(lambda m: m.embed_texts(bad))(model)


def test_wrong_token_length_or_dtype(model):
    with pytest.raises(ValueError, match="last axis context = 9"):
        model.embed_texts(jnp.zeros((2, MAX_TOKENS), jnp.int32))
    with pytest.raises(ValueError, match=r"shape \(context,\) = \(9,\)"):
        model.text(jnp.zeros(MAX_TOKENS, jnp.int32))
    with pytest.raises(ValueError, match="integer ids"):
        model.embed_texts(jnp.zeros((2, CLIP_CONTEXT), jnp.float32))


def test_unknown_preset():
    message = (r"unknown preset 'huge'; choose one of \['ViT-B-16', 'ViT-B-16-quickgelu', "
               r"'ViT-B-32', 'ViT-B-32-quickgelu', 'ViT-L-14', 'ViT-L-14-quickgelu', 'base', "
               r"'small', 'tiny'\]")
    with pytest.raises(ValueError, match=message):
        preset("huge")
    with pytest.raises(ValueError, match=message):
        CLIP("huge", key=jax.random.key(0))
    with pytest.raises(TypeError, match="preset must be"):
        CLIP(3, key=jax.random.key(0))


@pytest.mark.parametrize("change, match", [
    ({"width": 0}, "width must be a positive integer"),
    ({"layers": -1}, "layers must be a positive integer"),
    ({"heads": 2.0}, "heads must be a positive integer"),
    ({"dim": True}, "dim must be a positive integer"),
    ({"channels": 0}, "channels must be a positive integer"),
    ({"patch_size": 5}, "image_size .* divisible by patch_size"),
    ({"heads": 3}, "width .* divisible by heads"),
    ({"text_heads": 5}, "text_width .* divisible by text_heads"),
    ({"context": MAX_TOKENS}, "context must be >= MAX_TOKENS"),
    ({"name": ""}, "name must be"),
])
def test_invalid_preset_fields(change, match):
    with pytest.raises(ValueError, match=match):
        dataclasses.replace(PRESETS["tiny"], **change)


# --------------------------------------------------------------------------------------------
# bfloat16 and scale


def test_bfloat16_forward_equals_the_float32_forward_to_bf16_precision(model, batch, outputs):
    def run(model, images, tokens):
        half = jax.tree.map(lambda x: x.astype(jnp.bfloat16) if eqx.is_inexact_array(x) else x,
                            model)
        assert all(leaf.dtype == jnp.bfloat16
                   for leaf in jax.tree.leaves(eqx.filter(half, eqx.is_inexact_array)))
        return half.embed_images(images), half.embed_texts(tokens)

    images, tokens, _ = batch
    got_all = eqx.filter_jit(run)(model, images, tokens)  # float32 inputs, bfloat16 model
    for got, name in zip(got_all, ("embed_images", "embed_texts"), strict=True):
        assert got.dtype == jnp.bfloat16
        assert np.all(np.isfinite(np.asarray(got, np.float32)))
        np.testing.assert_allclose(np.asarray(got, np.float32), outputs[name], atol=5e-2)


def _expected_parameters(p: CLIPPreset, vocab: int, context: int) -> int:
    """CLIP's parameter count from its sizes (biased attention and MLP, LayerNorm weight+bias)."""
    def block(w):
        return 4 * (w * w + w) + 2 * 2 * w + (w * p.mlp_ratio * w + p.mlp_ratio * w) + (
            p.mlp_ratio * w * w + w)
    image = (p.channels * p.patch_size ** 2 * p.width + p.width + (p.patches + 1) * p.width
             + 2 * 2 * p.width + p.layers * block(p.width))
    text = vocab * p.text_width + context * p.text_width + p.text_layers * block(p.text_width) \
        + 2 * p.text_width
    return image + text + p.width * p.dim + p.text_width * p.dim + 1


def _count(module) -> int:
    return sum(math.prod(leaf.shape) for leaf in jax.tree.leaves(module)
               if hasattr(leaf, "shape"))


def test_base_preset_is_vit_b16_sized():
    """The base preset is CLIP ViT-B/16 except for the token embeddings: OpenAI's model has
    149,620,737 parameters with a 49,408-token vocabulary and a 77-token context. Ours has
    VOCAB_SIZE tokens and a 9-token context, i.e. ~25.3M fewer parameters (~124.3M), all of them
    in the text tower's embedding tables."""
    base = eqx.filter_eval_shape(lambda: CLIP("base", key=jax.random.key(0)))
    assert all(leaf.dtype == jnp.float32 for leaf in jax.tree.leaves(base)
               if hasattr(leaf, "dtype"))
    count = _count(base)
    assert count == _expected_parameters(PRESETS["base"], VOCAB_SIZE, CLIP_CONTEXT)
    openai_embeddings = (49408 - VOCAB_SIZE) * 512 + (77 - CLIP_CONTEXT) * 512
    assert count + openai_embeddings == 149_620_737
    assert 120e6 < count < 130e6
    assert _count(base.image) + _count(base.image_proj) == 86_192_640  # ViT-B/16's visual


@pytest.mark.parametrize("name", ["tiny", "small"])
def test_small_presets_parameter_count(name):
    shaped = eqx.filter_eval_shape(lambda: CLIP(name, key=jax.random.key(0)))
    assert _count(shaped) == _expected_parameters(PRESETS[name], VOCAB_SIZE, CLIP_CONTEXT)


# --- the standard architectures and their activations ------------------------------------------

@pytest.mark.parametrize(("name", "published"), [
    ("ViT-B-32", 151_277_313), ("ViT-B-16", 149_620_737), ("ViT-L-14", 427_616_513),
    ("ViT-B-16-quickgelu", 149_620_737)])
def test_standard_presets_have_the_published_parameter_counts(name, published):
    """OpenAI's CLIP models (49,408-id vocabulary, 77-token context) as their model cards count
    them; the shapes alone (``filter_eval_shape``: nothing is allocated)."""
    shaped = eqx.filter_eval_shape(lambda: CLIP(name, key=jax.random.key(0)))
    assert _count(shaped) == published
    p = PRESETS[name]
    assert (p.vocab_size, p.context) == (49408, 77)
    assert p.activation == ("quick_gelu" if name.endswith("quickgelu") else "gelu")


def _np_layer_norm(ln, x):
    mean = x.mean(-1, keepdims=True)
    var = ((x - mean) ** 2).mean(-1, keepdims=True)
    return (x - mean) / np.sqrt(var + ln.eps) * np.asarray(ln.weight) + np.asarray(ln.bias)


def _np_linear(lin, x):
    out = x @ np.asarray(lin.weight).T
    return out if lin.bias is None else out + np.asarray(lin.bias)


NP_ACTIVATIONS = {  # written from their definitions, independently of the library
    "gelu_tanh": lambda x: 0.5 * x * (1 + np.tanh(np.sqrt(2 / np.pi) * (x + 0.044715 * x**3))),
    "gelu": lambda x: 0.5 * x * (1 + scipy.special.erf(x / np.sqrt(2))),
    "quick_gelu": lambda x: x / (1 + np.exp(-1.702 * x)),
}


def _np_block(block, x, mask, activation):
    attn = block.attn
    heads = attn.num_heads
    h = _np_layer_norm(block.ln1, x)
    q, k, v = (_np_linear(proj, h).reshape(len(h), heads, -1)
               for proj in (attn.query_proj, attn.key_proj, attn.value_proj))
    logits = np.einsum("thd,shd->hts", q, k) / np.sqrt(q.shape[-1])
    logits = np.where(mask[None], logits, -np.inf)
    weights = np.exp(logits - logits.max(-1, keepdims=True))
    weights /= weights.sum(-1, keepdims=True)
    x = x + _np_linear(attn.output_proj,
                       np.einsum("hts,shd->thd", weights, v).reshape(len(h), -1))
    h = _np_layer_norm(block.ln2, x)
    return x + _np_linear(block.proj, NP_ACTIVATIONS[activation](_np_linear(block.fc, h)))


def _np_clip(model, image, tokens, activation):
    """CLIP's forward pass in NumPy from the published architecture (Radford et al. 2021):
    ViT with class token, pre-LN blocks, ln_post on the class token; causal text transformer
    pooled at the end-of-text (largest) id; bias-free projections, normalized."""
    vit, p = model.image, model.preset
    w = np.asarray(vit.patch_embed.weight)  # (width, C, p, p)
    g = p.image_size // p.patch_size
    patches = image.reshape(p.channels, g, p.patch_size, g, p.patch_size)
    patches = np.einsum("cipjq,wcpq->ijw", patches, w).reshape(g * g, -1)
    x = np.concatenate([np.asarray(vit.class_embedding)[None], patches]) + np.asarray(
        vit.positional_embedding)
    x = _np_layer_norm(vit.ln_pre, x)
    for block in vit.transformer.blocks:
        x = _np_block(block, x, np.ones((len(x), len(x)), bool), activation)
    img = _np_linear(model.image_proj, _np_layer_norm(vit.ln_post, x[0]))
    text = model.text
    x = np.asarray(text.token_embedding.weight)[tokens] + np.asarray(text.positional_embedding)
    causal = np.tril(np.ones((len(tokens), len(tokens)), bool))
    for block in text.transformer.blocks:
        x = _np_block(block, x, causal, activation)
    txt = _np_linear(model.text_proj, _np_layer_norm(text.ln_final, x[np.argmax(tokens)]))
    return img / np.linalg.norm(img), txt / np.linalg.norm(txt)


@pytest.mark.parametrize("activation", ["gelu_tanh", "gelu", "quick_gelu"])
def test_forward_pass_equals_a_numpy_reference_for_each_activation(activation):
    """Float64, a small preset with CLIP's own token layout (ids up to 49,407, 77 positions)."""
    preset = CLIPPreset(name="check", image_size=8, patch_size=4, width=16, layers=2, heads=2,
                        text_width=16, text_layers=2, text_heads=4, dim=8, context=77,
                        vocab_size=49408, activation=activation)
    model = CLIP(preset, key=jax.random.key(3))
    model = jax.tree.map(lambda x: x.astype(jnp.float64) if eqx.is_inexact_array(x) else x,
                         model)
    rng = np.random.default_rng(0)
    image = rng.standard_normal((3, 8, 8))
    tokens = np.zeros(77, np.int32)
    tokens[:6] = [49406, 320, 1125, 539, 5757, 49407]  # "a photo of … seven" as CLIP ids
    img, txt = _np_clip(model, image, tokens, activation)
    np.testing.assert_allclose(np.asarray(model.embed_images(jnp.asarray(image[None])))[0], img,
                               rtol=1e-12, atol=1e-13)
    np.testing.assert_allclose(np.asarray(model.embed_texts(jnp.asarray(tokens[None])))[0], txt,
                               rtol=1e-12, atol=1e-13)
    # the activations differ: the same weights under another activation give other outputs
    other = "gelu" if activation != "gelu" else "quick_gelu"
    assert not np.allclose(_np_clip(model, image, tokens, other)[0], img, rtol=1e-6)


def test_float32_attention_through_jax_nn_matches_the_numpy_reference():
    """The float32 path (``jax.nn.dot_product_attention``, causal text mask) against the same
    float64 NumPy reference, to float32 round-off; and its outputs stay float32."""
    preset = CLIPPreset(name="check", image_size=8, patch_size=4, width=16, layers=2, heads=2,
                        text_width=16, text_layers=2, text_heads=4, dim=8, context=77,
                        vocab_size=49408, activation="quick_gelu")
    model = CLIP(preset, key=jax.random.key(4))
    image = np.random.default_rng(1).standard_normal((3, 8, 8)).astype(np.float32)
    tokens = np.zeros(77, np.int32)
    tokens[:5] = [49406, 320, 1125, 539, 49407]
    model64 = jax.tree.map(lambda x: np.asarray(x, np.float64) if eqx.is_inexact_array(x) else x,
                           model)
    img, txt = _np_clip(model64, image.astype(np.float64), tokens, "quick_gelu")
    got_img = model.embed_images(jnp.asarray(image[None]))
    got_txt = model.embed_texts(jnp.asarray(tokens[None]))
    assert got_img.dtype == got_txt.dtype == jnp.float32
    np.testing.assert_allclose(np.asarray(got_img)[0], img, rtol=2e-5, atol=2e-6)
    np.testing.assert_allclose(np.asarray(got_txt)[0], txt, rtol=2e-5, atol=2e-6)


@pytest.mark.parametrize(("field", "value", "message"), [
    ("activation", "relu", r"activation must be one of \['gelu', 'gelu_tanh', 'quick_gelu'\]"),
    ("activation", None, "activation must be one of"),
    ("vocab_size", 5, f"vocab_size must be >= {VOCAB_SIZE}"),
    ("vocab_size", 0, "vocab_size must be a positive integer"),
    ("vocab_size", 49408.0, "vocab_size must be a positive integer")])
def test_bad_architecture_options_name_the_field(field, value, message):
    base = dict(name="x", image_size=8, patch_size=4, width=16, layers=1, heads=2,
                text_width=16, text_layers=1, text_heads=2, dim=8)
    with pytest.raises(ValueError, match=message):
        CLIPPreset(**(base | {field: value}))


def test_token_ids_are_checked_against_the_presets_vocabulary():
    preset = CLIPPreset(name="v", image_size=8, patch_size=4, width=16, layers=1, heads=2,
                        text_width=16, text_layers=1, text_heads=2, dim=8, context=77,
                        vocab_size=49408, activation="quick_gelu")
    model = CLIP(preset, key=jax.random.key(0))
    tokens = np.zeros((1, 77), np.int32)
    tokens[0, :2] = [49406, 49407]
    assert np.all(np.isfinite(np.asarray(model.embed_texts(jnp.asarray(tokens)))))
    tokens[0, 1] = 49408
    with pytest.raises(ValueError, match=r"tokens must be ids in \[0, VOCAB_SIZE = 49408\)"):
        model.embed_texts(jnp.asarray(tokens))
