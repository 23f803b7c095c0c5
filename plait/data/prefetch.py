"""Read the next step's slice in a background thread while the current step runs.

Batches are a pure function of (seed, step), so reading ahead changes nothing but timing; the
wait the step still sees is returned (``data_wait_s``). On CUDA the slice is pinned and copied
to the device on a side stream in the same thread; the step's stream waits on that copy only.
"""

from __future__ import annotations

import time
from concurrent.futures import Future, ThreadPoolExecutor

import torch

from plait.data.base import Batch, StepData


class Prefetcher:
    def __init__(
        self,
        data: StepData,
        lo: int,
        hi: int,
        global_batch: int,
        device: torch.device,
        *,
        enabled: bool = True,
        steps: int | None = None,
    ):
        self.data, self.lo, self.hi, self.B, self.steps = data, lo, hi, global_batch, steps
        self.device = device
        self.cuda = device.type == "cuda"
        self.stream = torch.cuda.Stream(device) if self.cuda and enabled else None
        self.pool = ThreadPoolExecutor(1, thread_name_prefix="plait-data") if enabled else None
        self.pending: tuple[int, Future] | None = None

    def _load(self, step: int) -> tuple[Batch, torch.cuda.Event | None]:
        batch = self.data.sample("train", step, self.lo, self.hi, self.B)
        if self.stream is None:
            return batch, None
        with torch.cuda.stream(self.stream):
            batch = {k: v.pin_memory().to(self.device, non_blocking=True) for k, v in batch.items()}
            ev = torch.cuda.Event()
            ev.record(self.stream)
        return batch, ev

    def get(self, step: int) -> tuple[Batch, float]:
        """The slice of ``step`` and the seconds this call waited for it."""
        t0 = time.perf_counter()
        if self.pending is not None and self.pending[0] == step:
            batch, ev = self.pending[1].result()
        else:  # first step, a resume, or prefetch off
            batch, ev = self._load(step)
        self.pending = None
        if ev is not None:
            cur = torch.cuda.current_stream(self.device)
            cur.wait_event(ev)
            for v in batch.values():
                v.record_stream(cur)  # the side stream's allocator must not reuse it early
        wait = time.perf_counter() - t0
        if self.pool is not None and (self.steps is None or step + 1 < self.steps):
            self.pending = (step + 1, self.pool.submit(self._load, step + 1))
        return batch, wait

    def close(self) -> None:
        if self.pool is not None:
            self.pool.shutdown(wait=True, cancel_futures=True)
            self.pending = None
