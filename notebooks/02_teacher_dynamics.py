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
# # 02 · Teacher dynamics: EMA collapses, WMA persists
#
# THEORY §4. The student does gradient descent on the fit plus `λ/2 ‖(W − T)X_I‖²` toward a
# teacher updated as `T ← (1 − ω_t)T + ω_t W`. An EMA teacher (`ω = 1 − m`) catches up with the
# student, so the regularization fades; TRACER's WMA teacher uses `ω_t` from a Beta(0.5, 0.5)
# kernel over the horizon, so it stays a weighted average of the whole trajectory. All runs
# below are the exact per-direction dynamics (`tt.spectral_dynamics`, `tt.sweep`), in float64.

# %%
from tracer_theory.report.notebook import figure, settings

config = settings()
config

# %% [markdown]
# ## The kernel, the update weights, and what the teacher remembers

# %%
figure("wma_kernel", config);

# %% [markdown]
# ## The teacher–student gap over training (log scale)

# %%
figure("teacher_gap", config);

# %% [markdown]
# ## Task-subspace bias against the horizon
# Fitted power-law exponents against the prediction `−1/(2(1+λ))` (our derivation; the
# fixed-point iteration gives the same slope).

# %%
figure("bias_vs_horizon", config);

# %% [markdown]
# ## One sweep over (λ, horizon)

# %%
figure("sweep_heatmap", config);

# %% [markdown]
# ## Other kernels side by side

# %%
figure("kernels", config);
