"""Per-rank memory accounting: bytes of parameters, gradients and optimizer state this rank
actually holds, counted from the tensors themselves, and the ZeRO formulas they are checked
against.

The ZeRO formulas (P, G, K bytes per parameter, per stage) live in :mod:`plait.zero`.

plait's torch engine keeps fp32 parameters and casts per forward (FSDP2's MixedPrecisionPolicy,
or autocast), so its P, G, K are the fp32 ones; the bf16 copies are transient working memory,
counted apart as ``unsharded`` like FSDP2's all-gathered parameters: ZeRO-2 via FSDP2
(reshard_after_forward=False) additionally holds the unsharded parameters from forward to
backward (+4Ψ at its peak), ZeRO-3 only one block's at a time. DDP's gradient buckets are its
gradients here (``gradient_as_bucket_view=True``), so they add nothing; without it they would
be a further G·Ψ. Scalar (0-d) optimizer tensors such as Adam's ``step`` are bookkeeping, not
state, and are left out.
"""

from __future__ import annotations

from collections.abc import Iterable

import torch

from plait.zero import OPTIM_STATE_BYTES, bytes_per_param, zero_formula

__all__ = [
    "OPTIM_STATE_BYTES", "bytes_per_param", "held_bytes", "optimizer_tensors", "storage_bytes",
    "zero_formula",
]  # fmt: skip


def _local(t: torch.Tensor) -> torch.Tensor:
    return t.to_local() if hasattr(t, "to_local") else t


def storage_bytes(tensors: Iterable[torch.Tensor], seen: set[int]) -> int:
    """Bytes of the distinct storages under ``tensors`` not already in ``seen`` (views of one
    buffer, e.g. DDP's bucket views or FSDP2's reduce-scatter output, count once)."""
    total = 0
    for t in tensors:
        if t is None:
            continue
        t = _local(t)
        if t.dim() == 0 or t.device.type == "meta":
            continue
        s = t.untyped_storage()
        key = s.data_ptr()
        if key in seen or s.nbytes() == 0:
            continue
        seen.add(key)
        total += s.nbytes()
    return total


def optimizer_tensors(optimizer) -> list[torch.Tensor]:
    """Tensors of the (local, for sharded wrappers) optimizer's state."""
    inner = getattr(optimizer, "optim", None) or optimizer  # ZeroRedundancyOptimizer, OSS
    out = []
    for state in inner.state.values():
        out.extend(v for v in state.values() if isinstance(v, torch.Tensor))
    return out


def held_bytes(model: torch.nn.Module, optimizer) -> dict[str, int]:
    """Parameters, gradients and optimizer state held by this rank, in bytes."""
    seen: set[int] = set()
    params = list(model.parameters())
    return {
        "params": storage_bytes(params, seen),
        "grads": storage_bytes((p.grad for p in params), seen),
        "optim": storage_bytes(optimizer_tensors(optimizer), seen),
    }
