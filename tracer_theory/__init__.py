"""tracer_theory: verify the linearized theory of TRACER with closed forms and exact dynamics.

Public names are re-exported here; implementations live in one module per concept.
"""

from .dynamics.design import (
    BetaFamily as BetaFamily,
    Design as Design,
    DirectionalFamily as DirectionalFamily,
    EMAFamily as EMAFamily,
    Family as Family,
    GridFamily as GridFamily,
    ScheduledEMAFamily as ScheduledEMAFamily,
    StaticFamily as StaticFamily,
    design as design,
)
from .dynamics.diagnostics import (
    CollapseDiagnostics as CollapseDiagnostics,
    collapse_diagnostics as collapse_diagnostics,
)
from .dynamics.schedules import (
    BetaKernel as BetaKernel,
    EMASchedule as EMASchedule,
    GridKernel as GridKernel,
    Kernel as Kernel,
    KernelSchedule as KernelSchedule,
    Schedule as Schedule,
    StaticSchedule as StaticSchedule,
    arcsine_kernel as arcsine_kernel,
    beta_kernel as beta_kernel,
    ema_teacher as ema_teacher,
    kernel_teacher as kernel_teacher,
    kernel_weights as kernel_weights,
    linear_ramp_kernel as linear_ramp_kernel,
    static_teacher as static_teacher,
    uniform_kernel as uniform_kernel,
    wma_teacher as wma_teacher,
)
from .dynamics.simulate import simulate as simulate
from .dynamics.spectral import (
    DynamicsResult as DynamicsResult,
    Summary as Summary,
    TeacherSD as TeacherSD,
    fixed_point as fixed_point,
    spectral_dynamics as spectral_dynamics,
    stability_bound as stability_bound,
    two_by_two_rate as two_by_two_rate,
)
from .dynamics.sweep import sweep as sweep
from .dynamics.teacher import (
    Teacher as Teacher,
    TeacherState as TeacherState,
    mix as mix,
    teacher as teacher,
)
from .linear.closed_forms import filter_factors as filter_factors, solve as solve
from .linear.decomposition import Decomposition as Decomposition, decompose as decompose
from .linear.gd import (
    gradient_descent as gradient_descent,
    gradient_descent_until as gradient_descent_until,
    objective as objective,
)
from .linear.pareto import (
    Frontier as Frontier,
    ParetoCurve as ParetoCurve,
    Tradeoff as Tradeoff,
    frontier as frontier,
    frontier_ratio as frontier_ratio,
    oracle_forgetting as oracle_forgetting,
    oracle_frontier as oracle_frontier,
    pareto as pareto,
    tradeoff as tradeoff,
)
from .linear.problem import (
    LinearProblem as LinearProblem,
    contrast_matrix as contrast_matrix,
    contrastive_target as contrastive_target,
    fit_loss as fit_loss,
    forgetting as forgetting,
    mmcl_loss_lstsq as mmcl_loss_lstsq,
    mmcl_loss_trace as mmcl_loss_trace,
    task_loss as task_loss,
)
from .linear.random import random_problem as random_problem
from .linear.spectrum import Spectrum as Spectrum, spectrum as spectrum
from .linear.strategies import (
    L2SP as L2SP,
    DirectFT as DirectFT,
    DirectionalSD as DirectionalSD,
    ReplaySD as ReplaySD,
    StaticSD as StaticSD,
    StoppedGD as StoppedGD,
    Strategy as Strategy,
    WeightDecay as WeightDecay,
)

__version__ = "0.1.0"
