"""The empirical NTK Gram by structured derivatives (Novak et al. 2022; THEORY §6.7).

A weight ``W`` used once, linearly, as ``y = W ⋆ x`` (a dense layer applied at ``P`` positions,
e.g. every token, or a convolution: ``P`` output pixels, each reading a patch) has as Jacobian
row for image ``i`` and output coordinate ``a`` the sum of outer products

    J_ia(W) = Σ_p g_iap ⊗ x_ip,

``g_iap`` (O,) the cotangent of the layer's output at position ``p`` and ``x_ip`` (C,) its input
there. Its share of the Gram is then a contraction of two small factors,

    K_W[(i,a),(j,b)] = Σ_{p,q} (g_iap · g_jbq) (x_ip · x_jq),

which costs ``P²C + P²kO + k²PO`` per pair of images against ``k²OC`` for the explicit rows
(and ``k²O + C`` when ``P = 1``, a dense layer without sharing). Each such weight takes the
cheaper of the two; every other parameter (biases, LayerNorm scales, embeddings, a weight used
twice or behind another operation) enters through its explicit Jacobian rows, which are few.

The weights are found in the jaxpr of one image's embedding (``dot_general`` and
``conv_general_dilated`` equations with a parameter as an operand); the jaxpr is evaluated with
a zero added to each such layer's output, whose gradient is ``g``, and the layer's input
recorded. Two jitted programs do the work, compiled once per (structure, shapes, dtype, block)
and reused across calls, seeds and blocks: the factors of a block of images, and the Gram of a
pair of blocks.
"""

from __future__ import annotations

import collections
import dataclasses
import functools
import math
import time
from collections.abc import Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from jax.extend.core import Literal
from jaxtyping import Array, Float, PyTree

from .._progress import bar as progress_bar
from ..errors import MemoryBudgetExceeded

_HI = jax.lax.Precision.HIGHEST

#: ``embed(params, images) -> (B, k)``, as in ``ntk``.
Embed = Callable[[PyTree, Array], Array]


@dataclasses.dataclass(frozen=True)
class Tap:
    """A weight used once, linearly: equation ``eqn`` of the jaxpr, parameter leaf ``leaf``,
    the activation operand at position ``x_side`` (0 or 1), and the layer's geometry (``O``
    output features, ``P`` positions, ``C`` inputs per position). ``structured``: its Gram
    share is contracted through the factors (else its explicit rows are formed)."""

    eqn: int
    leaf: int
    x_side: int
    O: int  # noqa: E741 (the paper's letters)
    P: int
    C: int
    structured: bool | None  # None: to be measured (``measured_faster``)

    def costs(self, k: int) -> tuple[int, int]:
        """``(structured, explicit)`` multiply-adds per pair of images."""
        if self.P == 1:
            structured = k * k * self.O + self.C
        else:
            structured = self.P**2 * self.C + self.P**2 * k * self.O + k * k * self.P * self.O
        return structured, k * k * self.O * self.C


@dataclasses.dataclass(frozen=True, eq=False)
class Plan:
    """How the Gram of one embedding function is computed: its one-image ``jaxpr`` (whose
    inputs are the constants, the parameter leaves and one image batch (1, ...)), the ``taps``,
    the ``rest`` leaves taken explicitly, ``k``, the dtype and the ``block`` (images per block).
    The byte counts hold whichever contraction each tap takes."""

    jaxpr: object
    taps: tuple[Tap, ...]
    rest: tuple[int, ...]
    rest_size: int
    k: int
    dtype: jnp.dtype
    block: int = 1

    @property
    def explicit(self) -> int:
        """Columns of the explicit rows: the ``rest`` leaves and the explicit taps."""
        return self.rest_size + sum(t.O * t.C for t in self.taps if not t.structured)

    def feature_bytes(self, n: int) -> int:
        """Bytes of the factors of ``n`` images (cotangents, inputs and explicit rows; the
        larger of the two for a tap still to be measured)."""
        def size(t: Tap) -> int:
            factors, rows = self.k * t.O * t.P + t.P * t.C, self.k * t.O * t.C
            return {True: factors, False: rows, None: max(factors, rows)}[t.structured]

        per_image = self.k * self.rest_size + sum(size(t) for t in self.taps)
        return n * per_image * self.dtype.itemsize

    def block_bytes(self, block: int) -> int:
        """Bytes of the intermediates of one pair of blocks of ``block`` images each."""
        b, k = block, self.k
        largest = max([2 * b * (t.P * t.P + t.P * k * min(t.O, WIDE)) for t in self.taps
                       if t.P > 1] + [0])
        return (2 * (b * k) ** 2 + largest) * self.dtype.itemsize

    def describe(self) -> list[str]:
        """One line per tap: its geometry and how its share is contracted."""
        lines = []
        for t in self.taps:
            s, e = t.costs(self.k)
            how = "structured" if t.structured else "explicit"
            lines.append(f"leaf {t.leaf}: O={t.O} P={t.P} C={t.C}: {how} "
                         f"({s:,} vs {e:,} multiply-adds per pair)")
        lines.append(f"explicit columns: {self.explicit:,} (leaves {list(self.rest)} and the "
                     f"explicit taps); blocks of {self.block} images")
        return lines


