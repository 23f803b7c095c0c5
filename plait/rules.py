"""The pure rules of which engine, ZeRO stage, pipeline schedule and layout combine: two tables
and the checks that read them. Torch-free, so config validation, ``plait plan``'s search and
``plait launch`` all read the same statement without loading torch.

- :data:`DP_ENGINES`: ``parallel.dp_engine`` x ``parallel.zero_stage`` -> what wraps the model.
- :data:`SCHEDULES`: pipeline schedule name -> its traits (stages per rank, V shape, W pass).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

# ----------------------------------------------------------------- data-parallel engines


@dataclass(frozen=True)
class DPEngine:
    """One cell of the engine x ZeRO-stage table.

    ``wrap``: where the model gets wrapped: ``ddp`` (torch DDP around the materialised model,
    wrap step 7 of plait.parallelize), ``fsdp`` (FSDP2 on the meta model, step 5) or ``engine``
    (the engine wraps model and optimizer together: DeepSpeed, fairscale). ``engine``: the
    plait.ddp engine class that drives backward / clip / step."""

    what: str
    wrap: Literal["ddp", "fsdp", "engine"]
    engine: Literal["plain", "zero1", "fsdp", "deepspeed", "fairscale"]
    offload: bool = False  # parallel.cpu_offload allowed
    hsdp: bool = False  # parallel.dp_replicate > 1 allowed (replicas of shards)
    pipeline: bool = False  # takes data parallel per pipeline stage (pp > 1)
    tp_2d: bool = False  # shards over tensor-parallel DTensors (tp > 1 with dp > 1)


_FSDP2 = dict(offload=True, hsdp=True, pipeline=True, tp_2d=True)  # what FSDP2 composes with

DP_ENGINES: dict[tuple[str, int], DPEngine] = {
    ("torch", 0): DPEngine("DDP", "ddp", "plain", pipeline=True),
    ("torch", 1): DPEngine("DDP + ZeroRedundancyOptimizer", "ddp", "zero1"),
    ("torch", 2): DPEngine("FSDP2, no reshard after forward (+HSDP)", "fsdp", "fsdp", **_FSDP2),
    ("torch", 3): DPEngine("FSDP2, reshard after forward (+HSDP)", "fsdp", "fsdp", **_FSDP2),
    ("deepspeed", 0): DPEngine("DeepSpeed ZeRO-0", "engine", "deepspeed"),
    ("deepspeed", 1): DPEngine("DeepSpeed ZeRO-1", "engine", "deepspeed", offload=True),
    ("deepspeed", 2): DPEngine("DeepSpeed ZeRO-2", "engine", "deepspeed", offload=True),
    ("deepspeed", 3): DPEngine("DeepSpeed ZeRO-3", "engine", "deepspeed", offload=True),
    ("fairscale", 1): DPEngine("DDP + OSS", "engine", "fairscale"),
    ("fairscale", 2): DPEngine("ShardedDDP + OSS", "engine", "fairscale"),
}


def dp_engine(engine: str, stage: int) -> DPEngine | None:
    """The table's cell, or None where that engine has no such stage."""
    return DP_ENGINES.get((engine, stage))


def uses_fsdp(engine: str, stage: int, dp: int) -> bool:
    """FSDP2 shards the model (wrap step 5)."""
    cell = dp_engine(engine, stage)
    return dp > 1 and cell is not None and cell.wrap == "fsdp"


def uses_ddp(engine: str, stage: int, dp: int) -> bool:
    """torch DDP wraps the materialised model (wrap step 7)."""
    cell = dp_engine(engine, stage)
    return dp > 1 and cell is not None and cell.wrap == "ddp"


def flat_zero_blocker(
    *, engine: str, stage: int, tp: int, pp: int, cp: int, ep: int, dp_replicate: int,
    cpu_offload: bool,
) -> str | None:  # fmt: skip
    """Why ``parallel.zero_flat`` (replicated parameters in flat buckets, plait.ddp.flat_zero)
    cannot run this layout, as ``key=value`` plus what it needs; None when it can. It shards
    plain tensors over the data-parallel group only."""
    if engine != "torch" or stage not in (1, 2):
        return (
            f"dp_engine={engine!r}, zero_stage={stage}: it needs dp_engine=torch, zero_stage 1 or 2"
        )
    for key, v in (("tp", tp), ("pp", pp), ("cp", cp), ("ep", ep), ("dp_replicate", dp_replicate)):
        if v > 1:
            return f"parallel.{key}={v}: it shards over plain data parallel only"
    if cpu_offload:
        return "parallel.cpu_offload=true: offload comes with FSDP2 (zero_flat=false)"
    return None


