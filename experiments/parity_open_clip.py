"""Parity of our CLIP (``tracer_theory.deep.models.load_clip``) with open_clip and Hugging Face
``transformers`` on randomly initialized models, and of our tokenizer with open_clip's.

    pip install -e '.[parity]'          # torch, open_clip_torch, transformers (CPU is enough)
    python experiments/parity_open_clip.py [--models ViT-B-32 custom hf-small] [--converter]
        [--out parity.json]

No network is used: every model is built randomly initialized (``open_clip.create_model(name,
pretrained=None)``, ``transformers.CLIPModel(CLIPConfig(...))``). Before saving, every bias and
LayerNorm parameter (zeros and ones at initialization) is perturbed by N(0, 0.05²) and the logit
scale is set to log 30, so that a loader that drops or mixes up any of them shows.

Models (``--models``, default all):

* ``ViT-B-32``, ``ViT-B-32-quickgelu``: open_clip's architectures (151M parameters each), saved
  as an open_clip folder (``open_clip_config.json`` = ``{"model_cfg": ...}`` +
  ``open_clip_model.safetensors`` from ``model.state_dict()``, which holds parameters only: the
  causal ``attn_mask`` is a non-persistent buffer) and loaded twice: from the folder, and from the
  bare ``.safetensors`` with ``model=<name>`` (a preset of ``PRESETS``);
* ``custom``: a small open_clip config (image 32, patch 8, width 64 with 4 heads, 2 layers; text
  width 64 with 8 heads, 2 layers, context 77, vocabulary 49,408; embedding 48, exact GELU),
  loaded from its folder;
* ``hf-small``: a small ``transformers.CLIPModel`` (image 32, patch 8, vision width 64 with 4
  heads, text width 48 with 4 heads, 2 layers each, projection 40, QuickGELU), saved by
  ``save_pretrained(folder, safe_serialization=True)`` and loaded from that folder.

For each, the table gives the largest relative difference ``max|ours − torch| / max|torch|`` of
the normalized image embeddings (4 random images), the normalized text embeddings (5 captions
tokenized by open_clip's tokenizer, the same ids for both) and the logits ``exp(logit_scale) ·
img @ txtᵀ``, in float32 and float64 (the torch model ``.double()``, ours with every float leaf
cast under ``jax_enable_x64``). The goal is ≤ 1e-5 in float32; float64 separates a real
mismatch (large in both) from float32 rounding (≈1e-13 in float64). Then ``save_clip`` round
trips: each loaded model is saved in both layouts and read back by the torch library of that
layout (``load_state_dict(strict=True)`` for open_clip, ``CLIPModel.from_pretrained`` for HF)
and compared with the source model the same way (float32).

``--converter`` also checks ``python -m tracer_theory.deep.models.convert_torch`` on the
open_clip ViT models: a ``torch.save``'d training checkpoint (``{"epoch", "state_dict"}``,
``module.`` keys) and a TorchScript archive made as OpenAI's (traced, float16, with the
``input_resolution``/``context_length``/``vocab_size`` entries), each converted, loaded with
``load_clip(dest, model=name)`` and compared with the torch model (the float16 one with the
float16-rounded torch model).

Last, the tokenizer: ``tracer_theory.deep.data.clip_tokenizer()`` against
``open_clip.get_tokenizer("ViT-B-32")`` (open_clip's ``SimpleTokenizer``, whose vocabulary ships
in its wheel) on 30 strings (punctuation, digits, contractions, accents, scripts, emoji, HTML
entities, mojibake, empty and blank text, text past 77 tokens); prints identical rows / total and
every differing row, then apart, not in the pass criterion, two texts that spell a special token
literally (``SPECIAL_TOKEN_STRINGS``).

``--out FILE`` also writes every number as JSON (atomically). Exit code 0 when every float32
row is within 1e-5 and every token row is identical, 1 otherwise, 2 for a missing dependency.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import math
import os
import sys
import tempfile
import time
import warnings
from pathlib import Path

MODELS = ("ViT-B-32", "ViT-B-32-quickgelu", "custom", "hf-small")
#: The float32 goal of the issue: relative difference of embeddings and logits.
GOAL = 1e-5
CUSTOM_CFG = {"embed_dim": 48, "quick_gelu": False,
              "vision_cfg": {"image_size": 32, "layers": 2, "width": 64, "head_width": 16,
                             "patch_size": 8},
              "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 64, "heads": 8,
                           "layers": 2}}
HF_CFG = {"projection_dim": 40,
          "text_config": {"vocab_size": 49408, "hidden_size": 48, "intermediate_size": 192,
                          "num_hidden_layers": 2, "num_attention_heads": 4,
                          "max_position_embeddings": 77, "hidden_act": "quick_gelu"},
          "vision_config": {"hidden_size": 64, "intermediate_size": 256, "num_hidden_layers": 2,
                            "num_attention_heads": 4, "image_size": 32, "patch_size": 8,
                            "hidden_act": "quick_gelu"}}
CAPTIONS = ["a photo of a cat.", "a diagram of a 7-segment display showing 8",
            "Crème brûlée & café au lait 🍰", "a", "an extremely detailed photograph of a "
            "small red bicycle leaning against a weathered blue wooden fence at sunset"]
TOKENIZER_STRINGS = [
    "a photo of a seven", "", "   ", "Hello, World!!!",
    "multiple     spaces\tand\ttabs\n\nnewlines", "don't won't it's we're they've I'm you'll he'd",
    "DON'T SHOUT", "3.14159 and 2,718 and 1e-5",
    "1234567890", "naïve café résumé façade", "Ünïcödé ÀÉÎÕÜ ß ẞ", "Straße İstanbul ǅemal",
    "日本語のテキスト", "中文字符测试", "한국어 텍스트", "Ελληνικά και русский текст",
    "emoji 😀🎉👍🏽 family 👨‍👩‍👧", "&amp; &lt;tag&gt; &quot;quoted&quot; &#39;x&#39; &amp;amp;",
    "<b>bold</b> <i>html</i>", "mojibake: cafÃ© â€œquotesâ€",
    "punctuation: ;:!?()[]{}<>@#$%^*_+=~`|\\/",
    "ellipsis… em—dash – “curly” ‘quotes’", "hyphen-ated words and under_scores",
    "www.example.com/path?q=1&r=2", "user@example.com #hashtag @mention",
    "zero\u200bwidth\u00a0nbsp", "x " * 120,
    "a very long caption " + " ".join(f"word{i}" for i in range(100)),
    "fullwidth ＡＢＣ１２３", "combining e\u0301 vs é",
]
#: Text holding a special token's spelling literally: OpenAI's tokenizer (and ours, and Hugging
#: Face's) reads ``<|startoftext|>``/``<|endoftext|>`` as the special ids, open_clip's
#: ``SimpleTokenizer`` renamed them ``<start_of_text>``/``<end_of_text>``. Reported apart, not
#: part of the pass criterion.
SPECIAL_TOKEN_STRINGS = ["<|startoftext|> literal special <|endoftext|>",
                         "<start_of_text> open_clip's <end_of_text>"]


def require_torch_stack() -> None:
    """A one-line exit (code 2) naming the extra when torch, open_clip, transformers or
    safetensors is missing."""
    missing = [pip for module, pip in (("torch", "torch"), ("open_clip", "open_clip_torch"),
                                       ("transformers", "transformers"),
                                       ("safetensors", "safetensors"))
               if importlib.util.find_spec(module) is None]
    if missing:
        print(f"{Path(sys.argv[0]).name}: error: needs {', '.join(missing)}: "
              "pip install -e '.[parity]'", file=sys.stderr)
        raise SystemExit(2)


def import_open_clip():
    """``open_clip``, importable even where torchvision's compiled ops do not load (a CUDA
    torchvision beside a CPU torch: torchvision then fails registering ``torchvision::nms``,
    which open_clip never calls); the two op schemas are declared and the import retried."""
    import torch
    try:
        import torchvision  # noqa: F401
    except RuntimeError as err:
        if "torchvision::nms" not in str(err):
            raise
        for name in [m for m in sys.modules if m == "torchvision" or m.startswith("torchvision.")]:
            del sys.modules[name]
        lib = torch.library.Library("torchvision", "FRAGMENT")
        for op in ("nms", "qnms"):
            lib.define(f"{op}(Tensor dets, Tensor scores, float iou_threshold) -> Tensor")
        import_open_clip._lib = lib  # keep the registration alive
    import open_clip
    return open_clip


def max_rel(a, b) -> float:
    """``max|a − b| / max|b|`` (b the reference), as a float."""
    import numpy as np
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return float(np.max(np.abs(a - b)) / np.max(np.abs(b)))


# --------------------------------------------------------------------------------------------
# torch side


def perturb(model, seed: int) -> None:
    """Move every all-zero or all-one bias/LayerNorm parameter by N(0, 0.05²), and set the logit
    scale to log 30, in place."""
    import torch
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.ndim == 1 and (torch.all(p == 0) or torch.all(p == 1)):
                p.add_(0.05 * torch.randn(p.shape, generator=gen, dtype=p.dtype))
            if name == "logit_scale":
                p.fill_(math.log(30.0))


def build_torch(name: str, seed: int):
    """``(torch model, kind)`` for a name of ``MODELS``: kind ``"open_clip"`` or ``"hf"``."""
    import torch
    torch.manual_seed(seed)
    if name == "hf-small":
        from transformers import CLIPConfig, CLIPModel
        model = CLIPModel(CLIPConfig(**HF_CFG)).eval()
        kind = "hf"
    else:
        open_clip = import_open_clip()
        if name == "custom":
            model = open_clip.model.CLIP(**CUSTOM_CFG).eval()
        else:
            model = open_clip.create_model(name, pretrained=None).eval()
        kind = "open_clip"
    perturb(model, seed)
    return model, kind


def model_cfg(name: str) -> dict:
    """The open_clip model config of ``name`` (``custom`` or an open_clip model name)."""
    if name == "custom":
        return json.loads(json.dumps(CUSTOM_CFG))
    return import_open_clip().get_model_config(name)


def buffers(model) -> dict:
    """The model's buffers: those its state dict holds (persistent) and those it does not."""
    held = set(model.state_dict())
    names = [n for n, _ in model.named_buffers()]
    return {"persistent": [n for n in names if n in held],
            "non_persistent": [n for n in names if n not in held]}


