"""Data-parallel engines side by side, same launch, rounds interleaved: plait's torch engine at
ZeRO-1/2/3 against raw DeepSpeed scripts and raw FSDP2 (the tutorial's ``fully_shard`` loop) at
the same stage, plus a hand-written DDP loop; step time and per-rank held state bytes (params +
grads + optimizer state + transiently unsharded params), ratios min/median/max over rounds.

    python bench/dp_engines.py [--model seed_bigmodel] [--steps 8] [--rounds 3] [--nproc 2]
                               [--all] [key=value ...]

All entries run in ONE launched group of gloo ranks (start-up paid once); each round runs every
entry once, so machine noise hits all alike; an entry's step time in a round is the median over
its steps after the first two. The raw scripts run in the same processes as plait, so they get
plait's process-wide settings too (threads per rank, the CPU allocator of plait.dist
keep_cpu_heap): the ratios compare the step code, not the process setup. ``--all`` adds plait's
DDP, DeepSpeed and fairscale engines.
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

# (name, plait overrides or None for a raw script, ZeRO stage)
PLAIT = [
    ("plait torch ZeRO-1", ["parallel.dp_engine=torch", "parallel.zero_stage=1"], 1),
    ("plait torch ZeRO-2", ["parallel.dp_engine=torch", "parallel.zero_stage=2"], 2),
    ("plait torch ZeRO-3", ["parallel.dp_engine=torch", "parallel.zero_stage=3"], 3),
    (
        "plait torch ZeRO-1 zero_flat=false",
        ["parallel.dp_engine=torch", "parallel.zero_stage=1", "parallel.zero_flat=false"],
        1,
    ),
    (
        "plait torch ZeRO-2 zero_flat=false",
        ["parallel.dp_engine=torch", "parallel.zero_stage=2", "parallel.zero_flat=false"],
        2,
    ),
    (
        "plait torch ZeRO-3 reshard=true",
        [
            "parallel.dp_engine=torch",
            "parallel.zero_stage=3",
            "parallel.reshard_after_forward=true",
        ],
        3,
    ),
]
RAW = [("raw DeepSpeed ZeRO-1", 1), ("raw DeepSpeed ZeRO-2", 2), ("raw DeepSpeed ZeRO-3", 3),
       ("raw FSDP2 ZeRO-2", 2), ("raw FSDP2 ZeRO-3", 3), ("raw DDP", 0)]  # fmt: skip
# --all: plait's other engines too (one round each is enough to see their cost)
MORE = [
    ("plait torch DDP", ["parallel.dp_engine=torch", "parallel.zero_stage=0"], 0),
    *[(f"plait deepspeed ZeRO-{z}", ["parallel.dp_engine=deepspeed", f"parallel.zero_stage={z}"], z)
      for z in (1, 2, 3)],
    ("plait fairscale OSS", ["parallel.dp_engine=fairscale", "parallel.zero_stage=1"], 1),
    ("plait fairscale ShardedDDP", ["parallel.dp_engine=fairscale", "parallel.zero_stage=2"], 2),
]  # fmt: skip
# the pairs the acceptance is about: (ours, baseline)
PAIRS = [
    ("plait torch ZeRO-1", "raw DeepSpeed ZeRO-1"),
    ("plait torch ZeRO-2", "raw DeepSpeed ZeRO-2"),
    ("plait torch ZeRO-3", "raw DeepSpeed ZeRO-3"),
    ("plait torch ZeRO-2 zero_flat=false", "raw FSDP2 ZeRO-2"),
    ("plait torch ZeRO-1", "plait torch ZeRO-1 zero_flat=false"),
    ("plait torch ZeRO-2", "plait torch ZeRO-2 zero_flat=false"),
    ("plait torch ZeRO-3", "raw FSDP2 ZeRO-3"),
    ("plait torch ZeRO-3", "plait torch ZeRO-3 reshard=true"),
]
STATE = ("params", "grads", "optim", "unsharded")


def _median_step(times: list[float]) -> float:
    return statistics.median(times[2:] or times)  # the first two steps warm up


def _raw_setup(cfg):
    import torch

    from plait.data import build_data
    from plait.models import build_model
    from plait.optim import build_optimizer

    torch.manual_seed(cfg.train.seed)
    model = build_model(cfg)
    model.to_empty(device="cpu")
    model.init_weights(cfg.train.seed)
    return model, build_data(cfg, model), build_optimizer


def _raw_loop(cfg, steps, model, data, fwd_bwd, step, before_zero=None) -> tuple[list, dict]:
    """The step every raw script runs: this rank's slice of the global batch, loss scaled as
    plait scales it (dp / global count), backward, clip, step."""
    import torch.distributed as dist

    n, r = dist.get_world_size(), dist.get_rank()
    local = cfg.train.global_batch // n
    times, held = [], {}
    for s in range(steps):
        t0 = time.perf_counter()
        b = data.sample("train", s, r * local, (r + 1) * local, cfg.train.global_batch)
        fwd_bwd(b, n / cfg.train.global_batch)
        step()
        if before_zero is not None and s == steps - 1:
            held = before_zero()
        times.append(time.perf_counter() - t0)
    return times, held


def raw_ddp(cfg, steps, stage):
    """Hand-written torch DDP: no plait in the step (same model, init, batch)."""
    import torch
    from torch.nn.parallel import DistributedDataParallel

    model, data, build_opt = _raw_setup(cfg)
    ddp = DistributedDataParallel(model, gradient_as_bucket_view=True)
    opt = build_opt(ddp, cfg.optim)

    def fwd_bwd(b, scale):
        (model.loss(ddp(b["input"]), b) * scale).backward()

    def step():
        torch.nn.utils.clip_grad_norm_(ddp.parameters(), cfg.train.grad_clip, foreach=False)
        opt.step()
        opt.zero_grad(set_to_none=True)

    return _raw_loop(cfg, steps, model, data, fwd_bwd, step)[0], {}


def raw_fsdp2(cfg, steps, stage):
    """Hand-written FSDP2 the way its tutorial writes it: ``fully_shard`` per block and the
    root, ZeRO-3 resharding every unit after forward, ZeRO-2 none; torch's clip and step."""
    import torch
    from torch.distributed.fsdp import fully_shard

    from plait.data import build_data
    from plait.ddp import memory
    from plait.ddp.fsdp import unsharded_param_bytes
    from plait.models import build_model
    from plait.optim import build_optimizer

    torch.manual_seed(cfg.train.seed)
    with torch.device("meta"):
        model = build_model(cfg)
    for block in model.layers.values():
        fully_shard(block, reshard_after_forward=stage == 3)
    fully_shard(model, reshard_after_forward=stage == 3)
    model.to_empty(device="cpu")
    model.init_weights(cfg.train.seed)
    opt = build_optimizer(model, cfg.optim)
    data = build_data(cfg, model)
    peak = [0]

    def fwd_bwd(b, scale):
        loss = model.loss(model(b["input"]), b) * scale
        peak[0] = max(peak[0], unsharded_param_bytes(model))
        loss.backward()

    def step():
        torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.train.grad_clip, foreach=False)
        opt.step()

    def held():
        return {**memory.held_bytes(model, opt), "unsharded": peak[0]}

    def step_zero():
        step()
        opt.zero_grad(set_to_none=True)

    times, h = _raw_loop(cfg, steps - 1, model, data, fwd_bwd, step_zero)
    t2, h = _raw_loop(cfg, 1, model, data, fwd_bwd, step, held)
    return times + t2, h


