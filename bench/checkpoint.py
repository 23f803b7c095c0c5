"""Checkpoint cost against a plain ``torch.save`` of the same state, and the time a killed rank
costs end to end.

1. Save / load time and bytes vs model size (gpt, fp32, Adam state present): plait's DCP
   Checkpointer (sync; async: the time the step loop is blocked, and until the files are
   committed) against ``torch.save({model, optimizer})`` into one file and
   ``torch.load(weights_only=True)`` + ``load_state_dict``. One rank of a 1-process gloo group.
2. Kill -> restart -> resumed step: ``plait launch torchrun --nproc 2 --max-restarts 1``; rank 1
   dies (os._exit) right after the step-4 checkpoint is committed; measured from the kill to the
   first step logged after the resume, against the cold start of the same job (launch -> step 1).

    python bench/checkpoint.py [--sizes 2,4,8] [--no-restart]

Prints ``name: ours X, baseline Y, ratio Z``.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
import torch.distributed as dist

from plait import checkpoint as ck
from plait.config import load_config
from plait.models import build_model, param_count
from plait.optim import build_optimizer

ROOT = Path(__file__).resolve().parents[1]


def _bytes(path: Path) -> int:
    return (
        sum(p.stat().st_size for p in path.rglob("*") if p.is_file())
        if path.is_dir()
        else path.stat().st_size
    )


def _state(layers: int, dim: int):
    cfg = load_config(None, ["model.name=gpt", f"model.n_layers={layers}", f"model.dim={dim}",
                             "model.n_heads=8", "model.n_kv_heads=8", "optim.name=adam", "data.seq_len=16"])  # fmt: skip
    model = build_model(cfg)
    model.to_empty(device="cpu")
    model.init_weights(0)
    opt = build_optimizer(model, cfg.optim)
    for p in model.parameters():  # one step, so Adam's moments exist (3x the weights in all)
        p.grad = torch.randn_like(p) * 1e-3
    opt.step()
    return cfg, model, opt


def _timed(fn) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def _measure(tmp: Path, cfg, model, opt) -> tuple[dict[str, float], int, int]:
    """One round: times of every side, and the bytes of ours and of the baseline."""
    base = tmp / "base.pt"
    t = {
        "base_save": _timed(
            lambda: torch.save({"model": model.state_dict(), "optim": opt.state_dict()}, base)
        )
    }

    def base_load():
        s = torch.load(base, weights_only=True)
        model.load_state_dict(s["model"])
        opt.load_state_dict(s["optim"])

    t["base_load"] = _timed(base_load)
    kw = dict(every=1, keep=1, layout={"world_size": 1}, config=cfg.to_dict())
    sync = ck.Checkpointer(tmp / "sync", async_save=False, **kw)
    t["save"] = _timed(lambda: sync.save(1, model, opt))
    path = sync.latest()
    t["load"] = _timed(lambda: ck.load(path, model, opt))
    asy = ck.Checkpointer(tmp / "async", async_save=True, **kw)
    t0 = time.perf_counter()
    asy.save(1, model, opt)
    t["block"] = time.perf_counter() - t0
    asy.wait()
    t["async_total"] = time.perf_counter() - t0
    sizes = _bytes(path), _bytes(base)
    for p in (tmp / "sync", tmp / "async"):
        shutil.rmtree(p)
    base.unlink()
    return t, *sizes


def sizes_bench(dims: list[int], repeat: int) -> None:
    tmp = Path(tempfile.mkdtemp(prefix="plait-ckbench-"))
    try:
        for dim in dims:
            cfg, model, opt = _state(4, dim * 64)
            name = f"{param_count(model) / 1e6:.0f}M params"
            b: dict[str, float] = {}
            for _ in range(repeat):  # best of: the disk cache and the machine are noisy
                t, size, base_size = _measure(tmp, cfg, model, opt)
                b = {k: min(v, b.get(k, v)) for k, v in t.items()}
            print(f"save {name} (sync): ours {b['save']:.3f} s, baseline torch.save {b['base_save']:.3f} s, "
                  f"ratio {b['save'] / b['base_save']:.2f}")  # fmt: skip
            print(f"save {name} (async, loop blocked): ours {b['block']:.3f} s, baseline torch.save "
                  f"{b['base_save']:.3f} s, ratio {b['block'] / b['base_save']:.2f} "
                  f"(committed after {b['async_total']:.3f} s)")  # fmt: skip
            print(f"load {name}: ours {b['load']:.3f} s, baseline torch.load {b['base_load']:.3f} s, "
                  f"ratio {b['load'] / b['base_load']:.2f}")  # fmt: skip
            print(f"bytes {name}: ours {size / 1e6:.1f} MB, baseline {base_size / 1e6:.1f} MB, "
                  f"ratio {size / base_size:.3f}")  # fmt: skip
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


KILL = """import os, threading, time
if os.environ.get("RANK") == "1" and os.environ.get("TORCHELASTIC_RESTART_COUNT") == "0":
    def _watch(path=os.environ["PLAIT_BENCH_CKPT"] + "/step-00000004/manifest.json"):
        while not os.path.exists(path):
            time.sleep(0.005)
        with open(os.environ["PLAIT_BENCH_KILLED"], "w") as f:
            f.write(repr(time.time()))
        os._exit(3)
    threading.Thread(target=_watch, daemon=True).start()
