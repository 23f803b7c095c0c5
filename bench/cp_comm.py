"""Context-parallel communication and memory per layer, measured vs the planner's analytic
figures (plait.plan.memory: cp_kv_gather_bytes, block_activation_bytes).

Llama 3's all-gather context parallel (arXiv 2407.21783 sec. 3.3.2; plait.context_parallel):
per transformer layer, forward all-gathers keys and values (B, K, T, E) over the cp ranks and
backward reduce-scatters their gradients. On a ring an all-gather / reduce-scatter of a gathered
tensor of N elements moves (cp-1)/cp * N per rank, so the analytic volume per layer is
2 * (cp-1)/cp * B * T * 2 * K * E elements per rank (K kv heads of E: keys and values).

Measured: every collective the ranks issue in one forward + loss + backward of gpt ``small``
(dim 256, 8 heads, 4 kv heads, ffn 688, vocab 256) on T / cp tokens per rank, counted at the
dispatcher and converted to per-rank ring bytes; per layer = L=2 minus L=1 (embedding, head and
loss cancel; the loss and token sums over cp are the trainer's, outside this count). Memory:
bytes autograd saves for backward per block (saved-tensor hook, L=2 minus L=1) against
``block_activation_bytes(..., cp=cp)``: this rank's T / cp tokens plus the gathered keys and
values and the (T/cp, T) mask.

    python bench/cp_comm.py        # spawns 2 and 4 gloo processes on CPU
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
from gloo_ranks import ring_bytes, run_ranks  # noqa: E402 - bench/ is scripts, not a package

B, S = 4, 256


def measure(n_layers: int, cp_mesh, *, batch: int = B, seq_len: int = S) -> tuple[float, int]:
    """(ring bytes per rank of every collective, bytes autograd saves) of one forward + loss +
    backward of gpt small with ``n_layers`` blocks at cp = ``cp_mesh.size()``, fp32."""
    from torch.utils._python_dispatch import TorchDispatchMode

    from plait.config import load_config
    from plait.context_parallel import shard_batch
    from plait.context_parallel.apply import apply_cp
    from plait.models import build_model

    cfg = load_config(
        None, ["model.preset=small", f"model.n_layers={n_layers}", f"data.seq_len={seq_len}"]
    )
    model = build_model(cfg)
    apply_cp(model, cp_mesh=cp_mesh)
    model.to_empty(device="cpu")
    model.init_weights(0)
    cp, rank = cp_mesh.size(), cp_mesh.get_local_rank()
    tokens = torch.randint(0, 256, (batch, seq_len), generator=torch.Generator().manual_seed(0))
    local = shard_batch({"input": tokens, "target": tokens}, rank, cp)
    fixed = {p.untyped_storage().data_ptr() for p in model.parameters()}
    fixed |= {b.untyped_storage().data_ptr() for b in model.buffers()}
    wire, saved = [0.0], {}

    class Bytes(TorchDispatchMode):
        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            out = func(*args, **(kwargs or {}))
            wire[0] += ring_bytes(func, args, out, cp)
            return out

    def pack(t):
        s = t.untyped_storage()
        if s.data_ptr() not in fixed:
            saved[s.data_ptr()] = s.nbytes()
        return t

    with Bytes():
        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            loss = model.loss(model(local["input"]), local)
        loss.backward()
    return wire[0], sum(saved.values())


def analytic(cp: int, *, batch: int = B, seq_len: int = S) -> tuple[float, float]:
    """(ring bytes, saved activation bytes) per layer per rank from plait.plan.memory."""
    from plait.models.gpt import PRESETS
    from plait.plan.memory import block_activation_bytes, cp_kv_gather_bytes
    from plait.plan.shapes import Job, ModelShape

    shape = ModelShape(**PRESETS["small"])
    job = Job(batch, seq_len, "fp32")
    local_tokens = batch * seq_len // cp
    return (
        cp_kv_gather_bytes(shape, job, batch, 1, cp),
        block_activation_bytes(shape, local_tokens, job, cp=cp),
    )


def per_layer(cp_mesh, **kw) -> tuple[float, float]:
    """Measured (ring bytes, saved bytes) of one layer: L=2 minus L=1."""
    one, two = measure(1, cp_mesh, **kw), measure(2, cp_mesh, **kw)
    return two[0] - one[0], two[1] - one[1]


def _rank(rank: int, world: int) -> tuple[float, float]:
    from torch.distributed.device_mesh import init_device_mesh

    return per_layer(init_device_mesh("cpu", (world,), mesh_dim_names=("cp",)))


def main() -> None:
    for cp in (2, 4):
        wire, saved = run_ranks(_rank, cp)
        want_wire, want_saved = analytic(cp)
        print(
            f"cp_comm_bytes_per_layer[cp={cp}, B={B}, T={S}]: ours {wire / 2**20:.3f} MiB, "
            f"baseline (analytic: 2 (cp-1)/cp x B T 2 K E) {want_wire / 2**20:.3f} MiB, "
            f"ratio {wire / want_wire:.3f}"
        )
        print(
            f"cp_activation_bytes_per_layer[cp={cp}]: measured {saved / 2**20:.3f} MiB, "
            f"planner {want_saved / 2**20:.3f} MiB, ratio {saved / want_saved:.3f}"
        )
        sys.stdout.flush()


if __name__ == "__main__":
    main()
