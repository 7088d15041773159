"""Seeded random linear problems: the shapes the claims, tests and benchmarks run on."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from .._validation import as_int, as_real
from ..errors import MemoryBudgetExceeded
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

    Data come from ``numpy.random.default_rng(seed)``, independent of any jax key. Every
    argument is checked before any data is drawn (a ``ValueError`` names it), ``pre_decay``
    included when ``m_pre`` is not given. Returns a ``LinearProblem`` with ``X_T`` (d_txt, n),
    ``W⁰`` (k, d_img) and ``W_T⁰`` (k, d_txt): the test problems of THEORY §5.1.
    """
    d_img, n, d_txt, k = (as_int(name, size, minimum=1) for name, size in
                          (("d_img", d_img), ("n", n), ("d_txt", d_txt), ("k", k)))
    seed = as_int("seed", seed, minimum=0)
    if sum(x is not None for x in (rank, cond, decay)) > 1:
        raise ValueError("give at most one of rank, cond and decay")
    r = min(d_img, n)
    if rank is not None:
        rank = as_int("rank", rank, minimum=1)
        if rank > r:
            raise ValueError(f"rank must be in [1, min(d_img, n) = {r}], got {rank}")
    cond = None if cond is None else as_real("cond", cond, minimum=1.0)
    decay = None if decay is None else as_real("decay", decay, minimum=0.0)
    m_pre = None if m_pre is None else as_int("m_pre", m_pre, minimum=1)
    pre_decay = as_real("pre_decay", pre_decay, minimum=0.0)
    dtype = _float_dtype(dtype)
    _check_size(d_img, n, d_txt, k, m_pre, spectrum=cond is not None or decay is not None)
    rng = np.random.default_rng(seed)
    if rank is not None:
        unique = rng.standard_normal((d_img, rank))
        x_img = unique[:, np.arange(n) % rank]
    elif cond is not None or decay is not None:
        if cond is not None:
            s = np.logspace(0.0, -np.log10(cond), r)
        else:
            s = np.arange(1, r + 1, dtype=float) ** (-decay)
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
        scales = np.arange(1, d_img + 1, dtype=float) ** (-pre_decay)
        basis = _orthonormal(rng, d_img, d_img)
        x_pre = (basis * scales) @ rng.standard_normal((d_img, m_pre)) / np.sqrt(m_pre)
        x_pre = jnp.asarray(x_pre, dtype=dtype)
    arrays = (jnp.asarray(a, dtype=dtype) for a in (x_img, x_txt, w0, w_txt))
    return LinearProblem(*arrays, contrast=contrast, x_pre=x_pre)


def _float_dtype(dtype: object) -> str:
    """``"float32"`` or ``"float64"`` (the latter only with x64 enabled), else a ValueError."""
    try:
        name = None if dtype is None else np.dtype(dtype).name
    except (TypeError, ValueError):
        name = None
    if name not in ("float32", "float64"):
        raise ValueError(f"dtype must be 'float32' or 'float64', got {dtype!r}")
    if name == "float64" and not jax.config.jax_enable_x64:
        raise ValueError("dtype='float64' needs jax_enable_x64; use `with jax.enable_x64(True):` "
                         "or pass dtype='float32'")
    return name


def _check_size(d_img: int, n: int, d_txt: int, k: int, m_pre: int | None, *,
                spectrum: bool) -> None:
    """``MemoryBudgetExceeded`` naming the sizes when drawing the problem (float64 arrays and
    their temporaries) would need more than this machine's memory, before anything is drawn."""
    import os

    entries = d_img * n + d_txt * n + k * (d_img + d_txt)
    entries += d_img * (d_img + m_pre) if m_pre is not None else 0
    entries += (d_img + n) * min(d_img, n) if spectrum else 0
    need = 3 * 8 * entries  # float64, with the generator's and QR's temporaries
    try:
        memory = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):  # not POSIX: no check
        return
    if need > memory:
        raise MemoryBudgetExceeded(
            f"random_problem(d_img={d_img}, n={n}, d_txt={d_txt}, k={k}, m_pre={m_pre}) needs "
            f"about {need / 2**30:.3g} GiB, more than this machine's {memory / 2**30:.3g} GiB; "
            "use smaller sizes")
