"""Data parallelism with ``jax.sharding``: one mesh axis ``"data"`` over the local devices.

The model and the optimizer state are replicated on every device; each batch is split along its
first axis. A jitted step then runs the same code on 1 or N devices: XLA partitions it and sums
the gradients across devices. On a CPU host, ``XLA_FLAGS=--xla_force_host_platform_device_count=N``
(set before jax is imported) gives N devices to try it.
"""

from __future__ import annotations

from collections.abc import Sequence

import equinox as eqx
import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec
from jaxtyping import PyTree

__all__ = ["Mesh", "data_mesh", "replicate", "shard_batch"]


def data_mesh(devices: int | Sequence[jax.Device] | None = None) -> Mesh:
    """A 1-D mesh named ``"data"`` over ``devices``: all local devices (``None``), the first
    ``devices`` of them (an int), or the given list."""
    available = jax.local_devices()
    if devices is None:
        chosen = available
    elif isinstance(devices, int):
        if not 1 <= devices <= len(available):
            raise ValueError(f"devices must be in [1, {len(available)}] (the local devices), "
                             f"got {devices}")
        chosen = available[:devices]
    else:
        chosen = list(devices)
        if not chosen:
            raise ValueError("devices must not be empty")
    return Mesh(np.asarray(chosen), ("data",))


def replicate(tree: PyTree, mesh: Mesh) -> PyTree:
    """Every array of ``tree`` placed whole on every device of ``mesh``."""
    sharding = NamedSharding(mesh, PartitionSpec())
    return jax.tree.map(lambda x: jax.device_put(x, sharding) if eqx.is_array(x) else x, tree)


def shard_batch(batch: PyTree, mesh: Mesh) -> PyTree:
    """Every array of ``batch`` split along its first axis over the ``"data"`` axis of ``mesh``;
    ValueError when a (non-empty) batch size is not a multiple of the device count."""
    n = mesh.shape["data"]
    sharding = NamedSharding(mesh, PartitionSpec("data"))

    def put(x):
        x = np.asarray(x) if not isinstance(x, jax.Array) else x
        if x.shape[0] % n:
            raise ValueError(f"batch size {x.shape[0]} is not divisible by the {n} devices of "
                             "the mesh; choose a batch size that is a multiple of the device "
                             "count")
        return jax.device_put(x, sharding)

    return jax.tree.map(put, batch)
