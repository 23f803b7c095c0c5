"""The trainer's one handle on observability: call :meth:`before_step` and :meth:`after_step`
around each step (every rank: the straggler gather is a collective), :meth:`on_error` when a
step raises and :meth:`close` at the end."""

from __future__ import annotations

import time
from pathlib import Path

import torch

from plait.config import Config
from plait.mesh import ParallelDims
from plait.observe.banner import banner
from plait.observe.flops import flops_per_token
from plait.observe.memory import MemorySnapshot, memory_record
from plait.observe.peaks import device_peak
from plait.observe.profile import StepProfiler
from plait.observe.straggler import gather_busy, straggler_record
from plait.observe.window import Window


class Observer:
    def __init__(
        self, cfg: Config, dims: ParallelDims, *, rank: int, world: int, device: torch.device,
        run_dir: Path, task: str, params: int, engine, start_step: int,
    ):  # fmt: skip
        self.cfg, self.rank, self.device = cfg, rank, device
        self.unit = "tokens" if task == "lm" else "samples"
        fpt = flops_per_token(cfg) if self.unit == "tokens" else None
        self.peak = device_peak(device) if rank == 0 and fpt else None  # CPU: a short matmul
        self.fpt = fpt
        self.window = Window(self.unit, world, fpt, self.peak.flops if self.peak else None)
        self.profiler = StepProfiler(cfg.log.profile_steps, run_dir, rank, device)
        self.snapshot = MemorySnapshot(cfg.log.memory_snapshot, run_dir, rank, device)
        self.start_step, self._t0 = start_step, None
        if rank == 0:
            text = banner(
                cfg, dims, params=params, engine=engine, device=str(device), world=world,
                run_dir=run_dir, unit=self.unit, flops_per_token=fpt, peak=self.peak,
            )  # fmt: skip
            print(text, flush=True)

    def run_info(self) -> dict:
        """For run.json: how MFU is counted in this run."""
        info = {"unit": self.unit, "flops_per_token": self.fpt}
        if self.peak:
            info.update(peak_flops=self.peak.flops, peak_name=self.peak.name)
            info["peak_source"] = self.peak.source
        return {"observe": info}

    def logged(self, done: int) -> bool:
        return done % self.cfg.log.every == 0 or done == self.cfg.train.steps

    def before_step(self, done: int) -> None:
        """``done``: the 1-based number of the step about to run."""
        if self._t0 is None:
            self._t0 = time.perf_counter()
        self.profiler.before_step(done)

    def after_step(self, rec: dict, done: int) -> None:
        """Adds the interval's figures to ``rec`` on logged steps."""
        self.profiler.after_step(done)
        self.snapshot.after_step(done)
        self.window.add(rec)
        if not self.logged(done):
            return
        busy = self.window.busy_s
        rec.update(self.window.flush())
        rec.update(memory_record(self.device))
        # the same keys on one process as on many: a run folder reads the same from any launcher
        times = gather_busy(busy, self.device)
        rec.update(straggler_record(times, self.cfg.log.straggler_factor))
        elapsed = time.perf_counter() - self._t0
        rec["eta_s"] = elapsed / (done - self.start_step) * (self.cfg.train.steps - done)

    def on_error(self, err: BaseException) -> None:
        self.snapshot.on_error(err)

    def close(self) -> None:
        self.profiler.stop()
        self.snapshot.stop()
