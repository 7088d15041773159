"""The deep counterpart of the geometric decomposition (THEORY §3): task-subspace vs orthogonal
change of the image projection and of the toy CNN's dense layer."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array

from ...linear.spectrum import spectrum_of
from ..finetune.finetunee import Finetunee
from ..models import ToyCLIP
from .arrays import ExperimentData
from .evaluation import chunked

LAYERS = {"proj": lambda m: m.clip.image_proj.weight, "dense": lambda m: m.clip.image.dense.weight}


def task_bases(pretrained: Finetunee, data: ExperimentData, n: int = 500) -> dict[str, Array]:
    """Orthonormal bases (d_in, r) of the task subspaces: the span of the pretrained model's
    inputs to the image projection (and, for the toy CNN, to its dense layer) on ``n``
    finetuning images."""
    images = jnp.asarray(data.color_train[data.sample(n)])
    inputs = [("proj", chunked(pretrained.clip.image_features, images, 250).T)]  # (width, n)
    if isinstance(pretrained.clip, ToyCLIP):
        conv = jax.vmap(lambda x: jax.nn.relu(pretrained.clip.image.conv2(
            jax.nn.relu(pretrained.clip.image.conv1(x)))).reshape(-1))(images).T  # dense inputs
        inputs.append(("dense", conv))
    bases = {}
    for name, x in inputs:
        spec = spectrum_of(x)
        bases[name] = spec.u[:, np.asarray(spec.mask)]
    return bases


def decomposition(before: Finetunee, after: Finetunee,
                  bases: dict[str, Array]) -> dict[str, float]:
    """Task-subspace vs orthogonal change of the image projection and of the dense layer:
    ``ΔW·P`` and ``ΔW(I − P)`` with ``P = U Uᵀ`` from ``task_bases``, as Frobenius norms
    relative to the pretrained weight."""
    out = {}
    for name, u in bases.items():
        w0, w1 = LAYERS[name](before), LAYERS[name](after)
        delta = w1 - w0
        task = (delta @ u) @ u.T
        scale = jnp.linalg.norm(w0)
        out[f"{name}_task_change"] = float(jnp.linalg.norm(task) / scale)
        out[f"{name}_orthogonal_change"] = float(jnp.linalg.norm(delta - task) / scale)
    return out
