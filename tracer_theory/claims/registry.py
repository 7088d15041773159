"""The claims of THEORY §5, listed once: pytest and ``tracer-theory verify`` run this list.

A claim's check is a function ``case -> list[Row]`` (``claims/linear.py`` for C1–C3,
``claims/dynamics.py`` for C4–C8): it builds the seeded problem of the named case
(``tracer_theory.cases``), measures errors against independent references and states the
tolerance of each row.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

from .claim import Claim as Claim, Row as Row
from .dynamics import C4, C5, C6, C7, C8
from .linear import C1, C2, C3

#: Every claim, in order.
CLAIMS: tuple[Claim, ...] = (C1, C2, C3, C4, C5, C6, C7, C8)


def claims() -> dict[str, Claim]:
    """Every claim by id, in the order of ``CLAIMS`` (C1, C2, …)."""
    return {c.id: c for c in CLAIMS}


def claim_cases(ids: Iterable[str] | None = None) -> list[tuple[str, str]]:
    """``(claim id, case)`` pairs for the selected claims (all by default)."""
    table = claims()
    ids = list(table) if ids is None else list(ids)
    unknown = [i for i in ids if i not in table]
    if unknown:
        raise ValueError(f"unknown claim ids {unknown}; known: {list(table)}")
    return [(i, case) for i in ids for case in table[i].cases]


def run_claims(ids: Iterable[str] | None = None,
               progress: Callable[[str, str], None] | None = None) -> list[Row]:
    """Run every case of the selected claims and return all rows."""
    table = claims()
    rows: list[Row] = []
    for claim_id, case in claim_cases(ids):
        if progress is not None:
            progress(claim_id, case)
        rows.extend(table[claim_id].run(case))
    return rows
