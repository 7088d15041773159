"""What a figure function returns: the figure and its finding, in plain sentences."""

from __future__ import annotations

from typing import Any, NamedTuple

from matplotlib.figure import Figure


class Result(NamedTuple):
    """A figure and its finding: ``claim`` (what the paper says), ``finding`` (the measured
    numbers, in words), ``agrees`` (whether they bear the claim out) and the plotted ``data``."""

    figure: Figure
    claim: str
    finding: str
    agrees: bool | None  # None: inconclusive (the verdict flips within the rerun envelope)
    data: dict[str, Any]

    def report(self) -> str:
        """Three plain sentences for a notebook: the paper, the measurement, the verdict."""
        verdict = {True: "They agree.", False: "They disagree.",
                   None: "Inconclusive: a rerun that differs only in rounding flips the "
                         "verdict."}[self.agrees]
        return f"Paper: {self.claim}.\nMeasured: {self.finding}.\n{verdict}"
