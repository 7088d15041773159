"""Real CLIP weights in and out: open_clip and Hugging Face checkpoints as safetensors.

``load_clip(path)`` builds a ``CLIP`` from local files, nothing downloaded:

- an open_clip folder as published on the model hub (``open_clip_config.json``, whose
  ``model_cfg`` gives the sizes, head width and activation, beside
  ``open_clip_model.safetensors``), or a bare open_clip ``.safetensors`` state dict with its
  architecture named (``model="ViT-B-32-quickgelu"``, a name of ``PRESETS``): the activation and
  the head count are not in the tensors;
- a Hugging Face ``CLIPModel`` folder (``config.json`` beside ``model.safetensors``, or its
  shards and ``model.safetensors.index.json``).

``save_clip(model, path, layout)`` writes the same folders back (with the model's
``tokenizer.json`` where its vocabulary is known), so a model finetuned here goes back to the
user's PyTorch tools; load → save → load is bit-identical. Each layout is a ``Layout`` value that
names every tensor of the model (``Tensor``: its key, the model's arrays it holds and how);
open_clip fuses the query, key and value projections into one ``in_proj`` tensor and stores the
projections as ``x @ W``, Hugging Face keeps them apart and as ``W x``. Tensors are read with the
``safetensors`` package into float32 (a float16 or bfloat16 file widens exactly); any missing,
unexpected, mis-shaped, non-float or non-finite tensor is one ``InputError`` naming every
offending key and the file.
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from safetensors import SafetensorError, safe_open
from safetensors.numpy import save as safetensors_bytes

from ..._io import check_writable, write_atomic, write_json_atomic
from ...errors import InputError
from ..data.images import CLIP_MEAN, CLIP_STD, Preprocessing
from ..data.tokenizer import tokenizer_for_vocabulary
from .clip import CLIP, PRESETS, CLIPPreset, preset as named_preset

Getter = Callable[[Any], Any]


@dataclasses.dataclass(frozen=True)
class Tensor:
    """One tensor of a checkpoint: its ``key``, the model's arrays it holds (``parts``, getters
    on a ``CLIP``) and how: ``"same"`` (one array as it is), ``"transposed"`` (one matrix,
    stored transposed) or ``"stacked"`` (several arrays concatenated along the first axis)."""

    key: str
    parts: tuple[Getter, ...]
    how: str = "same"

    def to_file(self, arrays: list[np.ndarray]) -> np.ndarray:
        """The stored tensor from the model's arrays."""
        return _JOIN[self.how](arrays)

    def to_model(self, stored: np.ndarray) -> list[np.ndarray]:
        """The model's arrays from the stored tensor."""
        return _SPLIT[self.how](stored, len(self.parts))


_JOIN = {"same": lambda a: a[0], "transposed": lambda a: a[0].T,
         "stacked": lambda a: np.concatenate(a, axis=0)}
_SPLIT = {"same": lambda s, n: [s], "transposed": lambda s, n: [s.T],
          "stacked": lambda s, n: np.split(s, n, axis=0)}


def _blocks(tower: Getter, layers: int, prefix: str, names: Mapping[str, str]
            ) -> list[Tensor]:
    """The tensors of a transformer stack: ``names`` maps our block's parts (``ln1``, ``qkv``
    or ``q``/``k``/``v``, ``out``, ``ln2``, ``fc``, ``proj``) to the layout's names."""
    out: list[Tensor] = []
    for i in range(layers):
        def block(m, i=i):
            return tower(m).blocks[i]

        parts: dict[str, Callable[[Any], Any]] = {
            "ln1": lambda m, b=block: b(m).ln1, "ln2": lambda m, b=block: b(m).ln2,
            "fc": lambda m, b=block: b(m).fc, "proj": lambda m, b=block: b(m).proj,
            "out": lambda m, b=block: b(m).attn.output_proj,
            "q": lambda m, b=block: b(m).attn.query_proj,
            "k": lambda m, b=block: b(m).attn.key_proj,
            "v": lambda m, b=block: b(m).attn.value_proj}
        for ours, theirs in names.items():
            key = f"{prefix}.{i}.{theirs}"
            if ours == "qkv":  # fused query, key and value: in_proj_weight, in_proj_bias
                for leaf in ("weight", "bias"):
                    out.append(Tensor(f"{key}_{leaf}", tuple(
                        (lambda m, p=parts[x], leaf=leaf: getattr(p(m), leaf)) for x in "qkv"),
                        "stacked"))
            else:
                out += [Tensor(f"{key}.{leaf}",
                               ((lambda m, p=parts[ours], leaf=leaf: getattr(p(m), leaf)),))
                        for leaf in ("weight", "bias")]
    return out


