"""Data parallelism and sharded state with ``jax.sharding``.

``data_mesh(devices)``: one mesh axis ``"data"``; the model and the optimizer state are
replicated on every device and each batch is split along its first axis. ``device_mesh(devices,
fsdp)``: a 2-D mesh ``"data"`` × ``"fsdp"``: every batch is split over all the devices, and the
parameters, optimizer state, teacher and anchor are sharded over ``"fsdp"`` by one rule
(``partition``: the largest axis of a leaf of at least ``MIN_SHARDED`` elements that the
``"fsdp"`` size divides, the rest replicated), FSDP-style. A jitted step runs the same code on
any of these meshes: XLA partitions it, gathers the sharded parameters where they are used and
reduces the gradients. On a CPU host, ``XLA_FLAGS=--xla_force_host_platform_device_count=N`` (set
before jax is imported) gives N devices to try it.
"""

from __future__ import annotations

from collections.abc import Sequence

import equinox as eqx
import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec
from jaxtyping import PyTree

__all__ = ["MIN_SHARDED", "Mesh", "barrier", "batch_spec", "constrain", "data_mesh",
           "device_mesh", "initialize", "partition", "place", "replicate", "shard_batch",
           "to_host"]

#: Leaves with fewer elements stay replicated (biases, norms, scalars: not worth a gather).
MIN_SHARDED = 1024


def data_mesh(devices: int | Sequence[jax.Device] | None = None) -> Mesh:
    """A 1-D mesh named ``"data"`` over ``devices``: all devices (``None``; with several
    processes, every process's), the first ``devices`` of them (an int), or the given list."""
    available = jax.devices()  # every process's: one mesh over all of them
    if devices is None:
        chosen = available
    elif isinstance(devices, int):
        if not 1 <= devices <= len(available):
            raise ValueError(f"devices must be in [1, {len(available)}] (the devices), "
                             f"got {devices}")
        chosen = available[:devices]
    else:
        chosen = list(devices)
        if not chosen:
            raise ValueError("devices must not be empty")
    return Mesh(np.asarray(chosen), ("data",))


