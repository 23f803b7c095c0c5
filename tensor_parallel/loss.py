"""The loss on vocabulary-sharded logits, as the trainer and the pipeline call it on every step.
torch.distributed.tensor is loaded only when a model really is tensor parallel, so data-parallel
runs start without it."""

from __future__ import annotations

import contextlib

import torch
from torch import nn

from plait.parallel_attrs import LOSS_PARALLEL_ATTR


def loss_context(model: nn.Module):
    """Enter around forward, loss and backward: ``loss_parallel()`` when the model's logits are
    vocabulary-sharded, so cross-entropy works on the shards (a max, a sum-exp and the target
    logit are all-reduced; the (B, T, V) logits are never gathered), else a null context."""
    if getattr(model, LOSS_PARALLEL_ATTR, False):
        # deferred: torch.distributed.tensor only where tensor parallel is in use (start-up)
        from torch.distributed.tensor.parallel import loss_parallel

        return loss_parallel()
    return contextlib.nullcontext()


def plain(t: torch.Tensor) -> torch.Tensor:
    """A loss computed under loss_parallel is a replicated DTensor; the trainer mixes it with
    plain tensors (scaling, sums), so take its (identical) local value, keeping autograd."""
    full = getattr(t, "full_tensor", None)  # DTensor's; a plain tensor has none
    return full() if full is not None else t
