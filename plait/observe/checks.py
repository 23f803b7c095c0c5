"""Config checks for the log section's observability keys: before any process group."""

from __future__ import annotations

import torch

from plait.config import Config
from plait.errors import ConfigError


def check_observe(cfg: Config) -> None:
    lg, steps = cfg.log, cfg.train.steps
    ps = lg.profile_steps
    if ps and not (len(ps) == 2 and 1 <= ps[0] <= ps[1] <= steps):
        raise ConfigError(
            f"log.profile_steps: {ps!r} is not allowed; give [first, last] with "
            f"1 <= first <= last <= train.steps={steps}, or [] for no profile"
        )
    if lg.memory_snapshot < 0 or lg.memory_snapshot > steps:
        raise ConfigError(
            f"log.memory_snapshot: {lg.memory_snapshot} is not allowed; a step in "
            f"[1, train.steps={steps}], or 0 for off"
        )
    on_cpu = cfg.train.device == "cpu" or not torch.cuda.is_available()
    if lg.memory_snapshot and on_cpu:
        raise ConfigError(
            "log.memory_snapshot: CUDA memory snapshots need a CUDA device; this run is on "
            "cpu, so set log.memory_snapshot=0 (memory is on the log line as mem_rss_gib)"
        )
    if lg.straggler_factor < 0 or 0 < lg.straggler_factor <= 1:
        raise ConfigError(
            f"log.straggler_factor: {lg.straggler_factor} is not allowed; must be > 1 (0: off)"
        )
