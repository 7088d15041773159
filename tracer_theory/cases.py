"""The seeded cases shared by the claims (``tracer_theory.claims``) and the figures
(``tracer_theory.report``): named problems, the λ and horizon grids, and the small helpers both
use to set step sizes, compare matrices and fit power laws. Neither side imports the other.
"""

from __future__ import annotations

import numpy as np

from .linear.problem import LinearProblem
from .linear.random import random_problem

#: Seeded problem shapes of C1–C3: n < d_I, n > d_I, duplicated columns, cond 1e10.
LINEAR_CASES: dict[str, dict] = {
    "n<d_I": dict(d_img=48, n=16, d_txt=12, k=8, seed=1),
    "n>d_I": dict(d_img=16, n=48, d_txt=12, k=8, seed=2),
    "rank-deficient": dict(d_img=24, n=32, d_txt=12, k=8, rank=10, seed=3),
    "ill-conditioned": dict(d_img=40, n=16, d_txt=12, k=8, cond=1e10, seed=4),
}
#: Seeded problems of the dynamics claims C4–C8 and the teacher-dynamics figures.
DYNAMICS_CASES: dict[str, dict] = {
    "n<d_I": dict(d_img=40, n=16, d_txt=12, k=8, seed=11),
    "n>d_I": dict(d_img=16, n=40, d_txt=12, k=8, seed=12),
    "rank-deficient": dict(d_img=24, n=32, d_txt=12, k=8, rank=10, seed=13),
}
#: The SD weights λ of the per-λ claims (C5, C7) and figures.
LAMBDAS = (0.25, 1.0, 4.0)
#: Horizons T of the WMA power-law fit (C5 and its figure): 10 points from 10² to 10⁵.
HORIZONS = tuple(int(h) for h in np.round(np.logspace(2, 5, 10)))
#: C5 and its figures: the fraction of its peak the WMA gap must keep, and the largest distance
#: of the fitted bias exponent from −1/(2(1+λ)).
GAP_FRACTION = 0.01
EXPONENT_TOL = 0.02


def linear_problem(case: str) -> LinearProblem:
    """The float64 problem of ``LINEAR_CASES[case]``."""
    return random_problem(**LINEAR_CASES[case], dtype="float64")


def dynamics_problem(case: str) -> LinearProblem:
    """The float64 problem of ``DYNAMICS_CASES[case]``."""
    return random_problem(**DYNAMICS_CASES[case], dtype="float64")


def safe_lr(problem: LinearProblem, lam: float, fraction: float = 0.5) -> float:
    """``fraction`` of the student's stability bound 2/(σ_max²(1 + λ)), from numpy's SVD."""
    sigma_max_sq = np.linalg.norm(np.asarray(problem.x_img), 2) ** 2
    return fraction * 2.0 / (sigma_max_sq * (1 + lam))


def rel(a, b) -> float:
    """‖a − b‖ / ‖b‖ in float64 numpy."""
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return float(np.linalg.norm(a - b) / np.linalg.norm(b))


def power_law_exponent(horizons, values) -> float:
    """Least-squares slope of ``log values`` against ``log horizons``."""
    return float(np.polyfit(np.log(horizons), np.log(values), 1)[0])