# --- finding the taps ----------------------------------------------------------------------------

def _geometry(eqn, x_side: int, shapes: Sequence[tuple[int, ...]]) -> tuple[int, int, int] | None:
    """``(O, P, C)`` of a ``dot_general`` or ``conv_general_dilated`` whose weight is operand
    ``1 - x_side``; ``None`` when its form is not one handled here (batch dimensions, grouped or
    non-default convolution layouts, a batch of more than one image)."""
    x_shape, w_shape = shapes[x_side], shapes[1 - x_side]
    if eqn.primitive.name == "dot_general":
        (contract_l, contract_r), (batch_l, batch_r) = eqn.params["dimension_numbers"]
        if batch_l or batch_r:
            return None
        cw, cx = (contract_r, contract_l) if x_side == 0 else (contract_l, contract_r)
        o = math.prod(d for i, d in enumerate(w_shape) if i not in cw)
        c = math.prod(x_shape[i] for i in cx)
        p = math.prod(d for i, d in enumerate(x_shape) if i not in cx)
        return o, p, c
    if x_side != 0:
        return None
    numbers = eqn.params["dimension_numbers"]
    default = tuple(range(len(x_shape)))
    if (eqn.params["feature_group_count"] != 1 or eqn.params["batch_group_count"] != 1
            or numbers.lhs_spec != default or numbers.rhs_spec != default
            or numbers.out_spec != default or x_shape[0] != 1):
        return None
    out_shape = eqn.outvars[0].aval.shape
    return w_shape[0], math.prod(out_shape[2:]), math.prod(w_shape[1:])


def plan(embed: Embed, params: PyTree, image_shape: tuple[int, ...], dtype, k: int, n: int,
         memory_gb: float, block: int | None = None, flag: str = "memory_gb"
         ) -> tuple[Plan, list]:
    """The ``Plan`` of ``embed`` for ``n`` images of ``image_shape`` and its jaxpr's constants:
    the taps found by tracing, the block (``block`` images, at most ``n``, or from
    ``memory_gb``, see ``choose_block``) and each tap's contraction at that block
    (``_by_counts``, else ``measured_faster``)."""
    leaves, treedef = jax.tree.flatten(params)

    def one(leaves, image):
        return embed(jax.tree.unflatten(treedef, leaves), image)

    closed = jax.make_jaxpr(one)(leaves, jax.ShapeDtypeStruct((1, *image_shape), dtype))
    jaxpr = closed.jaxpr
    index = {v: i for i, v in enumerate(jaxpr.invars[:len(leaves)])}
    uses: dict[int, int] = {}
    for eqn in jaxpr.eqns:
        for v in eqn.invars:
            if not isinstance(v, Literal) and v in index:
                uses[index[v]] = uses.get(index[v], 0) + 1
    for v in jaxpr.outvars:
        if not isinstance(v, Literal) and v in index:
            uses[index[v]] = uses.get(index[v], 0) + 2  # an output is never a tap
    taps = []
    for e, eqn in enumerate(jaxpr.eqns):
        if eqn.primitive.name not in ("dot_general", "conv_general_dilated"):
            continue
        ops = [None if isinstance(v, Literal) else index.get(v) for v in eqn.invars[:2]]
        sides = [s for s in (0, 1) if ops[s] is not None and ops[1 - s] is None]
        if len(sides) != 1 or uses[ops[sides[0]]] != 1:
            continue
        x_side = 1 - sides[0]
        geometry = _geometry(eqn, x_side, [v.aval.shape for v in eqn.invars[:2]])
        if geometry is not None:
            tap = Tap(e, ops[sides[0]], x_side, *geometry, structured=None)
            taps.append(dataclasses.replace(tap, structured=_by_counts(tap, k)))
    tapped = {t.leaf for t in taps}
    rest = tuple(i for i in range(len(leaves)) if i not in tapped)
    out = Plan(jaxpr, tuple(taps), rest, sum(leaves[i].size for i in rest), k, jnp.dtype(dtype))
    block = choose_block(out, n, memory_gb, flag) if block is None else min(block, n)
    name = jnp.dtype(dtype).name
    taps = tuple(t if t.structured is not None else dataclasses.replace(
        t, structured=measured_faster(t.O, t.P, t.C, k, name, block)) for t in taps)
    return dataclasses.replace(out, taps=taps, block=block), closed.consts