def save_torch(model, kind: str, name: str, folder: Path) -> None:
    """``model`` saved in its own format under ``folder``."""
    folder.mkdir(parents=True, exist_ok=True)
    if kind == "hf":
        model.save_pretrained(folder, safe_serialization=True)
        return
    from safetensors.torch import save_file
    (folder / "open_clip_config.json").write_text(json.dumps({"model_cfg": model_cfg(name)}))
    save_file({k: v.contiguous() for k, v in model.state_dict().items()},
              str(folder / "open_clip_model.safetensors"))


def torch_outputs(model, kind: str, images, tokens) -> dict:
    """Normalized image and text embeddings and the logits of a torch model (numpy)."""
    import torch
    with torch.no_grad():
        if kind == "hf":
            def feats(out):
                return out if isinstance(out, torch.Tensor) else out.pooler_output
            img = feats(model.get_image_features(pixel_values=images))
            txt = feats(model.get_text_features(input_ids=tokens))
            img, txt = (torch.nn.functional.normalize(x, dim=-1) for x in (img, txt))
        else:
            img = model.encode_image(images, normalize=True)
            txt = model.encode_text(tokens, normalize=True)
        logits = model.logit_scale.exp() * img @ txt.T
    return {"image": img.numpy(), "text": txt.numpy(), "logits": logits.numpy()}


