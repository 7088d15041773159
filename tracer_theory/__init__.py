"""tracer_theory: verify the linearized theory of TRACER with closed forms and exact dynamics.

Public names are re-exported here; implementations live in one module per concept.
"""

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
