"""Per-rank memory accounting: bytes of parameters, gradients and optimizer state this rank
actually holds, counted from the tensors themselves, and the ZeRO formulas they are checked
against.

ZeRO (Rajbhandari et al., arXiv 1910.02054, sec. 3 and fig. 1), Ψ parameters, N data-parallel
ranks. Write P, G, K for bytes per parameter of model parameters, gradients and optimizer state
(K includes an fp32 master copy when parameters are kept in 16 bits):

    stage 0 (DDP)          P + G + K
    stage 1 (optimizer)    P + G + K/N
    stage 2 (+ gradients)  P + (G + K)/N
    stage 3 (+ parameters) (P + G + K)/N            (all times Ψ)

Exact forms per setting (Adam / AdamW keep m and v: 8 bytes; SGD with momentum 4; plain SGD 0):

    fp32 Adam (plait on CPU, train.dtype=fp32):   P=4, G=4, K=8
        16Ψ, 8Ψ + 8Ψ/N, 4Ψ + 12Ψ/N, 16Ψ/N
    bf16/fp16 Adam with fp32 master (paper's mixed precision): P=2, G=2, K=12
        16Ψ, 4Ψ + 12Ψ/N, 2Ψ + 14Ψ/N, 16Ψ/N
    fp32 SGD+momentum: P=4, G=4, K=4;  fp32 SGD: P=4, G=4, K=0

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

OPTIM_STATE_BYTES = {"adam": 8, "adamw": 8, "sgd_momentum": 4, "sgd": 0}


def bytes_per_param(optim: str, momentum: float, mixed: bool) -> tuple[int, int, int]:
    """(P, G, K) of the module docstring."""
    key = "sgd_momentum" if optim == "sgd" and momentum else optim
    k = OPTIM_STATE_BYTES[key]
    if mixed:
        return 2, 2, k + 4  # + fp32 master copy
    return 4, 4, k


def zero_formula(stage: int, n_params: int, world: int, pgk: tuple[int, int, int]) -> dict:
    """Bytes per rank of parameters, gradients and optimizer state at a ZeRO stage."""
    p, g, k = (b * n_params for b in pgk)
    n = world
    parts = {
        0: (p, g, k),
        1: (p, g, k / n),
        2: (p, g / n, k / n),
        3: (p / n, g / n, k / n),
    }[stage]
    return {"params": parts[0], "grads": parts[1], "optim": parts[2], "total": sum(parts)}


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