# --------------------------------------------------------------------------------------------
# our side


def our_outputs(model, images, tokens) -> dict:
    import equinox as eqx
    import jax.numpy as jnp
    import numpy as np

    @eqx.filter_jit
    def forward(model, images, tokens):
        img, txt = model.embed_images(images), model.embed_texts(tokens)
        return img, txt, jnp.exp(model.log_scale) * img @ txt.T

    img, txt, logits = forward(model, jnp.asarray(images), jnp.asarray(tokens, jnp.int32))
    return {"image": np.asarray(img), "text": np.asarray(txt), "logits": np.asarray(logits)}


def as_float64(model):
    import equinox as eqx
    import jax
    import jax.numpy as jnp
    return jax.tree.map(lambda x: x.astype(jnp.float64) if eqx.is_inexact_array(x) else x, model)


def compare(ours: dict, ref: dict) -> dict:
    return {k: max_rel(ours[k], ref[k]) for k in ("image", "text", "logits")}


# --------------------------------------------------------------------------------------------
# the runs


def inputs(size: int, seed: int):
    """4 random images (N(0, 1), like normalized pixels) of ``size`` and the captions' ids
    (open_clip's tokenizer), as float64 and int64 numpy arrays."""
    import numpy as np
    rng = np.random.default_rng(seed)
    images = rng.standard_normal((4, 3, size, size))
    tokens = import_open_clip().get_tokenizer("ViT-B-32")(CAPTIONS).numpy()
    return images, tokens


