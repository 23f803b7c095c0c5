"""Where one step's time goes: data, waiting at the step's first collective, forward+backward,
optimizer. On CUDA the marks are stream events (no extra synchronisation; read once the step
has synchronised), on CPU wall-clock times."""

from __future__ import annotations

import time

import torch


class StepClock:
    def __init__(self, device: torch.device):
        self.cuda = device.type == "cuda"
        self._marks: list[tuple[str, object]] = []

    def _now(self):
        if self.cuda:
            ev = torch.cuda.Event(enable_timing=True)
            ev.record()
            return ev
        return time.perf_counter()

    def start(self) -> None:
        self._marks = [("", self._now())]

    def mark(self, name: str) -> None:
        """End of the segment ``name`` (it began at the previous mark)."""
        self._marks.append((name, self._now()))

    def read(self) -> dict[str, float]:
        """Seconds per segment; call after the step's last synchronisation."""
        out = {}
        for (_, a), (name, b) in zip(self._marks, self._marks[1:]):
            out[name] = a.elapsed_time(b) / 1e3 if self.cuda else b - a
        return out
