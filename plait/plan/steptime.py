"""Step time: a roofline per op class on the slowest pipeline rank, communication per
parallelism (alpha-beta), the pipeline bubble, and the optimizer update.

Compute, per micro-batch and op class (docs/design.md, "plait plan"):
- matmuls (the linear layers and the head): their FLOPs at the GPU's matmul rate (bf16, or
  fp8 for fp8 linears) x ``matmul_eff`` x a size factor n/(n + MATMUL_N0), n each linear's
  narrow side on a tensor-parallel rank (narrow GEMMs run further from peak);
- attention (flash, causal: half the square, backward 2.5x forward): at ``attn_eff`` of the
  bf16 peak;
- memory-bound ops (norms, residual adds, rotary, SwiGLU's product, layout copies, the
  cross-entropy over the vocabulary, fp8 casts): bytes moved / HBM bandwidth (x HBM_EFF);
  ``torch.compile`` fuses them (COMPILE_TRAFFIC of eager's bytes, an assumption).
Recomputation adds the forward again: every op for ``full`` / ``selective`` blocks, only the
memory-bound ones for ``op`` (matmul and attention outputs are saved).

Overlap rules (stated, simple, conservative):
- TP collectives (2 all-reduces per block forward, 2 backward, 2 more when the block is
  recomputed; all-gather + reduce-scatter of the same volume under SP, arXiv 2205.05198 sec.
  4.2.2) sit on the critical path: never overlapped.
- PP point-to-point: one send forward and one backward per micro-batch and chunk, on the
  critical path (so the bubble stretches with them).
- DP: the gradient reduction (DDP all-reduce; ZeRO reduce-scatter) overlaps with the backward
  of the last micro-batch only (accumulation skips sync before it), or none of it where a
  published system reduced after backward (``Layout.grad_overlap``); ZeRO-1/2's parameter
  all-gather overlaps with the first forward; ZeRO-3 gathers every micro-batch (forward and
  backward: 1.5x DDP's volume at one micro-batch) and overlaps each with that pass's compute.
  Only what exceeds its window is added. Collectives reach COLL_EFF of the link bandwidth.
- The optimizer update is memory-bound: bytes read and written / HBM bandwidth.

``efficiency`` (``--efficiency``) replaces the roofline by one share of peak for all FLOPs.
``mfu`` / ``hfu`` (measured end-to-end figures, HFU counting recomputation as Megatron-LM's
tables do) already contain every loss: the step time is the FLOPs over that rate and the
breakdown only shows where time goes.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from plait.plan import comm
from plait.plan.bubble import bubble_fraction
from plait.plan.experts import a2a_bytes_per_layer
from plait.plan.hardware import GPU, Cluster
from plait.plan.memory import kept_unsharded, split_experts, state_bytes
from plait.plan.shapes import Job, Layout, ModelShape, uses_flat
from plait.plan.stages import RankPart, rank_parts

MATMUL_N0 = 768  # narrow side at which a GEMM reaches half its large-matrix rate (fitted)
HBM_EFF = 0.8  # share of HBM bandwidth elementwise kernels reach (STREAM-like copies)
COMPILE_TRAFFIC = 0.5  # memory-bound bytes left after torch.compile's fusion (assumption)
COLL_EFF = 0.8  # NCCL bus bandwidth over link bandwidth for large messages (assumption)


@dataclass
class StepTime:
    compute_s: float  # matmul + attention + memory-bound, slowest rank, all micro-batches
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
    matmul_s: float = 0.0  # the roofline's parts of compute_s (0 when ``efficiency`` is given)
    attention_s: float = 0.0
    memory_bound_s: float = 0.0
    hfu: float = 0.0
    cp_s: float = 0.0  # context parallel's key/value all-gathers and reduce-scatters
    ep_s: float = 0.0  # expert parallel: all-to-alls + the experts' gradient all-reduce


def recomputed_blocks(layout: Layout, blocks: int) -> int:
    """Blocks whose whole forward runs again in backward (``op`` recomputes only its
    memory-bound ops: not counted here)."""
    ac = layout.activation_checkpoint
    if ac == "full":
        return blocks
    if ac == "selective":
        return math.ceil(blocks / layout.checkpoint_every)
    return 0


def op_recomputed_params(shape: ModelShape) -> int:
    """Weights of the matmuls op-level checkpointing reruns in backward: the 2nd, 4th and 6th
    of a Llama block's forward (wk, wo, w3; plait.parallelize._op_context_fn)."""
    return shape.dim * (shape.kv_dim + shape.dim + shape.ffn_dim)


