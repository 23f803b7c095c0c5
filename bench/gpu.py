"""The GPU check: one command, one table, whenever a CUDA device is at hand (run it first).

On one CUDA device (under 8 minutes on an H100/H200): gpt at the 1b preset in bf16, seq 2048
(activation checkpointing when ``plait plan`` says the job would not fit without it):

- plait's step against a hand-written torch loop on the same model, batch and fused AdamW
  (tokens/s ratio, MFU of both), with torch.compile off and on; target plait / raw >= 0.98
- FSDP2 at world size 1 against the plain loop
- peak memory measured against ``plait plan``'s prediction for the same job; target within 10%
- a DCP save and load of model + optimizer on the device (weights checked after the load)
- nccl initialisation (process group + first all-reduce)

    python bench/gpu.py [--steps 15] [--out runs/gpu_check.json]
    python bench/gpu.py --dry-run       # tiny size; on CPU: gloo, compile with backend=eager

Without a CUDA device every row runs at the dry-run size on CPU and says so in its note
(``cpu``); rows that only mean something on CUDA (peak memory vs the planner) say ``skipped``.
The table is printed and written as JSON. CI runs ``--dry-run`` (tests/test_bench_gpu.py) so
the script cannot rot; it never depends on the figures.
"""

from __future__ import annotations

import argparse
import gc
import json
import math
import os
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
import torch.distributed as dist

from plait.config import Config, load_config
from plait.mesh import ParallelDims
from plait.models import build_model
from plait.observe.flops import flops_per_token
from plait.observe.peaks import device_peak
from plait.optim import param_groups
from plait.parallelize import apply_activation_checkpoint, apply_compile
from plait.plan.memory import plan_memory
from plait.plan.shapes import Job, Layout, ModelShape
from plait.trainer import _Step

GiB = 1024**3
FULL = ["model.preset=1b", "data.seq_len=2048", "train.global_batch=8"]
TINY = ["model.preset=tiny", "model.n_layers=2", "data.seq_len=64", "train.global_batch=4"]


@dataclass
class Row:
    check: str
    tokens_per_s: float | None = None
    mfu: float | None = None
    peak_gib: float | None = None
    value: str = ""  # the check's own figure (ratio, seconds, predicted memory)
    note: str = ""
    extra: dict = field(default_factory=dict)


def make_config(size: list[str], device: torch.device, steps: int, ac: str, compile_: bool):
    return load_config(
        None,
        [*size, "data.name=synthetic", "train.dtype=bf16", f"train.device={device.type}",
         f"train.steps={steps}", "optim.name=adamw", "optim.lr=1e-4", "optim.warmup_steps=0",
         "train.grad_clip=1.0", f"parallel.activation_checkpoint={ac}",
         f"train.compile={str(compile_).lower()}", "log.wandb=off", "log.tensorboard=false",
         "log.progress=off", f"log.run_dir={tempfile.mkdtemp(prefix='plait-gpu-')}"],
    )  # fmt: skip


def predicted_bytes(cfg: Config, device_bytes: int) -> float:
    """``plait plan``'s peak for this job on one device."""
    shape, job = ModelShape.from_config(cfg), Job.from_config(cfg)
    return plan_memory(shape, Layout.from_config(cfg, 1), job, device_bytes).total


def choose_checkpointing(size, device, steps) -> str:
    """'none' when the planner says the job fits the device without recomputation, else 'full'."""
    if device.type != "cuda":
        return "none"
    total = torch.cuda.get_device_properties(device).total_memory
    cfg = make_config(size, device, steps, "none", False)
    return "none" if predicted_bytes(cfg, total) <= 0.9 * total else "full"


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def fresh(device: torch.device) -> None:
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)


def peak_gib(device: torch.device) -> float | None:
    return torch.cuda.max_memory_allocated(device) / GiB if device.type == "cuda" else None


def timed(step, warmup: int, steps: int, device: torch.device) -> float:
    """Seconds per step over ``steps`` steps after ``warmup`` (compilation happens there)."""
    for s in range(warmup):
        step(s)
    sync(device)
    t = time.perf_counter()
    for s in range(warmup, warmup + steps):
        step(s)
    sync(device)
    return (time.perf_counter() - t) / steps


def rate_row(name: str, cfg: Config, sec: float, device: torch.device, note: str) -> Row:
    tps = cfg.train.global_batch * cfg.data.seq_len / sec
    peak = device_peak(device)
    mfu = tps * flops_per_token(cfg) / peak.flops if peak else None
    return Row(name, tps, mfu, peak_gib(device), f"{sec * 1e3:.1f} ms/step", note)