# --- which contraction, by measurement --------------------------------------------------------

#: Output features of a shared weight contracted at a time (``_shared``): on a 2-core CPU a
#: 256-wide layer ran 1.6× slower in one piece than the same layer's explicit rows, and 1.3×
#: faster in four.
WIDE = 64
#: The most images per block: on a 2-core CPU the tiny CLIP's Gram of 32 images took 2.29 s in
#: blocks of 16 against 3.24 s in one block of 32 (the pairs below the diagonal are mirrored,
#: not computed, and the shared contractions stay in cache).
MAX_BLOCK = 16

#: Multiply-add counts further apart than this factor decide without a measurement.
CLEAR = 8.0


def _by_counts(tap: Tap, k: int) -> bool | None:
    """Whether the tap's share is cheaper through its factors than through its explicit rows,
    where the multiply-add counts decide: always for a dense layer without sharing (``P = 1``,
    a ``k·O`` product against ``k·O·C``), and where the counts differ by more than ``CLEAR``;
    ``None`` where they do not (then ``measured_faster`` times both)."""
    structured, explicit = tap.costs(k)
    if tap.P == 1 or structured * CLEAR < explicit:
        return True
    if explicit * CLEAR < structured:
        return False
    return None


@functools.cache
def measured_faster(O: int, P: int, C: int, k: int, dtype: str, block: int) -> bool:  # noqa: E741
    """True when the shared-weight contraction (``_shared``) of two blocks of ``block`` images
    beats forming their explicit rows and multiplying them, timed on the default backend (the
    better of two calls after a compiling one). Measured once per geometry, dtype and block in
    a process: the winner depends on the machine and the block (on a 2-core CPU a 256-wide
    layer's factors win at 8 images and lose at 32), not on the values."""
    b = block
    keys = jax.random.split(jax.random.key(0))
    g = jax.random.normal(keys[0], (b, k, O, P), dtype)
    x = jax.random.normal(keys[1], (b, P, C), dtype)

    def explicit(g, x):
        rows = jnp.einsum("iaop,ipc->iaoc", g, x, precision=_HI).reshape(b, k, -1)
        return jnp.einsum("iar,jbr->iajb", rows, rows, precision=_HI)

    times = []
    for fn in (jax.jit(lambda g, x: _shared(g, x, g, x)), jax.jit(explicit)):
        jax.block_until_ready(fn(g, x))
        best = float("inf")
        for _ in range(2):
            start = time.perf_counter()
            jax.block_until_ready(fn(g, x))
            best = min(best, time.perf_counter() - start)
        times.append(best)
    return times[0] < times[1]


# --- the two programs ----------------------------------------------------------------------------

def _evaluate(p: Plan, consts, leaves, image, eps):
    """The jaxpr on ``image`` (1, ...) with ``eps[t]`` added to tap ``t``'s output: ``(out,
    inputs)``, ``out`` (1, k) and ``inputs[t]`` the tap's activation operand."""
    jaxpr = p.jaxpr
    env = dict(zip(jaxpr.constvars, consts, strict=True))
    env.update(zip(jaxpr.invars, [*leaves, image], strict=True))
    taps = {t.eqn: (i, t) for i, t in enumerate(p.taps)}
    inputs = [None] * len(p.taps)

    def read(v):
        return v.val if isinstance(v, Literal) else env[v]

    for e, eqn in enumerate(jaxpr.eqns):
        values = [read(v) for v in eqn.invars]
        with eqn.ctx.manager:
            out = eqn.primitive.bind(*values, **eqn.primitive.get_bind_params(eqn.params))
        if e in taps:
            i, tap = taps[e]
            inputs[i] = values[tap.x_side]
            out = out + eps[i]
        if eqn.primitive.multiple_results:
            env.update(zip(eqn.outvars, out, strict=True))
        else:
            env[eqn.outvars[0]] = out
    return read(jaxpr.outvars[0]), inputs


