"""The empirical NTK of an image tower on a finetuning sample, and the linear theory's closed
forms on the tangent model (THEORY §6.7).

On ``n`` finetuning images the tower's embeddings, scaled like the linear problem's
(``E = [e(x_1) … e(x_n)]/√n``), are linear in ``Δθ = θ − θ⁰`` under the tangent model:
``E(θ) = E⁰ + J Δθ`` with ``J`` the Jacobian (``n·k`` rows, one per (image, embedding
coordinate), row-major in the image). The fit ``½‖E − Y‖²`` is the linear problem with ``J``
in place of ``X_I``, so every strategy's filter factors apply to the eigenvalues ``σ_i²`` of
the Gram ``K = J Jᵀ`` (the empirical NTK), and its solution is

    Δθ = Jᵀ Σ_i f_i (u_iᵀ R)/σ_i² u_i,        R = Y − E⁰,

one vector–Jacobian product. ``J`` is never formed whole: ``K`` is built by structured
derivatives (``structured.py``: each linear layer's share from its inputs and output cotangents,
the rest from a few explicit Jacobian columns), or, as the reference, by blocks of rows, each a
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
import scipy.linalg
from jaxtyping import Array, ArrayLike, Float, PyTree

from .._cache import array_digest, cache_key, load_keyed, write_keyed
from .._progress import bar as progress_bar
from .._validation import (
    SUPPORTED_FLOATS,
    all_finite,
    as_float_matrix,
    as_int,
    as_real_array,
    as_scalar,
    ensure_each,
    not_finite,
)
from ..errors import MemoryBudgetExceeded
from ..linear import strategies as linear_strategies
from .structured import structured_gram

#: ``embed(params, images) -> (B, k)``: unnormalized image embeddings of a batch.
Embed = Callable[[PyTree, Float[Array, "B C H W"]], Float[Array, "B k"]]


# --- argument checks (host values: a ValueError or TypeError naming the argument) -------------

def _real(name: str, value: ArrayLike, *, positive: bool = False) -> float:
    """A finite real number known on the host (``> 0`` when ``positive``), as a float."""
    return float(as_scalar(name, value, minimum=0.0 if positive else None, strict=positive))


def _options(block: object, memory_gb: object, progress: object) -> tuple[int | None, float]:
    """``(block, memory_gb)`` checked (an integer >= 1 or ``None``, a finite number > 0), and
    ``progress`` a label or ``None``."""
    if progress is not None and not isinstance(progress, str):
        raise TypeError(f"progress must be a str (the progress bar's label) or None, got "
                        f"{type(progress).__name__}")
    block = None if block is None else as_int("block", block, minimum=1)
    return block, _real("memory_gb", memory_gb, positive=True)


def _tree_finite(tree: PyTree) -> Array:
    """True when every entry of every leaf of ``tree`` is finite (a 0-d boolean array)."""
    return jnp.all(jnp.stack([all_finite(x) for x in jax.tree.leaves(tree)]))


def _param_dtype(name: str, params: PyTree) -> jnp.dtype:
    """The one dtype (float32 or float64) of the floating arrays ``params``, after checking
    there is at least one, that they are all such arrays, and finite; a ``ValueError`` naming
    ``name`` otherwise."""
    leaves = jax.tree.leaves(params)
    if not leaves:
        raise ValueError(f"{name} has no floating-point parameters: nothing to differentiate")
    other = [type(x).__name__ for x in leaves if not eqx.is_inexact_array(x)]
    if other:
        raise ValueError(f"{name} must hold only floating-point arrays (the parameters "
                         f"tower_embed returns), got a leaf of type {other[0]}")
    dtypes = sorted({jnp.dtype(x.dtype).name for x in leaves})
    if len(dtypes) > 1 or jnp.dtype(dtypes[0]) not in SUPPORTED_FLOATS:
        raise ValueError(f"{name} must be in one dtype, float32 or float64 (the Gram's "
                         f"eigendecomposition has no other kernels), got {', '.join(dtypes)}; "
                         "cast the tower first")
    ensure_each(params, [(_tree_finite(params),
                          f"{name} contains NaN or Inf: every parameter must be finite")])
    return jnp.dtype(dtypes[0])


def _as_floats(name: str, value: ArrayLike, dtype: jnp.dtype,
               shape_error: Callable[[tuple[int, ...]], str | None]) -> Array:
    """``value`` as a float32/float64 array cast to ``dtype``, its shape accepted by
    ``shape_error`` (which returns what is wrong, or ``None``), all entries finite; checked in
    that order, each failure a ``ValueError`` naming ``name``."""
    arr = as_real_array(name, value)
    if arr.dtype not in SUPPORTED_FLOATS:
        raise ValueError(f"{name} must have dtype float32 or float64, got {arr.dtype}")
    if (wrong := shape_error(arr.shape)) is not None:
        raise ValueError(f"{name} {wrong}, got shape {arr.shape}")
    arr = ensure_each(arr, [(jnp.isfinite(arr),
                             f"{name} contains NaN or Inf; all entries must be finite")])
    return arr.astype(dtype)


def _as_images(name: str, images: ArrayLike, dtype: jnp.dtype,
               image_shape: tuple[int, ...] | None = None) -> Float[Array, "n C H W"]:
    """A batch of ``n >= 1`` finite float32/float64 images, cast to the tower's ``dtype``
    (each of ``image_shape`` when given)."""
    def shape_error(shape):
        if image_shape is not None and tuple(shape[1:]) != tuple(image_shape):
            return f"must be (B, {', '.join(map(str, image_shape))}), like the problem's images"
        if len(shape) < 2 or shape[0] == 0:
            return "must be a batch of n >= 1 images, (n, C, H, W) for an image tower"
        return None

    return _as_floats(name, images, dtype, shape_error)


def _width(params: PyTree, embed: Embed, images: Float[Array, "n C H W"], source: str) -> int:
    """The embedding width ``k`` of ``embed(params, ·)`` on one image like ``images``, found
    by tracing alone (nothing is compiled); an image the tower cannot take is refused naming
    ``images``, an embedding that is not (B, k) with k >= 1 naming ``source``."""
    one = jax.ShapeDtypeStruct((1, *images.shape[1:]), images.dtype)
    try:
        out = jax.eval_shape(embed, params, one)
    except Exception as err:  # whatever the tower raises on an image it cannot take
        detail = (str(err).splitlines() or [""])[0][:300]
        raise ValueError(f"images must be (n, C, H, W) with each image as the tower accepts it: "
                         f"the tower fails on images of shape {tuple(images.shape[1:])} "
                         f"({type(err).__name__}: {detail})") from err
    shape = getattr(out, "shape", None)
    if (shape is None or len(shape) != 2 or shape[0] != 1
            or not jnp.issubdtype(out.dtype, jnp.floating)):
        raise ValueError(f"{source} must embed a batch of B images as a floating (B, k) array, "
                         f"got {out}")
    if shape[1] == 0:
        raise ValueError(f"{source} embeds images into k = 0 coordinates: there is nothing to fit")
    return shape[1]


# --- the tower, the Gram and its memory ---------------------------------------------------------

def tower_embed(tower: PyTree, include: Callable[[PyTree], PyTree] | None = None
                ) -> tuple[PyTree, Embed]:
    """``(params, embed)`` of an image tower ``(image, image_proj)``: ``params`` its floating
    leaves (only those of ``include(tower)`` when given, e.g. ``lambda t: t[1]`` for the
    projection alone; the others are held fixed) and ``embed(params, images)`` the
    unnormalized embeddings ``W_I h(x)`` (B, k). The tower's floating leaves must share one
    dtype (float32 or float64) and be finite; ``include`` must select at least one of them."""
    if not (isinstance(tower, tuple | list) and len(tower) == 2 and all(map(callable, tower))):
        raise TypeError(f"tower must be a pair (image, image_proj) of modules, got "
                        f"{type(tower).__name__}")
    if include is not None and not callable(include):
        raise TypeError(f"include must be a function tower -> the part to differentiate (e.g. "
                        f"lambda t: t[1]) or None, got {type(include).__name__}")
    params, rest = eqx.partition(tower, eqx.is_inexact_array)
    _param_dtype("tower", params)
    if include is not None:
        try:
            chosen = jax.tree.map(lambda _: False, tower)
            chosen = eqx.tree_at(include, chosen, replace=jax.tree.map(
                eqx.is_inexact_array, include(tower)))
        except Exception as err:  # whatever include raises, or tree_at on a non-subtree
            raise ValueError(f"include must select a part of tower (e.g. lambda t: t[1]): "
                             f"{type(err).__name__}: {err}") from err
        params, fixed = eqx.partition(params, chosen)
        if not jax.tree.leaves(params):
            raise ValueError("include selects no floating-point parameter of tower")
        rest = eqx.combine(rest, fixed)

    def embed(p, images):
        image, proj = eqx.combine(p, rest)
        return jax.vmap(lambda x: proj(image(x)))(images)

    return params, embed


def gram_bytes(n: int, k: int, itemsize: int) -> int:
    """Memory of the ``n·k × n·k`` Gram with its eigendecomposition (``eigh_descending``: the
    Gram, overwritten, and the eigenvectors; then the eigenvectors and their device copy: two
    such matrices at a time), in bytes (an exact Python int)."""
    n, k = as_int("n", n, minimum=0), as_int("k", k, minimum=0)
    return 2 * (n * k) ** 2 * as_int("itemsize", itemsize, minimum=1)


def eigh_descending(gram: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``(sigma_sq (m,), u (m, m))`` of a symmetric ``gram`` (m, m), eigenvalues descending,
    by LAPACK's relatively robust representations (``syevr``), which overwrite ``gram`` and
    need no workspace of its size (the divide-and-conquer ``numpy.linalg.eigh`` needs two
    more, which a 32,768² float64 Gram on a 24 GB machine does not have)."""
    if not (isinstance(gram, np.ndarray) and gram.ndim == 2
            and gram.shape[0] == gram.shape[1] and gram.dtype in (np.float32, np.float64)):
        raise ValueError(f"gram must be a square float32 or float64 NumPy array (m, m), got "
                         f"{type(gram).__name__} {getattr(gram, 'shape', '')} "
                         f"{getattr(gram, 'dtype', '')}")
    if not np.isfinite(gram).all():
        raise ValueError("gram contains NaN or Inf: its eigendecomposition is undefined")
    # LAPACK works in column-major order: a row-major Gram would be copied first, while its
    # transpose (the same symmetric matrix) is column-major and is overwritten in place
    sigma_sq, u = scipy.linalg.eigh(gram.T, overwrite_a=True, driver="evr", check_finite=False)
    return sigma_sq[::-1], u[:, ::-1]


