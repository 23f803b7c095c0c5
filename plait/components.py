"""Objects in place of config names, for the Python API (:func:`plait.train` with ``model=``,
``data=``, ``optimizer=``). While :func:`use` is active, ``build_model``, ``build_data`` and
``build_optimizer`` return these instead of what ``model.*``, ``data.*`` and ``optim.name``
name; every other part of plait (layout checks, pipeline split, checkpoints) goes through those
three functions, so a user's model gets exactly the zoo models' treatment."""

from __future__ import annotations

import contextlib
import copy
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn


@dataclass
class Components:
    #: an ``nn.Module`` (copied for each build) or a zero-argument factory returning one
    model: nn.Module | Callable[[], nn.Module] | None = None
    #: a :class:`plait.data.StepData` (batches addressed by split, step and slice)
    data: Any = None
    #: ``params -> torch.optim.Optimizer`` (``params``: plait's weight-decay parameter groups)
    optimizer: Callable[[Any], torch.optim.Optimizer] | None = None


_active: Components | None = None


@contextlib.contextmanager
def use(components: Components) -> Iterator[None]:
    global _active
    before, _active = _active, components
    try:
        yield
    finally:
        _active = before


def active() -> Components:
    return _active or Components()


def build_custom_model(device: str | torch.device = "meta") -> nn.Module | None:
    """A fresh instance of the user's model on ``device`` (meta: shapes only), or None when no
    model object is active. An instance given as an object is deep-copied so the pipeline
    split (which deletes blocks) and the contract check never touch the caller's module."""
    spec = active().model
    if spec is None:
        return None
    if isinstance(spec, nn.Module):
        model = copy.deepcopy(spec)
    else:
        with torch.device(device):
            model = spec()
        if not isinstance(model, nn.Module):
            raise TypeError(f"model factory returned {type(model).__name__}, not an nn.Module")
    from plait.models.base import PlaitModel, capture_init_templates

    model = model.to(device) if torch.device(device).type == "meta" else model
    if isinstance(model, PlaitModel):
        capture_init_templates(model)
    return model
