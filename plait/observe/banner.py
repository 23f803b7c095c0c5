"""The start-up banner on rank 0: what is about to run, before the first log line."""

from __future__ import annotations

from pathlib import Path

from plait.config import Config
from plait.mesh import ParallelDims
from plait.observe.peaks import Peak

WRAPS = {
    "Engine": "DDP", "Zero1Engine": "DDP + ZeroRedundancyOptimizer", "FSDPEngine": "FSDP2",
    "DeepSpeedEngine": "DeepSpeed", "FairscaleEngine": "fairscale", "PipelineEngine": "pipeline",
    "FlatZeroEngine": "flat buckets, replicated params",
}  # fmt: skip


def engine_name(cfg: Config, dims: ParallelDims, engine) -> str:
    p, kind = cfg.parallel, type(engine).__name__
    if dims.dp_cp == 1:
        return "none (dp 1)" + (", pipeline" if kind == "PipelineEngine" else "")
    return f"{p.dp_engine} ({WRAPS.get(kind, kind)}), ZeRO stage {p.zero_stage}"


def banner(
    cfg: Config, dims: ParallelDims, *, params: int, engine, device: str, world: int,
    run_dir: Path, unit: str, flops_per_token: float | None, peak: Peak | None,
) -> str:  # fmt: skip
    t, p = cfg.train, cfg.parallel
    per_step = t.global_batch * (cfg.data.seq_len if unit == "tokens" else 1)
    shape = f" ({t.global_batch} x {cfg.data.seq_len})" if unit == "tokens" else ""
    lines = [
        f"plait | {cfg.name} | {cfg.model.name} {params:,} params | {world} rank(s) on {device}",
        f"  layout  pp {dims.pp} x dp_replicate {dims.dp_replicate} x dp_shard {dims.dp_shard} "
        + (f"x cp {dims.cp} " if dims.cp > 1 else "")
        + f"x tp {dims.tp}"
        + (" (sequence parallel)" if p.sequence_parallel else ""),
        f"  engine  {engine_name(cfg, dims, engine)}; activation checkpoint "
        f"{p.activation_checkpoint}; compile {'on' if t.compile else 'off'}",
        f"  dtype   {t.dtype} | {unit}/step {per_step:,}{shape} | grad_accum {t.grad_accum} "
        f"| steps {t.steps}",
    ]
    if flops_per_token and peak:
        lines.append(
            f"  mfu     {flops_per_token:.4g} FLOPs/token (6N + 12·L·H·Q·T) against "
            f"{peak.flops / 1e12:.4g} TFLOP/s per device: {peak.name} ({peak.source})"
        )
    elif flops_per_token:
        lines.append("  mfu     unknown device: no peak in plait.observe.peaks, TFLOP/s only")
    else:
        lines.append(f"  mfu     not counted for model {cfg.model.name!r} (gpt and hf Llama only)")
    lines.append(f"  run     {run_dir}")
    if cfg.optim.warmup_steps > t.steps:
        lines.append(
            f"  warning optim.warmup_steps={cfg.optim.warmup_steps} > train.steps={t.steps}: "
            f"warmup clamped to {t.steps} steps"
        )
    return "\n".join(lines)
