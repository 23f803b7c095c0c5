"""``plait info``: versions, devices, backends and which optional engines import."""

from __future__ import annotations

import importlib
import importlib.metadata as md
import platform

import torch
import torch.distributed as dist

OPTIONAL = {
    "deepspeed": "deepspeed", "fairscale": "fairscale", "ray": "ray", "wandb": "wandb",
    "transformers": "hf", "accelerate": "hf", "tensorboard": "core",
}  # fmt: skip


def _version(pkg: str) -> str | None:
    try:
        return md.version(pkg)
    except md.PackageNotFoundError:
        return None


def collect() -> dict[str, object]:
    info: dict[str, object] = {
        "plait": _version("plait") or "not installed (running from source)",
        "python": platform.python_version(),
        "platform": platform.platform(),
        "torch": torch.__version__,
        "cuda_available": torch.cuda.is_available(),
        "cuda_devices": [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())],
        "cpu_threads": torch.get_num_threads(),
        "backends": {b: getattr(dist, f"is_{b}_available")() for b in ("gloo", "nccl", "mpi")},
    }
    engines = {}
    for mod, extra in OPTIONAL.items():
        v = _version(mod)
        engines[mod] = (
            f"{v} (importable)"
            if v and importlib.util.find_spec(mod)
            else f"missing (pip install 'plait[{extra}]')"
        )
    info["optional"] = engines
    return info


def format_info() -> str:
    lines = []
    for k, v in collect().items():
        if isinstance(v, dict):
            lines.append(f"{k}:")
            lines += [f"  {kk}: {vv}" for kk, vv in v.items()]
        else:
            lines.append(f"{k}: {v}")
    return "\n".join(lines)
