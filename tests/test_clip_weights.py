"""Real CLIP checkpoints in and out (``load_clip``/``save_clip``).

The references are independent of the layouts in the library: checkpoints written here as plain
state dicts with open_clip's and Hugging Face's published tensor names, a NumPy forward pass
written from open_clip's published code that reads open_clip's names directly (``x @ proj``, the
fused ``in_proj``), and a hand-written renaming from Hugging Face's names to open_clip's.
"""

from __future__ import annotations

import dataclasses
import json
import re
from pathlib import Path

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.special
from PIL import Image
from safetensors.numpy import load_file, save_file

from tracer_theory.deep.data import (
    Preprocessing,
    clip_tokenizer,
    preprocess,
    word_tokenizer,
    zero_shot_prompts,
)
from tracer_theory.deep.data.images import UNNORMALIZED
from tracer_theory.deep.data.prompts import (
    DIGIT_WORDS,
    HELD_OUT_TEMPLATES,
    TRAIN_TEMPLATES,
    tokenize,
)
from tracer_theory.deep.models import CLIP, ToyCLIP, load_clip, load_preprocessing, save_clip
from tracer_theory.deep.models.clip import PRESETS, CLIPPreset, clip_tokens
from tracer_theory.deep.models.weights import checkpoint_tensors
from tracer_theory.errors import InputError

# a small CLIP with CLIP's own text tower layout (49,408 ids, 77 positions)
W, L, TW, TL, TH, D, P, S = 16, 2, 16, 2, 4, 8, 4, 8
OPEN_CLIP_CFG = {"model_cfg": {"embed_dim": D, "quick_gelu": True,
                               "vision_cfg": {"image_size": S, "layers": L, "width": W,
                                              "patch_size": P, "head_width": 8},
                               "text_cfg": {"context_length": 77, "vocab_size": 49408,
                                            "width": TW, "heads": TH, "layers": TL}}}
SMALL = CLIPPreset(name="small_check", image_size=S, patch_size=P, width=W, layers=L, heads=2,
                   text_width=TW, text_layers=TL, text_heads=TH, dim=D, context=77,
                   vocab_size=49408, activation="quick_gelu")


