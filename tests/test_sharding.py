"""Sharded state over a 2-D ``("data", "fsdp")`` mesh (``parallel.device_mesh``).

References: the replicated run on one device (``mesh=None``) of the same loop, a hand-checked
table of the sharding rule, and for 4 devices a subprocess with its own forced host devices
(this session has 2, conftest.py)."""

from __future__ import annotations

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import NamedSharding, PartitionSpec
from runs import relative_difference

from tracer_theory.deep.finetune.config import FinetuneConfig
from tracer_theory.deep.finetune.loop import finetune
from tracer_theory.deep.finetune.strategies import GradientDescent, registered
from tracer_theory.deep.models import CLIP
from tracer_theory.deep.models.clip import CLIPPreset
from tracer_theory.deep.parallel import data_mesh, device_mesh, partition
from tracer_theory.deep.studies.arrays import ExperimentData
from tracer_theory.deep.studies.finetune_task import fresh_model

pytestmark = pytest.mark.skipif(len(jax.local_devices()) < 2, reason="needs 2 host devices")


#: One layer per tower (the tiny preset's sizes otherwise): every run here compiles its own
#: programs, and depth is what compiling costs. Its matrices are large enough to be sharded.
ONE_LAYER = CLIPPreset(name="one_layer", image_size=28, patch_size=7, width=64, layers=1,
                       heads=4, text_width=64, text_layers=1, text_heads=4, dim=64)


@pytest.mark.parametrize(("shape", "fsdp", "expected"), [
    ((64, 32), 2, ("fsdp", None)),      # the largest axis
    ((32, 64), 2, (None, "fsdp")),
    ((64, 64), 2, ("fsdp", None)),      # the first of equals
    ((3, 512), 2, (None, "fsdp")),      # the largest axis the fsdp size divides
    ((513, 3), 2, ()),                  # none divisible: replicated
    ((16, 8), 2, ()),                   # small: replicated
    ((2048,), 2, ("fsdp",)),
    ((64, 64), 1, ()),                  # no fsdp axis to shard over
])
def test_the_rule_shards_the_largest_divisible_axis_of_large_leaves(shape, fsdp, expected):
    mesh = device_mesh(2, fsdp=fsdp)
    assert partition(shape, mesh) == PartitionSpec(*expected)
    assert partition(shape, data_mesh(2)) == PartitionSpec()


def test_mesh_refuses_an_fsdp_size_that_does_not_divide_the_devices():
    for bad in (0, 3, True, 1.5):
        with pytest.raises(ValueError, match="fsdp"):
            device_mesh(2, fsdp=bad)
    assert dict(device_mesh(2, fsdp=2).shape) == {"data": 1, "fsdp": 2}
    assert dict(device_mesh(2).shape) == {"data": 2, "fsdp": 1}


@pytest.fixture(scope="module")
def setup():
    data = ExperimentData(quick=True, model="tiny")
    clip = CLIP(ONE_LAYER, key=jax.random.key(0))
    model = fresh_model(clip, 10, 0)
    emb = clip.class_embeddings(jnp.asarray(data.captions))
    return data, model, emb


def _run(setup, strategy, mesh):
    data, model, emb = setup
    config = FinetuneConfig(steps=4, batch_size=32, log_every=2, lr=1e-3)
    return finetune(model, data.color_train, data.train_labels, strategy, config,
                    class_emb=emb, probe=data.probe(), seed=0, mesh=mesh)


def _arrays(tree):
    return jax.tree.leaves(eqx.filter(tree, eqx.is_array))


def test_an_adamw_fsdp_run_keeps_every_leafs_layout_and_agrees_with_one_device(setup):
    mesh = device_mesh(2, fsdp=2)
    run = _run(setup, registered()["direct"], mesh)
    sharded = 0
    for leaf in _arrays(run.model):
        rule = NamedSharding(mesh, partition(leaf.shape, mesh))
        assert leaf.sharding.is_equivalent_to(rule, leaf.ndim), (leaf.shape, leaf.sharding)
        sharded += partition(leaf.shape, mesh) != PartitionSpec()
    assert sharded >= 5  # the matrices are sharded, not just replicated
    # AdamW normalizes tiny gradients, so the reduction order's last bits show: agreement
    # within 5% of the parameter change (plain gradient descent agrees to 1e-4:
    # tests/test_distributed.py)
    ref = _run(setup, registered()["direct"], None)
    np.testing.assert_allclose(run.curves["loss"], ref.curves["loss"], rtol=1e-5)
    assert relative_difference(ref.model, run.model, setup[1]) < 0.05


def test_a_sharded_checkpoint_resumed_on_one_device_equals_the_whole_run(setup, tmp_path,
                                                                          monkeypatch):
    from tracer_theory.deep.finetune import loop

    strategy = GradientDescent(registered()["wma_sd"], 30.0)
    data, model, emb = setup
    config = FinetuneConfig(steps=4, batch_size=32, log_every=2, lr=1e-3)

    def run(mesh, **options):
        return finetune(model, data.color_train, data.train_labels, strategy, config,
                        class_emb=emb, probe=data.probe(), seed=0, mesh=mesh, chunk=2,
                        **options)

    reference = run(None)
    original = loop._run_step

    def interrupted(state, step, *args):
        if int(step) == 3:
            raise KeyboardInterrupt
        return original(state, step, *args)

    monkeypatch.setattr(loop, "_run_step", interrupted)
    with pytest.raises(KeyboardInterrupt):
        run(device_mesh(2, fsdp=2), checkpoint=tmp_path / "run.ckpt")
    steps = []

    def counted(state, step, *args):
        steps.append(int(step))
        return original(state, step, *args)

    monkeypatch.setattr(loop, "_run_step", counted)
    resumed = run(None, checkpoint=tmp_path / "run.ckpt")  # one device, from a sharded run
    assert steps == [3, 4]  # resumed after step 2, not rerun
    for a, b in zip(_arrays(resumed.model), _arrays(reference.model), strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(resumed.curves["loss"], reference.curves["loss"], rtol=1e-5)