def plait_row(cfg: Config, device: torch.device, warmup: int, steps: int, note: str):
    fresh(device)
    stepper = _Step(cfg, ParallelDims.from_config(cfg, 1), None, device, 0)
    sec = timed(stepper.run, warmup, steps, device)
    name = f"plait step, compile {'on' if cfg.train.compile else 'off'}"
    row = rate_row(name, cfg, sec, device, note)
    del stepper
    return row


def raw_model(cfg: Config, device: torch.device, *, fsdp: bool):
    model = build_model(cfg, device)
    model.init_weights(cfg.train.seed)
    apply_activation_checkpoint(model, cfg.parallel.activation_checkpoint, 1)
    if cfg.train.compile:
        apply_compile(model)
    if fsdp:
        from torch.distributed.device_mesh import init_device_mesh
        from torch.distributed.fsdp import fully_shard

        mesh = init_device_mesh(device.type, (1,))
        for block in model.layers.values():
            fully_shard(block, mesh=mesh)
        fully_shard(model, mesh=mesh)
    o = cfg.optim
    opt = torch.optim.AdamW(
        param_groups(model, o.weight_decay), lr=o.lr, betas=tuple(o.betas), eps=o.eps, fused=True
    )
    return model, opt


def raw_step_fn(model, opt, cfg: Config, device: torch.device):
    """The hand-written loop: one batch, bf16 autocast, mean loss, clip, fused AdamW."""
    from plait.data import build_data

    data, B = build_data(cfg, model), cfg.train.global_batch

    def step(s: int) -> float:
        b = {
            k: v.to(device, non_blocking=True) for k, v in data.sample("train", s, 0, B, B).items()
        }
        with torch.autocast(device.type, dtype=torch.bfloat16):
            loss = model.loss(model(b["input"]), b) / model.count(b)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.train.grad_clip)
        opt.step()
        opt.zero_grad(set_to_none=True)
        return loss.item()  # plait's step reads its loss every step too

    return step


def raw_row(cfg: Config, device: torch.device, warmup: int, steps: int, note: str, fsdp=False):
    fresh(device)
    model, opt = raw_model(cfg, device, fsdp=fsdp)
    sec = timed(raw_step_fn(model, opt, cfg, device), warmup, steps, device)
    what = "FSDP2 world size 1" if fsdp else "raw torch loop"
    row = rate_row(
        f"{what}, compile {'on' if cfg.train.compile else 'off'}", cfg, sec, device, note
    )
    return row, model, opt


def dcp_row(model, opt, device: torch.device, note: str) -> Row:
    """Save model + optimizer with torch.distributed.checkpoint, scramble, load, compare."""
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import get_state_dict, set_state_dict

    def local(t):
        return t.to_local() if hasattr(t, "to_local") else t

    want = [local(p).detach().double().sum().item() for p in model.parameters()]
    path = tempfile.mkdtemp(prefix="plait-dcp-")
    msd, osd = get_state_dict(model, opt)
    t = time.perf_counter()
    dcp.save({"model": msd, "optim": osd}, checkpoint_id=path)
    t_save = time.perf_counter() - t
    with torch.no_grad():
        for p in model.parameters():
            local(p).zero_()
    msd, osd = get_state_dict(model, opt)
    t = time.perf_counter()
    state = {"model": msd, "optim": osd}
    dcp.load(state, checkpoint_id=path)
    set_state_dict(model, opt, model_state_dict=state["model"], optim_state_dict=state["optim"])
    sync(device)
    t_load = time.perf_counter() - t
    got = [local(p).detach().double().sum().item() for p in model.parameters()]
    ok = all(math.isclose(a, b, rel_tol=1e-12, abs_tol=1e-9) for a, b in zip(want, got))
    size = sum(f.stat().st_size for f in Path(path).rglob("*") if f.is_file()) / GiB
    return Row(
        "DCP save + load (model + optimizer)", value=f"save {t_save:.2f}s, load {t_load:.2f}s",
        note=f"{note}{size:.2f} GiB; weights {'restored' if ok else 'DIFFER after load'}",
        extra={"save_s": t_save, "load_s": t_load, "gib": size, "restored": ok},
    )  # fmt: skip


def init_group(device: torch.device) -> Row:
    """World size 1 process group (FSDP2 and DCP need one) and its first all-reduce."""
    backend = "nccl" if device.type == "cuda" else "gloo"
    store = dist.FileStore(tempfile.mktemp(prefix="plait-store-"), 1)
    t = time.perf_counter()
    dist.init_process_group(
        backend, store=store, rank=0, world_size=1,
        device_id=device if device.type == "cuda" else None,
    )  # fmt: skip
    x = torch.ones(1, device=device)
    dist.all_reduce(x)
    sync(device)
    sec = time.perf_counter() - t
    v = torch.cuda.nccl.version() if backend == "nccl" else ""
    note = f"nccl {'.'.join(map(str, v)) if isinstance(v, tuple) else v}" if v else ""
    return Row(
        f"{backend} init + first all-reduce", value=f"{sec:.2f}s",
        note=note or "cpu; gloo instead of nccl", extra={"seconds": sec},
    )  # fmt: skip


