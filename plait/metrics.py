"""Run output on rank 0: metrics.jsonl, TensorBoard, wandb (offline by default), console and a
progress bar. Other ranks get a writer that does nothing, so callers never branch on rank.

TensorBoard and wandb take seconds to import and start, so they start in a background thread
once the first record is out (off the path to the first step, whose CPU they would share);
records logged before they are up are handed to them once they are (jsonl and console are
written at once)."""

from __future__ import annotations

import importlib.util
import json
import math
import os
import resource
import sys
import threading
import warnings
from pathlib import Path
from typing import Any

import torch
import yaml
from tqdm import tqdm

from plait.config import Config
from plait.errors import ConfigError, PlaitError
from plait.observe.console import console_fields


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
        self._starting: threading.Thread | None = None
        self._failed: Exception | None = None  # raised on the calling thread by _backends_up
        self._pending: list[tuple[dict[str, float], int]] = []  # scalars before the backends
        if not enabled:
            return
        run_dir.mkdir(parents=True, exist_ok=True)
        (run_dir / "config.yaml").write_text(yaml.safe_dump(cfg.to_dict(), sort_keys=False))
        path = run_dir / "metrics.jsonl"
        if path.is_file():  # resumed: drop records past the checkpoint, they are about to be redone
            records = _records(path)
            if records and start_step == 0:  # a fresh start over an earlier run: keep its record
                aside = _free_name(path)
                os.replace(path, aside)
                warnings.warn(
                    f"{str(path)!r} held an earlier run: kept as {str(aside)!r}", stacklevel=2
                )
            else:
                kept = [ln for ln, r in records if r.get("step", 0) <= start_step]
                path.write_text("".join(ln + "\n" for ln in kept))
        self._jsonl = open(path, "a", buffering=1)
        if cfg.log.wandb == "online" and importlib.util.find_spec("wandb") is None:
            raise ConfigError(
                "log.wandb: 'online' needs the wandb package (pip install 'plait[wandb]'), or set log.wandb=off"
            )
        if cfg.log.tensorboard or cfg.log.wandb != "off":  # started by the first log()
            self._starting = threading.Thread(
                target=self._start_backends, args=(cfg, run_dir), daemon=True
            )
        show = cfg.log.progress == "on" or (cfg.log.progress == "auto" and sys.stderr.isatty())
        if show:
            self._bar = tqdm(
                total=total_steps, initial=start_step, desc=cfg.name, dynamic_ncols=True
            )

    def _start_backends(self, cfg: Config, run_dir: Path) -> None:
        """In the background thread: TensorBoard's writer and the wandb run."""
        try:
            if cfg.log.tensorboard:
                # deferred: TensorBoard takes about a second to import; off the first step's path
                from torch.utils.tensorboard import SummaryWriter

                self._tb = SummaryWriter(log_dir=str(run_dir / "tensorboard"))
            if cfg.log.wandb != "off":
                self._wandb = self._start_wandb(cfg, run_dir)
        except Exception as e:  # noqa: BLE001 - handed to the training thread
            self._failed = e

    def _backends_up(self, wait: bool) -> bool:
        """True once TensorBoard/wandb are started (``wait``: block until they are); hands
        them the records logged meanwhile."""
        if self._starting is not None:
            if not wait and (self._starting.ident is None or self._starting.is_alive()):
                return False
            if self._starting.ident is None:  # closed before any record: start it now
                self._starting.start()
            self._starting.join()
            self._starting = None
            if self._failed is not None:
                raise self._failed
            for scalars, step in self._pending:
                self._write_backends(scalars, step)
            self._pending.clear()
        return True

    @staticmethod
    def _start_wandb(cfg: Config, run_dir: Path):
        try:
            import wandb  # deferred: an optional extra, seconds to import
        except ImportError:
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
        if self._backends_up(wait=False):
            self._write_backends(scalars, step)
        else:
            self._pending.append((scalars, step))
        line = f"step {step:>5} | " + " | ".join(console_fields(record))
        evals = [_fmt(k, v) for k, v in record.items() if k.startswith("eval_")]
        if evals:
            line += " | " + " | ".join(evals)
        if self._bar is not None:
            self._bar.update(step - self._bar.n)
            self._bar.write(line)
        else:
            print(line, flush=True)
        if self._starting is not None and self._starting.ident is None:
            self._starting.start()

    def _write_backends(self, scalars: dict[str, float], step: int) -> None:
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

    def close(self) -> None:
        if not self.enabled:
            return
        self._backends_up(wait=True)
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
        raise PlaitError(
            f"{str(run_dir)!r} has no metrics.jsonl; pass a run folder written by plait train"
        )
    return [r for _, r in _records(path)]


def _records(path: Path) -> list[tuple[str, dict[str, Any]]]:
    """``(line, record)`` per line; a line that is not a JSON object (the last one, half-written
    when a job was killed) is skipped with a one-line warning."""
    out = []
    for n, line in enumerate(path.read_text(errors="replace").splitlines(), 1):
        if not line.strip():
            continue
        try:
            rec = json.loads(line)
        except ValueError:
            rec = None
        if isinstance(rec, dict):
            out.append((line, rec))
        else:
            warnings.warn(
                f"{str(path)!r} line {n} is not a JSON record (half-written?): skipped",
                stacklevel=3,
            )
    return out


def _free_name(path: Path) -> Path:
    n = 1
    while (p := path.with_name(f"{path.name}.replaced-{n}")).exists():
        n += 1
    return p
