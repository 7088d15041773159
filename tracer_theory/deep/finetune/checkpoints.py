"""Checkpoints, written atomically: a finished model (``save_model``/``load_model``) and an
interrupted run with its step and sampler state (``save_run``/``load_run``)."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import equinox as eqx
from jaxtyping import PyTree

from ..._io import write_atomic


def save_model(path: str | os.PathLike, tree: PyTree) -> Path:
    """Atomically write the array leaves of ``tree`` (an equinox model)."""
    return write_atomic(path, lambda f: eqx.tree_serialise_leaves(f, tree), binary=True)


def load_model(path: str | os.PathLike, like: PyTree) -> PyTree:
    """The tree ``save_model`` wrote; ``like`` gives its structure."""
    return eqx.tree_deserialise_leaves(path, like)


def save_run(path: str | os.PathLike, tree: PyTree, step: int,
             info: dict[str, Any] | None = None) -> Path:
    """Atomically write ``tree`` (equinox leaves) with the step and JSON-ready ``info``."""

    def write(f):
        header = json.dumps({"step": step, "info": info or {}}).encode()
        f.write(len(header).to_bytes(8, "little") + header)
        eqx.tree_serialise_leaves(f, tree)

    return write_atomic(path, write, binary=True)


def run_header(path: str | os.PathLike) -> tuple[int, dict[str, Any]]:
    """The ``(step, info)`` of a run ``save_run`` wrote, without reading its arrays."""
    with open(path, "rb") as f:
        size = int.from_bytes(f.read(8), "little")
        header = json.loads(f.read(size))
    return int(header["step"]), header["info"]


def load_run(path: str | os.PathLike, like: PyTree) -> tuple[Any, int, dict[str, Any]]:
    """The ``(tree, step, info)`` that ``save_run`` wrote; ``like`` gives the structure."""
    with open(path, "rb") as f:
        size = int.from_bytes(f.read(8), "little")
        header = json.loads(f.read(size))
        tree = eqx.tree_deserialise_leaves(f, like)
    return tree, int(header["step"]), header["info"]
