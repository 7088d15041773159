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
# # 03 · Forgetting in a toy CLIP: MNIST → ColoredMNIST
#
# [THEORY §6](../docs/THEORY.md). A small CLIP is pretrained contrastively on gray digits, then finetuned on
# ColoredMNIST (color agrees with the digit's group 95% of the time) with every strategy.
# Forgetting is the drop of zero-shot accuracy on gray test digits; OOD accuracy is measured
# with the color correlation flipped (p = 0.05).
#
# By default this notebook reads the committed 3-seed run (`experiments/results/toy`, made by
# `tracer-theory toy`). In quick mode (`TRACER_QUICK=1`) it reads `results/toy` and, when no
# results are there, runs the quick experiment itself (one seed, tiny budgets, about a minute).

# %%
from tracer_theory.deep.studies.experiment import format_table, quick_config, run_experiment
from tracer_theory.report.notebook import figure, settings
from tracer_theory.report.toy import load_payload

config = settings()
if config.quick and not any(config.toy_results.glob("fair_head*.json")):
    run_experiment(quick_config(), config.toy_results, progress=False)
available = {name: load_payload(config.toy_results, name)
             for name in ("fair_head", "paper_head", "fair_prompts")
             if any(config.toy_results.glob(f"{name}*.json"))}
print(f"results in {config.toy_results}: {sorted(available)}")

# %% [markdown]
# ## The forgetting table, in the open
# Each results file is plain JSON: `summary[strategy][metric]` is `[mean, std]` over seeds.
# Forgetting is the drop, in points, of the gray zero-shot accuracy from the pretrained model's.
# Beside ours, the paper's toy table (`PAPER_TOY`, whose "dynamic SD" was an EMA teacher with
# momentum 0.99999); the paper orders Direct FT > L2-SP > static SD > dynamic SD.

# %%
import json

from tracer_theory.report.toy import PAPER_TOY

path = config.toy_results / "fair_head.json"
if not path.exists():  # a quick run writes fair_head_quick.json
    path = config.toy_results / "fair_head_quick.json"
summary = json.loads(path.read_text())["summary"]
mean, std = summary["pretrained"]["gray_acc"]
print(f"{path.name}: pretrained gray zero-shot accuracy {mean:.1f} ± {std:.1f}% "
      f"(paper {PAPER_TOY.pretrained_zero_shot:g}%)")
print(f"{'strategy':14s} {'forgetting':>14s} {'paper':>6s}")
for strategy, metrics in summary.items():
    if "forgetting" in metrics:
        mean, std = metrics["forgetting"]
        paper = PAPER_TOY.forgetting.get(strategy)
        print(f"{strategy:14s} {mean:7.2f} ± {std:4.2f} {'' if paper is None else paper:>6}")

# %% [markdown]
# ## Forgetting, ID/OOD accuracy and calibration per strategy
# Mean ± std over seeds; hyperparameters chosen on the validation split and shared across the
# strategies (`tracer-theory toy --select`).

# %%
for name, payload in available.items():
    print(f"== {name}")
    print(format_table(payload))
    figure(f"toy_{name}", config)

# %% [markdown]
# ## The teacher–student gap in the deep model
# The linear theory (notebook 02) predicts that the EMA teacher collapses onto the student and
# the WMA teacher does not. Here are the same quantities, measured during finetuning.

# %%
figure("toy_gap_curves", config);

# %% [markdown]
# ## The deep decomposition against the linear prediction
# The image projection plays `W_I` and the pretrained features before it `X_I`. The linear
# theory predicts no orthogonal change except under weight decay; the deep model also moves its
# features, which the linearization holds fixed.

# %%
figure("toy_decomposition", config);
