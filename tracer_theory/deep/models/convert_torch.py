"""Convert a PyTorch CLIP checkpoint, once, into an open_clip-layout ``.safetensors`` file that
``load_clip(dest, model=...)`` reads without torch.

    python -m tracer_theory.deep.models.convert_torch SOURCE DEST.safetensors [--overwrite]

``SOURCE`` is either OpenAI's TorchScript archive (``ViT-B-32.pt`` from the original CLIP
release: ``torch.jit.load(map_location="cpu").state_dict()``, less its three non-weight entries
``input_resolution``, ``context_length`` and ``vocab_size``, and any causal ``attn_mask``
buffer, which TorchScript saves with the weights) or a pickled state dict
(``torch.save``, read with ``torch.load(weights_only=True)``; a top-level ``"state_dict"`` or
``"model"`` dict, as in open_clip's training checkpoints, is unwrapped and a leading ``module.``
prefix, from ``DistributedDataParallel``, stripped). The tensors are written contiguous with
their dtypes kept (OpenAI's release is float16; ``load_clip`` returns float32), under the same
names, which are open_clip's (``visual.conv1.weight``,
``transformer.resblocks.0.attn.in_proj_weight`` …). The file is written atomically with the
``safetensors`` library.

Needs torch (``pip install 'tracer-theory[torch]'``), imported only when converting. Every
expected failure (a missing or unreadable ``SOURCE``, a file that is not a torch checkpoint, holds
no tensors or no ``visual.*`` ones, ``DEST`` not ending in ``.safetensors`` or existing without
``--overwrite``)
is one line naming the path on stderr and exit code 3 (2 for a usage error or torch missing).
"""

from __future__ import annotations

import argparse
import os
import pickle
import re
import sys
import warnings
from collections.abc import Sequence
from pathlib import Path

from ..._io import write_atomic

#: The extra that installs torch.
TORCH_EXTRA = "pip install 'tracer-theory[torch]'"
#: Entries of OpenAI's TorchScript state dicts that are sizes, not weights.
NON_WEIGHTS = ("input_resolution", "context_length", "vocab_size")
#: The last name part of derived buffers that are no weights either: the causal attention mask,
#: a non-persistent buffer of open_clip that TorchScript saves with the weights all the same.
DERIVED = "attn_mask"
#: Exit codes, as the ``tracer-theory`` command's: 2 a usage error (or torch missing), 3 a file
#: that cannot be read, converted or written.
EXIT_OK, EXIT_USAGE, EXIT_INPUT = 0, 2, 3
_PROG = "python -m tracer_theory.deep.models.convert_torch"


class ConversionError(Exception):
    """An expected failure: the message is the one line printed (it names the path)."""

    code = EXIT_INPUT


class MissingTorch(ConversionError):
    """torch is not installed (the optional extra)."""

    code = EXIT_USAGE


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
        raise MissingTorch(f"converting a torch checkpoint needs torch: {TORCH_EXTRA}"
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
            with warnings.catch_warnings():  # TorchScript is deprecated; OpenAI's files are it
                warnings.filterwarnings("ignore", "`torch.jit", DeprecationWarning)
                state = torch.jit.load(str(source), map_location="cpu").state_dict()
        except Exception as err:  # torch's own parse errors
            raise ConversionError(f"SOURCE {source} is a TorchScript archive torch cannot load: "
                                  f"{_first_line(err)}") from None
        state = {k: v for k, v in state.items() if k not in NON_WEIGHTS}
    else:
        try:
            state = torch.load(str(source), map_location="cpu", weights_only=True)
        except pickle.UnpicklingError:  # weights_only refused a Python object
            raise ConversionError(f"SOURCE {source} holds Python objects besides tensors that "
                                  "torch.load(weights_only=True) does not read (a whole pickled "
                                  "model?); save its state_dict() instead") from None
        except Exception as err:  # RuntimeError (a damaged archive), EOFError, …
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
        if (isinstance(value, torch.Tensor) and name not in NON_WEIGHTS
                and str(name).rsplit(".", 1)[-1] != DERIVED):
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
    """Write ``{name: contiguous CPU torch tensor}`` to ``dest`` with the ``safetensors``
    library (metadata ``format: pt``, as torch tools expect), atomically."""
    from safetensors.torch import save

    data = save(tensors, metadata={"format": "pt"})
    return write_atomic(dest, lambda f: f.write(data), binary=True)


def _first_line(err: BaseException) -> str:
    """The first line of ``err``'s message, without terminal escapes, at most 160 characters."""
    text = re.sub(r"\x1b\[[0-9;]*m", "", str(err)).strip().splitlines()
    line = text[0] if text else type(err).__name__
    return line if len(line) <= 160 else line[:157] + "..."


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
    """Run the command; returns its exit code (0, or 2 or 3 after printing one line)."""
    try:
        args = build_parser().parse_args(argv)
    except SystemExit as exit_:  # argparse printed the usage error (or the help)
        return exit_.code if isinstance(exit_.code, int) else EXIT_USAGE
    try:
        summary = convert(args.source, args.dest, overwrite=args.overwrite)
    except ConversionError as err:
        print(f"convert_torch: error: {err}", file=sys.stderr)
        return err.code
    except OSError as err:  # writing DEST: disk full, permissions
        print(f"convert_torch: error: DEST {args.dest} cannot be written: {err.strerror or err}",
              file=sys.stderr)
        return EXIT_INPUT
    except KeyboardInterrupt:
        print("convert_torch: error: interrupted; DEST was not written", file=sys.stderr)
        return 130
    print(f"wrote {summary['tensors']} tensors ({summary['parameters']:,} values, "
          f"{'/'.join(summary['dtypes'])}) to {args.dest}")
    return EXIT_OK


__all__ = ["DERIVED", "NON_WEIGHTS", "TORCH_EXTRA", "ConversionError", "MissingTorch", "convert",
           "main", "read_state_dict", "write_safetensors"]

if __name__ == "__main__":
    sys.exit(main())
