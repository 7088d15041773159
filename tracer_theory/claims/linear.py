"""Claims C1–C3 (THEORY §5): least-squares equivalence, closed forms as GD limits, orthogonal
knowledge kept. References are independent of the library's solvers: ``jax.grad`` of each
objective iterated by GD, ``scipy.linalg.lstsq`` minimum-norm solutions, explicit
normal-equation solves, and an orthonormal basis from ``scipy.linalg.orth``.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
import scipy.linalg

from ..cases import LINEAR_CASES, linear_problem, rel
from ..dynamics.schedules import ema_teacher, wma_teacher
from ..dynamics.simulate import simulate
from ..linear.closed_forms import solve
from ..linear.gd import gradient_descent
from ..linear.problem import LinearProblem, contrastive_target, mmcl_loss_lstsq, mmcl_loss_trace
from ..linear.strategies import L2SP, DirectFT, StaticSD, StoppedGD, Strategy, WeightDecay
from .claim import Claim, Row

#: GD runs that would need more steps than this are reported as infeasible, not run.
MAX_GD_STEPS = 200_000
TOL_EQUIV = 1e-10   # C1
TOL_LIMIT = 1e-8    # C2
TOL_ORTHO = 1e-10   # C3


def _numpy(problem: LinearProblem):
    x = np.asarray(problem.x_img)
    return x, np.asarray(contrastive_target(problem)), np.asarray(problem.w0)


def _nonzero_eigs(x: np.ndarray) -> np.ndarray:
    """Non-zero eigenvalues σ_i² of X_I X_Iᵀ, from numpy's singular values of X_I."""
    s = np.linalg.svd(x, compute_uv=False)
    return s[s > max(x.shape) * np.finfo(float).eps * s.max()] ** 2


def strategies_for(problem: LinearProblem) -> dict[str, Strategy]:
    """The strategies C2–C3 check, with stopped GD at a stable step size for this problem."""
    lr = 1.0 / _nonzero_eigs(np.asarray(problem.x_img)).max()
    return {"DirectFT": DirectFT(), "StaticSD(0.5)": StaticSD(0.5), "L2SP(0.3)": L2SP(0.3),
            "WeightDecay(0.2)": WeightDecay(0.2), "StoppedGD(40)": StoppedGD(40, lr)}


def curvature_range(strategy: Strategy, eigs: np.ndarray, d_img: int) -> tuple[float, float]:
    """(smallest, largest) curvature of the strategy's objective over the directions that move
    under GD from W⁰, given the non-zero ``eigs`` σ_i² of X_I X_Iᵀ."""
    curv = np.asarray(strategy.curvature(jnp.asarray(eigs)))
    smallest, largest = float(curv.min()), float(curv.max())
    ortho = strategy.orthogonal_curvature()
    if ortho is not None and eigs.size < d_img:
        smallest = min(smallest, float(ortho))
    return smallest, largest


def _scipy_direct(strategy, x, y, w0):
    return w0 + scipy.linalg.lstsq(x.T, (y - w0 @ x).T)[0].T


def _scipy_static_sd(strategy, x, y, w0):
    lam = float(strategy.lam)
    return w0 + scipy.linalg.lstsq(x.T, ((y - w0 @ x) / (1 + lam)).T)[0].T


def _scipy_l2sp(strategy, x, y, w0):
    lam = float(strategy.lam)
    return scipy.linalg.solve(x @ x.T + lam * np.eye(x.shape[0]), (y @ x.T + lam * w0).T,
                              assume_a="pos").T


def _scipy_weight_decay(strategy, x, y, w0):
    lam = float(strategy.lam)
    return scipy.linalg.solve(x @ x.T + lam * np.eye(x.shape[0]), x @ y.T, assume_a="pos").T


def _numpy_stopped_gd(strategy, x, y, w0):
    """The explicit iteration W ← W − lr (W X − Y) Xᵀ in numpy."""
    w, lr = w0.copy(), float(strategy.lr)
    for _ in range(int(strategy.steps)):
        w = w - lr * (w @ x - y) @ x.T
    return w


