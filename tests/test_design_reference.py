"""Teacher design against independent references, in NumPy from the problem's arrays alone.

Per-direction weights on a problem with two task directions: at a fixed task loss the family
is one-parameter (the ratio λ₁/λ₂, the common scale bisected onto the target), so its least
forgetting is a brute-force minimum over a fine grid of the closed-form encoder
``W = W⁰ + (Y − W⁰X)Xᵀ U diag(1/(σ²(1 + λ))) Uᵀ``; ``design`` must get there from its start,
which forgets about 10% more. The EMA teacher: the student–teacher recursion as a matrix loop,
at the calibrated start and at the designed point."""

import numpy as np
import pytest
import scipy.optimize

import tracer_theory as tt


def fit_and_forgetting(p, w):
    """``(½‖W X_I − Y‖², ‖(W − W⁰) X_pre‖²)`` of encoders ``w`` (..., k, d_I)."""
    x, w0, x_pre = (np.asarray(a) for a in (p.x_img, p.w0, p.x_pre))
    y = np.asarray(tt.contrastive_target(p))
    return (0.5 * np.sum((w @ x - y) ** 2, axis=(-2, -1)),
            np.sum(((w - w0) @ x_pre) ** 2, axis=(-2, -1)))


def floor_and_most(p):
    """The task loss of the least-squares fit (Direct FT) and of ``W⁰``."""
    x, w0 = np.asarray(p.x_img), np.asarray(p.w0)
    y = np.asarray(tt.contrastive_target(p))
    w_ft = np.linalg.lstsq(x.T, y.T, rcond=None)[0].T
    return float(fit_and_forgetting(p, w_ft)[0]), float(fit_and_forgetting(p, w0)[0])


def bisect_log_scale(metrics, target, shape=(), iterations=100):
    """The log scale ``c`` (shape ``shape``) where the task loss ``metrics(c)[0]`` (increasing
    in ``c``) equals ``target``, by bisection over [−30, 30]."""
    low, high = np.full(shape, -30.0), np.full(shape, 30.0)
    for _ in range(iterations):
        mid = 0.5 * (low + high)
        below = metrics(mid)[0] < target
        low, high = np.where(below, mid, low), np.where(below, high, mid)
    return 0.5 * (low + high)


# --- per-direction weights: the brute-force optimum ------------------------------------------

@pytest.fixture(scope="module")
def two_directions():
    p = tt.random_problem(2, 6, 5, 3, m_pre=20, seed=3)
    x, w0 = np.asarray(p.x_img), np.asarray(p.w0)
    u, s, _ = np.linalg.svd(x, full_matrices=False)  # σ descending, like the package
    push = (np.asarray(tt.contrastive_target(p)) - w0 @ x) @ x.T @ u  # (k, 2)

    def metrics(lams):
        """Task loss and forgetting of the penalized least squares with weights (..., 2)."""
        w = w0 + (push / (s**2 * (1 + lams))[..., None, :]) @ u.T
        return fit_and_forgetting(p, w)

    def on_level(rho, level):
        """Weights with log(λ₁/λ₂) = ``rho`` (any shape) scaled to the task loss ``level``."""
        def weights(c):
            return np.exp(np.stack([c + rho, c + 0 * rho], axis=-1))

        return weights(bisect_log_scale(lambda c: metrics(weights(c)), level, np.shape(rho)))

    return p, metrics, on_level


