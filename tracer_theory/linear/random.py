"""Seeded random linear problems: the shapes the claims, tests and benchmarks run on."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from .problem import Contrast, LinearProblem


def _orthonormal(rng: np.random.Generator, rows: int, cols: int) -> np.ndarray:
    q, r = np.linalg.qr(rng.standard_normal((rows, cols)))
    return q * np.sign(np.diag(r))


def random_problem(d_img: int, n: int, d_txt: int, k: int, *, seed: int = 0,
                   rank: int | None = None, cond: float | None = None,
                   decay: float | None = None, dtype: str = "float64",
                   contrast: Contrast = "paper", m_pre: int | None = None,
                   pre_decay: float = 1.0) -> LinearProblem:
    """A seeded Gaussian problem with ``X_I`` of shape (d_img, n) and unit-scale features.

    Arguments:
        rank: make ``X_I`` rank-deficient by duplicating ``rank`` distinct columns to fill n.
        cond: make ``X_I`` have singular values log-spaced from 1 down to ``1/cond``.
        decay: make the singular values follow the power law ``σ_i = i^(−decay)``.
        dtype: ``"float64"`` needs ``jax_enable_x64`` (e.g. ``with jax.enable_x64(True):``).
        m_pre: also draw ``m_pre`` pretraining features ``X_pre`` (d_img, m_pre): Gaussian with
            covariance ``Q diag(i^(−2·pre_decay)) Qᵀ`` in a random basis ``Q`` independent of
            ``X_I`` (anisotropic, so not aligned with the task eigenbasis), scaled like ``X_I``.

    Data come from ``numpy.random.default_rng(seed)``, independent of any jax key.
    """
    for name, size in (("d_img", d_img), ("n", n), ("d_txt", d_txt), ("k", k)):
        _positive_int(name, size)
    if sum(x is not None for x in (rank, cond, decay)) > 1:
        raise ValueError("give at most one of rank, cond and decay")
    if min(d_img, n, d_txt, k) < 1:
        raise ValueError(f"all sizes must be >= 1, got d_img={d_img}, n={n}, d_txt={d_txt}, k={k}")
    if isinstance(seed, bool) or not isinstance(seed, int | np.integer) or seed < 0:
        raise ValueError(f"seed must be a non-negative int, got {seed!r}")
    try:
        dtype = np.dtype(dtype).name
    except TypeError:
        raise ValueError(f"dtype must be 'float32' or 'float64', got {dtype!r}") from None
    if dtype not in ("float32", "float64"):
        raise ValueError(f"dtype must be 'float32' or 'float64', got {dtype!r}")
    if dtype == "float64" and not jax.config.jax_enable_x64:
        raise ValueError("dtype='float64' needs jax_enable_x64; use `with jax.enable_x64(True):` "
                         "or pass dtype='float32'")
    rng = np.random.default_rng(seed)
    r = min(d_img, n)
    if rank is not None:
        _positive_int("rank", rank)
        if not 1 <= rank <= r:
            raise ValueError(f"rank must be in [1, min(d_img, n) = {r}], got {rank}")
        unique = rng.standard_normal((d_img, rank))
        x_img = unique[:, np.arange(n) % rank]
    elif cond is not None or decay is not None:
        if cond is not None:
            if not (np.isfinite(cond) and cond >= 1):
                raise ValueError(f"cond must be >= 1 and finite, got {cond}")
            s = np.logspace(0.0, -np.log10(cond), r)
        else:
            if not (np.isfinite(decay) and decay >= 0):
                raise ValueError(f"decay must be >= 0 and finite, got {decay}")
            s = np.arange(1, r + 1, dtype=float) ** (-float(decay))
        x_img = (_orthonormal(rng, d_img, r) * s) @ _orthonormal(rng, n, r).T
        x_img *= np.sqrt(max(d_img, n))
    else:
        x_img = rng.standard_normal((d_img, n))
    x_img = x_img / np.sqrt(max(d_img, n))
    x_txt = rng.standard_normal((d_txt, n)) / np.sqrt(max(d_txt, n))
    w0 = rng.standard_normal((k, d_img)) / np.sqrt(d_img)
    w_txt = rng.standard_normal((k, d_txt)) / np.sqrt(d_txt)
    x_pre = None
    if m_pre is not None:
        _positive_int("m_pre", m_pre)
        if not (np.isfinite(pre_decay) and pre_decay >= 0):
            raise ValueError(f"pre_decay must be >= 0 and finite, got {pre_decay}")
        if m_pre < 1:
            raise ValueError(f"m_pre must be >= 1, got {m_pre}")
        scales = np.arange(1, d_img + 1, dtype=float) ** (-float(pre_decay))
        basis = _orthonormal(rng, d_img, d_img)
        x_pre = (basis * scales) @ rng.standard_normal((d_img, m_pre)) / np.sqrt(m_pre)
        x_pre = jnp.asarray(x_pre, dtype=dtype)
    arrays = (jnp.asarray(a, dtype=dtype) for a in (x_img, x_txt, w0, w_txt))
    return LinearProblem(*arrays, contrast=contrast, x_pre=x_pre)


def _positive_int(name: str, value: object) -> None:
    if isinstance(value, bool) or not isinstance(value, int | np.integer):
        raise ValueError(f"{name} must be an int, got {value!r}")
