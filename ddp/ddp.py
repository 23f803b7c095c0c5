"""Plain data parallel: torch DDP over the mesh's flattened 'dp' axis.

DDP averages gradients across ranks with bucketed all-reduce overlapped with backward; the
trainer scales each rank's summed loss by dp / global_count so that average equals the
single-process gradient. During gradient accumulation, ``no_sync`` skips the all-reduce on all
but the last micro-batch (nanoGPT's require_backward_grad_sync trick, done with the public API).
``gradient_as_bucket_view=True`` makes each ``.grad`` a view into its all-reduce bucket, so the
buckets are the gradients instead of a second copy of them (16Ψ instead of 20Ψ for fp32 Adam).
"""

from __future__ import annotations

import contextlib

import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from plait.parallel_attrs import EXPERT_SHARD_ATTR


def apply_ddp(
    model: nn.Module, *, dp_mesh, device: torch.device, bucket_cap_mb: int = 25
) -> nn.Module:
    """Wrap a materialised model; a no-op when the dp axis has one rank."""
    if dp_mesh is None or dp_mesh.size() == 1:
        return model
    # expert weights split over ep/tp ranks: their gradients reduce over other groups
    # (plait.models.moe.MoE.finish_step), so DDP neither broadcasts nor averages them
    skip = [n for n, p in model.named_parameters() if hasattr(p, EXPERT_SHARD_ATTR)]
    if skip:
        DistributedDataParallel._set_params_and_buffers_to_ignore_for_model(model, skip)
    return DistributedDataParallel(
        model,
        process_group=dp_mesh.get_group(),
        device_ids=[device.index] if device.type == "cuda" else None,
        bucket_cap_mb=bucket_cap_mb,
        gradient_as_bucket_view=True,
    )


def no_sync(model: nn.Module, sync: bool):
    """Context that skips gradient all-reduce when ``sync`` is False (accumulation micro-batches)."""
    if not sync and hasattr(model, "no_sync"):  # torch DDP, fairscale ShardedDDP
        return model.no_sync()
    return contextlib.nullcontext()
