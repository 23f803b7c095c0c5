"""Config-time refusals for data-parallel engine/stage combinations that cannot work, raised
before any process group exists (DESIGN.md promise 3)."""

from __future__ import annotations

import importlib.util

from plait.config import Config
from plait.errors import ConfigError
from plait.mesh import ParallelDims


def check_dp(cfg: Config, dims: ParallelDims) -> None:
    p = cfg.parallel
    eng, stage = p.dp_engine, p.zero_stage
    if eng != "torch" and importlib.util.find_spec(eng) is None:
        raise ConfigError(
            f"parallel.dp_engine: {eng!r} needs the {eng} package (pip install 'plait[{eng}]'), "
            "or use dp_engine=torch (DDP, ZeRO-1/2/3, HSDP on FSDP2)"
        )
    ck = cfg.checkpoint
    if eng == "deepspeed" and ck.async_save and (ck.every or ck.dir):
        raise ConfigError(
            "checkpoint.async: true is not allowed with dp_engine='deepspeed' (DeepSpeed writes "
            "its own checkpoint files synchronously); set checkpoint.async=false"
        )
    if eng == "torch":
        if p.cpu_offload and stage < 2:
            raise ConfigError(
                f"parallel.cpu_offload: true is not allowed with zero_stage={stage} on the torch "
                "engine; offload comes with FSDP2: use zero_stage=2 or 3"
            )
        return
    if dims.dp_replicate > 1:
        raise ConfigError(
            f"parallel.dp_replicate: {dims.dp_replicate} (HSDP) is not allowed with "
            f"dp_engine={eng!r}; HSDP needs dp_engine=torch with zero_stage=2 or 3"
        )
    if eng == "fairscale":
        if stage not in (1, 2):
            raise ConfigError(
                f"parallel.zero_stage: {stage} is not allowed with dp_engine='fairscale'; allowed: "
                "1 (OSS) or 2 (OSS + ShardedDDP). fairscale's FSDP (stage 3) is broken on this torch: "
                "use dp_engine=torch or deepspeed for stage 3, dp_engine=torch for stage 0"
            )
        if p.cpu_offload:
            raise ConfigError(
                "parallel.cpu_offload: true is not allowed with dp_engine='fairscale'; "
                "use dp_engine=torch (zero_stage 2/3) or deepspeed (zero_stage >= 1)"
            )
    if eng == "deepspeed":
        if p.cpu_offload and stage == 0:
            raise ConfigError(
                "parallel.cpu_offload: true is not allowed with dp_engine='deepspeed' and "
                "zero_stage=0; DeepSpeed offloads optimizer state from zero_stage 1 and "
                "parameters at zero_stage 3"
            )
        if cfg.train.on_nan == "skip" and cfg.train.dtype != "fp16":
            raise ConfigError(
                "train.on_nan: 'skip' is not allowed with dp_engine='deepspeed'; DeepSpeed "
                "clips and steps in one call, so plait cannot skip a step: use on_nan=stop"
            )
