"""tracer_theory: verify the linearized theory of TRACER with closed forms and exact dynamics.

Public names are re-exported here; implementations live in one module per concept.
"""

from .dynamics.diagnostics import (
    CollapseDiagnostics as CollapseDiagnostics,
    collapse_diagnostics as collapse_diagnostics,
)
from .dynamics.schedules import (
    BetaKernel as BetaKernel,
    EMASchedule as EMASchedule,
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
from .linear.problem import (
    LinearProblem as LinearProblem,
    contrast_matrix as contrast_matrix,
    contrastive_target as contrastive_target,
    fit_loss as fit_loss,
    mmcl_loss_lstsq as mmcl_loss_lstsq,
    mmcl_loss_trace as mmcl_loss_trace,
)
from .linear.random import random_problem as random_problem
from .linear.spectrum import Spectrum as Spectrum, spectrum as spectrum
from .linear.strategies import (
    L2SP as L2SP,
    DirectFT as DirectFT,
    StaticSD as StaticSD,
    StoppedGD as StoppedGD,
    Strategy as Strategy,
    WeightDecay as WeightDecay,
)

__version__ = "0.1.0"
