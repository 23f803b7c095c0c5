"""Data-parallel engines behind one switch (``parallel.dp_engine`` x ``parallel.zero_stage``);
what each cell wraps is the table :data:`plait.rules.DP_ENGINES`, and its option checks are in
:func:`plait.preflight.check_dp`.

:func:`apply_sharded` runs at wrap step 5 of plait.parallelize (meta model),
:func:`apply_replicated` at step 7 after materialisation, :func:`build_engine` last: it makes the
optimizer and wraps what needs both (DeepSpeed, fairscale), and returns the
:class:`~plait.ddp.engine.Engine` the trainer drives.
"""

from __future__ import annotations

import torch
from torch import nn

from plait import components, rules
from plait.config import Config
from plait.ddp.ddp import apply_ddp, no_sync
from plait.ddp.engine import Engine
from plait.errors import ConfigError
from plait.mesh import ParallelDims
from plait.wrapped import unwrap

__all__ = [
    "Engine",
    "apply_ddp",
    "apply_replicated",
    "apply_sharded",
    "build_engine",
    "no_sync",
    "uses_flat_zero",
    "uses_fsdp",
]


def uses_flat_zero(cfg: Config, dims: ParallelDims) -> bool:
    """ZeRO-1/2 on flat buckets (``parallel.zero_flat``, plait.ddp.flat_zero) instead of the
    table's DDP + ZeroRedundancyOptimizer / FSDP2 cell. It steps flat pieces, so it needs an
    elementwise optimizer: a Python-API optimizer factory keeps auto on the table's cell."""
    if not rules.uses_flat_zero(cfg.parallel, dims, cfg.train.dtype):
        return False
    if components.active().optimizer is not None:
        if cfg.parallel.zero_flat is True:
            raise ConfigError(
                "parallel.zero_flat: true is not allowed with an optimizer factory from the "
                "Python API (flat pieces need an elementwise optimizer); set zero_flat=auto"
            )
        return False
    return True


def uses_fsdp(cfg: Config, dims: ParallelDims) -> bool:
    """FSDP2 shards this model (plait.rules.DP_ENGINES: torch, zero_stage 2/3, dp x cp > 1)."""
    return rules.uses_fsdp(
        cfg.parallel.dp_engine, cfg.parallel.zero_stage, dims.dp_cp
    ) and not uses_flat_zero(cfg, dims)


def fsdp_mesh(meshes, dims: ParallelDims):
    """1-D flattened dp mesh for ZeRO, the 2-D (dp_replicate, dp_shard) slice for HSDP; under
    context parallel the shard axis is dp_shard x cp (torchtitan), so gradients are averaged
    over the cp ranks too."""
    if dims.dp_replicate > 1:
        if dims.cp > 1:
            return meshes.root["dp_replicate", "dp_shard_cp"]
        return meshes.root["dp_replicate", "dp_shard"]
    return meshes.dp_shard_cp if dims.cp > 1 else meshes.dp


def apply_sharded(model: nn.Module, cfg: Config, dims: ParallelDims, meshes, device) -> None:
    """Step 5 of the wrap order: FSDP2 on the meta model (torch engine, zero_stage 2/3)."""
    if not uses_fsdp(cfg, dims):
        return
    # deferred: FSDP2 loads torch.distributed.fsdp/tensor, which DDP runs never need (start-up)
    from plait.ddp.fsdp import apply_fsdp

    apply_fsdp(
        model,
        mesh=fsdp_mesh(meshes, dims),
        stage=cfg.parallel.zero_stage,
        reshard_after_forward=cfg.parallel.reshard_after_forward,
        dtype=cfg.train.dtype,
        cpu_offload=cfg.parallel.cpu_offload,
        device=device,
        unit_mb=cfg.parallel.fsdp_unit_mb,
    )


def apply_replicated(
    model: nn.Module, cfg: Config, dims: ParallelDims, meshes, device
) -> nn.Module:
    """Step 7: torch DDP around the materialised model (torch engine, zero_stage 0/1). DeepSpeed
    and fairscale wrap in :func:`build_engine`, since they need the optimizer too."""
    if not rules.uses_ddp(cfg.parallel.dp_engine, cfg.parallel.zero_stage, dims.dp_cp):
        return model
    if uses_flat_zero(cfg, dims):  # its own gradient hooks (plait.ddp.flat_zero)
        return model
    return apply_ddp(model, dp_mesh=meshes.dp_cp if dims.cp > 1 else meshes.dp, device=device)


def build_engine(
    model: nn.Module, cfg: Config, dims: ParallelDims, meshes, device: torch.device
) -> Engine:
    """The engine of this engine x stage cell (plait.rules.DP_ENGINES); the plain one at dp=1."""
    inner = unwrap(model)
    p = cfg.parallel
    kind = rules.dp_engine(p.dp_engine, p.zero_stage).engine
    if dims.dp_cp == 1 or kind == "plain":
        return Engine(model, inner, cfg, dims.dp)
    group = meshes.dp.get_group()
    if uses_flat_zero(cfg, dims):
        # deferred: an engine's module (and its library) loads only when that engine is used
        from plait.ddp.flat_zero import FlatZeroEngine

        return FlatZeroEngine(model, inner, cfg, dims.dp, dp_group=group)
    # each engine's module is imported only when chosen: deferred optional heavy dependencies
    # (deepspeed, fairscale) and torch.distributed.fsdp/optim that DDP runs never need
    if kind == "deepspeed":
        from plait.ddp.deepspeed_engine import DeepSpeedEngine

        return DeepSpeedEngine(model, inner, cfg, dims.dp, device=device)
    if kind == "fairscale":
        # deferred: an engine's module (and its library) loads only when that engine is used
        from plait.ddp.fairscale_engine import FairscaleEngine

        return FairscaleEngine(
            model, inner, cfg, dims.dp, dp_group=group, dp_mesh=meshes.dp, device=device
        )
    if kind == "zero1":
        # deferred: an engine's module (and its library) loads only when that engine is used
        from plait.ddp.zero1 import Zero1Engine

        return Zero1Engine(model, inner, cfg, dims.dp, dp_group=group)
    # deferred: an engine's module (and its library) loads only when that engine is used
    from plait.ddp.fsdp import FSDPEngine

    return FSDPEngine(model, inner, cfg, dims.dp_cp)
