"""Contrastive pretraining of a CLIP on gray digits (symmetric multi-positive InfoNCE),
resumable from checkpoints."""

from __future__ import annotations

import functools
from pathlib import Path

import equinox as eqx
import jax.numpy as jnp
import numpy as np
import optax
from jaxtyping import PRNGKeyArray
from tqdm.auto import tqdm

from ..losses import clip_loss
from ..models import DualEncoder, make_model
from ..parallel import Mesh, replicate, shard_batch
from .checkpoints import load_run, save_run
from .config import PretrainConfig, learning_rate
from .step import accumulated_value_and_grad, in_compute_dtype


@eqx.filter_jit
def _pretrain_step(model, opt_state, images, tokens, labels, optimizer, accumulate: int = 1,
                   compute_dtype: str = "float32"):
    def loss(m, batch):
        m = in_compute_dtype(m, compute_dtype)
        images, tokens, labels = batch
        images = images.astype(compute_dtype)
        value = clip_loss(m.embed_images(images), m.embed_texts(tokens), m.scale, labels=labels)
        return value.astype(jnp.float32), ()

    (value, _), grads = accumulated_value_and_grad(loss, model, (images, tokens, labels),
                                                   accumulate)
    updates, opt_state = optimizer.update(grads, opt_state, eqx.filter(model, eqx.is_array))
    return eqx.apply_updates(model, updates), opt_state, value


def pretrain(images: np.ndarray, labels: np.ndarray, captions: np.ndarray,
             config: PretrainConfig, *, key: PRNGKeyArray, seed: int,
             progress: str | None = None, mesh: Mesh | None = None,
             checkpoint: str | Path | None = None) -> DualEncoder:
    """Contrastive pretraining of a fresh ``config.model`` on ``images`` (N, 3, H, W).

    ``captions`` (10, P, L): caption tokens per digit; each image gets a random one per step.
    ``mesh``: a 1-D device mesh (``parallel.data_mesh``) over which each batch is split; the
    model is replicated (data parallel). ``checkpoint``: where to save/resume the run every
    ``config.checkpoint_every`` steps (the model, the optimizer state and the sampler state).
    """
    model = make_model(config.model, key=key, width=config.width, dim=config.dim)
    optimizer = _pretrain_optimizer(config)
    opt_state = optimizer.init(eqx.filter(model, eqx.is_array))
    rng = np.random.default_rng(seed)
    start = 0
    if checkpoint is not None and Path(checkpoint).exists():
        (model, opt_state), start, rng = load_run(checkpoint, (model, opt_state))
    if mesh is not None:
        model, opt_state = replicate((model, opt_state), mesh)
    for step in tqdm(range(start, config.steps), desc=progress, leave=False,
                     disable=progress is None, initial=start, total=config.steps):
        idx = rng.choice(len(labels), size=config.batch_size, replace=False)
        which = rng.integers(captions.shape[1], size=config.batch_size)
        batch = (images[idx], captions[labels[idx], which], labels[idx])
        batch = shard_batch(batch, mesh) if mesh is not None else tuple(map(jnp.asarray, batch))
        model, opt_state, _ = _pretrain_step(model, opt_state, *batch, optimizer,
                                             config.accumulate, config.compute_dtype)
        done = step + 1
        if (checkpoint is not None and config.checkpoint_every
                and (done % config.checkpoint_every == 0 or done == config.steps)):
            save_run(checkpoint, (model, opt_state), done, rng)
    return model


@functools.lru_cache(maxsize=16)
def _pretrain_optimizer(config: PretrainConfig) -> optax.GradientTransformation:
    """AdamW of a pretraining config, one object per config so the jitted step compiles once."""
    return optax.adamw(learning_rate(config, config.lr), weight_decay=config.weight_decay)
