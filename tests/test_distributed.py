"""Devices beyond this session's: 4 forced host devices in a subprocess (the tests have 2,
conftest.py), and two CPU processes joined by ``jax.distributed`` on localhost. References: the
replicated one-device run of the same loop, computed in the same subprocesses."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import pytest

pytestmark = pytest.mark.slow  # TRACER_SLOW_TESTS=1 runs them (tests/conftest.py)


def _env(devices: int) -> dict[str, str]:
    """This environment with ``devices`` forced host devices, float32 by default."""
    env = dict(os.environ)
    env["XLA_FLAGS"] = " ".join(
        [f for f in env.get("XLA_FLAGS", "").split()
         if not f.startswith("--xla_force_host_platform_device_count")]
        + [f"--xla_force_host_platform_device_count={devices}"])
    env["JAX_ENABLE_X64"] = "0"
    return env


SCRIPT = textwrap.dedent("""
    import jax, jax.numpy as jnp, numpy as np, equinox as eqx
    from tracer_theory.deep.finetune.config import FinetuneConfig
    from tracer_theory.deep.finetune.loop import finetune
    from tracer_theory.deep.finetune.strategies import GradientDescent, registered
    from tracer_theory.deep.models import CLIP
    from tracer_theory.deep.models.clip import CLIPPreset
    from tracer_theory.deep.parallel import device_mesh
    from tracer_theory.deep.studies.arrays import ExperimentData
    from tracer_theory.deep.studies.finetune_task import fresh_model
    assert len(jax.local_devices()) == 4
    data = ExperimentData(quick=True, model="tiny")
    clip = CLIP(CLIPPreset(name="one_layer", image_size=28, patch_size=7, width=64, layers=1,
                           heads=4, text_width=64, text_layers=1, text_heads=4, dim=64),
                key=jax.random.key(0))
    model = fresh_model(clip, 10, 0)
    emb = clip.class_embeddings(jnp.asarray(data.captions))
    from jax.sharding import NamedSharding
    from tracer_theory.deep.parallel import partition
    config = FinetuneConfig(steps=2, batch_size=32, log_every=2, lr=1e-3)
    for name in ("l2sp", "wma_sd"):  # an anchor to θ⁰, and a teacher that moves
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


def test_four_devices_fsdp_2_and_4_equal_the_replicated_run_for_two_strategies():
    done = subprocess.run([sys.executable, "-c", SCRIPT], env=_env(4), capture_output=True,
                          text=True, timeout=300)
    assert done.returncode == 0 and done.stdout.strip().endswith("ok"), done.stderr[-2000:]


def test_two_processes_resume_a_sharded_run_and_equal_one_process(tmp_path):
    import socket

    with socket.socket() as s:
        s.bind(("localhost", 0))
        port = s.getsockname()[1]
    env = _env(1)
    # two processes compiling the same programs at once: no shared compilation cache
    # (tests/conftest.py gives each worker's folder one writer at a time)
    env.pop("JAX_COMPILATION_CACHE_DIR", None)
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
