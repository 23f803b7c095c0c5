"""Data-parallel engines behind one switch (``parallel.dp_engine`` x ``parallel.zero_stage``).

| engine    | 0   | 1                        | 2                           | 3                        |
|-----------|-----|--------------------------|-----------------------------|--------------------------|
| torch     | DDP | DDP + ZeroRedundancyOpt. | FSDP2, no reshard (+HSDP)   | FSDP2, reshard (+HSDP)   |
| deepspeed | ZeRO-0 | ZeRO-1                | ZeRO-2                      | ZeRO-3                   |
| fairscale | -   | DDP + OSS                | ShardedDDP + OSS            | -                        |

:func:`apply_sharded` runs at wrap step 5 (meta model), :func:`apply_replicated` after
materialisation, :func:`build_engine` last: it makes the optimizer and wraps what needs both
(DeepSpeed, fairscale), and returns the :class:`~plait.ddp.engine.Engine` the trainer drives.
"""

from __future__ import annotations

import torch
from torch import nn

from plait.config import Config
from plait.ddp.checks import check_dp
from plait.ddp.ddp import apply_ddp, no_sync
from plait.ddp.engine import Engine
from plait.mesh import ParallelDims

__all__ = [
    "Engine",
    "apply_ddp",
    "apply_replicated",
    "apply_sharded",
    "build_engine",
    "check_dp",
    "no_sync",
]


def uses_fsdp(cfg: Config, dims: ParallelDims) -> bool:
    return cfg.parallel.dp_engine == "torch" and cfg.parallel.zero_stage >= 2 and dims.dp > 1


def fsdp_mesh(meshes, dims: ParallelDims):
    """1-D flattened dp mesh for ZeRO, the 2-D (dp_replicate, dp_shard) slice for HSDP."""
    if dims.dp_replicate > 1:
        return meshes.root["dp_replicate", "dp_shard"]
    return meshes.dp


def apply_sharded(model: nn.Module, cfg: Config, dims: ParallelDims, meshes, device) -> None:
    """Step 5 of the wrap order: FSDP2 on the meta model (torch engine, zero_stage 2/3)."""
    if not uses_fsdp(cfg, dims):
        return
    from plait.ddp.fsdp import apply_fsdp

    apply_fsdp(
        model,
        mesh=fsdp_mesh(meshes, dims),
        reshard_after_forward=cfg.parallel.zero_stage == 3,
        dtype=cfg.train.dtype,
        cpu_offload=cfg.parallel.cpu_offload,
        device=device,
    )


def apply_replicated(
    model: nn.Module, cfg: Config, dims: ParallelDims, meshes, device
) -> nn.Module:
    """Step 6: torch DDP around the materialised model (torch engine, zero_stage 0/1). DeepSpeed
    and fairscale wrap in :func:`build_engine`, since they need the optimizer too."""
    if dims.dp == 1 or cfg.parallel.dp_engine != "torch" or cfg.parallel.zero_stage >= 2:
        return model
    return apply_ddp(model, dp_mesh=meshes.dp, device=device)


def build_engine(
    model: nn.Module, cfg: Config, dims: ParallelDims, meshes, device: torch.device
) -> Engine:
    from plait.parallelize import unwrap

    inner = unwrap(model)
    p = cfg.parallel
    if dims.dp == 1:
        return Engine(model, inner, cfg, 1)
    group = meshes.dp.get_group()
    if p.dp_engine == "deepspeed":
        from plait.ddp.deepspeed_engine import DeepSpeedEngine

        return DeepSpeedEngine(model, inner, cfg, dims.dp, device=device)
    if p.dp_engine == "fairscale":
        from plait.ddp.fairscale_engine import FairscaleEngine

        return FairscaleEngine(
            model, inner, cfg, dims.dp, dp_group=group, dp_mesh=meshes.dp, device=device
        )
    if p.zero_stage == 1:
        from plait.ddp.zero1 import Zero1Engine

        return Zero1Engine(model, inner, cfg, dims.dp, dp_group=group)
    if p.zero_stage >= 2:
        from plait.ddp.fsdp import FSDPEngine

        return FSDPEngine(model, inner, cfg, dims.dp)
    return Engine(model, inner, cfg, dims.dp)