#: Each strategy's independent reference: minimum-norm least squares, the normal equations
#: (scipy) or the explicit iteration (numpy), by the strategy's type.
SCIPY_REFERENCES = {DirectFT: _scipy_direct, StaticSD: _scipy_static_sd, L2SP: _scipy_l2sp,
                    WeightDecay: _scipy_weight_decay, StoppedGD: _numpy_stopped_gd}


def scipy_reference(strategy: Strategy, problem: LinearProblem) -> np.ndarray:
    """The strategy's solution computed independently of the closed form (``SCIPY_REFERENCES``)."""
    return SCIPY_REFERENCES[type(strategy)](strategy, *_numpy(problem))


def check_c1(case: str) -> list[Row]:
    problem = linear_problem(case)
    rng = np.random.default_rng(LINEAR_CASES[case]["seed"] + 100)
    w1, w2 = (jnp.asarray(rng.standard_normal(problem.w0.shape)) for _ in range(2))
    trace, lstsq = mmcl_loss_trace, mmcl_loss_lstsq
    value = abs(float(trace(problem, w1) - lstsq(problem, w1))) / abs(float(lstsq(problem, w1)))
    d_trace = float(trace(problem, w1) - trace(problem, w2))
    d_lstsq = float(lstsq(problem, w1) - lstsq(problem, w2))
    x, y, _ = _numpy(problem)
    explicit = (np.asarray(w1) @ x - y) @ x.T  # ∇L = (W X_I − Y) X_Iᵀ
    return [
        Row("C1", case, "loss value: trace vs lstsq", value, TOL_EQUIV),
        Row("C1", case, "loss difference: trace vs lstsq",
            abs(d_trace - d_lstsq) / abs(d_lstsq), TOL_EQUIV),
        Row("C1", case, "grad trace form vs (WX−Y)Xᵀ",
            rel(jax.grad(trace, argnums=1)(problem, w1), explicit), TOL_EQUIV),
        Row("C1", case, "grad lstsq form vs (WX−Y)Xᵀ",
            rel(jax.grad(lstsq, argnums=1)(problem, w1), explicit), TOL_EQUIV),
    ]


C1 = Claim("C1", "linearized MMCL (trace form) equals the least-squares form: loss values, loss "
                 "differences and gradients",
           cases=tuple(LINEAR_CASES), check=check_c1)


def exact_direct_ft(problem: LinearProblem, shrink: float = 1.0, digits: int = 60) -> np.ndarray:
    """``W⁰ + shrink·(Y − W⁰X_I)X⁺`` in ``digits``-digit arithmetic (mpmath), for full column rank.

    The float64 inputs are exact binary numbers, so this is the true answer of the float problem
    (``X⁺ = (X_IᵀX_I)⁻¹X_Iᵀ`` when n ≤ d_I), rounded once at the end.
    """
    import mpmath

    x, y, w0 = _numpy(problem)
    if x.shape[1] > x.shape[0]:
        raise ValueError("exact_direct_ft needs n <= d_I (full column rank)")
    with mpmath.workdps(digits):
        xm = mpmath.matrix(x.tolist())
        residual = mpmath.matrix((y - w0 @ x).tolist())
        delta = residual * mpmath.inverse(xm.T * xm) * xm.T
        return w0 + shrink * np.array(delta.tolist(), dtype=np.float64)


def limit_tolerance(problem: LinearProblem) -> tuple[float, str]:
    """C2's tolerance: 1e-8, or the float64 forward-error bound κ(X_I)·ε when that is larger.

    κ is taken over the non-zero singular values (rank-deficient X_I is not ill-conditioned on
    its task subspace). No float64 method can resolve the directions of σ ≈ σ_max/κ better than
    κ·ε relative. Used for the unregularised solutions (Direct FT, static SD), whose conditioning
    is κ(X_I); L2-SP and weight decay are regularised by λ and keep 1e-8.
    """
    eigs = _nonzero_eigs(np.asarray(problem.x_img))
    kappa = float(np.sqrt(eigs.max() / eigs.min()))
    bound = kappa * float(np.finfo(np.float64).eps)
    if bound > TOL_LIMIT:
        return bound, f"tolerance = κ(X_I)·ε = {kappa:.1e}·ε"
    return TOL_LIMIT, ""