def _positions_first(p: Plan, tap: Tap, x: Array, g: Array) -> tuple[Array, Array]:
    """The tap's input as ``(P, C)`` and its ``k`` output cotangents as ``(k, O, P)``."""
    eqn = p.jaxpr.eqns[tap.eqn]
    k = g.shape[0]
    if eqn.primitive.name == "conv_general_dilated":
        prm = eqn.params
        w_shape = eqn.invars[1].aval.shape
        patches = jax.lax.conv_general_dilated_patches(
            x, w_shape[2:], prm["window_strides"], prm["padding"], prm["lhs_dilation"],
            prm["rhs_dilation"], precision=_HI)
        return patches.reshape(tap.C, tap.P).T, g.reshape(k, tap.O, tap.P)
    (contract_l, contract_r), _ = eqn.params["dimension_numbers"]
    cx = contract_r if tap.x_side == 1 else contract_l
    free = [i for i in range(x.ndim) if i not in cx]
    x = jnp.transpose(x, (*free, *cx)).reshape(tap.P, tap.C)
    if tap.x_side == 1:  # out = (weight's free dims, x's free dims)
        return x, g.reshape(k, tap.O, tap.P)
    return x, jnp.swapaxes(g.reshape(k, tap.P, tap.O), 1, 2)


def _features(p: Plan, consts, leaves, image):
    """One image's factors: cotangents ``(k, O, P)`` and inputs ``(P, C)`` of the structured
    taps, and the explicit rows ``(k, explicit)``."""
    eps = [jnp.zeros(p.jaxpr.eqns[t.eqn].outvars[0].aval.shape, p.dtype) for t in p.taps]
    rest = [leaves[i] for i in p.rest]

    def f(eps, rest):
        full = list(leaves)
        for i, r in zip(p.rest, rest, strict=True):
            full[i] = r
        return _evaluate(p, consts, full, image[None], eps)

    out, pull, inputs = jax.vjp(f, eps, rest, has_aux=True)
    basis = jnp.eye(p.k, dtype=out.dtype).reshape(p.k, *out.shape)
    g_eps, g_rest = jax.vmap(pull)(basis)
    cotangents, xs, rows = [], [], [g.reshape(p.k, -1) for g in g_rest]
    for tap, x, g in zip(p.taps, inputs, g_eps, strict=True):
        x, g = _positions_first(p, tap, x, g)
        if tap.structured:
            cotangents.append(g)
            xs.append(x)
        else:
            rows.append(jnp.einsum("aop,pc->aoc", g, x,
                                   precision=_HI).reshape(p.k, -1))
    rows = jnp.concatenate(rows, axis=1) if rows else jnp.zeros((p.k, 0), p.dtype)
    return tuple(cotangents), tuple(xs), rows


def _pair(p: Plan, first, second) -> Array:
    """``K`` between two blocks of images (b₁·k, b₂·k), from their factors."""
    (g1, x1, j1), (g2, x2, j2) = first, second
    b1, b2, k = j1.shape[0], j2.shape[0], p.k
    gram = jnp.einsum("iar,jbr->iajb", j1, j2, precision=_HI)
    structured = [t for t in p.taps if t.structured]
    for tap, ga, xa, gb, xb in zip(structured, g1, x1, g2, x2, strict=True):
        if tap.P == 1:
            inputs = jnp.einsum("ic,jc->ij", xa[:, 0], xb[:, 0], precision=_HI)
            gram += jnp.einsum("iao,jbo->iajb", ga[..., 0], gb[..., 0],
                               precision=_HI) * inputs[:, None, :, None]
        else:
            gram += _shared(ga, xa, gb, xb)
    return gram.reshape(b1 * k, b2 * k)


def _shared(g1: Float[Array, "b1 k O P"], x1: Float[Array, "b1 P C"],
            g2: Float[Array, "b2 k O Q"], x2: Float[Array, "b2 Q C"]) -> Float[Array, "b1 k b2 k"]:
    """``Σ_{p,q} (g_iap · g_jbq)(x_ip · x_jq)`` for a weight shared over positions: two images
    of the first block at a time (``lax.map``) and at most ``WIDE`` output features at a time,
    so that the largest intermediate (``2·b₂·k·WIDE·P``) stays in cache and the last
    contraction is a matrix product over ``O·P``."""
    chunk = 2 if g1.shape[0] % 2 == 0 else 1

    def rows(args):
        gi, xi = args
        inputs = jnp.einsum("ipc,jqc->ijpq", xi, x2, precision=_HI)
        out = 0.0
        for o in range(0, gi.shape[2], WIDE):
            left = jnp.einsum("iaop,ijpq->ijaoq", gi[:, :, o:o + WIDE], inputs, precision=_HI)
            out = out + jnp.einsum("ijaoq,jboq->iajb", left, g2[:, :, o:o + WIDE],
                                   precision=_HI)
        return out

    split = (g1.reshape(-1, chunk, *g1.shape[1:]), x1.reshape(-1, chunk, *x1.shape[1:]))
    out = jax.lax.map(rows, split)
    return out.reshape(g1.shape[0], *out.shape[2:])


