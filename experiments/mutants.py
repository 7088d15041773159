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
        env = {**os.environ, "PYTHONPATH": os.pathsep.join(
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