def rank_flops_per_token(shape: ModelShape, layout: Layout, part: RankPart, seq_len: int):
    """(model, hardware) FLOPs per token of one pipeline rank's share, before TP: hardware adds
    the recomputed forward (2·N + 4·H·Q·T per block) of checkpointed blocks."""
    block = 6 * shape.flop_block_params + shape.attn_flops_per_token(seq_len)
    model = part.blocks * block + (6 * shape.head_matmul_params if part.head else 0)
    recompute = recomputed_blocks(layout, part.blocks) * block / 3
    if layout.activation_checkpoint == "op":
        recompute += part.blocks * 2 * op_recomputed_params(shape)
    return model, model + recompute


def block_traffic_bytes(shape: ModelShape, job: Job, tp: int, sp: bool) -> float:
    """HBM bytes the memory-bound ops of one block's forward move per token (eager), counted
    as element passes of 16-bit values: two RMSNorms (fp32 inside: 8 passes of D each), two
    residual adds (3D each), rotary on q and k (4 passes), the layout copies around attention
    (q, k, v, o: 2 passes), SwiGLU's silu and product (5F); fp8 adds the casts of every
    linear's input (6D + F, read + amax + write: 5 bytes each). Norms and residuals are
    sharded by SP, the rest by TP. Backward moves twice the forward's bytes."""
    d, f, kv = shape.dim, shape.ffn_dim, shape.kv_dim
    s = tp if sp else 1
    passes = (16 * d + 6 * d) / s + (4 * (d + kv) + 2 * (2 * d + 2 * kv) + 5 * f) / tp
    out = passes * 2
    if job.dtype == "fp8":
        out += 5 * (6 * d + f) / tp
    return out * (COMPILE_TRAFFIC if job.compiled else 1.0)


def head_traffic_bytes(shape: ModelShape, job: Job, tp: int) -> float:
    """Bytes per token of the loss over the vocabulary (forward + backward): logits written
    (2), their fp32 copy (4 write, 4 read), log-softmax and its gradient (4 x 3), the bf16
    gradient (2 + 2) = 28 bytes per logit, V/t logits under the vocab-parallel loss."""
    return 28 * shape.vocab_size / tp * (COMPILE_TRAFFIC if job.compiled else 1.0)


def gemm_size(n: float) -> float:
    """Share of the large-matrix GEMM rate a GEMM whose narrow side is n reaches."""
    return n / (n + MATMUL_N0)


def block_gemm_size(shape: ModelShape, tp: int) -> float:
    """The size factor of a block's matmuls, FLOP-weighted (harmonic: times add): each linear
    at its own narrow side under tp. Column-parallel wq, wk, wv, w1, w3 keep the full input
    width D and split their outputs; row-parallel wo, w2 split their inputs: so the attention
    linears run at D/tp wide but the MLP at min(D, F/tp) (Megatron 2021 at tp 8: 768 vs 2048)."""
    d, kv, f = shape.dim, shape.kv_dim, shape.ffn_dim
    gemms = [  # (weights, narrow side under tp)
        (d * d, min(d, d / tp)), (2 * d * kv, min(d, kv / tp)), (d * d, min(d / tp, d)),
        (2 * d * f, min(d, f / tp)), (d * f, min(f / tp, d)),
    ]  # fmt: skip
    return sum(w for w, _ in gemms) / sum(w / gemm_size(n) for w, n in gemms)


