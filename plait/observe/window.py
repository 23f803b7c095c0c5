"""Throughput over a log interval: total work / total step time of the steps since the last
log line, so one slow or fast step does not swing the figure (torchtitan logs the same way)."""

from __future__ import annotations

SEGMENTS = ("data_s", "wait_s", "fwd_bwd_s", "optim_s")


class Window:
    """``unit`` is 'tokens' (language models) or 'samples'; rates per device divide by the
    world size, so MFU under tp / pp counts each device's share of the model (torchtitan's)."""

    def __init__(
        self, unit: str, world_size: int, flops_per_unit: float | None, peak: float | None
    ):
        self.unit, self.world = unit, world_size
        self.flops_per_unit, self.peak = flops_per_unit, peak
        self.reset()

    def reset(self) -> None:
        self.n, self.count, self.time = 0, 0.0, 0.0
        self.seg = dict.fromkeys(SEGMENTS, 0.0)

    def add(self, rec: dict) -> None:
        self.n += 1
        self.count += rec[self.unit]
        self.time += rec["step_time_s"]
        for k in SEGMENTS:
            self.seg[k] += rec.get(k, 0.0)

    @property
    def busy_s(self) -> float:
        """Mean step time less the wait at the step's first collective: how long this rank
        itself took (a rank that arrives late waits least)."""
        return (self.time - self.seg["wait_s"]) / max(self.n, 1)

    def flush(self) -> dict[str, float]:
        """The interval's figures; starts the next interval."""
        if not self.n:
            return {}
        rate = self.count / self.time
        out = {
            f"{self.unit}_per_s": rate,
            f"{self.unit}_per_s_per_device": rate / self.world,
            "step_time_avg_s": self.time / self.n,
        }
        out.update({k: v / self.n for k, v in self.seg.items()})
        if self.flops_per_unit:
            achieved = rate / self.world * self.flops_per_unit
            out["tflops_per_device"] = achieved / 1e12
            if self.peak:
                out["mfu"] = achieved / self.peak
        self.reset()
        return out