def image_size(model, kind: str) -> int:
    if kind == "hf":
        return model.config.vision_config.image_size
    size = model.visual.image_size
    return size[0] if isinstance(size, tuple | list) else size


def converter_rows(model, name: str, work: Path, t_img, t_tok, ref32: dict) -> list[dict]:
    """``convert_torch`` on two checkpoints of the open_clip ``model``, each loaded back with
    ``load_clip(dest, model=name)`` and compared with the torch model: a ``torch.save``'d
    training checkpoint (``{"epoch", "state_dict"}`` with ``module.`` keys) and a TorchScript
    archive made as OpenAI's (a trace, in float16, with the ``input_resolution``,
    ``context_length`` and ``vocab_size`` entries), against the float16-rounded model."""
    import copy

    import torch

    from tracer_theory.deep.models import load_clip
    from tracer_theory.deep.models.convert_torch import convert

    rows = []
    pickle = work / f"{name}-ckpt.pt"
    torch.save({"epoch": 1, "state_dict": {f"module.{k}": v for k, v in
                                           model.state_dict().items()}}, pickle)
    scripted = copy.deepcopy(model)
    del scripted.context_length, scripted.vocab_size  # plain ints in open_clip: buffers here
    size = image_size(model, "open_clip")
    for key, value in (("input_resolution", size), ("context_length", 77),
                       ("vocab_size", 49408)):
        scripted.register_buffer(key, torch.tensor(value))
    archive = work / f"{name}-openai.pt"
    with torch.no_grad(), warnings.catch_warnings():  # TorchScript is deprecated: OpenAI's own
        warnings.filterwarnings("ignore", category=DeprecationWarning)
        traced = torch.jit.trace(scripted, (t_img[:1], t_tok[:1]), check_trace=False).half()
        torch.jit.save(traced, str(archive))
    rounded = copy.deepcopy(model).half().float()
    for label, source, ref in (("pickle", pickle, ref32),
                               ("torchscript fp16", archive,
                                torch_outputs(rounded, "open_clip", t_img, t_tok))):
        dest = work / f"{name}-{label.split()[0]}.safetensors"
        summary = convert(source, dest)
        ours = load_clip(dest, model=name)
        diff = compare(our_outputs(ours, t_img.numpy(), t_tok.numpy()), ref)
        rows.append({"model": name, "source": f"convert_torch {label}", "dtype": "float32",
                     **diff, "converted": summary})
    return rows


