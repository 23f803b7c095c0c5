"""Step time of tensor parallel (tp=2) vs data parallel (dp=2) for gpt ``small`` on CPU/gloo,
both through plait's own trainer and local launcher (2 processes, same global batch).

Per rank both do half the FLOPs of the step (DP: half the batch, full weights; TP: full batch,
half of every weight). What differs is communication and overhead: DP all-reduces the gradients
once per step (~params x 4 bytes, bucketed, overlapped with backward); TP all-reduces the
(b, s, h) activations 4 times per layer on the critical path, and every sharded op goes through
DTensor's Python dispatch, which on CPU with small matrices is comparable to the matmul itself.
So on CPU TP is expected to be slower than DP; TP pays off where a model does not fit one device
or DP's batch per rank gets too small, on a fast interconnect (NVLink), not on gloo.

    python bench/tp_vs_dp.py [steps]
    python bench/tp_vs_dp.py --raw [--rounds 3] [--steps 8]

``--raw``: plait's tp=2 step (its trainer, in one launch of 2 gloo ranks) against a hand-written
DTensor script with the same collectives as plait's plan (PrepareModuleInput on attention and
MLP inputs so q/k/v and w1/w3 share one backward all-reduce, vocabulary-parallel embedding and
head with loss_parallel), written the way torch's TP tutorial writes it (norms stay plain
tensors), torch's AdamW and clipping; alternated in rounds, ratios min/median/max.
"""

from __future__ import annotations

import statistics
import sys
import tempfile

from plait.config import load_config
from plait.launch import run_local

COMMON = [
    "model.preset=small",
    "data.seq_len=128",
    "train.global_batch=8",
    "train.eval_batches=1",
    "log.wandb=off",
    "log.tensorboard=false",
    "log.progress=off",
]


def step_time(layout: list[str], steps: int) -> float:
    with tempfile.TemporaryDirectory() as d:
        cfg = load_config(None, [*COMMON, f"train.steps={steps}", f"log.run_dir={d}", *layout])
        res = run_local(cfg, 2)
    return statistics.median(m["step_time_s"] for m in res.metrics[2:])  # skip warm-up


def raw_tp_step_times(cfg, steps: int) -> list[float]:
    """The hand-written DTensor script (see top); same model, init and batches as plait."""
    import time

    import torch
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.tensor import DTensor, Replicate, Shard
    from torch.distributed.tensor.parallel import (
        ColwiseParallel,
        PrepareModuleInput,
        RowwiseParallel,
        loss_parallel,
        parallelize_module,
    )

    from plait.data import build_data
    from plait.models import build_model
    from plait.optim import build_optimizer

    mesh = init_device_mesh("cpu", (2,))
    with torch.device("meta"):
        model = build_model(cfg)

    def gather(n: int) -> PrepareModuleInput:  # the activation, then n - 1 RoPE tables
        lay = (Replicate(), *[None] * (n - 1))
        return PrepareModuleInput(
            input_layouts=lay, desired_input_layouts=lay, use_local_output=False
        )

    for block in model.layers.values():
        parallelize_module(block, mesh, {
            "attention": gather(3), "feed_forward": gather(1),
            "attention.wq": ColwiseParallel(), "attention.wk": ColwiseParallel(),
            "attention.wv": ColwiseParallel(), "attention.wo": RowwiseParallel(),
            "feed_forward.w1": ColwiseParallel(), "feed_forward.w3": ColwiseParallel(),
            "feed_forward.w2": RowwiseParallel(),
        })  # fmt: skip
    parallelize_module(model, mesh, {
        "tok_embeddings": RowwiseParallel(input_layouts=Replicate()),
        "output": ColwiseParallel(output_layouts=Shard(-1), use_local_output=False),
    })  # fmt: skip
    model.to_empty(device="cpu")
    model.init_weights(cfg.train.seed)
    opt = build_optimizer(model, cfg.optim)
    data = build_data(cfg, model)
    params = list(model.parameters())
    times = []
    for step in range(steps):
        t0 = time.perf_counter()
        b = data.sample("train", step, 0, cfg.train.global_batch, cfg.train.global_batch)
        with loss_parallel():
            loss = model.loss(model(b["input"]), b) / b["target"].numel()
            loss.backward()
        dts = [p.grad for p in params if isinstance(p.grad, DTensor)]
        plain = [p.grad for p in params if p.grad is not None and not isinstance(p.grad, DTensor)]
        sq = torch.nn.utils.get_total_norm(dts).full_tensor() ** 2
        norm = (sq + torch.nn.utils.get_total_norm(plain) ** 2).sqrt()
        coef = (1.0 / (norm + 1e-6)).clamp(max=1.0)  # torch's clip rule
        for g in dts + plain:
            g.mul_(coef)
        opt.step()
        opt.zero_grad(set_to_none=True)
        float(loss)
        times.append(time.perf_counter() - t0)
    return times


