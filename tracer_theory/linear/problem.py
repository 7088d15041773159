"""The linearized contrastive finetuning problem (THEORY §1–2)."""

from __future__ import annotations

from typing import Literal

import equinox as eqx
import jax.numpy as jnp
from jaxtyping import Array, ArrayLike, Float

from .._validation import as_float_matrix, check_instance, ensure, not_finite

Contrast = Literal["paper", "centered"]


class LinearProblem(eqx.Module):
    """Data and pretrained weights of one linearized finetuning problem (a pytree, THEORY §1).

    Arguments:
        x_img: image features ``X_I``, shape ``(d_I, n)``, one column per sample.
        x_txt: text features ``X_T``, shape ``(d_T, n)``.
        w0: pretrained image encoder ``W⁰``, shape ``(k, d_I)``; every strategy starts here.
        w_txt: frozen text encoder ``W_T⁰``, shape ``(k, d_T)``.
        contrast: ``"paper"`` uses ``C = n I − J`` (the paper); ``"centered"`` uses
            ``H = I − J/n = C/n`` (the authors' analysis code). Y differs by the factor n.
        x_pre: optional pretraining features ``X_pre``, shape ``(d_I, m)``: inputs of the
            pretraining distribution on which ``forgetting`` measures how far the encoder moved
            (THEORY §7.1). Needed by ``forgetting``, ``ReplaySD`` and the Pareto analysis only.

    All arrays must share one floating dtype; nothing is cast. Shapes and finiteness are
    checked at construction and a ``ValueError`` names the offending argument.
    """

    x_img: Float[Array, "d_I n"]
    x_txt: Float[Array, "d_T n"]
    w0: Float[Array, "k d_I"]
    w_txt: Float[Array, "k d_T"]
    contrast: Contrast = eqx.field(static=True, default="paper")
    x_pre: Float[Array, "d_I m"] | None = None

    def __init__(self, x_img: ArrayLike, x_txt: ArrayLike, w0: ArrayLike, w_txt: ArrayLike,
                 contrast: Contrast = "paper", *, x_pre: ArrayLike | None = None):
        x_img = as_float_matrix("x_img", x_img, "(d_I, n)")
        x_txt = as_float_matrix("x_txt", x_txt, "(d_T, n)")
        w0 = as_float_matrix("w0", w0, "(k, d_I)")
        w_txt = as_float_matrix("w_txt", w_txt, "(k, d_T)")
        if x_img.shape[1] != x_txt.shape[1]:
            raise ValueError(
                f"x_img has {x_img.shape[1]} samples (columns) but x_txt has {x_txt.shape[1]}; "
                "both must be (features, n) with the same n")
        if w0.shape[1] != x_img.shape[0]:
            raise ValueError(
                f"w0 has d_I = {w0.shape[1]} columns but x_img has d_I = {x_img.shape[0]} rows; "
                "w0 must be (k, d_I)")
        if w_txt.shape[1] != x_txt.shape[0]:
            raise ValueError(
                f"w_txt has d_T = {w_txt.shape[1]} columns but x_txt has d_T = {x_txt.shape[0]} "
                "rows; w_txt must be (k, d_T)")
        if w0.shape[0] != w_txt.shape[0]:
            raise ValueError(
                f"w0 has k = {w0.shape[0]} rows but w_txt has k = {w_txt.shape[0]}; both encoders "
                "must map into the same k-dimensional embedding space")
        dtypes = {a.dtype for a in (x_img, x_txt, w0, w_txt)}
        if len(dtypes) != 1:
            raise ValueError(
                "x_img, x_txt, w0 and w_txt must share one dtype, got "
                f"{x_img.dtype}, {x_txt.dtype}, {w0.dtype}, {w_txt.dtype}; cast them explicitly")
        if contrast not in ("paper", "centered"):
            raise ValueError(f"contrast must be 'paper' or 'centered', got {contrast!r}")
        if x_pre is not None:
            x_pre = as_float_matrix("x_pre", x_pre, "(d_I, m)")
            if x_pre.shape[0] != x_img.shape[0]:
                raise ValueError(
                    f"x_pre has d_I = {x_pre.shape[0]} rows but x_img has d_I = "
                    f"{x_img.shape[0]}; x_pre must be (d_I, m), pretraining features in the "
                    "image feature space")
            if x_pre.dtype != x_img.dtype:
                raise ValueError(f"x_pre has dtype {x_pre.dtype} but x_img has {x_img.dtype}; "
                                 "cast them explicitly")
        self.x_pre = x_pre
        self.x_img, self.x_txt, self.w0, self.w_txt = x_img, x_txt, w0, w_txt
        self.contrast = contrast

    def with_pretraining(self, x_pre: ArrayLike) -> LinearProblem:
        """This problem with pretraining features ``x_pre`` (d_I, m) (checked as at
        construction)."""
        if x_pre is None:
            raise ValueError("x_pre must be an array of pretraining features (d_I, m), got None")
        return LinearProblem(self.x_img, self.x_txt, self.w0, self.w_txt, self.contrast,
                             x_pre=x_pre)

    @property
    def n(self) -> int:
        """Number of finetuning pairs."""
        return self.x_img.shape[1]

    @property
    def dtype(self) -> jnp.dtype:
        return self.x_img.dtype

    @property
    def sigma_max_sq(self) -> Array:
        """``σ_max²``, the largest squared singular value of ``X_I`` (sets a gradient-descent
        step)."""
        from .spectrum import spectrum  # the one rank-masked SVD (spectrum imports this module)

        return spectrum(self).sigma_sq[0]


