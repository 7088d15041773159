"""Per-device memory accounting (``finetune.memory``) against the arrays JAX actually holds."""

from __future__ import annotations

import equinox as eqx
import jax
import jax.numpy as jnp
import pytest

from tracer_theory.deep.finetune.config import FinetuneConfig
from tracer_theory.deep.finetune.finetunee import Batch, image_tower
from tracer_theory.deep.finetune.memory import device_bytes, step_memory
from tracer_theory.deep.finetune.step import start
from tracer_theory.deep.finetune.strategies import registered
from tracer_theory.deep.models import CLIP
from tracer_theory.deep.models.clip import CLIPPreset
from tracer_theory.deep.parallel import device_mesh, place
from tracer_theory.deep.studies.finetune_task import fresh_model

CONFIG = FinetuneConfig(steps=4, batch_size=8)


@pytest.fixture(scope="module")
def model():
    one_layer = CLIPPreset(name="one_layer", image_size=28, patch_size=7, width=64, layers=1,
                           heads=4, text_width=64, text_layers=1, text_heads=4, dim=64)
    return fresh_model(CLIP(one_layer, key=jax.random.key(0)), 10, 0)


def _nbytes(tree) -> int:
    return sum(x.nbytes for x in jax.tree.leaves(eqx.filter(tree, eqx.is_array)))


def _held(tree) -> int:
    """Bytes JAX holds on the first device for the placed arrays of ``tree``."""
    return sum(x.addressable_shards[0].data.nbytes
               for x in jax.tree.leaves(eqx.filter(tree, eqx.is_array)))


def test_device_bytes_by_hand():
    tree = {"w": jnp.zeros((64, 32), jnp.float32), "b": jnp.zeros(8, jnp.float32), "f": jnp.sin}
    assert device_bytes(tree) == 64 * 32 * 4 + 8 * 4
    if len(jax.local_devices()) >= 2:
        assert device_bytes(tree, device_mesh(2, fsdp=2)) == 64 * 32 * 4 // 2 + 8 * 4
    arrays = {k: v for k, v in tree.items() if k != "f"}
    shapes = jax.eval_shape(lambda: arrays)  # shape structures count alike
    assert device_bytes(shapes) == device_bytes(tree)


@pytest.mark.parametrize("name", ["direct", "l2sp", "static_sd", "ema_sd", "wma_sd"])
def test_each_part_is_what_the_run_holds(model, name):
    strategy = registered()[name]
    memory = step_memory(model, strategy, CONFIG)
    state = start(model, strategy, CONFIG)[0]
    assert memory.parameters == _nbytes(state.model) == _nbytes(model)
    assert memory.anchor == _nbytes(model)
    assert memory.optimizer == _nbytes(state.opt_state)
    trainable = _nbytes((model.head, image_tower(model)))
    assert 2 * trainable <= memory.optimizer <= 2 * trainable + 1024  # Adam's two moments
    moving = name in ("ema_sd", "wma_sd")
    assert memory.teacher == (_nbytes(image_tower(model)) if moving else 0)
    assert memory.activations is None


def test_sharded_accounting_is_what_each_device_holds(model):
    if len(jax.local_devices()) < 2:
        pytest.skip("needs 2 host devices")
    mesh = device_mesh(2, fsdp=2)
    strategy = registered()["wma_sd"]
    memory = step_memory(model, strategy, CONFIG, mesh)
    state = place(start(model, strategy, CONFIG)[0], mesh)
    assert memory.parameters == _held(state.model)
    assert memory.optimizer == _held(state.opt_state)
    assert memory.teacher == _held(state.teacher.params)
    assert memory.anchor == _held(place(model, mesh))
    assert memory.parameters < 0.7 * step_memory(model, strategy, CONFIG).parameters


def test_activations_are_measured_and_grow_with_the_batch(model):
    def batch(n):
        return Batch(jnp.zeros((n, 3, 28, 28)), jnp.zeros(n, jnp.int32),
                     jnp.zeros((0, 3, 28, 28)), jnp.zeros((0, 9), jnp.int32),
                     jnp.zeros((0,), jnp.int32))

    emb = jnp.zeros((10, model.clip.image_proj.out_features))
    small = step_memory(model, registered()["direct"], CONFIG, batch=batch(4), class_emb=emb)
    large = step_memory(model, registered()["direct"], CONFIG, batch=batch(32), class_emb=emb)
    assert 0 < small.activations < large.activations
    assert large.total == sum(large[:4]) + large.activations
    assert "MiB per device" in large.format()


def test_sharded_activations_are_the_sharded_steps(model):
    if len(jax.local_devices()) < 2:
        pytest.skip("needs 2 host devices")
    batch = Batch(jnp.zeros((8, 3, 28, 28), jnp.float32), jnp.zeros(8, jnp.int32),
                  jnp.zeros((0, 3, 28, 28), jnp.float32), jnp.zeros((0, 9), jnp.int32),
                  jnp.zeros((0,), jnp.int32))
    emb = jnp.zeros((10, model.clip.image_proj.out_features), jnp.float32)
    strategy = registered()["wma_sd"]
    one = step_memory(model, strategy, CONFIG, batch=batch, class_emb=emb)
    fsdp = step_memory(model, strategy, CONFIG, device_mesh(2, fsdp=2), batch=batch,
                       class_emb=emb)
    assert fsdp.activations < one.activations  # each device sees half the batch
    assert fsdp.parameters < one.parameters