def _open_clip_state(rng) -> dict[str, np.ndarray]:
    """A random open_clip state dict with the published names and shapes."""
    def r(*shape):
        return (0.3 * rng.standard_normal(shape)).astype(np.float32)

    sd = {"visual.conv1.weight": r(W, 3, P, P), "visual.class_embedding": r(W),
          "visual.positional_embedding": r((S // P) ** 2 + 1, W),
          "visual.ln_pre.weight": 1 + r(W), "visual.ln_pre.bias": r(W),
          "visual.ln_post.weight": 1 + r(W), "visual.ln_post.bias": r(W),
          "visual.proj": r(W, D), "token_embedding.weight": r(49408, TW),
          "positional_embedding": r(77, TW), "ln_final.weight": 1 + r(TW),
          "ln_final.bias": r(TW), "text_projection": r(TW, D),
          "logit_scale": np.asarray(np.log(1 / 0.07), np.float32)}
    for prefix, width, layers in (("visual.transformer", W, L), ("transformer", TW, TL)):
        for i in range(layers):
            b = f"{prefix}.resblocks.{i}."
            sd |= {b + "ln_1.weight": 1 + r(width), b + "ln_1.bias": r(width),
                   b + "attn.in_proj_weight": r(3 * width, width),
                   b + "attn.in_proj_bias": r(3 * width),
                   b + "attn.out_proj.weight": r(width, width), b + "attn.out_proj.bias": r(width),
                   b + "ln_2.weight": 1 + r(width), b + "ln_2.bias": r(width),
                   b + "mlp.c_fc.weight": r(4 * width, width), b + "mlp.c_fc.bias": r(4 * width),
                   b + "mlp.c_proj.weight": r(width, 4 * width), b + "mlp.c_proj.bias": r(width)}
    return sd


def _ln(sd, key, x):
    mean = x.mean(-1, keepdims=True)
    var = ((x - mean) ** 2).mean(-1, keepdims=True)
    return (x - mean) / np.sqrt(var + 1e-5) * sd[key + ".weight"] + sd[key + ".bias"]


def _resblock(sd, b, x, heads, causal, act):
    """open_clip's ResidualAttentionBlock (nn.MultiheadAttention with a fused in_proj)."""
    h = _ln(sd, b + "ln_1", x)
    q, k, v = np.split(h @ sd[b + "attn.in_proj_weight"].T + sd[b + "attn.in_proj_bias"], 3, -1)
    t, width = h.shape
    q, k, v = (z.reshape(t, heads, width // heads) for z in (q, k, v))
    logits = np.einsum("thd,shd->hts", q, k) / np.sqrt(width // heads)
    if causal:
        logits = np.where(np.tril(np.ones((t, t), bool)), logits, -np.inf)
    weights = scipy.special.softmax(logits, axis=-1)
    attn = np.einsum("hts,shd->thd", weights, v).reshape(t, width)
    x = x + attn @ sd[b + "attn.out_proj.weight"].T + sd[b + "attn.out_proj.bias"]
    h = _ln(sd, b + "ln_2", x)
    h = act(h @ sd[b + "mlp.c_fc.weight"].T + sd[b + "mlp.c_fc.bias"])
    return x + h @ sd[b + "mlp.c_proj.weight"].T + sd[b + "mlp.c_proj.bias"]


def _open_clip_forward(sd, image, tokens, vision_heads, text_heads):
    """open_clip's encode_image/encode_text (normalized) from the state dict, float64."""
    sd = {k: np.asarray(v, np.float64) for k, v in sd.items()}
    act = lambda x: x * scipy.special.expit(1.702 * x)  # noqa: E731 (QuickGELU)
    w = sd["visual.conv1.weight"]
    width, _, p, _ = w.shape
    g = image.shape[-1] // p
    patches = image.reshape(3, g, p, g, p).transpose(1, 3, 0, 2, 4).reshape(g * g, -1)
    x = patches @ w.reshape(width, -1).T
    x = np.concatenate([sd["visual.class_embedding"][None], x]) + sd["visual.positional_embedding"]
    x = _ln(sd, "visual.ln_pre", x)
    for i in range(L):
        x = _resblock(sd, f"visual.transformer.resblocks.{i}.", x, vision_heads, False, act)
    img = _ln(sd, "visual.ln_post", x[0]) @ sd["visual.proj"]
    x = sd["token_embedding.weight"][tokens] + sd["positional_embedding"]
    for i in range(TL):
        x = _resblock(sd, f"transformer.resblocks.{i}.", x, text_heads, True, act)
    txt = _ln(sd, "ln_final", x)[tokens.argmax()] @ sd["text_projection"]
    return img / np.linalg.norm(img), txt / np.linalg.norm(txt)


def _hf_from_open_clip(sd) -> dict[str, np.ndarray]:
    """The same weights under Hugging Face CLIPModel's names (``W x`` projections, separate
    q/k/v), written out by hand."""
    hf = {"vision_model.embeddings.patch_embedding.weight": sd["visual.conv1.weight"],
          "vision_model.embeddings.class_embedding": sd["visual.class_embedding"],
          "vision_model.embeddings.position_embedding.weight": sd["visual.positional_embedding"],
          "visual_projection.weight": sd["visual.proj"].T.copy(),
          "text_model.embeddings.token_embedding.weight": sd["token_embedding.weight"],
          "text_model.embeddings.position_embedding.weight": sd["positional_embedding"],
          "text_projection.weight": sd["text_projection"].T.copy(),
          "logit_scale": sd["logit_scale"]}
    for ours, theirs in (("visual.ln_pre", "vision_model.pre_layrnorm"),
                         ("visual.ln_post", "vision_model.post_layernorm"),
                         ("ln_final", "text_model.final_layer_norm")):
        for leaf in ("weight", "bias"):
            hf[f"{theirs}.{leaf}"] = sd[f"{ours}.{leaf}"]
    for src, dst, layers in (("visual.transformer.resblocks", "vision_model.encoder.layers", L),
                             ("transformer.resblocks", "text_model.encoder.layers", TL)):
        for i in range(layers):
            a, b = f"{src}.{i}.", f"{dst}.{i}."
            for leaf in ("weight", "bias"):
                for name, part in zip("qkv", np.split(sd[a + f"attn.in_proj_{leaf}"], 3),
                                      strict=True):
                    hf[b + f"self_attn.{name}_proj.{leaf}"] = part.copy()
                for x, y in (("attn.out_proj", "self_attn.out_proj"), ("ln_1", "layer_norm1"),
                             ("ln_2", "layer_norm2"), ("mlp.c_fc", "mlp.fc1"),
                             ("mlp.c_proj", "mlp.fc2")):
                    hf[b + f"{y}.{leaf}"] = sd[a + f"{x}.{leaf}"]
    return hf


HF_CONFIG = {"architectures": ["CLIPModel"], "projection_dim": D,
             "text_config": {"hidden_size": TW, "intermediate_size": 4 * TW,
                             "num_hidden_layers": TL, "num_attention_heads": TH,
                             "eos_token_id": 49407},
             "vision_config": {"hidden_size": W, "intermediate_size": 4 * W,
                               "num_hidden_layers": L, "num_attention_heads": 2,
                               "image_size": S, "patch_size": P}}


@pytest.fixture(scope="module")
def state():
    return _open_clip_state(np.random.default_rng(0))


def _write(folder, config_name, config, weights_name, tensors):
    folder.mkdir(parents=True, exist_ok=True)
    (folder / config_name).write_text(json.dumps(config))
    save_file(tensors, str(folder / weights_name), metadata={"format": "pt"})
    return folder


@eqx.filter_jit
def _embed_images(model, images):
    return model.embed_images(images)


@eqx.filter_jit
def _embed_texts(model, tokens):
    return model.embed_texts(tokens)


def _leaves_equal(a, b):
    la, lb = jax.tree.leaves(a), jax.tree.leaves(b)
    return len(la) == len(lb) and all(x.dtype == y.dtype and np.array_equal(x, y)
                                      for x, y in zip(la, lb, strict=True))


def _tokens():
    tokens = np.zeros(77, np.int32)
    tokens[:7] = [49406, 320, 1125, 539, 320, 5757, 49407]  # "a photo of a seven"
    return tokens


@pytest.mark.parametrize("layout", ["open_clip", "hf", "bare"])
def test_published_layouts_load_to_the_reference_forward_pass(tmp_path, state, layout):
    """A state dict under each published naming loads to the model whose float64 forward pass
    is open_clip's, computed from the state dict by the NumPy reference."""
    if layout == "open_clip":
        path = _write(tmp_path / "oc", "open_clip_config.json", OPEN_CLIP_CFG,
                      "open_clip_model.safetensors", state)
        model = load_clip(path)
    elif layout == "hf":
        hf = _hf_from_open_clip(state) | {  # a buffer older HF checkpoints carry
            "text_model.embeddings.position_ids": np.arange(77, dtype=np.int64)[None]}
        path = _write(tmp_path / "hf", "config.json", HF_CONFIG, "model.safetensors", hf)
        model = load_clip(path)
    else:
        save_file(state, str(tmp_path / "bare.safetensors"))
        model = load_clip(tmp_path / "bare.safetensors", model=SMALL)
    assert model.preset.activation == "quick_gelu"
    assert (model.preset.heads, model.preset.text_heads) == (2, TH)
    image = np.random.default_rng(1).standard_normal((3, S, S))
    img, txt = _open_clip_forward(state, image, _tokens(), 2, TH)
    m64 = jax.tree.map(lambda x: x.astype(jnp.float64) if isinstance(x, jax.Array) else x, model)
    got_img = np.asarray(_embed_images(m64, jnp.asarray(image[None])))[0]
    got_txt = np.asarray(_embed_texts(m64, jnp.asarray(_tokens()[None])))[0]
    scale = float(m64.scale)
    np.testing.assert_allclose(got_img, img, rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(got_txt, txt, rtol=1e-10, atol=1e-12)
    assert scale == pytest.approx(1 / 0.07, rel=1e-6)


@pytest.mark.parametrize("layout", ["open_clip", "hf"])
def test_save_writes_the_published_names_and_load_save_load_is_bit_identical(tmp_path, state,
                                                                             layout):
    source = _write(tmp_path / "src", "open_clip_config.json", OPEN_CLIP_CFG,
                    "open_clip_model.safetensors", state)
    model = load_clip(source)
    first = save_clip(model, tmp_path / "a", layout)
    again = load_clip(first)
    assert _leaves_equal(model, again) and again.preset == model.preset
    second = save_clip(again, tmp_path / "b", layout)
    for name in [p.name for p in first.iterdir()]:
        assert (first / name).read_bytes() == (second / name).read_bytes(), name
    weights = load_file(str(first / ("model.safetensors" if layout == "hf" else
                                     "open_clip_model.safetensors")))
    expected = state if layout == "open_clip" else _hf_from_open_clip(state)
    assert sorted(weights) == sorted(expected)
    for key, value in expected.items():
        np.testing.assert_array_equal(weights[key], value, err_msg=key)
    # the tokenizer written beside the weights is CLIP's, with the model's context
    assert clip_tokenizer(first)(["a photo of a seven"])[0].tolist() == _tokens().tolist()


def test_the_toolkits_own_clip_goes_through_the_hf_layout_with_its_word_tokenizer(tmp_path):
    model = CLIP("tiny", key=jax.random.key(5))
    folder = save_clip(model, tmp_path / "tiny", "hf")
    loaded = load_clip(folder)
    assert loaded.preset == PRESETS["tiny"] and _leaves_equal(model, loaded)
    tokenizer = clip_tokenizer(folder)
    texts = [t.format(d=d) for t in TRAIN_TEMPLATES + HELD_OUT_TEMPLATES for d in DIGIT_WORDS]
    ids = tokenizer(texts)
    np.testing.assert_array_equal(ids, np.stack([clip_tokens(tokenize(t)) for t in texts]))
    np.testing.assert_array_equal(np.asarray(_embed_texts(loaded, jnp.asarray(ids))),
                                  np.asarray(_embed_texts(model, jnp.asarray(ids))))
    np.testing.assert_array_equal(word_tokenizer()(texts), ids)
    with pytest.raises(ValueError, match=r"outside the vocabulary: \['banana'\]"):
        tokenizer(["the digit banana"])


def test_half_precision_files_widen_exactly_and_open_clip_sizes_come_from_the_config(
        tmp_path, state):
    half = {k: v.astype(np.float16) for k, v in state.items()}
    model = load_clip(_write(tmp_path / "h", "open_clip_config.json", OPEN_CLIP_CFG,
                             "open_clip_model.safetensors", half))
    np.testing.assert_array_equal(np.asarray(model.image_proj.weight),
                                  half["visual.proj"].astype(np.float32).T)
    assert model.image_proj.weight.dtype == jnp.float32
    assert dict(model.preset.__dict__, name="x") == dict(SMALL.__dict__, name="x")


def test_a_standard_architecture_is_named_by_its_preset(tmp_path):
    cfg = {"model_cfg": {"embed_dim": 512, "quick_gelu": True,
                         "vision_cfg": {"image_size": 224, "layers": 12, "width": 768,
                                        "patch_size": 32},
                         "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 512,
                                      "heads": 8, "layers": 12}}}
    (tmp_path / "open_clip_config.json").write_text(json.dumps(cfg))
    from tracer_theory.deep.models.weights import LAYOUTS
    preset = LAYOUTS["open_clip"].read_config(cfg, tmp_path)
    assert preset is PRESETS["ViT-B-32-quickgelu"]


def _bad(tmp_path, state, change):
    sd = dict(state)
    change(sd)
    return _write(tmp_path / "bad", "open_clip_config.json", OPEN_CLIP_CFG,
                  "open_clip_model.safetensors", sd)


@pytest.mark.parametrize(("change", "message"), [
    (lambda sd: sd.pop("visual.proj"), r"missing visual\.proj"),
    (lambda sd: sd.update(extra=np.zeros(2, np.float32)), r"unexpected extra"),
    (lambda sd: sd.update({"visual.proj": np.zeros((D, W), np.float32)}),
     rf"visual\.proj has shape \({D}, {W}\), small_check expects \({W}, {D}\)"),
    (lambda sd: sd.update({"ln_final.bias": np.zeros(TW, np.int32)}),
     r"ln_final\.bias has dtype I32"),
    (lambda sd: (sd.pop("logit_scale"), sd.pop("ln_final.weight"),
                 sd.update(junk=np.zeros(1, np.float32))),
     r"\(3 problem\(s\)\):\n  missing ln_final\.weight\n  missing logit_scale\n  unexpected junk"),
])
def test_a_bad_state_dict_is_one_error_naming_every_key_and_the_path(tmp_path, state, change,
                                                                     message):
    folder = _bad(tmp_path, state, change)
    with pytest.raises(InputError, match=message) as info:
        load_clip(folder, model=SMALL)
    assert str(folder) in str(info.value)


def test_non_finite_weights_are_named(tmp_path, state):
    sd = dict(state)
    sd["visual.ln_pre.bias"] = np.full(W, np.nan, np.float32)
    with pytest.raises(InputError, match=r"NaN or Inf values: \['visual\.ln_pre\.bias'\]"):
        load_clip(_write(tmp_path / "n", "open_clip_config.json", OPEN_CLIP_CFG,
                         "open_clip_model.safetensors", sd))


def test_bad_files_and_folders_are_named(tmp_path, state):
    with pytest.raises(InputError, match=r"no CLIP checkpoint at .*nowhere"):
        load_clip(tmp_path / "nowhere")
    (tmp_path / "empty").mkdir()
    with pytest.raises(InputError, match="empty has no CLIP checkpoint: expected"):
        load_clip(tmp_path / "empty")
    (tmp_path / "torch").mkdir()
    (tmp_path / "torch" / "open_clip_pytorch_model.bin").write_bytes(b"pickle")
    with pytest.raises(InputError, match=r"torch pickle: convert it once with .*convert_torch"):
        load_clip(tmp_path / "torch")
    (tmp_path / "model.pt").write_bytes(b"jit")
    with pytest.raises(InputError, match=r"model\.pt is not a \.safetensors file"):
        load_clip(tmp_path / "model.pt")
    good = _write(tmp_path / "good", "open_clip_config.json", OPEN_CLIP_CFG,
                  "open_clip_model.safetensors", state)
    data = (good / "open_clip_model.safetensors").read_bytes()
    (tmp_path / "cut.safetensors").write_bytes(data[: len(data) // 2])
    with pytest.raises(InputError, match=r"cut\.safetensors is not a readable safetensors"):
        load_clip(tmp_path / "cut.safetensors", model=SMALL)
    save_file(state, str(tmp_path / "bare.safetensors"))
    with pytest.raises(InputError, match=r"bare state dict: the activation and the attention "
                                         r"heads are not in its tensors.*model="):
        load_clip(tmp_path / "bare.safetensors")
    with pytest.raises(InputError, match=r"visual\.conv1\.weight has shape .*ViT-B-32 expects"):
        load_clip(tmp_path / "bare.safetensors", model="ViT-B-32")
    with pytest.raises(ValueError, match="unknown preset 'ViT-Z'"):
        load_clip(tmp_path / "bare.safetensors", model="ViT-Z")
    save_file({"weight": np.zeros(2, np.float32)}, str(tmp_path / "other.safetensors"))
    with pytest.raises(InputError, match="neither an open_clip nor a Hugging Face CLIP"):
        load_clip(tmp_path / "other.safetensors", model=SMALL)
    (good / "config.json").write_text("{}")
    (good / "model.safetensors").write_bytes(data)
    with pytest.raises(InputError, match="holds both an open_clip and a Hugging Face"):
        load_clip(good)


@pytest.mark.parametrize(("config", "message"), [
    ({"vision_cfg": {"ls_init_value": 1e-5}}, r"vision_cfg\.ls_init_value = 1e-05 is not"),
    ({"text_cfg": {"hf_model_name": "roberta-base"}}, r"text_cfg\.hf_model_name"),
    ({"text_cfg": {"act_kwargs": {"approximate": "tanh"}}, "quick_gelu": False},
     r"act_kwargs .* are not supported"),
    ({"vision_cfg": {"image_size": [224, 160]}}, r"image_size = \[224, 160\] is not square"),
    ({"vision_cfg": {"mlp_ratio": 4.5}}, r"mlp_ratio \[4\.0, 4\.5\] must be one integer"),
    ({"vision_cfg": {"width": 0}}, r"not a CLIP this toolkit builds: width must be a positive"),
])
def test_open_clip_configs_this_clip_cannot_run_are_named(tmp_path, state, config, message):
    cfg = json.loads(json.dumps(OPEN_CLIP_CFG))
    for section, values in config.items():
        if isinstance(values, dict):
            cfg["model_cfg"][section].update(values)
        else:
            cfg["model_cfg"][section] = values
    folder = _write(tmp_path / "c", "open_clip_config.json", cfg, "open_clip_model.safetensors",
                    state)
    with pytest.raises(InputError, match=message):
        load_clip(folder)
    (folder / "open_clip_config.json").write_text("{broken")
    with pytest.raises(InputError, match=r"open_clip_config\.json is not readable JSON"):
        load_clip(folder)


@pytest.mark.parametrize(("change", "message"), [
    ({"text_config": {"hidden_act": "relu"}}, r"hidden_act 'relu' \(text\)"),
    ({"vision_config": {"layer_norm_eps": 1e-6}}, r"vision_config\.layer_norm_eps = 1e-06"),
    ({"text_config": {"eos_token_id": 7}}, r"eos_token_id = 7 is not supported"),
    ({"text_config": {"intermediate_size": 3 * TW}}, r"intermediate_size / hidden_size"),
])
def test_hf_configs_this_clip_cannot_run_are_named(tmp_path, state, change, message):
    cfg = json.loads(json.dumps(HF_CONFIG))
    for section, values in change.items():
        cfg[section].update(values)
    folder = _write(tmp_path / "h", "config.json", cfg, "model.safetensors",
                    _hf_from_open_clip(state))
    with pytest.raises(InputError, match=message):
        load_clip(folder)


def test_a_sharded_hf_checkpoint_loads_the_single_file_model(tmp_path, state):
    hf = _hf_from_open_clip(state)
    folder = tmp_path / "sharded"
    folder.mkdir()
    keys = sorted(hf)
    shards = {"model-00001-of-00002.safetensors": keys[::2],
              "model-00002-of-00002.safetensors": keys[1::2]}
    for name, part in shards.items():
        save_file({k: hf[k] for k in part}, str(folder / name))
    (folder / "config.json").write_text(json.dumps(HF_CONFIG))
    index = {"weight_map": {k: name for name, part in shards.items() for k in part}}
    (folder / "model.safetensors.index.json").write_text(json.dumps(index))
    whole = load_clip(_write(tmp_path / "whole", "config.json", HF_CONFIG, "model.safetensors",
                             hf))
    assert _leaves_equal(load_clip(folder), whole)
    (folder / "model-00002-of-00002.safetensors").unlink()
    with pytest.raises(InputError, match="names shards that do not exist"):
        load_clip(folder)


def test_save_clip_refuses_bad_arguments(tmp_path):
    model = CLIP("tiny", key=jax.random.key(0))
    with pytest.raises(ValueError, match=r"layout must be one of \['hf', 'open_clip'\]"):
        save_clip(model, tmp_path / "x", "torch")
    with pytest.raises(TypeError, match="model must be a CLIP, got ToyCLIP"):
        save_clip(ToyCLIP(width=8, dim=4, key=jax.random.key(0)), tmp_path / "x")
    (tmp_path / "file").write_text("")
    with pytest.raises(InputError, match=r"checkpoint folder .*file exists and is not a direc"):
        save_clip(model, tmp_path / "file")
    with pytest.raises(ValueError, match="model must be a preset name or a CLIPPreset"):
        load_clip(tmp_path, model=3)


def test_checkpoint_tensors_orientation_matches_the_published_layouts():
    """open_clip stores projections for ``x @ W`` and fuses q, k, v; Hugging Face stores
    ``W x`` matrices apart."""
    model = CLIP(SMALL, key=jax.random.key(2))
    oc, hf = checkpoint_tensors(model, "open_clip"), checkpoint_tensors(model, "hf")
    x = np.random.default_rng(0).standard_normal(W).astype(np.float32)
    ours = np.asarray(model.image_proj(jnp.asarray(x)))
    np.testing.assert_allclose(x @ oc["visual.proj"], ours, rtol=1e-5)
    np.testing.assert_allclose(hf["visual_projection.weight"] @ x, ours, rtol=1e-5)
    attn = model.text.transformer.blocks[1].attn
    q = np.asarray(attn.query_proj(jnp.asarray(x)))
    np.testing.assert_allclose(
        (oc["transformer.resblocks.1.attn.in_proj_weight"] @ x
         + oc["transformer.resblocks.1.attn.in_proj_bias"])[:TW], q, rtol=1e-5)
    np.testing.assert_array_equal(hf["text_model.encoder.layers.1.self_attn.v_proj.bias"],
                                  oc["transformer.resblocks.1.attn.in_proj_bias"][2 * TW:])


README = Path(__file__).resolve().parents[1] / "README.md"


def test_readme_zero_shot_example_runs_on_a_saved_checkpoint(tmp_path, capsys):
    """The README's walkthrough, on a small CLIP saved in the open_clip layout and three image
    files; its accuracy is the argmax of ``zero_shot_logits`` against the labels."""
    blocks = re.findall(r"```python\n(# zero_shot\.py.*?)```", README.read_text(), re.S)
    assert len(blocks) == 1, "README must hold exactly one zero_shot.py example"
    model = CLIP(dataclasses.replace(SMALL, image_size=16), key=jax.random.key(7))
    folder = save_clip(model, tmp_path / "ckpt")
    rng = np.random.default_rng(3)
    paths = []
    for name in ("plane.jpg", "cat.png", "dog.jpg"):
        paths.append(tmp_path / name)
        Image.fromarray(rng.integers(0, 256, (20, 24, 3), np.uint8)).save(paths[-1])
    code = blocks[0].replace('"checkpoints/ViT-B-32"', repr(str(folder)))
    for path in paths:
        code = code.replace(f'"photos/{path.name}"', repr(str(path)))
    namespace: dict = {}
    exec(compile(code, "README", "exec"), namespace)
    prompts = zero_shot_prompts(clip_tokenizer(), ["airplane", "cat", "dog"])
    pixels = np.stack([preprocess(p, 16) for p in paths])
    logits = np.asarray(eqx.filter_jit(type(model).zero_shot_logits)(
        model, jnp.asarray(pixels), jnp.asarray(prompts)))
    expected = float(np.mean(logits.argmax(1) == np.arange(3)))
    assert namespace["accuracy"] == pytest.approx(expected)
    assert capsys.readouterr().out == f"zero-shot accuracy: {expected:.1%}\n"


@pytest.mark.parametrize("layout", ["open_clip", "hf"])
def test_preprocessing_is_saved_and_read_back(tmp_path, layout):
    model = CLIP("tiny", key=jax.random.key(0))
    mine = Preprocessing(28, **UNNORMALIZED)
    folder = save_clip(model, tmp_path / layout, layout, preprocessing=mine)
    assert load_preprocessing(folder) == mine
    # the toolkit's own images (intensity / 255, unnormalized) come back exactly from a PNG
    digit = np.random.default_rng(0).integers(0, 256, (28, 28), np.uint8)
    Image.fromarray(digit).save(tmp_path / "digit.png")
    np.testing.assert_array_equal(load_preprocessing(folder)(tmp_path / "digit.png"),
                                  np.repeat(digit[None].astype(np.float32) / 255, 3, axis=0))
    default = save_clip(model, tmp_path / "default", layout)
    assert load_preprocessing(default) == Preprocessing(28)  # CLIP's mean and std


def test_preprocessing_absent_or_unsupported(tmp_path, state):
    folder = _write(tmp_path / "oc", "open_clip_config.json", OPEN_CLIP_CFG,
                    "open_clip_model.safetensors", state)
    assert load_preprocessing(folder) == Preprocessing(S)
    save_file(state, str(tmp_path / "bare.safetensors"))
    assert load_preprocessing(tmp_path / "bare.safetensors", model=SMALL) == Preprocessing(S)
    for cfg, message in (({"interpolation": "bilinear"}, r"preprocess_cfg\.interpolation = "
                                                         r"'bilinear' is not supported"),
                         ({"mean": [0.5, 0.5]}, r"mean must be three finite numbers"),
                         ({"size": 2 * S}, rf"image size {2 * S} is not the model's {S}")):
        (folder / "open_clip_config.json").write_text(json.dumps(OPEN_CLIP_CFG | {
            "preprocess_cfg": cfg}))
        with pytest.raises(InputError, match=message):
            load_preprocessing(folder)
    hf = _write(tmp_path / "hf", "config.json", HF_CONFIG, "model.safetensors",
                _hf_from_open_clip(state))
    assert load_preprocessing(hf) == Preprocessing(S)
    for cfg, message in (({"resample": 2}, r"resample = 2 is not supported"),
                         ({"size": {"shortest_edge": S}, "crop_size": S + 1},
                          r"must be one square size"),
                         ({"image_std": [1, 0, 1]}, r"std must be positive")):
        (hf / "preprocessor_config.json").write_text(json.dumps(cfg))
        with pytest.raises(InputError, match=message):
            load_preprocessing(hf)
    model = CLIP("tiny", key=jax.random.key(0))
    with pytest.raises(ValueError, match=r"preprocessing\.size \(32\) must be the model's"):
        save_clip(model, tmp_path / "x", preprocessing=Preprocessing(32))
    with pytest.raises(TypeError, match="preprocessing must be a Preprocessing"):
        save_clip(model, tmp_path / "x", preprocessing={"size": 28})
