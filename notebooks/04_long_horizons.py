# ---
# jupyter:
#   jupytext:
#     formats: py:percent
#     text_representation:
#       extension: .py
#       format_name: percent
#   kernelspec:
#     display_name: Python 3
#     language: python
#     name: python3
# ---

# %% [markdown]
# # 04 · Long finetuning horizons: does the EMA teacher's collapse cost retention?
#
# [THEORY §4, §6](../docs/THEORY.md). The paper's argument: an EMA teacher collapses onto the
# student (the gap decays like `ρ^t`), so its regularization vanishes late in training, while
# the WMA teacher with a U-shaped Beta(0.5, 0.5) kernel keeps a gap over the whole horizon. At
# the deep experiments' 100 steps an EMA(0.99) teacher has no time to collapse; here the toy
# CLIP is finetuned for T = 100 … 3,000 steps, with and without label noise (a task whose
# loss cannot reach zero keeps pushing the student late in training).
#
# This notebook reads the committed study (`experiments/results/horizon/horizon.json`, made by
# `tracer-theory horizon`); set `TRACER_HORIZON_RESULTS` to a `horizon*.json` of your own.

# %%
import json
import os
from pathlib import Path

import jax
import jax.numpy as jnp
from IPython.display import Image, display

import tracer_theory as tt
from tracer_theory._paths import REPO_ROOT
from tracer_theory.deep.studies.horizon import format_horizon
from tracer_theory.report.horizon import horizon_figures
from tracer_theory.report.notebook import settings
from tracer_theory.report.style import save


# %% [markdown]
# ## The mechanism, in the linear theory first
# On a random problem, the exact student–teacher dynamics (THEORY §4) give the gap
# `‖(W_t − T_t)X_I‖` over a run of T steps: the EMA teacher's gap decays; the WMA teacher's
# does not.

# %%
jax.config.update("jax_enable_x64", True)
problem = tt.random_problem(d_img=32, n=12, d_txt=16, k=6, seed=0)
lr = 0.5 * float(tt.stability_bound(tt.spectrum(problem).sigma_sq[0], 1.0))
for horizon in (100, 1000, 3000):
    gaps = {name: tt.spectral_dynamics(problem, 1.0, schedule, steps=horizon, lr=lr).summary.gap
            for name, schedule in (("EMA 0.99", tt.ema_teacher(0.99)),
                                   ("WMA", tt.wma_teacher(horizon)))}
    print(f"T = {horizon:5d}: final gap / peak gap  " + "  ".join(
        f"{name} {float(g[-1] / jnp.max(g)):.2e}" for name, g in gaps.items()))
jax.config.update("jax_enable_x64", False)

# %% [markdown]
# ## The study's table
# Per (objective, label noise, strategy, T): forgetting (points of gray zero-shot accuracy),
# ColoredMNIST ID and flipped-OOD accuracy, the teacher–student logit KL at T, the step by
# which half of the final forgetting had happened (on the gray probe), mean ± std over seeds,
# and the linear theory's predicted forgetting. Then the verdicts in words.

# %%
path = Path(os.environ.get("TRACER_HORIZON_RESULTS",
                           REPO_ROOT / "experiments/results/horizon/horizon.json"))
payload = json.loads(path.read_text())
print(f"{path}: seeds {payload['config']['seeds']}, horizons {payload['config']['horizons']}")
print(format_horizon(payload))

# %% [markdown]
# ## Forgetting against the horizon, and the curves over training
# Left: forgetting against T (log scale), measured (solid, mean ± std) and predicted by the
# linearization at the pretrained model (dashed). Right: for the longest horizon, the teachers'
# gap to the student, the forgetting on the gray probe and the linear theory's gap, on one time
# axis, so you can see whether forgetting follows the teacher's collapse.

# %%
# to results/figures, as every notebook's (TRACER_FIGURES overrides)
folder = settings().figures
for name, result in horizon_figures(payload).items():
    paths = save(result.figure, folder / f"horizon_{name}")
    display(Image(filename=str(paths[0])))
    print(result.report())
