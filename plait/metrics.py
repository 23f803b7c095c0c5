"""Run output on rank 0: metrics.jsonl, TensorBoard, wandb (offline by default), console and a
progress bar. Other ranks get a writer that does nothing, so callers never branch on rank."""

from __future__ import annotations

import json
import math
import resource
import sys
from pathlib import Path
from typing import Any

import torch
import yaml

from plait.config import Config


def peak_mem_bytes(device: torch.device) -> int:
    """Peak device memory (CUDA allocator) or peak resident set size of this process (CPU)."""
    if device.type == "cuda":
        return int(torch.cuda.max_memory_allocated(device))
    return int(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss) * 1024  # Linux reports KiB


def _fmt(k: str, v: Any) -> str:
    if isinstance(v, float):
        if k == "lr":
            return f"{k} {v:.2e}"
        if k.endswith("_per_s"):
            return f"{k} {v:,.0f}"
        return f"{k} {v:.4f}"
    return f"{k} {v}"


class MetricsWriter:
    def __init__(
        self, cfg: Config, run_dir: Path, *, enabled: bool, total_steps: int, start_step: int = 0
    ):
        self.enabled = enabled
        self.run_dir = run_dir
        self._tb = self._wandb = self._bar = None
        self._jsonl = None
        if not enabled:
            return
        run_dir.mkdir(parents=True, exist_ok=True)
        (run_dir / "config.yaml").write_text(yaml.safe_dump(cfg.to_dict(), sort_keys=False))
        path = run_dir / "metrics.jsonl"
        if path.is_file():  # resumed: drop records past the checkpoint, they are about to be redone
            kept = [
                ln
                for ln in path.read_text().splitlines()
                if ln.strip() and json.loads(ln)["step"] <= start_step
            ]
            path.write_text("".join(ln + "\n" for ln in kept))
        self._jsonl = open(path, "a", buffering=1)
        if cfg.log.tensorboard:
            from torch.utils.tensorboard import SummaryWriter

            self._tb = SummaryWriter(log_dir=str(run_dir / "tensorboard"))
        if cfg.log.wandb != "off":
            self._wandb = self._start_wandb(cfg, run_dir)
        show = cfg.log.progress == "on" or (cfg.log.progress == "auto" and sys.stderr.isatty())
        if show:
            from tqdm import tqdm

            self._bar = tqdm(
                total=total_steps, initial=start_step, desc=cfg.name, dynamic_ncols=True
            )

    @staticmethod
    def _start_wandb(cfg: Config, run_dir: Path):
        try:
            import wandb
        except ImportError:
            if cfg.log.wandb == "online":
                from plait.errors import ConfigError

                raise ConfigError(
                    "log.wandb: 'online' needs the wandb package (pip install 'plait[wandb]'), or set log.wandb=off"
                ) from None
            return None  # offline is the default: quietly skip when the extra is not installed
        return wandb.init(
            project=cfg.log.wandb_project, name=run_dir.name, dir=str(run_dir), mode=cfg.log.wandb,
            config=cfg.to_dict(), settings=wandb.Settings(silent=True, console="off"),
        )  # fmt: skip

    def log(self, record: dict[str, Any]) -> None:
        if not self.enabled:
            return
        self._jsonl.write(json.dumps(record) + "\n")
        step = record["step"]
        scalars = {
            k: v
            for k, v in record.items()
            if isinstance(v, (int, float)) and k != "step" and math.isfinite(v)
        }
        if self._tb is not None:
            for k, v in scalars.items():
                self._tb.add_scalar(
                    k
                    if "/" in k
                    else f"train/{k}"
                    if not k.startswith("eval")
                    else f"eval/{k[5:]}",
                    v,
                    step,
                )
        if self._wandb is not None:
            self._wandb.log(scalars, step=step)
        from plait.observe.console import console_fields

        line = f"step {step:>5} | " + " | ".join(console_fields(record))
        evals = [_fmt(k, v) for k, v in record.items() if k.startswith("eval_")]
        if evals:
            line += " | " + " | ".join(evals)
        if self._bar is not None:
            self._bar.update(step - self._bar.n)
            self._bar.write(line)
        else:
            print(line, flush=True)

    def close(self) -> None:
        if not self.enabled:
            return
        if self._bar is not None:
            self._bar.close()
        if self._tb is not None:
            self._tb.close()
        if self._wandb is not None:
            self._wandb.finish()
        self._jsonl.close()


def read_metrics(run_dir: str | Path) -> list[dict[str, Any]]:
    path = Path(run_dir) / "metrics.jsonl"
    if not path.is_file():
        from plait.errors import PlaitError

        raise PlaitError(
            f"{str(run_dir)!r} has no metrics.jsonl; pass a run folder written by plait train"
        )
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
