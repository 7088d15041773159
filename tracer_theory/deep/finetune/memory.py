"""What a finetuning run holds per device: parameters, optimizer state, teacher, anchor and the
step's activations.

``step_memory(model, strategy, config, mesh)`` accounts the state from shapes alone
(``jax.eval_shape`` of ``step.start``; nothing is allocated) under the mesh's sharding rule
(``parallel.partition``: a sharded leaf costs ``1/fsdp`` of its bytes on each device), and, with
``batch``, measures the activations as XLA's temporary buffers per device of the step compiled
on the mesh (``memory_analysis().temp_size_in_bytes``; with fsdp they include the gathered
weights and gradients). The
anchor is the pretrained model the loop keeps beside the student (L2-SP's anchor, the static
teacher's tower, WiSE-FT's end point); a teacher that never moves holds no copy (``step.start``).
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import PyTree

from ..parallel import Mesh, partition, place, replicate, shard_batch
from .config import FinetuneConfig
from .finetunee import Batch, Finetunee
from .step import phase_optimizer, start, train_step
from .strategies import Strategy


class StepMemory(NamedTuple):
    """Bytes per device of each part of a run (``activations``: ``None`` unless measured)."""

    parameters: int
    optimizer: int
    teacher: int
    anchor: int
    activations: int | None = None

    @property
    def total(self) -> int:
        """Every part, the activations when measured."""
        return sum(v for v in self if v is not None)

    def format(self) -> str:
        """One line in MiB."""
        parts = [f"{k} {v / 2**20:,.1f}" for k, v in self._asdict().items() if v is not None]
        return ", ".join(parts) + f" (total {self.total / 2**20:,.1f} MiB per device)"


def device_bytes(tree: PyTree, mesh: Mesh | None = None) -> int:
    """Bytes one device holds of the arrays (or shape structures) of ``tree`` under ``mesh``'s
    rule (``None``: everything on one device)."""
    total = 0
    for leaf in jax.tree.leaves(tree):
        if not (hasattr(leaf, "shape") and hasattr(leaf, "dtype")):
            continue  # static values: functions, Python numbers
        shape, dtype = tuple(leaf.shape), leaf.dtype
        if jax.dtypes.issubdtype(dtype, jax.dtypes.prng_key):
            continue
        dtype = np.dtype(dtype)
        size = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
        spec = () if mesh is None else partition(shape, mesh)
        shards = 1 if mesh is None else int(np.prod([dict(mesh.shape)[a] for a in spec if a]))
        total += size // shards
    return total


def step_memory(model: Finetunee, strategy: Strategy, config: FinetuneConfig,
                mesh: Mesh | None = None, batch: Batch | None = None,
                class_emb=None) -> StepMemory:
    """The per-device memory of finetuning ``model`` with ``strategy`` under ``config`` on
    ``mesh`` (see the module): the state from shapes alone (``model`` may be shape structures);
    with a (global) ``batch`` and the class embeddings ``class_emb`` (C, D) also the activations,
    the temporaries of the step compiled on ``mesh`` with the state placed by its rule and the
    batch split over the devices (this builds the state, to compile the step)."""
    state = jax.eval_shape(lambda m: start(m, strategy, config)[0], model)
    parts = StepMemory(device_bytes(state.model, mesh), device_bytes(state.opt_state, mesh),
                       device_bytes(state.teacher.params, mesh), device_bytes(model, mesh))
    if batch is None:
        return parts
    state = start(model, strategy, config)[0]
    emb = jnp.zeros((1, 1)) if class_emb is None else jnp.asarray(class_emb)
    anchor = model
    if mesh is not None:
        state, anchor = place(state, mesh), place(model, mesh)
        batch, emb = shard_batch(batch, mesh), replicate(emb, mesh)
    schedule = strategy.schedule(config.steps)
    optimizer = phase_optimizer(config, strategy.phases(config.steps)[0])
    compiled = train_step.lower(state, batch, strategy, schedule, config, optimizer, anchor,
                                emb, anchor.head).compile()
    temp = getattr(compiled.compiled.memory_analysis(), "temp_size_in_bytes", None)
    return parts._replace(activations=None if temp is None else int(temp))


__all__ = ["StepMemory", "device_bytes", "step_memory"]
