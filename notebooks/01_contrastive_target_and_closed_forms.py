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
# # 01 · The contrastive target and the closed forms
#
# [THEORY §2–§3](../docs/THEORY.md). Linearized, the multimodal contrastive loss is a least-squares problem with the
# *contrastive target* `Y = W_T⁰ X_T C`. Every finetuning strategy then has a closed form that
# acts on the singular directions of the image features `X_I` through *filter factors* `f_i`,
# and splits into a change inside the task subspace (the span of `X_I`) and a change orthogonal
# to it, where the pretrained knowledge lives.
#
# Each figure below is computed from seeded problems in float64, saved to `results/figures/`
# (ignored by git; `TRACER_FIGURES` names another folder), and followed by three sentences: what
# the paper claims, what the numbers show, whether they agree. The committed `figures/` are the
# same figures, made by `tracer-theory figures`.

# %%
from tracer_theory.report.notebook import figure, settings

config = settings()
config

# %% [markdown]
# ## One problem, in the open
# The public API in a few lines you can copy: a seeded problem (`tt.random_problem`, `X_I` with
# 24 features and 12 samples, so its span leaves a 12-dimensional orthogonal complement), its SVD
# once (`tt.spectrum`), each strategy's closed form (`tt.solve`), the split of `W − W⁰` into a
# task-subspace and an orthogonal part relative to `‖W⁰‖` (`tt.decompose`), and the filter factors
# (`tt.filter_factors`). Every strategy but weight decay leaves the orthogonal part of `W⁰` alone
# (its orthogonal change is round-off); static SD filters `1/(1 + λ)` in every direction, L2-SP
# `σ²/(σ² + λ)`.

# %%
import jax

import tracer_theory as tt

jax.config.update("jax_enable_x64", True)  # this notebook computes in float64

problem = tt.random_problem(d_img=24, n=12, d_txt=10, k=6, seed=0)
spec = tt.spectrum(problem)
print(f"σ² of X_I: {float(spec.sigma_sq.min()):.3g}..{float(spec.sigma_sq.max()):.3g}")
for strategy in (tt.DirectFT(), tt.StaticSD(1.0), tt.L2SP(1.0), tt.WeightDecay(0.1)):
    w = tt.solve(problem, strategy, spectrum=spec)
    parts = tt.decompose(problem, w, spectrum=spec)
    f = tt.filter_factors(problem, strategy, spectrum=spec)
    print(f"{type(strategy).__name__:12s} task change {float(parts.task_norm):6.3f}   "
          f"orthogonal change {float(parts.orthogonal_norm):.1e}   "
          f"filter factors {float(f.min()):.3f}..{float(f.max()):.3f}")

# %% [markdown]
# ## The target matrix and the least-squares equivalence
# Left: the contrast matrix `C = nI − J`; middle: the target `Y`; right: the trace form of the
# linearized MMCL loss against `½‖W X_I − Y‖² − ½‖Y‖²` for random `W`.

# %%
figure("contrastive_target", config);

# %% [markdown]
# ## Each closed form is where gradient descent on its own objective ends

# %%
figure("closed_forms_gd", config);

# %% [markdown]
# ## The geometric decomposition
# Task-subspace change `(W − W⁰)P` and orthogonal change `(W − W⁰)(I − P)` per strategy. The
# teachers of EMA SD and WMA SD run for a finite horizon (their filter factors are the exact
# finite-horizon coefficients, `tt.TeacherSD`).

# %%
figure("decomposition", config);

# %% [markdown]
# ## Filter factors against σ²
# Direct FT fits every direction (`f = 1`); stopped GD `1 − (1 − ησ²)^t`; L2-SP `σ²/(σ² + λ)`;
# static SD `1/(1 + λ)` in every direction; EMA SD drifts to Direct FT; WMA SD keeps a filter.

# %%
figure("filter_factors", config);
