"""Mutation check: do the tests catch a plausible wrong number? Plants one bug at a time.

    python experiments/mutants.py [--only SUBSTRING] [--list] [--timeout 300]

Each entry of ``MUTANTS`` is a plausible planted bug (a flipped sign, a moved threshold, an
off-by-one, a dropped term, swapped arguments): ``(file, exact original snippet, replacement,
tests, description)``. The script copies the repository's files (tracked and untracked, not
ignored: ``git ls-files``) once into a temporary folder; then, for each mutant in turn, replaces
the snippet there (it must occur exactly once), runs ``python -m pytest -x -q -n 0 -p
no:cacheprovider TESTS`` in the copy with ``PYTHONPATH`` = the copy (the mutated package, not
this checkout's editable install: checked first), and restores the file. A mutant is *killed*
when the tests fail (or time out: ``timeout``); a *survivor* is a wrong number no test catches:
write a test against an independent reference that kills it. Prints ``mutant | file | tests |
result | seconds | killed by`` and ``N planted, K killed, S survived``; exit code 1 if any
survived (or its tests could not run: ``error``).

To add mutants: append ``Mutant(...)`` entries to ``MUTANTS`` (a snippet long enough to be
unique; ``tests`` are test files or node ids, fastest and most likely to kill first, since
``-x`` stops at the first failure). ``--only`` selects by description or file.
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import NamedTuple

ROOT = Path(__file__).resolve().parents[1]


class Mutant(NamedTuple):
    file: str  # relative to the repository root
    original: str  # an exact snippet that occurs once in the file
    replacement: str
    tests: tuple[str, ...]  # test files or node ids, relative to the root
    description: str


DIAG = "tracer_theory/dynamics/diagnostics.py"
DIAG_TESTS = ("tests/test_diagnostics_reference.py", "tests/test_dynamics.py",
              "tests/test_fast_paths.py")
DESIGN = "tracer_theory/dynamics/design.py"
DESIGN_TESTS = ("tests/test_design_reference.py", "tests/test_reliability_dynamics.py",
                "tests/test_pareto.py")

GRAM = "tracer_theory/deep/structured.py"
GRAM_TESTS = ("tests/test_structured.py",)

MUTANTS = [
    # --- collapse diagnostics -------------------------------------------------------------
    Mutant(DIAG, "(gaps <= 0.5 * peak[None])", "(gaps <= 0.55 * peak[None])", DIAG_TESTS,
           "diagnostics: half-life threshold 0.55 of the peak, not 0.5"),
    Mutant(DIAG, "(gaps <= 0.5 * peak[None])", "(gaps < 0.5 * peak[None])", DIAG_TESTS,
           "diagnostics: half-way test strict (<), not <="),
    Mutant(DIAG, "new_peak = block_peak > trace.peak", "new_peak = block_peak >= trace.peak",
           DIAG_TESTS, "diagnostics: a tie with the peak so far moves the peak (>=)"),
    Mutant(DIAG, "i_max = jnp.argmax(masked, axis=0)",
           "i_max = masked.shape[0] - 1 - jnp.argmax(masked[::-1], axis=0)", DIAG_TESTS,
           "diagnostics: last maximum of a block, not the first"),
    Mutant(DIAG, "below = valid & (~new_peak[None] | (at > i_max[None])) & ",
           "below = valid & ", DIAG_TESTS,
           "diagnostics: half-way search includes the records before the peak"),
    Mutant(DIAG, "half_step = jnp.where(new_peak, jnp.inf, trace.half_step)",
           "half_step = trace.half_step", DIAG_TESTS,
           "diagnostics: a new peak does not restart the half-way search"),
    Mutant(DIAG, "jnp.where(jnp.isinf(half_step) & jnp.any(below, axis=0)",
           "jnp.where(jnp.any(below, axis=0)", DIAG_TESTS,
           "diagnostics: a later block's half-way step overrides the first"),
    Mutant(DIAG, "0.5 * (gaps + previous_gap) * (steps - previous_step)",
           "gaps * (steps - previous_step)", DIAG_TESTS,
           "diagnostics: area by right end points, the previous record dropped"),
    Mutant(DIAG, "span = jnp.asarray(stop, dtype) - jnp.asarray(first_step, dtype)",
           "span = jnp.asarray(stop, dtype)", DIAG_TESTS,
           "diagnostics: AUC span from step 0, the first step dropped"),
    Mutant(DIAG, "valid = steps <= stop[None]", "valid = steps < stop[None]", DIAG_TESTS,
           "diagnostics: the record at stop excluded (<)"),
    Mutant(DIAG, "last = jnp.sum(valid, axis=0) - 1", "last = jnp.sum(valid, axis=0)",
           DIAG_TESTS, "diagnostics: final gap index off by one"),
    Mutant(DIAG, "half_life=trace.half_step - trace.peak_step",
           "half_life=trace.half_step - jnp.asarray(first_step, dtype)", DIAG_TESTS,
           "diagnostics: half-life counted from the first record, not the peak"),
    Mutant(DIAG, "(stop >= steps[0])", "(stop > steps[0])", DIAG_TESTS,
           "diagnostics: stop == steps[0] refused (>)"),
    Mutant(DIAG, "broken=trace.broken | jnp.any(valid & bad, axis=0)",
           "broken=trace.broken | jnp.any(bad, axis=0)", DIAG_TESTS,
           "diagnostics: a NaN past stop poisons the curve"),
    # --- teacher design -------------------------------------------------------------------
    Mutant(DESIGN, "return optax.apply_updates(p, updates), state, aux",
           "return optax.apply_updates(p, jax.tree.map(jnp.negative, updates)), state, aux",
           DESIGN_TESTS, "design: Adam's updates negated (climbs in forgetting)"),
    Mutant(DESIGN, "jnp.log(forgot) + penalty * excess**2",
           "jnp.log(forgot) - penalty * excess**2", DESIGN_TESTS,
           "design: penalty sign flipped"),
    Mutant(DESIGN, "jnp.maximum(loss - target, 0.0)", "jnp.maximum(target - loss, 0.0)",
           DESIGN_TESTS, "design: penalty excess with swapped arguments"),
    Mutant(DESIGN, "best, best_forgot = params, forgot", "best, best_forgot = new, forgot",
           DESIGN_TESTS, "design: keeps the point after the best one (off by one)"),
    Mutant(DESIGN, "if loss <= target + 1e-3 * scale and", "if loss <= target + 1e-1 * scale and",
           DESIGN_TESTS, "design: best point's task-loss tolerance 10%, not 0.1%"),
    Mutant(DESIGN, "if loss <= target + 1e-3 * scale and forgot < best_forgot:",
           "if forgot < best_forgot:", DESIGN_TESTS,
           "design: best point ignores the task-loss target"),
    Mutant(DESIGN, "if float(loss(_shift_lam(params, jnp.asarray(mid)))) < target:",
           "if float(loss(_shift_lam(params, jnp.asarray(mid)))) > target:", DESIGN_TESTS,
           "design: calibrate bisects the wrong way"),
    Mutant(DESIGN, "tradeoff_: Tradeoff, iterations: int = 60)",
           "tradeoff_: Tradeoff, iterations: int = 6)", DESIGN_TESTS,
           "design: calibrate stops after 6 halvings"),
    Mutant(DESIGN, "return tradeoff_.task_loss(f), tradeoff_.forgetting(f)",
           "return tradeoff_.forgetting(f), tradeoff_.task_loss(f)", DESIGN_TESTS,
           "design: metrics returns (forgetting, task loss) swapped"),
    Mutant(DESIGN, 'return ema_teacher(jax.nn.sigmoid(params["logit_m"]))',
           'return ema_teacher(1 - jax.nn.sigmoid(params["logit_m"]))', DESIGN_TESTS,
           "design: EMA family passes 1 - momentum"),
    Mutant(DESIGN, "lr=default_lr(sigma_max_sq, lam))", "lr=default_lr(lam, sigma_max_sq))",
           DESIGN_TESTS, "design: teacher families' step with swapped arguments"),
    Mutant(DESIGN, "oracle_forgetting(front, max(loss, floor))",
           "oracle_forgetting(front, max(target, floor))", DESIGN_TESTS,
           "design: oracle taken at the target, not at the result's task loss"),
    # --- the eNTK Gram by structured derivatives -----------------------------------------
    Mutant(GRAM, "return x, jnp.swapaxes(g.reshape(k, tap.P, tap.O), 1, 2)",
           "return x, g.reshape(k, tap.O, tap.P)", GRAM_TESTS,
           "structured: cotangent layout of an x @ W layer taken as W @ x"),
    Mutant(GRAM, 'inputs = jnp.einsum("ipc,jqc->ijpq", xi, x2, precision=_HI)',
           'inputs = jnp.einsum("ipc,jqc->ijqp", xi, x2, precision=_HI)', GRAM_TESTS,
           "structured: shared weight's input Gram transposed"),
    Mutant(GRAM, "                out[cols, rows] = out[rows, cols].T", "                pass",
           GRAM_TESTS, "structured: pairs below the diagonal not mirrored"),
    Mutant(GRAM, "if len(sides) != 1 or uses[ops[sides[0]]] != 1:",
           "if len(sides) != 1 or uses[ops[sides[0]]] > 2:", GRAM_TESTS,
           "structured: a weight used twice taken as a layer"),
    Mutant(GRAM, "* inputs[:, None, :, None]", "* inputs.T[:, None, :, None]", GRAM_TESTS,
           "structured: a dense layer's input Gram transposed"),
    Mutant(GRAM, "return patches.reshape(tap.C, tap.P).T, g.reshape(k, tap.O, tap.P)",
           "return patches.reshape(tap.P, tap.C), g.reshape(k, tap.O, tap.P)", GRAM_TESTS,
           "structured: convolution patches read position-major"),
]

# --- the studies (deep/studies/): one list per study ------------------------------------------
HORIZON = "tracer_theory/deep/studies/horizon.py"
HORIZON_UNIT = ("tests/test_horizon.py",)
HORIZON_STUDY = ("tests/test_horizon_reference.py",)
HORIZON_BOTH = (*HORIZON_UNIT, *HORIZON_STUDY)
HORIZON_MUTANTS: list[Mutant] = [
    Mutant(HORIZON, 'values["forgetting"] = before["gray_acc"] - after["gray_acc"]',
           'values["forgetting"] = after["gray_acc"] - before["gray_acc"]', HORIZON_STUDY,
           "horizon: forgetting sign flipped (after − before)"),
    Mutant(HORIZON, '(probe_before - np.asarray(run.curves["gray_acc"]))',
           '(np.asarray(run.curves["gray_acc"]) - probe_before)', HORIZON_STUDY,
           "horizon: forgetting curve sign flipped"),
    Mutant(HORIZON, '(probe_before - np.asarray(run.curves["gray_acc"]))',
           '(before["gray_acc"] - np.asarray(run.curves["gray_acc"]))', HORIZON_STUDY,
           "horizon: forgetting curve measured from the test split's accuracy, not the probe's"),
    Mutant(HORIZON, "at = int(np.searchsorted(steps, t))",
           "at = int(np.searchsorted(steps, t)) - 1", HORIZON_STUDY,
           "horizon: evaluation index off by one (the record before T)"),
    Mutant(HORIZON, 'values["final_loss"] = float(run.curves["loss"][at])',
           'values["final_loss"] = float(run.curves["loss"][-1])', HORIZON_STUDY,
           "horizon: final loss of the whole run, not at T"),
    Mutant(HORIZON, 'values[f"gap_{k}"] = float(run.curves[k][at])',
           'values[f"gap_{k}"] = float(run.curves[k][-1])', HORIZON_STUDY,
           "horizon: final gaps of the whole run, not at T"),
    Mutant(HORIZON, "model = run.model if t == ft.steps else run.snapshots[t]",
           "model = run.model", HORIZON_STUDY,
           "horizon: every horizon evaluated on the final model (wrong horizon's snapshot)"),
    Mutant(HORIZON, "forgetting >= 0.5 * forgetting[-1]", "forgetting >= 0.55 * forgetting[-1]",
           HORIZON_BOTH, "horizon: half-forgetting threshold 0.55, not 0.5"),
    Mutant(HORIZON, "forgetting >= 0.5 * forgetting[-1]", "forgetting > 0.5 * forgetting[-1]",
           HORIZON_BOTH, "horizon: half-forgetting test strict (>), not >="),
    Mutant(HORIZON, "lam = strategy.lam if has_teacher(strategy) else 0.0", "lam = 0.0",
           HORIZON_STUDY, "horizon: every teacher's prediction made with λ = 0"),
    Mutant(HORIZON, "lam = strategy.lam if has_teacher(strategy) else 0.0",
           "lam = strategy.lam if has_teacher(strategy) else sd_lam", HORIZON_STUDY,
           "horizon: Direct FT predicted with the SD λ"),
    Mutant(HORIZON, "lr = float(default_lr(spec.sigma_sq[0], sd_lam))",
           'lr = float(default_lr(spec.sigma_sq[0], REGISTRY["l2sp"].strategy.lam))',
           HORIZON_STUDY, "horizon: prediction step from the bound at L2-SP's λ, not SD's"),
    Mutant(HORIZON, "res = spectral_dynamics(problem, lam, schedule, steps=t, lr=lr,",
           "res = spectral_dynamics(problem, lam, schedule, steps=config.horizons[-1], lr=lr,",
           HORIZON_STUDY, "horizon: every prediction at the longest horizon"),
    Mutant(HORIZON, 'row = {"gap": float(res.summary.gap[-1])',
           'row = {"gap": float(res.summary.gap[-2])', HORIZON_STUDY,
           "horizon: predicted final gap from the record before T"),
    Mutant(HORIZON, "return max(1, min(config.finetune.log_every, t))", "return max(1, t)",
           HORIZON_STUDY, "horizon: predicted gap curve recorded only at 0 and T"),
    Mutant(HORIZON,
           "theory[setting][str(seed)] = predict(config, pretrained, data, labels, objective)",
           "theory[setting][str(seed)] = predict(config, pretrained, data, data.train_labels, "
           "objective)", HORIZON_STUDY, "horizon: predictions made with the noise-free labels"),
    Mutant(HORIZON, '{"mean": float(np.mean(finite)) if finite else None,\n'
                    '                              "std": float(np.std(finite)) if finite',
           '{"mean": float(np.std(finite)) if finite else None,\n'
           '                              "std": float(np.mean(finite)) if finite',
           HORIZON_BOTH, "horizon: summary mean and std swapped"),
    Mutant(HORIZON, '"std": float(np.std(finite))', '"std": float(np.std(finite, ddof=1))',
           HORIZON_BOTH, "horizon: summary std with ddof = 1"),
    Mutant(HORIZON, 'np.mean([r["gap_curve"] for r in rows], axis=0)',
           'np.mean([r["gap_curve"] for r in rows], axis=1)', HORIZON_BOTH,
           "horizon: predicted gap curves averaged over the wrong axis (steps, not seeds)"),
    Mutant(HORIZON, '< _mean(summary, setting, "ema_sd", t)]',
           '> _mean(summary, setting, "ema_sd", t)]', HORIZON_STUDY,
           "horizon: verdict's WMA-below-EMA comparison reversed"),
]

BUDGET = "tracer_theory/deep/studies/budget.py"
BUDGET_MUTANTS: list[Mutant] = [
    Mutant(BUDGET, "tangent.embed(tangent.params, x) + tangent.jvp(delta, x),",
           "tangent.embed(tangent.params, x) + 0 * tangent.jvp(delta, x),",
           ("tests/test_budget.py::test_r0_prime_is_the_tangent_closed_form_through_a_jvp",),
           "budget: R0' with the tangent model's change times 0 (the pretrained model)"),
    Mutant(BUDGET, "tangent.embed(tangent.params, x) + tangent.jvp(delta, x),",
           "tangent.embed(tangent.params, x) - tangent.jvp(delta, x),",
           ("tests/test_budget.py::test_r0_prime_is_the_tangent_closed_form_through_a_jvp",),
           "budget: R0' with the tangent model's change subtracted"),
    Mutant(BUDGET, "delta = tangent.delta(strategy.linear(tangent, steps))",
           "delta = tangent.delta(strategy.linear(self.linear, steps))",
           ("tests/test_budget.py::test_r0_prime_is_the_tangent_closed_form_through_a_jvp",),
           "budget: R0' teacher's step from the last layer's curvature, not the tangent's"),
    Mutant(BUDGET, "delta = tangent.delta(strategy.linear(tangent, steps))",
           "delta = tangent.delta(strategy.linear(tangent, steps + 1))",
           ("tests/test_budget.py::test_r0_prime_is_the_tangent_closed_form_through_a_jvp",),
           "budget: R0' teacher over one step more than the run (off by one)"),
    Mutant(BUDGET, "w = np.asarray(solve(self.linear, strategy.linear(self.linear, steps)))",
           "w = np.asarray(solve(self.linear, strategy.linear(self.linear, steps + 1)))",
           ("tests/test_budget.py::test_r0_is_the_last_layer_closed_form_on_a_numpy_probe",),
           "budget: R0's teacher over one step more than the run (off by one)"),
    Mutant(BUDGET, "self.data.color_train[self.data.sample(self.config.n)]",
           "self.data.color_train[:self.config.n]",
           ("tests/test_budget.py::test_r0_prime_is_the_tangent_closed_form_through_a_jvp",),
           "budget: tangent problem on the first n images, not the closed forms' sample"),
    Mutant(BUDGET, "zero_shot_change(self.probe.labels, self.before, logits)",
           "zero_shot_change(self.probe.labels, logits, self.before)",
           ("tests/test_budget.py::test_r0_is_the_last_layer_closed_form_on_a_numpy_probe",),
           "budget: a rung's before and after logits swapped"),
    Mutant(BUDGET, "in_compute_dtype(_change(self.pretrained, model), \"float64\")",
           "in_compute_dtype(_change(model, self.pretrained), \"float64\")",
           ("tests/test_budget.py::test_measured_rung_is_numpy_on_the_moved_model",),
           "budget: task fraction of the change with its arguments swapped"),
    Mutant(BUDGET, "d_image = image.delta if isinstance(image, Linearized)",
           "d_image = image.params if isinstance(image, Linearized)",
           ("tests/test_budget.py::test_measured_rung_is_numpy_on_the_moved_model",),
           "budget: tangent model's change read as θ, not θ − θ⁰"),
    Mutant(BUDGET, "d_proj = jax.tree.map(jnp.subtract, eqx.filter(proj, eqx.is_inexact_array), "
           "proj0)", "d_proj = jax.tree.map(jnp.zeros_like, proj0)",
           ("tests/test_budget.py::test_measured_rung_is_numpy_on_the_moved_model",),
           "budget: the projection's change left out of the task fraction"),
    Mutant(BUDGET, 'if rung in ("R2", "R3", GD):', 'if rung in ("R2", GD):',
           ("tests/test_budget.py::test_measured_rung_is_numpy_on_the_moved_model",),
           "budget: R3's task fraction not measured"),
    Mutant(BUDGET, "abs(m[rung] - m[\"R4\"])", "abs(m[rung] - m[\"R3\"])",
           ("tests/test_budget.py::test_summary_and_verdicts_by_hand",),
           "budget: summary's mean absolute error against R3, not R4"),
    Mutant(BUDGET, "[m[\"R4\"] for m in mean.values()])", "[m[\"R3\"] for m in mean.values()])",
           ("tests/test_budget.py::test_spearman_and_errors_are_against_r4_by_hand",),
           "budget: Spearman against R3, not R4"),
    Mutant(BUDGET, "itertools.pairwise(r for r in rungs if r != \"R0'\")",
           "itertools.pairwise(r for r in reversed(rungs) if r != \"R0'\")",
           ("tests/test_budget.py::test_summary_and_verdicts_by_hand",),
           "budget: ladder steps in reverse order"),
    Mutant(BUDGET, "return pretrained, Restricted(strategy)", "return pretrained, strategy",
           ("tests/test_budget.py::test_trained_rungs_train_what_they_name",),
           "budget: R1 trains the whole network (Restricted dropped)"),
    Mutant(BUDGET,
           "tangent = eqx.tree_at(lambda m: m.clip, pretrained, linearize(pretrained.clip))",
           "tangent = pretrained",
           ("tests/test_budget.py::test_trained_rungs_train_what_they_name",),
           "budget: R2 trains the real network (not linearized)"),
    Mutant(BUDGET, "scale = 1 / (extra[\"curvature\"] * training.lr)",
           "scale = extra[\"curvature\"] * training.lr",
           ("tests/test_budget.py::"
            "test_gradient_descent_control_step_is_its_recorded_curvature_self_consistency",),
           "budget: gradient-descent control's step scale inverted"),
    Mutant(BUDGET, "index = slice(None) if rung == \"R4\" else self.index", "index = self.index",
           ("tests/test_budget.py::test_trained_rungs_train_what_they_name",),
           "budget: R4 trained on the n images, not all"),
    Mutant(BUDGET, "data.sample(config.n), sample,", "np.arange(config.n), sample,",
           ("tests/test_budget.py::test_trained_rungs_train_what_they_name",),
           "budget: trained rungs on the first n images, not the closed forms' sample"),
]

TEACHERS = "tracer_theory/deep/studies/teachers.py"
TEACHERS_MUTANTS: list[Mutant] = [
    Mutant(TEACHERS, "else (1 - t) * values[k] + t * values[k + 1]",
           "else t * values[k] + (1 - t) * values[k + 1]",
           ("tests/test_teachers_reference.py", "tests/test_teachers.py"),
           "teachers: interpolation weights swapped (t on the left point, 1 − t on the right)"),
    Mutant(TEACHERS, "if min(a, b) < target < max(a, b):",
           "if min(a, b) <= target <= max(a, b):",
           ("tests/test_teachers_reference.py", "tests/test_teachers.py"),
           "teachers: a segment's ends count as crossings too (<=, not <)"),
    Mutant(TEACHERS, "k, t = found[0]", "k, t = found[-1]",
           ("tests/test_teachers_reference.py", "tests/test_teachers.py"),
           "teachers: the last crossing in λ order, not the first"),
    Mutant(TEACHERS, "return float(np.exp((1 - t) * np.log(lams[k]) + t * np.log(lams[k + 1])))",
           "return float((1 - t) * lams[k] + t * lams[k + 1])",
           ("tests/test_teachers_reference.py", "tests/test_teachers.py"),
           "teachers: λ at a crossing interpolated linearly, not on the log scale"),
    Mutant(TEACHERS, "    if lams[k] > 0:\n", "    if lams[k] >= 0:\n",
           ("tests/test_teachers_reference.py", "tests/test_teachers.py"),
           "teachers: λ = 0 taken on the log scale too (>=)"),
    Mutant(TEACHERS, 'return max(scores, key=lambda k: scores[k]["score"])',
           'return min(scores, key=lambda k: scores[k]["score"])',
           ("tests/test_teachers_reference.py", "tests/test_teachers.py"),
           "teachers: select_lambda takes the lowest validation score"),
    Mutant(TEACHERS, 'return max(scores, key=lambda k: scores[k]["score"])',
           'return max(reversed(list(scores)), key=lambda k: scores[k]["score"])',
           ("tests/test_teachers_reference.py", "tests/test_teachers.py"),
           "teachers: select_lambda takes the last λ of a tie"),
    Mutant(TEACHERS, '"std": float(np.std(values)),', '"std": float(np.std(values, ddof=1)),',
           ("tests/test_teachers_reference.py", "tests/test_teachers.py"),
           "teachers: std over seeds with ddof = 1"),
    Mutant(TEACHERS, "if name == reference:  # its own chosen point",
           "if False:  # its own chosen point",
           ("tests/test_teachers_reference.py", "tests/test_teachers.py"),
           "teachers: the reference's own point interpolated on its curve"),
    Mutant(TEACHERS, 'target = ref["chosen"]["id_acc"]["mean"]',
           'target = ref["chosen"]["id_acc"]["seeds"][0]',
           ("tests/test_teachers_reference.py", "tests/test_teachers.py"),
           "teachers: equal-ID target is the first seed's ID accuracy, not the seed mean"),
    Mutant(TEACHERS, "for lam in sorted(per_lam, key=float)}", "for lam in sorted(per_lam)}",
           ("tests/test_teachers_reference.py", "tests/test_teachers.py"),
           "teachers: curves in λ keys' text order (10 before 3)"),
    Mutant(TEACHERS, 'word = "less" if lower == n else', 'word = "less" if lower > 0 else',
           ("tests/test_teachers_reference.py", "tests/test_teachers.py"),
           "teachers: \"less\" when lower on any seed, not on every seed"),
    Mutant(TEACHERS, '[lam_key(p["lam"])])["forgetting"]["mean"]',
           '[lam_key(p["lam"])])["id_acc"]["mean"]',
           ("tests/test_teachers_reference.py", "tests/test_teachers.py"),
           "teachers: linear check against the measured ID accuracy, not the forgetting"),
    Mutant(TEACHERS, 'test["forgetting"] = before["gray_acc"] - test["gray_acc"]',
           'test["forgetting"] = test["gray_acc"] - before["gray_acc"]',
           ("tests/test_teachers.py",),
           "teachers: forgetting's sign flipped (after − before)"),
    Mutant(TEACHERS, "w = solve(problem, strategy.linear(problem, config.training().steps))",
           "w = solve(problem, strategy.linear(problem, 1))", ("tests/test_teachers.py",),
           "teachers: the linear twins' teachers over one step, not the run's steps"),
    Mutant(TEACHERS, "predicted_forgetting(probe, problem.w0,\n" + " " * 64 + "w)",
           "predicted_forgetting(probe, w,\n" + " " * 64 + "problem.w0)",
           ("tests/test_teachers.py",),
           "teachers: linear twins' zero-shot drop with W⁰ and W swapped"),
]

PARETO = "tracer_theory/deep/studies/pareto.py"
PARETO_MUTANTS: list[Mutant] = [
    Mutant(PARETO, "(loss <= floor + 0.9 * (most - floor))",
           "(loss <= floor + 0.95 * (most - floor))", ("tests/test_pareto_reference.py",),
           "pareto: the curves' middle reaches 95% of the way to W⁰, not 90%"),
    Mutant(PARETO, "& (loss <= floor + 0.9", "| (loss <= floor + 0.9",
           ("tests/test_pareto_reference.py",), "pareto: the curves' middle is an or, not an and"),
    Mutant(PARETO, "ratio = np.asarray(frontier_ratio(front, curve))[inside]",
           "ratio = np.asarray(curve.forgetting)[inside]", ("tests/test_pareto_reference.py",),
           "pareto: the middle reports forgetting, not its ratio to the oracle"),
    Mutant(PARETO, "filter_factors(problem, StaticSD(1.0), spectrum=spec)",
           "filter_factors(problem, L2SP(1.0), spectrum=spec)",
           ("tests/test_pareto_reference.py",),
           "pareto: the target at L2-SP's λ = 1, not static SD's"),
    Mutant(PARETO, "np.interp(target, np.asarray(replay.task_loss), np.log(np.asarray(lams)))",
           "np.log(np.interp(target, np.asarray(replay.task_loss), np.asarray(lams)))",
           ("tests/test_pareto_reference.py",),
           "pareto: replay-SD's λ at the target interpolated linearly, not in log λ"),
    Mutant(PARETO, '"wma_sd": BetaFamily(steps)}', '"wma_sd": GridFamily(steps)}',
           ("tests/test_pareto_reference.py",),
           "pareto: the paper's WMA teacher at the target is the free-form kernel's start"),
    Mutant(PARETO, "TeacherSD(lam, ema_teacher(0.99), steps=steps,",
           "TeacherSD(lam, ema_teacher(0.9), steps=steps,", ("tests/test_pareto_reference.py",),
           "pareto: the EMA curve's momentum 0.9, not 0.99"),
    Mutant(PARETO, "TeacherSD(lam, wma_teacher(steps), steps=steps,",
           "TeacherSD(lam, wma_teacher(steps // 2), steps=steps,",
           ("tests/test_pareto_reference.py",), "pareto: the WMA curve's kernel over half the run"),
    Mutant(PARETO, '"direct": {"task_loss": float(trade.floor),',
           '"direct": {"task_loss": float(trade.most_task_loss),',
           ("tests/test_pareto_reference.py",), "pareto: Direct FT's task loss is W⁰'s"),
    Mutant(PARETO, "{c['middle_ratio'][0]:.2f}–{c['middle_ratio'][1]:.2f}×",
           "{c['middle_ratio'][0]:.2f}–{c['middle_ratio'][0]:.2f}×",
           ("tests/test_pareto_reference.py",),
           "pareto: the middle's sentence states its min twice"),
]

MUTANTS += HORIZON_MUTANTS + BUDGET_MUTANTS + TEACHERS_MUTANTS + PARETO_MUTANTS


def copy_repository(dest: Path) -> None:
    """The working tree's tracked and untracked (not ignored) files, copied under ``dest``."""
    listed = subprocess.run(["git", "ls-files", "-z", "--cached", "--others",
                             "--exclude-standard"], cwd=ROOT, check=True,
                            capture_output=True).stdout.decode().split("\0")
    for name in filter(None, listed):
        source = ROOT / name
        if source.is_file():  # skips files deleted in the working tree
            (dest / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, dest / name)


