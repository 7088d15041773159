"""The reproducibility envelope of the toy results: how far a rerun moves each number.

    python experiments/envelope.py BASE OTHER --label "what differs" [--write]

``BASE`` and ``OTHER`` are toy results folders (``tracer-theory toy --out DIR``, its three
default tables) made by the same code and settings with one thing changed: the CPU's vector
kernels (``XLA_FLAGS=--xla_cpu_max_isa=AVX2`` on an AVX-512 machine stands in for another
machine), the machine itself, the jax version. Prints, per table and metric, the largest
difference of a seed mean and of one seed's value over the strategies, and each toy figure's
verdict from both folders; ``--write`` records it as ``BASE/envelope.json``
(``tracer_theory.report.envelope``), after which the figures made from ``BASE`` call a verdict
that flips *inconclusive*.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from tracer_theory._io import write_json_atomic
from tracer_theory.errors import InputError
from tracer_theory.report import envelope


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("base", type=Path)
    parser.add_argument("other", type=Path)
    parser.add_argument("--label", required=True, help="what differs between the two runs")
    parser.add_argument("--write", action="store_true", help=f"write BASE/{envelope.FILE}")
    args = parser.parse_args(argv)
    try:
        record = envelope.measure(args.base, args.other, args.label)
    except (InputError, FileNotFoundError) as err:  # a missing or foreign results folder
        parser.error(str(err))
    print(f"toy results {args.base} vs {args.other} ({args.label})\nlargest |difference| in "
          f"points: of a seed mean / of one seed")
    print(f"{'table':14s}" + "".join(f"{m:>20s}" for m in envelope.METRICS))
    for name, rows in record["differences"].items():
        print(f"{name:14s}" + "".join(f"{rows[m]['mean']:>11.2f} / {rows[m]['seed']:<6.2f}"
                                      for m in envelope.METRICS))
    words = {True: "agrees", False: "disagrees"}
    print("\nverdicts (base → other):")
    for name, v in record["verdicts"].items():
        print(f"  {name:20s} {words[v['base']]:>9s} → {words[v['other']]:9s}"
              + ("  FLIPS" if v["flips"] else ""))
    if args.write:
        print(f"\nwrote {write_json_atomic(args.base / envelope.FILE, record)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
