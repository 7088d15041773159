"""Convert a PyTorch CLIP checkpoint, once, into an open_clip-layout ``.safetensors`` file that
``load_clip(dest, model=...)`` reads without torch.

    python -m tracer_theory.deep.models.convert_torch SOURCE DEST.safetensors [--overwrite]

``SOURCE`` is either OpenAI's TorchScript archive (``ViT-B-32.pt`` from the original CLIP
release: ``torch.jit.load(map_location="cpu").state_dict()``, less its three non-weight entries
``input_resolution``, ``context_length`` and ``vocab_size``) or a pickled state dict
(``torch.save``, read with ``torch.load(weights_only=True)``; a top-level ``"state_dict"`` or
``"model"`` dict, as in open_clip's training checkpoints, is unwrapped and a leading ``module.``
prefix, from ``DistributedDataParallel``, stripped). The tensors are written contiguous with
their dtypes kept (OpenAI's release is float16; ``load_clip`` returns float32), under the same
names, which are open_clip's (``visual.conv1.weight``,
``transformer.resblocks.0.attn.in_proj_weight`` …). The file is written atomically, without
the ``safetensors`` package.

Needs torch (``pip install 'tracer-theory[torch]'``), imported only when converting. Every
expected failure (a missing or unreadable ``SOURCE``, a file that is not a torch checkpoint or
holds no tensors, ``DEST`` not ending in ``.safetensors`` or existing without ``--overwrite``)
is one line naming the path on stderr and exit code 2.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path

#: The extra that installs torch.
TORCH_EXTRA = "pip install 'tracer-theory[torch]'"
#: Entries of OpenAI's TorchScript state dicts that are sizes, not weights.
NON_WEIGHTS = ("input_resolution", "context_length", "vocab_size")
EXIT_OK, EXIT_ERROR = 0, 2
_PROG = "python -m tracer_theory.deep.models.convert_torch"
#: safetensors' names of torch's dtypes.
_SAFETENSORS_DTYPES = {"float64": "F64", "float32": "F32", "float16": "F16", "bfloat16": "BF16",
                       "int64": "I64", "int32": "I32", "int16": "I16", "int8": "I8",
                       "uint8": "U8", "bool": "BOOL", "float8_e4m3fn": "F8_E4M3",
                       "float8_e5m2": "F8_E5M2"}


class ConversionError(Exception):
    """An expected failure: the message is the one line printed (it names the path)."""


def _check_paths(source: Path, dest: Path, overwrite: bool) -> None:
    """The checks that need no torch: ``source`` a readable torch-looking file, ``dest`` a
    ``.safetensors`` path that may be written."""
    if not source.exists():
        raise ConversionError(f"SOURCE {source} does not exist")
    if not source.is_file():
        raise ConversionError(f"SOURCE {source} is not a file")
    try:
        with open(source, "rb") as f:
            head = f.read(4)
    except OSError as err:
        raise ConversionError(f"SOURCE {source} cannot be read: {err.strerror}") from None
    # torch.save and torch.jit.save write zip archives; older torch.save a pickle (protocol 2+)
    if not (head.startswith(b"PK\x03\x04") or (len(head) >= 2 and head[0] == 0x80
                                               and 2 <= head[1] <= 5)):
        raise ConversionError(f"SOURCE {source} is not a torch file (neither a TorchScript/"
                              "torch.save zip archive nor a pickle)")
    if dest.suffix != ".safetensors":
        raise ConversionError(f"DEST {dest} must end in .safetensors")
    if dest.is_dir():
        raise ConversionError(f"DEST {dest} is a directory; give a .safetensors file path")
    if dest.exists() and not overwrite:
        raise ConversionError(f"DEST {dest} exists; pass --overwrite to replace it")
    existing = dest.parent
    while not existing.exists():
        existing = existing.parent
    if not existing.is_dir() or not os.access(existing, os.W_OK | os.X_OK):
        raise ConversionError(f"DEST {dest} cannot be written ({existing} is not a writable "
                              "directory)")


def _import_torch():
    try:
        import torch
    except ImportError:  # also sys.modules["torch"] = None
        raise ConversionError(f"converting a torch checkpoint needs torch: {TORCH_EXTRA}"
                              ) from None
    return torch


def _is_torchscript(source: Path) -> bool:
    """Whether ``source`` is a TorchScript archive (it holds ``code/`` and ``constants.pkl``)."""
    import zipfile
    if not zipfile.is_zipfile(source):
        return False
    with zipfile.ZipFile(source) as z:
        names = z.namelist()
    return any("/code/" in n for n in names) and any(n.endswith("/constants.pkl") for n in names)


def read_state_dict(source: str | os.PathLike) -> dict:
    """The tensors of a TorchScript archive or a torch pickle, as an open_clip-layout
    ``{name: tensor}`` (see the module docstring). Raises ``ConversionError``."""
    torch = _import_torch()
    source = Path(source)
    if _is_torchscript(source):
        try:
            state = torch.jit.load(str(source), map_location="cpu").state_dict()
        except Exception as err:  # torch's own parse errors
            raise ConversionError(f"SOURCE {source} is a TorchScript archive torch cannot load: "
                                  f"{_first_line(err)}") from None
        state = {k: v for k, v in state.items() if k not in NON_WEIGHTS}
    else:
        try:
            state = torch.load(str(source), map_location="cpu", weights_only=True)
        except Exception as err:  # UnpicklingError, RuntimeError, …
            raise ConversionError(f"SOURCE {source} is not a torch checkpoint that "
                                  f"torch.load(weights_only=True) reads: {_first_line(err)}"
                                  ) from None
        for wrapper in ("state_dict", "model"):
            if isinstance(state, dict) and isinstance(state.get(wrapper), dict):
                state = state[wrapper]
                break
    if not isinstance(state, dict):
        raise ConversionError(f"SOURCE {source} holds a {type(state).__name__}, not a state "
                              "dict")
    tensors = {}
    for name, value in state.items():
        if isinstance(value, torch.Tensor) and name not in NON_WEIGHTS:
            key = str(name).removeprefix("module.")
            if key in tensors:
                raise ConversionError(f"SOURCE {source}: two tensors are named {key!r} once "
                                      "'module.' is stripped")
            tensors[key] = value.detach().to("cpu").contiguous()
    if not tensors:
        raise ConversionError(f"SOURCE {source} holds no tensors")
    if not any(k.startswith("visual.") for k in tensors):
        example = next(iter(tensors))
        raise ConversionError(f"SOURCE {source} is not an OpenAI/open_clip CLIP state dict (no "
                              f"'visual.*' tensors; the first is {example!r})")
    return tensors


def write_safetensors(tensors: dict, dest: str | os.PathLike) -> Path:
    """Write ``{name: contiguous CPU torch tensor}`` to ``dest`` in the safetensors format
    (8-byte little-endian header length, the JSON header padded to 8 bytes, the raw bytes),
    atomically (a temporary sibling, then ``os.replace``)."""
    import torch

    dest = Path(dest)
    header: dict = {"__metadata__": {"format": "pt"}}
    offset = 0
    order = sorted(tensors)
    for name in order:
        t = tensors[name]
        size = t.numel() * t.element_size()
        header[name] = {"dtype": _dtype_name(t), "shape": list(t.shape),
                        "data_offsets": [offset, offset + size]}
        offset += size
    raw = json.dumps(header, separators=(",", ":")).encode("utf-8")
    raw += b" " * (-len(raw) % 8)
    dest.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=dest.parent, prefix=f".{dest.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(len(raw).to_bytes(8, "little"))
            f.write(raw)
            for name in order:
                t = tensors[name]
                if t.numel():
                    f.write(t.reshape(-1).view(torch.uint8).numpy().tobytes())
        os.chmod(tmp, 0o644)
        os.replace(tmp, dest)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return dest


def _dtype_name(t) -> str:
    name = str(t.dtype).removeprefix("torch.")
    if name not in _SAFETENSORS_DTYPES:
        raise ConversionError(f"tensor of dtype {name} has no safetensors name")
    return _SAFETENSORS_DTYPES[name]


def _first_line(err: BaseException) -> str:
    text = str(err).strip().splitlines()
    return (text[0] if text else type(err).__name__)[:200]


def convert(source: str | os.PathLike, dest: str | os.PathLike, *, overwrite: bool = False
            ) -> dict:
    """Convert ``source`` into the open_clip-layout safetensors file ``dest``; returns a summary
    (tensors, parameters, dtypes). Raises ``ConversionError`` with a one-line message."""
    source, dest = Path(source), Path(dest)
    _check_paths(source, dest, overwrite)
    tensors = read_state_dict(source)
    write_safetensors(tensors, dest)
    return {"tensors": len(tensors), "parameters": sum(t.numel() for t in tensors.values()),
            "dtypes": sorted({str(t.dtype).removeprefix("torch.") for t in tensors.values()})}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog=_PROG, description=__doc__.split("\n\n")[0])
    parser.add_argument("source", metavar="SOURCE", type=Path,
                        help="OpenAI's TorchScript .pt or a torch.save'd state dict")
    parser.add_argument("dest", metavar="DEST", type=Path, help="the .safetensors file to write")
    parser.add_argument("--overwrite", action="store_true", help="replace DEST if it exists")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command; returns its exit code (0, or 2 after printing one line)."""
    try:
        args = build_parser().parse_args(argv)
    except SystemExit as exit_:  # argparse printed the usage error (or the help)
        return exit_.code if isinstance(exit_.code, int) else EXIT_ERROR
    try:
        summary = convert(args.source, args.dest, overwrite=args.overwrite)
    except ConversionError as err:
        print(f"convert_torch: error: {err}", file=sys.stderr)
        return EXIT_ERROR
    except OSError as err:  # writing DEST: disk full, permissions
        print(f"convert_torch: error: DEST {args.dest} cannot be written: {err.strerror or err}",
              file=sys.stderr)
        return EXIT_ERROR
    except KeyboardInterrupt:
        print("convert_torch: error: interrupted; DEST was not written", file=sys.stderr)
        return 130
    print(f"wrote {summary['tensors']} tensors ({summary['parameters']:,} values, "
          f"{'/'.join(summary['dtypes'])}) to {args.dest}")
    return EXIT_OK


__all__ = ["NON_WEIGHTS", "TORCH_EXTRA", "ConversionError", "convert", "main",
           "read_state_dict", "write_safetensors"]

if __name__ == "__main__":
    sys.exit(main())
