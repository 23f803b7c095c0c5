"""The console line: the few figures worth reading at a glance (metrics.jsonl has them all)."""

from __future__ import annotations

from typing import Any


def duration(s: float) -> str:
    s = int(round(s))
    h, m = divmod(s, 3600)
    m, s = divmod(m, 60)
    return f"{h}h{m:02d}m" if h else f"{m}m{s:02d}s"


def console_fields(r: dict[str, Any]) -> list[str]:
    out = []
    if "loss" in r:
        out.append(f"loss {r['loss']:.4f}")
    if "lr" in r:
        out.append(f"lr {r['lr']:.2e}")
    if "grad_norm" in r:
        out.append(f"grad_norm {r['grad_norm']:.4f}")
    for unit in ("tokens", "samples"):
        if f"{unit}_per_s" in r:
            out.append(
                f"{unit}/s {r[f'{unit}_per_s']:,.0f} ({r[f'{unit}_per_s_per_device']:,.0f}/dev)"
            )
    if "tflops_per_device" in r:
        mfu = f" mfu {r['mfu']:.1%}" if "mfu" in r else ""
        out.append(f"tflops/dev {r['tflops_per_device']:.3g}{mfu}")
    if "step_time_avg_s" in r:
        t = r["step_time_avg_s"]
        out.append(f"step {t:.3f}s (data {r['data_s'] / t:.0%}, opt {r['optim_s'] / t:.0%})")
    if "mem_cuda_allocated_gib" in r:
        out.append(
            f"mem {r['mem_cuda_allocated_gib']:.2f}/{r['mem_cuda_reserved_gib']:.2f}"
            f"/{r['mem_cuda_peak_gib']:.2f} GiB alloc/res/peak"
        )
    elif "mem_rss_gib" in r:
        out.append(f"rss {r['mem_rss_gib']:.2f} GiB")
    if "straggler_rank" in r:
        out.append(
            f"straggler rank {r['straggler_rank']} ({r['busy_max_s']:.3f}s busy vs "
            f"{r['busy_median_s']:.3f}s median)"
        )
    if "eta_s" in r:
        out.append(f"eta {duration(r['eta_s'])}")
    return out
