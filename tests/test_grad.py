"""`jax.grad` through each closed form against central finite differences (float64)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import tracer_theory as tt

PROBLEM_ARGS = dict(d_img=9, n=6, d_txt=4, k=3, seed=11)


def central_difference(f, x, h=1e-6):
    return (f(x + h) - f(x - h)) / (2 * h)


def scalarise(w, probe):
    return jnp.sum(w * probe)


@pytest.mark.parametrize("make", [tt.StaticSD, tt.L2SP, tt.WeightDecay])
def test_grad_in_lambda(make):
    problem = tt.random_problem(**PROBLEM_ARGS)
    probe = jax.random.normal(jax.random.key(0), problem.w0.shape, dtype=jnp.float64)

    def f(lam):
        return scalarise(tt.solve(problem, make(lam)), probe)

    lam = 0.7
    np.testing.assert_allclose(jax.grad(f)(lam), central_difference(f, lam), rtol=1e-7)


def test_grad_in_stopped_gd_learning_rate():
    problem = tt.random_problem(**PROBLEM_ARGS)
    probe = jax.random.normal(jax.random.key(1), problem.w0.shape, dtype=jnp.float64)
    lr = 0.5 / float(tt.spectrum(problem).s[0] ** 2)

    def f(eta):
        return scalarise(tt.solve(problem, tt.StoppedGD(17, eta)), probe)

    np.testing.assert_allclose(jax.grad(f)(lr), central_difference(f, lr, 1e-8), rtol=1e-6)


@pytest.mark.parametrize("strategy", [tt.DirectFT(), tt.StaticSD(0.5), tt.L2SP(0.5),
                                      tt.WeightDecay(0.5)], ids=lambda s: type(s).__name__)
@pytest.mark.parametrize("field", ["x_img", "x_txt", "w0", "w_txt"])
def test_grad_in_the_data(strategy, field):
    problem = tt.random_problem(**PROBLEM_ARGS)
    probe = jax.random.normal(jax.random.key(2), problem.w0.shape, dtype=jnp.float64)
    direction = jax.random.normal(jax.random.key(3), getattr(problem, field).shape,
                                  dtype=jnp.float64)

    def f(eps):
        arrays = {k: getattr(problem, k) for k in ("x_img", "x_txt", "w0", "w_txt")}
        arrays[field] = arrays[field] + eps * direction
        return scalarise(tt.solve(tt.LinearProblem(**arrays), strategy), probe)

    np.testing.assert_allclose(jax.grad(f)(0.0), central_difference(f, 0.0), rtol=1e-6)