def _raw_worker(steps: int, rounds: int, run_dir: str) -> dict:
    import torch

    from plait import dist as pdist
    from plait.trainer import train

    pdist.init_process_group(pdist.DistEnv.from_environ(), torch.device("cpu"), 600)
    layout = ["parallel.tp=2", "parallel.dp_shard=1", "train.eval_every=0", "log.every=1000"]
    out: dict[str, list[float]] = {"plait": [], "raw": []}
    try:
        for r in range(rounds + 1):  # round 0 warms both up
            cfg = load_config(
                None, [*COMMON, *layout, f"train.steps={steps}", f"log.run_dir={run_dir}/{r}"]
            )
            ours = statistics.median(m["step_time_s"] for m in train(cfg).metrics[2:])
            raw = statistics.median(raw_tp_step_times(cfg, steps)[2:])
            if r:
                out["plait"].append(ours)
                out["raw"].append(raw)
    finally:
        pdist.destroy_process_group()
    return out


def raw_main(steps: int, rounds: int) -> None:
    import os
    import uuid

    from torch.distributed.launcher.api import LaunchConfig, elastic_launch

    os.environ.setdefault("TORCH_DISABLE_SHARE_RDZV_TCP_STORE", "1")
    lc = LaunchConfig(
        min_nodes=1, max_nodes=1, nproc_per_node=2, run_id=uuid.uuid4().hex[:8],
        rdzv_backend="c10d", rdzv_endpoint="127.0.0.1:0", max_restarts=0,
        monitor_interval=0.1, start_method="spawn",
    )  # fmt: skip
    with tempfile.TemporaryDirectory() as d:
        res = elastic_launch(lc, _raw_worker)(steps, rounds, d)[0]
    r = sorted(a / b for a, b in zip(res["plait"], res["raw"]))
    print(
        f"gpt_small_step_time[tp=2, plait vs raw DTensor script]: ours "
        f"{statistics.median(res['plait']):.3f} s, baseline {statistics.median(res['raw']):.3f} s, "
        f"ratio min {r[0]:.3f} median {statistics.median(r):.3f} max {r[-1]:.3f} ({rounds} rounds)"
    )


def main() -> None:
    if "--raw" in sys.argv:
        a = sys.argv
        get = lambda k, d: int(a[a.index(k) + 1]) if k in a else d  # noqa: E731
        return raw_main(get("--steps", 8), get("--rounds", 3))
    steps = int(sys.argv[1]) if len(sys.argv) > 1 else 12
    tp = step_time(["parallel.tp=2", "parallel.dp_shard=1"], steps)
    tp_sp = step_time(
        ["parallel.tp=2", "parallel.dp_shard=1", "parallel.sequence_parallel=true"], steps
    )
    dp = step_time(["parallel.dp_shard=2"], steps)
    print(
        f"gpt_small_step_time[tp=2 vs dp=2]: ours {tp:.3f} s, baseline {dp:.3f} s, ratio {tp / dp:.2f}"
    )
    print(
        f"gpt_small_step_time[tp=2+sp vs dp=2]: ours {tp_sp:.3f} s, baseline {dp:.3f} s, ratio {tp_sp / dp:.2f}"
    )


if __name__ == "__main__":
    main()
