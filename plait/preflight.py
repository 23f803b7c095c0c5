"""Every check that needs no process group, in one place, run before any process starts or any
group exists so that a mistake never hangs: the model's shapes, the world size split into
(pp, dp_replicate, dp_shard, tp), the engine x layout rules (plait.rules), the data-parallel
engine's options, the pipeline schedule and the tensor-parallel shapes. The meta model is built
once for all of them. ``plait train``, ``plait launch`` and each rank's trainer call
:func:`validate`; the run folder's name is chosen here too, once, by the launching process."""

from __future__ import annotations

import dataclasses
import importlib.util
from datetime import datetime
from pathlib import Path

from plait.config import Config
from plait.errors import ConfigError
from plait.mesh import ParallelDims
from plait.models import build_model, check_model
from plait.models.base import PlaitModel
from plait.models.gpt import gpt_args
from plait.observe.checks import check_observe
from plait.parallel_attrs import CP_ATTENTION_MODULES
from plait.pipeline.validate import check_pipeline
from plait.rules import (
    cp_seq_problem,
    divisors,
    dp_engine,
    ep_problem,
    flat_zero_problem,
    layout_problem,
)
from plait.tensor_parallel.check import check_tp


def default_run_dir(cfg: Config) -> Path:
    """``log.run_dir``, else ``runs/<name>-<time>``."""
    if cfg.log.run_dir:
        return Path(cfg.log.run_dir)
    return Path("runs") / f"{cfg.name}-{datetime.now().strftime('%Y%m%d-%H%M%S')}"


def validate(cfg: Config, world_size: int) -> ParallelDims:
    """Every check that needs no process group; run before init so a mistake never hangs.
    The meta model is built at most once, and only when a check reads its modules (pipeline
    stages, tensor-parallel shapes): its first build loads torch's meta kernels (seconds)."""
    p = cfg.parallel
    model = build_model(cfg) if p.pp > 1 or p.tp > 1 or p.cp > 1 or p.pp_cuts else None
    if model is None:
        check_model(cfg)  # build_model runs it too
    check_observe(cfg)
    dims = ParallelDims.from_config(cfg, world_size, hint=lambda c, w: layouts_hint(c, w, model))
    check_supported(cfg, dims, model)
    return dims


def check_supported(
    cfg: Config, dims: ParallelDims, model: PlaitModel | None = None, *, need_package: bool = True
) -> None:
    """Refuse engine x layout combinations that cannot work, before any process group exists.
    ``model``: the meta model, when the caller has built it already; ``need_package``: see
    :func:`check_dp`."""
    p = cfg.parallel
    problem = layout_problem(
        dp_engine=p.dp_engine, zero_stage=p.zero_stage, pp=dims.pp, dp=dims.dp, tp=dims.tp,
        schedule=p.pp_schedule, cp=dims.cp,
    )  # fmt: skip
    if problem:
        raise ConfigError(problem)
    check_moe(cfg, dims)
    check_dp(cfg, dims, need_package=need_package)
    if dims.pp == 1 and dims.tp == 1 and dims.cp == 1 and not cfg.parallel.pp_cuts:
        return  # the shape checks below have nothing to check: no model needed
    model = model if model is not None else build_model(cfg)
    check_cp(cfg, dims, model)
    check_pipeline(cfg, dims, n_blocks=len(model.layers))
    check_tp(cfg, dims, model)


def check_cp(cfg: Config, dims: ParallelDims, model: PlaitModel) -> None:
    """Context parallel: the model has attention plait can split (plait.parallel_attrs
    CP_ATTENTION_MODULES), and the sequence splits into 2 x cp chunks."""
    if dims.cp == 1:
        return
    names = set(getattr(model, CP_ATTENTION_MODULES, ()))
    if not any(type(m).__name__ in names for m in model.modules()):
        what = cfg.model.name + (f" ({cfg.model.hf_arch})" if cfg.model.name == "hf" else "")
        raise ConfigError(
            f"parallel.cp: {dims.cp} is not allowed for model.name={what}: it has no attention "
            "context parallel can split (supported: gpt, hf LlamaForCausalLM and "
            "MistralForCausalLM); use parallel.cp=1"
        )
    problem = cp_seq_problem(cfg.data.seq_len, dims.cp)
    if problem:
        raise ConfigError(problem)


def check_moe(cfg: Config, dims: ParallelDims) -> None:
    """Expert parallel and the mixture-of-experts options against the layout (plait.rules)."""
    p = cfg.parallel
    moe = gpt_args(cfg).moe if cfg.model.name == "gpt" else None
    problem = ep_problem(
        ep=p.ep, n_experts=moe.n_experts if moe else 0, expert_dim=moe.expert_dim if moe else 1,
        dp_shard=dims.dp_shard, cp=dims.cp, tp=dims.tp, dp_engine=p.dp_engine,
        zero_stage=p.zero_stage, sequence_parallel=p.sequence_parallel and moe is not None,
    )  # fmt: skip
    if problem:
        raise ConfigError(problem)
    if moe is not None and dims.cp > 1:
        for key, v in (
            ("moe_aux_loss", moe.aux_loss),
            ("moe_capacity_factor", moe.capacity_factor),
        ):
            if v > 0:
                raise ConfigError(
                    f"model.{key}: {v} is not allowed with parallel.cp={dims.cp}: it is a "
                    "function of whole sequences, which context parallel splits; set it to 0 "
                    "(moe_bias_update balances without it)"
                )