def check_c2(case: str) -> list[Row]:
    problem = linear_problem(case)
    eigs = _nonzero_eigs(np.asarray(problem.x_img))
    rows = []
    for name, strategy in strategies_for(problem).items():
        closed = solve(problem, strategy)
        unregularised = isinstance(strategy, DirectFT | StaticSD)
        tol, tol_note = limit_tolerance(problem) if unregularised else (TOL_LIMIT, "")
        if isinstance(strategy, StoppedGD):
            steps, lr = int(strategy.steps), float(strategy.lr)
        else:
            mu, big = curvature_range(strategy, eigs, problem.x_img.shape[0])
            lr = 1.0 / big
            steps = math.ceil(math.log(1e-15) / math.log1p(-mu / big))
        if steps <= MAX_GD_STEPS:
            gd = gradient_descent(problem, strategy, steps=steps, lr=lr)
            rows.append(Row("C2", case, f"{name}: closed vs GD ({steps} steps)",
                            rel(closed, gd), tol, tol_note))
        elif unregularised:
            # GD would need ~steps iterations; compare with its exact limit instead.
            shrink = 1.0 / (1.0 + float(getattr(strategy, "lam", 0.0)))
            rows.append(Row("C2", case, f"{name}: closed vs exact limit (60 digits)",
                            rel(closed, exact_direct_ft(problem, shrink)), tol,
                            f"GD needs ~{steps:.1e} steps; {tol_note}"))
        reference = scipy_reference(strategy, problem)
        rows.append(Row("C2", case, f"{name}: closed vs scipy", rel(closed, reference),
                        tol, tol_note))
    return rows


C2 = Claim("C2", "each closed form is the limit of gradient descent from W⁰",
           cases=tuple(LINEAR_CASES), check=check_c2)


def check_c3(case: str) -> list[Row]:
    problem = linear_problem(case)
    x, _, w0 = _numpy(problem)
    basis = scipy.linalg.orth(x)  # independent orthonormal basis of range(X_I)
    complement = np.eye(x.shape[0]) - basis @ basis.T
    w0_orth = np.linalg.norm(w0 @ complement)
    rows = []
    for name, strategy in strategies_for(problem).items():
        w = np.asarray(solve(problem, strategy))
        if isinstance(strategy, WeightDecay):
            erased = np.linalg.norm(w @ complement) / np.linalg.norm(w)
            rows.append(Row("C3", case, f"{name}: ‖W(I−P)‖/‖W‖ (erased)", erased, TOL_ORTHO))
            if w0_orth > 1e-12 * np.linalg.norm(w0):
                lost = abs(np.linalg.norm((w - w0) @ complement) - w0_orth) / w0_orth
                rows.append(Row("C3", case, f"{name}: all of W⁰(I−P) lost", lost, TOL_ORTHO))
            continue
        kept = np.linalg.norm((w - w0) @ complement) / np.linalg.norm(w - w0)
        rows.append(Row("C3", case, f"{name}: ‖(W−W⁰)(I−P)‖/‖W−W⁰‖", kept, TOL_ORTHO,
                        note="" if w0_orth > 0 else "I − P = 0 here (full row rank)"))
    # Teacher SD, from the full matrix simulation (student and teacher after 500 steps).
    lam = 1.0
    lr = 1.0 / (_nonzero_eigs(x).max() * (1 + lam))
    for name, schedule in (("EMA-SD(0.99)", ema_teacher(0.99)), ("WMA-SD(T=500)",
                                                                 wma_teacher(500))):
        run = simulate(problem, lam, schedule, steps=500, lr=lr, record_every=500)
        for role, w in (("student", run.student), ("teacher", run.teacher)):
            w = np.asarray(w)
            kept = np.linalg.norm((w - w0) @ complement) / np.linalg.norm(w - w0)
            rows.append(Row("C3", case, f"{name} {role}: ‖(W−W⁰)(I−P)‖/‖W−W⁰‖", kept,
                            TOL_ORTHO))
    return rows


C3 = Claim("C3", "orthogonal knowledge is kept: (W − W⁰)(I − P) = 0 for Direct FT, static SD, "
                 "L2-SP, stopped GD and teacher SD (EMA, WMA); weight decay erases W(I − P)",
           cases=tuple(LINEAR_CASES), check=check_c3)