def run_model(name: str, work: Path, seed: int, converter: bool = False) -> list[dict]:
    """Rows of the parity table for one model (see the module docstring)."""
    import jax
    import numpy as np
    import torch

    from tracer_theory.deep.models import load_clip, save_clip

    model, kind = build_torch(name, seed)
    print(f"  [{name}: {sum(p.numel() for p in model.parameters()):,} parameters; buffers "
          f"{buffers(model)}]", file=sys.stderr)
    folder = work / name
    t0 = time.perf_counter()
    save_torch(model, kind, name, folder)
    images, tokens = inputs(image_size(model, kind), seed)
    t_img, t_tok = torch.from_numpy(images).float(), torch.from_numpy(tokens)
    ref32 = torch_outputs(model, kind, t_img, t_tok)
    sources = {"folder": lambda: load_clip(folder)}
    if kind == "open_clip" and name != "custom":
        file = folder / "open_clip_model.safetensors"
        sources["bare file"] = lambda: load_clip(file, model=name)
    rows = []
    for source, load in sources.items():
        t1 = time.perf_counter()
        ours = load()
        load_s = time.perf_counter() - t1
        dtypes = sorted({str(x.dtype) for x in jax.tree.leaves(ours)
                         if hasattr(x, "dtype") and np.issubdtype(x.dtype, np.floating)})
        diff = compare(our_outputs(ours, images.astype(np.float32), tokens), ref32)
        rows.append({"model": name, "source": f"{kind} {source}", "dtype": "float32",
                     **diff, "param_dtypes": dtypes, "load_s": round(load_s, 2)})
    # float64: the torch model in double, ours cast (x64 on from here on)
    jax.config.update("jax_enable_x64", True)
    ref64 = torch_outputs(model.double(), kind, torch.from_numpy(images), t_tok)
    diff = compare(our_outputs(as_float64(ours), images, tokens), ref64)
    rows.append({"model": name, "source": f"{kind} {source}", "dtype": "float64", **diff})
    jax.config.update("jax_enable_x64", False)
    model.float()
    # save_clip round trips: ours -> each layout -> its torch library, against the source model
    for layout in ("open_clip", "hf"):
        out = work / f"{name}-saved-{layout}"
        try:
            save_clip(ours, out, layout=layout)
            back, back_kind = read_back(out, layout)
            diff = compare(torch_outputs(back, back_kind, t_img, t_tok), ref32)
            rows.append({"model": name, "source": f"save_clip -> {layout}", "dtype": "float32",
                         **diff})
        except Exception as err:  # report, keep going
            rows.append({"model": name, "source": f"save_clip -> {layout}", "dtype": "float32",
                         "error": f"{type(err).__name__}: {str(err)[:300]}"})
    if converter and kind == "open_clip" and name != "custom":
        rows.extend(converter_rows(model, name, work, t_img, t_tok, ref32))
    for path in work.glob(f"{name}*"):
        _remove(path)
    print(f"  [{name}: {time.perf_counter() - t0:.0f} s]", file=sys.stderr)
    return rows


def read_back(folder: Path, layout: str):
    """The torch model a ``save_clip`` folder of ``layout`` holds, loaded strictly."""
    if layout == "hf":
        from transformers import CLIPModel
        return CLIPModel.from_pretrained(folder, local_files_only=True).eval(), "hf"
    from safetensors.torch import load_file
    open_clip = import_open_clip()
    cfg = json.loads((folder / "open_clip_config.json").read_text())["model_cfg"]
    model = open_clip.model.CLIP(**cfg).eval()
    model.load_state_dict(load_file(str(folder / "open_clip_model.safetensors")), strict=True)
    return model, "open_clip"


def _remove(path: Path) -> None:
    if path.is_dir():
        for p in path.iterdir():
            _remove(p)
        path.rmdir()
    else:
        path.unlink()


def tokenizer_rows(strings: list[str]) -> tuple[int, list[dict]]:
    """``(identical rows, differing rows)`` of our tokenizer against open_clip's."""
    import numpy as np

    from tracer_theory.deep.data import clip_tokenizer
    ours = clip_tokenizer()(strings)
    theirs = import_open_clip().get_tokenizer("ViT-B-32")(strings).numpy()
    differ = []
    for text, a, b in zip(strings, ours, theirs, strict=True):
        if not np.array_equal(a, b):
            cut = lambda r: [int(x) for x in r[: max(np.flatnonzero(r)[-1] + 1, 1)]]  # noqa: E731
            differ.append({"text": text, "ours": cut(a), "open_clip": cut(b)})
    return len(strings) - len(differ), differ