def _norm(key: str, get: Getter) -> list[Tensor]:
    return [Tensor(f"{key}.weight", (lambda m: get(m).weight,)),
            Tensor(f"{key}.bias", (lambda m: get(m).bias,))]


def _one(key: str, get: Getter, how: str = "same") -> Tensor:
    return Tensor(key, (get,), how)


def _image(m):
    return m.image


def _text(m):
    return m.text


# --------------------------------------------------------------------------------------------
# open_clip


_OPEN_CLIP_BLOCK = {"ln1": "ln_1", "qkv": "attn.in_proj", "out": "attn.out_proj", "ln2": "ln_2",
                    "fc": "mlp.c_fc", "proj": "mlp.c_proj"}


def _open_clip_tensors(p: CLIPPreset) -> list[Tensor]:
    return [
        _one("visual.conv1.weight", lambda m: m.image.patch_embed.weight),
        _one("visual.class_embedding", lambda m: m.image.class_embedding),
        _one("visual.positional_embedding", lambda m: m.image.positional_embedding),
        *_norm("visual.ln_pre", lambda m: m.image.ln_pre),
        *_blocks(lambda m: m.image.transformer, p.layers, "visual.transformer.resblocks",
                 _OPEN_CLIP_BLOCK),
        *_norm("visual.ln_post", lambda m: m.image.ln_post),
        _one("visual.proj", lambda m: m.image_proj.weight, "transposed"),
        _one("token_embedding.weight", lambda m: m.text.token_embedding.weight),
        _one("positional_embedding", lambda m: m.text.positional_embedding),
        *_blocks(lambda m: m.text.transformer, p.text_layers, "transformer.resblocks",
                 _OPEN_CLIP_BLOCK),
        *_norm("ln_final", lambda m: m.text.ln_final),
        _one("text_projection", lambda m: m.text_proj.weight, "transposed"),
        _one("logit_scale", lambda m: m.log_scale)]


#: open_clip options this CLIP does not have, and the value that means "as CLIP": any other
#: value in a checkpoint's config is refused by name.
_OPEN_CLIP_AS_CLIP = {
    "vision_cfg": {"timm_model_name": None, "ls_init_value": None, "attentional_pool": False,
                   "no_ln_pre": False, "pool_type": "tok", "final_ln_after_pool": False,
                   "global_average_pool": False, "pos_embed_type": "learnable",
                   "norm_kwargs": None, "proj_bias": False, "attn_pooler_heads": None},
    "text_cfg": {"hf_model_name": None, "ls_init_value": None, "pool_type": "argmax",
                 "no_causal_mask": False, "embed_cls": False, "proj_bias": False,
                 "final_ln_after_pool": False, "norm_kwargs": None, "proj_type": "linear"},
    "model_cfg": {"init_logit_bias": None, "custom_text": False}}


