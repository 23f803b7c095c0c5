"""The wrap order, written once (torchtitan's): pipeline split, tensor parallel, activation
checkpointing, compile, sharded data parallel, then materialise + init, then replicated DDP.

Each step is a no-op at degree 1. Parallelisms not built yet are refused here with a clear
message rather than silently ignored.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.distributed.algorithms._checkpoint.checkpoint_wrapper import checkpoint_wrapper

from plait.config import Config
from plait.errors import ConfigError
from plait.mesh import Meshes, ParallelDims
from plait.models.base import PlaitModel


def check_supported(cfg: Config, dims: ParallelDims) -> None:
    """Refuse layouts whose engine is not in this build, before any process group exists."""
    from plait.tensor_parallel import check_tp

    p = cfg.parallel
    todo = []
    if dims.pp > 1:
        todo.append(f"parallel.pp={dims.pp} (pipeline parallel)")
    if p.dp_engine != "torch":
        todo.append(f"parallel.dp_engine={p.dp_engine!r}")
    if p.zero_stage != 0 or dims.dp_replicate > 1:
        todo.append(
            f"parallel.zero_stage={p.zero_stage} / dp_replicate={dims.dp_replicate} (ZeRO / HSDP)"
        )
    if p.cpu_offload:
        todo.append("parallel.cpu_offload=true")
    if todo:
        raise ConfigError(
            "not available in this version of plait: "
            + "; ".join(todo)
            + ". Allowed now: single process, DDP, tensor parallel and dp_shard x tp "
            "(dp_engine=torch, zero_stage=0, pp=1)"
        )
    check_tp(cfg, dims)


def apply_activation_checkpoint(model: PlaitModel, mode: str, every: int) -> None:
    """Recompute each chosen block's activations in backward (Chen et al., arXiv 1604.06174).
    full: every block; selective: every ``every``-th block. Parameter names gain a wrapper
    prefix, which :func:`plait.models.base.canonical_name` strips for init and checkpoints."""
    if mode == "none":
        return
    for i, key in enumerate(list(model.layers.keys())):
        if mode == "full" or i % every == 0:
            model.layers[key] = checkpoint_wrapper(model.layers[key], preserve_rng_state=True)


def apply_compile(model: PlaitModel) -> None:
    """Compile block by block: blocks are identical, so one graph is reused (torchtitan)."""
    for block in model.layers.values():
        block.compile()


def parallelize(
    model: PlaitModel, cfg: Config, dims: ParallelDims, mesh: Meshes | None, device: torch.device
) -> nn.Module:
    """Turn a meta-device model into the trainable, wrapped model for this rank."""
    # 1. pipeline split: not in this build (check_supported refuses it)
    # 2. tensor parallel: shards module shapes, so it comes before everything that wraps them
    if dims.tp > 1:
        from plait.tensor_parallel import apply_tp

        apply_tp(
            model,
            tp_mesh=mesh.root["tp"],
            sequence_parallel=cfg.parallel.sequence_parallel,
            loss_parallel=True,
        )
    # 3. activation checkpointing, inside TP and outside compile
    apply_activation_checkpoint(
        model, cfg.parallel.activation_checkpoint, cfg.parallel.activation_checkpoint_every
    )
    # 4. compile
    if cfg.train.compile:
        apply_compile(model)
    # 4b. sharded data parallel on top of TP (2-D), on meta before materialising.
    # TODO(integrator): route to the FSDP2 engine of plait.ddp; this is the minimal ZeRO-3
    # application 2-D needs (plait.tensor_parallel.fsdp2d), isolated in one function.
    if dims.tp > 1 and dims.dp > 1:
        from plait.tensor_parallel import apply_fsdp_2d

        apply_fsdp_2d(model, dp_mesh=mesh.dp)
    # 5. materialise on the device and initialise by parameter name (same values on any layout)
    model.to_empty(device=device)
    model.init_weights(cfg.train.seed)
    # 6. replicated data parallel needs real parameters, so it comes last
    if dims.dp > 1 and dims.tp == 1:
        from plait.ddp import apply_ddp

        return apply_ddp(model, dp_mesh=mesh.dp, device=device)
    return model


def unwrap(model: nn.Module) -> PlaitModel:
    """The PlaitModel inside whatever data-parallel wrapper holds it."""
    return (
        model.module if hasattr(model, "module") and isinstance(model.module, PlaitModel) else model
    )
