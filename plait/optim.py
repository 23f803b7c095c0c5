"""Optimizer and learning-rate schedule from config."""

from __future__ import annotations

import math

import torch
from torch import nn

from plait import components
from plait.config import OptimConfig


def param_groups(model: nn.Module, weight_decay: float) -> list[dict]:
    """Decay matrices only: biases and norm gains are not regularised (GPT-2/Llama practice)."""
    decay, no_decay = [], []
    for p in model.parameters():
        if p.requires_grad:
            (decay if p.dim() >= 2 else no_decay).append(p)
    groups = [{"params": decay, "weight_decay": weight_decay}]
    if no_decay:
        groups.append({"params": no_decay, "weight_decay": 0.0})
    return groups


def build_optimizer(model: nn.Module, o: OptimConfig) -> torch.optim.Optimizer:
    groups = param_groups(model, o.weight_decay)
    if components.active().optimizer is not None:  # the Python API's optimizer factory
        opt = components.active().optimizer(groups)
        # its own lr is the base the optim.* schedule scales (build_scheduler)
        opt.plait_base_lrs = [g["lr"] for g in opt.param_groups]
        return opt
    if o.name == "sgd":
        return torch.optim.SGD(groups, lr=o.lr, momentum=o.momentum)
    cls = torch.optim.Adam if o.name == "adam" else torch.optim.AdamW
    # foreach=False: the per-parameter loop is the same reduction order whatever the sharding
    return cls(groups, lr=o.lr, betas=tuple(o.betas), eps=o.eps, foreach=False)


def lr_factor(step: int, o: OptimConfig, total_steps: int) -> float:
    """Multiplier of optim.lr for the update after ``step`` completed steps. A warmup longer
    than the run is clamped to the run (the banner warns)."""
    warmup = min(o.warmup_steps, total_steps)
    if step < warmup:
        return (step + 1) / warmup
    if o.schedule == "constant" or total_steps <= warmup:
        return 1.0
    progress = min(1.0, (step - warmup) / (total_steps - warmup))
    shape = 0.5 * (1 + math.cos(math.pi * progress)) if o.schedule == "cosine" else 1 - progress
    return o.min_lr_ratio + (1 - o.min_lr_ratio) * shape


def build_scheduler(
    opt: torch.optim.Optimizer, o: OptimConfig, total_steps: int, start: int = 0
) -> torch.optim.lr_scheduler.LambdaLR:
    """The schedule positioned for step ``start`` (0: a fresh run). The lr is a pure function of
    (config, step), so a resumed run rebuilds it from the config it runs under rather than
    restoring saved state: extending ``train.steps`` or changing warmup, decay or lr takes effect
    from the first resumed step."""
    bases = getattr(opt, "plait_base_lrs", None) or [o.lr] * len(opt.param_groups)
    for group, base in zip(opt.param_groups, bases):
        group["initial_lr"] = base  # base lr; LambdaLR reads it when it does not start at -1
    return torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: lr_factor(s, o, total_steps), last_epoch=start - 1
    )
