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
# THEORY §2–§3. Linearized, the multimodal contrastive loss is a least-squares problem with the
# *contrastive target* `Y = W_T⁰ X_T C`. Every finetuning strategy then has a closed form that
# acts on the singular directions of the image features `X_I` through *filter factors* `f_i`,
# and splits into a change inside the task subspace (the span of `X_I`) and a change orthogonal
# to it, where the pretrained knowledge lives.
#
# Each figure below is computed from seeded problems in float64, saved to `figures/`, and
# followed by three sentences: what the paper claims, what the numbers show, whether they agree.
# The same figures come from `tracer-theory figures`.

# %%
from tracer_theory.report.notebook import figure, settings

config = settings()
config

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
