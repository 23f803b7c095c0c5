"""Checkpoint state of optimizers that partition whole parameters over dp ranks: torch's
``ZeroRedundancyOptimizer`` (ZeRO-1) and fairscale's ``OSS``. Each rank steps a local optimizer
(``.optim``) over the parameters it owns.

Written by hand because ``torch.distributed.checkpoint.state_dict`` knows neither wrapper, and
their own ``consolidate_state_dict`` gathers every rank's state onto one rank, keyed by position.
Here each rank contributes the state of the parameters it owns under single-process parameter
names, in the layout ``get_optimizer_state_dict`` uses; DCP writes each entry once. So a ZeRO-1
checkpoint loads under FSDP, TP or one process, and any checkpoint loads under ZeRO-1 (each rank
reads only its own parameters' state).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn
from torch.distributed.checkpoint.state_dict import _init_optim_state
from torch.distributed.optim import ZeroRedundancyOptimizer

from plait.models.base import canonical_name


def is_partitioned(optimizer: torch.optim.Optimizer) -> bool:
    if isinstance(optimizer, ZeroRedundancyOptimizer) or _flat(optimizer):
        return True
    return type(optimizer).__module__.startswith("fairscale") and hasattr(optimizer, "optim")


def _flat(optimizer):
    """The plait.ddp.flat_zero.FlatZero of a flat ZeRO optimizer (state per flat piece: whole
    per-parameter tensors are gathered for the checkpoint), else None."""
    return getattr(optimizer, "plait_flat_zero", None)


def _names(model: nn.Module) -> dict[int, str]:
    return {id(p): canonical_name(n) for n, p in model.named_parameters()}


def _owned(optimizer) -> list[nn.Parameter]:
    return [p for g in optimizer.optim.param_groups for p in g["params"]]


def owned_state(model: nn.Module, optimizer) -> dict[str, Any]:
    """This rank's share of the optimizer state, in ``get_optimizer_state_dict``'s layout; the
    param groups (hyper-parameters and names) are the same on every rank."""
    if flat := _flat(optimizer):
        names = _names(model)
        return {
            **flat.full_state(optimizer, names),
            "param_groups": _groups(names, flat.groups, optimizer),
        }
    names, local = _names(model), optimizer.optim
    state = {names[id(p)]: dict(local.state[p]) for p in _owned(optimizer) if p in local.state}
    return {"state": state, "param_groups": _groups(names, optimizer.param_groups, optimizer)}


def _groups(names: dict[int, str], model_groups, optimizer) -> list[dict]:
    """The optimizer's hyper-parameters per group with the group's parameter names."""
    return [
        {
            **{k: v for k, v in g.items() if k != "params"},
            "params": [names[id(p)] for p in m["params"]],
        }
        for g, m in zip(optimizer.param_groups, model_groups)
    ]


def load_template(model: nn.Module, optimizer) -> dict[str, Any]:
    """What this rank reads back: the state of the parameters it owns (made now if the run has
    not stepped yet, so DCP has tensors to load into)."""
    if flat := _flat(optimizer):
        return flat.template(optimizer, _names(model))
    local = optimizer.optim
    if not local.state:
        _init_optim_state(local)  # torch's own: one step with zero gradients at lr 0
    names = _names(model)
    return {"state": {names[id(p)]: dict(local.state[p]) for p in _owned(optimizer)}}


def set_owned_state(model: nn.Module, optimizer, loaded: dict[str, Any]) -> None:
    if flat := _flat(optimizer):
        return flat.set_state(optimizer, _names(model), loaded)
    names, local = _names(model), optimizer.optim
    for p in _owned(optimizer):
        local.state[p].update(loaded["state"][names[id(p)]])
