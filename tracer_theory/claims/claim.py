"""What a claim is: a ``Claim`` (id, statement, cases, check) whose check measures ``Row``s.

Claims run in float64 inside ``jax.enable_x64(True)``, a scoped switch that leaves the caller's
setting alone.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable

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