@pytest.mark.parametrize("fraction", [0.2, 0.4])
def test_design_reaches_the_brute_force_least_forgetting(two_directions, fraction):
    p, metrics, on_level = two_directions
    floor, most = floor_and_most(p)
    scale = fraction * (most - floor)
    target = floor + scale
    grid = np.linspace(-8.0, 8.0, 1601)
    losses, forgot = metrics(on_level(grid, target))
    np.testing.assert_allclose(losses, target, rtol=1e-12)
    best = forgot.min()
    assert 1 < np.argmin(forgot) < grid.size - 2  # an interior minimum of the grid
    start_loss, start = metrics(on_level(np.array(0.0), target))  # λ₁ = λ₂ on the target
    assert start > 1.05 * best  # the start is well off the optimum

    result = tt.design(p, tt.DirectionalFamily(), target, steps=500, learning_rate=0.05)
    # the calibrated start, then the best point seen within the task-loss tolerance
    np.testing.assert_allclose(result.history[0], [start_loss, start], rtol=1e-9)
    lams = np.exp(np.asarray(result.params["log_lams"]))
    np.testing.assert_allclose(metrics(lams), [result.task_loss, result.forgetting], rtol=1e-9)
    assert result.reached and result.task_loss <= target + 1e-3 * scale
    reached = result.history[:, 0] <= target + 1e-3 * scale
    np.testing.assert_allclose(result.forgetting, result.history[reached, 1].min(), rtol=1e-10)
    # strictly below the start, at the grid minimum (the task-loss tolerance lets it sit up to
    # ~0.2% below it)
    assert result.forgetting < start * (1 - 0.05)
    assert abs(result.forgetting / best - 1) < 5e-3
    # the oracle at the result's task loss: every filter in (0, 1]² is such a pair of weights
    level = result.task_loss
    fine = scipy.optimize.minimize_scalar(lambda r: float(metrics(on_level(np.array(r), level))[1]),
                                          bounds=(-8.0, 8.0), method="bounded",
                                          options={"xatol": 1e-10})
    np.testing.assert_allclose(result.oracle, fine.fun, rtol=1e-9)
    np.testing.assert_allclose(result.ratio, result.forgetting / fine.fun, rtol=1e-9)
    assert 1 - 1e-9 <= result.ratio < 1 + 5e-3


# --- the EMA teacher: the matrix recursion ---------------------------------------------------

def ema_run(p, momentum, lam, steps):
    """Task loss and forgetting after ``steps`` GD steps of size 1/(σ_max²(1 + λ)) on
    ``½‖W X − Y‖² + (λ/2)‖(W − T) X‖²``, the teacher ``T ← m T + (1 − m) W`` (a loop;
    ``momentum`` and ``lam`` broadcast together)."""
    x, w0 = np.asarray(p.x_img), np.asarray(p.w0)
    y = np.asarray(tt.contrastive_target(p))
    m, lam = (np.asarray(v, float)[..., None, None] for v in np.broadcast_arrays(momentum, lam))
    lr = 1 / (np.linalg.norm(x, 2) ** 2 * (1 + lam))
    w = np.broadcast_to(w0, np.broadcast_shapes(m.shape[:-2], lam.shape[:-2]) + w0.shape)
    t = w
    for _ in range(steps):
        w = w - lr * ((w @ x - y) + lam * (w - t) @ x) @ x.T
        t = m * t + (1 - m) * w
    return fit_and_forgetting(p, w)


def test_ema_design_starts_calibrated_lowers_forgetting_and_reports_its_point():
    p = tt.random_problem(12, 6, 5, 3, m_pre=20, decay=0.7, seed=8)
    floor, most = floor_and_most(p)
    target = floor + 0.5 * (most - floor)
    horizon = 30
    log_lam = bisect_log_scale(lambda c: ema_run(p, 0.99, np.exp(c), horizon), target,
                               iterations=60)
    start = ema_run(p, 0.99, np.exp(log_lam), horizon)
    np.testing.assert_allclose(start[0], target, rtol=1e-12)

    result = tt.design(p, tt.EMAFamily(horizon), target, steps=100, learning_rate=0.1)
    np.testing.assert_allclose(result.history[0], start, rtol=1e-9)
    m = 1 / (1 + np.exp(-float(result.params["logit_m"])))
    lam = np.exp(float(result.params["log_lam"]))
    np.testing.assert_allclose(ema_run(p, m, lam, horizon), [result.task_loss, result.forgetting],
                               rtol=1e-9)
    assert result.reached and result.task_loss <= target + 1e-3 * (target - floor)
    assert result.forgetting < start[1] * (1 - 0.01)
