"""The token loader against what training consumes.

A sparse flat uint16 token file of 2^33 tokens (16 GiB, made with truncate: no disk used) is
read by ``data.name=tokens`` with gpt_small's batch shape (global_batch 16, seq_len 256):
time to the first batch (open, memmap, first permutation), loader tokens/s over many steps,
the same figure as a ratio to the tokens/s gpt_small training reaches here (a few measured
steps of plait's own loop), and the loader's resident memory above the process baseline.

    python bench/data.py [loader_steps] [train_steps] [device]   (device: cpu, cuda)
"""

from __future__ import annotations

import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import psutil
import torch

from plait.config import load_config
from plait.data.tokens import TokenData
from plait.mesh import ParallelDims
from plait.trainer import _Step

TOKENS = 2**33


def rss() -> int:
    return psutil.Process().memory_info().rss


def loader(path: Path, steps: int) -> tuple[float, float, int, int]:
    cfg = load_config(
        "configs/gpt_small.yaml",
        ["data.name=tokens", f"data.path={path}", "data.dtype=uint16", "data.eval_fraction=0"],
    )
    B, T = cfg.train.global_batch, cfg.data.seq_len
    base = rss()
    t0 = time.perf_counter()
    data = TokenData(0, cfg.data)
    data.sample("train", 0, 0, B, B)
    first = time.perf_counter() - t0
    t0 = time.perf_counter()
    for k in range(1, steps + 1):
        data.sample("train", k * 997, 0, B, B)  # spread over the epoch
    rate = steps * B * T / (time.perf_counter() - t0)
    return first, rate, rss() - base, data.sources[0].n


def training_rate(steps: int, device: str) -> float:
    cfg = load_config(
        "configs/gpt_small.yaml",
        ["log.wandb=off", "log.tensorboard=false", f"log.run_dir={tempfile.mkdtemp()}",
         f"train.steps={steps + 1}", "optim.warmup_steps=0", "data.prefetch=false",
         f"train.device={device}"],
    )  # fmt: skip
    step = _Step(cfg, ParallelDims.from_config(cfg, 1), None, torch.device(device), 0)
    step.run(0)  # warm-up
    return statistics.median(step.run(k)["tokens_per_s"] for k in range(1, steps + 1))


def main(loader_steps: int = 2000, train_steps: int = 5, device: str = "cpu") -> None:
    with tempfile.TemporaryDirectory() as d:
        f = Path(d) / "tokens.bin"
        with open(f, "wb") as fh:
            fh.truncate(TOKENS * 2)  # sparse: reads as zeros, occupies no blocks
        assert os.stat(f).st_blocks == 0 or os.stat(f).st_blocks * 512 < 1 << 20
        first, rate, mem, n = loader(f, loader_steps)
    train = training_rate(train_steps, device)
    print(f"file: 2^33 uint16 tokens (16 GiB sparse), {n:,} sequences of 257")
    print(f"time to first batch: {first * 1000:.1f} ms")
    print(f"loader: ours {rate:,.0f} tokens/s, baseline gpt_small training on {device} {train:,.0f} tokens/s, "
          f"ratio {rate / train:.0f}x (target >= 20x)")  # fmt: skip
    print(f"loader resident memory above baseline: {mem / 2**20:.1f} MB (target < 300 MB)")


if __name__ == "__main__":
    a = sys.argv[1:]
    main(*(int(x) for x in a[:2]), *a[2:3])