def _open_clip_preset(config: Mapping[str, Any], file: Path) -> CLIPPreset:
    """The preset an ``open_clip_config.json``'s ``model_cfg`` describes (open_clip's defaults
    for the fields it leaves out)."""
    cfg = config.get("model_cfg", config)
    vision, text = cfg.get("vision_cfg", {}), cfg.get("text_cfg", {})
    if not isinstance(vision, dict) or not isinstance(text, dict):
        raise InputError(f"{file}: model_cfg.vision_cfg and model_cfg.text_cfg must be objects")
    for section, values in (("vision_cfg", vision), ("text_cfg", text), ("model_cfg", cfg)):
        for option, clip in _OPEN_CLIP_AS_CLIP[section].items():
            value = values.get(option)  # None: open_clip's default
            if not (value is None or value == clip or (clip in (None, False) and not value)):
                raise InputError(f"{file}: {section}.{option} = {values[option]!r} is not "
                                 f"supported (this CLIP is the standard one: {option} = "
                                 f"{clip!r})")
    acts = {json.dumps(v.get("act_kwargs")) for v in (vision, text)}
    activation = ("quick_gelu" if cfg.get("quick_gelu", False) else
                  {"null": "gelu", json.dumps({"approximate": "tanh"}): "gelu_tanh"}.get(
                      acts.pop() if len(acts) == 1 else "", ""))
    if not activation:
        raise InputError(f"{file}: act_kwargs {sorted(acts)} are not supported (only exact GELU, "
                         "QuickGELU, or GELU with approximate='tanh' in both towers)")
    size, patch = vision.get("image_size", 224), vision.get("patch_size", 16)
    for field, value in (("image_size", size), ("patch_size", patch)):
        if isinstance(value, list | tuple):
            if len(set(value)) != 1:
                raise InputError(f"{file}: vision_cfg.{field} = {value} is not square")
            value = value[0]
        if field == "image_size":
            size = value
        else:
            patch = value
    ratios = {vision.get("mlp_ratio", 4.0), text.get("mlp_ratio", 4.0)}
    if len(ratios) != 1 or float(next(iter(ratios))) != int(next(iter(ratios))):
        raise InputError(f"{file}: mlp_ratio {sorted(ratios)} must be one integer for both "
                         "towers")
    width = vision.get("width", 768)
    heads = width // vision.get("head_width", 64)
    return _preset(file, image_size=size, patch_size=patch, width=width,
                   layers=vision.get("layers", 12), heads=heads,
                   mlp_ratio=int(next(iter(ratios))), text_width=text.get("width", 512),
                   text_layers=text.get("layers", 12), text_heads=text.get("heads", 8),
                   context=text.get("context_length", 77),
                   vocab_size=text.get("vocab_size", 49408), dim=cfg.get("embed_dim", 512),
                   activation=activation)


def _open_clip_config(p: CLIPPreset, pre: Preprocessing) -> dict[str, dict[str, Any]]:
    act = {"act_kwargs": {"approximate": "tanh"}} if p.activation == "gelu_tanh" else {}
    vision = {"image_size": p.image_size, "layers": p.layers, "width": p.width,
              "patch_size": p.patch_size, "head_width": p.width // p.heads,
              "mlp_ratio": float(p.mlp_ratio), **act}
    text = {"context_length": p.context, "vocab_size": p.vocab_size, "width": p.text_width,
            "heads": p.text_heads, "layers": p.text_layers, "mlp_ratio": float(p.mlp_ratio),
            **act}
    return {"open_clip_config.json": {
        "model_cfg": {"embed_dim": p.dim, "quick_gelu": p.activation == "quick_gelu",
                      "vision_cfg": vision, "text_cfg": text},
        "preprocess_cfg": {"size": pre.size, "mean": list(pre.mean), "std": list(pre.std),
                           "interpolation": "bicubic", "resize_mode": "shortest"}}}


def _open_clip_preprocessing(folder: Path, p: CLIPPreset) -> Preprocessing:
    """``preprocess_cfg`` of ``open_clip_config.json`` (open_clip's defaults where absent)."""
    file = folder / "open_clip_config.json"
    cfg = _read_json(file).get("preprocess_cfg") or {} if file.is_file() else {}
    for option, supported in (("interpolation", "bicubic"), ("resize_mode", "shortest")):
        if cfg.get(option, supported) != supported:
            raise InputError(f"{file}: preprocess_cfg.{option} = {cfg[option]!r} is not "
                             f"supported (CLIP's preprocessing: {supported})")
    size = cfg.get("size", p.image_size)
    size = size[0] if isinstance(size, list | tuple) and len(set(size)) == 1 else size
    return _preprocessing(file, size, p, cfg.get("mean", CLIP_MEAN), cfg.get("std", CLIP_STD))


def _preprocessing(file: Path, size: Any, p: CLIPPreset, mean: Any, std: Any) -> Preprocessing:
    if size != p.image_size:
        raise InputError(f"{file}: the preprocessing's image size {size!r} is not the model's "
                         f"{p.image_size}")
    try:
        return Preprocessing(p.image_size, tuple(mean), tuple(std))
    except (TypeError, ValueError) as err:
        raise InputError(f"{file}: {err}") from None


# --------------------------------------------------------------------------------------------
# Hugging Face


_HF_BLOCK = {"ln1": "layer_norm1", "q": "self_attn.q_proj", "k": "self_attn.k_proj",
             "v": "self_attn.v_proj", "out": "self_attn.out_proj", "ln2": "layer_norm2",
             "fc": "mlp.fc1", "proj": "mlp.fc2"}