def roofline(
    shape: ModelShape, layout: Layout, job: Job, gpu: GPU, part: RankPart, tokens: float
) -> tuple[float, float, float]:
    """(matmul, attention, memory-bound) seconds of one micro-batch of ``tokens`` on one rank
    of ``part`` (forward, backward and recomputation)."""
    tp, sp = layout.tp, layout.sequence_parallel
    size = block_gemm_size(shape, tp)
    fp8 = job.dtype == "fp8" and gpu.fp8_flops > 0
    if job.dtype == "fp32":
        mm_rate = gpu.fp32_flops
    elif fp8:
        mm_rate = gpu.fp8_flops * gpu.fp8_matmul_eff * size
    else:
        mm_rate = gpu.peak_flops * gpu.matmul_eff * size
    n_full = recomputed_blocks(layout, part.blocks)  # blocks whose forward reruns
    n_op = part.blocks if layout.activation_checkpoint == "op" else 0
    passes = part.blocks * 3 + n_full  # forward = 1, backward = 2
    mm_flops = (2 * shape.flop_block_params * passes + 2 * op_recomputed_params(shape) * n_op) / tp
    head_mm = 6 * shape.head_matmul_params / tp if part.head else 0.0
    # flash attention, causal: forward 2·H·Q·T (half of the 4·H·Q·T square), backward 2.5x
    attn_fwd = 2 * shape.n_heads * shape.head_dim * job.seq_len / tp
    attn_flops = attn_fwd * (part.blocks * 3.5 + n_full)
    attn_rate = (gpu.fp32_flops if job.dtype == "fp32" else gpu.peak_flops) * gpu.attn_eff
    traffic = block_traffic_bytes(shape, job, tp, sp) * (part.blocks * 3 + n_full + n_op)
    if part.head:
        traffic += head_traffic_bytes(shape, job, tp)
    hbm = gpu.hbm_bytes_per_s * HBM_EFF
    # the head (D x V/tp, narrow side D) stays in bf16 under fp8 (torchao and Transformer
    # Engine leave it out)
    head_size = gemm_size(min(shape.dim, shape.vocab_size / tp))
    if job.dtype == "fp32":
        head_rate = gpu.fp32_flops
    else:
        head_rate = gpu.peak_flops * gpu.matmul_eff * head_size
    t_mm = tokens * (mm_flops / mm_rate + head_mm / head_rate)
    return t_mm, tokens * attn_flops / attn_rate, tokens * traffic / hbm


