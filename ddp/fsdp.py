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
root (torchtitan's order), so a model bigger than one device never exists whole. Gradients are
reduce-scattered after every micro-batch, also during accumulation: that keeps them sharded,
which is the memory ZeRO-2/3 promise.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.distributed.fsdp import (
    CPUOffloadPolicy,
    MixedPrecisionPolicy,
    OffloadPolicy,
    fully_shard,
)
from torch.distributed.tensor import DTensor

from plait.ddp import memory
from plait.ddp.engine import Engine
from plait.models.base import PlaitModel
from plait.parallel_attrs import EXPERT_SHARD_ATTR

DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}


def apply_fsdp(
    model: PlaitModel,
    *,
    mesh,
    reshard_after_forward: bool,
    dtype: str,
    cpu_offload: bool,
    device: torch.device,
) -> None:
    """Shard ``model`` in place; ``mesh`` is 1-D (ZeRO) or 2-D (dp_replicate, dp_shard) for HSDP.

    Mixed precision: on GPU, bf16/fp16 compute copies with fp32 gradient reduction and fp32
    sharded master parameters; on CPU everything stays fp32 (autocast does the casting)."""
    mp = MixedPrecisionPolicy()
    if device.type == "cuda" and dtype in DTYPES:
        mp = MixedPrecisionPolicy(param_dtype=DTYPES[dtype], reduce_dtype=torch.float32)
    # pin_memory needs an accelerator: with it on a CPU-only machine fully_shard fails
    offload = CPUOffloadPolicy(pin_memory=device.type == "cuda") if cpu_offload else OffloadPolicy()
    kw = dict(mesh=mesh, reshard_after_forward=reshard_after_forward, mp_policy=mp)
    kw["offload_policy"] = offload
    # expert weights split over ep/tp ranks stay out (plait.models.moe.MoE.finish_step)
    experts = {p for p in model.parameters() if hasattr(p, EXPERT_SHARD_ATTR)}
    if experts:
        kw["ignored_params"] = experts
    for block in model.layers.values():
        fully_shard(block, **kw)
    fully_shard(model, **kw)


def unsharded_param_bytes(model: nn.Module) -> int:
    """Bytes of parameters FSDP2 currently holds gathered (it swaps plain tensors in for the
    sharded DTensors while a unit is unsharded)."""
    plain = (p for p in model.parameters() if not isinstance(p, DTensor))
    return memory.storage_bytes(plain, set())


class FSDPEngine(Engine):
    def backward(self, loss: torch.Tensor, last: bool) -> None:
        # between forward and backward: what ZeRO-2 keeps gathered (ZeRO-3: the root unit only)
        self._unsharded = max(self._unsharded, unsharded_param_bytes(self.model))
        loss.backward()