def _hf_tensors(p: CLIPPreset) -> list[Tensor]:
    return [
        _one("vision_model.embeddings.patch_embedding.weight",
             lambda m: m.image.patch_embed.weight),
        _one("vision_model.embeddings.class_embedding", lambda m: m.image.class_embedding),
        _one("vision_model.embeddings.position_embedding.weight",
             lambda m: m.image.positional_embedding),
        *_norm("vision_model.pre_layrnorm", lambda m: m.image.ln_pre),  # sic, as HF spells it
        *_blocks(lambda m: m.image.transformer, p.layers, "vision_model.encoder.layers",
                 _HF_BLOCK),
        *_norm("vision_model.post_layernorm", lambda m: m.image.ln_post),
        _one("visual_projection.weight", lambda m: m.image_proj.weight),
        _one("text_model.embeddings.token_embedding.weight",
             lambda m: m.text.token_embedding.weight),
        _one("text_model.embeddings.position_embedding.weight",
             lambda m: m.text.positional_embedding),
        *_blocks(lambda m: m.text.transformer, p.text_layers, "text_model.encoder.layers",
                 _HF_BLOCK),
        *_norm("text_model.final_layer_norm", lambda m: m.text.ln_final),
        _one("text_projection.weight", lambda m: m.text_proj.weight),
        _one("logit_scale", lambda m: m.log_scale)]


#: Hugging Face's activation names and ours.
_HF_ACTIVATIONS = {"quick_gelu": "quick_gelu", "gelu": "gelu", "gelu_pytorch_tanh": "gelu_tanh",
                   "gelu_new": "gelu_tanh"}
_TO_HF_ACTIVATION = {"quick_gelu": "quick_gelu", "gelu": "gelu", "gelu_tanh": "gelu_pytorch_tanh"}
#: ``CLIPTextConfig``/``CLIPVisionConfig`` defaults for fields a ``config.json`` leaves out.
_HF_TEXT = {"vocab_size": 49408, "hidden_size": 512, "intermediate_size": 2048,
            "num_hidden_layers": 12, "num_attention_heads": 8, "max_position_embeddings": 77,
            "hidden_act": "quick_gelu", "layer_norm_eps": 1e-5, "eos_token_id": 2}
_HF_VISION = {"hidden_size": 768, "intermediate_size": 3072, "num_hidden_layers": 12,
              "num_attention_heads": 12, "num_channels": 3, "image_size": 224, "patch_size": 32,
              "hidden_act": "quick_gelu", "layer_norm_eps": 1e-5}


def _hf_preset(config: Mapping[str, Any], file: Path) -> CLIPPreset:
    """The preset a Hugging Face ``CLIPModel`` ``config.json`` describes (the library's
    defaults for the fields it leaves out)."""
    text = _HF_TEXT | (config.get("text_config") or {})
    vision = _HF_VISION | (config.get("vision_config") or {})
    acts = {_HF_ACTIVATIONS.get(c["hidden_act"]) for c in (text, vision)}
    if len(acts) != 1 or None in acts:
        raise InputError(f"{file}: hidden_act {text['hidden_act']!r} (text) and "
                         f"{vision['hidden_act']!r} (vision) must be one of "
                         f"{sorted(_HF_ACTIVATIONS)}, the same for both towers")
    for tower, cfg in (("text_config", text), ("vision_config", vision)):
        if cfg["layer_norm_eps"] != 1e-5:
            raise InputError(f"{file}: {tower}.layer_norm_eps = {cfg['layer_norm_eps']} is not "
                             "supported (CLIP's LayerNorm epsilon is 1e-5)")
    eos = text["eos_token_id"]
    if eos not in (2, text["vocab_size"] - 1):  # 2: HF's legacy "pool at the largest id"
        raise InputError(f"{file}: text_config.eos_token_id = {eos} is not supported: this CLIP "
                         f"pools the text at the largest id ({text['vocab_size'] - 1})")
    ratios = {cfg["intermediate_size"] / cfg["hidden_size"] for cfg in (text, vision)}
    ratio = next(iter(ratios))
    if len(ratios) != 1 or ratio != int(ratio):
        raise InputError(f"{file}: intermediate_size / hidden_size must be one integer for both "
                         f"towers, got {sorted(ratios)}")
    return _preset(file, image_size=vision["image_size"],
                   patch_size=vision["patch_size"], channels=vision["num_channels"],
                   width=vision["hidden_size"], layers=vision["num_hidden_layers"],
                   heads=vision["num_attention_heads"], mlp_ratio=int(ratio),
                   text_width=text["hidden_size"], text_layers=text["num_hidden_layers"],
                   text_heads=text["num_attention_heads"],
                   context=text["max_position_embeddings"], vocab_size=text["vocab_size"],
                   dim=config.get("projection_dim", 512), activation=acts.pop())


