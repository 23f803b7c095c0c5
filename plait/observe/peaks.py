"""Dense bf16 peak FLOP/s per device, the MFU denominator (docs/design.md: 6N + 12·L·H·Q·T per token
against the dense bf16 peak). GPUs come from a table, each number with its source; a CPU has no
datasheet figure that torch reaches, so its peak is measured once by a short fp32 matmul and
cached per CPU model and thread count."""

from __future__ import annotations

import json
import os
import platform
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from plait.plan.hardware import GPUS


@dataclass(frozen=True)
class Peak:
    name: str
    flops: float  # FLOP/s per device
    source: str


# (substrings that must all appear in torch.cuda.get_device_name(), lower case) -> peak.
# Order matters: the first match wins (PCIe / NVL before the bare H100, which is the SXM part).
TABLE: list[tuple[tuple[str, ...], Peak]] = [
    (("h100", "pcie"), Peak("H100 PCIe", 756e12,
        "NVIDIA H100 datasheet: 1,513 TFLOPS bf16 with sparsity = 756 dense (PCIe)")),
    (("h100", "nvl"), Peak("H100 NVL", 835e12,
        "NVIDIA H100 datasheet: 1,671 TFLOPS bf16 with sparsity = 835 dense (NVL)")),
    (("h100",), Peak(GPUS["h100"].name, GPUS["h100"].peak_flops, GPUS["h100"].source)),
    (("h200",), Peak(GPUS["h200"].name, GPUS["h200"].peak_flops, GPUS["h200"].source)),
    (("gh200",), Peak("GH200", 989.4e12, "NVIDIA GH200 datasheet: 989 TFLOPS bf16 dense")),
    (("a100",), Peak(GPUS["a100"].name, GPUS["a100"].peak_flops, GPUS["a100"].source)),
    (("b200",), Peak("B200", 2.25e15,
        "NVIDIA HGX B200 datasheet: 36 PFLOPS bf16 with sparsity per 8 GPUs = 2.25 PF dense each")),
    (("l40s",), Peak("L40S", 362.05e12,
        "NVIDIA L40S datasheet: 733 TFLOPS bf16 with sparsity = 362 dense")),
    (("mi300x",), Peak("MI300X", 1307.4e12,
        "AMD Instinct MI300X datasheet: 1,307.4 TFLOPS bf16 dense (2,614.9 with sparsity)")),
]  # fmt: skip


def gpu_peak(device_name: str) -> Peak | None:
    """The table's entry for a CUDA/ROCm device name, or None for a device not in it."""
    low = device_name.lower()
    for keys, peak in TABLE:
        if all(k in low for k in keys):
            return peak
    return None


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _cache_path() -> Path:
    """$PLAIT_CACHE_DIR, else $XDG_CACHE_HOME/plait, else ~/.cache/plait."""
    if os.environ.get("PLAIT_CACHE_DIR"):
        return Path(os.environ["PLAIT_CACHE_DIR"]) / "cpu_peak.json"
    root = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(root) / "plait" / "cpu_peak.json"


def measure_matmul(n: int = 512, reps: int = 5) -> float:
    """Best fp32 FLOP/s of an n x n matmul over ``reps`` timed runs (one warm-up)."""
    a, b = torch.randn(n, n), torch.randn(n, n)
    a @ b
    best = float("inf")
    for _ in range(reps):
        t = time.perf_counter()
        a @ b
        best = min(best, time.perf_counter() - t)
    return 2 * n**3 / best


def cpu_peak() -> Peak:
    """Measured once per CPU model and torch thread count, then read from the cache."""
    threads = torch.get_num_threads()
    key = f"{_cpu_model()} | {threads} threads | torch {torch.__version__}"
    path = _cache_path()
    try:
        cache = json.loads(path.read_text())
    except (OSError, ValueError):
        cache = {}
    if key not in cache:
        cache[key] = measure_matmul()
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = path.with_suffix(f".{os.getpid()}.tmp")
            tmp.write_text(json.dumps(cache, indent=1) + "\n")
            tmp.replace(path)
        except OSError:
            pass  # a read-only home: measure again next time
    return Peak(f"CPU ({_cpu_model()}, {threads} threads)", cache[key],
                f"measured: best 512x512 fp32 matmul, cached in {path}")  # fmt: skip


def device_peak(device: torch.device) -> Peak | None:
    if device.type == "cuda":
        return gpu_peak(torch.cuda.get_device_name(device))
    if device.type == "cpu":
        return cpu_peak()
    return None
