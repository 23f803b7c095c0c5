"""Which rank holds the others up. In synchronous training every rank's step time is the
slowest's (the others wait in collectives), so ranks compare their *busy* time: the step less
the wait at its first collective. A rank late with its data, optimizer or host work is named;
slowness inside a synchronised forward/backward shows on every rank and is not attributed."""

from __future__ import annotations

import statistics

import torch
import torch.distributed as dist


def gather_busy(busy_s: float, device: torch.device) -> list[float]:
    """Every rank's busy time, on every rank (one all_gather on the world group)."""
    if not dist.is_initialized() or dist.get_world_size() == 1:
        return [busy_s]
    mine = torch.tensor([busy_s], dtype=torch.float64, device=device)
    out = [torch.zeros_like(mine) for _ in range(dist.get_world_size())]
    dist.all_gather(out, mine)
    return [float(t) for t in out]


def straggler_record(times: list[float], factor: float) -> dict[str, float]:
    """Spread of busy times; ``straggler_rank`` when the slowest exceeds ``factor`` x the
    median of the other ranks."""
    slowest = max(range(len(times)), key=times.__getitem__)
    others = times[:slowest] + times[slowest + 1 :]
    ref = statistics.median(others) if others else times[slowest]
    rec = {"busy_max_s": times[slowest], "busy_median_s": statistics.median(times)}
    rec["slowest_rank"] = slowest
    if others and factor > 0 and times[slowest] > factor * ref:
        rec["straggler_rank"] = slowest
    return rec
