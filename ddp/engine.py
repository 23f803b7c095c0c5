"""The small surface the trainer drives, whatever the data-parallel engine: the loop calls
these methods and never branches on the engine.

:class:`Engine` is the torch engine (plain model, DDP, ZeRO-1 or FSDP2): autograd backward, torch
clipping, the optimizer's own step. DeepSpeed and fairscale subclass it in their own modules.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from plait.config import Config
from plait.ddp import memory
from plait.ddp.ddp import no_sync
from plait.grad_norm import clip_grad_norm
from plait.models.base import PlaitModel, canonical_name
from plait.optim import build_optimizer


class Engine:
    """Model + optimizer of one rank and how to run backward and step on them."""

    #: the engine casts to bf16/fp16 itself (DeepSpeed): the trainer must not autocast
    owns_precision = False

    def __init__(self, model: nn.Module, inner: PlaitModel, cfg: Config, dp_size: int):
        self.model, self.inner, self.cfg, self.dp_size = model, inner, cfg, dp_size
        self.optimizer = self.make_optimizer()
        self._unsharded = 0

    def make_optimizer(self) -> torch.optim.Optimizer:
        return build_optimizer(self.model, self.cfg.optim)

    @property
    def lr_optimizer(self) -> torch.optim.Optimizer:
        """The optimizer whose param_groups the lr schedule edits."""
        return self.optimizer

    def sync(self, last: bool):
        """Context for one micro-batch's forward+backward: gradient all-reduce only on the last."""
        return no_sync(self.model, sync=last)

    def backward(self, loss: torch.Tensor, last: bool) -> None:
        loss.backward()

    def clip_grad_norm(self, max_norm: float) -> float | None:
        """Clip to ``max_norm`` (inf: measure only) and return the global norm; None when the
        engine clips inside :meth:`step` (then :meth:`last_grad_norm` gives it)."""
        return clip_grad_norm(self.model.parameters(), max_norm)  # exact whatever the sharding

    def step(self) -> None:
        self.optimizer.step()

    def last_grad_norm(self) -> float:
        return math.nan

    def zero_grad(self) -> None:
        self.optimizer.zero_grad(set_to_none=True)

    def held_bytes(self) -> dict[str, int]:
        """Bytes held by this rank now (call after the step, before zero_grad)."""
        out = memory.held_bytes(self.model, self.optimizer)
        out["unsharded"] = self._unsharded
        return out

    def full_state(self) -> dict[str, torch.Tensor]:
        """Full (unsharded) weights on CPU under single-process names."""
        out = {}
        for k, v in self.inner.state_dict().items():
            if hasattr(v, "full_tensor"):
                v = v.full_tensor()  # FSDP2 / TP shards: all-gather (collective on all ranks)
            out[canonical_name(k)] = v.detach().cpu().clone()
        return out