def _hf_config(p: CLIPPreset, pre: Preprocessing) -> dict[str, dict[str, Any]]:
    act = _TO_HF_ACTIVATION[p.activation]
    text = {"model_type": "clip_text_model", "vocab_size": p.vocab_size,
            "hidden_size": p.text_width, "intermediate_size": p.mlp_ratio * p.text_width,
            "num_hidden_layers": p.text_layers, "num_attention_heads": p.text_heads,
            "max_position_embeddings": p.context, "hidden_act": act, "layer_norm_eps": 1e-5,
            "projection_dim": p.dim, "eos_token_id": p.vocab_size - 1}
    vision = {"model_type": "clip_vision_model", "hidden_size": p.width,
              "intermediate_size": p.mlp_ratio * p.width, "num_hidden_layers": p.layers,
              "num_attention_heads": p.heads, "num_channels": p.channels,
              "image_size": p.image_size, "patch_size": p.patch_size, "hidden_act": act,
              "layer_norm_eps": 1e-5, "projection_dim": p.dim}
    model = {"architectures": ["CLIPModel"], "model_type": "clip", "projection_dim": p.dim,
             "logit_scale_init_value": 2.6592, "torch_dtype": "float32", "text_config": text,
             "vision_config": vision}
    image = {"image_processor_type": "CLIPImageProcessor", "do_resize": True,
             "size": {"shortest_edge": pre.size}, "resample": _BICUBIC, "do_center_crop": True,
             "crop_size": {"height": pre.size, "width": pre.size}, "do_rescale": True,
             "rescale_factor": 1 / 255, "do_normalize": True, "image_mean": list(pre.mean),
             "image_std": list(pre.std), "do_convert_rgb": True}
    return {"config.json": model, "preprocessor_config.json": image}


#: PIL's code for bicubic resampling, as Hugging Face's image processors store it.
_BICUBIC = 3


def _hf_preprocessing(folder: Path, p: CLIPPreset) -> Preprocessing:
    """``preprocessor_config.json`` (a ``CLIPImageProcessor``; CLIP's defaults if absent)."""
    file = folder / "preprocessor_config.json"
    cfg = _read_json(file) if file.is_file() else {}
    for option, supported in (("resample", _BICUBIC), ("do_resize", True),
                              ("do_center_crop", True), ("do_rescale", True),
                              ("do_normalize", True)):
        if cfg.get(option, supported) != supported:
            raise InputError(f"{file}: {option} = {cfg[option]!r} is not supported (CLIP's "
                             f"preprocessing: {supported})")
    if abs(cfg.get("rescale_factor", 1 / 255) - 1 / 255) > 1e-12:
        raise InputError(f"{file}: rescale_factor = {cfg['rescale_factor']} is not 1/255")
    crop, short = cfg.get("crop_size", p.image_size), cfg.get("size", p.image_size)
    crop = crop.get("height") if isinstance(crop, dict) and len(set(crop.values())) == 1 else crop
    short = short.get("shortest_edge") if isinstance(short, dict) else short
    if crop != short:
        raise InputError(f"{file}: size {cfg.get('size')!r} and crop_size "
                         f"{cfg.get('crop_size')!r} must be one square size (resize the short "
                         "side to it, center crop)")
    return _preprocessing(file, crop, p, cfg.get("image_mean", CLIP_MEAN),
                          cfg.get("image_std", CLIP_STD))


# --------------------------------------------------------------------------------------------
# Layouts


@dataclasses.dataclass(frozen=True)
class Layout:
    """A checkpoint layout: its file names, every tensor of a preset (``tensors``), the preset
    its config file describes (``read_config``), the JSON files that describe a preset and its
    preprocessing (``config``: file name → content), the preprocessing a folder describes
    (``read_preprocessing``), and the keys of buffers it may carry that are not weights
    (``buffers``, regular expressions)."""

    name: str
    config_file: str
    weights_file: str
    tensors: Callable[[CLIPPreset], list[Tensor]]
    read_config: Callable[[Mapping[str, Any], Path], CLIPPreset]
    config: Callable[[CLIPPreset, Preprocessing], dict[str, dict[str, Any]]]
    read_preprocessing: Callable[[Path, CLIPPreset], Preprocessing]
    signature: str  # a key only this layout has
    buffers: tuple[str, ...] = ()

    def is_buffer(self, key: str) -> bool:
        return any(re.fullmatch(b, key) for b in self.buffers)