def flat_zero_problem(p, dims) -> str | None:
    """:func:`flat_zero_blocker` of a config's ``parallel`` section and its ParallelDims."""
    return flat_zero_blocker(
        engine=p.dp_engine, stage=p.zero_stage, tp=dims.tp, pp=dims.pp, cp=dims.cp, ep=p.ep,
        dp_replicate=dims.dp_replicate, cpu_offload=p.cpu_offload,
    )  # fmt: skip


def flat_zero_auto(flat: bool | str, stage: int, dtype: str) -> bool:
    """``parallel.zero_flat`` where it composes: true, or auto at ZeRO-1 (it holds less than
    DDP + ZeroRedundancyOptimizer in any dtype) and at fp32 ZeRO-2 (under bf16/fp16 FSDP2's
    sharded fp32 weights with 16-bit gathered copies hold less than flat fp32 weights)."""
    return flat is True or (flat == "auto" and (stage == 1 or dtype == "fp32"))


def uses_flat_zero(p, dims, dtype: str) -> bool:
    """``parallel.zero_flat`` resolved: :func:`flat_zero_auto`, where
    :func:`flat_zero_blocker` finds nothing and there is data parallelism to shard over."""
    return (
        flat_zero_auto(p.zero_flat, p.zero_stage, dtype)
        and dims.dp_cp > 1
        and flat_zero_problem(p, dims) is None
    )


# ----------------------------------------------------------------- pipeline schedules


@dataclass(frozen=True)
class ScheduleInfo:
    """What plait knows of a torch.distributed.pipelining schedule without loading it."""

    stages_per_rank: tuple[int, ...] | None  # exactly these, or None: any >= 1 (looped)
    v_shape: bool = False  # chunks laid out V-wise: rank 0 holds the first and the last
    zero_bubble: bool = False  # backward split into input (I) and weight (W) passes
    breadth_first: bool = False  # every forward before any backward: all m micro-batches live

    @property
    def single(self) -> bool:
        """One stage per rank (torch's PipelineScheduleSingle)."""
        return self.stages_per_rank == (1,)


SCHEDULES: dict[str, ScheduleInfo] = {
    "GPipe": ScheduleInfo((1,), breadth_first=True),
    "1F1B": ScheduleInfo((1,)),
    "Interleaved1F1B": ScheduleInfo(None),
    "LoopedBFS": ScheduleInfo(None, breadth_first=True),
    "InterleavedZeroBubble": ScheduleInfo(None, zero_bubble=True),
    "ZBVZeroBubble": ScheduleInfo((2,), v_shape=True, zero_bubble=True),
    "DualPipeV": ScheduleInfo((2,), v_shape=True, zero_bubble=True),
}

#: schedules that split backward into input- and weight-gradient passes (B and W)
ZERO_BUBBLE = tuple(n for n, s in SCHEDULES.items() if s.zero_bubble)
#: V-shaped schedules: first and last chunk both on rank 0
V_SCHEDULES = tuple(n for n, s in SCHEDULES.items() if s.v_shape)
#: schedules that run exactly one stage per rank
SINGLE_SCHEDULES = tuple(n for n, s in SCHEDULES.items() if s.single)


def schedule(name: str) -> ScheduleInfo:
    """The traits of ``name``; a ValueError naming the known schedules otherwise."""
    if name not in SCHEDULES:
        raise ValueError(f"unknown schedule {name!r}; known: {', '.join(SCHEDULES)}")
    return SCHEDULES[name]


# ----------------------------------------------------------------- layouts


def divisors(n: int) -> list[int]:
    """1..n that divide n: the sizes a dimension of n can be split into."""
    return [d for d in range(1, n + 1) if n % d == 0]


