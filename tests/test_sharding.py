"""Sharded state over a 2-D ``("data", "fsdp")`` mesh (``parallel.device_mesh``).

References: the replicated run on one device (``mesh=None``) of the same loop, a hand-checked
table of the sharding rule, and for 4 devices a subprocess with its own forced host devices
(this session has 2, conftest.py)."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import NamedSharding, PartitionSpec

from tracer_theory.deep.finetune.config import FinetuneConfig
from tracer_theory.deep.finetune.loop import finetune
from tracer_theory.deep.finetune.strategies import GradientDescent, registered
from tracer_theory.deep.models import CLIP
from tracer_theory.deep.parallel import data_mesh, device_mesh, partition
from tracer_theory.deep.studies.arrays import ExperimentData
from tracer_theory.deep.studies.finetune_task import fresh_model

pytestmark = pytest.mark.skipif(len(jax.local_devices()) < 2, reason="needs 2 host devices")


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
    clip = CLIP("tiny", key=jax.random.key(0))
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


@pytest.mark.parametrize("name", ["direct", "l2sp", "wma_sd"])
def test_sharded_runs_equal_the_replicated_run(setup, name):
    # plain gradient descent keeps round-off at round-off (AdamW's normalization of tiny
    # gradients magnifies the reduction order's last bits; checked apart below)
    strategy = GradientDescent(registered()[name], 30.0)
    runs = {label: _run(setup, strategy, mesh) for label, mesh in
            (("one", None), ("data", data_mesh(2)), ("fsdp", device_mesh(2, fsdp=2)))}
    ref = runs["one"]
    for label in ("data", "fsdp"):
        np.testing.assert_allclose(runs[label].curves["loss"], ref.curves["loss"], rtol=1e-5)
        np.testing.assert_allclose(runs[label].curves["param_distance"],
                                   ref.curves["param_distance"], rtol=1e-4, atol=1e-7)
        for a, b in zip(_arrays(runs[label].model), _arrays(ref.model), strict=True):
            np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6)
    moved = max(float(jnp.max(jnp.abs(a - b))) for a, b in
                zip(_arrays(ref.model.clip.image), _arrays(setup[1].clip.image), strict=True))
    assert moved > 1e-4  # the comparison is not between untrained models


def test_every_leaf_keeps_the_rules_layout_after_training(setup):
    mesh = device_mesh(2, fsdp=2)
    run = _run(setup, registered()["wma_sd"], mesh)
    leaves = _arrays(run.model)
    sharded = 0
    for leaf in leaves:
        rule = NamedSharding(mesh, partition(leaf.shape, mesh))
        assert leaf.sharding.is_equivalent_to(rule, leaf.ndim), (leaf.shape, leaf.sharding)
        sharded += partition(leaf.shape, mesh) != PartitionSpec()
    assert sharded >= 10  # the tiny CLIP's matrices are sharded, not just replicated


def test_adamw_sharded_runs_agree_with_the_replicated_run(setup):
    ref = _run(setup, registered()["direct"], None)
    run = _run(setup, registered()["direct"], device_mesh(2, fsdp=2))
    np.testing.assert_allclose(run.curves["loss"], ref.curves["loss"], rtol=1e-5)
    start = _arrays(setup[1])
    change = np.sqrt(sum(float(jnp.sum((a - s) ** 2)) for a, s in
                         zip(_arrays(ref.model), start, strict=True)))
    diff = np.sqrt(sum(float(jnp.sum((a - b) ** 2)) for a, b in
                       zip(_arrays(run.model), _arrays(ref.model), strict=True)))
    assert diff < 0.05 * change


SCRIPT = textwrap.dedent("""
    import jax, jax.numpy as jnp, numpy as np, equinox as eqx
    from tracer_theory.deep.finetune.config import FinetuneConfig
    from tracer_theory.deep.finetune.loop import finetune
    from tracer_theory.deep.finetune.strategies import GradientDescent, registered
    from tracer_theory.deep.models import CLIP
    from tracer_theory.deep.parallel import device_mesh
    from tracer_theory.deep.studies.arrays import ExperimentData
    from tracer_theory.deep.studies.finetune_task import fresh_model
    assert len(jax.local_devices()) == 4
    data = ExperimentData(quick=True, model="tiny")
    clip = CLIP("tiny", key=jax.random.key(0))
    model = fresh_model(clip, 10, 0)
    emb = clip.class_embeddings(jnp.asarray(data.captions))
    from jax.sharding import NamedSharding
    from tracer_theory.deep.parallel import partition
    config = FinetuneConfig(steps=2, batch_size=32, log_every=2, lr=1e-3)
    for name in ("direct", "l2sp", "wma_sd"):
        strategy = GradientDescent(registered()[name], 30.0)
        meshes = (None, device_mesh(4, fsdp=2), device_mesh(4, fsdp=4))
        runs = [finetune(model, data.color_train, data.train_labels, strategy, config,
                         class_emb=emb, probe=data.probe(), seed=0, mesh=mesh)
                for mesh in meshes]
        leaves = [jax.tree.leaves(eqx.filter(r.model, eqx.is_array)) for r in runs]
        for other in leaves[1:]:
            for a, b in zip(other, leaves[0], strict=True):
                np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6)
        for r in runs[1:]:
            np.testing.assert_allclose(r.curves["loss"], runs[0].curves["loss"], rtol=1e-5)
            # the teacher: its distance to the student (the teacher-student gap)
            np.testing.assert_allclose(r.curves["param_distance"],
                                       runs[0].curves["param_distance"], rtol=1e-4, atol=1e-7)
        for mesh, leaves_of in zip(meshes[1:], leaves[1:]):
            for leaf in leaves_of:
                rule = NamedSharding(mesh, partition(leaf.shape, mesh))
                assert leaf.sharding.is_equivalent_to(rule, leaf.ndim), (name, leaf.shape)
    print("ok")
