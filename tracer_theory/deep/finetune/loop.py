"""The finetuning loop: phases of jitted steps over host-sampled batches, with the
teacher–student gap logged along the way."""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, Float
from tqdm.auto import tqdm

from ..parallel import Mesh, replicate, shard_batch
from .config import FinetuneConfig
from .finetunee import Batch, Finetunee
from .step import gap_metrics, start, start_phase, train_step
from .strategies import Strategy

CURVES = ("steps", "param_distance", "logit_kl", "agreement", "loss")


def finetune(pretrained: Finetunee, images: np.ndarray, labels: np.ndarray,
             strategy: Strategy, config: FinetuneConfig, *, class_emb: Float[Array, "C D"],
             probe: np.ndarray, hybrid: tuple[np.ndarray, np.ndarray, np.ndarray] | None = None,
             seed: int, progress: str | None = None, mesh: Mesh | None = None
             ) -> tuple[Finetunee, dict[str, np.ndarray]]:
    """Finetune ``pretrained`` on ``images`` (N, C, H, W) / ``labels`` (N,) with ``strategy``
    under the training ``config``.

    ``hybrid`` = (gray images, caption tokens, labels) for strategies that mix pretraining data
    into their batches; ``probe`` a fixed batch for the gap metrics, logged every
    ``config.log_every`` steps. Returns the finetuned model and the logged curves (``CURVES``:
    steps, parameter distance, logit KL, agreement, loss). ``mesh``: a device mesh
    (``parallel.data_mesh``) to split each batch over (data parallel).
    """
    rng = np.random.default_rng(seed)
    n_hybrid = strategy.hybrid_size(config.batch_size)
    if n_hybrid and hybrid is None:
        raise ValueError(f"{type(strategy).__name__} mixes {n_hybrid} pretraining images into "
                         "each batch: pass hybrid=(images, tokens, labels)")
    state, optimizer, schedule = start(pretrained, strategy, config)
    curves: dict[str, list] = {k: [] for k in CURVES}
    probe = jnp.asarray(probe)
    step = 0
    bar = tqdm(total=config.steps, desc=progress, leave=False, disable=progress is None)
    for i, phase in enumerate(strategy.phases(config.steps)):
        if i:
            state, optimizer = start_phase(state.model, state.teacher, phase, config)
        if mesh is not None:
            state = replicate(state, mesh)
        for _ in range(phase.steps):
            batch = _sample(rng, images, labels, config.batch_size - n_hybrid, hybrid, n_hybrid)
            if mesh is not None:
                batch = shard_batch(batch, mesh)
            state, parts = train_step(state, batch, strategy, schedule, config, optimizer,
                                      pretrained, class_emb, pretrained.head)
            step += 1
            if step % config.log_every == 0 or step == config.steps:
                gaps = gap_metrics(state.model, state.teacher.params, probe, class_emb)
                curves["steps"].append(step)
                curves["loss"].append(float(parts["loss"]))
                for key, value in gaps.items():
                    curves[key].append(float(value))
            bar.update(1)
    bar.close()
    return state.model, {k: np.asarray(v) for k, v in curves.items()}


def _sample(rng: np.random.Generator, images, labels, n: int, hybrid, n_hybrid: int) -> Batch:
    idx = rng.choice(len(labels), size=n, replace=False)
    if n_hybrid:
        h_img, h_tok, h_lab = hybrid
        hidx = rng.choice(len(h_lab), size=n_hybrid, replace=False)
        h = (h_img[hidx], h_tok[hidx], h_lab[hidx])
    else:
        length = hybrid[1].shape[1] if hybrid is not None else 8
        h = (np.zeros((0, *images.shape[1:]), images.dtype), np.zeros((0, length), np.int32),
             np.zeros((0,), labels.dtype))
    return Batch(jnp.asarray(images[idx]), jnp.asarray(labels[idx]), *map(jnp.asarray, h))