def layout_problem(
    *, dp_engine: str, zero_stage: int, pp: int, dp: int, tp: int, schedule: str, cp: int = 1
) -> str | None:
    """Why this engine x layout cannot run, or None. The one statement of these rules: config
    validation raises it, and ``plait plan``'s layout search skips such layouts."""
    cell = DP_ENGINES.get((dp_engine, zero_stage))
    if cp > 1 and not (dp_engine == "torch" and zero_stage in (0, 2, 3)):
        # gradients are averaged over dp x cp: torch DDP over that flattened view, or FSDP2
        # sharding over dp_shard x cp (docs/design.md, context parallel)
        return (
            f"parallel.cp={cp} with dp_engine={dp_engine!r} zero_stage={zero_stage} is not "
            "allowed: context parallel averages gradients over dp x cp with the torch engine: "
            "use dp_engine=torch with zero_stage 0 (DDP), 2 or 3 (FSDP2)"
        )
    if tp > 1 and dp * cp > 1 and not (cell and cell.tp_2d):
        return (
            f"parallel: tp={tp} with dp x cp={dp * cp} data-parallel ranks needs sharded data parallel on "
            f"the torch engine (FSDP2 over TP, torchtitan's 2-D); dp_engine={dp_engine!r} "
            f"zero_stage={zero_stage} is not allowed: use dp_engine=torch with zero_stage=2 or 3"
        )
    if pp > 1 and not (cell and cell.pipeline):
        return (
            f"parallel.pp={pp} with dp_engine={dp_engine!r} zero_stage={zero_stage} is not "
            "allowed: pipeline stages take data parallel from the torch engine only, with "
            "zero_stage 0 (replicated stages), 2 or 3 (FSDP2 per stage, any dp_replicate); "
            "ZeRO-1's optimizer wrapper and DeepSpeed/fairscale engines own the whole model"
        )
    if pp > 1 and dp > 1 and zero_stage == 3 and schedule in ZERO_BUBBLE:
        # measured: losses drift by ~1e-3 from one process from the second step; zero_stage=2
        # (torchtitan's default under pp, sparing an all-gather per microbatch) matches to 1e-7
        return (
            f"parallel.zero_stage: 3 is not allowed with pp_schedule={schedule}: its separate "
            "weight-gradient pass gives wrong gradients for parameters FSDP2 re-shards after "
            "forward (torch 2.13); use zero_stage=2, or a schedule without W passes (GPipe, "
            "1F1B, Interleaved1F1B, LoopedBFS)"
        )
    return None


def cp_seq_problem(seq_len: int, cp: int) -> str | None:
    """Why ``data.seq_len`` cannot be split over ``cp`` context-parallel ranks, or None: the
    sequence is cut into 2 x cp equal chunks (rank r keeps chunks r and 2cp-1-r, balancing
    causal work), so 2 x cp must divide it."""
    if cp > 1 and seq_len % (2 * cp):
        ok_cp = [c for c in divisors(seq_len // 2) if c > 1][:6] if seq_len % 2 == 0 else []
        ok_len = [seq_len + k for k in range(1, 2 * cp + 1) if (seq_len + k) % (2 * cp) == 0]
        ok_len = [(seq_len // (2 * cp)) * 2 * cp] * (seq_len >= 2 * cp) + ok_len
        return (
            f"data.seq_len: {seq_len} does not split into 2 x parallel.cp={2 * cp} equal chunks; "
            f"use data.seq_len {' or '.join(map(str, ok_len))}"
            + (f", or parallel.cp in {ok_cp}" if ok_cp else "")
        )
    return None


def ep_problem(
    *, ep: int, n_experts: int, expert_dim: int, dp_shard: int, cp: int, tp: int,
    dp_engine: str, zero_stage: int, sequence_parallel: bool,
) -> str | None:  # fmt: skip
    """Why this expert-parallel layout cannot run, or None (``n_experts`` 0: a dense model).
    ep folds over the dp_shard x cp ranks (docs/design.md, expert parallel)."""
    fold = dp_shard * cp
    if n_experts == 0:
        if ep > 1:
            return (
                f"parallel.ep: {ep} needs a mixture-of-experts model; set model.moe_experts "
                "(gpt) or model.preset=moe_tiny, or use parallel.ep=1"
            )
        return None
    ok = [d for d in divisors(n_experts) if fold % d == 0]
    if n_experts % ep:
        return (
            f"model.moe_experts: {n_experts} does not split over parallel.ep={ep}; ep sizes that "
            f"work for {n_experts} experts over dp_shard x cp = {fold} ranks: {', '.join(map(str, ok))}"
        )
    if fold % ep:
        return (
            f"parallel.ep: {ep} does not divide dp_shard x cp = {dp_shard} x {cp} = {fold} (ep "
            f"folds over those ranks); ep sizes that work here: {', '.join(map(str, ok))}"
        )
    if expert_dim % tp:
        return (
            f"model.moe_ffn_dim: {expert_dim} does not split over parallel.tp={tp}; pick a "
            f"multiple of {tp}, or tp among {', '.join(map(str, divisors(expert_dim)[:8]))}"
        )
    split = ep > 1 or tp > 1
    if split and (dp_engine != "torch" or zero_stage == 1):
        return (
            f"parallel.ep={ep} / tp={tp} with a mixture-of-experts model needs dp_engine=torch "
            f"with zero_stage 0, 2 or 3 (not {dp_engine!r} zero_stage={zero_stage}): split "
            "experts reduce their gradients over their own ranks, which other engines cannot skip"
        )
    if sequence_parallel:
        return (
            "parallel.sequence_parallel: true is not allowed with a mixture-of-experts model "
            "(the router needs whole tokens on every tp rank); set sequence_parallel=false"
        )
    return None
