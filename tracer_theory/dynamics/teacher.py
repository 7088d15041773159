"""The teacher as an ``(init, update)`` pair over any pytree of parameters (THEORY §4).

``T_0 = W_0``; update ``t`` mixes ``T_t = (1 − ω_t) T_{t−1} + ω_t W_t`` with ``ω_t`` from a
``Schedule``. Works on any pytree (a matrix, a dict, an ``equinox.nn.MLP``) and under ``jit``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple

import equinox as eqx
import jax
import jax.numpy as jnp
from jaxtyping import Array, ArrayLike, Float, Int, PyTree

from .._validation import as_fraction
from .schedules import Schedule


class TeacherState(NamedTuple):
    """``step``: updates applied so far (int32 scalar); ``params``: the teacher ``T_step``, a
    pytree shaped like the student's (THEORY §4.1)."""

    step: Int[Array, ""]
    params: PyTree


class Teacher(NamedTuple):
    """``init(student) -> TeacherState`` and ``update(student, state) -> TeacherState``: the
    optax-style teacher of THEORY §4.1."""

    init: Callable[[PyTree], TeacherState]
    update: Callable[[PyTree, TeacherState], TeacherState]


def mix(teacher_params: PyTree, student_params: PyTree,
        omega: Float[ArrayLike, ""]) -> PyTree:
    """``(1 − ω)·T + ω·W`` on every floating array leaf; returns a pytree shaped like ``T``.

    ``ω`` is a real scalar in ``[0, 1]`` (anything else, NaN included, is refused: a
    ``ValueError``, or a run-time error when traced). It is cast to each leaf's dtype (a float32
    leaf stays float32). Other leaves (functions, Python scalars, integer or boolean arrays)
    are the teacher's, untouched. Both trees must have the same structure. The teacher update
    of THEORY §4.1.
    """
    return _mix(teacher_params, student_params, as_fraction("omega", omega))


def _mix(teacher_params: PyTree, student_params: PyTree, omega: Array) -> PyTree:
    """``mix`` without the check of ``ω``."""
    t_float, t_other = eqx.partition(teacher_params, eqx.is_inexact_array)
    s_float = eqx.filter(student_params, eqx.is_inexact_array)

    def leaf(t, s):
        w = omega.astype(t.dtype)
        return (1 - w) * t + w * s.astype(t.dtype)

    return eqx.combine(jax.tree.map(leaf, t_float, s_float), t_other)


def teacher(schedule: Schedule | Callable[[Array], Array]) -> Teacher:
    """The teacher driven by ``schedule`` (any ``step -> ω`` callable), optax-style; returns a
    ``Teacher`` (THEORY §4.1).

    ``init(W_0)`` gives ``TeacherState(step=0, params=W_0)``; ``update(W_t, state)`` applies
    ``ω = schedule(state.step + 1)`` with ``mix`` and increments the step. A ``Schedule`` with
    an ``at`` (every built-in one) is evaluated unchecked: its values were validated when it
    was built and the counter starts at 1, so a jitted training step carries no run-time check.
    Any other callable's ``ω`` is checked at every update.
    """
    if not callable(schedule):
        raise TypeError(f"schedule must be a callable step -> ω, got {schedule!r}")
    trusted = isinstance(schedule, Schedule) and type(schedule).at is not Schedule.at

    def init(student_params: PyTree) -> TeacherState:
        return TeacherState(step=jnp.zeros((), jnp.int32), params=student_params)

    def update(student_params: PyTree, state: TeacherState) -> TeacherState:
        step = state.step + 1
        if trusted:
            params = _mix(state.params, student_params, schedule.at(step))
        else:
            params = mix(state.params, student_params, schedule(step))
        return TeacherState(step=step, params=params)

    return Teacher(init=init, update=update)