def raw_deepspeed(cfg, steps, stage):
    """Hand-written DeepSpeed: ``deepspeed.initialize`` with the config a user would write
    (stage, batch sizes, clipping; DeepSpeed's own defaults for everything else)."""
    import types

    import deepspeed
    import deepspeed.ops

    from plait.ddp.deepspeed_engine import DeepSpeedEngine

    deepspeed.ops.__compatible_ops__["deepspeed_shm_comm"] = False  # no JIT compiler on CPU
    model, data, build_opt = _raw_setup(cfg)
    opt = build_opt(model, cfg.optim)
    n = deepspeed.comm.get_world_size() if deepspeed.comm.is_initialized() else 2
    ds_cfg = {
        "train_batch_size": cfg.train.global_batch,
        "train_micro_batch_size_per_gpu": cfg.train.global_batch // n,
        "gradient_clipping": cfg.train.grad_clip,
        "zero_optimization": {"stage": stage},
        "zero_allow_untested_optimizer": True,
        "zero_force_ds_cpu_optimizer": False,
        "steps_per_print": 1 << 30,
    }
    eng, zopt, _, _ = deepspeed.initialize(model=model, optimizer=opt, config=ds_cfg)
    # held bytes counted exactly as plait's DeepSpeed engine counts them
    view = types.SimpleNamespace(ds=eng, _torch_opt=opt, optimizer=zopt)
    before = {}

    def fwd_bwd(b, scale):
        eng.backward(model.loss(eng(b["input"]), b) * scale, scale_wrt_gas=False)

    def step():
        before.update(DeepSpeedEngine._held(view))
        eng.step()

    def held():
        after = DeepSpeedEngine._held(view)
        return {k: max(v, before.get(k, 0)) for k, v in after.items()}

    return _raw_loop(cfg, steps, model, data, fwd_bwd, step, held)


