"""The empirical NTK of an image tower on a finetuning sample, and the linear theory's closed
forms on the tangent model (THEORY §6.7).

On ``n`` finetuning images the tower's embeddings, scaled like the linear problem's
(``E = [e(x_1) … e(x_n)]/√n``), are linear in ``Δθ = θ − θ⁰`` under the tangent model:
``E(θ) = E⁰ + J Δθ`` with ``J`` the Jacobian (``n·k`` rows, one per (image, embedding
coordinate), row-major in the image). The fit ``½‖E − Y‖²`` is the linear problem with ``J``
in place of ``X_I``, so every strategy's filter factors apply to the eigenvalues ``σ_i²`` of
the Gram ``K = J Jᵀ`` (the empirical NTK), and its solution is

    Δθ = Jᵀ Σ_i f_i (u_iᵀ R)/σ_i² u_i,        R = Y − E⁰,

one vector–Jacobian product. ``J`` is never formed: ``K`` is built by blocks of rows, each a
per-image gradient pushed through ``J`` by ``jax.jvp``; predictions on other images are one
``jax.jvp`` more.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, Float, PyTree
from tqdm.auto import tqdm

from .._io import write_atomic
from ..errors import MemoryBudgetExceeded
from ..linear import strategies as linear_strategies

#: ``embed(params, images) -> (B, k)``: unnormalized image embeddings of a batch.
Embed = Callable[[PyTree, Float[Array, "B C H W"]], Float[Array, "B k"]]


def tower_embed(tower: PyTree, include: Callable[[PyTree], PyTree] | None = None
                ) -> tuple[PyTree, Embed]:
    """``(params, embed)`` of an image tower ``(image, image_proj)``: ``params`` its floating
    leaves (only those of ``include(tower)`` when given, e.g. ``lambda t: t[1]`` for the
    projection alone; the others are held fixed) and ``embed(params, images)`` the
    unnormalized embeddings ``W_I h(x)`` (B, k)."""
    params, rest = eqx.partition(tower, eqx.is_inexact_array)
    if include is not None:
        chosen = jax.tree.map(lambda _: False, tower)
        chosen = eqx.tree_at(include, chosen, replace=jax.tree.map(
            eqx.is_inexact_array, include(tower)))
        params, fixed = eqx.partition(params, chosen)
        rest = eqx.combine(rest, fixed)

    def embed(p, images):
        image, proj = eqx.combine(p, rest)
        return jax.vmap(lambda x: proj(image(x)))(images)

    return params, embed


def gram_bytes(n: int, k: int, itemsize: int) -> int:
    """Memory of the ``n·k × n·k`` Gram with its eigendecomposition (Gram, eigenvectors and
    LAPACK's workspace: three such matrices)."""
    return 3 * (n * k) ** 2 * itemsize


def check_memory(n: int, k: int, itemsize: int, memory_gb: float, flag: str = "memory_gb"
                 ) -> None:
    """``MemoryBudgetExceeded`` when the Gram of ``n`` images × ``k`` outputs would not fit in
    ``memory_gb``; the message names the limit and ``flag``."""
    need = gram_bytes(n, k, itemsize)
    if need > memory_gb * 2**30:
        raise MemoryBudgetExceeded(
            f"an eNTK Gram on n = {n} images × k = {k} outputs is {n * k} × {n * k}: with its "
            f"eigendecomposition about {need / 2**30:.1f} GiB, above the memory budget of "
            f"{memory_gb:g} GiB ({flag}); use fewer images or raise {flag}")


def entk_gram(params: PyTree, embed: Embed, images: Float[Array, "n C H W"], *,
              scale: float = 1.0, block: int = 64, memory_gb: float = 8.0,
              progress: str | None = None) -> np.ndarray:
    """The empirical NTK ``K = J Jᵀ`` (n·k, n·k) of ``scale · embed(params, images)``, row-major
    in the image, as a NumPy array in the parameters' dtype. Matrix-free: ``block`` rows at a
    time, each row a per-image gradient (``jax.grad``) pushed through ``J`` (``jax.jvp``).
    ``MemoryBudgetExceeded`` before any work if the Gram would not fit in ``memory_gb``."""
    n = images.shape[0]
    k = jax.eval_shape(embed, params, images[:1]).shape[1]
    dtype = jnp.result_type(*jax.tree.leaves(params))
    check_memory(n, k, jnp.dtype(dtype).itemsize, memory_gb)
    if block < 1:
        raise ValueError(f"block must be >= 1, got {block}")
    rows = _gram_rows(params, embed, images, k)
    out = np.empty((n * k, n * k), dtype)
    starts = range(0, n * k, block)
    for start in tqdm(starts, desc=progress, disable=progress is None, leave=False):
        index = jnp.minimum(jnp.arange(start, start + block), n * k - 1)
        values = np.asarray(rows(index))
        stop = min(start + block, n * k)
        out[start:stop] = values[:stop - start]
    out *= scale**2
    return 0.5 * (out + out.T)  # exact symmetry (each half is the same product)


def _gram_rows(params, embed: Embed, images, k: int):
    """``index (m,) -> K[index] (m, n·k)`` (unscaled): one jitted program, with the parameters
    and images as its arguments (not constants folded into it)."""

    @jax.jit
    def rows(index, params, images):
        def one_gradient(q):
            i, a = q // k, q % k
            one = jax.lax.dynamic_slice_in_dim(images, i, 1)
            return jax.grad(lambda p: embed(p, one)[0, a])(params)

        grads = jax.vmap(one_gradient)(index)
        push = jax.vmap(lambda t: jax.jvp(lambda p: embed(p, images), (params,), (t,))[1])
        return push(grads).reshape(index.shape[0], -1)

    return lambda index: rows(index, params, images)


class TangentProblem(eqx.Module):
    """The linearized fit on the tangent model (float64 for the theory): the Gram's
    eigenvalues ``sigma_sq`` (r,) descending with their ``mask`` (above the rank tolerance)
    and eigenvectors ``u`` (n·k, r), the residual ``R = Y − E⁰`` (n·k,), and what maps
    between parameters and embeddings: ``params`` (θ⁰), ``embed``, the ``images`` (n, C, H, W)
    and the ``scale`` (1/√n)."""

    sigma_sq: Float[Array, " r"]
    mask: Array
    u: Float[Array, "nk r"]
    residual: Float[Array, " nk"]
    params: PyTree
    images: Float[Array, "n C H W"]
    scale: float = eqx.field(static=True)
    embed: Embed = eqx.field(static=True)

    @classmethod
    def build(cls, tower: PyTree, images: Float[Array, "n C H W"],
              target: Float[Array, "n k"], *, include: Callable | None = None,
              block: int = 64, memory_gb: float = 8.0, progress: str | None = None,
              cache: str | Path | None = None) -> TangentProblem:
        """The problem of ``tower`` (``(image, image_proj)``, at θ⁰) on ``images`` with the
        contrastive ``target`` ``Y`` (n, k) in the scaled units of ``linear_problem`` (the
        centred projected captions over √n). ``include`` restricts the parameters (see
        ``tower_embed``). The rank tolerance is ``numpy.linalg.matrix_rank``'s on ``K``:
        ``σ_i² > n·k·eps·σ_max²``. ``cache``: an ``.npz`` file the Gram's eigendecomposition
        is saved to and read back from (name it after everything the Gram depends on)."""
        params, embed = tower_embed(tower, include)
        n = images.shape[0]
        scale = 1 / np.sqrt(n)
        if cache is not None and Path(cache).exists():
            with np.load(cache) as saved:
                sigma_sq, u = saved["sigma_sq"], saved["u"]
        else:
            gram = entk_gram(params, embed, images, scale=scale, block=block,
                             memory_gb=memory_gb, progress=progress)
            sigma_sq, u = np.linalg.eigh(gram)
            sigma_sq, u = sigma_sq[::-1], np.ascontiguousarray(u[:, ::-1])
            if cache is not None:
                write_atomic(cache, lambda f: np.savez(f, sigma_sq=sigma_sq, u=u), binary=True)
        mask = sigma_sq > len(sigma_sq) * np.finfo(sigma_sq.dtype).eps * sigma_sq[0]
        e0 = scale * embed(params, images)
        residual = (jnp.asarray(target, e0.dtype) - e0).reshape(-1)
        return cls(jnp.asarray(np.where(mask, sigma_sq, 0.0)), jnp.asarray(mask), jnp.asarray(u),
                   residual, params, images, float(scale), embed)

    @property
    def sigma_max_sq(self) -> Array:
        """The largest eigenvalue of the Gram (sets a gradient-descent step, as ``σ_max²``)."""
        return self.sigma_sq[0]

    def jvp(self, delta: PyTree, images: Float[Array, "B C H W"]) -> Float[Array, "B k"]:
        """``J(x) Δθ`` on ``images`` (B, k), unscaled."""
        return jax.jvp(lambda p: self.embed(p, images), (self.params,), (delta,))[1]

    def delta(self, strategy: linear_strategies.Strategy) -> PyTree:
        """``Δθ`` of ``strategy``'s converged (or finite-horizon) solution on the tangent
        model, shaped like ``params``: ``Jᵀ Σ f_i (u_iᵀR)/σ_i² u_i``. Only strategies anchored
        at the pretrained weights carry over (decay toward 0 is not a shrinkage in Δθ)."""
        if strategy.anchor != "pretrained":
            raise ValueError(f"{type(strategy).__name__} is anchored at 0, not at θ⁰: it has no "
                             "tangent-model closed form here")
        f = jnp.where(self.mask, strategy.filter(self.sigma_sq), 0.0)
        safe = jnp.where(self.mask, self.sigma_sq, 1.0)
        alpha = self.u @ ((self.u.T @ self.residual) * f / safe)
        return self.pull(alpha)

    def pull(self, alpha: Float[Array, " nk"]) -> PyTree:
        """``Jᵀ α`` (parameter-shaped) for ``α`` in the scaled embedding space (n·k,)."""
        _, vjp = jax.vjp(lambda p: self.scale * self.embed(p, self.images), self.params)
        return vjp(alpha.reshape(self.images.shape[0], -1))[0]

    def task_fraction(self, delta: PyTree) -> Array:
        """``‖P Δθ‖² / ‖Δθ‖²``, ``P`` the projector on the row space of ``J`` (the span of the
        sample's per-image, per-coordinate gradients): the share of a parameter change inside
        the task subspace."""
        jd = self.scale * self.jvp(delta, self.images).reshape(-1)
        safe = jnp.where(self.mask, self.sigma_sq, 1.0)
        inside = jnp.sum(jnp.where(self.mask, (self.u.T @ jd) ** 2 / safe, 0.0))
        total = sum(jnp.sum(x**2) for x in jax.tree.leaves(delta))
        return inside / total