def _build(p: Plan) -> tuple[Callable, Callable]:
    """The jitted ``(factors, pair)`` programs of a plan."""

    @jax.jit
    def factors(consts, leaves, images):
        return jax.vmap(lambda x: _features(p, consts, leaves, x))(images)

    return factors, jax.jit(functools.partial(_pair, p))


#: Compiled programs by plan (the jaxpr's text carries every shape and dtype), most recent last.
_PROGRAMS: collections.OrderedDict[str, tuple[Callable, Callable]] = collections.OrderedDict()


def compiled(p: Plan, block: int) -> tuple[Callable, Callable]:
    """The jitted ``(factors, pair)`` programs of ``p`` for blocks of ``block`` images: built
    for the first plan of a structure and reused by every later one with the same jaxpr (the
    same model structure, shapes and dtype), so each compiles once per block size."""
    key = f"{p.jaxpr}|{p.taps}|{p.rest}|{block}"
    if key not in _PROGRAMS:
        _PROGRAMS[key] = _build(p)
        while len(_PROGRAMS) > 16:
            _PROGRAMS.popitem(last=False)
    _PROGRAMS.move_to_end(key)
    return _PROGRAMS[key]


def choose_block(p: Plan, n: int, memory_gb: float, flag: str = "memory_gb") -> int:
    """Images per block: the most (≤ n, ≤ ``MAX_BLOCK``) whose pair intermediates take at most
    a quarter of what ``memory_gb`` leaves after the Gram and the factors;
    ``MemoryBudgetExceeded`` naming ``flag`` when not even one image fits."""
    itemsize = p.dtype.itemsize
    left = memory_gb * 2**30 - (n * p.k) ** 2 * itemsize - p.feature_bytes(n)
    block = min(n, MAX_BLOCK)
    while block > 1 and p.block_bytes(block) > left / 4:
        block = max(1, block // 2)
    if p.block_bytes(block) > left:
        raise MemoryBudgetExceeded(
            f"an eNTK Gram on n = {n} images × k = {p.k} outputs needs "
            f"{((n * p.k) ** 2 * itemsize + p.feature_bytes(n) + p.block_bytes(1)) / 2**30:.1f}"
            f" GiB (the Gram, the layers' factors and one block), above the memory budget of "
            f"{memory_gb:g} GiB ({flag}); use fewer images or raise {flag}")
    return block


def structured_gram(params: PyTree, embed: Embed, images: Float[Array, "n ..."], k: int, *,
                    memory_gb: float, block: int | None = None, progress: str | None = None
                    ) -> np.ndarray:
    """The unscaled Gram ``J Jᵀ`` (n·k, n·k) of ``embed(params, images)``, row-major in the
    image, in the parameters' dtype, by structured derivatives. ``block``: images per block
    (default: from ``memory_gb``). Arguments are assumed checked (``ntk.entk_gram``)."""
    n = images.shape[0]
    dtype = images.dtype
    p, consts = plan(embed, params, images.shape[1:], dtype, k, n, memory_gb, block)
    block = p.block
    factors, pair = compiled(p, block)
    leaves = jax.tree.leaves(params)
    starts = list(range(0, n, block))
    padded = jnp.concatenate([images, jnp.repeat(images[-1:], len(starts) * block - n, 0)])
    bar = progress_bar(total=len(starts) * (len(starts) + 3) // 2, desc=progress,
               disable=progress is None, leave=False)
    blocks = []
    for s in starts:
        blocks.append(factors(consts, leaves, padded[s:s + block]))
        bar.update()
    out = np.empty((n * k, n * k), dtype)
    for a, sa in enumerate(starts):
        rows = slice(sa * k, min(sa + block, n) * k)
        for b in range(a, len(starts)):
            sb = starts[b]
            cols = slice(sb * k, min(sb + block, n) * k)
            values = np.asarray(pair(blocks[a], blocks[b]))
            if b == a:  # exactly symmetric (each half is the same sum)
                values = 0.5 * (values + values.T)
            out[rows, cols] = values[:rows.stop - rows.start, :cols.stop - cols.start]
            if b != a:
                out[cols, rows] = out[rows, cols].T
            bar.update()
    bar.close()
    return out
