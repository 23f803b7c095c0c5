"""Pipeline config checks, run before any process group (called from
``plait.preflight.check_supported``). Each refusal names the key, the value and what works."""

from __future__ import annotations

from plait.config import Config
from plait.errors import ConfigError
from plait.mesh import ParallelDims
from plait.models import build_model
from plait.pipeline.schedules import allowed_virtual, microbatch_problem, valid_microbatches
from plait.rules import ZERO_BUBBLE


def check_pipeline(cfg: Config, dims: ParallelDims, n_blocks: int | None = None) -> None:
    """``n_blocks``: the model's block count, when the caller has built the meta model."""
    p, t = cfg.parallel, cfg.train
    if dims.pp == 1:
        if p.pp_cuts:
            raise ConfigError(f"parallel.pp_cuts: {p.pp_cuts} needs parallel.pp > 1")
        return
    name, v, m = p.pp_schedule, p.pp_virtual_stages, p.pp_microbatches
    allowed = allowed_virtual(name)
    if allowed is not None and v not in allowed:
        raise ConfigError(
            f"parallel.pp_virtual_stages: {v} is not allowed with pp_schedule={name}; "
            f"it needs {allowed[0]} stage(s) per rank"
        )
    blocks = n_blocks if n_blocks is not None else len(build_model(cfg).layers)  # meta: no memory
    stages = dims.pp * v
    if blocks < stages:
        ok = [
            f"pp={q} x pp_virtual_stages={w}"
            for q in range(2, blocks + 1)
            for w in (1, 2)
            if q * w <= blocks and (allowed is None or w in allowed)
        ]
        raise ConfigError(
            f"parallel.pp: {dims.pp} x pp_virtual_stages={v} = {stages} stages, but "
            f"model {cfg.model.name} has only {blocks} blocks; use at most {blocks} stages "
            f"(e.g. {', '.join(ok[:6]) or 'pp=1'})"
        )
    problem = microbatch_problem(name, dims.pp, v, m)
    if problem:
        ok = valid_microbatches(name, dims.pp, v, 4 * stages)
        raise ConfigError(
            f"parallel.pp_microbatches: {m} is not allowed with pp_schedule={name}, pp={dims.pp}, "
            f"pp_virtual_stages={v} ({problem}); allowed: {', '.join(map(str, ok[:12]))} ..."
        )
    per = t.global_batch // dims.dp // t.grad_accum
    if per % m:
        good = [
            k
            for k in range(1, per + 1)
            if per % k == 0 and k in set(valid_microbatches(name, dims.pp, v, per))
        ]
        raise ConfigError(
            f"parallel.pp_microbatches: {m} does not divide the {per} samples each pipeline "
            f"step gets (train.global_batch={t.global_batch} / dp={dims.dp} / grad_accum="
            f"{t.grad_accum}); use one of {good or 'none - raise train.global_batch'}"
        )
    if t.compile and name in ZERO_BUBBLE:
        raise ConfigError(
            f"train.compile: true is not allowed with pp_schedule={name} (torch splits its "
            "backward outside the compiled graph); use 1F1B, Interleaved1F1B or compile=false"
        )
    if t.dtype == "fp16":
        raise ConfigError(
            "train.dtype: 'fp16' is not allowed with parallel.pp > 1 (its loss scaler would "
            "skip steps per stage); use bf16 or fp32"
        )
    if p.pp_cuts:
        cuts = list(p.pp_cuts)
        if (
            len(cuts) != stages - 1
            or cuts != sorted(set(cuts))
            or not 0 < cuts[0]
            or cuts[-1] >= blocks
        ):
            raise ConfigError(
                f"parallel.pp_cuts: {cuts} is not allowed; give {stages - 1} increasing block "
                f"indices in 1..{blocks - 1}, the first block of stages 1..{stages - 1} "
                f"(e.g. {[round(blocks * k / stages) for k in range(1, stages)]})"
            )