LAYOUTS: dict[str, Layout] = {layout.name: layout for layout in (
    Layout("open_clip", "open_clip_config.json", "open_clip_model.safetensors",
           _open_clip_tensors, _open_clip_preset, _open_clip_config, _open_clip_preprocessing,
           "visual.conv1.weight",
           # OpenAI's own state dict carries its sizes as scalars; open_clip drops them
           buffers=("input_resolution", "context_length", "vocab_size", "attn_mask")),
    Layout("hf", "config.json", "model.safetensors", _hf_tensors, _hf_preset, _hf_config,
           _hf_preprocessing, "vision_model.embeddings.patch_embedding.weight",
           buffers=(r"(text|vision)_model\.embeddings\.position_ids",)),
)}

_TORCH_FILES = ("open_clip_pytorch_model.bin", "pytorch_model.bin", "model.pt")
_CONVERT = "python -m tracer_theory.deep.models.convert_torch SOURCE DEST.safetensors"


def _preset(file: Path, **fields) -> CLIPPreset:
    """The preset of ``fields``: the standard preset it equals if any, else one named by its
    sizes (so that the same architecture always gets the same name)."""
    f = fields
    fields["name"] = (f"ViT-{f['image_size']}-{f['patch_size']}-w{f['width']}x{f['layers']}-"
                      f"t{f['text_width']}x{f['text_layers']}-d{f['dim']}-{f['activation']}")
    try:
        found = CLIPPreset(**fields)
    except (TypeError, ValueError) as err:
        raise InputError(f"{file}: the architecture it describes is not a CLIP this toolkit "
                         f"builds: {err}") from None
    for standard in PRESETS.values():
        if dataclasses.replace(found, name=standard.name) == standard:
            return standard
    return found


# --------------------------------------------------------------------------------------------
# Reading


class _Stored:
    """The tensors of one or more safetensors files, read lazily (names, shapes, dtypes)."""

    def __init__(self, files: Iterable[Path]):
        self.files: dict[str, Path] = {}
        self.meta: dict[str, tuple[tuple[int, ...], str]] = {}
        for file in files:
            try:
                with safe_open(file, "numpy") as f:
                    for key in f.keys():
                        view = f.get_slice(key)
                        self.files[key] = file
                        self.meta[key] = (tuple(view.get_shape()), view.get_dtype())
            except (SafetensorError, OSError, ValueError) as err:
                raise InputError(f"{file} is not a readable safetensors file (truncated or "
                                 f"another format): {str(err)[:200]}") from None

    def read_all(self) -> dict[str, np.ndarray]:
        """Every tensor, each file opened once."""
        out: dict[str, np.ndarray] = {}
        for file in dict.fromkeys(self.files.values()):
            with safe_open(file, "numpy") as f:
                out |= {key: f.get_tensor(key) for key in f.keys()}
        return out