def device_mesh(devices: int | Sequence[jax.Device] | None = None, fsdp: int = 1) -> Mesh:
    """A 2-D mesh ``("data", "fsdp")`` over ``devices`` (as ``data_mesh``) with ``fsdp``
    devices along ``"fsdp"`` and the rest along ``"data"``; ``ValueError`` naming ``fsdp`` when
    it does not divide the device count."""
    flat = data_mesh(devices).devices.reshape(-1)
    if isinstance(fsdp, bool) or not isinstance(fsdp, int | np.integer) or fsdp < 1 \
            or len(flat) % fsdp:
        raise ValueError(f"fsdp must be a positive integer dividing the {len(flat)} devices, "
                         f"got {fsdp!r}")
    return Mesh(flat.reshape(len(flat) // fsdp, fsdp), ("data", "fsdp"))


def partition(shape: tuple[int, ...], mesh: Mesh, min_size: int = MIN_SHARDED) -> PartitionSpec:
    """The rule for one leaf of ``shape``: its largest axis that the mesh's ``"fsdp"`` size
    divides (the first of equals) over ``"fsdp"`` when it has at least ``min_size`` elements,
    else replicated (``PartitionSpec()``)."""
    n = dict(mesh.shape).get("fsdp", 1)
    if n == 1 or int(np.prod(shape, dtype=np.int64)) < min_size:
        return PartitionSpec()
    axes = [i for i, d in enumerate(shape) if d % n == 0]
    if not axes:
        return PartitionSpec()
    axis = max(axes, key=lambda i: (shape[i], -i))
    return PartitionSpec(*(("fsdp" if i == axis else None) for i in range(len(shape))))


def batch_spec(mesh: Mesh) -> PartitionSpec:
    """Batches split along their first axis over every axis of ``mesh``."""
    return PartitionSpec(tuple(mesh.axis_names))


def place(tree: PyTree, mesh: Mesh) -> PyTree:
    """Every array of ``tree`` on ``mesh`` under its rule (``partition``): sharded over
    ``"fsdp"`` or replicated. Over several processes every process passes the same values."""
    def put(x):
        if not eqx.is_array(x):
            return x
        return jax.device_put(_host(x, mesh), NamedSharding(mesh, partition(x.shape, mesh)))

    return jax.tree.map(put, tree)


def constrain(tree: PyTree, mesh: Mesh) -> PyTree:
    """``place`` inside a traced function: every array of ``tree`` constrained to its rule, so
    a step's new state keeps the layout of the old."""
    def hold(x):
        if not eqx.is_array(x) or jax.dtypes.issubdtype(x.dtype, jax.dtypes.prng_key):
            return x
        return jax.lax.with_sharding_constraint(x, NamedSharding(mesh, partition(x.shape, mesh)))

    return jax.tree.map(hold, tree)


def replicate(tree: PyTree, mesh: Mesh) -> PyTree:
    """Every array of ``tree`` placed whole on every device of ``mesh``."""
    sharding = NamedSharding(mesh, PartitionSpec())
    return jax.tree.map(lambda x: jax.device_put(_host(x, mesh), sharding) if eqx.is_array(x)
                        else x, tree)


def _host(x, mesh: Mesh):
    """``x`` as host data when ``mesh`` spans several processes (a process-local array cannot
    be moved onto devices of another process; each process passes its copy of the value)."""
    if mesh.is_multi_process and isinstance(x, jax.Array) and x.is_fully_addressable:
        return np.asarray(x)
    return x


def to_host(tree: PyTree) -> PyTree:
    """``tree`` with every array that this process cannot read whole (sharded over several
    processes) gathered to host memory (a collective: every process must call it)."""
    from jax.experimental import multihost_utils

    def get(x):
        if isinstance(x, jax.Array) and not x.is_fully_addressable:
            return np.asarray(multihost_utils.process_allgather(x, tiled=True))
        return x

    return jax.tree.map(get, tree)


def initialize(coordinator: str | None = None, num_processes: int | None = None,
               process_id: int | None = None) -> None:
    """Join a multi-process run (``jax.distributed.initialize``): the arguments, or JAX's
    standard environment (SLURM, TPU pod slices, ``JAX_COORDINATOR_ADDRESS``, ...) where they
    are ``None``. CPU processes exchange collectives through gloo. Call before any JAX
    computation; every process then runs the same program over one mesh of all devices."""
    if coordinator is not None and (not isinstance(coordinator, str) or
                                    not coordinator.rpartition(":")[2].isdigit()):
        raise ValueError(f"coordinator must be 'HOST:PORT', got {coordinator!r}")
    if num_processes is not None and (isinstance(num_processes, bool) or not isinstance(
            num_processes, int) or num_processes < 1):
        raise ValueError(f"num_processes must be a positive integer, got {num_processes!r}")
    if process_id is not None and (isinstance(process_id, bool) or not isinstance(
            process_id, int) or process_id < 0 or (num_processes is not None
                                                   and process_id >= num_processes)):
        raise ValueError(f"process_id must be an integer in [0, num_processes), got "
                         f"{process_id!r}")
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    jax.distributed.initialize(coordinator, num_processes, process_id)


def barrier(name: str) -> None:
    """Wait for every process at ``name`` (nothing with one process)."""
    if jax.process_count() > 1:
        from jax.experimental import multihost_utils

        multihost_utils.sync_global_devices(name)


def shard_batch(batch: PyTree, mesh: Mesh) -> PyTree:
    """Every array of ``batch`` split along its first axis over all the devices of ``mesh``
    (``batch_spec``); ValueError when a (non-empty) batch size is not a multiple of the device
    count."""
    n = mesh.devices.size
    sharding = NamedSharding(mesh, batch_spec(mesh))

    def put(x):
        x = np.asarray(x) if not isinstance(x, jax.Array) else x
        if x.shape[0] % n:
            raise ValueError(f"batch size {x.shape[0]} is not divisible by the {n} devices of "
                             "the mesh; choose a batch size that is a multiple of the device "
                             "count")
        return jax.device_put(x, sharding)

    return jax.tree.map(put, batch)
