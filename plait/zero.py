"""ZeRO's model-state memory (Rajbhandari et al., arXiv 1910.02054, sec. 3 and fig. 1), torch-free:
the trainer's measured memory records are checked against it (plait.ddp.memory) and the planner
predicts with it (plait.plan.memory).

Ψ parameters, N data-parallel ranks; P, G, K bytes per parameter of model parameters, gradients
and optimizer state (K includes an fp32 master copy when parameters are kept in 16 bits):

    stage 0 (DDP)          P + G + K
    stage 1 (optimizer)    P + G + K/N
    stage 2 (+ gradients)  P + (G + K)/N
    stage 3 (+ parameters) (P + G + K)/N            (all times Ψ)

Adam / AdamW keep m and v (8 bytes), SGD with momentum 4, plain SGD 0:

    fp32 Adam (plait on CPU, train.dtype=fp32):   P=4, G=4, K=8
        16Ψ, 8Ψ + 8Ψ/N, 4Ψ + 12Ψ/N, 16Ψ/N
    bf16/fp16 Adam with fp32 master (paper's mixed precision): P=2, G=2, K=12
        16Ψ, 4Ψ + 12Ψ/N, 2Ψ + 14Ψ/N, 16Ψ/N
    fp32 SGD+momentum: P=4, G=4, K=4;  fp32 SGD: P=4, G=4, K=0
"""

from __future__ import annotations

OPTIM_STATE_BYTES = {"adam": 8, "adamw": 8, "sgd_momentum": 4, "sgd": 0}


def bytes_per_param(optim: str, momentum: float, mixed: bool) -> tuple[int, int, int]:
    """(P, G, K) of the module docstring."""
    key = "sgd_momentum" if optim == "sgd" and momentum else optim
    k = OPTIM_STATE_BYTES[key]
    if mixed:
        return 2, 2, k + 4  # + fp32 master copy
    return 4, 4, k


def zero_formula(stage: int, n_params: float, world: int, pgk: tuple[int, int, int]) -> dict:
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
