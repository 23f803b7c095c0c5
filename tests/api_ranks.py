"""Rank functions for tests/test_api.py (imported by run_in_ranks' spawned processes): the
examples, run as their docstrings' torchrun commands would."""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "examples"))


def own_model_3d(run_dir: str):
    import own_model

    return own_model.run(["pp=2", "dp_shard=2", "tp=2", "zero_stage=2"], run_dir, True)


def own_loop_2d(ckpt_dir: str) -> list[float]:
    import own_loop
    import torch.distributed as dist

    losses, _ = own_loop.run({"dp_shard": 2, "tp": 2, "zero_stage": 2}, ckpt_dir)
    dist.destroy_process_group()
    return losses
