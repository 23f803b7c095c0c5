"""Memory on the console line, and CUDA memory snapshots (PyTorch's memory_viz format)."""

from __future__ import annotations

import os
import resource
from pathlib import Path

import torch

GiB = 1024**3


def rss_bytes() -> int:
    """Resident set size of this process now (Linux /proc; the peak elsewhere)."""
    try:
        pages = int(Path("/proc/self/statm").read_text().split()[1])
        return pages * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def memory_record(device: torch.device) -> dict[str, float]:
    """CUDA allocator figures (allocated now, reserved now, peak allocated) or the process's
    resident memory on CPU, in GiB."""
    rec = {"mem_rss_gib": rss_bytes() / GiB}
    if device.type == "cuda":
        rec["mem_cuda_allocated_gib"] = torch.cuda.memory_allocated(device) / GiB
        rec["mem_cuda_reserved_gib"] = torch.cuda.memory_reserved(device) / GiB
        rec["mem_cuda_peak_gib"] = torch.cuda.max_memory_allocated(device) / GiB
    return rec


class MemorySnapshot:
    """Records CUDA allocator history from the start and dumps it after step ``at`` (and on
    out-of-memory) to <run>/memory/rank<r>_step<N>.pickle; open at pytorch.org/memory_viz."""

    def __init__(self, at: int, run_dir: Path, rank: int, device: torch.device):
        self.at, self.dir, self.rank = at, run_dir / "memory", rank
        self.on = bool(at) and device.type == "cuda"
        if self.on:
            torch.cuda.memory._record_memory_history(max_entries=100_000)

    def dump(self, tag: str) -> Path | None:
        if not self.on:
            return None
        self.dir.mkdir(parents=True, exist_ok=True)
        path = self.dir / f"rank{self.rank}_{tag}.pickle"
        torch.cuda.memory._dump_snapshot(str(path))
        return path

    def after_step(self, step: int) -> None:
        if self.on and step == self.at:
            self.dump(f"step{step}")
            self.stop()

    def on_error(self, err: BaseException) -> None:
        if self.on and isinstance(err, torch.cuda.OutOfMemoryError):
            path = self.dump("oom")
            print(f"rank {self.rank}: out of memory; snapshot in {path}", flush=True)

    def stop(self) -> None:
        if self.on:
            torch.cuda.memory._record_memory_history(enabled=None)
            self.on = False
