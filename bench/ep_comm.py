"""Expert-parallel all-to-all bytes per MoE layer, measured vs the planner's analytic figure.

Analytic (plait.plan.experts.a2a_bytes_per_layer): per MoE layer one rank sends its N x k
(token, expert) rows of D elements once to dispatch and once to combine, and both again in
backward: 4 N k D elements. Measured: every all-to-all the ranks issue in one forward + loss +
backward of the MoE gpt ``moe_tiny`` (dim 64, 8 experts, top-2, dropless), counted below
autograd with a TorchDispatchMode (torch's functional all_to_all_single, forward and backward),
per layer as L=2 minus L=1. Expected ratio 1.000. The share of rows that leave the rank is the
router's: printed against the uniform-routing assumption (ep - 1) / ep the planner states.

    python bench/ep_comm.py        # spawns 2 and 4 gloo processes on CPU
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch
import torch.distributed as dist

sys.path.insert(0, str(Path(__file__).parent))
from gloo_ranks import run_ranks  # noqa: E402 - bench/ is scripts, not a package

B, S = 8, 64


def measure(n_layers: int, ep: int) -> tuple[float, float]:
    """(all-to-all bytes this rank sent, of which to other ranks) in one forward + loss +
    backward of moe_tiny with ``n_layers`` blocks over ``ep`` ranks (fp32)."""
    from torch.utils._python_dispatch import TorchDispatchMode

    from plait.config import load_config
    from plait.expert_parallel import apply_ep, ep_groups, mark_experts
    from plait.mesh import ParallelDims
    from plait.models import build_model

    over = ["model.preset=moe_tiny", f"model.n_layers={n_layers}", f"data.seq_len={S}"]
    cfg = load_config(None, [*over, f"parallel.ep={ep}"])
    model = build_model(cfg)
    apply_ep(model, ep_groups(model, ParallelDims(1, 1, ep, 1, ep, ep=ep), "cpu"))
    model.to_empty(device="cpu")
    mark_experts(model)
    model.init_weights(0)
    rank = dist.get_rank()
    g = torch.Generator().manual_seed(rank)
    tokens = torch.randint(0, 256, (B // ep, S), generator=g)
    sent = [0.0, 0.0]

    class Bytes(TorchDispatchMode):
        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            out = func(*args, **(kwargs or {}))
            if "all_to_all_single" in func._overloadpacket.__name__ and args[0].dim() == 2:
                t, split = args[0], args[2]  # (input, output_split_sizes, input_split_sizes, ...)
                row = t[0].numel() * t.element_size() if t.shape[0] else 0
                sent[0] += t.numel() * t.element_size()
                sent[1] += (t.shape[0] - split[rank]) * row
            return out

    with Bytes():
        loss = model.loss(model(tokens), {"target": tokens})
        loss.backward()
    return sent[0], sent[1]


def _rank(rank: int, world: int) -> list[float]:
    one, two = measure(1, world), measure(2, world)
    got = torch.tensor([two[0] - one[0], two[1] - one[1]], dtype=torch.float64)
    dist.all_reduce(got)  # summed over ranks, then per rank
    return (got / world).tolist()


def main() -> None:
    from plait.plan.experts import a2a_bytes_per_layer

    for ep in (2, 4):
        sent, off = run_ranks(_rank, ep)
        want = a2a_bytes_per_layer(B // ep * S, 2, 64, 4)
        print(
            f"ep_a2a_bytes_per_layer[ep={ep}, B={B}, T={S}, moe_tiny]: ours {sent / 2**10:.1f} KiB, "
            f"baseline (analytic: 4 N k D x 4 B) {want / 2**10:.1f} KiB, ratio {sent / want:.3f}"
        )
        print(
            f"ep_a2a_off_rank_share[ep={ep}]: measured {off / sent:.3f}, "
            f"planner's uniform-routing assumption {(ep - 1) / ep:.3f}, ratio {off / sent / ((ep - 1) / ep):.3f}"
        )
        sys.stdout.flush()


if __name__ == "__main__":
    main()
