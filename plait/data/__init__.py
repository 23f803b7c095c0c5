"""Offline datasets addressed by (split, step, slice): see :mod:`plait.data.base`.

Each data source registers itself in its own file (``plait.registry.register_data``);
importing it here is what registers it.
"""

from __future__ import annotations

from plait import components
from plait.config import Config
from plait.data import images, synthetic, text, tokens  # noqa: F401 - importing registers them
from plait.data.base import Batch, StepData
from plait.data.images import read_idx
from plait.data.text import read_corpus
from plait.registry import DATA, register_data

__all__ = ["Batch", "StepData", "build_data", "read_idx", "read_corpus", "register_data"]


def build_data(cfg: Config, model) -> StepData:
    """The configured data source, shaped to ``model`` where it adapts (synthetic data), or
    the Python API's own data source object (plait.train(..., data=...))."""
    if components.active().data is not None:
        return components.active().data
    return DATA.get(cfg.data.name).build(cfg, model)
