"""Model FLOPs per token for MFU: the planner's count (plait.plan.shapes), not a second copy."""

from __future__ import annotations

from plait.config import Config
from plait.errors import ConfigError
from plait.plan.shapes import ModelShape


def flops_per_token(cfg: Config) -> float | None:
    """6·(N − embedding) + 12·L·H·Q·T for gpt and Llama-style hf models; None for models the
    planner has no shape for (the seed MLP and CNN): they report throughput but no MFU."""
    try:
        shape = ModelShape.from_config(cfg)
    except (ConfigError, ImportError):
        return None
    return shape.flops_per_token(cfg.data.seq_len)
