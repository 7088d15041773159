"""The claims registry: each claim of THEORY §5 written once, run by pytest and the CLI alike.

A claim is a function ``case -> list[Row]``: it builds its seeded problem for the named case,
measures errors against independent references and states the tolerance of each row. Claims run
in float64 inside ``jax.enable_x64(True)``, a scoped switch that leaves the caller's setting alone.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Iterable, Sequence

import jax


@dataclasses.dataclass(frozen=True)
class Row:
    """One measured line of a claim: PASS when ``value <= bound`` (``relation="<="``, an error
    against its tolerance) or ``value >= bound`` (``relation=">="``, a quantity that must stay
    large)."""

    claim: str
    case: str
    quantity: str
    value: float
    bound: float
    note: str = ""
    relation: str = "<="

    def __post_init__(self) -> None:  # numpy scalars in, plain floats out (JSON-ready)
        object.__setattr__(self, "value", float(self.value))
        object.__setattr__(self, "bound", float(self.bound))
        if self.relation not in ("<=", ">="):
            raise ValueError(f"relation must be '<=' or '>=', got {self.relation!r}")

    @property
    def passed(self) -> bool:
        if not math.isfinite(self.value):
            return False
        return self.value <= self.bound if self.relation == "<=" else self.value >= self.bound

    def as_dict(self) -> dict:
        return {**dataclasses.asdict(self), "passed": self.passed}


@dataclasses.dataclass(frozen=True)
class Claim:
    """A claim: id (``"C1"``), one-line statement, the cases it runs on, and its check."""

    id: str
    statement: str
    cases: tuple[str, ...]
    check: Callable[[str], list[Row]]

    def run(self, case: str) -> list[Row]:
        if case not in self.cases:
            raise ValueError(f"claim {self.id} has no case {case!r}; cases: {self.cases}")
        with jax.enable_x64(True):
            return self.check(case)


_REGISTRY: dict[str, Claim] = {}


def claim(id: str, statement: str, cases: Sequence[str]) -> Callable:
    """Decorator registering ``check(case) -> list[Row]`` as claim ``id``."""

    def register(check: Callable[[str], list[Row]]) -> Callable[[str], list[Row]]:
        if id in _REGISTRY:
            raise ValueError(f"claim {id} is registered twice")
        _REGISTRY[id] = Claim(id, statement, tuple(cases), check)
        return check

    return register


def claims() -> dict[str, Claim]:
    """All registered claims, ordered by id (C1, C2, …)."""
    from . import dynamics, linear  # noqa: F401  (register C1–C3, C4–C8)

    return dict(sorted(_REGISTRY.items(), key=lambda item: (len(item[0]), item[0])))


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