def _read_json(file: Path) -> dict[str, Any]:
    try:
        data = json.loads(file.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise InputError(f"{file} is not readable JSON: {str(err)[:200]}") from None
    if not isinstance(data, dict):
        raise InputError(f"{file} must hold a JSON object, got {type(data).__name__}")
    return data


def _find(path: Path, model: str | CLIPPreset | None) -> tuple[Layout, CLIPPreset, _Stored]:
    """The layout, preset and tensors of a checkpoint folder or file."""
    if path.is_dir():
        found = [layout for layout in LAYOUTS.values()
                 if (path / layout.config_file).is_file()
                 and ((path / layout.weights_file).is_file()
                      or (path / f"{layout.weights_file}.index.json").is_file())]
        if len(found) > 1:
            raise InputError(f"{path} holds both an open_clip and a Hugging Face checkpoint "
                             f"({', '.join(f.weights_file for f in found)}); give the "
                             "weights file with model=, or separate them")
        if not found:
            torch_files = [f for f in _TORCH_FILES if (path / f).is_file()]
            hint = (f" ({torch_files[0]} is a torch pickle: convert it once with `{_CONVERT}`)"
                    if torch_files else "")
            raise InputError(f"{path} has no CLIP checkpoint: expected open_clip_config.json "
                             "with open_clip_model.safetensors (open_clip) or config.json with "
                             f"model.safetensors (Hugging Face){hint}")
        layout = found[0]
        index = path / f"{layout.weights_file}.index.json"
        if (path / layout.weights_file).is_file():
            files = [path / layout.weights_file]
        else:
            weight_map = _read_json(index).get("weight_map")
            if not isinstance(weight_map, dict):
                raise InputError(f"{index} has no weight_map")
            files = [path / f for f in sorted(set(weight_map.values()))]
            missing = [str(f) for f in files if not f.is_file()]
            if missing:
                raise InputError(f"{index} names shards that do not exist: {missing}")
        stored = _Stored(files)
        preset = (named_preset(model) if model is not None else
                  layout.read_config(_read_json(path / layout.config_file),
                                     path / layout.config_file))
        return layout, preset, stored
    if not path.exists():
        raise InputError(f"no CLIP checkpoint at {path} (no such file or folder)")
    if path.suffix != ".safetensors":
        raise InputError(f"{path} is not a .safetensors file; a torch checkpoint (.pt, .bin, "
                         f".pth) is converted once with `{_CONVERT}`")
    stored = _Stored([path])
    found = [layout for layout in LAYOUTS.values() if layout.signature in stored.meta]
    if not found:
        raise InputError(f"{path} is neither an open_clip nor a Hugging Face CLIP state dict "
                         f"(no {' or '.join(f.signature for f in LAYOUTS.values())})")
    if model is None:
        raise InputError(f"{path} is a bare state dict: the activation and the attention heads "
                         "are not in its tensors, so name the architecture, e.g. "
                         f"load_clip(path, model='ViT-B-32-quickgelu') (one of "
                         f"{sorted(PRESETS)}), or load the folder with its config file")
    return found[0], named_preset(model), stored


def _check(layout: Layout, preset: CLIPPreset, stored: _Stored, tensors: list[Tensor],
           shapes: Mapping[str, tuple[int, ...]], where: str) -> None:
    """One ``InputError`` naming every missing, unexpected, mis-shaped or non-float tensor."""
    problems = []
    for t in tensors:
        if t.key in stored.meta:
            shape, dtype = stored.meta[t.key]
            if shape != shapes[t.key]:
                problems.append(f"{t.key} has shape {shape}, {preset.name} expects "
                                f"{shapes[t.key]}")
            if dtype not in ("F16", "BF16", "F32"):
                problems.append(f"{t.key} has dtype {dtype}, expected F32, F16 or BF16")
    expected = {t.key for t in tensors}
    problems += [f"missing {key}" for key in sorted(expected - stored.meta.keys())]
    problems += [f"unexpected {key}" for key in sorted(stored.meta.keys() - expected)
                 if not layout.is_buffer(key)]
    if problems:
        shown = problems[:25] + ([f"… and {len(problems) - 25} more"] if len(problems) > 25
                                 else [])
        raise InputError(f"{where} is not an {layout.name} checkpoint of the {preset.name} "
                         f"architecture ({len(problems)} problem(s)):\n  " + "\n  ".join(shown))


def _indexed(preset: CLIPPreset) -> tuple[Any, Any, list[jax.ShapeDtypeStruct]]:
    """A ``CLIP`` of ``preset`` whose leaves are their own indices, its tree structure, and
    the shapes of its leaves (nothing is initialized)."""
    shapes = eqx.filter_eval_shape(CLIP, preset, key=jax.random.key(0))
    leaves, treedef = jax.tree.flatten(shapes)
    return jax.tree.unflatten(treedef, list(range(len(leaves)))), treedef, leaves


def load_clip(path: str | os.PathLike, *, model: str | CLIPPreset | None = None) -> CLIP:
    """A ``CLIP`` (float32 parameters) from a local checkpoint (see the module): an open_clip
    or Hugging Face folder, or a bare ``.safetensors`` state dict with ``model`` naming its
    architecture (a name of ``PRESETS`` or a ``CLIPPreset``; for a folder it replaces the
    config file's architecture)."""
    if model is not None and not isinstance(model, str | CLIPPreset):
        raise ValueError(f"model must be a preset name or a CLIPPreset, got {model!r}")
    path = Path(path)
    layout, preset, stored = _find(path, model)
    indexed, treedef, leaves = _indexed(preset)
    tensors = layout.tensors(preset)
    shapes = {t.key: _JOIN[t.how]([np.empty(leaves[get(indexed)].shape, np.uint8)
                                  for get in t.parts]).shape for t in tensors}
    _check(layout, preset, stored, tensors, shapes, str(path))
    values: list[Any] = [None] * len(leaves)
    bad = []
    arrays = stored.read_all()
    for t in tensors:
        stored_tensor = arrays[t.key]
        if not np.isfinite(stored_tensor).all():
            bad.append(t.key)
        for get, array in zip(t.parts, t.to_model(stored_tensor.astype(np.float32)),
                              strict=True):
            values[get(indexed)] = array
    if bad:
        raise InputError(f"{path}: tensors with NaN or Inf values: {bad[:25]}")
    unset = [i for i, v in enumerate(values) if v is None]
    assert not unset, f"layout {layout.name} misses model leaves {unset}"  # a layout bug
    return jax.tree.unflatten(treedef, [jnp.asarray(v, leaf.dtype)
                                        for v, leaf in zip(values, leaves, strict=True)])


def load_preprocessing(path: str | os.PathLike, *, model: str | CLIPPreset | None = None
                       ) -> Preprocessing:
    """How the checkpoint at ``path`` (as ``load_clip`` reads it) expects its images: the
    open_clip ``preprocess_cfg`` or Hugging Face ``preprocessor_config.json`` mean, std and size
    (CLIP's where the folder does not say; CLIP's for a bare state dict). Only CLIP's resize
    (bicubic short side, center crop) is supported; another is refused by name."""
    path = Path(path)
    layout, preset, _ = _find(path, model)
    if not path.is_dir():
        return Preprocessing(preset.image_size)
    return layout.read_preprocessing(path, preset)


# --------------------------------------------------------------------------------------------
# Writing


def checkpoint_tensors(model: CLIP, layout: str = "open_clip") -> dict[str, np.ndarray]:
    """Every tensor of ``model`` in ``layout`` (``"open_clip"`` or ``"hf"``), by key, as
    NumPy arrays in the model's dtype."""
    if not isinstance(model, CLIP):
        raise TypeError(f"model must be a CLIP, got {type(model).__name__}")
    if layout not in LAYOUTS:
        raise ValueError(f"layout must be one of {sorted(LAYOUTS)}, got {layout!r}")
    return {t.key: np.require(t.to_file([np.asarray(get(model)) for get in t.parts]),
                              requirements="C")  # keeps 0-d logit_scale 0-d
            for t in LAYOUTS[layout].tensors(model.preset)}


def save_clip(model: CLIP, path: str | os.PathLike, layout: str = "open_clip", *,
              preprocessing: Preprocessing | None = None) -> Path:
    """Write ``model`` as a ``layout`` checkpoint folder at ``path`` (``"open_clip"``:
    ``open_clip_config.json`` + ``open_clip_model.safetensors``; ``"hf"``: ``config.json`` +
    ``model.safetensors`` + ``preprocessor_config.json``), with its ``preprocessing`` (default
    CLIP's at the model's image size) and its ``tokenizer.json`` where the vocabulary is CLIP's
    or this toolkit's own; each file atomically. Returns the folder."""
    from ..parallel import to_host  # a model sharded over several processes: gathered first

    tensors = checkpoint_tensors(to_host(model), layout)
    if preprocessing is None:
        preprocessing = Preprocessing(model.preset.image_size)
    if not isinstance(preprocessing, Preprocessing):
        raise TypeError(f"preprocessing must be a Preprocessing, got "
                        f"{type(preprocessing).__name__}")
    if preprocessing.size != model.preset.image_size:
        raise ValueError(f"preprocessing.size ({preprocessing.size}) must be the model's image "
                         f"size ({model.preset.image_size})")
    spec = LAYOUTS[layout]
    folder = check_writable(path, folder=True, what="checkpoint folder")
    folder.mkdir(parents=True, exist_ok=True)
    data = safetensors_bytes(tensors, metadata={"format": "pt"})  # "pt": torch tools read it
    write_atomic(folder / spec.weights_file, lambda f: f.write(data), binary=True)
    for name, content in spec.config(model.preset, preprocessing).items():
        write_json_atomic(folder / name, content)
    tokenizer = tokenizer_for_vocabulary(model.preset.vocab_size, model.preset.context)
    if tokenizer is not None:
        text = tokenizer.to_json()
        write_atomic(folder / "tokenizer.json", lambda f: f.write(text))
    return folder


__all__ = ["LAYOUTS", "Layout", "Tensor", "checkpoint_tensors", "load_clip", "load_preprocessing",
           "save_clip"]