def check(mutant: Mutant) -> None:
    """A ValueError unless the snippet occurs once and every test path exists."""
    count = (ROOT / mutant.file).read_text().count(mutant.original)
    missing = [t for t in mutant.tests if not (ROOT / t.split("::")[0]).exists()]
    if count != 1 or missing:
        raise ValueError(f"{mutant.description}: the snippet occurs {count} times in "
                         f"{mutant.file} (must be once); missing tests: {missing}")


def run(mutant: Mutant, copy: Path, env: dict[str, str], timeout: float) -> tuple[str, str]:
    """``(result, first failing test)`` of the tests with this one mutant planted in ``copy``."""
    path = copy / mutant.file
    original = path.read_text()
    assert original.count(mutant.original) == 1, mutant.description
    path.write_text(original.replace(mutant.original, mutant.replacement))
    cmd = [sys.executable, "-m", "pytest", "-x", "-q", "-n", "0", "-p", "no:cacheprovider",
           *(str(copy / test) for test in mutant.tests)]
    proc = subprocess.Popen(cmd, cwd=copy, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, start_new_session=True)
    try:
        out, _ = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)  # pytest and anything it started
        proc.communicate()
        return "timeout", ""
    finally:
        path.write_text(original)
    failed = [line.split(" - ")[0].split(" ", 1)[1].split("::", 1) for line in out.splitlines()
              if line.startswith(("FAILED ", "ERROR "))]
    failed = ["::".join([Path(f[0]).name, *f[1:]]) for f in failed]
    # tests failed, or collection failed (an import error; pytest's code 4 for a node id)
    if proc.returncode in (1, 2) or (proc.returncode == 4 and "ERROR collecting" in out):
        return "killed", failed[0] if failed else f"rc {proc.returncode}"
    if proc.returncode == 0:
        return "survived", ""
    print(out[-3000:], file=sys.stderr)
    return "error", f"rc {proc.returncode}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--only", default="", help="mutants whose description or file match")
    parser.add_argument("--list", action="store_true", help="list the mutants and exit")
    parser.add_argument("--timeout", type=float, default=300.0, help="seconds per mutant")
    args = parser.parse_args(argv)
    chosen = [m for m in MUTANTS if args.only in m.description or args.only in m.file]
    if not chosen:
        parser.error(f"no mutant matches --only {args.only!r}")
    for m in chosen:
        check(m)
    if args.list:
        for i, m in enumerate(chosen):
            print(f"{i:3d}  {m.file}  {m.description}  [{', '.join(m.tests)}]")
        return 0
    with tempfile.TemporaryDirectory(prefix="mutants_") as tmp:
        copy = Path(tmp).resolve()
        copy_repository(copy)
        env = {**os.environ, "TRACER_SLOW_TESTS": "1", "PYTHONPATH": os.pathsep.join(
            filter(None, [str(copy), os.environ.get("PYTHONPATH")]))}
        where = subprocess.run([sys.executable, "-c", "import tracer_theory; "
                                "print(tracer_theory.__file__)"], cwd=copy, env=env,
                               check=True, capture_output=True, text=True).stdout.strip()
        if not Path(where).resolve().is_relative_to(copy):
            raise RuntimeError(f"the copy imports tracer_theory from {where}, not from {copy}")
        rows = []
        for m in chosen:
            start = time.perf_counter()
            result, by = run(m, copy, env, args.timeout)
            rows.append((m.description, m.file.split("/")[-1],
                         ",".join(t.split("/")[-1] for t in m.tests), result,
                         f"{time.perf_counter() - start:.0f}", by))
            print(" | ".join(rows[-1]), flush=True)
    header = ("mutant", "file", "tests", "result", "seconds", "killed by")
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
    print()
    for row in [header, *rows]:
        print(" | ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip())
    killed, survived = (sum(r[3] in kinds for r in rows) for kinds in
                        (("killed", "timeout"), ("survived",)))
    errors = len(rows) - killed - survived
    print(f"{len(rows)} planted, {killed} killed, {survived} survived"
          + (f", {errors} could not run" if errors else ""))
    return 0 if killed == len(rows) else 1


if __name__ == "__main__":
    sys.exit(main())
