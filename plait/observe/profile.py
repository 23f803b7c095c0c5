"""torch.profiler over a range of steps, one Chrome trace per rank in <run>/profile (opens in
Perfetto, chrome://tracing and TensorBoard's profiler plugin: the *.pt.trace.json name)."""

from __future__ import annotations

from pathlib import Path

import torch
from torch.profiler import ProfilerActivity, profile, record_function


class StepProfiler:
    """``steps`` is [first, last], 1-based and inclusive; empty: off."""

    def __init__(self, steps: list[int], run_dir: Path, rank: int, device: torch.device):
        self.first, self.last = steps if steps else (0, -1)
        self.path = run_dir / "profile" / f"rank{rank}.pt.trace.json"
        self.activities = [ProfilerActivity.CPU]
        if device.type == "cuda":
            self.activities.append(ProfilerActivity.CUDA)
        self._prof = self._span = None

    def before_step(self, step: int) -> None:
        if step == self.first:
            self._prof = profile(activities=self.activities, record_shapes=True)
            self._prof.start()
        if self._prof is not None:  # each step a named span on the trace's timeline
            self._span = record_function(f"plait step {step}")
            self._span.__enter__()

    def after_step(self, step: int) -> None:
        if self._prof is None:
            return
        self._end_span()
        if step == self.last:
            self.stop()

    def _end_span(self) -> None:
        if self._span is not None:
            self._span.__exit__(None, None, None)
            self._span = None

    def stop(self) -> None:
        """Ends profiling and writes the trace (also when the run ends inside the range)."""
        if self._prof is None:
            return
        self._end_span()
        prof, self._prof = self._prof, None
        prof.stop()
        self.path.parent.mkdir(parents=True, exist_ok=True)
        prof.export_chrome_trace(str(self.path))
