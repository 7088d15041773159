"""The error budget at two finetuning-sample sizes, side by side: the committed n = 128 run
(``experiments/results/budget/budget_toy.json``, restricted to the seeds of the other run) and
the n = 512 run (``experiments/results/budget_n512/budget_toy.json``).

    python experiments/compare_budget_n.py [--small PATH] [--large PATH] [--out PATH]

Prints, per objective, each rung's mean |rung − R4| over the points, the mean |step| along the
ladder (R3 → R4 is the finetuning sample: n images against all of them) and each closed form's
Spearman ρ with R4, for both runs; writes the same as JSON (``--out``, default
``experiments/results/budget_n512/comparison.json``). Both summaries come from
``budget.summarize``, so the numbers are computed the way the study computes its own.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from tracer_theory._io import write_json_atomic
from tracer_theory.deep.studies.budget import BudgetConfig, summarize

RESULTS = Path(__file__).resolve().parent / "results"


def load(path: Path, seeds: set[int] | None = None) -> tuple[dict[str, Any], dict[str, Any]]:
    """``(config, summary)`` of a budget payload, its rows restricted to ``seeds`` if given."""
    try:
        payload = json.loads(path.read_text())
        config, rows = payload["config"], payload["rows"]
    except (OSError, ValueError, KeyError, TypeError) as err:
        raise SystemExit(f"{path}: not a budget result (tracer-theory budget writes one): "
                         f"{type(err).__name__}: {err}") from None
    rows = [r for r in rows if seeds is None or r["seed"] in seeds]
    if not rows:
        raise SystemExit(f"{path}: no rows for seeds {sorted(seeds or [])}")
    objectives = tuple(dict.fromkeys(r["objective"] for r in rows))
    return config, summarize(rows, BudgetConfig(objectives=objectives))


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--small", type=Path, default=RESULTS / "budget" / "budget_toy.json")
    parser.add_argument("--large", type=Path,
                        default=RESULTS / "budget_n512" / "budget_toy.json")
    parser.add_argument("--out", type=Path,
                        default=RESULTS / "budget_n512" / "comparison.json")
    args = parser.parse_args(argv)
    large_config, large = load(args.large)
    seeds = set(large_config["seeds"])
    small_config, small = load(args.small, seeds)
    runs = {f"n={small_config['n']}": small, f"n={large_config['n']}": large}
    out: dict[str, Any] = {"seeds": sorted(seeds), "objectives": {}}
    for objective in large:
        rungs = large[objective]["rungs"]
        print(f"\n{objective} objective, seeds {sorted(seeds)}, "
              f"{len(large[objective]['points'])} points")
        print(f"{'run':8s}" + "".join(f"{'|' + r + '−R4|':>9s}" for r in rungs if r != "R4")
              + "".join(f"{k:>10s}" for k in large[objective]["mean_abs_step"])
              + f"{'ρ(R0)':>8s}{'ρ(R0′)':>8s}")
        block = {}
        for name, summary in runs.items():
            s = summary[objective]
            rho = s["spearman_with_R4"]
            print(f"{name:8s}" + "".join(f"{s['mean_abs_error'][r]:9.1f}" for r in rungs
                                         if r != "R4")
                  + "".join(f"{v:10.1f}" for v in s["mean_abs_step"].values())
                  + "".join(f"{rho[r]:+8.2f}" if rho.get(r) is not None else f"{'—':>8s}"
                            for r in ("R0", "R0'")))
            block[name] = {k: s[k] for k in ("mean_abs_error", "mean_abs_step",
                                              "spearman_with_R4")}
        out["objectives"][objective] = block
    write_json_atomic(args.out, out)
    print(f"\nwrote {args.out}")


if __name__ == "__main__":
    main()
