"""Expert parallel: the routed experts of every MoE feed-forward split over ``parallel.ep`` ranks,
tokens exchanged by all-to-all (plait.models.moe_comm), and the experts' hidden dimension split
over tensor parallel (Megatron's column/row split inside each expert).

ep folds over the data-parallel ranks that shard (dp_shard x cp), as torchtitan does: those
are cut into ``edp = dp_shard * cp / ep`` groups of ``ep`` consecutive ranks. This module builds
its own DeviceMesh (pp, dp_replicate, edp, ep, tp) with the same rank order as the root mesh
(plait.mesh), so the two agree on every rank's place. Its groups:

- ``ep``: the ranks that exchange tokens;
- expert data parallel (dp_replicate x edp): the ranks holding copies of the same experts, over
  which expert gradients are summed; divided by dp x cp, they are the single-process gradient
  (the trainer's loss scale carries dp x cp; docs/design.md, expert parallel);
- ep x tp: the ranks over which the experts' squared gradient norm is summed.

Expert weights stay plain tensors holding this rank's slice (an ExpertShard says where it sits
in the full tensor): data-parallel engines leave them out (DDP ignores them, FSDP2 is told to),
:meth:`plait.models.moe.MoE.finish_step` reduces their gradients, init draws the full tensor and keeps
the slice, and checkpoints view them as DTensors on the (ep, tp) mesh so DCP reshards them
(plait.checkpoint: single-process names, any ep).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from plait.mesh import ParallelDims
from plait.models.moe import MoE
from plait.models.moe_comm import ExpertParallel
from plait.parallel_attrs import EXPERT_SHARD_ATTR


@dataclass
class ExpertShard:
    """Where an expert weight's local slice sits: ``starts`` per dim of ``full_shape``; ``mesh``
    and ``placements``: the DTensor view checkpoints save (None: replicated, ep = tp = 1)."""

    full_shape: tuple[int, ...]
    starts: tuple[int, ...]
    mesh: object
    placements: tuple
    norm_group: object  # squared norms summed over it (ep x tp); None: one rank

    def narrow(self, full: torch.Tensor, local_shape) -> torch.Tensor:
        for d, (s, n) in enumerate(zip(self.starts, local_shape)):
            full = full.narrow(d, s, n)
        return full


@dataclass
class ExpertGroups:
    ep: int
    tp: int
    ep_rank: int
    tp_rank: int
    ep_group: object
    tp_group: object
    grad_group: object  # expert data parallel: copies of the same experts
    count_group: object  # every data-parallel rank (dp x cp): global token counts
    norm_group: object
    mesh2d: object  # (ep, tp) DeviceMesh for the checkpoint view
    grad_div: float  # dp x cp: the trainer's loss scale, undone


def ep_groups(model: nn.Module, dims: ParallelDims, device_type: str) -> ExpertGroups | None:
    """The groups of this layout (every rank calls it: it creates process groups); None for a
    dense model or one process."""
    ep, tp = dims.ep, dims.tp
    if dims.world_size == 1 or not any(isinstance(m, MoE) for m in model.modules()):
        return None
    # deferred: DeviceMesh only when experts are split
    from torch.distributed.device_mesh import init_device_mesh

    fold = dims.dp_shard * dims.cp
    names = ("ep_pp", "ep_dpr", "edp", "ep", "ep_tp")
    mesh = init_device_mesh(
        device_type, (dims.pp, dims.dp_replicate, fold // ep, ep, tp), mesh_dim_names=names
    )
    grad = mesh["ep_dpr", "edp"]._flatten("ep_grad")
    count = mesh["ep_dpr", "edp", "ep"]._flatten("ep_count")
    norm = mesh["ep", "ep_tp"]._flatten("ep_norm")

    def group(m):
        return m.get_group() if m.size() > 1 else None

    return ExpertGroups(
        ep=ep, tp=tp, ep_rank=mesh["ep"].get_local_rank(), tp_rank=mesh["ep_tp"].get_local_rank(),
        ep_group=group(mesh["ep"]), tp_group=group(mesh["ep_tp"]), grad_group=group(grad),
        count_group=group(count), norm_group=group(norm), mesh2d=mesh["ep", "ep_tp"],
        grad_div=float(dims.dp_cp),
    )  # fmt: skip


def apply_ep(model: nn.Module, groups: ExpertGroups | None) -> None:
    """Keep this rank's experts (meta model, before tensor parallel) and give each MoE layer its
    dispatch; a no-op for a dense model or at ep = tp = 1."""
    if groups is None:
        return
    # deferred: DTensor placements (with sympy) only when experts are split
    from torch.distributed.tensor import Replicate, Shard

    g = groups
    for mod in model.modules():
        if not isinstance(mod, MoE):
            continue
        mod.count_group = g.count_group
        if g.ep == 1 and g.tp == 1:
            continue  # experts replicated: the data-parallel engine reduces them
        E, H = mod.m.n_experts, mod.m.expert_dim
        L, h = E // g.ep, H // g.tp
        for name, hid_dim in (("w1", 2), ("w3", 2), ("w2", 1)):
            old = getattr(mod.experts, name)
            shape = list(old.shape)
            starts = [g.ep_rank * L, 0, 0]
            shape[0], shape[hid_dim] = L, h
            starts[hid_dim] = g.tp_rank * h
            p = nn.Parameter(torch.empty(shape, device=old.device, dtype=old.dtype))
            placements = (
                Shard(0) if g.ep > 1 else Replicate(),
                Shard(hid_dim) if g.tp > 1 else Replicate(),
            )
            shard = ExpertShard(tuple(old.shape), tuple(starts), g.mesh2d, placements, g.norm_group)
            setattr(mod.experts, name, p)
            mod.experts.shards[name] = shard
        mark_experts(mod.experts)
        mod.experts.register_state_dict_post_hook(_global_view)
        mod.experts.register_load_state_dict_pre_hook(_local_slice)
        mod.comm = ExpertParallel(g.ep_group, L, g.tp_group)
        mod.grad_group, mod.grad_div, mod.sharded = g.grad_group, g.grad_div, True


def mark_experts(model: nn.Module) -> None:
    """(Re)attach each expert slice's ExpertShard to its parameter: ``to_empty`` makes new
    Parameter objects, so the marks live on the Experts module and are copied back after it."""
    for mod in model.modules():
        for name, shard in getattr(mod, "shards", {}).items():
            setattr(getattr(mod, name), EXPERT_SHARD_ATTR, shard)


def expert_params(params) -> list[nn.Parameter]:
    """The parameters of ``params`` that hold a slice of the experts (left to this module)."""
    return [p for p in params if hasattr(p, EXPERT_SHARD_ATTR)]


def as_global(local: torch.Tensor, shard: ExpertShard):
    """``local`` (this rank's slice) as a DTensor of the full expert tensor, no copy."""
    from torch.distributed.tensor import DTensor  # deferred: see apply_ep

    full = torch.Size(shard.full_shape)
    stride = torch.empty(full, device="meta").stride()
    return DTensor.from_local(
        local, shard.mesh, shard.placements, run_check=False, shape=full, stride=stride
    )


def _global_view(module, state_dict, prefix, local_metadata):
    """state_dict hook: expert slices as DTensors of the full tensors (single-process names and
    shapes, so DCP reshards them to any ep / tp, and ``full_tensor()`` gathers them)."""
    for name, p in module.named_parameters(recurse=False):
        shard = getattr(p, EXPERT_SHARD_ATTR, None)
        if shard is not None and prefix + name in state_dict:
            state_dict[prefix + name] = as_global(state_dict[prefix + name], shard)


def _local_slice(module, state_dict, prefix, *args):
    """load_state_dict pre-hook: a DTensor or a full tensor becomes this rank's slice."""
    for name, p in module.named_parameters(recurse=False):
        shard, key = getattr(p, EXPERT_SHARD_ATTR, None), prefix + name
        if shard is None or key not in state_dict:
            continue
        v = state_dict[key]
        if hasattr(v, "to_local"):
            v = v.to_local()
        elif tuple(v.shape) == shard.full_shape:
            v = shard.narrow(v, p.shape)
        state_dict[key] = v


def _shards(model: nn.Module) -> dict[str, ExpertShard]:
    from plait.models.base import canonical_name  # noqa: PLC0415 - models import base lazily

    return {
        canonical_name(n): getattr(p, EXPERT_SHARD_ATTR)
        for n, p in model.named_parameters()
        if hasattr(p, EXPERT_SHARD_ATTR)
    }


def optim_global(model: nn.Module, optim_state: dict) -> dict:
    """Optimizer state (torch's get_optimizer_state_dict form, by parameter name) with expert
    slices' per-element states (Adam's moments) as DTensors of the full shape, like the weights;
    other ranks' slices would otherwise be dropped by DCP as duplicates of one name."""
    shards = _shards(model)
    for key, st in optim_state.get("state", {}).items():
        shard = shards.get(key)
        for k, v in st.items() if shard is not None else ():
            if isinstance(v, torch.Tensor) and v.dim() == len(shard.full_shape):
                st[k] = as_global(v, shard)
    return optim_state


def optim_local(model: nn.Module, optim_state: dict) -> dict:
    """The reverse of :func:`optim_global`, after loading."""
    shards = _shards(model)
    for key, st in optim_state.get("state", {}).items():
        for k, v in st.items() if key in shards else ():
            if hasattr(v, "to_local"):
                st[k] = v.to_local()
    return optim_state
