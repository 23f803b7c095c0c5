"""ZeRO-2, ZeRO-3 and HSDP on FSDP2 (``fully_shard``), with CPU offload and mixed precision.

FSDP2 shards every parameter on dim 0 over the data-parallel mesh as a DTensor, all-gathers a
block's parameters before its forward/backward and reduce-scatters its gradients after backward
(ZeRO, arXiv 1910.02054; PyTorch FSDP, arXiv 2304.11277):

- ZeRO-2: ``reshard_after_forward=False``: gathered parameters stay from forward to backward
  (no second all-gather), gradients and optimizer state sharded.
- ZeRO-3: ``reshard_after_forward=True``: parameters are gathered again for backward, so only
  one block is ever unsharded.
- HSDP: a 2-D (dp_replicate, dp_shard) mesh: shard within a group, replicate across groups
  (gradients reduce-scattered in the group, then all-reduced across replicas).

Applied on the meta-device model, before materialisation, one unit per block and one for the
root (torchtitan's order), so a model bigger than one device never exists whole.

Units (``parallel.fsdp_unit_mb``, :func:`unit_sizes`): consecutive blocks share one unit up to
that many MB of parameters, so small blocks pay fewer collectives; "block" below means unit.

Reshard policy (``parallel.reshard_after_forward``, docs/design.md "Reshard policy"): under
ZeRO-3 ``auto`` reshards every block but the last (its backward runs right after forward: a
reshard there is an all-gather for nothing, torchtitan's default) and never the root (its head
and final norm are likewise first in backward; FSDP2's own default for the root). Each block's
forward all-gathers the next block's parameters as it starts (explicit forward prefetch), so
the collective runs in the background while the block computes; backward prefetches one block
ahead (FSDP2's implicit order). Gradients are reduce-scattered after every micro-batch, also
during accumulation, which keeps them sharded (the memory ZeRO-2/3 promise);
``parallel.reduce_every_microbatch=false`` reduces only after the last micro-batch instead.
"""

from __future__ import annotations

import torch
import torch.distributed as dist
from torch import nn
from torch.distributed.fsdp import (
    CPUOffloadPolicy,
    MixedPrecisionPolicy,
    OffloadPolicy,
    fully_shard,
)
from torch.distributed.fsdp._fully_shard._fsdp_api import AllGather, ReduceScatter
from torch.distributed.tensor import DTensor

from plait.ddp import memory
from plait.ddp.engine import Engine
from plait.ddp.gloo_collectives import broadcast_slots, one_work
from plait.models.base import PlaitModel
from plait.parallel_attrs import EXPERT_SHARD_ATTR

DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}


def unit_sizes(block_bytes: list[int], limit_bytes: float) -> list[int]:
    """Blocks per FSDP2 unit: consecutive blocks share a unit while their parameters stay within
    ``limit_bytes`` (``parallel.fsdp_unit_mb``; a larger block is a unit of its own; 0: one
    block per unit). FSDP1's size-based wrap, DeepSpeed's bucket sizes: fewer, larger
    collectives, each with one copy-in/out (docs/design.md "FSDP2 units")."""
    sizes, cur, n = [], 0, 0
    for b in block_bytes:
        if n and cur + b > limit_bytes:
            sizes.append(n)
            cur, n = 0, 0
        cur, n = cur + b, n + 1
    return sizes + ([n] if n else [])


def block_reshard(stage: int, policy: bool | int | str, index: int, n_blocks: int) -> bool | int:
    """``reshard_after_forward`` of unit ``index`` of ``n_blocks`` units (ZeRO-2: never)."""
    if stage < 3 or policy is False:
        return False
    if policy == "auto":
        return index < n_blocks - 1  # the last block's backward comes first
    if policy is True:
        return True
    return policy if policy > 1 else False  # a group size (1: keep them, as FSDP2 maps it)