def format_table(rows: list[dict]) -> str:
    head = f"{'model':20s}{'source':32s}{'dtype':9s}{'image':>10s}{'text':>10s}{'logits':>10s}  ok"
    lines = [head, "-" * len(head)]
    for r in rows:
        if "error" in r:
            lines.append(f"{r['model']:20s}{r['source']:32s}{r['dtype']:9s}  ERROR {r['error']}")
            continue
        ok = "" if r["dtype"] != "float32" else (
            "yes" if max(r["image"], r["text"], r["logits"]) <= GOAL else "NO")
        lines.append(f"{r['model']:20s}{r['source']:32s}{r['dtype']:9s}{r['image']:10.1e}"
                     f"{r['text']:10.1e}{r['logits']:10.1e}  {ok}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", nargs="+", choices=MODELS, default=list(MODELS))
    parser.add_argument("--out", type=Path, default=None, help="write the table as JSON here")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--converter", action="store_true",
                        help="also check convert_torch on the open_clip ViT models: a "
                             "torch.save'd checkpoint and an OpenAI-style TorchScript archive")
    args = parser.parse_args(argv)
    require_torch_stack()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    try:
        from tracer_theory.deep.models import load_clip, save_clip  # noqa: F401
    except ImportError as err:
        print(f"parity_open_clip.py: error: {err}", file=sys.stderr)
        return 2
    if args.out is not None:
        from tracer_theory._io import check_writable
        check_writable(args.out, what="--out")
    import jax
    import torch
    import transformers
    open_clip = import_open_clip()
    torch.set_num_threads(len(os.sched_getaffinity(0)))
    print(f"torch {torch.__version__}, open_clip {open_clip.__version__}, transformers "
          f"{transformers.__version__}, jax {jax.__version__} ({jax.default_backend()})")
    rows = []
    with tempfile.TemporaryDirectory(prefix="parity_") as tmp:
        for name in args.models:
            rows.extend(run_model(name, Path(tmp), args.seed, args.converter))
    print(format_table(rows))
    same, differ = tokenizer_rows(TOKENIZER_STRINGS)
    print(f"\ntokenizer: {same}/{len(TOKENIZER_STRINGS)} rows identical "
          "(clip_tokenizer() vs open_clip.get_tokenizer('ViT-B-32'))")
    for d in differ:
        print(f"  {d['text']!r:.70}\n    ours      {d['ours']}\n    open_clip {d['open_clip']}")
    special_same, special_differ = tokenizer_rows(SPECIAL_TOKEN_STRINGS)
    print(f"special-token spellings in the text (informative): {special_same}/"
          f"{len(SPECIAL_TOKEN_STRINGS)} identical; ours reads OpenAI's <|startoftext|>/"
          "<|endoftext|> as the special ids, open_clip its own <start_of_text>/<end_of_text>")
    for d in special_differ:
        print(f"  {d['text']!r:.70}\n    ours      {d['ours']}\n    open_clip {d['open_clip']}")
    passed = not differ and all("error" not in r and max(r["image"], r["text"], r["logits"])
                                <= GOAL for r in rows if r["dtype"] == "float32")
    if args.out is not None:
        from tracer_theory._io import write_json_atomic
        write_json_atomic(args.out, {"goal": GOAL, "rows": rows, "passed": passed,
                                     "tokenizer": {"identical": same,
                                                   "total": len(TOKENIZER_STRINGS),
                                                   "differing": differ,
                                                   "special_token_strings": {
                                                       "identical": special_same,
                                                       "total": len(SPECIAL_TOKEN_STRINGS),
                                                       "differing": special_differ}}})
        print(f"wrote {args.out}")
    return 0 if passed else 1


if __name__ == "__main__":
    sys.exit(main())
