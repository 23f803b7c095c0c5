"""Objects in place of config names, for the Python API (:func:`plait.train` with ``model=``,
``data=``, ``optimizer=``). While :func:`use` is active, ``build_model``, ``build_data`` and
``build_optimizer`` return these instead of what ``model.*``, ``data.*`` and ``optim.name``
name; every other part of plait (layout checks, pipeline split, checkpoints) goes through those
three functions, so a user's model gets exactly the zoo models' treatment."""

from __future__ import annotations

import contextlib
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
