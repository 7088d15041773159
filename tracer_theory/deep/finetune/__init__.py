"""Finetuning and pretraining: strategies as values, training configs, the jitted step, the
loop, pretraining and checkpoints."""

from .config import FinetuneConfig as FinetuneConfig, PretrainConfig as PretrainConfig
from .finetunee import Batch as Batch, Finetunee as Finetunee, class_logits as class_logits
from .loop import finetune as finetune
from .pretraining import pretrain as pretrain
from .strategies import (
    EMA as EMA,
    L2SP as L2SP,
    LPFT as LPFT,
    REGISTRY as REGISTRY,
    VARIANTS as VARIANTS,
    WMA as WMA,
    DataHybrid as DataHybrid,
    Direct as Direct,
    GradientDescent as GradientDescent,
    KLDistill as KLDistill,
    LossInputs as LossInputs,
    LowLR as LowLR,
    MultiView as MultiView,
    Phase as Phase,
    ProjectionOnly as ProjectionOnly,
    Restricted as Restricted,
    SelfDistill as SelfDistill,
    Static as Static,
    Strategy as Strategy,
    WeightDecay as WeightDecay,
    entry as entry,
    registered as registered,
)