def check_memory(n: int, k: int, itemsize: int, memory_gb: float, flag: str = "memory_gb"
                 ) -> None:
    """``MemoryBudgetExceeded`` when the Gram of ``n`` images × ``k`` outputs would not fit in
    ``memory_gb`` (finite, > 0); the messages name the limit and ``flag``."""
    if not isinstance(flag, str):
        raise TypeError(f"flag must be a str (the argument that sets memory_gb), got "
                        f"{type(flag).__name__}")
    limit = _real(flag, memory_gb, positive=True)
    need = gram_bytes(n, k, itemsize)
    if need > limit * 2**30:
        raise MemoryBudgetExceeded(
            f"an eNTK Gram on n = {n} images × k = {k} outputs is {n * k} × {n * k}: with its "
            f"eigendecomposition about {need / 2**30:.1f} GiB, above the memory budget of "
            f"{limit:g} GiB ({flag}); use fewer images or raise {flag}")


#: How ``entk_gram`` builds ``J Jᵀ``: ``"structured"`` (the default; ``structured.py``) or
#: ``"matrix-free"`` (the reference: per-image gradients pushed through ``J`` by ``jax.jvp``).
GRAM_METHODS = ("structured", "matrix-free")


def entk_gram(params: PyTree, embed: Embed, images: Float[Array, "n C H W"], *,
              scale: float = 1.0, block: int | None = None, memory_gb: float = 8.0,
              progress: str | None = None, method: str = "structured") -> np.ndarray:
    """The empirical NTK ``K = J Jᵀ`` (n·k, n·k) of ``scale · embed(params, images)``, row-major
    in the image, as a NumPy array in the parameters' dtype (float32 or float64; the images
    are cast to it), exactly symmetric. ``method``: ``"structured"`` (each linear layer's
    share from its inputs and output cotangents, ``structured.structured_gram``; one compile
    per model structure, shapes and dtype) or ``"matrix-free"`` (the reference: rows as
    per-image gradients pushed through ``J`` by ``jax.jvp``). ``block``: rows of ``K`` per
    block (whole images for the structured Gram, at least one); default 64 rows matrix-free,
    and for the structured Gram as many images as a quarter of the memory left by the Gram
    and the layers' factors allows. Every argument is checked, and ``MemoryBudgetExceeded``
    raised if the Gram would not fit in ``memory_gb``, before any work; a Gram that overflows
    is refused, never returned."""
    dtype = _param_dtype("params", params)
    if not callable(embed):
        raise TypeError(f"embed must be a function (params, images) -> (B, k), as tower_embed "
                        f"returns, got {type(embed).__name__}")
    if method not in GRAM_METHODS:
        raise ValueError(f"method must be one of {list(GRAM_METHODS)}, got {method!r}")
    scale = _real("scale", scale)
    block, memory_gb = _options(block, memory_gb, progress)
    images = _as_images("images", images, dtype)
    n, k = images.shape[0], _width(params, embed, images, "embed")
    check_memory(n, k, dtype.itemsize, memory_gb)
    if method == "structured":
        out = structured_gram(params, embed, images, k, memory_gb=memory_gb,
                              block=None if block is None else max(1, block // k),
                              progress=progress)
    else:
        out = _matrix_free(params, embed, images, k, 64 if block is None else block, progress)
    with np.errstate(over="ignore"):  # an overflow is reported below, naming the Gram
        out *= np.float64(scale) ** 2  # inf, not a Python OverflowError, past the range
    if not np.isfinite(out).all():
        raise ValueError(not_finite("entk_gram: the eNTK Gram K", dtype,
                                    "rescale scale, the images or the parameters"))
    return out


def _matrix_free(params, embed: Embed, images, k: int, block: int, progress: str | None
                 ) -> np.ndarray:
    """The reference Gram (unscaled), ``block`` rows at a time, exactly symmetric."""
    n = images.shape[0]
    rows = _gram_rows(params, embed, images, k)
    out = np.empty((n * k, n * k), images.dtype)
    starts = range(0, n * k, block)
    for start in progress_bar(starts, desc=progress, disable=progress is None, leave=False):
        index = jnp.minimum(jnp.arange(start, start + block), n * k - 1)
        values = np.asarray(rows(index))
        stop = min(start + block, n * k)
        out[start:stop] = values[:stop - start]
    out += out.T  # exact symmetry (each half is the same product)
    out *= 0.5
    return out


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


def _check_strategy(strategy: object) -> None:
    """A ``tracer_theory.linear`` strategy with a tangent-model closed form (anchored at θ⁰, a
    per-direction filter), else ``TypeError``/``ValueError`` naming ``strategy``."""
    if not isinstance(strategy, linear_strategies.Strategy):
        twin = ("; a finetuning strategy's twin is strategy.linear(problem, steps)"
                if callable(getattr(strategy, "linear", None)) else "")
        raise TypeError(f"strategy must be a tracer_theory.linear strategy (tt.DirectFT(), "
                        f"tt.L2SP(lam), tt.StaticSD(lam), tt.StoppedGD(steps, lr), …), got "
                        f"{type(strategy).__name__}{twin}")
    name = type(strategy).__name__
    if strategy.anchor != "pretrained":
        raise ValueError(f"strategy {name} is anchored at 0, not at θ⁰: it has no tangent-model "
                         "closed form here")
    if type(strategy).solution is not linear_strategies.Strategy.solution:
        raise ValueError(f"strategy {name} is not a per-direction filter: it has no "
                         "tangent-model closed form here")


def _eigen(saved, size: int) -> tuple[np.ndarray, np.ndarray]:
    """``(sigma_sq (size,), u (size, size))`` of a cached eigendecomposition; a ``ValueError``
    when the file holds other shapes."""
    with saved:
        sigma_sq, u = saved["sigma_sq"], saved["u"]
    if sigma_sq.shape != (size,) or u.shape != (size, size):
        raise ValueError(f"expected eigenvalues ({size},) and eigenvectors ({size}, {size}), "
                         f"got {sigma_sq.shape} and {u.shape}")
    return sigma_sq, u


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
              block: int | None = None, memory_gb: float = 8.0, progress: str | None = None,
              cache: str | Path | None = None, overwrite: bool = False) -> TangentProblem:
        """The problem of ``tower`` (``(image, image_proj)``, at θ⁰) on ``images`` with the
        contrastive ``target`` ``Y`` (n, k) in the scaled units of ``linear_problem`` (the
        centred projected captions over √n). ``include`` restricts the parameters (see
        ``tower_embed``). The rank tolerance is ``numpy.linalg.matrix_rank``'s on ``K``:
        ``σ_i² > n·k·eps·σ_max²``. ``cache``: an ``.npz`` file the Gram's eigendecomposition
        is saved to and read back from, keyed (``_cache``) by what the Gram depends on (the
        parameters, the images, n and k): one written for other ones is a ``ResumeMismatch``
        and a damaged one a ``DamagedArtifact``, both naming it (``overwrite``: computed anew).

        Checked before any work, cache or not: a float32 or float64 tower, ``n >= 1`` finite
        images (n, C, H, W) as the tower takes them (cast to its dtype), a finite ``target``
        (n, k) with k the tower's embedding width, and ``block``, ``memory_gb``, ``progress``
        as in ``entk_gram``."""
        params, embed = tower_embed(tower, include)
        block, memory_gb = _options(block, memory_gb, progress)  # checked, cache or not
        images = _as_images("images", images, jax.tree.leaves(params)[0].dtype)
        n, k = images.shape[0], _width(params, embed, images, "tower")
        target = as_float_matrix("target", target, f"(n, k) = ({n}, {k})")
        if target.shape != (n, k):
            raise ValueError(f"target must have shape (n, k) = ({n}, {k}) (n images, k the "
                             f"tower's embedding width), got {target.shape}")
        scale = 1 / np.sqrt(n)
        key = cache_key({"cache": "eNTK Gram eigendecomposition", "n": n, "k": k,
                         "params": array_digest(params), "images": array_digest(images),
                         "structure": str(jax.tree.structure(params))})
        saved = None if cache is None else load_keyed(
            cache, key, lambda f: _eigen(np.load(f), n * k), replace=overwrite)
        if saved is not None:
            sigma_sq, u = saved
            del saved
        else:
            gram = entk_gram(params, embed, images, scale=scale, block=block,
                             memory_gb=memory_gb, progress=progress)
            sigma_sq, u = eigh_descending(gram)
            del gram  # overwritten: the eigenvectors and their device copy are the peak
            if cache is not None:
                write_keyed(cache, key, lambda f: np.savez(f, sigma_sq=sigma_sq, u=u))
        # On the device with at most one more matrix of its size in memory at a time
        # (``jax.device_put``: ``jnp.asarray`` stages a second host copy): syevr's column-major
        # output (u reverses its columns) goes over as its row-major transpose, the host copy
        # is dropped, and the device transposes and flips it.
        ascending = u[:, ::-1]
        if ascending.flags.f_contiguous and not ascending.flags.c_contiguous:
            rows = jax.device_put(ascending.T)
            del u, ascending
            u = jnp.flip(rows.T, axis=1)
            del rows
        else:
            del ascending
            u = jax.device_put(np.ascontiguousarray(u))
        mask = sigma_sq > len(sigma_sq) * np.finfo(sigma_sq.dtype).eps * sigma_sq[0]
        e0 = scale * embed(params, images)
        residual = (jnp.asarray(target, e0.dtype) - e0).reshape(-1)
        residual = ensure_each(residual, [(all_finite(residual), not_finite(
            "build: the residual Y − E⁰", e0.dtype, "rescale the target or the images"))])
        return cls(jnp.asarray(np.where(mask, sigma_sq, 0.0)), jnp.asarray(mask), u, residual,
                   params, images, float(scale), embed)

    @property
    def sigma_max_sq(self) -> Array:
        """The largest eigenvalue of the Gram (sets a gradient-descent step, as ``σ_max²``)."""
        return self.sigma_sq[0]

    @property
    def dtype(self) -> jnp.dtype:
        """The tower's dtype (of ``params``, ``images`` and every result)."""
        return self.images.dtype

    def jvp(self, delta: PyTree, images: Float[Array, "B C H W"]) -> Float[Array, "B k"]:
        """``J(x) Δθ`` on ``images`` (B, C, H, W) shaped like the problem's, (B, k), unscaled;
        ``delta`` shaped like ``params``. Refused, never returned, if it overflows."""
        delta = self._checked_delta(delta)
        images = _as_images("images", images, self.dtype, self.images.shape[1:])
        out = self._jvp(delta, images)
        return ensure_each(out, [(all_finite(out), not_finite(
            "jvp: J(x) Δθ", self.dtype, "rescale delta or the images"))])

    def _jvp(self, delta: PyTree, images: Float[Array, "B C H W"]) -> Float[Array, "B k"]:
        return jax.jvp(lambda p: self.embed(p, images), (self.params,), (delta,))[1]

    def delta(self, strategy: linear_strategies.Strategy) -> PyTree:
        """``Δθ`` of ``strategy``'s converged (or finite-horizon) solution on the tangent
        model, shaped like ``params``: ``Jᵀ Σ f_i (u_iᵀR)/σ_i² u_i``. Only ``tracer_theory.linear``
        strategies anchored at the pretrained weights and given by a per-direction filter carry
        over (decay toward 0 is not a shrinkage in Δθ); their hyper-parameters are checked
        against this problem as ``tt.solve`` checks them (``StoppedGD``: ``lr < 2/σ_max²``), and
        a ``Δθ`` that overflows is refused, never returned."""
        _check_strategy(strategy)
        sigma_sq = strategy.check(self.sigma_sq)  # e.g. StoppedGD's stability bound
        f = jnp.where(self.mask, strategy.filter(sigma_sq), 0.0)
        safe = jnp.where(self.mask, sigma_sq, 1.0)
        # r @ u, not u.T @ r: XLA may materialize the transpose, a second (n·k)² matrix
        alpha = self.u @ ((self.residual @ self.u) * f / safe)
        out = self._pull(alpha)
        name = type(strategy).__name__
        return ensure_each(out, [
            (all_finite(f), not_finite(
                f"delta: a filter factor of {name}", self.dtype,
                f"{name}.filter must return finite values for σ_i² in the problem's range")),
            (_tree_finite(out), not_finite(
                f"delta: the {name} change Δθ", self.dtype,
                "rescale the target or the images (Δθ grows like ‖R‖/σ_min)")),
        ])

    def pull(self, alpha: Float[Array, " nk"]) -> PyTree:
        """``Jᵀ α`` (parameter-shaped) for a finite ``α`` in the scaled embedding space, (n·k,)
        or (n, k). Refused, never returned, if it overflows."""
        n, k = self.images.shape[0], self.residual.shape[0] // self.images.shape[0]

        def shape_error(shape):
            ok = tuple(shape) in ((n * k,), (n, k))
            return None if ok else f"must have shape (n·k,) = ({n * k},) or (n, k) = ({n}, {k})"

        out = self._pull(_as_floats("alpha", alpha, self.dtype, shape_error))
        return ensure_each(out, [(_tree_finite(out), not_finite(
            "pull: Jᵀ α", self.dtype, "rescale alpha"))])

    def _pull(self, alpha: Float[Array, " nk"]) -> PyTree:
        _, vjp = jax.vjp(lambda p: self.scale * self.embed(p, self.images), self.params)
        return vjp(alpha.astype(self.dtype).reshape(self.images.shape[0], -1))[0]

    def task_fraction(self, delta: PyTree) -> Array:
        """``‖P Δθ‖² / ‖Δθ‖²`` in [0, 1], ``P`` the projector on the row space of ``J`` (the
        span of the sample's per-image, per-coordinate gradients): the share of a parameter
        change inside the task subspace. Scale-invariant (computed on ``Δθ/max|Δθ|``, so no
        size of change overflows); a zero change has no share and is refused."""
        delta = self._checked_delta(delta)
        big = jnp.max(jnp.stack([jnp.max(jnp.abs(x), initial=0.0)
                                 for x in jax.tree.leaves(delta)]))
        big = ensure_each(big, [(big > 0, "delta is zero: the share of a zero change in the "
                                          "task subspace is undefined")])
        unit = jax.tree.map(lambda x: x / big, delta)
        jd = self.scale * self._jvp(unit, self.images).reshape(-1)
        safe = jnp.where(self.mask, self.sigma_sq, 1.0)
        inside = jnp.sum(jnp.where(self.mask, (jd @ self.u) ** 2 / safe, 0.0))
        total = sum(jnp.sum(x**2) for x in jax.tree.leaves(unit))
        fraction = inside / total
        return ensure_each(fraction, [(jnp.isfinite(fraction), not_finite(
            "task_fraction: ‖PΔθ‖²/‖Δθ‖²", self.dtype, "rescale the images"))])

    def _checked_delta(self, delta: PyTree) -> PyTree:
        """``delta`` with the structure and leaf shapes of ``params``, each leaf a finite
        float32/float64 array (cast to the problem's dtype); else a ``ValueError`` naming it."""
        want, got = jax.tree.structure(self.params), jax.tree.structure(delta)
        if got != want:
            raise ValueError(f"delta must be shaped like the problem's params (the tower's "
                             f"floating leaves, as delta() returns): a pytree of "
                             f"{want.num_leaves} arrays, got a {type(delta).__name__} of "
                             f"{got.num_leaves} leaves with another structure")
        leaves = []
        for i, (x, p) in enumerate(zip(jax.tree.leaves(delta), jax.tree.leaves(self.params),
                                       strict=True)):
            x = as_real_array(f"delta (leaf {i})", x)
            if x.dtype not in SUPPORTED_FLOATS:
                raise ValueError(f"delta must be float32 or float64, got {x.dtype} at leaf {i}")
            if x.shape != p.shape:
                raise ValueError(f"delta must be shaped like params, got shape {x.shape} at leaf "
                                 f"{i} for a parameter of shape {p.shape}")
            leaves.append(x.astype(self.dtype))
        delta = jax.tree.unflatten(want, leaves)
        return ensure_each(delta, [(_tree_finite(delta),
                                    "delta contains NaN or Inf: every entry must be finite")])
