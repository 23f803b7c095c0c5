"""The wrap order, written once (torchtitan's): pipeline split, tensor parallel, activation
checkpointing, compile, sharded data parallel (FSDP2), then materialise + init, then replicated
DDP; DeepSpeed/fairscale wrap model and optimizer together afterwards (plait.ddp.build_engine).

Each step is a no-op at degree 1. Combinations that cannot work are refused before any
process group by plait.preflight (re-exported here: ``check_supported``), with the key and what
to use instead.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.distributed.algorithms._checkpoint.checkpoint_wrapper import checkpoint_wrapper

from plait.config import Config
from plait.ddp import apply_replicated, apply_sharded
from plait.expert_parallel import apply_ep, ep_groups, mark_experts
from plait.mesh import Meshes, ParallelDims
from plait.models.base import PlaitModel
from plait.pipeline import split_model
from plait.preflight import check_supported
from plait.wrapped import unwrap

__all__ = [
    "apply_activation_checkpoint",
    "apply_compile",
    "check_supported",
    "parallelize",
    "unwrap",
]


def _saved_ops() -> set:
    """ATen ops whose outputs op-level checkpointing keeps: the matmuls (linear layers lower to
    mm / addmm / bmm) and attention (each backend's SDPA kernel), and the tensor-parallel
    reduce-scatter, so backward never re-runs a matmul or a collective."""
    aten, names = torch.ops.aten, (
        "mm", "addmm", "bmm", "_scaled_dot_product_flash_attention",
        "_scaled_dot_product_efficient_attention", "_scaled_dot_product_cudnn_attention",
        "_scaled_dot_product_flash_attention_for_cpu", "_scaled_mm",
    )  # fmt: skip
    ops = {getattr(aten, n).default for n in names if hasattr(aten, n)}
    c10d = getattr(torch.ops, "_c10d_functional", None)
    if c10d is not None and hasattr(c10d, "reduce_scatter_tensor"):
        ops.add(c10d.reduce_scatter_tensor.default)
    return ops


def _op_context_fn():
    """torch.utils.checkpoint's selective policy, torchtitan's default "op" mode
    (torchtitan/distributed/activation_checkpoint.py): attention outputs and the tensor-parallel
    reduce-scatter are saved, and every other matmul (the 1st, 3rd, ... of a block's forward:
    wq, wv, w1, w2 in a Llama block; wk, wo, w3 rerun); the memory-bound ops between them
    (norms, rotary, SwiGLU's product, residual adds) are recomputed. The count restarts for
    each block's forward and for its recomputation, so both pick the same matmuls."""
    from torch.utils.checkpoint import CheckpointPolicy, create_selective_checkpoint_contexts

    saved = _saved_ops()
    aten = torch.ops.aten
    counted = {aten.mm.default, aten.addmm.default}
    count = {False: 0, True: 0}  # matmuls seen so far: forward, recomputation

    def policy(ctx, func, *args, **kwargs):
        if func in counted:
            count[ctx.is_recompute] += 1
            if count[ctx.is_recompute] % 2 == 0:
                return CheckpointPolicy.PREFER_RECOMPUTE
        return CheckpointPolicy.MUST_SAVE if func in saved else CheckpointPolicy.PREFER_RECOMPUTE

    return create_selective_checkpoint_contexts(policy)


def apply_activation_checkpoint(model: PlaitModel, mode: str, every: int) -> None:
    """Recompute each chosen block's activations in backward (Chen et al., arXiv 1604.06174).
    full: every block; selective: every ``every``-th block; op: every block, recomputing only
    its memory-bound ops (:func:`_op_context_fn`). Parameter names gain a wrapper prefix, which
    :func:`plait.models.base.canonical_name` strips for init and checkpoints."""
    if mode == "none":
        return
    kw = {"context_fn": _op_context_fn} if mode == "op" else {}
    for i, key in enumerate(list(model.layers.keys())):
        if mode in ("full", "op") or i % every == 0:
            model.layers[key] = checkpoint_wrapper(model.layers[key], preserve_rng_state=True, **kw)


def apply_compile(model: PlaitModel) -> None:
    """Compile block by block: blocks are identical, so one graph is reused (torchtitan)."""
    for block in model.layers.values():
        block.compile()


def parallelize(
    model: PlaitModel, cfg: Config, dims: ParallelDims, mesh: Meshes | None, device: torch.device
) -> nn.Module:
    """Turn a meta-device model into the trainable, wrapped model for this rank."""
    # expert-parallel groups: built once (every rank creates the same process groups)
    groups = ep_groups(model, dims, device.type)
    # 1. pipeline split: this rank's stages, each then wrapped like a whole model; their
    # gradients are averaged over dp by plait.pipeline.step, not by DDP (see there why)
    if dims.pp > 1:
        parts = split_model(model, cfg, mesh.root["pp"].get_local_rank())
        for part in parts:
            _wrap_stage(part, cfg, dims, mesh, device, groups)
        return parts
    _wrap_stage(model, cfg, dims, mesh, device, groups)
    # 7. replicated data parallel (DDP) needs real parameters, so it comes last; DeepSpeed and
    # fairscale wrap model and optimizer together in plait.ddp.build_engine, right after this
    return apply_replicated(model, cfg, dims, mesh, device)


def _wrap_stage(
    model: PlaitModel,
    cfg: Config,
    dims: ParallelDims,
    mesh: Meshes | None,
    device: torch.device,
    groups=None,
) -> None:
    # 2a. expert parallel: keep this rank's experts (and their tp slice of the hidden dim);
    # before tensor parallel, which leaves expert weights to it
    apply_ep(model, groups)
    # 2b. tensor parallel: shards module shapes, so it comes before everything that wraps them
    if dims.tp > 1:
        # deferred: torch.distributed.tensor (and sympy) only when tp > 1 (start-up)
        from plait.tensor_parallel.apply import apply_tp

        apply_tp(
            model,
            tp_mesh=mesh.root["tp"],
            sequence_parallel=cfg.parallel.sequence_parallel,
            loss_parallel=True,
        )
    # 2b. context parallel: the model's attention gathers keys and values over cp and masks by
    # global position; it shards no parameter, so its place only needs to be inside the wrappers
    if dims.cp > 1:
        # deferred: functional collectives only when cp > 1 (start-up)
        from plait.context_parallel.apply import apply_cp

        apply_cp(model, cp_mesh=mesh.root["cp"], window=getattr(model, "sliding_window", None))
    # 3. activation checkpointing, inside TP and outside compile
    apply_activation_checkpoint(
        model, cfg.parallel.activation_checkpoint, cfg.parallel.activation_checkpoint_every
    )
    # 4. compile
    if cfg.train.compile:
        apply_compile(model)
    # 5. sharded data parallel (FSDP2: ZeRO-2/3, HSDP) on the meta model, outside TP/compile;
    # over TP's DTensors this is torchtitan's 2-D (the dp and tp meshes share one root)
    apply_sharded(model, cfg, dims, mesh, device)
    # 6. materialise on the device and initialise by parameter name (same values on any layout)
    model.to_empty(device=device)
    mark_experts(model)  # to_empty made new Parameters: expert slices marked again
    model.init_weights(cfg.train.seed)
