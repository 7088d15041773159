"""tracer_theory: verify the linearized theory of TRACER with closed forms and exact dynamics.

Public names are re-exported here; implementations live in one module per concept. They are
imported on first use (PEP 562), so that ``import tracer_theory`` and ``tracer-theory --help``
load neither JAX nor matplotlib.
"""

from __future__ import annotations

import importlib
from types import ModuleType
from typing import Any

__version__ = "0.1.0"

#: Each public name by the module that defines it.
_MODULES: dict[str, tuple[str, ...]] = {
    ".dynamics.design": (
        "BetaFamily", "Design", "DirectionalFamily", "EMAFamily", "Family", "GridFamily",
        "ScheduledEMAFamily", "StaticFamily", "design"),
    ".dynamics.diagnostics": (
        "CollapseDiagnostics", "collapse_diagnostics"),
    ".dynamics.schedules": (
        "BetaKernel", "EMASchedule", "GridKernel", "Kernel", "KernelSchedule", "Schedule",
        "StaticSchedule", "arcsine_kernel", "beta_kernel", "ema_teacher", "kernel_teacher",
        "kernel_weights", "linear_ramp_kernel", "static_teacher", "uniform_kernel",
        "wma_teacher"),
    ".dynamics.simulate": (
        "simulate",),
    ".dynamics.spectral": (
        "DynamicsResult", "Summary", "TeacherSD", "fixed_point", "spectral_dynamics",
        "stability_bound", "two_by_two_rate"),
    ".dynamics.sweep": (
        "sweep",),
    ".dynamics.teacher": (
        "Teacher", "TeacherState", "mix", "teacher"),
    ".linear.closed_forms": (
        "filter_factors", "solve"),
    ".linear.decomposition": (
        "Decomposition", "decompose"),
    ".linear.gd": (
        "gradient_descent", "gradient_descent_until", "objective"),
    ".linear.pareto": (
        "Frontier", "ParetoCurve", "Tradeoff", "frontier", "frontier_ratio",
        "oracle_forgetting", "oracle_frontier", "pareto", "tradeoff"),
    ".linear.problem": (
        "LinearProblem", "contrast_matrix", "contrastive_target", "fit_loss", "forgetting",
        "mmcl_loss_lstsq", "mmcl_loss_trace", "task_loss"),
    ".linear.random": (
        "random_problem",),
    ".linear.spectrum": (
        "Spectrum", "spectrum"),
    ".linear.strategies": (
        "L2SP", "DirectFT", "DirectionalSD", "ReplaySD", "StaticSD", "StoppedGD",
        "Strategy", "WeightDecay"),
}
_WHERE = {name: module for module, names in _MODULES.items() for name in names}
__all__ = sorted(_WHERE)


def __getattr__(name: str) -> Any:
    if name not in _WHERE:
        raise AttributeError(f"module 'tracer_theory' has no attribute {name!r}")
    value = getattr(importlib.import_module(_WHERE[name], __name__), name)
    globals()[name] = value  # found directly from now on
    return value


def __dir__() -> list[str]:
    """The public names (``__all__``, loaded or not), the public submodules imported so far and
    the dunders; not this module's own imports (``annotations``, ``importlib``, ``Any``)."""
    loaded = {name for name, value in globals().items()
              if name.startswith("__") or (isinstance(value, ModuleType) and name[0] != "_"
                                           and value.__name__.startswith(f"{__name__}."))}
    return sorted({*loaded, *__all__})

