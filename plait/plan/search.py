"""Search: every valid layout of N GPUs (dp_replicate x dp_shard x tp x pp, schedule,
micro-batches, ZeRO stage, activation checkpointing), drop what does not fit, rank by
predicted tokens/s."""

from __future__ import annotations

from dataclasses import dataclass, replace

from plait.plan.hardware import Cluster
from plait.plan.memory import Memory, plan_memory
from plait.plan.shapes import Job, Layout, ModelShape
from plait.plan.steptime import StepTime, step_time
from plait.rules import cp_seq_problem, divisors, ep_problem, layout_problem

SEARCH_SCHEDULES = (("1F1B", 1), ("Interleaved1F1B", 2), ("ZBVZeroBubble", 2))


@dataclass
class Candidate:
    layout: Layout
    memory: Memory
    time: StepTime


def valid(shape: ModelShape, layout: Layout, job: Job) -> bool:
    """Shape rules plait's wrappers need (TP splits heads and kv heads, each pipeline chunk
    gets a block, the global batch splits into dp x micro-batches, pipelines have m >= p) and
    the engine x layout rules launch enforces (plait.rules.layout_problem)."""
    p, v = layout.pp, layout.v
    if shape.n_heads % layout.tp or shape.n_kv_heads % layout.tp:
        return False
    if layout_problem(
        dp_engine=layout.dp_engine, zero_stage=layout.zero_stage, pp=p, dp=layout.dp,
        tp=layout.tp, schedule=layout.schedule, cp=layout.cp,
    ) or cp_seq_problem(job.seq_len, layout.cp):  # fmt: skip
        return False  # plait would refuse it at launch
    if shape.n_experts and ep_problem(
        ep=layout.ep, n_experts=shape.n_experts, expert_dim=shape.expert_dim,
        dp_shard=layout.dp_shard, cp=layout.cp, tp=layout.tp, dp_engine=layout.dp_engine,
        zero_stage=layout.zero_stage, sequence_parallel=layout.sequence_parallel,
    ):  # fmt: skip
        return False
    if p * v > shape.n_layers or (p > 1 and layout.microbatches < p):
        return False
    return job.global_batch % (layout.dp * layout.microbatches) == 0


def layouts(shape: ModelShape, job: Job, cluster: Cluster, base: Layout) -> list[Layout]:
    """Every combination, keeping ``base``'s engine, offload, context- and expert-parallel
    choices. Sequence parallel is on whenever tp > 1 (it moves the same bytes as TP's
    all-reduces and saves memory), except for a mixture of experts (its router needs whole
    tokens: plait.rules.ep_problem)."""
    if cluster.gpus % base.cp:
        return []
    n, out = cluster.gpus // base.cp, []
    for tp in divisors(n):
        if tp > cluster.gpus_per_node:  # TP across nodes is never worth it
            continue
        for pp in divisors(n // tp):
            dp = n // (tp * pp)
            # HSDP: only the usual split, sharded inside one node and replicated across nodes
            node_shard = max(1, cluster.gpus_per_node // tp)
            reps = [1] + ([dp // node_shard] if dp % node_shard == 0 and dp > node_shard else [])
            for rep in reps:
                shard = dp // rep
                stages = (
                    (2, 3) if rep > 1 else (0, 1, 2, 3) if dp * base.cp > 1 else (0,)
                )  # HSDP shards
                scheds = SEARCH_SCHEDULES if pp > 1 else (("1F1B", 1),)
                for sched, v in scheds:
                    per_dp = job.global_batch // dp if job.global_batch % dp == 0 else 0
                    mbs = [m for m in divisors(per_dp) if pp == 1 or m >= pp] if per_dp else []
                    for m in mbs[:6] if pp == 1 else mbs:
                        for stage in stages:
                            for ac in ("none", "op", "full"):
                                lay = replace(
                                    base, dp_replicate=rep, dp_shard=shard, tp=tp, pp=pp,
                                    schedule=sched, virtual_stages=v, microbatches=m,
                                    zero_stage=stage, activation_checkpoint=ac,
                                    sequence_parallel=tp > 1 and not shape.n_experts,
                                )  # fmt: skip
                                if valid(shape, lay, job):
                                    out.append(lay)
    return out


def search(
    shape: ModelShape,
    job: Job,
    cluster: Cluster,
    base: Layout | None = None,
    *,
    efficiency: float | None = None,
) -> tuple[list[Candidate], int]:
    """(fitting candidates, fastest first; how many layouts were tried)."""
    tried = layouts(shape, job, cluster, base or Layout())
    fits = []
    for lay in tried:
        mem = plan_memory(shape, lay, job, cluster.gpu.mem_bytes)
        if mem.fits:
            fits.append(
                Candidate(lay, mem, step_time(shape, lay, job, cluster, efficiency=efficiency))
            )
    fits.sort(key=lambda c: -c.time.tokens_per_s)
    return fits, len(tried)