def fmt(v, spec: str) -> str:
    return "-" if v is None else format(v, spec)


def table(rows: list[Row]) -> str:
    head = f"{'check':<38} {'tokens/s':>12} {'MFU':>7} {'peak GiB':>9}  {'value':<28} note"
    lines = [head, "-" * len(head)]
    for r in rows:
        lines.append(
            f"{r.check:<38} {fmt(r.tokens_per_s, ',.0f'):>12} {fmt(r.mfu, '.1%'):>7} "
            f"{fmt(r.peak_gib, '.2f'):>9}  {r.value:<28} {r.note.rstrip('; ')}"
        )
    return "\n".join(lines)


def run(dry_run: bool, steps: int, out: Path) -> list[Row]:
    cuda = torch.cuda.is_available()
    device = torch.device("cuda", 0) if cuda else torch.device("cpu")
    if cuda:
        torch.cuda.set_device(device)
    small = dry_run or not cuda
    if not cuda and not dry_run:
        print("no CUDA device: running the dry-run sizes on CPU (rows marked cpu)", flush=True)
    size = TINY if small else FULL
    warmup, steps = (1, min(steps, 2)) if small else (3, steps)
    tag = "cpu; " if not cuda else ("dry-run; " if dry_run else "")
    if small and not cuda:  # inductor's C++ build takes minutes on CPU: trace with dynamo only
        _compile = torch.nn.Module.compile
        torch.nn.Module.compile = lambda self, **kw: _compile(self, backend="eager")
    ac = choose_checkpointing(size, device, warmup + steps)
    if ac != "none":
        tag += f"activation checkpoint {ac}; "
    rows = [init_group(device)]
    try:
        results = {}
        for comp in (False, True):
            cfg = make_config(size, device, warmup + steps, ac, comp)
            raw, model, opt = raw_row(cfg, device, warmup, steps, tag)
            del model, opt
            ours = plait_row(cfg, device, warmup, steps, tag + "plait's optimizer as configured")
            if not comp:
                results["plait_peak"] = ours.peak_gib
                results["cfg"] = cfg
            ratio = ours.tokens_per_s / raw.tokens_per_s
            ours.value += f", x{ratio:.3f} raw"
            ours.extra["ratio_vs_raw"] = ratio
            rows += [raw, ours]
            print(
                f"tokens_per_s compile {'on' if comp else 'off'}: ours {ours.tokens_per_s:,.0f}, "
                f"baseline {raw.tokens_per_s:,.0f}, ratio {ratio:.3f} (target >= 0.98)",
                flush=True,
            )
        cfg = results["cfg"]
        plain = rows[1]
        fsdp, model, opt = raw_row(cfg, device, warmup, steps, tag, fsdp=True)
        fsdp.value += f", x{fsdp.tokens_per_s / plain.tokens_per_s:.3f} plain"
        rows.append(fsdp)
        rows.append(dcp_row(model, opt, device, tag))
        del model, opt
        if cuda:
            total = torch.cuda.get_device_properties(device).total_memory
            pred = predicted_bytes(cfg, total) / GiB
            meas = results["plait_peak"]
            err = meas / pred - 1
            rows.append(Row(
                "peak memory: plait vs plait plan", peak_gib=meas,
                value=f"plan {pred:.2f} GiB ({err:+.1%})",
                note=tag + ("within 10%" if abs(err) <= 0.10 else "OUTSIDE the 10% target"),
                extra={"predicted_gib": pred, "measured_gib": meas, "error": err},
            ))  # fmt: skip
        else:
            rows.append(Row("peak memory: plait vs plait plan", note="skipped (CUDA only)"))
    finally:
        dist.destroy_process_group()
    print(table(rows), flush=True)
    out.parent.mkdir(parents=True, exist_ok=True)
    meta = {
        "device": torch.cuda.get_device_name(device) if cuda else "cpu",
        "torch": torch.__version__, "dry_run": dry_run, "size": size, "steps": steps,
        "activation_checkpoint": ac,
    }  # fmt: skip
    out.write_text(json.dumps({"meta": meta, "rows": [asdict(r) for r in rows]}, indent=1) + "\n")
    print(f"written {out}", flush=True)
    return rows


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--dry-run", action="store_true", help="tiny size (CPU in CI)")
    ap.add_argument("--steps", type=int, default=15, help="timed steps per row")
    ap.add_argument("--out", type=Path, default=Path("runs/gpu_check.json"))
    a = ap.parse_args(argv)
    os.environ.setdefault("TORCH_NCCL_ASYNC_ERROR_HANDLING", "1")
    run(a.dry_run, a.steps, a.out)


if __name__ == "__main__":
    sys.exit(main())
