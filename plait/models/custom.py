"""The Python API's own model object (plait.components), built like a zoo model: a fresh copy
on the asked device, with its init templates captured before any wrapper touches it."""

from __future__ import annotations

import copy

import torch
from torch import nn

from plait import components
from plait.models.base import PlaitModel, capture_init_templates


def build_custom_model(device: str | torch.device = "meta") -> nn.Module | None:
    """A fresh instance of the user's model on ``device`` (meta: shapes only), or None when no
    model object is active. An instance given as an object is deep-copied so the pipeline
    split (which deletes blocks) and the contract check never touch the caller's module."""
    spec = components.active().model
    if spec is None:
        return None
    if isinstance(spec, nn.Module):
        model = copy.deepcopy(spec)
    else:
        with torch.device(device):
            model = spec()
        if not isinstance(model, nn.Module):
            raise TypeError(f"model factory returned {type(model).__name__}, not an nn.Module")
    model = model.to(device) if torch.device(device).type == "meta" else model
    if isinstance(model, PlaitModel):
        capture_init_templates(model)
    return model
