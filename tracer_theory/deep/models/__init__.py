"""The models: the toy CNN CLIP, the transformer CLIP, their shared dual-encoder base, the
factory that builds either from a name, and real CLIP checkpoints in and out (``load_clip``,
``save_clip``)."""

from __future__ import annotations

from jaxtyping import PRNGKeyArray

from .base import DTYPE as DTYPE, DualEncoder as DualEncoder, normalize as normalize
from .clip import CLIP as CLIP, PRESETS as PRESETS, CLIPPreset as CLIPPreset, preset as preset
from .toy import ToyCLIP as ToyCLIP
from .weights import (
    load_clip as load_clip,
    load_preprocessing as load_preprocessing,
    save_clip as save_clip,
)


def make_model(model: str | CLIPPreset = "toy", *, key: PRNGKeyArray, width: int = 128,
               dim: int = 64) -> DualEncoder:
    """A freshly initialized model: ``"toy"`` (``ToyCLIP`` of ``width``/``dim``) or a CLIP
    preset (a name of ``PRESETS`` or a ``CLIPPreset``, whose sizes come from the preset)."""
    if model == "toy":
        return ToyCLIP(width=width, dim=dim, key=key)
    return CLIP(model, key=key)
