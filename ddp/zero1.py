"""ZeRO-1 on the torch engine: DDP for gradients + ``ZeroRedundancyOptimizer`` for state.

Why ZeroRedundancyOptimizer and not an FSDP2 configuration: FSDP2 always reduce-scatters
gradients, so every ``fully_shard`` setting shards gradients too (ZeRO-2 or more). ZeRO-1 means
full, all-reduced gradients on every rank with only the optimizer state partitioned: exactly
DDP followed by ZeroRedundancyOptimizer, which steps the parameters this rank owns and then
broadcasts them. It partitions whole parameters greedily by size, so the per-rank optimizer
state is 8Ψ/N only up to the granularity of one parameter; the sum over ranks is exact.
"""

from __future__ import annotations

import inspect

import torch
from torch.distributed.optim import ZeroRedundancyOptimizer

from plait.ddp.engine import Engine
from plait.optim import build_optimizer, param_groups


def optimizer_recipe(model: torch.nn.Module, optim_cfg) -> tuple[type, dict]:
    """The optimizer class and keyword arguments plait would use (built once, state-free, so
    sharding wrappers construct the very same optimizer)."""
    ref = build_optimizer(model, optim_cfg)
    accepted = inspect.signature(type(ref).__init__).parameters
    kw = {k: v for k, v in ref.defaults.items() if k in accepted}  # AdamW fixes some itself
    return type(ref), kw


class Zero1Engine(Engine):
    def __init__(self, *args, dp_group, **kwargs):
        self.dp_group = dp_group
        super().__init__(*args, **kwargs)

    def make_optimizer(self) -> torch.optim.Optimizer:
        cls, kw = optimizer_recipe(self.model, self.cfg.optim)
        kw.pop("weight_decay", None)  # per group
        groups = param_groups(self.model, self.cfg.optim.weight_decay)
        return ZeroRedundancyOptimizer(
            groups, optimizer_class=cls, process_group=self.dp_group, **kw
        )