def contrast_matrix(problem: LinearProblem) -> Float[Array, "n n"]:
    """Returns ``C = n I − J`` (``contrast="paper"``) or ``H = I − J/n`` (``"centered"``), shape
    (n, n) (THEORY §2)."""
    check_instance("problem", problem, LinearProblem)
    n = problem.n
    eye = jnp.eye(n, dtype=problem.dtype)
    ones = jnp.ones((n, n), dtype=problem.dtype)
    return n * eye - ones if problem.contrast == "paper" else eye - ones / n


def contrastive_target(problem: LinearProblem) -> Float[Array, "k n"]:
    """``Y = W_T⁰ X_T C`` (THEORY §2). Returns shape (k, n).

    ``X_T C`` is the column-centred ``X_T`` times n (paper) or times 1 (centered). The solvers
    refuse a ``Y`` that overflows; this function returns it as computed.
    """
    check_instance("problem", problem, LinearProblem)
    centred = problem.x_txt - jnp.mean(problem.x_txt, axis=1, keepdims=True)
    scale = problem.n if problem.contrast == "paper" else 1
    return problem.w_txt @ (scale * centred)


def mmcl_loss_trace(problem: LinearProblem, w: Float[Array, "k d_I"]) -> Float[Array, ""]:
    """Linearized MMCL loss in its similarity/trace form (THEORY §2); returns a scalar.

    ``−Σ_ij C_ij s_ij + ½‖W X_I‖²`` with ``s_ij = ⟨W x_i, W_T⁰ t_j⟩``. ``w`` (k, d_I) must have
    the shape of ``w0``; a value that overflows is refused.
    """
    w = check_encoder(problem, w)
    sims = (w @ problem.x_img).T @ (problem.w_txt @ problem.x_txt)  # (n, n): s_ij
    contrast_term = jnp.sum(contrast_matrix(problem) * sims)
    return _finite_loss(-contrast_term + 0.5 * jnp.sum((w @ problem.x_img) ** 2),
                        "mmcl_loss_trace", problem)


def mmcl_loss_lstsq(problem: LinearProblem, w: Float[Array, "k d_I"]) -> Float[Array, ""]:
    """Linearized MMCL loss in its least-squares form ``½‖W X_I − Y‖² − ½‖Y‖²`` (THEORY §2);
    returns a scalar.

    ``w`` (k, d_I) must have the shape of ``w0``; a value that overflows is refused.
    """
    w = check_encoder(problem, w)
    y = contrastive_target(problem)
    return _finite_loss(0.5 * jnp.sum((w @ problem.x_img - y) ** 2) - 0.5 * jnp.sum(y**2),
                        "mmcl_loss_lstsq", problem)


def fit_loss(problem: LinearProblem, w: Float[Array, "k d_I"]) -> Float[Array, ""]:
    """The data term ``½‖W X_I − Y‖²`` that every strategy's objective starts from (THEORY §2;
    the task loss of THEORY §7.1); returns a scalar.

    ``w`` (k, d_I) must have the shape of ``w0``; a value that overflows is refused.
    """
    w = check_encoder(problem, w)
    return _finite_loss(unchecked_fit_loss(problem, w), "fit_loss", problem)


#: The task loss of the Pareto analysis is the data term every strategy fits.
task_loss = fit_loss


def forgetting(problem: LinearProblem, w: Float[Array, "k d_I"]) -> Float[Array, ""]:
    """``‖(W − W⁰) X_pre‖²_F``: how far the encoder ``w`` (k, d_I) moved the embeddings of the
    pretraining features ``problem.x_pre`` (d_I, m) (THEORY §7.1); returns a scalar. Refuses a
    problem without ``x_pre`` and a value that overflows."""
    w = check_encoder(problem, w)
    return _finite_loss(unchecked_forgetting(problem, w), "forgetting", problem)


def unchecked_forgetting(problem: LinearProblem, w: Float[Array, "k d_I"]) -> Float[Array, ""]:
    """``forgetting`` without its checks (but ``x_pre`` must be there)."""
    return jnp.sum(((w - problem.w0) @ pretraining_features(problem)) ** 2)


def pretraining_features(problem: LinearProblem) -> Float[Array, "d_I m"]:
    """``problem.x_pre``, or a ``ValueError`` saying how to give it."""
    check_instance("problem", problem, LinearProblem)
    if problem.x_pre is None:
        raise ValueError("this problem has no pretraining features: forgetting is measured on "
                         "X_pre; build it with LinearProblem(..., x_pre=X_pre) or "
                         "problem.with_pretraining(X_pre), X_pre of shape (d_I, m)")
    return problem.x_pre


def unchecked_fit_loss(problem: LinearProblem, w: Float[Array, "k d_I"]) -> Float[Array, ""]:
    """``fit_loss`` without its checks, for the inner loop of gradient descent."""
    return 0.5 * jnp.sum((w @ problem.x_img - contrastive_target(problem)) ** 2)


def check_encoder(problem: LinearProblem, w: ArrayLike, name: str = "w") -> Array:
    """``w`` as a finite (k, d_I) float array of the problem's dtype, else a ``ValueError``."""
    check_instance("problem", problem, LinearProblem)
    arr = as_float_matrix(name, w, "(k, d_I)")
    if arr.shape != problem.w0.shape or arr.dtype != problem.dtype:
        raise ValueError(f"{name} must have the shape {problem.w0.shape} and dtype "
                         f"{problem.dtype} of w0, got {arr.shape} {arr.dtype}")
    return arr


def _finite_loss(value: Array, where: str, problem: LinearProblem) -> Array:
    return ensure(value, jnp.isfinite(value), not_finite(
        f"{where}: the loss", problem.dtype, "rescale w or the problem's arrays"))