def apply_fsdp(
    model: PlaitModel,
    *,
    mesh,
    stage: int = 3,
    reshard_after_forward: bool | int | str = "auto",
    dtype: str,
    cpu_offload: bool,
    device: torch.device,
    unit_mb: float = 0.0,
    gloo_comms: bool = True,
) -> None:
    """Shard ``model`` in place; ``mesh`` is 1-D (ZeRO) or 2-D (dp_replicate, dp_shard) for HSDP.

    Mixed precision: on GPU, bf16/fp16 compute copies with fp32 gradient reduction and fp32
    sharded master parameters; on CPU everything stays fp32 (autocast does the casting).
    ``stage`` 2 never reshards after forward; at 3 ``reshard_after_forward`` is the policy of
    :func:`block_reshard` (true/false: every unit, the root too)."""
    mp = MixedPrecisionPolicy()
    if device.type == "cuda" and dtype in DTYPES:
        mp = MixedPrecisionPolicy(param_dtype=DTYPES[dtype], reduce_dtype=torch.float32)
    # pin_memory needs an accelerator: with it on a CPU-only machine fully_shard fails
    offload = CPUOffloadPolicy(pin_memory=device.type == "cuda") if cpu_offload else OffloadPolicy()
    kw = dict(mesh=mesh, mp_policy=mp, offload_policy=offload)
    # expert weights split over ep/tp ranks stay out (plait.models.moe.MoE.finish_step)
    experts = {p for p in model.parameters() if hasattr(p, EXPERT_SHARD_ATTR)}
    if experts:
        kw["ignored_params"] = experts
    blocks = list(model.layers.values())
    nbytes = [sum(p.numel() * p.element_size() for p in b.parameters()) for b in blocks]
    units, i = [], 0
    for n in unit_sizes(nbytes, unit_mb * 2**20):
        units.append(blocks[i : i + n])
        i += n
    for i, unit in enumerate(units):
        r = block_reshard(stage, reshard_after_forward, i, len(units))
        if not isinstance(r, bool) and r == mesh.size(-1):
            r = True  # a group of the whole shard dimension is plain ZeRO-3
        fully_shard(unit if len(unit) > 1 else unit[0], reshard_after_forward=r, **kw)
    # the root's head is first in backward: kept (FSDP2's own root default) unless every
    # unit is to reshard (true: ZeRO-3 to the letter)
    fully_shard(model, reshard_after_forward=stage == 3 and reshard_after_forward is True, **kw)
    for unit, nxt in zip(units, units[1:]):
        unit[0].set_modules_to_forward_prefetch([nxt[0]])
    # see GlooAllGather
    if gloo_comms and dist.get_backend(mesh.get_group(mesh.ndim - 1)) == "gloo":
        for m in [u[0] for u in units] + [model]:
            m.set_custom_all_gather(GlooAllGather())
            m.set_custom_reduce_scatter(GlooReduceScatter())


class _GlooComm:
    """FSDP2's custom-collective hooks (``set_custom_all_gather`` / ``set_custom_reduce_scatter``)
    with what gloo runs fastest (plait.ddp.gloo_collectives)."""

    def allocate(self, size, *, dtype, device) -> torch.Tensor:
        return torch.empty(*size, dtype=dtype, device=device)


class GlooAllGather(_GlooComm, AllGather):
    def __call__(self, output_tensor, input_tensor, group, async_op: bool = False):
        r = dist.get_rank(group)
        slots = output_tensor.view(-1).split(input_tensor.numel())
        if slots[r].data_ptr() != input_tensor.data_ptr():
            slots[r].copy_(input_tensor.view(-1))
        works = broadcast_slots(list(slots), group)
        if async_op:
            return one_work(works)
        for w in works:
            w.wait()
        return None


class GlooReduceScatter(_GlooComm, ReduceScatter):
    def __call__(self, output_tensor, input_tensor, group, op, async_op: bool = False):
        r, size = dist.get_rank(group), output_tensor.numel()
        dist.all_reduce(input_tensor, op=op, group=group)  # done before FSDP2 reads the output
        output_tensor.view(-1).copy_(input_tensor.view(-1)[r * size : (r + 1) * size])
        return None


def unsharded_param_bytes(model: nn.Module) -> int:
    """Bytes of parameters FSDP2 currently holds gathered (it swaps plain tensors in for the
    sharded DTensors while a unit is unsharded)."""
    plain = (p for p in model.parameters() if not isinstance(p, DTensor))
    return memory.storage_bytes(plain, set())


class FSDPEngine(Engine):
    def sync(self, last: bool):
        """Under ``parallel.reduce_every_microbatch=false``: reduce-scatter on the last only."""
        if not self.cfg.parallel.reduce_every_microbatch:
            self.model.set_requires_gradient_sync(last)
        return super().sync(last)

    def backward(self, loss: torch.Tensor, last: bool) -> None:
        # between forward and backward: what ZeRO-2 keeps gathered (ZeRO-3: the root unit only)
        self._unsharded = max(self._unsharded, unsharded_param_bytes(self.model))
        loss.backward()