RAW_FNS = {"raw DeepSpeed": raw_deepspeed, "raw FSDP2": raw_fsdp2, "raw DDP": raw_ddp}


def worker(base: list[str], steps: int, rounds: int, more: bool, run_dir: str) -> dict:
    import torch
    import torch.distributed as dist

    from plait import dist as pdist
    from plait.config import load_config
    from plait.trainer import train

    env = pdist.DistEnv.from_environ()
    pdist.init_process_group(env, torch.device("cpu"), 600)
    common = ["log.wandb=off", "log.tensorboard=false", "log.progress=off", f"train.steps={steps}"]
    common.append(f"log.every={steps}")
    out: dict[str, dict] = {}
    plait_runs = PLAIT + (MORE if more else [])
    try:
        # warm-up: the first run of a process pays allocator and thread-pool start-up
        train(load_config(None, [*common, *base, "train.steps=3", f"log.run_dir={run_dir}/w"]))
        cfg0 = load_config(None, [*common, *base])
        for rnd in range(rounds):  # rounds interleave every entry: machine noise hits all alike
            for i, (name, ov, _) in enumerate(plait_runs):
                cfg = load_config(None, [*common, *base, *ov, f"log.run_dir={run_dir}/{rnd}-{i}"])
                res = train(cfg)
                last = res.metrics[-1]
                rec = out.setdefault(name, {"step_s": []})
                rec["step_s"].append(_median_step([m["step_time_s"] for m in res.metrics]))
                rec.update({k: last[f"mem_{k}_bytes_max"] for k in STATE})
            for name, stage in RAW:
                fn = next(f for k, f in RAW_FNS.items() if name.startswith(k))
                times, held = fn(cfg0, steps, stage)
                rec = out.setdefault(name, {"step_s": []})
                rec["step_s"].append(_median_step(times))
                rec.update({k: held.get(k, 0) for k in STATE})
            dist.barrier()
    finally:
        pdist.destroy_process_group()
    return out


def _ratios(xs: list[float], ys: list[float]) -> str:
    r = sorted(x / y for x, y in zip(xs, ys))
    return f"min {r[0]:.3f} median {statistics.median(r):.3f} max {r[-1]:.3f}"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default="seed_bigmodel")
    ap.add_argument("--steps", type=int, default=6)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--nproc", type=int, default=2)
    ap.add_argument("--all", action="store_true", help="plait's DDP, DeepSpeed, fairscale too")
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
    res = elastic_launch(lc, worker)(base, a.steps, a.rounds, a.all, run_dir)[0]
    cfg = load_config(None, base)
    psi = param_count(build_model(cfg))
    pgk = bytes_per_param(cfg.optim.name, cfg.optim.momentum, mixed=False)
    print(f"# {a.model}: {psi:,} params, world size {a.nproc}, fp32 {cfg.optim.name}, "
          f"{a.steps} steps x {a.rounds} interleaved rounds, {time.perf_counter() - t0:.0f}s")  # fmt: skip

    def held(r: dict) -> int:
        return sum(r[k] for k in STATE)

    stages = {n: z for n, _, z in PLAIT + MORE} | dict(RAW)
    for name, r in res.items():
        t = r["step_s"]
        f = zero_formula(stages[name], psi, a.nproc, pgk)["total"]
        if not held(r):  # the hand-written DDP loop counts no bytes
            print(f"{name}: step s median {statistics.median(t):.4f} (min {min(t):.4f})")
            continue
        print(f"{name}: step s median {statistics.median(t):.4f} (min {min(t):.4f}), held "
              f"{held(r) / 2**20:.1f} MB/rank = {held(r) / f:.2f}x ZeRO-{stages[name]} formula  "
              f"[p {r['params'] / 2**20:.1f} g {r['grads'] / 2**20:.1f} o {r['optim'] / 2**20:.1f} "
              f"unsharded {r['unsharded'] / 2**20:.1f}]")  # fmt: skip
    for ours, base_name in PAIRS:
        o, b = res[ours], res[base_name]
        print(f"{ours} / {base_name}: step time {_ratios(o['step_s'], b['step_s'])}; "
              f"held {held(o) / held(b):.2f}")  # fmt: skip


if __name__ == "__main__":
    main()
