"""Model zoo: ``build_model(cfg)`` returns a :class:`PlaitModel` (on the meta device by default).

Each model registers itself in its own file (``plait.registry.register_model``); importing it
here is what registers it. ``model.name`` is looked up in that table, never in a list here.
"""

from __future__ import annotations

import torch

from plait import components
from plait.config import Config
from plait.models import gpt, hf, mlp  # noqa: F401 - importing registers gpt, hf, seed_*
from plait.models.base import PlaitModel, name_seed, param_count
from plait.models.contract import check_contract
from plait.models.custom import build_custom_model
from plait.models.gpt import gpt_args
from plait.registry import MODELS, register_model

__all__ = [
    "PlaitModel",
    "build_model",
    "check_model",
    "gpt_args",
    "model_summary",
    "name_seed",
    "param_count",
    "register_model",
]


def check_model(cfg: Config) -> None:
    """Shape checks that need the model's size but no process group (the model's own), or the
    model contract of the Python API's own model object."""
    if components.active().model is not None:
        check_contract(build_custom_model(), cfg)
        return
    entry = MODELS.get(cfg.model.name)
    if entry.check is not None:
        entry.check(cfg)


def build_model(cfg: Config, device: str | torch.device = "meta") -> PlaitModel:
    """Build the configured model on ``device``; on meta it holds no memory until materialised."""
    check_model(cfg)
    custom = build_custom_model(device)
    if custom is not None:
        return custom
    with torch.device(device):
        return MODELS.get(cfg.model.name).build(cfg)


def model_summary(cfg: Config) -> dict:
    """Size facts for planning and logging, computed on meta (no memory)."""
    model = build_model(cfg)
    return {"params": param_count(model), "n_layers": len(model.layers)} | (model.plan_dims() or {})
