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
    python bench/tp_vs_dp.py --raw [--rounds 5] [--steps 6]

``--raw``: plait's tp=2 step (its trainer, in one launch of 2 gloo ranks) against a hand-written
DTensor script with the same collectives as plait's plan (PrepareModuleInput on attention and
MLP inputs so q/k/v and w1/w3 share one backward all-reduce, vocabulary-parallel embedding and
head with loss_parallel), written the way torch's TP tutorial writes it (norms stay plain
tensors), torch's AdamW, clipping and plait's lr schedule. Both are built side by side in one launch of 2 gloo
ranks and run alternately step by step (each pair's order flipped every step, losses checked
equal); a round is ``--steps`` steps of each, its figure the median step; ratios min/median/max
over rounds. plait's step is its trainer's (``_Step.run``) plus the stop-signal all-reduce its
loop runs after every step. Also printed: the ratio per step pair, in wall time and in the
rank process's CPU time (all its threads; less sensitive to other jobs on a shared machine, blind
to time spent waiting in collectives).
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


def raw_tp_stepper(cfg):
    """The hand-written DTensor script (see top); same model, init and batches as plait.
    Returns ``step(i)``, which runs optimizer step ``i`` and returns its loss."""
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
    from plait.optim import build_optimizer, build_scheduler

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
    sched = build_scheduler(opt, cfg.optim, cfg.train.steps)
    data = build_data(cfg, model)
    params = list(model.parameters())

    def step(i: int) -> float:
        b = data.sample("train", i, 0, cfg.train.global_batch, cfg.train.global_batch)
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
        sched.step()
        opt.zero_grad(set_to_none=True)
        return float(loss.detach())

    return step


def plait_tp_stepper(cfg):
    """plait's own step at tp=2: the trainer's per-rank state (plait.trainer._Step) and what its
    loop runs between steps on every rank (the stop-signal check; metrics and the observer's
    bookkeeping on a step that is not logged)."""
    import torch

    from plait import dist as pdist
    from plait.preflight import validate
    from plait.trainer import _Step, _stop_signal

    env = pdist.DistEnv.from_environ()
    dims = validate(cfg, env.world_size)
    mesh = dims.build_mesh("cpu")
    torch.manual_seed(cfg.train.seed * 1_000_003)
    stepper = _Step(cfg, dims, mesh, torch.device("cpu"), 0)

    def step(i: int) -> float:
        rec = stepper.run(i)
        _stop_signal(env, torch.device("cpu"), stepper)
        return rec["loss"]

    return step, stepper


def _raw_worker(steps: int, rounds: int, run_dir: str) -> dict:
    """Both steppers built side by side; each round runs ``steps`` optimizer steps of each,
    alternating step by step (the order flipping every step), so a burst of load on the
    machine slows both alike. Round 0 warms both up."""
    import time

    import torch

    from plait import dist as pdist

    env = pdist.DistEnv.from_environ()
    pdist.set_cpu_threads(env, torch.device("cpu"))
    pdist.keep_cpu_heap(torch.device("cpu"))
    pdist.init_process_group(env, torch.device("cpu"), 600)
    layout = ["parallel.tp=2", "parallel.dp_shard=1", "train.eval_every=0", "log.every=1000"]
    out: dict[str, list[float]] = {"plait": [], "raw": []}
    total = steps * (rounds + 1)
    cfg = load_config(None, [*COMMON, *layout, f"train.steps={total}", f"log.run_dir={run_dir}"])
    try:
        ours, stepper = plait_tp_stepper(cfg)
        raw = raw_tp_stepper(cfg)
        for r in range(rounds + 1):
            t = {"plait": [], "raw": []}
            cpu = {"plait": [], "raw": []}
            for i in range(r * steps, (r + 1) * steps):
                pair = [("plait", ours), ("raw", raw)]
                losses = {}
                for name, f in pair if i % 2 else pair[::-1]:
                    t0, c0 = time.perf_counter(), time.process_time()
                    losses[name] = f(i)
                    t[name].append(time.perf_counter() - t0)
                    cpu[name].append(time.process_time() - c0)
                # the same computation (clipping by an fp32 vs a float64 norm may drift apart)
                assert abs(losses["plait"] - losses["raw"]) <= 1e-3 * abs(losses["raw"]), losses
            if r:
                out["plait"].append(statistics.median(t["plait"]))
                out["raw"].append(statistics.median(t["raw"]))
                out.setdefault("pairs", []).extend(a / b for a, b in zip(t["plait"], t["raw"]))
                out.setdefault("cpu", []).extend(a / b for a, b in zip(cpu["plait"], cpu["raw"]))
        stepper.loader.close()
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
    for k, (a, b) in enumerate(zip(res["plait"], res["raw"])):
        print(f"round {k + 1}: plait {a:.4f} s, raw {b:.4f} s, ratio {a / b:.3f}")
    pairs = sorted(res["pairs"])  # each step of plait over the raw step run next to it
    q = statistics.quantiles(pairs, n=4)
    cpu = res["cpu"]  # CPU seconds of the rank's process (all its threads) per step, paired
    qc = statistics.quantiles(cpu, n=4)
    print(
        f"gpt_small_step_time[tp=2, plait vs raw DTensor script]: ours "
        f"{statistics.median(res['plait']):.3f} s, baseline {statistics.median(res['raw']):.3f} s, "
        f"ratio min {r[0]:.3f} median {statistics.median(r):.3f} max {r[-1]:.3f} ({rounds} rounds "
        f"of {steps} steps each, alternating step by step); per step pair: median "
        f"{statistics.median(pairs):.3f} (quartiles {q[0]:.3f}-{q[2]:.3f}, {len(pairs)} pairs); "
        f"process CPU time per step pair: median {statistics.median(cpu):.3f} (quartiles "
        f"{qc[0]:.3f}-{qc[2]:.3f})"
    )


def main() -> None:
    if "--raw" in sys.argv:
        a = sys.argv
        get = lambda k, d: int(a[a.index(k) + 1]) if k in a else d  # noqa: E731
        return raw_main(get("--steps", 6), get("--rounds", 5))
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
