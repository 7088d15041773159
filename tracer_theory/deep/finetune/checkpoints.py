"""Checkpoints, written atomically through the keyed cache (``_cache``): a finished model
(``save_model``/``load_model``) and an interrupted run with its step and logged state
(``save_run``/``load_run``). Each is written with the key of what produced it and read back only
for the same key; a truncated or corrupted file is a ``DamagedArtifact`` naming it."""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import IO, Any

import equinox as eqx
from jaxtyping import PyTree

from ..._cache import check_keyed, keyed_header, load_keyed, write_keyed
from ..parallel import barrier, to_host


def save_model(path: str | os.PathLike, tree: PyTree, key: Mapping[str, Any]) -> Path:
    """Atomically write the array leaves of ``tree`` (an equinox model) for ``key``; sharded
    arrays are gathered first, and over several processes process 0 writes while the others
    wait for it."""
    tree = to_host(tree)
    written = write_keyed(path, key, lambda f: eqx.tree_serialise_leaves(f, tree))
    barrier(f"save {path}")
    return written


def load_model(path: str | os.PathLike, like: PyTree, key: Mapping[str, Any], *,
               overwrite: bool = False) -> PyTree | None:
    """The tree ``save_model`` wrote for ``key`` (``like`` gives its structure); ``None`` if
    there is none, or (``overwrite``) if it was written for another key or is damaged."""
    return load_keyed(path, key, lambda f: eqx.tree_deserialise_leaves(f, like),
                      replace=overwrite)


def save_run(path: str | os.PathLike, tree: PyTree, step: int, key: Mapping[str, Any],
             info: dict[str, Any] | None = None) -> Path:
    """Atomically write ``tree`` (equinox leaves) with the step and JSON-ready ``info``, for
    ``key``."""

    tree = to_host(tree)  # sharded state gathered; process 0 writes (``save_model``)

    def write(f: IO[bytes]) -> None:
        header = json.dumps({"step": step, "info": info or {}}).encode()
        f.write(len(header).to_bytes(8, "little") + header)
        eqx.tree_serialise_leaves(f, tree)

    written = write_keyed(path, key, write)
    barrier(f"save {path}")
    return written


def _split(f: IO[bytes]) -> tuple[int, dict[str, Any]]:
    size = int.from_bytes(f.read(8), "little")
    header = json.loads(f.read(size))
    return int(header["step"]), header["info"]


def load_run(path: str | os.PathLike, like: PyTree | Callable[[dict[str, Any]], PyTree],
             key: Mapping[str, Any] | None = None, *, overwrite: bool = False
             ) -> tuple[Any, int, dict[str, Any]] | None:
    """The ``(tree, step, info)`` that ``save_run`` wrote for ``key`` (``None``: whatever key it
    was written for, to inspect a file); ``like`` gives the structure (or builds it from
    ``info``). ``None`` if there is none, or (``overwrite``) if it was written for another key
    or is damaged."""
    if key is None:
        key = keyed_header(path)["key"]

    def load(f: IO[bytes]):
        step, info = _split(f)
        structure = like(info) if callable(like) and not isinstance(like, eqx.Module) else like
        return eqx.tree_deserialise_leaves(f, structure), step, info

    return load_keyed(path, key, load, replace=overwrite)


def run_header(path: str | os.PathLike) -> tuple[int, dict[str, Any]]:
    """The ``(step, info)`` of a run ``save_run`` wrote, whatever its key (for inspection)."""
    key = keyed_header(path)["key"]
    return load_keyed(path, key, _split)


def check_run(path: str | os.PathLike, run: Mapping[str, Any], *, overwrite: bool = False
              ) -> None:
    """Refuse, before any work, a run checkpoint at ``path`` (of ``loop.finetune``) that a
    caller's run key ``run`` did not write, or a damaged one (``ResumeMismatch`` /
    ``DamagedArtifact`` naming it); nothing when there is none, or with ``overwrite``."""
    path = Path(path)
    if overwrite or not path.exists():
        return
    header = keyed_header(path)
    check_keyed(path, {**header["key"], "run": dict(run)})