""")


def test_four_devices_fsdp_2_and_4_equal_the_replicated_run_for_three_strategies():
    env = dict(os.environ)
    env["XLA_FLAGS"] = " ".join(
        [f for f in env.get("XLA_FLAGS", "").split()
         if not f.startswith("--xla_force_host_platform_device_count")]
        + ["--xla_force_host_platform_device_count=4"])
    env["JAX_ENABLE_X64"] = "0"
    done = subprocess.run([sys.executable, "-c", SCRIPT], env=env, capture_output=True,
                          text=True, timeout=300)
    assert done.returncode == 0 and done.stdout.strip().endswith("ok"), done.stderr[-2000:]


def test_two_processes_resume_a_sharded_run_and_equal_one_process(tmp_path):
    import socket

    with socket.socket() as s:
        s.bind(("localhost", 0))
        port = s.getsockname()[1]
    env = dict(os.environ)
    env["XLA_FLAGS"] = " ".join(
        [f for f in env.get("XLA_FLAGS", "").split()
         if not f.startswith("--xla_force_host_platform_device_count")]
        + ["--xla_force_host_platform_device_count=1"])
    env["JAX_ENABLE_X64"] = "0"
    worker = os.path.join(os.path.dirname(__file__), "multiprocess_worker.py")
    procs = [subprocess.Popen([sys.executable, worker, str(port), str(i), "2", str(tmp_path)],
                              env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for i in range(2)]
    outs = [p.communicate(timeout=300) for p in procs]
    for i, (p, (out, err)) in enumerate(zip(procs, outs, strict=True)):
        assert p.returncode == 0, f"process {i}:\n{err[-3000:]}"
        line = next(x for x in out.splitlines() if x.startswith(f"process {i}: ok"))
        assert int(line.split(",")[1].split()[0]) >= 10  # the model was sharded across them
    written = sorted(p.name for p in tmp_path.iterdir())
    assert written == ["run.ckpt"]  # one checkpoint, written by process 0 alone


def test_a_sharded_checkpoint_resumes_on_another_mesh(setup, tmp_path, monkeypatch):
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
