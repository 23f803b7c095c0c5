"""The wrap order, written once (torchtitan's): pipeline split, tensor parallel, activation
checkpointing, compile, sharded data parallel (FSDP2), then materialise + init, then replicated
DDP; DeepSpeed/fairscale wrap model and optimizer together afterwards (plait.ddp.build_engine).

Each step is a no-op at degree 1. Combinations that cannot work are refused here, before any
process group, with the key and what to use instead.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.distributed.algorithms._checkpoint.checkpoint_wrapper import checkpoint_wrapper

from plait.config import Config
from plait.errors import ConfigError
from plait.mesh import Meshes, ParallelDims
from plait.models.base import PlaitModel

#: pipeline schedules that split backward into input- and weight-gradient passes (B and W)
ZERO_BUBBLE = ("InterleavedZeroBubble", "ZBVZeroBubble", "DualPipeV")


def layout_problem(
    *, dp_engine: str, zero_stage: int, pp: int, dp: int, tp: int, schedule: str
) -> str | None:
    """Why this engine x layout cannot run, or None. The one statement of these rules: config
    validation raises it, and ``plait plan``'s layout search skips such layouts."""
    if tp > 1 and dp > 1 and (dp_engine != "torch" or zero_stage < 2):
        return (
            f"parallel: tp={tp} with dp={dp} data-parallel ranks needs sharded data parallel on "
            f"the torch engine (FSDP2 over TP, torchtitan's 2-D); dp_engine={dp_engine!r} "
            f"zero_stage={zero_stage} is not allowed: use dp_engine=torch with zero_stage=2 or 3"
        )
    if pp > 1 and (dp_engine != "torch" or zero_stage == 1):
        return (
            f"parallel.pp={pp} with dp_engine={dp_engine!r} zero_stage={zero_stage} is not "
            "allowed: pipeline stages take data parallel from the torch engine only, with "
            "zero_stage 0 (replicated stages), 2 or 3 (FSDP2 per stage, any dp_replicate); "
            "ZeRO-1's optimizer wrapper and DeepSpeed/fairscale engines own the whole model"
        )
    if pp > 1 and dp > 1 and zero_stage == 3 and schedule in ZERO_BUBBLE:
        # measured: losses drift by ~1e-3 from one process from the second step; zero_stage=2
        # (torchtitan's default under pp, sparing an all-gather per microbatch) matches to 1e-7
        return (
            f"parallel.zero_stage: 3 is not allowed with pp_schedule={schedule}: its separate "
            "weight-gradient pass gives wrong gradients for parameters FSDP2 re-shards after "
            "forward (torch 2.13); use zero_stage=2, or a schedule without W passes (GPipe, "
            "1F1B, Interleaved1F1B, LoopedBFS)"
        )
    return None


def check_supported(cfg: Config, dims: ParallelDims) -> None:
    """Refuse engine x layout combinations that cannot work, before any process group exists."""
    from plait.tensor_parallel import check_tp

    p = cfg.parallel
    problem = layout_problem(
        dp_engine=p.dp_engine, zero_stage=p.zero_stage, pp=dims.pp, dp=dims.dp, tp=dims.tp,
        schedule=p.pp_schedule,
    )  # fmt: skip
    if problem:
        raise ConfigError(problem)
    from plait.ddp import check_dp
    from plait.pipeline import check_pipeline

    check_dp(cfg, dims)
    check_pipeline(cfg, dims)
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
    # 1. pipeline split: this rank's stages, each then wrapped like a whole model; their
    # gradients are averaged over dp by plait.pipeline.step, not by DDP (see there why)
    if dims.pp > 1:
        from plait.pipeline import split_model

        parts = split_model(model, cfg, mesh.root["pp"].get_local_rank())
        for part in parts:
            _wrap_stage(part, cfg, dims, mesh, device)
        return parts
    _wrap_stage(model, cfg, dims, mesh, device)
    # 7. replicated data parallel (DDP) needs real parameters, so it comes last; DeepSpeed and
    # fairscale wrap model and optimizer together in plait.ddp.build_engine, right after this
    from plait.ddp import apply_replicated

    return apply_replicated(model, cfg, dims, mesh, device)


def _wrap_stage(
    model: PlaitModel, cfg: Config, dims: ParallelDims, mesh: Meshes | None, device: torch.device
) -> None:
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
    # 5. sharded data parallel (FSDP2: ZeRO-2/3, HSDP) on the meta model, outside TP/compile;
    # over TP's DTensors this is torchtitan's 2-D (the dp and tp meshes share one root)
    from plait.ddp import apply_sharded

    apply_sharded(model, cfg, dims, mesh, device)
    # 6. materialise on the device and initialise by parameter name (same values on any layout)
    model.to_empty(device=device)
    model.init_weights(cfg.train.seed)


def unwrap(model: nn.Module) -> PlaitModel:
    """The PlaitModel inside whatever data-parallel wrapper holds it (for pipeline parts: the
    first local stage, which has the model's loss, count and task)."""
    if isinstance(model, nn.ModuleList) and hasattr(model, "stage_ids"):
        return model[0]
    return (
        model.module if hasattr(model, "module") and isinstance(model.module, PlaitModel) else model
    )
