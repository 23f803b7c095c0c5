"""Tensor-parallel communication per training step, measured vs Megatron's analytic volume.

Megatron (arXiv 1909.08053 sec. 3; 2205.05198 sec. 4.2): per transformer layer, forward +
backward, 4 collectives over the (b, s, h) activations: 4 all-reduces without sequence
parallel, 4 all-gathers + 4 reduce-scatters with it. On a ring, an all-reduce of N elements
moves 2(t-1)/t * N per rank, an all-gather / reduce-scatter (t-1)/t * N, so both layouts have
the same analytic volume per layer: 8 (t-1)/t * b*s*h elements per rank.

Measured: every collective the ranks issue in one forward + loss + backward of gpt ``small``
(dim 256, 8 heads, 4 kv heads, ffn 688, vocab 256), counted below DTensor (like CommDebugMode),
converted to per-rank ring bytes. ``blocks`` is the per-layer figure from L=2 minus L=1 (so the
embedding, head and loss cancel); ``step`` is the whole step against the blocks' analytic sum.
Expected: blocks ratio 1.000; step ratio 1 + 1/16 + tiny: the embedding output (one all-reduce,
or reduce-scatter under SP) and the head input (one all-reduce in backward, or all-gather +
reduce-scatter under SP) add half a layer's volume over 8 layers, loss_parallel three (b, s)
all-reduces (max, sum-exp, target logit).

    python bench/tp_comm.py        # spawns 2 and 4 gloo processes on CPU
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
from gloo_ranks import ring_bytes, run_ranks  # noqa: E402 - bench/ is scripts, not a package

B, S = 8, 128


def _measure(n_layers: int, sp: bool, tp_mesh) -> tuple[float, int]:
    from torch.distributed.tensor import DTensor
    from torch.utils._python_dispatch import TorchDispatchMode

    from plait.config import load_config
    from plait.models import build_model
    from plait.tensor_parallel import apply_tp, loss_context, plain

    cfg = load_config(
        None, ["model.preset=small", f"model.n_layers={n_layers}", f"data.seq_len={S}"]
    )
    model = build_model(cfg)
    apply_tp(model, tp_mesh=tp_mesh, sequence_parallel=sp)
    model.to_empty(device="cpu")
    model.init_weights(0)
    tokens = torch.randint(0, 256, (B, S), generator=torch.Generator().manual_seed(0))
    tp = tp_mesh.size()
    total = [0.0, 0]

    class Bytes(TorchDispatchMode):
        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            if any(issubclass(t, DTensor) for t in types):
                return NotImplemented
            out = func(*args, **(kwargs or {}))
            name = func._overloadpacket.__name__
            if any(c in name for c in ("all_reduce", "all_gather", "reduce_scatter")):
                total[0] += ring_bytes(func, args, out, tp)
                total[1] += 1
            return out

    with loss_context(model), Bytes():
        plain(model.loss(model(tokens), {"target": tokens})).backward()
    return total[0], total[1]


def _rank(rank: int, world: int) -> list[tuple]:
    from torch.distributed.device_mesh import init_device_mesh

    mesh = init_device_mesh("cpu", (world,), mesh_dim_names=("tp",))
    out = []
    for sp in (False, True):
        one, _ = _measure(1, sp, mesh)
        two, n2 = _measure(2, sp, mesh)
        eight, n8 = _measure(8, sp, mesh)
        out.append((sp, two - one, eight, n8))
    return out


def main() -> None:
    h = 256
    for tp in (2, 4):
        for sp, per_layer, step, ncoll in run_ranks(_rank, tp):
            analytic_layer = 8 * (tp - 1) / tp * B * S * h * 4  # bytes per rank, fp32
            tag = f"tp={tp}{' sp' if sp else ''}"
            print(
                f"tp_comm_bytes_per_layer[{tag}]: ours {per_layer / 2**20:.3f} MiB, "
                f"baseline (Megatron analytic) {analytic_layer / 2**20:.3f} MiB, "
                f"ratio {per_layer / analytic_layer:.3f}"
            )
            print(
                f"tp_comm_bytes_per_step[{tag}, 8 layers, {ncoll} collectives]: ours "
                f"{step / 2**20:.3f} MiB, baseline (8 x analytic layer) "
                f"{8 * analytic_layer / 2**20:.3f} MiB, ratio {step / (8 * analytic_layer):.3f}"
            )
        sys.stdout.flush()


if __name__ == "__main__":
    main()
