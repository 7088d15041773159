"""One process of the multi-process test (tests/test_distributed.py): joins a 2-process CPU run
(``parallel.initialize``), then compares, on a mesh over both processes' devices, a sharded
finetuning run interrupted at step 3 and resumed (streamed: each process reads its devices' rows)
with the process's own single-device run.
Usage: ``python multiprocess_worker.py PORT PROCESS_ID FSDP OUT_DIR``."""

import sys

port, process_id, fsdp, out = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4]

from tracer_theory.deep import parallel  # noqa: E402

parallel.initialize(f"localhost:{port}", 2, process_id)

import equinox as eqx  # noqa: E402
import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

from tracer_theory.deep.data.prompts import TRAIN_TEMPLATES, prompt_tokens  # noqa: E402
from tracer_theory.deep.finetune import loop, stream  # noqa: E402
from tracer_theory.deep.finetune.config import FinetuneConfig  # noqa: E402
from tracer_theory.deep.finetune.finetunee import Finetunee  # noqa: E402
from tracer_theory.deep.finetune.strategies import GradientDescent, registered  # noqa: E402
from tracer_theory.deep.models import CLIP  # noqa: E402
from tracer_theory.deep.models.clip import CLIPPreset, clip_tokens  # noqa: E402

assert jax.process_count() == 2 and jax.device_count() == 2 * jax.local_device_count()
rng = np.random.default_rng(0)  # a small random task: only agreement between runs matters
images = rng.random((96, 3, 28, 28), dtype=np.float32)
labels = rng.integers(0, 10, 96)
clip = CLIP(CLIPPreset(name="one_layer", image_size=28, patch_size=7, width=64, layers=1,
                       heads=4, text_width=64, text_layers=1, text_heads=4, dim=64),
            key=jax.random.key(0))
model = Finetunee(clip, eqx.nn.Linear(64, 10, key=jax.random.key(1)))
emb = clip.class_embeddings(jnp.asarray(clip_tokens(prompt_tokens(TRAIN_TEMPLATES))))
config = FinetuneConfig(steps=4, batch_size=32, log_every=2, lr=1e-3)
strategy = GradientDescent(registered()["wma_sd"], 30.0)


def run(mesh, **options):
    return loop.finetune(model, images, labels, strategy, config, class_emb=emb,
                         probe=images[:8], seed=0, mesh=mesh, chunk=2, **options)


local = run(None)  # this process alone, one device
mesh = parallel.device_mesh(fsdp=fsdp)
checkpoint = f"{out}/run.ckpt"
original = loop._run_step


def interrupted(state, step, *args):
    if int(step) == 3:
        raise KeyboardInterrupt
    return original(state, step, *args)


loop._run_step = interrupted
try:
    run(mesh, checkpoint=checkpoint)
    raise AssertionError("the run was not interrupted")
except KeyboardInterrupt:
    pass
loop._run_step = original
# resumed streamed: each process reads only its devices' rows of every batch
read = []
_Read = stream._Read
stream._Read = type("Counted", (_Read,), {"__call__": lambda self, row: (
    read.append(len(row)), _Read.__call__(self, row))[1]})
resumed = run(mesh, checkpoint=checkpoint, source="stream")
stream._Read = _Read
assert read == [config.batch_size // 2] * 2, read  # steps 3 and 4, half the rows each
sharded = sum(not leaf.is_fully_addressable
              for leaf in jax.tree.leaves(eqx.filter(resumed.model, eqx.is_array)))
gathered = parallel.to_host(resumed.model)
for a, b in zip(jax.tree.leaves(eqx.filter(gathered, eqx.is_array)),
                jax.tree.leaves(eqx.filter(local.model, eqx.is_array)), strict=True):
    np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-4, atol=1e-6)
np.testing.assert_allclose(resumed.curves["loss"], local.curves["loss"], rtol=1e-5)
print(f"process {process_id}: ok, {sharded} leaves spread over both processes", flush=True)
