"""Writing results: atomically, so an interrupted run never leaves a half-written file."""

from __future__ import annotations

import json
import math
import os
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any

from .errors import InputError


def write_atomic(path: str | os.PathLike, write: Callable[[IO], None], *,
                 binary: bool = False) -> Path:
    """Write a file through ``write(file)`` into a temporary sibling, then ``os.replace`` it onto
    ``path`` (so readers see the old file or the whole new one, never a partial one). In a
    multi-process JAX run only process 0 writes (``writer``); the others return ``path``."""
    path = Path(path)
    if not writer():
        return path
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        os.chmod(tmp, 0o666 & ~_umask())  # as open() would create it, not mkstemp's 0600
        with os.fdopen(fd, "wb" if binary else "w") as f:
            write(f)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def writer() -> bool:
    """Whether this process writes results, checkpoints and figures: always, but in a
    multi-process JAX run (``jax.distributed``) process 0 alone. Reads JAX only if it is
    loaded."""
    jax = sys.modules.get("jax")
    return jax is None or jax.process_index() == 0


def _umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def check_writable(path: str | os.PathLike, *, folder: bool = False, what: str = "output"
                   ) -> Path:
    """Fail early, before any long work, if ``path`` cannot be written: an ``InputError`` that
    names it (and ``what`` it is, e.g. the flag). ``folder``: ``path`` is a directory to write
    into (it may not exist yet); else a file (whose parent may not exist yet)."""
    path = Path(path)
    target = path if folder else path.parent
    if not folder and path.is_dir():
        raise InputError(f"{what} {path} is a directory; give a file path")
    if folder and path.exists() and not path.is_dir():
        raise InputError(f"{what} {path} exists and is not a directory")
    existing = target
    while not existing.exists():
        existing = existing.parent
    if not existing.is_dir() or not os.access(existing, os.W_OK | os.X_OK):
        raise InputError(f"{what} {path} cannot be written ({existing} is not a writable "
                         "directory)")
    return path


def write_json_atomic(path: str | os.PathLike, data: Any) -> Path:
    """Write ``data`` as JSON to ``path`` atomically (``write_atomic``); returns the path. A
    NaN or Inf anywhere in ``data`` is a ``ValueError`` naming the entry, before anything is
    written: results are finite numbers (or ``null`` where a value is undefined)."""
    bad = non_finite(data)
    if bad is not None:
        raise ValueError(f"refusing to write {path}: {bad[0]} is {bad[1]} (a result must be "
                         "finite; the computation behind it overflowed or is undefined)")

    def write(f):
        json.dump(data, f, indent=2, allow_nan=False)
        f.write("\n")

    return write_atomic(path, write)


def non_finite(data: Any, prefix: str = "") -> tuple[str, float] | None:
    """``(dotted key, value)`` of the first NaN or Inf number in a JSON-ready value, else
    ``None``."""
    if isinstance(data, dict):
        items = data.items()
    elif isinstance(data, list | tuple):
        items = enumerate(data)
    else:
        return (prefix.rstrip(".") or "the value", data) if (
            isinstance(data, float) and not math.isfinite(data)) else None
    for k, v in items:
        found = non_finite(v, f"{prefix}{k}.")
        if found is not None:
            return found
    return None
