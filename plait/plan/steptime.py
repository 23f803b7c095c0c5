"""Step time: compute from FLOPs at an efficiency, communication per parallelism (alpha-beta),
pipeline bubble, and the optimizer update.

Overlap rules (stated, simple, conservative):
- TP collectives (2 all-reduces per block forward, 2 backward, 2 more when the block is
  recomputed; all-gather + reduce-scatter of the same volume under SP, arXiv 2205.05198 sec.
  4.2.2) sit on the critical path: never overlapped.
- PP point-to-point: one send forward and one backward per micro-batch and chunk, on the
  critical path (so the bubble stretches with them).
- DP: the gradient reduction (DDP all-reduce; ZeRO reduce-scatter) overlaps with the backward
  of the last micro-batch only (accumulation skips sync before it); ZeRO-1/2's parameter
  all-gather overlaps with the first forward; ZeRO-3 gathers every micro-batch (forward and
  backward: 1.5x DDP's volume at one micro-batch) and overlaps each with that pass's compute.
  Only what exceeds its window is added.
- The optimizer update is memory-bound: bytes read and written / HBM bandwidth.

Efficiency: ``efficiency`` is the share of dense peak the kernels reach while busy; the bubble
and exposed communication come on top. ``mfu`` (or ``hfu``, counting recomputation as
Megatron-LM's tables do) is a measured end-to-end figure that already contains them: the
step time is then the FLOPs over that rate and the breakdown only shows where time goes.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from plait.plan import comm
from plait.plan.bubble import bubble_fraction
from plait.plan.hardware import Cluster
from plait.plan.memory import kept_unsharded, state_bytes
from plait.plan.shapes import Job, Layout, ModelShape
from plait.plan.stages import RankPart, rank_parts

DEFAULT_EFFICIENCY = (
    0.55  # assumed share of dense bf16 peak reached by a transformer step's kernels
)


@dataclass
class StepTime:
    compute_s: float  # useful + recomputed FLOPs on the slowest rank, all micro-batches
    tp_s: float
    pp_p2p_s: float
    bubble_s: float
    dp_s: float  # all DP communication
    dp_exposed_s: float  # the part not hidden behind backward / forward
    optimizer_s: float
    total_s: float
    tokens_per_s: float
    mfu: float
    model_flops_per_token: float
    hardware_flops_per_token: float


def recomputed_blocks(layout: Layout, blocks: int) -> int:
    ac = layout.activation_checkpoint
    if ac == "full":
        return blocks
    if ac == "selective":
        return math.ceil(blocks / layout.checkpoint_every)
    return 0


def rank_flops_per_token(shape: ModelShape, layout: Layout, part: RankPart, seq_len: int):
    """(model, hardware) FLOPs per token of one pipeline rank's share, before TP: hardware adds
    the recomputed forward (2·N + 4·H·Q·T per block) of checkpointed blocks."""
    block = 6 * shape.block_params + shape.attn_flops_per_token(seq_len)
    model = part.blocks * block + (6 * shape.head_params if part.head else 0)
    recompute = recomputed_blocks(layout, part.blocks) * block / 3
    return model, model + recompute


def step_time(
    shape: ModelShape,
    layout: Layout,
    job: Job,
    cluster: Cluster,
    *,
    efficiency: float | None = None,
    mfu: float | None = None,
    hfu: float | None = None,
) -> StepTime:
    gpu, p, m, v, tp = cluster.gpu, layout.pp, layout.microbatches, layout.v, layout.tp
    eff = efficiency if efficiency is not None else DEFAULT_EFFICIENCY
    # fp32 runs on plain fp32 units; MFU stays against the bf16 peak (docs/design.md's convention)
    rate = (gpu.fp32_flops if job.dtype == "fp32" else gpu.peak_flops) * eff
    mb_tokens = job.tokens / (layout.dp * m)
    # rank order follows plait's mesh (pp, dp_replicate, dp_shard, tp): tp varies fastest
    tp_link = cluster.link(1, tp)
    shard_link = cluster.link(tp, layout.dp_shard)
    rep_link = cluster.link(tp * layout.dp_shard, layout.dp_replicate)
    dp_link = cluster.link(tp, layout.dp)
    pp_link = cluster.link(tp * layout.dp, p)

    act = mb_tokens * shape.dim * job.act_bytes  # one micro-batch's hidden states, bytes
    worst = None
    for part in rank_parts(shape, layout):
        _, hw = rank_flops_per_token(shape, layout, part, job.seq_len)
        t_comp = mb_tokens * hw / tp / rate
        n_rec = recomputed_blocks(layout, part.blocks)
        t_tp = (4 * part.blocks + 2 * n_rec) * comm.all_reduce(act, tp, tp_link) if tp > 1 else 0.0
        t_p2p = 2 * v * comm.p2p(act, pp_link) if p > 1 else 0.0
        cand = (t_comp + t_tp + t_p2p, t_comp, t_tp, t_p2p, part)
        worst = cand if worst is None or cand[0] > worst[0] else worst
    t_mb, t_comp, t_tp, t_p2p, part = worst
    ideal = m * t_mb
    pipeline = ideal / (1 - bubble_fraction(layout.schedule, p, m, v))

    # data parallel
    pb, gb, ob = state_bytes(job)
    psi = part.params(shape) / tp
    # ZeRO gathers weights in the compute dtype under mixed precision or FSDP2 (stage >= 2);
    # torch's ZeroRedundancyOptimizer (stage 1) broadcasts the fp32 weights themselves
    gather_b = job.act_bytes if job.precision == "mixed" or layout.zero_stage >= 2 else pb
    grads, params = psi * gb, psi * gather_b
    bwd = t_comp * (2 / 3 if not recomputed_blocks(layout, part.blocks) else 3 / 4)
    fwd = t_comp - bwd
    dp_s = exposed = 0.0
    if layout.dp > 1:
        ns, nr, stage = layout.dp_shard, layout.dp_replicate, layout.zero_stage
        rep = comm.all_reduce(grads / ns, nr, rep_link)  # HSDP: replicas all-reduce their shard
        if stage == 0:
            red, ag = comm.all_reduce(grads, layout.dp, dp_link), 0.0
        else:
            red = comm.reduce_scatter(grads, ns, shard_link) + rep
            ag = comm.all_gather(params, ns, shard_link)
        if stage < 3:
            dp_s = red + ag
            exposed = max(0.0, red - bwd) + max(0.0, ag - fwd)
        else:  # gather for every forward and backward (less what stays gathered), reduce once
            kept = kept_unsharded(shape, layout, part) / psi if psi else 0.0
            ag_b = comm.all_gather(params * (1 - kept), ns, shard_link) if kept < 1 else 0.0
            dp_s = red + m * (ag + ag_b)
            exposed = (
                m * max(0.0, ag - fwd) + max(0.0, ag_b + red - bwd) + (m - 1) * max(0, ag_b - bwd)
            )
    # optimizer: read weights, grads, state; write weights and state (bytes / HBM bandwidth)
    shard = layout.dp_shard if layout.zero_stage >= 1 else 1
    opt_s = psi / shard * (2 * pb + gb + 2 * ob) / gpu.hbm_bytes_per_s
    if layout.cpu_offload:
        opt_s *= 10  # host memory and PCIe instead of HBM: an assumption, a 10x slower update

    model_fpt = shape.flops_per_token(job.seq_len)
    block = 6 * shape.block_params + shape.attn_flops_per_token(job.seq_len)
    hw_fpt = model_fpt + recomputed_blocks(layout, shape.n_layers) * block / 3
    total = pipeline + exposed + opt_s
    if mfu is not None:
        total = job.tokens * model_fpt / (cluster.gpus * gpu.peak_flops * mfu)
    elif hfu is not None:
        total = job.tokens * hw_fpt / (cluster.gpus * gpu.peak_flops * hfu)
    return StepTime(
        compute_s=m * t_comp, tp_s=m * t_tp, pp_p2p_s=m * t_p2p, bubble_s=pipeline - ideal,
        dp_s=dp_s, dp_exposed_s=exposed, optimizer_s=opt_s, total_s=total,
        tokens_per_s=job.tokens / total,
        mfu=job.tokens * model_fpt / (total * cluster.gpus * gpu.peak_flops),
        model_flops_per_token=model_fpt, hardware_flops_per_token=hw_fpt,
    )  # fmt: skip
