"""One keyed cache: every artifact a run reuses is written with the key of the settings it was
made for, and reused only on an exact match of that key.

Two kinds of file share the mechanism:

* **records** (JSON results): the key is the record's ``"config"`` field (``read_record``);
* **binary artifacts** (checkpoints, pretrained models, Gram eigendecompositions):
  ``MAGIC``, an 8-byte header length, a JSON header ``{"key", "size", "sha256"}``, then the
  payload (``write_keyed`` / ``read_keyed`` / ``load_keyed``), so a truncated or corrupted file is
  recognised before it is parsed.

A file written for other settings is a ``ResumeMismatch`` that names what differs; a damaged
one (truncated, corrupted, missing a field, or not written by this mechanism) a
``DamagedArtifact`` that names the file. Both say the way out (``--overwrite``, or delete the
file) and are raised before the artifact is used.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import IO, Any, TypeVar

import jax
import numpy as np
from jaxtyping import PyTree

from ._io import write_atomic, write_json_atomic
from .errors import DamagedArtifact, ResumeMismatch

T = TypeVar("T")

#: The first bytes of a binary keyed artifact (and its format's version).
MAGIC = b"TTKEYED1"
#: What every message offers as the way out.
WAY_OUT = "rerun with --overwrite (API: overwrite=True), or delete that file"


def cache_key(value: Mapping[str, Any]) -> dict[str, Any]:
    """``value`` as the JSON value it is compared as (tuples become lists, other objects their
    ``str``): keys are equal exactly when their JSON texts are."""
    return json.loads(json.dumps(value, default=str))


def array_digest(tree: PyTree) -> str:
    """SHA-256 (16 hex digits) of the array leaves of ``tree`` (dtypes, shapes and bytes; PRNG
    keys by their key data) and of its number and string leaves: a fingerprint of data or
    weights for a cache key. Other leaves (functions) are left out."""
    digest = hashlib.sha256()
    for leaf in jax.tree.leaves(tree):
        if isinstance(leaf, jax.Array | np.ndarray | np.generic):
            if isinstance(leaf, jax.Array) and jax.dtypes.issubdtype(leaf.dtype,
                                                                     jax.dtypes.prng_key):
                leaf = jax.random.key_data(leaf)
            arr = np.ascontiguousarray(np.asarray(leaf))
            digest.update(f"{arr.dtype}{arr.shape}".encode() + arr.tobytes())
        elif isinstance(leaf, bool | int | float | str):
            digest.update(repr(leaf).encode())
    return digest.hexdigest()[:16]


def key_digest(key: Mapping[str, Any], length: int = 12) -> str:
    """A short hash of a JSON key (its sorted text), for naming a cache file after it."""
    return hashlib.sha256(json.dumps(key, sort_keys=True, default=str).encode()).hexdigest()[
        :length]


def differences(old: Any, new: Any, prefix: str = "") -> list[tuple[str, Any, Any]]:
    """``(dotted key, old, new)`` where two JSON values differ."""
    if isinstance(old, dict) and isinstance(new, dict):
        return [d for k in sorted(set(old) | set(new), key=str)
                for d in differences(old.get(k), new.get(k), f"{prefix}{k}.")]
    return [] if old == new else [(prefix.rstrip(".") or "key", old, new)]


def _mismatch(path: Path, found: Any, key: Mapping[str, Any]) -> ResumeMismatch:
    changes = "; ".join(f"{k}: {_short(a)} → {_short(b)}"
                        for k, a, b in differences(found, dict(key))[:6])
    return ResumeMismatch(f"{path} was written for other settings ({changes}); use a fresh "
                          f"--out folder, or {WAY_OUT}")


def _short(value: Any, limit: int = 60) -> str:
    text = str(value)
    return text if len(text) <= limit else text[:limit - 1] + "…"


def _damaged(path: Path, why: str) -> DamagedArtifact:
    return DamagedArtifact(f"{path} is damaged or not a file of this toolkit ({why}); {WAY_OUT}")


# --- JSON records -------------------------------------------------------------------------------

def read_record(path: str | os.PathLike, key: Mapping[str, Any], *, overwrite: bool = False,
                fields: Iterable[str] = ()) -> dict[str, Any] | None:
    """The JSON record at ``path`` if it was written for ``key`` (its ``"config"``) and holds
    every one of ``fields``; ``None`` if there is none (or ``overwrite``: it will be rerun)."""
    path = Path(path)
    if overwrite or not path.exists():
        return None
    try:
        record = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, ValueError, RecursionError) as err:
        raise _damaged(path, f"{type(err).__name__}: {err}") from None
    if not isinstance(record, dict) or "config" not in record:
        raise _damaged(path, "no 'config' field")
    if record["config"] != dict(key):
        raise _mismatch(path, record["config"], key)
    missing = [f for f in fields if f not in record]
    if missing:
        raise _damaged(path, f"missing field(s) {missing}")
    return record


def write_record(path: str | os.PathLike, key: Mapping[str, Any], record: Mapping[str, Any]
                 ) -> dict[str, Any]:
    """Atomically write ``{"config": key, **record}`` to ``path``; returns it."""
    full = {"config": dict(key), **{k: v for k, v in record.items() if k != "config"}}
    write_json_atomic(path, full)
    return full


# --- binary artifacts --------------------------------------------------------------------------

def write_keyed(path: str | os.PathLike, key: Mapping[str, Any],
                write: Callable[[IO[bytes]], None]) -> Path:
    """Atomically write the payload ``write(file)`` produces, behind a header holding ``key``,
    its size and its SHA-256."""
    buffer = io.BytesIO()
    write(buffer)
    payload = buffer.getvalue()
    header = json.dumps({"key": dict(key), "size": len(payload),
                         "sha256": hashlib.sha256(payload).hexdigest()}).encode()

    def dump(f: IO[bytes]) -> None:
        f.write(MAGIC + len(header).to_bytes(8, "little") + header)
        f.write(payload)

    return write_atomic(path, dump, binary=True)


def keyed_header(path: str | os.PathLike) -> dict[str, Any]:
    """The header ``{"key", "size", "sha256"}`` of a keyed artifact, without its payload;
    ``DamagedArtifact`` when ``path`` is not one."""
    path = Path(path)
    try:
        with open(path, "rb") as f:
            return _header(f, path)
    except OSError as err:
        raise _damaged(path, f"{type(err).__name__}: {err}") from None


def _header(f: IO[bytes], path: Path) -> dict[str, Any]:
    if f.read(len(MAGIC)) != MAGIC:
        raise _damaged(path, "no keyed-artifact header")
    size = int.from_bytes(f.read(8), "little")
    raw = f.read(size) if size < 2**24 else b""
    try:
        header = json.loads(raw)
        if not isinstance(header, dict) or not {"key", "size", "sha256"} <= set(header):
            raise ValueError("header fields missing")
    except (ValueError, UnicodeDecodeError, RecursionError) as err:
        raise _damaged(path, f"unreadable header: {err}") from None
    return header


def read_keyed(path: str | os.PathLike, key: Mapping[str, Any], *, replace: bool = False
               ) -> bytes | None:
    """The payload of the keyed artifact at ``path`` if it was written for ``key`` and is
    whole; ``None`` if there is none. A mismatch is a ``ResumeMismatch`` and a damaged file a
    ``DamagedArtifact`` — or, with ``replace``, ``None`` (the caller makes it anew)."""
    path = Path(path)
    if not path.exists():
        return None
    try:
        with open(path, "rb") as f:
            header = _header(f, path)
            payload = f.read()
        if len(payload) != header["size"]:
            raise _damaged(path, f"truncated: {len(payload)} of {header['size']} bytes")
        if hashlib.sha256(payload).hexdigest() != header["sha256"]:
            raise _damaged(path, "its checksum does not match: corrupted")
        if header["key"] != dict(key):
            raise _mismatch(path, header["key"], key)
    except (ResumeMismatch, DamagedArtifact):
        if replace:
            return None
        raise
    except OSError as err:
        raise _damaged(path, f"{type(err).__name__}: {err}") from None
    return payload


def load_keyed(path: str | os.PathLike, key: Mapping[str, Any], load: Callable[[IO[bytes]], T],
               *, replace: bool = False) -> T | None:
    """``load(file)`` of the payload ``read_keyed`` returns (``None`` when it returns ``None``);
    a payload ``load`` cannot parse (another structure or dtype) is a ``DamagedArtifact``."""
    payload = read_keyed(path, key, replace=replace)
    if payload is None:
        return None
    try:
        return load(io.BytesIO(payload))
    except Exception as err:
        if replace:
            return None
        raise _damaged(Path(path), f"cannot be read back: {type(err).__name__}: "
                                   f"{_short(err, 200)}") from None


def check_whole(path: str | os.PathLike) -> None:
    """Refuse, before any work, a keyed artifact at ``path`` that is truncated or corrupted,
    whatever key it was written for (``DamagedArtifact`` naming it)."""
    read_keyed(path, keyed_header(path)["key"])


def check_keyed(path: str | os.PathLike, key: Mapping[str, Any], *, replace: bool = False
                ) -> None:
    """Refuse, before any work, an artifact at ``path`` written for another ``key`` or damaged
    (nothing when there is none, or with ``replace``)."""
    read_keyed(path, key, replace=replace)