"""
JOB = ["configs/gpt_tiny.yaml", "train.steps=8", "optim.warmup_steps=1", "model.n_layers=2", "data.seq_len=32", "log.every=1",
       "log.wandb=off", "log.tensorboard=false", "log.progress=off", "checkpoint.every=2", "train.eval_every=0"]  # fmt: skip


def restart_bench() -> None:
    tmp = Path(tempfile.mkdtemp(prefix="plait-restart-"))
    try:
        (tmp / "inject").mkdir()
        (tmp / "inject" / "sitecustomize.py").write_text(KILL)
        run, killed = tmp / "run", tmp / "killed"
        env = {**os.environ, "PYTHONPATH": str(tmp / "inject"), "PLAIT_BENCH_KILLED": str(killed),
               "PLAIT_BENCH_CKPT": str(run / "checkpoints")}  # fmt: skip
        argv = [sys.executable, "-m", "plait.cli", "launch", "torchrun", *JOB, "--run-dir", str(run),
                "--nproc", "2", "--max-restarts", "1", "--rdzv-timeout", "60"]  # fmt: skip
        t0 = time.time()
        p = subprocess.Popen(argv, cwd=ROOT, env=env, text=True, stdout=subprocess.PIPE,
                             stderr=subprocess.STDOUT, start_new_session=True)  # fmt: skip
        first = resumed_at = resumed_step = None
        log = []
        for line in p.stdout:
            now = time.time()
            log.append(line)
            if "step     1 |" in line and first is None:
                first = now - t0
            if "resumed from" in line:
                resumed_at = now
            if resumed_at and line.startswith("step") and resumed_step is None:
                resumed_step = now
        p.wait(timeout=300)
        if p.returncode or None in (first, resumed_step) or not killed.exists():
            print(f"restart cycle: failed (rc {p.returncode}):\n{''.join(log[-30:])}")
            return
        cycle = resumed_step - float(killed.read_text())
        print(f"kill -> restart -> resumed step: ours {cycle:.1f} s, baseline cold start to step 1 "
              f"{first:.1f} s, ratio {cycle / first:.2f}")  # fmt: skip
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--sizes", default="2,4,8", help="model width in units of 64 (4 blocks each)")
    ap.add_argument("--repeat", type=int, default=2)
    ap.add_argument("--no-restart", action="store_true")
    a = ap.parse_args()
    os.environ.setdefault("MASTER_ADDR", "127.0.0.1")
    os.environ.setdefault("MASTER_PORT", "29531")
    dist.init_process_group("gloo", rank=0, world_size=1)
    try:
        sizes_bench([int(s) for s in a.sizes.split(",")], a.repeat)
    finally:
        dist.destroy_process_group()
    if not a.no_restart:
        restart_bench()


if __name__ == "__main__":
    main()
