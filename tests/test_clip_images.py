"""CLIP's preprocessing pixel by pixel, its 80 templates, zero-shot prompts and the batched
zero-shot classifier."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from PIL import Image

from tracer_theory.deep.data import (
    CLIP_MEAN,
    CLIP_STD,
    clip_tokenizer,
    imagenet_templates,
    preprocess,
    zero_shot_prompts,
)
from tracer_theory.deep.models.clip import CLIP, CLIPPreset
from tracer_theory.errors import InputError


def _image(h, w, seed=0):
    return np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)


def test_an_image_at_the_resolution_is_only_cropped_and_normalized():
    # short side already 4: no resize; the 4 × 7 image's center 4 columns start at round(1.5) = 2
    pixels = _image(4, 7)
    got = preprocess(Image.fromarray(pixels), 4)
    want = (pixels[:, 2:6].astype(np.float64) / 255 - np.array(CLIP_MEAN)) / np.array(CLIP_STD)
    np.testing.assert_allclose(got, want.transpose(2, 0, 1), rtol=0, atol=1e-6)
    assert got.dtype == np.float32 and got.shape == (3, 4, 4)


def test_the_short_side_is_resized_bicubic_then_center_cropped(tmp_path):
    pixels = _image(9, 16, seed=1)
    # torchvision's Resize: short side 6, long side int(6 · 16/9) = 10 (not 11); crop at 2
    resized = np.asarray(Image.fromarray(pixels).resize((10, 6), Image.BICUBIC), np.float64)
    want = ((resized[:, 2:8] / 255 - np.array(CLIP_MEAN)) / np.array(CLIP_STD)).transpose(2, 0, 1)
    np.testing.assert_allclose(preprocess(Image.fromarray(pixels), 6), want, atol=1e-6)
    # from a file, and a gray image becomes RGB with equal channels
    Image.fromarray(pixels).save(tmp_path / "x.png")
    np.testing.assert_array_equal(preprocess(tmp_path / "x.png", 6),
                                  preprocess(Image.fromarray(pixels), 6))
    gray = preprocess(Image.fromarray(pixels[..., 0]), 6) * np.array(CLIP_STD)[:, None, None]
    gray += np.array(CLIP_MEAN)[:, None, None]
    np.testing.assert_allclose(gray[0], gray[1], atol=1e-6)


def test_bad_images_and_sizes_are_named(tmp_path):
    (tmp_path / "bad.png").write_bytes(b"not an image")
    with pytest.raises(InputError, match=r"cannot read the image .*bad\.png"):
        preprocess(tmp_path / "bad.png", 4)
    with pytest.raises(InputError, match="cannot read the image"):
        preprocess(tmp_path / "missing.png", 4)
    for size in (0, -1, 2.5, True):
        with pytest.raises(ValueError, match="size must be a positive integer"):
            preprocess(Image.fromarray(_image(4, 4)), size)


def test_the_80_templates_and_the_prompts():
    templates = imagenet_templates()
    assert len(templates) == 80 == len(set(templates))
    assert templates[0] == "a bad photo of a {}." and all(t.count("{}") == 1 for t in templates)
    tokenize = clip_tokenizer()
    ids = zero_shot_prompts(tokenize, ["seven", "dog"], templates[:3])
    assert ids.shape == (2, 3, 77)
    np.testing.assert_array_equal(ids[1, 2], tokenize([templates[2].format("dog")])[0])
    for bad in ("seven", [], ["ok", ""], [3]):
        with pytest.raises(ValueError, match="class_names must be"):
            zero_shot_prompts(tokenize, bad)
    with pytest.raises(ValueError, match="templates must be"):
        zero_shot_prompts(tokenize, ["seven"], ["no placeholder"])


def test_the_batched_classifier_is_the_unbatched_one():
    preset = CLIPPreset(name="z", image_size=8, patch_size=4, width=16, layers=1, heads=2,
                        text_width=16, text_layers=1, text_heads=2, dim=8, context=77,
                        vocab_size=49408, activation="quick_gelu")
    model = CLIP(preset, key=jax.random.key(0))
    prompts = jnp.asarray(zero_shot_prompts(clip_tokenizer(), ["one", "two", "three"],
                                            imagenet_templates()[:4]))
    whole = model.class_embeddings(prompts)
    np.testing.assert_allclose(model.class_embeddings(prompts, batch=2), whole, atol=1e-6)
    # the mean of each class's normalized prompt embeddings, renormalized
    emb = np.asarray(model.embed_texts(prompts.reshape(12, 77))).reshape(3, 4, -1)
    mean = emb.mean(1)
    np.testing.assert_allclose(whole, mean / np.linalg.norm(mean, axis=1, keepdims=True),
                               atol=1e-6)
    for batch in (0, 1.5, True):
        with pytest.raises(ValueError, match="batch must be a positive int"):
            model.class_embeddings(prompts, batch=batch)