def ep_all_to_all(
    shape: ModelShape, layout: Layout, job: Job, cluster: Cluster, part: RankPart, tokens: float
) -> float:
    """Seconds of one micro-batch's expert all-to-alls on one rank (not overlapped): per MoE
    layer dispatch and combine in forward and backward, and again in a recomputed forward;
    (ep-1)/ep of each send buffer leaves the rank (uniform routing, plait.plan.experts). Inside
    a node at NVLink rate; across nodes the off-node share goes through the rank's own NIC
    (an all-to-all has no ring to spread over the node's NICs)."""
    ep = layout.ep
    if ep == 1 or not shape.n_experts or not part.blocks:
        return 0.0
    layers = part.blocks * shape.moe_layers_per_block
    passes = 4 + 2 * recomputed_blocks(layout, part.blocks) / part.blocks
    per = a2a_bytes_per_layer(tokens, shape.top_k, shape.dim, job.act_bytes) / 4
    nvl = cluster.gpu.nvlink_bytes_per_s * COLL_EFF
    inside = cluster.per_node(layout.tp, ep)  # ep ranks in one node
    if inside == ep:
        t = 3e-6 * (ep - 1) + (ep - 1) / ep * per / nvl
    else:
        net = cluster.net.bytes_per_s * COLL_EFF
        t = cluster.net.alpha_s * (ep - 1) + max(
            (inside - 1) / ep * per / nvl, (ep - inside) / ep * per / net
        )
    return layers * passes * t


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
    # context parallel divides the tokens of a micro-batch per rank (T / cp of each sequence)
    # and adds its key/value all-gathers to the critical path; expert parallel its
    # all-to-alls (ep_all_to_all) and the experts' gradient all-reduce
    cp = layout.cp
    mb_tokens = job.tokens / (layout.dp_cp * m)

    def link(stride: int, size: int) -> comm.Link:
        alpha, bw = cluster.link(stride, size)
        return alpha, bw * COLL_EFF

    # rank order follows plait's mesh (pp, dp_replicate, dp_shard, cp, tp): tp varies fastest;
    # FSDP2 shards over dp_shard x cp
    tp_link = link(1, tp)
    cp_link = link(tp, cp)
    shard_link = link(tp, layout.dp_shard * cp)
    rep_link = link(tp * layout.dp_shard * cp, layout.dp_replicate)
    dp_link = link(tp, layout.dp_cp)
    pp_link = link(tp * layout.dp_cp, p)

    act = mb_tokens * shape.dim * job.act_bytes  # one micro-batch's hidden states, bytes
    worst = None
    for part in rank_parts(shape, layout, job.seq_len):
        if efficiency is not None:  # one share of peak for all FLOPs: no roofline
            _, hw = rank_flops_per_token(shape, layout, part, job.seq_len)
            # fp32 runs on plain fp32 units; MFU stays against the bf16 peak (docs/design.md)
            rate = (gpu.fp32_flops if job.dtype == "fp32" else gpu.peak_flops) * efficiency
            parts = (0.0, 0.0, 0.0)
            t_comp = mb_tokens * hw / tp / rate
        else:
            parts = roofline(shape, layout, job, gpu, part, mb_tokens)
            t_comp = sum(parts)
        n_rec = recomputed_blocks(layout, part.blocks)
        t_tp = (4 * part.blocks + 2 * n_rec) * comm.all_reduce(act, tp, tp_link) if tp > 1 else 0.0
        # each tp rank sends its 1/tp slice of the boundary activations (the sequence-parallel
        # shard; Megatron's scatter/gather optimisation, arXiv 2104.04473 sec. 4.1)
        t_p2p = 2 * v * comm.p2p(act / tp, pp_link) if p > 1 else 0.0
        # context parallel: keys + values all-gathered per block in forward (again when
        # recomputed: full checkpointing, or op-level, which keeps only local keys/values),
        # their gradients reduce-scattered in backward (not overlapped)
        kv = mb_tokens * cp * 2 * shape.kv_dim / tp * job.act_bytes  # gathered, bytes
        n_op = part.blocks if layout.activation_checkpoint == "op" else 0
        t_cp = (part.blocks + n_rec + n_op) * comm.all_gather(kv, cp, cp_link) + part.blocks * (
            comm.reduce_scatter(kv, cp, cp_link)
        )
        t_ep = ep_all_to_all(shape, layout, job, cluster, part, mb_tokens)
        cand = (t_comp + t_tp + t_p2p + t_cp + t_ep, t_comp, t_tp, t_p2p, part, parts, t_cp, t_ep)
        worst = cand if worst is None or cand[0] > worst[0] else worst
    t_mb, t_comp, t_tp, t_p2p, part, parts, t_cp, t_ep = worst
    ideal = m * t_mb
    pipeline = ideal / (1 - bubble_fraction(layout.schedule, p, m, v))

    # data parallel
    pb, gb, ob = state_bytes(job)
    # split experts are left out of the data-parallel engine: their gradients are summed over
    # the ranks holding the same experts after the last backward (MoE.finish_step), exposed
    ex_rank = part.blocks * shape.expert_block_params / tp if split_experts(shape, layout) else 0
    psi = part.params(shape) / tp - ex_rank
    copies = layout.dp_cp // layout.ep
    ex_reduce = (
        comm.all_reduce(ex_rank / layout.ep * gb, copies, link(tp * layout.ep, copies))
        if ex_rank
        else 0.0
    )
    # ZeRO gathers weights in the compute dtype under mixed precision or FSDP2 (stage >= 2);
    # torch's ZeroRedundancyOptimizer (stage 1) broadcasts the fp32 weights themselves
    gather_b = job.act_bytes if job.precision == "mixed" or layout.zero_stage >= 2 else pb
    flat = uses_flat(layout, job)
    if flat:  # flat ZeRO-1/2 all-gathers its fp32 (master) weights after the step
        gather_b = pb
    grads, params = psi * gb, psi * gather_b
    bwd = t_comp * (2 / 3 if not recomputed_blocks(layout, part.blocks) else 3 / 4)
    fwd = t_comp - bwd
    dp_s = exposed = 0.0
    if layout.dp_cp > 1:
        ns, nr, stage = layout.dp_shard * cp, layout.dp_replicate, layout.zero_stage
        rep = comm.all_reduce(grads / ns, nr, rep_link)  # HSDP: replicas all-reduce their shard
        if stage == 0:
            red, ag = comm.all_reduce(grads, layout.dp_cp, dp_link), 0.0
        else:
            red = comm.reduce_scatter(grads, ns, shard_link) + rep
            ag = comm.all_gather(params, ns, shard_link)
        if flat:  # reduce-scatters overlap backward; the gather follows the step
            dp_s = red + ag
            exposed = max(0.0, red - bwd) + ag
        elif stage < 3:
            dp_s = red + ag
            exposed = max(0.0, red - (bwd if layout.grad_overlap else 0.0)) + max(0.0, ag - fwd)
        else:  # gather for every forward and backward (less what stays gathered), reduce once
            # the root unit (embedding, head) stays gathered unless every unit reshards
            root = (
                0.0
                if layout.reshard_after_forward is True
                else part.params(shape) / tp - (part.blocks * shape.block_params / tp)
            )
            kept = (kept_unsharded(shape, layout, part) + root) / psi if psi else 0.0
            ag_b = comm.all_gather(params * (1 - kept), ns, shard_link) if kept < 1 else 0.0
            dp_s = red + m * (ag + ag_b)
            exposed = (
                m * max(0.0, ag - fwd) + max(0.0, ag_b + red - bwd) + (m - 1) * max(0, ag_b - bwd)
            )
    # optimizer: read weights, grads, state; write weights and state (bytes / HBM bandwidth)
    shard = layout.dp_shard * cp if layout.zero_stage >= 1 else 1
    opt_s = psi / shard * (2 * pb + gb + 2 * ob) / gpu.hbm_bytes_per_s
    if layout.cpu_offload:
        opt_s *= 10  # host memory and PCIe instead of HBM: an assumption, a 10x slower update

    model_fpt = shape.flops_per_token(job.seq_len)
    block = 6 * shape.flop_block_params + shape.attn_flops_per_token(job.seq_len)
    hw_fpt = model_fpt + recomputed_blocks(layout, shape.n_layers) * block / 3
    if layout.activation_checkpoint == "op":
        hw_fpt += shape.n_layers * 2 * op_recomputed_params(shape)
    opt_s += ex_rank / layout.ep * (2 * pb + gb + 2 * ob) / gpu.hbm_bytes_per_s
    total = pipeline + exposed + opt_s + ex_reduce
    if mfu is not None:
        total = job.tokens * model_fpt / (cluster.gpus * gpu.peak_flops * mfu)
    elif hfu is not None:
        total = job.tokens * hw_fpt / (cluster.gpus * gpu.peak_flops * hfu)
    return StepTime(
        compute_s=m * t_comp, tp_s=m * t_tp, pp_p2p_s=m * t_p2p, cp_s=m * t_cp,
        ep_s=m * t_ep + ex_reduce,
        bubble_s=pipeline - ideal,
        dp_s=dp_s, dp_exposed_s=exposed, optimizer_s=opt_s, total_s=total,
        tokens_per_s=job.tokens / total,
        mfu=job.tokens * model_fpt / (total * cluster.gpus * gpu.peak_flops),
        model_flops_per_token=model_fpt, hardware_flops_per_token=hw_fpt,
        matmul_s=m * parts[0], attention_s=m * parts[1], memory_bound_s=m * parts[2],
        hfu=job.tokens * hw_fpt / (total * cluster.gpus * gpu.peak_flops),
    )  # fmt: skip
