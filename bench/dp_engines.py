"""Data-parallel engines side by side, same run, same ranks: step time and per-rank held state
bytes (params + grads + optimizer state + transiently unsharded params) of every engine x stage,
as ratios to torch DDP, to DeepSpeed at the same stage, and to the ZeRO formula; plus plait's
DDP step against a hand-written torch DDP loop on the same model and batch (plait's overhead).

    python bench/dp_engines.py [--model seed_bigmodel] [--steps 6] [--nproc 2] [key=value ...]

All configs run in ONE launched group of gloo ranks (start-up paid once). Step time is the
median over steps after the first two. CPU timings on a shared machine are noisy: compare
ratios from one run only.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
import uuid
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))

ENGINES = [
    ("torch DDP", "torch", 0),
    ("torch ZeRO-1", "torch", 1),
    ("torch ZeRO-2", "torch", 2),
    ("torch ZeRO-3", "torch", 3),
    ("deepspeed ZeRO-0", "deepspeed", 0),
    ("deepspeed ZeRO-1", "deepspeed", 1),
    ("deepspeed ZeRO-2", "deepspeed", 2),
    ("deepspeed ZeRO-3", "deepspeed", 3),
    ("fairscale OSS", "fairscale", 1),
    ("fairscale ShardedDDP", "fairscale", 2),
]
STATE = ("params", "grads", "optim", "unsharded")


def _median_step(metrics: list[dict]) -> float:
    times = [m["step_time_s"] for m in metrics[2:]] or [m["step_time_s"] for m in metrics]
    return statistics.median(times)


def handwritten_ddp(cfg, steps: int) -> float:
    """The baseline: a plain torch DDP loop, no plait in the step (same model, init, batch)."""
    import torch
    import torch.distributed as dist
    from torch.nn.parallel import DistributedDataParallel

    from plait.data import build_data
    from plait.models import build_model
    from plait.optim import build_optimizer

    model = build_model(cfg)
    model.to_empty(device="cpu")
    model.init_weights(cfg.train.seed)
    ddp = DistributedDataParallel(model, gradient_as_bucket_view=True)
    opt = build_optimizer(ddp, cfg.optim)
    data = build_data(cfg, model)
    n, r = dist.get_world_size(), dist.get_rank()
    local = cfg.train.global_batch // n
    times = []
    for step in range(steps):
        t0 = time.perf_counter()
        b = data.sample("train", step, r * local, (r + 1) * local, cfg.train.global_batch)
        loss = model.loss(ddp(b["input"]), b) * (n / cfg.train.global_batch)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(ddp.parameters(), cfg.train.grad_clip, foreach=False)
        opt.step()
        opt.zero_grad(set_to_none=True)
        times.append(time.perf_counter() - t0)
    return statistics.median(times[2:] or times)


def worker(base: list[str], steps: int, run_dir: str) -> dict:
    import torch

    from plait import dist as pdist
    from plait.config import load_config
    from plait.trainer import train

    env = pdist.DistEnv.from_environ()
    pdist.init_process_group(env, torch.device("cpu"), 600)
    common = ["log.wandb=off", "log.tensorboard=false", "log.progress=off", f"train.steps={steps}"]
    common.append(f"log.every={steps}")
    out = {}
    try:
        # warm-up: the first run of a process pays allocator and thread-pool start-up
        train(load_config(None, [*common, *base, "train.steps=3", f"log.run_dir={run_dir}/w"]))
        # plait's overhead: plait DDP and the hand-written loop alternated, best of two each
        cfg = load_config(None, [*common, *base, f"log.run_dir={run_dir}/o"])
        pairs = [(handwritten_ddp(cfg, steps), _median_step(train(cfg).metrics)) for _ in range(2)]
        out["handwritten DDP"] = {"step_s": min(h for h, _ in pairs)}
        out["plait DDP"] = {"step_s": min(p for _, p in pairs)}
        for i, (name, eng, stage) in enumerate(ENGINES):
            ov = [*common, *base, f"parallel.dp_engine={eng}", f"parallel.zero_stage={stage}"]
            cfg = load_config(None, [*ov, f"log.run_dir={run_dir}/{i}"])
            res = train(cfg)
            last = res.metrics[-1]
            out[name] = {
                "step_s": _median_step(res.metrics),
                **{k: last[f"mem_{k}_bytes_max"] for k in STATE},
                "loss": last["loss"],
            }
    finally:
        pdist.destroy_process_group()
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default="seed_bigmodel")
    ap.add_argument("--steps", type=int, default=6)
    ap.add_argument("--nproc", type=int, default=2)
    ap.add_argument("overrides", nargs="*")
    a = ap.parse_args()
    base = [f"model.name={a.model}", *a.overrides]
    if a.model == "seed_bigmodel":
        base = [
            "model.preset=default",
            "data.name=synthetic",
            "optim.name=adam",
            "train.grad_clip=1.0",
            *base,
        ]

    from torch.distributed.launcher.api import LaunchConfig, elastic_launch

    from plait.config import load_config
    from plait.ddp.memory import bytes_per_param, zero_formula
    from plait.models import build_model, param_count

    os.environ.setdefault("TORCH_DISABLE_SHARE_RDZV_TCP_STORE", "1")
    lc = LaunchConfig(
        min_nodes=1, max_nodes=1, nproc_per_node=a.nproc, run_id=uuid.uuid4().hex[:8],
        rdzv_backend="c10d", rdzv_endpoint="127.0.0.1:0", max_restarts=0,
        monitor_interval=0.1, start_method="spawn",
    )  # fmt: skip
    run_dir = f"/tmp/plait-bench-dp-{uuid.uuid4().hex[:6]}"
    t0 = time.perf_counter()
    res = elastic_launch(lc, worker)(base, a.steps, run_dir)[0]
    cfg = load_config(None, base)
    psi = param_count(build_model(cfg))
    pgk = bytes_per_param(cfg.optim.name, cfg.optim.momentum, mixed=False)
    print(f"# {a.model}: {psi:,} params, world size {a.nproc}, fp32 {cfg.optim.name}, "
          f"{a.steps} steps, {time.perf_counter() - t0:.0f}s")  # fmt: skip

    def held(r: dict) -> int:
        return sum(r[k] for k in STATE)

    ddp, hand = res["torch DDP"], res["handwritten DDP"]
    ours = res["plait DDP"]
    print(f"overhead (DDP step s): ours {ours['step_s']:.4f}, baseline {hand['step_s']:.4f} "
          f"(hand-written DDP loop), ratio {ours['step_s'] / hand['step_s']:.3f}")  # fmt: skip
    for name, _, stage in ENGINES:
        r = res[name]
        f = zero_formula(stage, psi, a.nproc, pgk)["total"]
        print(f"{name} step s: ours {r['step_s']:.4f}, baseline {ddp['step_s']:.4f} (torch DDP), "
              f"ratio {r['step_s'] / ddp['step_s']:.2f}")  # fmt: skip
        print(f"{name} held MB/rank: ours {held(r) / 2**20:.1f}, baseline {f / 2**20:.1f} "
              f"(ZeRO-{stage} formula), ratio {held(r) / f:.2f}  "
              f"[p {r['params'] / 2**20:.1f} g {r['grads'] / 2**20:.1f} o {r['optim'] / 2**20:.1f} "
              f"unsharded {r['unsharded'] / 2**20:.1f}]")  # fmt: skip
    for stage in (1, 2, 3):
        ours, ds = res[f"torch ZeRO-{stage}"], res[f"deepspeed ZeRO-{stage}"]
        print(f"torch vs deepspeed ZeRO-{stage} step s: ours {ours['step_s']:.4f}, baseline "
              f"{ds['step_s']:.4f}, ratio {ours['step_s'] / ds['step_s']:.2f}")  # fmt: skip
        print(f"torch vs deepspeed ZeRO-{stage} held MB/rank: ours {held(ours) / 2**20:.1f}, "
              f"baseline {held(ds) / 2**20:.1f}, ratio {held(ours) / held(ds):.2f}")  # fmt: skip


if __name__ == "__main__":
    main()
