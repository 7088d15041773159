"""Streamed finetuning batches: the images of each step read on the host and fed to the same
jitted step as the on-device program (``loop.py``).

A run's batches depend on its seed and the step alone: the host computes step ``s``'s indices
with the loop's own sampler (``loop.batch_indices`` under ``loop.step_key(key(seed), s)``), so
a streamed run draws exactly the batches the on-device program draws, and resuming at step
``s`` is the loader's position. ``grain`` reads the images of each step (a ``MapDataset`` over
the steps' index rows, its reads in ``threads`` threads of this process or in ``workers``
worker processes, prefetched), and the next batch's transfer to the device is started before
the current step runs, so reading overlaps the step.

``streamed(images, source)`` chooses: ``"device"`` holds the images on the device,
``"stream"`` reads them per step, ``"auto"`` streams images on disk (``FolderImages``) larger
than ``DEVICE_BYTES`` and holds everything else.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Iterator
from typing import Literal

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, Float, Int, PRNGKeyArray

from ..data.folders import FolderImages

Source = Literal["auto", "device", "stream"]
SOURCES: tuple[str, ...] = ("auto", "device", "stream")
#: ``"auto"`` holds images on disk on the device up to this many bytes (decoded float32).
DEVICE_BYTES = 1 << 30
#: Steps whose indices are computed by one program (memory: this many × N uniforms).
_INDEX_BLOCK = 16


def streamed(images: np.ndarray | FolderImages, source: Source) -> bool:
    """Whether a run over ``images`` streams them (see the module); ``ValueError`` naming
    ``source`` when it is not one of ``SOURCES``."""
    if source not in SOURCES:
        raise ValueError(f"source must be one of {SOURCES}, got {source!r}")
    if source == "auto":
        return isinstance(images, FolderImages) and images.nbytes > DEVICE_BYTES
    return source == "stream"


def check_workers(workers: object, threads: object) -> tuple[int, int]:
    """``(workers, threads)`` checked: integers, workers >= 0 and threads >= 1."""
    for name, value, least in (("workers", workers, 0), ("threads", threads, 1)):
        if isinstance(value, bool) or not isinstance(value, int | np.integer) or value < least:
            raise ValueError(f"{name} must be an integer >= {least}, got {value!r}")
    return int(workers), int(threads)


@eqx.filter_jit
def _indices(key: PRNGKeyArray, steps: Int[Array, " s"], n: int, n_replay: int, size: int,
             n_hybrid: int) -> Int[Array, "s k"]:
    from .loop import batch_indices, step_key  # the loop's own sampler

    return jax.vmap(lambda s: batch_indices(step_key(key, s), n, n_replay, size, n_hybrid)[0]
                    )(steps)


def step_indices(key: PRNGKeyArray, first: int, last: int, *, n: int, n_replay: int, size: int,
                 n_hybrid: int) -> Int[np.ndarray, "s k"]:
    """The finetuning-example indices (last − first + 1, size − n_hybrid) of steps
    ``first .. last`` (1-based) of the run with seed key ``key``: those its on-device program
    draws."""
    rows = []
    for lo in range(first, last + 1, _INDEX_BLOCK):
        steps = jnp.arange(lo, min(lo + _INDEX_BLOCK, last + 1), dtype=jnp.int32)
        rows.append(np.asarray(_indices(key, steps, n, n_replay, size, n_hybrid)))
    return np.concatenate(rows) if rows else np.zeros((0, size - n_hybrid), np.int32)


@dataclasses.dataclass(frozen=True)
class _Rows:
    """A random-access source of index rows (grain's ``MapDataset.source``)."""

    table: np.ndarray

    def __len__(self) -> int:
        return len(self.table)

    def __getitem__(self, i: int) -> np.ndarray:
        return self.table[i]


@dataclasses.dataclass(frozen=True)
class _Read:
    """Reads the images of one row of indices (a picklable map for grain's workers)."""

    images: np.ndarray | FolderImages

    def __call__(self, row: np.ndarray) -> np.ndarray:
        return np.ascontiguousarray(self.images[np.asarray(row)], np.float32)


def read_batches(images: np.ndarray | FolderImages, table: Int[np.ndarray, "s k"], *,
                 workers: int = 0, threads: int = 2, prefetch: int = 4
                 ) -> Iterator[Float[np.ndarray, "k C H W"]]:
    """The images of each row of ``table``, in order, read by ``grain`` in ``threads`` threads
    (``workers`` = 0) or ``workers`` processes, ``prefetch`` batches ahead."""
    import grain  # only a streamed run needs it

    workers, threads = check_workers(workers, threads)
    dataset = grain.MapDataset.source(_Rows(np.asarray(table))).map(_Read(images))
    batches = dataset.to_iter_dataset(grain.ReadOptions(num_threads=threads,
                                                        prefetch_buffer_size=prefetch))
    if workers:
        _absl_flags_parsed()
        batches = batches.mp_prefetch(grain.MultiprocessingOptions(
            num_workers=workers, per_worker_buffer_size=max(1, prefetch // workers)))
    return iter(batches)


def _local_rows(sharding, shape: tuple[int, ...]
                ) -> tuple[np.ndarray, list[tuple[object, np.ndarray]]] | None:
    """For a batch ``sharding`` that spans several processes: the batch rows this process's
    devices hold (sorted) and, per local device, the positions of its rows among them;
    ``None`` when this process holds every device (it reads whole batches)."""
    if sharding is None or sharding.is_fully_addressable:
        return None
    index = sharding.addressable_devices_indices_map(shape)
    spans = {d: np.arange(shape[0])[i[0] if i else slice(None)] for d, i in index.items()}
    rows = np.unique(np.concatenate(list(spans.values())))
    return rows, [(d, np.searchsorted(rows, r)) for d, r in spans.items()]


def _absl_flags_parsed() -> None:
    """grain 0.2.18's worker processes read an absl flag that raises unless absl's flags were
    parsed (google/grain#1355, fixed after that release): a program that does not use absl gets
    its flags marked parsed at their defaults, as grain's own fix does."""
    from absl import flags

    if not flags.FLAGS.is_parsed():
        flags.FLAGS.mark_as_parsed()


class StepImages:
    """The finetuning images of steps ``first .. last`` on the device, one batch per step
    (``jax.device_put``, with ``sharding``): grain reads ahead in background threads or worker
    processes while the step runs, and where steps are dispatched asynchronously (accelerators;
    XLA:CPU here returns when the step is done) the next transfer overlaps the step too. The
    readers stop with the last batch. ``waited``: seconds the loop spent waiting for the
    loader."""

    def __init__(self, images: np.ndarray | FolderImages, key: PRNGKeyArray, first: int,
                 last: int, *, n_replay: int, size: int, n_hybrid: int, workers: int = 0,
                 threads: int = 2, sharding=None):
        table = step_indices(key, first, last, n=len(images), n_replay=n_replay, size=size,
                             n_hybrid=n_hybrid)
        self._shape = (table.shape[1], *images.shape[1:])
        # over several processes each reads only the rows of its own devices' shards
        self._local = _local_rows(sharding, self._shape)
        if self._local is not None:
            table = table[:, self._local[0]]
        self._host = read_batches(images, table, workers=workers, threads=threads)
        self._left = len(table)
        self._sharding = sharding
        self.waited = 0.0

    def _next(self) -> Array:
        tick = time.perf_counter()
        batch = next(self._host)
        self.waited += time.perf_counter() - tick
        if self._local is None:
            return jax.device_put(batch, self._sharding)
        parts = self._local[1]
        return jax.make_array_from_single_device_arrays(
            self._shape, self._sharding,
            [jax.device_put(batch[where], device) for device, where in parts])

    def __iter__(self) -> Iterator[Array]:
        # grain's threads (or worker processes) read ahead while the step runs; where the step
        # is dispatched asynchronously (accelerators) the next transfer overlaps it as well
        try:
            for _ in range(self._left):
                yield self._next()
        finally:  # stop grain's readers (and worker processes) with the last batch
            close = getattr(self._host, "close", None)
            if close is not None:
                close()


__all__ = ["DEVICE_BYTES", "SOURCES", "StepImages", "check_workers", "read_batches",
           "step_indices", "streamed"]