def check_dp(cfg: Config, dims: ParallelDims, *, need_package: bool = True) -> None:
    """The data-parallel engine's options (plait.rules.DP_ENGINES): its package installed
    (unless ``need_package`` is False: ``plait plan`` prices a cluster's run from a laptop), its
    stage, offload, HSDP and checkpointing."""
    p = cfg.parallel
    eng, stage = p.dp_engine, p.zero_stage
    cell = dp_engine(eng, stage)
    if need_package and eng != "torch" and importlib.util.find_spec(eng) is None:
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
        if p.cpu_offload and not cell.offload:
            raise ConfigError(
                f"parallel.cpu_offload: true is not allowed with zero_stage={stage} on the torch "
                "engine; offload comes with FSDP2: use zero_stage=2 or 3"
            )
        check_reshard(p, dims)
        check_flat_zero(cfg, dims)
        return
    check_flat_zero(cfg, dims)
    if dims.dp_replicate > 1 and not (cell and cell.hsdp):
        raise ConfigError(
            f"parallel.dp_replicate: {dims.dp_replicate} (HSDP) is not allowed with "
            f"dp_engine={eng!r}; HSDP needs dp_engine=torch with zero_stage=2 or 3"
        )
    if eng == "fairscale":
        if cell is None:
            raise ConfigError(
                f"parallel.zero_stage: {stage} is not allowed with dp_engine='fairscale'; allowed: "
                "1 (OSS) or 2 (OSS + ShardedDDP). fairscale's FSDP (stage 3) is broken on this torch: "
                "use dp_engine=torch or deepspeed for stage 3, dp_engine=torch for stage 0"
            )
        if p.cpu_offload and not cell.offload:
            raise ConfigError(
                "parallel.cpu_offload: true is not allowed with dp_engine='fairscale'; "
                "use dp_engine=torch (zero_stage 2/3) or deepspeed (zero_stage >= 1)"
            )
    if eng == "deepspeed":
        if p.cpu_offload and not cell.offload:
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


def valid_layouts(
    cfg: Config, world_size: int, model: PlaitModel | None = None
) -> list[tuple[int, int, int]]:
    """(pp, dp_shard, tp) factorizations of ``world_size`` / ``parallel.cp`` that this model and
    config accept: tp divides the model's heads/ffn/vocab, pp fits the blocks and schedule, the
    batch splits."""
    model = model if model is not None else build_model(cfg)
    cp = cfg.parallel.cp
    if world_size % cp:
        return []
    rest = world_size // cp
    divs = divisors(rest)
    out = []
    for pp in divs:
        for tp in divs:
            if rest % (pp * tp):
                continue
            dp = rest // (pp * tp)
            par = dataclasses.replace(cfg.parallel, pp=pp, tp=tp, dp_shard=dp, dp_replicate=1)
            if tp > 1 and dp * cp > 1 and par.zero_stage < 2:
                par = dataclasses.replace(par, zero_stage=3)
            trial = dataclasses.replace(cfg, parallel=par)
            try:
                dims = ParallelDims(pp, 1, dp, tp, world_size, cp=cp)
                dims.check_batch(trial)
                check_supported(trial, dims, model)
            except ConfigError:
                continue
            out.append((pp, dp, tp))
    return out


def layouts_hint(cfg: Config, world_size: int, model: PlaitModel | None = None) -> str:
    """The layouts of ``world_size`` ranks that would work, for a world-size mismatch error."""
    layouts = valid_layouts(cfg, world_size, model)
    cp = f" x cp={cfg.parallel.cp}" if cfg.parallel.cp > 1 else ""
    combos = [f"pp={pp} x dp_shard={dp}{cp} x tp={tp}" for pp, dp, tp in layouts]
    if not combos:
        return f"no layout of {world_size} ranks fits this model and batch"
    return (
        f"layouts of {world_size} ranks this model and batch accept: "
        + "; ".join(combos[:12])
        + (" ..." if len(combos) > 12 else "")
    )


def check_flat_zero(cfg: Config, dims: ParallelDims) -> None:
    """``parallel.zero_flat: true`` where it cannot run (auto falls back instead)."""
    if cfg.parallel.zero_flat is not True:
        return
    why = flat_zero_problem(cfg.parallel, dims)
    if why:
        raise ConfigError(
            f"parallel.zero_flat: true is not allowed with {why}; or set zero_flat=auto"
        )


def check_reshard(p, dims: ParallelDims) -> None:
    """``parallel.reshard_after_forward`` refines ZeRO-3 on FSDP2 (docs/design.md, "Reshard
    policy"); an int must divide ``dp_shard`` (FSDP2 reshards to groups of that many ranks)."""
    r = p.reshard_after_forward
    if r == "auto":
        return
    if p.zero_stage != 3:
        raise ConfigError(
            f"parallel.reshard_after_forward: {r!r} is not allowed with zero_stage="
            f"{p.zero_stage}; it chooses ZeRO-3's resharding: use zero_stage=3 or leave it auto"
        )
    if not isinstance(r, bool) and dims.dp_shard % r:
        raise ConfigError(
            f"parallel.reshard_after_forward: {r} is not allowed with dp_shard={dims.dp_shard}; "
            "a group size must divide dp_shard"
        )
